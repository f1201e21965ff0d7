"""The same digits, the same recipe, the same seed: pixel CSV vs the TFDS dataset.

    python experiments/tfds_vs_csv.py [--epochs 3]

Trains configs/default.py from digit-recognizer/train.csv and configs/tfds_digits.py
(the default recipe on ../shared/data/tfds/digit_recognizer, read without
TensorFlow) one after the other, each predicting digit-recognizer/test.csv; reports
each run's validation accuracy with a 95% Wilson interval, its wall time, and the
share of the 28,000 test predictions on which the two submissions agree. Writes
experiments/results/tfds_vs_csv.md.

TFDS stores the examples in its own shuffled order, so the stratified 10% holds
out a different 4,200 digits and the batches differ: the two runs are two draws
of the same recipe, not the same computation.
"""

import argparse
import math
import os

import pandas as pd
from common import DATA, DIGITS, REPO, markdown_table, metrics, run_main, summary, write_results


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion `p` over `n` trials."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--runs", default=str(REPO / "runs" / "tfds_vs_csv"))
    a = ap.parse_args()
    rows, commands = [], []
    for name, flags in [
        ("pixel CSV", ["--config", "configs/default.py",
                       f"--config.data_dir={DIGITS}"]),
        ("TFDS (array_record, PNG)", ["--config", "configs/tfds_digits.py",
                                      f"--config.tfds_data_dir={DATA / 'tfds'}",
                                      f"--config.data_dir={DIGITS}"]),
    ]:
        workdir = f"{a.runs}/{flags[1].split('/')[-1][:-3]}"
        args = [*flags, f"--workdir={workdir}", f"--config.num_epochs={a.epochs}",
                "--config.progress=false"]
        commands.append("python -m digitjax.main " + " ".join(args))
        wall = run_main(*args)
        n = 4200
        best = summary(workdir)
        last = metrics(workdir)[-1]["val_accuracy"]
        low, high = wilson(best["best_val"], n)
        rows.append({"source": name, **best, "val_95": f"{100 * low:.2f}-{100 * high:.2f}%",
                     "last_val": last, "wall_seconds": wall,
                     "submission": pd.read_csv(f"{workdir}/submission.csv")})
    load = os.getloadavg()[0]
    agree = float((rows[0]["submission"]["Label"] == rows[1]["submission"]["Label"]).mean())
    table = markdown_table(rows, ["source", "epochs", "best_val", "val_95", "last_val",
                                  "train_seconds", "wall_seconds"])
    table += (f"\nThe two submissions (28,000 test.csv digits each) agree on "
              f"{100 * agree:.2f}% of the digits "
              f"({int(round((1 - agree) * len(rows[0]['submission'])))} differ).\n\n"
              f"Load average at the end: {load:.1f} on {os.cpu_count()} cores (other work "
              "on the machine stretches the wall times, not the accuracies).\n\n"
              "The validation digits differ between the runs (TFDS stores the examples "
              "in its own order, so the stratified 10% picks other digits): the two "
              "accuracies are two draws of the same recipe; the intervals are 95% Wilson "
              "intervals over 4,200 digits.\n\n"
              "Commands, one after the other:\n\n" + "".join(f"    {c}\n" for c in commands))
    write_results("tfds_vs_csv", f"Pixel CSV vs TFDS ({a.epochs} epochs, configs/default.py "
                  "recipe, seed 0)", table,
                  f"python experiments/tfds_vs_csv.py --epochs {a.epochs}")


if __name__ == "__main__":
    main()
