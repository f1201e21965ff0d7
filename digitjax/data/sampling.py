"""Which rows train and validate, and in what order: functions of seeds alone.

Nothing here keeps state: the data order is a function of (seed, epoch), which is
what makes resume exact and every device layout see the same batches.
"""

from __future__ import annotations

import numpy as np


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and validation indices; each class keeps its share in both.

    `val_fraction == 0` puts every row in training (the final fit on Kaggle).
    """
    if val_fraction <= 0:
        return np.arange(len(labels)), np.zeros(0, np.int64)
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_val = int(round(len(members) * val_fraction))
        val.append(rng.permutation(members)[:n_val])
    val = np.sort(np.concatenate(val))
    train = np.setdiff1d(np.arange(len(labels)), val, assume_unique=True)
    return train, val


def epoch_order(indices: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of `indices` for one epoch: a function of (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(indices)


def epoch_batches(indices: np.ndarray, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """(steps, batch_size) global batches of one epoch; the incomplete tail is dropped."""
    order = epoch_order(indices, seed, epoch)
    steps = len(order) // batch_size
    return order[: steps * batch_size].reshape(steps, batch_size)


def padded_batches(n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every index of range(n) in batches, the last padded: (indices, mask) of
    shape (num_batches, batch_size), so evaluation sees one static shape."""
    num = max(1, -(-n // batch_size))
    idx = np.arange(num * batch_size)
    mask = idx < n
    return np.where(mask, idx, 0).reshape(num, batch_size), mask.reshape(num, batch_size)
