"""Averages the saved class probabilities of several trained workdirs into one
submission: `python -m digitjax.ensemble --workdirs=runs/a,runs/b --output_dir=runs/ens`.

Members must have predicted the same test rows with the same classes. When they
share a validation split (the same config.split_seed and val_fraction), the
ensemble's validation accuracy is reported as well; nothing is selected on it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from absl import app, flags

from digitjax import files
from digitjax.data import Dataset
from digitjax.errors import UserError
from digitjax.predict import write_predictions

_WORKDIRS = flags.DEFINE_list("workdirs", [], "Trained workdirs to average.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "runs/ensemble", "Where the ensemble goes.")


def ensemble(workdirs: list[Path], out_dir: Path) -> dict:
    if len(workdirs) < 2:
        raise UserError("--workdirs: expected at least two trained workdirs")
    for w in workdirs:
        for name in ("test_probs.npy", "predictions.csv", "classes.json"):
            if not (w / name).is_file():
                raise UserError(f"{w / name}: missing (train that workdir to the end first)")
    classes = [json.loads((w / "classes.json").read_text()) for w in workdirs]
    ids = [pd.read_csv(w / "predictions.csv", usecols=["id"])["id"].to_numpy() for w in workdirs]
    for w, c, i in zip(workdirs[1:], classes[1:], ids[1:], strict=True):
        if c != classes[0] or not np.array_equal(i, ids[0]):
            raise UserError(f"{w}: predicted other rows or classes than {workdirs[0]}")
    probs = np.mean([np.load(w / "test_probs.npy") for w in workdirs], axis=0)
    data = Dataset(images=np.zeros((len(ids[0]), 1, 1, 1), np.uint8), labels=None, ids=ids[0],
                   class_names=classes[0], source="ensemble",
                   writes_submission=(workdirs[0] / "submission.csv").is_file())
    write_predictions(out_dir, data, probs, classes[0], submission=data.writes_submission)
    report = {"members": [str(w) for w in workdirs]}
    if all((w / "val_probs.npy").is_file() for w in workdirs):
        labels = [np.load(w / "val_labels.npy") for w in workdirs]
        if all(np.array_equal(x, labels[0]) for x in labels):
            val = [np.load(w / "val_probs.npy") for w in workdirs]
            report["member_val_accuracy"] = [float(np.mean(v.argmax(1) == labels[0])) for v in val]
            report["val_accuracy"] = float(np.mean(np.mean(val, 0).argmax(1) == labels[0]))
    files.write_json(out_dir / "summary.json", report)
    return report


def main(argv: list[str]) -> None:
    try:
        report = ensemble([Path(w) for w in _WORKDIRS.value], Path(_OUTPUT_DIR.value))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    app.run(main)
