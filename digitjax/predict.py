"""Prediction from a workdir's best checkpoint: class probabilities for a set of
images, written as predictions.csv (and submission.csv for the competition)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pandas as pd

from digitjax import checkpoint, files, parallel, transforms
from digitjax.data import Dataset, load_inputs, load_test
from digitjax.errors import UserError
from digitjax.train import TrainState, apply_model, create_train_state, preprocess


def restore_best(config: ml_collections.ConfigDict, workdir: str | Path):
    """(state, meta) of the best checkpoint in `workdir` (the latest if none is marked best)."""
    kind = checkpoint.BEST if checkpoint.exists(workdir, checkpoint.BEST) else checkpoint.LATEST
    meta = checkpoint.read_meta(workdir, kind)
    if meta is None:
        raise UserError(f"{workdir}: no checkpoint to predict with (train first)")
    template = parallel.replicated_init(
        lambda: create_train_state(config, jax.random.key(0), tuple(meta["input_shape"]),
                                   len(meta["class_names"])), parallel.data_mesh())
    return checkpoint.restore(workdir, template, kind)


def predict_probs(state: TrainState, images: np.ndarray, config, norm) -> np.ndarray:
    """(N, classes) float32 softmax probabilities of uint8 NHWC `images`."""
    mesh = parallel.data_mesh()
    to_float = preprocess(config, norm)
    probs_fn = jax.jit(lambda s, x: jax.nn.softmax(apply_model(s, to_float(x))))
    batches, masks = transforms.padded_batches(len(images), config.eval_batch_size)
    rows = parallel.process_rows(config.eval_batch_size)
    out = [parallel.to_host(probs_fn(state, parallel.global_array(images[b[rows]], mesh)))
           for b in batches]
    return np.concatenate(out)[masks.reshape(-1)].astype(np.float32)


def write_predictions(out_dir: Path, data: Dataset, probs: np.ndarray, class_names: list[str],
                      submission: bool) -> list[Path]:
    """predictions.csv (id, label, one probability column per class), test_probs.npy,
    and for the competition submission.csv (ImageId, Label)."""
    if not parallel.is_writer():
        return []
    predicted = probs.argmax(axis=1)
    names = np.asarray(class_names)
    table = pd.DataFrame({"id": data.ids, "label": names[predicted]})
    for c, name in enumerate(class_names):
        table[f"prob_{name}"] = probs[:, c]
    written = [files.write_csv(out_dir / "predictions.csv", table),
               files.write_npy(out_dir / "test_probs.npy", probs)]
    if submission:
        sub = pd.DataFrame({"ImageId": data.ids, "Label": names[predicted]})
        written.append(files.write_csv(out_dir / "submission.csv", sub))
    return written


def predict_test_set(config: ml_collections.ConfigDict, workdir: str | Path) -> list[Path]:
    """After training: predicts the config's test split, if it has one."""
    workdir = Path(workdir)
    state, meta = restore_best(config, workdir)
    data = load_test(config, meta["input_shape"], workdir / "cache")
    if data is None:
        return []
    probs = predict_probs(state, data.images, config, meta["normalization"])
    return write_predictions(workdir, data, probs, meta["class_names"], data.pixel_table)


def predict_path(config: ml_collections.ConfigDict, workdir: str | Path, input_path: str,
                 out_dir: str | Path) -> list[Path]:
    """`--mode=predict`: predicts the images at `input_path` with the workdir's best
    checkpoint; nothing is retrained."""
    workdir = Path(workdir)
    saved = workdir / "config.json"
    if saved.is_file():  # the architecture the checkpoint was trained with
        config = ml_collections.ConfigDict(json.loads(saved.read_text()))
    state, meta = restore_best(config, workdir)
    data = load_inputs(input_path, config, meta["input_shape"])
    probs = predict_probs(state, data.images, config, meta["normalization"])
    return write_predictions(Path(out_dir), data, probs, meta["class_names"], data.pixel_table)
