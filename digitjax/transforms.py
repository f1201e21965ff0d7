"""Pure pixel transforms: image shapes, and uint8 -> the float32 the model sees.

Host-side functions take and return numpy arrays; `scale`, `standardize` and
`to_float` also run inside jit on jax arrays. Which rows are used, and in what
order, is `digitjax.data.sampling`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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
        if shape[2] not in (1, 3) and math.prod(shape) == num_pixels:
            raise UserError(
                f"{source}: config.image_size={image_size} makes its {num_pixels} pixel "
                f"columns {shape[2]} channels per pixel; expected 1 (grayscale) or 3 (RGB) "
                "(set config.channels to mean it)"
            )
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


def channel_stats(images, rows: np.ndarray | None = None,
                  chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 NHWC `images[rows]` on the [0, 1] scale.

    Streamed `chunk` rows at a time with exact integer sums, so an array and images
    decoded on demand (`LazyImages`, read in chunks) give the very same numbers.
    """
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    channels = images.shape[-1]
    count, sums, squares = 0, [0] * channels, [0] * channels
    for lo in range(0, len(rows), chunk):
        x = np.asarray(images[rows[lo:lo + chunk]]).reshape(-1, channels).astype(np.int64)
        count += len(x)
        sums = [s + int(v) for s, v in zip(sums, x.sum(axis=0), strict=True)]
        squares = [s + int(v) for s, v in zip(squares, (x * x).sum(axis=0), strict=True)]
    count = max(count, 1)
    mean = [s / (count * 255) for s in sums]  # exact integers, one rounding
    var = [(count * q - s * s) / (count * count * 255 * 255)
           for s, q in zip(sums, squares, strict=True)]
    return mean, [max(math.sqrt(v), 1e-6) for v in var]


def to_float(normalization: dict | None) -> Callable:
    """uint8 NHWC -> float32 for the model: `scale`, or `standardize` with the training
    split's per-channel {"mean", "std"} (a run's `normalization` record)."""
    if normalization is None:
        return scale
    mean = np.asarray(normalization["mean"], np.float32)
    std = np.asarray(normalization["std"], np.float32)
    return lambda images: standardize(images, mean, std)
