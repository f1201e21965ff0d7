"""Strided convolutions as stride-1 convolutions over space-to-depth inputs.

XLA:CPU computes the input gradient of a strided convolution with a generic loop
(the gradient is a convolution with a dilated input, which its fast library
kernels do not take): ~50 ms per strided layer at batch 128, ten times a
stride-1 convolution of the same size. A k x k convolution with stride s equals a
ceil(k/s) x ceil(k/s) stride-1 convolution over the input rearranged into s x s
blocks of pixels ("space to depth"), with the kernel zero-padded to a multiple of
s and rearranged the same way. The parameters keep their usual shape, so the
trick is invisible to checkpoints; only the order of the sums changes. The
`strided_cnn` step is 1.36x faster with it (`python experiments/xla_options.py
--model strided_cnn`).

Used on CPU only, where it was measured; other backends get `lax.conv_general_dilated`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")  # the layout flax's nn.Conv uses, and the only one rearranged


def _space_to_depth(x: jax.Array, s: int) -> jax.Array:
    n, h, w, c = x.shape
    x = x.reshape(n, h // s, s, w // s, s, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // s, w // s, s * s * c)


def space_to_depth_conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                        padding, lhs_dilation=None, rhs_dilation=None,
                        dimension_numbers=None, feature_group_count: int = 1,
                        precision=None) -> jax.Array:
    """Drop-in for `lax.conv_general_dilated` as flax's `nn.Conv` calls it (NHWC, HWIO)."""
    strides = tuple(window_strides)
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
    plain = (jax.default_backend() != "cpu" or len(strides) != 2 or strides[0] != strides[1]
             or strides[0] == 1 or feature_group_count != 1
             or any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
             or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != nhwc)
    if plain:
        return lax.conv_general_dilated(lhs, rhs, strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count,
                                        precision=precision)
    s = strides[0]
    kh, kw = rhs.shape[:2]
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), strides, padding)
    out_h = (lhs.shape[1] + sum(padding[0]) - kh) // s + 1
    out_w = (lhs.shape[2] + sum(padding[1]) - kw) // s + 1
    bh, bw = math.ceil(kh / s), math.ceil(kw / s)  # the kernel in s x s blocks
    # Pad so that the blocked input holds exactly out + blocks - 1 blocks per axis;
    # the extra rows and columns meet only the kernel's zero padding.
    need_h, need_w = (out_h + bh - 1) * s, (out_w + bw - 1) * s
    x = lax.pad(lhs, jnp.zeros((), lhs.dtype),  # lax.pad: the high side may be negative
                ((0, 0, 0),
                 (padding[0][0], need_h - lhs.shape[1] - padding[0][0], 0),
                 (padding[1][0], need_w - lhs.shape[2] - padding[1][0], 0),
                 (0, 0, 0)))
    w = jnp.pad(rhs, ((0, bh * s - kh), (0, bw * s - kw), (0, 0), (0, 0)))
    c, f = rhs.shape[2:]
    w = w.reshape(bh, s, bw, s, c, f).transpose(0, 2, 1, 3, 4, 5).reshape(bh, bw, s * s * c, f)
    return lax.conv_general_dilated(_space_to_depth(x, s), w, (1, 1), "VALID",
                                    dimension_numbers=NHWC, precision=precision)
