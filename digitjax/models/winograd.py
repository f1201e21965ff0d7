"""The `winograd` CPU trick: a stride-1 convolution with a 3x3, 5x5 or 7x7 kernel by a
1-D Winograd F(2, k) down the image's height, on the direct kernel's register block
(direct_conv.cc's WinogradConv, an XLA FFI custom call): forward passes, and input
gradients (convolutions of the output gradient padded by k - 1) where it multiplies
fewer rows than the direct kernel, which skips the padding (`row_ratio`).

Each pair of output rows comes from k + 1 input rows: out = A^T [(G w) * (B^T d)], the
transpose of Toom-Cook's linear convolution on the points 0, +-1, +-2 (+-1/2 for k = 7)
and infinity. The kernel multiplies k + 1 transformed rows of 1 x k taps per pair where
the direct form multiplies 2k rows: 0.57x the multiply-adds for 7x7, 0.6x for 5x5, 0.67x
for 3x3. Rows in the padding are packed as zeros, and their transformed rows multiplied;
taps in the width's padding are skipped as in the direct kernel. kernel_cnn:5 and :7 ran
their forward passes at this CPU's FMA peak (the direct kernel at 93-97% of XLA's matmul
rate), as did PyTorch's oneDNN: fewer multiplies was what was left. Only the sums' order
changes: against lax at "highest" precision its largest error was 1.4-3.0e-6 of the
largest output on kernel_cnn:5/:7's layers, the direct kernel's 0.6-2.4e-6 (a one-off
check; tests/test_winograd.py bounds it at 1e-5). Measured in models/conv.py (trick 7).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from digitjax.models import direct_conv, weight_grad

KERNEL_SIZES = (3, 5, 7)  # the heights it is used for
MIN_CHANNELS = 8  # input channels at least: first layers (1 channel) keep the direct kernel
# Rows of products, Winograd's over the direct kernel's, at most: the direct kernel skips
# the rows in the padding, Winograd's pairs multiply them (transformed, they are not
# zeros). Per convolution against the direct kernel, by this ratio (batch 128, Zen 1,
# 9 alternating rounds; `DIGITJAX_CPU_DEVICES=1 python experiments/winograd_layers.py`,
# experiments/results/winograd_layers_zen1.md): unpadded 0.57-0.67 1.15-1.53x; SAME
# 3x3 0.68-0.70 1.08-1.28x; input gradients (padded by k - 1) 0.72-0.80 1.07-1.22x, 0.83
# 1.08x and 1.13x, 0.90-0.91 0.99x and 1.00x, 1.43 0.65x.
MAX_ROW_RATIO = 0.85


def row_ratio(h: int, kh: int, pad: tuple[int, int]) -> float:
    """Kernel rows multiplied, Winograd's over the direct kernel's, for an input of height
    h padded by `pad` (low, high): (kh + 1) per pair of output rows, against the rows of
    each output row's window that fall inside the input."""
    oh = direct_conv.out_size(h, kh, pad)
    direct = sum(max(0, min(kh, h + pad[0] - y) - max(0, pad[0] - y)) for y in range(oh))
    return (oh + 1) // 2 * (kh + 1) / max(direct, 1)


@functools.cache
def toom_cook(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A^T, G, B^T) of the 1-D correlation F(2, k), y = A^T [(G w) * (B^T d)] for the
    k + 1 inputs d and k taps w: the transposed evaluation matrices of Toom-Cook on the
    points 0, +-1, +-2, +-1/2 (as many as needed) and infinity, in float64."""
    n = k + 1
    points = [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5][: n - 1]

    def evaluation(size: int) -> np.ndarray:  # n x size; infinity takes the top coefficient
        rows = [[p ** e for e in range(size)] for p in points]
        return np.array(rows + [[float(e == size - 1) for e in range(size)]])

    bt = np.linalg.inv(evaluation(n)).T
    bt[np.abs(bt) < 1e-12] = 0.0  # the inverse's rounding leaves ~1e-17 for exact zeros
    return evaluation(2).T, evaluation(k), bt


def takes(x: jax.Array, w: jax.Array, pads) -> bool:
    """Whether `conv` computes this stride-1 convolution, `pads` as (low, high) pairs for
    H and W: one the direct kernel takes (`direct_conv.takes`: float32, one XLA device
    with the kernels built, each low padding below the kernel's size, none negative, an
    output of at least one pixel) with a kernel height in KERNEL_SIZES, at least
    MIN_CHANNELS input channels, and at most MAX_ROW_RATIO of the direct kernel's rows
    of products."""
    kh, _, c, _ = w.shape
    return (kh in KERNEL_SIZES and c >= MIN_CHANNELS and direct_conv.takes(x, w, pads)
            and row_ratio(x.shape[1], kh, pads[0]) <= MAX_ROW_RATIO)


def conv(x: jax.Array, w: jax.Array, pads=((0, 0), (0, 0))) -> jax.Array:
    """The stride-1 convolution of x (NHWC) with w (HWIO), `pads` as (low, high) pairs for
    H and W, as `takes` allows."""
    kh, kw, _, f = w.shape
    n, h, wd, c = x.shape
    oh, ow = direct_conv.out_size(h, kh, pads[0]), direct_conv.out_size(wd, kw, pads[1])
    at, g, bt = toom_cook(kh)
    u = jnp.tensordot(jnp.asarray(g, jnp.float32), w, ((1,), (0,)))  # (kh + 1, kw, c, f)
    rows = (oh + 1) // 2 * 2 + kh - 1  # the padded input rows the pairs read
    out, _ = jax.ffi.ffi_call(  # the second result is the kernel's scratch: padded rows
        weight_grad.WINOGRAD_TARGET,
        (jax.ShapeDtypeStruct((n, oh, ow, f), jnp.float32),
         jax.ShapeDtypeStruct((n, rows, wd, c), jnp.float32)),
        vmap_method="sequential")(x, weight_grad.pad_to_vectors(u),
                                  jnp.asarray(bt, jnp.float32), jnp.asarray(at, jnp.float32),
                                  pad_h=np.int64(pads[0][0]), pad_w=np.int64(pads[1][0]))
    return out
