"""Augmentation as pure jax functions, run inside the jitted training step.

Each example gets its own random rotation, zoom and shift drawn from the step's
key, so the same key gives the same images on any device layout (draws are made
for the global batch). Geometry is one inverse-mapped affine warp with bilinear
sampling and zero fill.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def random_affine(
    images: jax.Array,
    key: jax.Array,
    rotation_deg: float = 0.0,
    zoom: float = 0.0,
    shift: float = 0.0,
    part: tuple[jax.Array, int] | None = None,
    flip_horizontal: bool = False,
) -> jax.Array:
    """Randomly rotates (+-degrees), zooms (scale in 1 +- zoom) and shifts (+- fraction
    of the size) each image of a float NHWC batch, and optionally mirrors half of
    them left-right.

    `part=(index, count)` says this batch is part `index` of `count` equal parts of
    a global batch (pmap): the draws are made for the whole and sliced, so each
    example gets what it would get unsplit.
    """
    b, h, w, _ = images.shape
    index, count = part if part is not None else (0, 1)
    k_rot, k_zoom, k_shift, k_flip = jax.random.split(key, 4)

    def draw(k, shape, low, high):
        values = jax.random.uniform(k, (b * count, *shape), minval=low, maxval=high)
        return jax.lax.dynamic_slice_in_dim(values, index * b, b)

    angle = jnp.deg2rad(draw(k_rot, (), -rotation_deg, rotation_deg))
    scale = draw(k_zoom, (), 1.0 - zoom, 1.0 + zoom)
    offset = draw(k_shift, (2,), -shift, shift)
    out = affine(images, angle, scale, offset * jnp.array([h, w], jnp.float32))
    if flip_horizontal:
        flip = draw(k_flip, (), 0.0, 1.0) < 0.5
        out = jnp.where(flip[:, None, None, None], out[:, :, ::-1], out)
    return out


def affine(images: jax.Array, angle: jax.Array, scale: jax.Array,
           translate: jax.Array) -> jax.Array:
    """Rotates by `angle` (radians) and scales about the centre, then translates by
    `translate` (pixels, (dy, dx)); one set of parameters per example."""
    b, h, w, _ = images.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                          indexing="ij")
    # Inverse map: the source pixel that lands on each output pixel.
    oy = ys[None] - cy - translate[:, 0, None, None]
    ox = xs[None] - cx - translate[:, 1, None, None]
    cos, sin = jnp.cos(angle)[:, None, None], jnp.sin(angle)[:, None, None]
    inv = 1.0 / scale[:, None, None]
    src_y = (cos * oy + sin * ox) * inv + cy
    src_x = (-sin * oy + cos * ox) * inv + cx
    return bilinear_sample(images, src_y, src_x)


def shift(images: jax.Array, dy: float, dx: float) -> jax.Array:
    """Moves every image by (dy, dx) pixels, filling with zeros (test-time augmentation)."""
    b = images.shape[0]
    zeros = jnp.zeros((b,), jnp.float32)
    move = jnp.broadcast_to(jnp.array([dy, dx], jnp.float32), (b, 2))
    return affine(images, zeros, zeros + 1.0, move)


def bilinear_sample(images: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
    """Samples NHWC `images` at float coordinates (B, H', W'); outside is zero."""
    b, h, w, c = images.shape
    flat = images.reshape(b, h * w, c)
    y0, x0 = jnp.floor(y), jnp.floor(x)
    out = 0.0
    for dy in (0, 1):
        for dx in (0, 1):
            yy, xx = y0 + dy, x0 + dx
            weight = (1 - jnp.abs(y - yy)) * (1 - jnp.abs(x - xx))
            inside = (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
            idx = (jnp.clip(yy, 0, h - 1) * w + jnp.clip(xx, 0, w - 1)).astype(jnp.int32)
            picked = jnp.take_along_axis(flat, idx.reshape(b, -1, 1), axis=1)
            out = out + picked * (weight * inside).reshape(b, -1, 1)
    return out.reshape(b, *y.shape[1:], c).astype(images.dtype)
