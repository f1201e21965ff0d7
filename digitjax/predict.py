"""Prediction from a workdir's best checkpoint: class probabilities for a set of
images, written as predictions.csv (and submission.csv for the competition)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
import pandas as pd
from etils import epath

from digitjax import augment, checkpoint, console, files, parallel, scores, transforms
from digitjax.data import Dataset, load_inputs, load_test, load_train
from digitjax.data.sampling import padded_batches, train_val_rows
from digitjax.train import TrainState, apply_model, create_train_state
from digitjax.workdir import cache_dir, saved_config

PRINT_AT_MOST = 20  # --mode=predict prints each image's class for this many images or fewer


def restore_checkpoint(config: ml_collections.ConfigDict, workdir: epath.PathLike,
                       which: str = "best"):
    """(state, meta) of the best epoch-end checkpoint in `workdir` (by validation
    accuracy; the newest when there is no validation; a damaged one is skipped), or
    with which="latest" of the newest checkpoint."""

    def template(meta: dict):
        return parallel.abstract_state(
            lambda: create_train_state(config, jax.random.key(0), tuple(meta["input_shape"]),
                                       len(meta["class_names"])),
            parallel.data_mesh(config), config.shard_params)

    return checkpoint.load(workdir, template, which)


def restore_best(config: ml_collections.ConfigDict, workdir: epath.PathLike):
    """The checkpoint that predicts: the best by validation accuracy, or with
    `config.predict_checkpoint = "last"` the newest (nothing chosen on validation)."""
    which = {"best": "best", "last": "latest"}[config.get("predict_checkpoint", "best")]
    return restore_checkpoint(config, workdir, which)


def predict_probs(state: TrainState, images: np.ndarray, config, norm,
                  tta_shifts=None) -> np.ndarray:
    """(N, classes) float32 softmax probabilities of uint8 NHWC `images`, averaged
    over the test-time shifts (`config.tta_shifts` unless given)."""
    mesh = parallel.data_mesh(config)
    shifts = tuple(tuple(s) for s in (config.tta_shifts if tta_shifts is None else tta_shifts))
    key = None if norm is None else json.dumps(
        {k: np.asarray(v, np.float32).tolist() for k, v in sorted(norm.items())})
    probs_fn = _probs_fn(key, shifts)
    # Each image's prediction is its own, so the batch is only a unit of work: rounded
    # up to a multiple of the mesh, a run saved with eval batch 5 on one device still
    # predicts where the user chose 2 (training refuses such a batch; see config_checks).
    batch = -(-config.eval_batch_size // mesh.size) * mesh.size
    batches, masks = padded_batches(len(images), batch)
    rows = parallel.process_rows(batch)
    out = [parallel.to_host(probs_fn(state, parallel.global_array(images[b[rows]], mesh)))
           for b in batches]
    return np.concatenate(out)[masks.reshape(-1)].astype(np.float32)


@functools.lru_cache(maxsize=8)
def _probs_fn(norm_json: str | None, shifts: tuple) -> Callable:
    """The jitted prediction of one (normalization, shifts) pair, made once per process:
    a new closure per call traced and compiled again (0.3-0.65 s each on a 2-core CPU),
    and a trained run predicts its validation rows and then the test rows with one."""
    to_float = transforms.to_float(None if norm_json is None else json.loads(norm_json))

    def probs(s, x):
        x = to_float(x)
        views = [x if (dy, dx) == (0, 0) else augment.shift(x, dy, dx)
                 for dy, dx in shifts or [(0, 0)]]
        return sum(jax.nn.softmax(apply_model(s, v)) for v in views) / len(views)

    return jax.jit(probs)


def write_predictions(out_dir: epath.PathLike, data: Dataset, probs: np.ndarray,
                      class_names: list[str],
                      submission: bool) -> list[epath.Path]:
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


def predict_test_set(config: ml_collections.ConfigDict, workdir: epath.PathLike,
                     restored=None) -> list[epath.Path]:
    """After training: predicts the config's test split, if it has one, with the best
    checkpoint (`restored` = `restore_best`'s result, to load it only once)."""
    workdir = epath.Path(workdir)
    state, meta = restored or restore_best(config, workdir)
    data = load_test(config, meta["input_shape"], cache_dir(workdir), meta.get("pixel_columns"))
    if data is None:
        return []
    probs = predict_probs(state, data.images, config, meta["normalization"])
    written = write_predictions(workdir, data, probs, meta["class_names"],
                                data.writes_submission)
    if data.labels is not None:  # a labelled test split (TFDS): report its accuracy
        written += report_test_accuracy(workdir, data, probs)
    return written


def report_test_accuracy(workdir: epath.Path, data: Dataset,
                         probs: np.ndarray) -> list[epath.Path]:
    """Logs the accuracy on the test rows that have a label (>= 0) and adds it to
    summary.json as test_accuracy / test_count."""
    labelled = data.labels >= 0
    accuracy = float(np.mean(probs.argmax(1)[labelled] == data.labels[labelled]))
    console.log(f"test accuracy {accuracy:.4f} on {int(labelled.sum())} labelled images of "
                f"{data.source}")
    if not parallel.is_writer():
        return []
    path = workdir / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary.update(test_accuracy=accuracy, test_count=int(labelled.sum()))
    return [files.write_json(path, summary)]


def validation_report(config: ml_collections.ConfigDict, workdir: epath.PathLike,
                      restored=None) -> dict:
    """The best checkpoint on the validation split, with and without test-time
    augmentation: val_probs.npy, val_labels.npy and val_rows.npy (for ensembles and
    out-of-fold estimates) and summary.json, which also holds precision, recall, F1 and
    support per class and the confusion matrix (of val_probs.npy: with test-time
    augmentation when it is set)."""
    workdir = epath.Path(workdir)
    state, meta = restored or restore_best(config, workdir)
    data = load_train(config, cache_dir(workdir))
    _, val_idx = train_val_rows(data.labels, config)
    if not len(val_idx):
        return {}
    # a copy of the rows for an array; a view decoding them on demand for LazyImages
    images, labels = data.images.take(val_idx, axis=0), data.labels[val_idx]
    plain = predict_probs(state, images, config, meta["normalization"], tta_shifts=())
    summary = {"best_epoch": meta["epoch"], "val_count": len(labels),
               "checkpoint": config.get("predict_checkpoint", "best"),
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
        files.write_npy(workdir / "val_rows.npy", val_idx)  # rows of the training data
        files.write_json(workdir / "summary.json", summary)
    return summary


def predict_path(config: ml_collections.ConfigDict, workdir: epath.PathLike, input_path: str,
                 out_dir: epath.PathLike) -> list[epath.Path]:
    """`--mode=predict`: predicts the images at `input_path` (a folder of images, one
    image file or a pixel CSV) with the workdir's best checkpoint; nothing is retrained.
    Up to PRINT_AT_MOST images are also printed: id, class and its probability."""
    workdir = epath.Path(workdir)
    config = saved_config(workdir, config)
    state, meta = restore_best(config, workdir)
    data = load_inputs(input_path, config, meta["input_shape"],
                       columns=meta.get("pixel_columns"))
    probs = predict_probs(state, data.images, config, meta["normalization"])
    if len(probs) <= PRINT_AT_MOST:
        for ident, p in zip(data.ids, probs, strict=True):
            console.log(f"{ident}: {meta['class_names'][p.argmax()]} "
                        f"(probability {p.max():.4f})")
    return write_predictions(epath.Path(out_dir), data, probs, meta["class_names"],
                             data.writes_submission)
