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


def stratified_folds(labels: np.ndarray, num_folds: int, seed: int) -> np.ndarray:
    """The fold (0..num_folds-1) of every row: each class is shuffled by `seed` and dealt
    round the folds, so every fold holds each class's share (sizes differ by at most 1
    per class)."""
    fold = np.empty(len(labels), np.int64)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        fold[members] = np.arange(len(members)) % num_folds
    return fold


def bag(indices: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A sorted random `fraction` of `indices` drawn by `seed` (all of them at 1.0):
    members trained on different bags see different rows (bagging)."""
    if fraction >= 1:
        return indices
    n = int(round(len(indices) * fraction))
    return np.sort(np.random.default_rng([seed, 0xBA6]).choice(indices, n, replace=False))


def train_val_rows(labels: np.ndarray, config) -> tuple[np.ndarray, np.ndarray]:
    """The training and validation rows a config names, sorted.

    With `config.num_folds` > 1 the validation rows are fold `config.fold` of a stratified
    k-fold partition (seeded by `split_seed`), so the k runs of one config predict every
    row once, each with a model that never saw it (out-of-fold); otherwise a stratified
    `val_fraction`. The training rows are then a `bag_fraction` bag drawn by `seed`.
    """
    if config.get("num_folds", 0) > 1:
        fold = stratified_folds(labels, config.num_folds, config.split_seed)
        val = np.flatnonzero(fold == config.fold)
        train = np.flatnonzero(fold != config.fold)
    else:
        train, val = stratified_split(labels, config.val_fraction, config.split_seed)
    return bag(train, config.get("bag_fraction", 1.0), config.seed), val


def epoch_order(indices: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of `indices` for one epoch: a function of (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(indices)


def steps_per_epoch(num_rows: int, batch_size: int) -> int:
    """Full batches in an epoch of `num_rows`: the incomplete tail is dropped."""
    return num_rows // batch_size


def epoch_batches(indices: np.ndarray, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """(steps, batch_size) global batches of one epoch (`steps_per_epoch` of them)."""
    order = epoch_order(indices, seed, epoch)
    steps = steps_per_epoch(len(order), batch_size)
    return order[: steps * batch_size].reshape(steps, batch_size)


def padded_batches(n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every index of range(n) in batches, the last padded: (indices, mask) of
    shape (num_batches, batch_size), so evaluation sees one static shape."""
    num = max(1, -(-n // batch_size))
    idx = np.arange(num * batch_size)
    mask = idx < n
    return np.where(mask, idx, 0).reshape(num, batch_size), mask.reshape(num, batch_size)
