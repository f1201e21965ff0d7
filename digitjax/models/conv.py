"""Convolutions XLA:CPU runs slowly, rewritten into forms it runs fast. Two tricks,
each used on CPU only, where it was measured, and each with the usual parameter
shapes (invisible to checkpoints; only the order of the sums changes). `cpu_conv`
picks between them; `DIGITJAX_CPU_CONV_TRICKS=0` (read when a model is traced)
turns both off, leaving every convolution to `lax.conv_general_dilated`.

1. Strided convolutions as stride-1 convolutions over space-to-depth inputs
   (`space_to_depth_conv`). XLA:CPU computes the input gradient of a strided
   convolution with a generic loop (the gradient is a convolution with a dilated
   input, which its fast library kernels do not take): ~50 ms per strided layer at
   batch 128, ten times a stride-1 convolution of the same size. A k x k convolution
   with stride s equals a ceil(k/s) x ceil(k/s) stride-1 convolution over the input
   rearranged into s x s blocks of pixels ("space to depth"), with the kernel
   zero-padded to a multiple of s and rearranged the same way. The `strided_cnn` step
   is 1.36x faster with it (`python experiments/xla_options.py --model strided_cnn`).

2. Convolutions whose output is smaller than their kernel (`small_output_conv`), such
   as the last 7x7 layer of `kernel_cnn:7` (10x10 in, 4x4 out). Their input gradient
   is a "full" convolution of the 4x4 output gradient with the 7x7 kernel; XLA's
   simplifier swaps its operands (the kernel is larger than the image) into a layout
   Eigen does not take, and the generic loop it falls to took 135 of the step's 175 ms
   of thread time. Here that gradient is a matmul of the output gradient with the
   kernel (the same FLOPs as the forward pass) followed by col2im (each kernel tap's
   slice added at its offset): 136 ms -> 18-24 ms for that layer's input gradient at
   batch 128 (a one-off micro-benchmark); the whole `kernel_cnn:7` step is 1.42x faster
   (experiments/results/rewrites_kernel_cnn7.md, `python experiments/xla_options.py`).
"""

from __future__ import annotations

import math
import os
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
    plain = (not tricks_on() or len(strides) != 2 or strides[0] != strides[1]
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


def tricks_on() -> bool:
    """Whether this trace may use the CPU rewrites (CPU backend, not switched off)."""
    return (jax.default_backend() == "cpu"
            and os.environ.get("DIGITJAX_CPU_CONV_TRICKS", "1") != "0")


@jax.custom_vjp
def _valid_conv(x: jax.Array, w: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=NHWC)


def _valid_conv_fwd(x: jax.Array, w: jax.Array):
    return _valid_conv(x, w), (x, w)


def _valid_conv_bwd(res, g: jax.Array):
    x, w = res
    kh, kw, c, _ = w.shape
    n, oh, ow, _ = g.shape
    cols = jnp.einsum("nhwo,ijco->nhwijc", g, w)  # each output pixel's gradient per tap
    dx = jnp.zeros((n, oh + kh - 1, ow + kw - 1, c), g.dtype)
    for i in range(kh):  # col2im: tap (i, j) of output pixel (h, w) came from (h+i, w+j)
        for j in range(kw):
            dx = dx + jnp.pad(cols[:, :, :, i, j],
                              ((0, 0), (i, kh - 1 - i), (j, kw - 1 - j), (0, 0)))
    _, weight_vjp = jax.vjp(lambda w: lax.conv_general_dilated(
        x, w, (1, 1), "VALID", dimension_numbers=NHWC), w)
    return dx.astype(x.dtype), weight_vjp(g)[0]


_valid_conv.defvjp(_valid_conv_fwd, _valid_conv_bwd)


def small_output_conv(lhs: jax.Array, rhs: jax.Array, padding) -> jax.Array:
    """A stride-1 NHWC/HWIO convolution whose input gradient is a matmul and col2im."""
    kh, kw = rhs.shape[:2]
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), (1, 1), padding)
    x = lax.pad(lhs, jnp.zeros((), lhs.dtype),
                ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))
    return _valid_conv(x, rhs)


def cpu_conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding,
             lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
             feature_group_count: int = 1, precision=None) -> jax.Array:
    """Drop-in for `lax.conv_general_dilated` as flax's `nn.Conv` calls it: a strided
    NHWC convolution goes to `space_to_depth_conv`, a stride-1 one whose output is
    smaller than its kernel to `small_output_conv`, everything else to lax."""
    plain = (not tricks_on() or feature_group_count != 1
             or any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
             or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
             != lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC))
    if not plain and any(s != 1 for s in window_strides):
        return space_to_depth_conv(lhs, rhs, window_strides, padding, lhs_dilation,
                                   rhs_dilation, dimension_numbers, feature_group_count,
                                   precision)
    if not plain and precision is None:
        kh, kw = rhs.shape[:2]
        pads = (lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), (1, 1), padding)
                if isinstance(padding, str) else padding)
        out_h, out_w = (lhs.shape[i + 1] + sum(pads[i]) - k + 1 for i, k in enumerate((kh, kw)))
        if out_h < kh or out_w < kw:
            return small_output_conv(lhs, rhs, pads)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    precision=precision)
