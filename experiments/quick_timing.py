"""Where the wall time of `configs/quick.py` goes, from a cold process to submission.csv.

    python experiments/quick_timing.py [--runs 2]

Runs the README-style command (`python -m digitjax.main --config configs/quick.py
--config.data_dir=...`) in a fresh process with an empty compilation cache, then again
with the cache the first run left (a fresh workdir each time, so nothing else is
reused but the cache). Each printed line is time-stamped as it arrives, which splits
the wall time into: start-up and ingest (to the "data:" line), the first epoch (compile
included), the other epochs, the best checkpoint's validation report, and the test
predictions. Writes results/quick.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DIGITS, REPO, cpu_name, write_results

PHASES = ["start-up + ingest", "epoch 1 (compile included)", "epochs 2..", "validation report",
          "test predictions to submission.csv", "after submission.csv (exit)"]


def timed_run(workdir: Path, cache: Path) -> dict:
    cmd = [sys.executable, "-u", "-m", "digitjax.main", "--config", "configs/quick.py",
           f"--workdir={workdir}", f"--config.data_dir={DIGITS}",
           f"--config.compilation_cache_dir={cache}", "--config.progress=false"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    marks = {}
    for line in proc.stdout:
        now = time.perf_counter() - start
        print(f"{now:6.1f}s  {line}", end="")
        key = ("data" if line.startswith("data:") else "epoch1" if line.startswith("epoch   1/")
               else "epochs" if line.startswith("epoch ") else "report"
               if line.startswith("best checkpoint") else "submission"
               if line.startswith("wrote") and line.rstrip().endswith("submission.csv") else None)
        if key:
            marks[key] = now
    if proc.wait():
        sys.exit("the quick run failed")
    wall = time.perf_counter() - start
    ends = [marks["data"], marks["epoch1"], marks["epochs"], marks["report"],
            marks["submission"], wall]
    split = dict(zip(PHASES, [b - a for a, b in zip([0.0] + ends[:-1], ends, strict=True)],
                     strict=True))
    summary = json.loads((workdir / "summary.json").read_text())
    return {"wall": wall, "to submission.csv": marks["submission"], **split,
            "val_accuracy": summary["val_accuracy"], "best_epoch": summary["best_epoch"],
            "val_count": summary["val_count"]}


def import_seconds() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import digitjax.main"], check=True, cwd=REPO)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--name", default="quick", help="results/NAME.md (default quick)")
    a = ap.parse_args()
    runs = a.runs
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        rows = [timed_run(Path(tmp) / f"run{i}", cache) for i in range(runs)]
    imp = import_seconds()
    val, best = rows[0]["val_accuracy"], rows[0]["best_epoch"]
    count = rows[0]["val_count"]
    half = 1.96 * (val * (1 - val) / count) ** 0.5
    same = all((r["val_accuracy"], r["best_epoch"]) == (val, best) for r in rows)
    lines = ["| phase | " + " | ".join(
        ["empty cache"] + [f"warm cache ({i})" for i in range(1, runs)]) + " |",
        "|" + " --- |" * (runs + 1)]
    for key in ["wall", "to submission.csv", *PHASES]:
        lines.append(f"| {key} | " + " | ".join(f"{r[key]:.1f} s" for r in rows) + " |")
    table = "\n".join(lines) + (
        f"\n\n`import digitjax.main` alone: {imp:.1f} s; {cpu_name()}. Validation accuracy "
        f"({count:,} held-out digits, best epoch {best}): {val:.2%} (95% interval ±{half:.2%}); "
        + ("every run gave the same number (same seed).\n" if same else "runs differ: "
           + ", ".join(f"{r['val_accuracy']:.2%} (epoch {r['best_epoch']})" for r in rows)
           + ".\n"))
    write_results(a.name, "configs/quick.py: wall time, cold process to submission.csv", table,
                  f"python experiments/quick_timing.py --runs {runs}")


if __name__ == "__main__":
    main()
