"""Augmentation as pure jax functions, run inside the jitted training step.

Each example gets its own random rotation, zoom, shift, shear and elastic
distortion drawn from the step's key, so the same key gives the same images on any
device layout (draws are made for the global batch under jit). Geometry is one inverse-mapped
warp (affine, plus the elastic field when on) with bilinear sampling and zero fill.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def random_augment(
    images: jax.Array,
    key: jax.Array,
    rotation_deg: float = 0.0,
    zoom: float = 0.0,
    shift: float = 0.0,
    flip_horizontal: bool = False,
    shear_deg: float = 0.0,
    elastic_alpha: float = 0.0,
    elastic_sigma: float = 4.0,
) -> jax.Array:
    """Randomly rotates (+-degrees), zooms (scale in 1 +- zoom), shifts (+- fraction
    of the size) and shears (x += tan(+-degrees) * y) each image of a float NHWC batch,
    optionally displaces every pixel by a smooth random field (Simard et al. 2003:
    uniform noise in [-1, 1] blurred by a Gaussian of `elastic_sigma` pixels, times
    `elastic_alpha` pixels), and optionally mirrors half of them left-right.

    The keyword arguments are `config.augment`'s fields.
    """
    b, h, w, _ = images.shape
    k_rot, k_zoom, k_shift, k_flip = jax.random.split(key, 4)
    # Shear and elastic keys are folded in, not split: the other draws, and so every
    # run made before these options existed, stay as they were.
    k_shear, k_elastic = jax.random.fold_in(key, 4), jax.random.fold_in(key, 5)

    def draw(k, shape, low, high):
        return jax.random.uniform(k, (b, *shape), minval=low, maxval=high)

    angle = jnp.deg2rad(draw(k_rot, (), -rotation_deg, rotation_deg))
    scale = draw(k_zoom, (), 1.0 - zoom, 1.0 + zoom)
    offset = draw(k_shift, (2,), -shift, shift)
    shear = jnp.deg2rad(draw(k_shear, (), -shear_deg, shear_deg)) if shear_deg else None
    displacement = None
    if elastic_alpha:
        noise = draw(k_elastic, (h, w, 2), -1.0, 1.0)
        displacement = elastic_alpha * gaussian_blur(noise, elastic_sigma)
    out = affine(images, angle, scale, offset * jnp.array([h, w], jnp.float32), shear,
                 displacement)
    if flip_horizontal:
        flip = draw(k_flip, (), 0.0, 1.0) < 0.5
        out = jnp.where(flip[:, None, None, None], out[:, :, ::-1], out)
    return out


def gaussian_blur(fields: jax.Array, sigma: float) -> jax.Array:
    """Blurs (B, H, W, C) fields with a Gaussian of `sigma` pixels, zero outside; as two
    small matrix products (H x H and W x W), which beat a 6-sigma-wide convolution."""
    _, h, w, _ = fields.shape

    def kernel(n):
        d = jnp.arange(n, dtype=jnp.float32)
        d = d[:, None] - d[None, :]
        return jnp.exp(-0.5 * (d / sigma) ** 2) / (sigma * jnp.sqrt(2 * jnp.pi))

    return jnp.einsum("ij,bjkc,lk->bilc", kernel(h), fields, kernel(w))


def affine(images: jax.Array, angle: jax.Array, scale: jax.Array, translate: jax.Array,
           shear: jax.Array | None = None, displacement: jax.Array | None = None) -> jax.Array:
    """Rotates by `angle` (radians), shears (x += tan(shear) * y, when given) and scales
    about the centre, then translates by `translate` (pixels, (dy, dx)); one set of
    parameters per example. `displacement` (B, H, W, 2), in pixels (dy, dx), moves
    where each output pixel samples before the affine map (an elastic warp)."""
    b, h, w, _ = images.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                          indexing="ij")
    ty, tx, cos, sin, inv, *tan = _per_image(
        translate[:, 0], translate[:, 1], jnp.cos(angle), jnp.sin(angle), 1.0 / scale,
        *([jnp.tan(shear)] if shear is not None else []))
    # Inverse map: the source pixel that lands on each output pixel.
    oy = ys[None] - cy - ty
    ox = xs[None] - cx - tx
    if displacement is not None:
        oy, ox = oy + displacement[..., 0], ox + displacement[..., 1]
    ry, rx = cos * oy + sin * ox, -sin * oy + cos * ox
    if tan:
        rx = rx - tan[0] * ry
    return bilinear_sample(images, ry * inv + cy, rx * inv + cx)


def _per_image(*values: jax.Array) -> list[jax.Array]:
    """The (B,) per-image parameters, as (B, 1, 1) arrays XLA computes once.

    CPU speed trick (one place, here): XLA:CPU fused the parameters' arithmetic (the
    uniform draws' bits to floats, cos, sin, 1 / scale) into each per-pixel fusion that
    used them, so every one of the B x H x W pixels recomputed its image's cos and sin,
    in four fusions. A product with the identity matrix is exact (x * 1 + 0) but is not
    fused into its consumers, so they read the B values from memory instead.
    (`lax.optimization_barrier` does not do it: XLA:CPU removes barriers before fusion.)
    Training step, old and new compiled in one process, 12 alternating rounds of 25
    steps, two runs: `configs/quick.py`'s (batch 64) 1.15x and 1.10x faster (round
    medians), the default's (batch 128, one device) 1.05x and 1.04x. The augmentation
    alone gives the same bits; inside the fused step XLA rounds otherwise, so runs differ
    from older ones in the last bits (same code and seed: same numbers).
    """
    stacked = jnp.stack(values, axis=1)
    eye = jnp.eye(len(values), dtype=stacked.dtype)
    stacked = jnp.dot(stacked, eye, precision=lax.Precision.HIGHEST)
    return [stacked[:, i, None, None] for i in range(len(values))]


def shift(images: jax.Array, dy: float, dx: float) -> jax.Array:
    """Moves every image by (dy, dx) pixels, filling with zeros (test-time augmentation)."""
    b = images.shape[0]
    zeros = jnp.zeros((b,), jnp.float32)
    move = jnp.broadcast_to(jnp.array([dy, dx], jnp.float32), (b, 2))
    return affine(images, zeros, zeros + 1.0, move)


def bilinear_sample(images: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
    """Samples NHWC `images` at float coordinates (B, H', W'); outside is zero.

    CPU speed trick (one place, here): the images are zero-padded by 2 and each output
    pixel's 2x2 window is fetched by ONE gather, its corner clamped into the padding, so
    a tap outside the image reads a zero and needs no mask. Four gathers of single
    pixels, each recomputing the coordinates, took ~1.3 ms apiece in `configs/quick.py`'s
    step (`experiments/profile_step.py`); the sampling alone, 128 x 28 x 28: 1.14 ->
    0.68 ms. The same weights in the same order: compiled alone, the same bits as four
    gathers; inside the training step XLA fuses it otherwise, so runs differ from older
    ones in the last bits (same code and seed: same numbers).
    """
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    y0, x0 = jnp.floor(y), jnp.floor(x)
    corner = jnp.stack([jnp.broadcast_to(jnp.arange(b, dtype=jnp.int32)[:, None, None], y.shape),
                        jnp.clip(y0 + 2, 0, h + 2).astype(jnp.int32),
                        jnp.clip(x0 + 2, 0, w + 2).astype(jnp.int32)], axis=-1)
    dims = lax.GatherDimensionNumbers(offset_dims=(3, 4, 5), collapsed_slice_dims=(0,),
                                      start_index_map=(0, 1, 2))
    windows = lax.gather(padded, corner, dims, (1, 2, 2, c), mode="clip")
    out = 0.0
    for dy in (0, 1):
        for dx in (0, 1):
            weight = (1 - jnp.abs(y - (y0 + dy))) * (1 - jnp.abs(x - (x0 + dx)))
            out = out + windows[..., dy, dx, :] * weight[..., None]
    return out.astype(images.dtype)
