"""The validation images a run (or an ensemble: the mean of several runs'
probabilities) gets wrong, as a PNG strip and a table: what the remaining errors
look like, and how many members share each.

    python experiments/val_errors.py runs/recipes/ensemble/s0 runs/recipes/ensemble/s1 ...

Reads each workdir's val_probs.npy (its best checkpoint); writes
results/val_errors.png and results/val_errors.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import REPO, markdown_table, validation_split, write_results
from PIL import Image

SCALE = 3  # pixels per image pixel in the PNG


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workdirs", nargs="+", type=Path)
    a = ap.parse_args()
    _, data, val = validation_split(a.workdirs[0])
    labels = data.labels[val]
    probs = [np.load(w / "val_probs.npy") for w in a.workdirs]
    for w in a.workdirs:
        if not np.array_equal(np.load(w / "val_labels.npy"), labels):
            raise SystemExit(f"{w}: validated on another split than {a.workdirs[0]}")
    mean = np.mean(probs, 0)
    wrong = np.flatnonzero(mean.argmax(1) != labels)
    names = data.class_names
    rows = [{"data row": int(val[i]), "label": names[labels[i]],
             "predicted": names[mean[i].argmax()], "probability": float(mean[i].max()),
             "members wrong": f"{sum(int(p[i].argmax() != labels[i]) for p in probs)}"
                              f"/{len(probs)}"} for i in wrong]
    tiles = [np.pad(data.images[val[i]], ((2, 2), (2, 2), (0, 0)), constant_values=128)
             for i in wrong]
    if tiles:
        strip = np.concatenate(tiles, axis=1)
        strip = strip[..., 0] if strip.shape[-1] == 1 else strip
        png = REPO / "experiments" / "results" / "val_errors.png"
        Image.fromarray(strip).resize((strip.shape[1] * SCALE, strip.shape[0] * SCALE),
                                      Image.Resampling.NEAREST).save(png)
    accuracy = 1 - len(wrong) / len(labels)
    write_results("val_errors", f"Validation errors: {len(wrong)} of {len(labels)} "
                  f"({accuracy:.2%} correct), left to right in val_errors.png",
                  markdown_table(rows, list(rows[0]) if rows else ["data row"]),
                  "python experiments/val_errors.py " + " ".join(map(str, a.workdirs)))


if __name__ == "__main__":
    main()
