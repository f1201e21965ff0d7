"""The same digits, the same config: pixel CSV vs PNG class folders, epoch by epoch.

    python experiments/png_vs_csv.py [--epochs 4] [--png runs/mnist-png]

Writes the PNGs once (`../shared/data/make_mnist_png.py --out PNG`; ../shared is
read-only), then trains `configs/default.py` from the pixel CSV and
`configs/mnist_png.py` from the class folders, one epoch per invocation
(`--stop_after_epoch`), alternating the roads and which goes first, so the two
epochs of a pair run minutes apart on this noisy machine instead of a run apart.
Every invocation after the first of each road reads its data from the workdir's cache
(the decoded PNGs' uint8 array), and both share one compilation cache. The ratio is
each pair's PNG epoch time over its CSV epoch time (the train loop, metrics.jsonl's
`seconds`, which leave out the step's compile: `compile_cache.compile_ahead` does it
before the epoch starts). Writes experiments/results/png_vs_csv.md.

The validation split is the same examples in both (stratified per class, and within a
class the PNGs are in CSV row order); only the order of training batches differs.
"""

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from common import DATA, DIGITS, REPO, markdown_table, metrics, run_main, write_results

ROADS = [("pixel CSV", "configs/default.py", lambda png: DIGITS),
         ("PNG class folders", "configs/mnist_png.py", lambda png: png / "train")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--runs", default=str(REPO / "runs" / "png_vs_csv"))
    ap.add_argument("--png", default=str(REPO / "runs" / "mnist-png"),
                    help="where the PNGs are written (once)")
    a = ap.parse_args()
    png, runs = Path(a.png), Path(a.runs)
    for _, config, _ in ROADS:  # a finished workdir would only be read, not timed
        if (runs / Path(config).stem).exists():
            sys.exit(f"{runs / Path(config).stem} exists: remove it or pass another --runs")
    subprocess.run([sys.executable, str(DATA / "make_mnist_png.py"), "--out", str(png)],
                   check=True)
    walls = {name: [] for name, _, _ in ROADS}
    for epoch in range(1, a.epochs + 1):
        for name, config, data_dir in ROADS[:: 1 if epoch % 2 else -1]:
            walls[name].append(run_main(
                "--config", config, f"--workdir={runs / Path(config).stem}",
                f"--config.data_dir={data_dir(png)}", f"--config.num_epochs={a.epochs}",
                f"--stop_after_epoch={epoch}", f"--config.compilation_cache_dir={runs / 'jax'}",
                "--config.plots=false", "--config.progress=false"))
    records = {name: metrics(runs / Path(config).stem) for name, config, _ in ROADS}
    csv_name, png_name = (r[0] for r in ROADS)
    rows, ratios = [], []
    for e in range(a.epochs):
        c, p = records[csv_name][e], records[png_name][e]
        ratios.append(p["seconds"] / c["seconds"])
        rows.append({"epoch": e + 1, "csv_seconds": c["seconds"], "png_seconds": p["seconds"],
                     "png_over_csv": f"{ratios[-1]:.3f}",
                     "csv_val": c.get("val_accuracy", "-"), "png_val": p.get("val_accuracy", "-"),
                     "csv_wall": walls[csv_name][e], "png_wall": walls[png_name][e]})
    table = markdown_table(rows, ["epoch", "csv_seconds", "png_seconds", "png_over_csv",
                                  "csv_val", "png_val", "csv_wall", "png_wall"])
    table += (f"\nPNG / CSV epoch time over the {a.epochs} pairs: median "
              f"**{statistics.median(ratios):.3f}** (range {min(ratios):.3f}-{max(ratios):.3f}; "
              "target: within 10%). `*_wall`: the whole invocation (start-up, data from the "
              "cache, compile from the shared cache, the epoch, its checkpoint; the last: also "
              "the validation report and the test predictions).\n")
    write_results("png_vs_csv", "Pixel CSV vs PNG class folders, epochs interleaved", table,
                  f"python experiments/png_vs_csv.py --epochs {a.epochs}")


if __name__ == "__main__":
    main()
