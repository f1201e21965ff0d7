"""Prediction from a workdir's best checkpoint: class probabilities for a set of
images, written as predictions.csv (and submission.csv for the competition)."""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections
import numpy as np
import pandas as pd

from digitjax import augment, checkpoint, console, files, parallel, scores, transforms
from digitjax.data import Dataset, load_inputs, load_test, load_train
from digitjax.data.sampling import padded_batches, stratified_split
from digitjax.errors import UserError
from digitjax.train import TrainState, apply_model, create_train_state
from digitjax.workdir import saved_config

PRINT_AT_MOST = 20  # --mode=predict prints each image's class for this many images or fewer


def restore_best(config: ml_collections.ConfigDict, workdir: str | Path):
    """(state, meta) of the best checkpoint in `workdir` (the latest if none is marked best)."""
    kind = checkpoint.BEST if checkpoint.exists(workdir, checkpoint.BEST) else checkpoint.LATEST
    return restore_checkpoint(config, workdir, kind)


def restore_checkpoint(config: ml_collections.ConfigDict, workdir: str | Path, kind: str):
    """(state, meta) of the checkpoint `kind` (checkpoint.LATEST or checkpoint.BEST)."""
    meta = checkpoint.read_meta(workdir, kind)
    if meta is None:
        raise UserError(f"{workdir}: no checkpoint to predict with (train first)")
    template = parallel.init_state(
        lambda: create_train_state(config, jax.random.key(0), tuple(meta["input_shape"]),
                                   len(meta["class_names"])),
        parallel.data_mesh(), config.shard_params)
    return checkpoint.restore(workdir, template, kind)


def predict_probs(state: TrainState, images: np.ndarray, config, norm,
                  tta_shifts=None) -> np.ndarray:
    """(N, classes) float32 softmax probabilities of uint8 NHWC `images`, averaged
    over the test-time shifts (`config.tta_shifts` unless given)."""
    mesh = parallel.data_mesh()
    to_float = transforms.to_float(norm)
    shifts = [tuple(s) for s in (config.tta_shifts if tta_shifts is None else tta_shifts)]

    def probs(s, x):
        x = to_float(x)
        views = [x if (dy, dx) == (0, 0) else augment.shift(x, dy, dx)
                 for dy, dx in shifts or [(0, 0)]]
        return sum(jax.nn.softmax(apply_model(s, v)) for v in views) / len(views)

    probs_fn = jax.jit(probs)
    batches, masks = padded_batches(len(images), config.eval_batch_size)
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


def predict_test_set(config: ml_collections.ConfigDict, workdir: str | Path,
                     restored=None) -> list[Path]:
    """After training: predicts the config's test split, if it has one, with the best
    checkpoint (`restored` = `restore_best`'s result, to load it only once)."""
    workdir = Path(workdir)
    state, meta = restored or restore_best(config, workdir)
    data = load_test(config, meta["input_shape"], workdir / "cache")
    if data is None:
        return []
    probs = predict_probs(state, data.images, config, meta["normalization"])
    return write_predictions(workdir, data, probs, meta["class_names"],
                             data.writes_submission)


def validation_report(config: ml_collections.ConfigDict, workdir: str | Path,
                      restored=None) -> dict:
    """The best checkpoint on the validation split, with and without test-time
    augmentation: val_probs.npy / val_labels.npy (for ensembles) and summary.json, which
    also holds precision, recall, F1 and support per class and the confusion matrix
    (of val_probs.npy: with test-time augmentation when it is set)."""
    workdir = Path(workdir)
    state, meta = restored or restore_best(config, workdir)
    data = load_train(config, workdir / "cache")
    _, val_idx = stratified_split(data.labels, config.val_fraction, config.split_seed)
    if not len(val_idx):
        return {}
    images, labels = data.images[val_idx], data.labels[val_idx]
    plain = predict_probs(state, images, config, meta["normalization"], tta_shifts=())
    summary = {"best_epoch": meta["epoch"],
               "val_accuracy": float(np.mean(plain.argmax(1) == labels))}
    probs = plain
    if config.tta_shifts:
        probs = predict_probs(state, images, config, meta["normalization"])
        summary["val_accuracy_tta"] = float(np.mean(probs.argmax(1) == labels))
    scored = scores.score(labels, probs, meta["class_names"])  # of val_probs.npy (TTA if set)
    summary.update({k: scored[k] for k in ("macro_f1", "per_class", "confusion_matrix")})
    if parallel.is_writer():
        files.write_npy(workdir / "val_probs.npy", probs)
        files.write_npy(workdir / "val_labels.npy", labels)
        files.write_json(workdir / "summary.json", summary)
    return summary


def predict_path(config: ml_collections.ConfigDict, workdir: str | Path, input_path: str,
                 out_dir: str | Path) -> list[Path]:
    """`--mode=predict`: predicts the images at `input_path` (a folder of images, one
    image file or a pixel CSV) with the workdir's best checkpoint; nothing is retrained.
    Up to PRINT_AT_MOST images are also printed: id, class and its probability."""
    workdir = Path(workdir)
    config = saved_config(workdir, config)
    state, meta = restore_best(config, workdir)
    data = load_inputs(input_path, config, meta["input_shape"])
    probs = predict_probs(state, data.images, config, meta["normalization"])
    if len(probs) <= PRINT_AT_MOST:
        for ident, p in zip(data.ids, probs, strict=True):
            console.log(f"{ident}: {meta['class_names'][p.argmax()]} "
                        f"(probability {p.max():.4f})")
    return write_predictions(Path(out_dir), data, probs, meta["class_names"],
                             data.writes_submission)
