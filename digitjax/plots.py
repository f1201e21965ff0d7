"""Figures as PNG bytes (matplotlib, no display needed): learning curves, the confusion
matrix, the grid of the worst mistakes, and runs compared.

`run_plots` makes a trained workdir's figures from its files alone (metrics.jsonl,
val_probs.npy, val_labels.npy, and the validation images from the data), after the
run: nothing here runs during training.
"""

from __future__ import annotations

import io
import json
import math

import ml_collections
import numpy as np
from etils import epath
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import ConfusionMatrixDisplay

from digitjax import files, parallel, scores
from digitjax.data import load_train
from digitjax.data.sampling import train_val_rows
from digitjax.errors import UserError
from digitjax.workdir import cache_dir, read_metrics

SUBDIR = "plots"
LEARNING_CURVES, CONFUSION_MATRIX, MISTAKES = ("learning_curves", "confusion_matrix",
                                               "val_mistakes")
MISTAKES_SHOWN = 32  # tiles in the grid of worst mistakes
_COLUMNS = 8  # tiles per row


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def learning_curves(history: list[dict]) -> bytes:
    """Train and validation loss and accuracy per epoch (metrics.jsonl records)."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    epochs = [r["epoch"] for r in history]
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy"), strict=True):
        for split in ("train", "val"):
            values = [r.get(f"{split}_{metric}") for r in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], marker="o",
                        label=f"{'validation' if split == 'val' else 'train'} {metric}")
        _epoch_axis(ax, epochs)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    return png(fig)


def confusion_matrix(matrix: list[list[int]] | np.ndarray, class_names: list[str],
                     title: str = "confusion matrix") -> bytes:
    """Rows: true class, columns: predicted, counts in each cell (up to 20 classes)."""
    k = len(class_names)
    side = min(20.0, max(4.5, 0.45 * k + 2))
    fig = Figure(figsize=(side, side * 0.9), layout="constrained")
    ax = fig.subplots()
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=[_short(c) for c in class_names]
                           ).plot(ax=ax, cmap="Blues", colorbar=False, include_values=k <= 20,
                                  xticks_rotation=45 if k > 10 else "horizontal")
    ax.set_title(title)
    return png(fig)


def mistakes(images: np.ndarray, labels: np.ndarray, probs: np.ndarray,
             class_names: list[str], limit: int = MISTAKES_SHOWN,
             title: str = "worst mistakes") -> bytes:
    """The most confident wrong predictions: each image (the photo, or the digit) with
    its true class, the predicted class and that class's probability."""
    worst = scores.worst_mistakes(labels, probs, limit)
    wrong = int(np.sum(probs.argmax(1) != labels))
    if not len(worst):
        fig = Figure(figsize=(6, 1))
        fig.text(0.5, 0.5, f"{title}: none (all {len(labels)} correct)", ha="center",
                 va="center")
        return png(fig)
    columns = min(_COLUMNS, len(worst))
    rows = math.ceil(len(worst) / columns)
    fig = Figure(figsize=(max(1.6 * columns, 6.4), 1.95 * rows + 0.4), layout="constrained")
    shown = "most confident first" if len(worst) == wrong else \
        f"the {len(worst)} most confident shown"
    fig.suptitle(f"{title}: {wrong} wrong of {len(labels)}, {shown}")
    for i, ax in enumerate(np.asarray(fig.subplots(rows, columns)).reshape(-1)):
        ax.set_axis_off()
        if i >= len(worst):
            continue
        row = worst[i]
        image = np.asarray(images[row])
        if image.shape[-1] == 1:
            ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(image)
        guess = int(probs[row].argmax())
        ax.set_title(f"true {_short(class_names[labels[row]])}\n"
                     f"pred {_short(class_names[guess])} {probs[row, guess]:.2f}", fontsize=8)
    return png(fig)


def compare_curves(histories: dict[str, list[dict]]) -> bytes:
    """Validation (or, without it, train) accuracy and loss per epoch, one line per run."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    for ax, metric in zip(fig.subplots(1, 2), ("accuracy", "loss"), strict=True):
        for name, history in histories.items():
            split = "val" if any(f"val_{metric}" in r for r in history) else "train"
            ax.plot([r["epoch"] for r in history],
                    [r.get(f"{split}_{metric}", np.nan) for r in history], marker="o",
                    label=f"{name} ({'validation' if split == 'val' else 'train'})")
        _epoch_axis(ax, sorted({r["epoch"] for h in histories.values() for r in h}))
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return png(fig)


def _epoch_axis(ax, epochs: list[int]) -> None:
    """Whole epochs on the x axis: each one while they are few."""
    ax.set_xlabel("epoch")
    if len(epochs) <= 20:
        ax.set_xticks(epochs)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _short(name: str, width: int = 14) -> str:
    name = str(name)
    return name if len(name) <= width else name[: width - 1] + "…"


def run_plots(config: ml_collections.ConfigDict, workdir: epath.PathLike) -> dict[str, bytes]:
    """A trained workdir's figures by name, from its files: learning curves, and with a
    validation split the best checkpoint's confusion matrix and worst mistakes."""
    workdir = epath.Path(workdir)
    figures = {LEARNING_CURVES: learning_curves(read_metrics(workdir))}
    if not (workdir / "val_probs.npy").is_file():
        return figures
    probs = np.load(io.BytesIO((workdir / "val_probs.npy").read_bytes()))  # a gs:// URL too
    labels = np.load(io.BytesIO((workdir / "val_labels.npy").read_bytes()))
    class_names = json.loads((workdir / "classes.json").read_text())
    figures[CONFUSION_MATRIX] = confusion_matrix(
        scores.score(labels, probs, class_names)["confusion_matrix"], class_names,
        "confusion matrix, validation split (best checkpoint)")
    data = load_train(config, cache_dir(workdir))
    _, val_idx = train_val_rows(data.labels, config)
    if not np.array_equal(data.labels[val_idx], labels):
        raise UserError(f"{workdir / 'val_labels.npy'}: not the validation split of "
                        f"{data.source} (has the data changed since training?)")
    figures[MISTAKES] = mistakes(data.images[val_idx], labels, probs, class_names,
                                 title="worst validation mistakes (best checkpoint)")
    return figures


def write_run_plots(config: ml_collections.ConfigDict,
                    workdir: epath.PathLike) -> list[epath.Path]:
    """`run_plots` as `<workdir>/plots/<name>.png` (process 0)."""
    figures = run_plots(config, workdir)
    if not parallel.is_writer():
        return []
    return [files.write_bytes(epath.Path(workdir) / SUBDIR / f"{name}.png", data)
            for name, data in figures.items()]
