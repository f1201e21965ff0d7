"""Validation accuracy of an ensemble's last epochs: the members' final checkpoints,
averaged, with nothing chosen on the validation split. The best-checkpoint numbers
pick each member's epoch on that split, so they lean optimistic; this one does not.

    python experiments/last_epochs.py runs/recipes/ensemble/s0 runs/recipes/ensemble/s1 ...

`recipes.py ensemble` reports it as its last row.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import markdown_table, validation_split, write_results


def last_epoch_probs(workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(validation probabilities of the last checkpoint, validation labels)."""
    from digitjax import predict

    config, data, val = validation_split(workdir)
    state, meta = predict.restore_checkpoint(config, workdir, "latest")
    probs = predict.predict_probs(state, data.images[val], config, meta["normalization"],
                                  tta_shifts=())
    return probs, data.labels[val]


def last_epoch_results(members: list[Path]) -> tuple[list[float], float]:
    """Validation accuracy of each member's last epoch, and of their mean probabilities."""
    probs, labels = zip(*(last_epoch_probs(Path(w)) for w in members), strict=True)
    if any(not np.array_equal(x, labels[0]) for x in labels):
        raise SystemExit("the members were validated on different splits")
    accuracy = [float(np.mean(p.argmax(1) == labels[0])) for p in probs]
    return accuracy, float(np.mean(np.mean(probs, 0).argmax(1) == labels[0]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workdirs", nargs="+", type=Path)
    a = ap.parse_args()
    members, ensemble = last_epoch_results(a.workdirs)
    rows = [{"run": str(w), "last_val": acc} for w, acc in zip(a.workdirs, members, strict=True)]
    rows.append({"run": "mean probabilities", "last_val": ensemble})
    write_results("ensemble_last_epochs", "Ensemble of the members' last epochs",
                  markdown_table(rows, ["run", "last_val"]),
                  "python experiments/last_epochs.py " + " ".join(map(str, a.workdirs)))


if __name__ == "__main__":
    main()
