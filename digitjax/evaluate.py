"""`--mode=evaluate --input=...`: a trained workdir's best checkpoint on labelled data
it was not trained on (a pixel CSV with labels, class folders, a labels CSV): accuracy,
the per-class table, the confusion matrix and the worst mistakes, into an output folder.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections
from etils import epath

from digitjax import files, parallel, plots, predict, scores
from digitjax.data import load_labelled
from digitjax.workdir import saved_config

RESULT = "evaluation.json"


def evaluate_path(config: ml_collections.ConfigDict, workdir: epath.PathLike, input_path: str,
                  out_dir: epath.PathLike) -> tuple[dict, list[epath.Path]]:
    """(scores, written files): evaluation.json (accuracy, per class, confusion matrix),
    confusion_matrix.png, mistakes.png and predictions.csv in `out_dir`. Every check of the
    input runs before anything is written."""
    workdir, out_dir = epath.Path(workdir), epath.Path(out_dir)
    config = saved_config(workdir, config)
    state, meta = predict.restore_best(config, workdir)
    names = meta["class_names"]
    data = load_labelled(input_path, config, meta["input_shape"], names,
                         pixel_columns=meta.get("pixel_columns"))
    probs = predict.predict_probs(state, data.images, config, meta["normalization"])
    result = {"input": str(input_path), "workdir": str(workdir), "checkpoint_epoch": meta["epoch"],
              "images": len(data.labels), **scores.score(data.labels, probs, names)}
    figures = {
        "confusion_matrix": plots.confusion_matrix(
            result["confusion_matrix"], names, f"confusion matrix, {Path(input_path).name}"),
        "mistakes": plots.mistakes(data.images, data.labels, probs, names,
                                   title=f"worst mistakes on {Path(input_path).name}"),
    }
    if not parallel.is_writer():
        return result, []
    written = [files.write_json(out_dir / RESULT, result)]
    written += [files.write_bytes(out_dir / f"{name}.png", png) for name, png in figures.items()]
    written += predict.write_predictions(out_dir, data, probs, names, submission=False)
    return result, written
