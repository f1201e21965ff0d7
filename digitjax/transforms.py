"""Pure data transforms: shapes, scaling, splits and the order of examples.

Host-side functions take and return numpy arrays; `scale` and `standardize` also
run inside jit on jax arrays. Nothing here keeps state: the data order is a
function of (seed, epoch) alone, which is what makes resume exact.
"""

from __future__ import annotations

import math

import numpy as np

from digitjax.errors import UserError


def infer_image_shape(
    num_pixels: int, image_size: int = 0, channels: int = 0, source: str = "data"
) -> tuple[int, int, int]:
    """H, W, C for rows of `num_pixels` values; square images unless the config says."""
    if image_size and channels:
        shape = (image_size, image_size, channels)
    elif image_size:
        shape = (image_size, image_size, num_pixels // (image_size * image_size) or 1)
    else:
        for c in ([channels] if channels else [1, 3]):
            side = math.isqrt(num_pixels // c)
            if side * side * c == num_pixels:
                shape = (side, side, c)
                break
        else:
            raise UserError(
                f"{source}: cannot infer the image shape from {num_pixels} pixel columns "
                "(expected side*side*channels); set config.image_size and config.channels"
            )
    if math.prod(shape) != num_pixels:
        raise UserError(
            f"{source}: has {num_pixels} pixel columns, but config.image_size/channels "
            f"give {shape[0]}x{shape[1]}x{shape[2]} = {math.prod(shape)}"
        )
    return shape


def reshape_images(flat: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(N, H*W*C) row-major pixel rows -> (N, H, W, C)."""
    return flat.reshape((flat.shape[0], *shape))


def scale(images):
    """uint8 [0, 255] -> float32 [0, 1]; works on numpy and jax arrays."""
    return images.astype("float32") * (1.0 / 255.0)


def standardize(images, mean, std):
    """uint8 -> float32 with per-channel zero mean and unit variance."""
    return (scale(images) - mean) / std


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 NHWC images on the [0, 1] scale."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return x.mean(axis=0).tolist(), np.maximum(x.std(axis=0), 1e-6).tolist()


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
