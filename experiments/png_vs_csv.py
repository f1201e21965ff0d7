"""The same digits, the same config: pixel CSV vs PNG class folders.

    python experiments/png_vs_csv.py [--epochs N]

Writes experiments/results/png_vs_csv.md. The validation split is the same
examples in both (stratified per class, and within a class the PNGs are in CSV
row order); only the order of training batches differs.
"""

import argparse
import subprocess
import sys

from common import DATA, REPO, markdown_table, run_main, summary, write_results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--runs", default=str(REPO / "runs" / "png_vs_csv"))
    a = ap.parse_args()
    subprocess.run([sys.executable, str(DATA / "make_mnist_png.py")], check=True)
    rows = []
    for name, config, data_dir in [
        ("pixel CSV", "configs/default.py", DATA / "digit-recognizer"),
        ("PNG class folders", "configs/mnist_png.py", DATA / "mnist-png" / "train"),
    ]:
        workdir = f"{a.runs}/{config.split('/')[-1][:-3]}"
        wall = run_main("--config", config, f"--workdir={workdir}",
                        f"--config.data_dir={data_dir}", f"--config.num_epochs={a.epochs}")
        rows.append({"source": name, "config": config, **summary(workdir), "wall_seconds": wall})
    table = markdown_table(rows, ["source", "config", "epochs", "best_val", "last_val",
                                  "train_seconds", "wall_seconds"])
    write_results("png_vs_csv", "Pixel CSV vs PNG class folders (same digits, same config)",
                  table, "python experiments/png_vs_csv.py")


if __name__ == "__main__":
    main()
