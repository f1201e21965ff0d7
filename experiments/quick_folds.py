"""How short `configs/quick.py` can be: its variants out of fold, paired on the same rows.

    python experiments/quick_folds.py [--variants shipped,7x128,...] [--folds 4]

Each variant (`configs/quick.py` with a few overrides) trains on the k folds of
`config.num_folds`; each fold's last checkpoint predicts its held-out rows, so every one
of the 42,000 training digits is predicted once by a model that never saw it. Prints
each variant's out-of-fold accuracy with its 95% interval, its median epoch time, and
McNemar's exact test against the shipped config on the same digits; writes
results/quick_folds.md. A fold whose predictions exist is not trained again. About 4-7
minutes a variant on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import DATA, REPO, markdown_table, run_main, write_results

from digitjax import ensemble, scores

# Variant name -> overrides of configs/quick.py ("EPOCHSxBATCH").
VARIANTS = {
    "shipped": [],
    "7x128": ["--config.num_epochs=7", "--config.batch_size=128"],
    "5x128": ["--config.num_epochs=5", "--config.batch_size=128"],
    "4x128": ["--config.num_epochs=4", "--config.batch_size=128"],
    "5x64": ["--config.num_epochs=5"],
    "3x64": ["--config.num_epochs=3"],
    "4x64-no-bn": ["--config.cnn.batch_norm=false"],
}
COLUMNS = ["variant", "overrides", "oof_accuracy", "interval_95", "errors",
           "epoch_seconds", "vs_shipped"]


def train_folds(name: str, folds: int, runs: Path) -> Path:
    member = runs / name
    for fold in range(folds):
        workdir = member / f"fold{fold}"
        if (workdir / "val_probs.npy").exists():
            continue
        run_main("--config", "configs/quick.py", f"--workdir={workdir}",
                 f"--config.data_dir={DATA / 'digit-recognizer'}",
                 f"--config.num_folds={folds}", f"--config.fold={fold}",
                 "--config.predict_checkpoint=last", "--config.progress=false",
                 *VARIANTS[name])
    return member


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--runs", default=str(REPO / "runs" / "quick_folds"))
    a = ap.parse_args()
    names = ["shipped"] + [n for n in a.variants.split(",") if n != "shipped"]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; expected names from "
                         f"{', '.join(VARIANTS)}")
    right, rows = {}, []
    for name in names:
        member = train_folds(name, a.folds, Path(a.runs))
        probs, labels, _ = ensemble.out_of_fold(member)
        right[name] = probs.argmax(1) == labels
        n, accuracy = len(labels), float(right[name].mean())
        low, high = scores.interval(accuracy, n)
        seconds = [json.loads(line)["seconds"] for m in sorted(member.glob("fold*/metrics.jsonl"))
                   for line in m.read_text().splitlines()]
        rows.append({"variant": name, "overrides": " ".join(VARIANTS[name]) or "-",
                     "oof_accuracy": accuracy, "interval_95": f"{low:.4f}-{high:.4f}",
                     "errors": int(n - right[name].sum()),
                     "epoch_seconds": statistics.median(seconds),
                     "vs_shipped": "-" if name == "shipped" else
                     f"p = {ensemble.paired_p(right[name], right['shipped']):.2g}"})
    table = markdown_table(rows, COLUMNS) + (
        f"\nOut of fold over {len(labels):,} training digits ({a.folds} folds; each fold's "
        "model trained on the other folds' rows, its epochs shorter than a full run's by the "
        "same fraction). epoch_seconds: the median fold epoch (noisy: other work on the "
        "machine moves it). vs_shipped: McNemar's exact test on the same digits.\n")
    write_results("quick_folds", "configs/quick.py's variants out of fold", table,
                  "python experiments/quick_folds.py")


if __name__ == "__main__":
    main()
