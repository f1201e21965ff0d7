"""The `winograd` CPU trick: the forward pass of a stride-1 unpadded convolution with a
3x3, 5x5 or 7x7 kernel by a 1-D Winograd F(2, k) down the image's height, on the direct
kernel's register block (direct_conv.cc's WinogradConv, an XLA FFI custom call).

Each pair of output rows comes from k + 1 input rows: out = A^T [(G w) * (B^T d)], the
transpose of Toom-Cook's linear convolution on the points 0, +-1, +-2 (+-1/2 for k = 7)
and infinity. The kernel multiplies k + 1 transformed rows of 1 x k taps per pair where
the direct form multiplies 2k rows: 0.57x the multiply-adds for 7x7, 0.6x for 5x5, 0.67x
for 3x3. kernel_cnn:5 and :7 ran their forward passes at this CPU's FMA peak (the direct
kernel at 93-97% of XLA's matmul rate), as did PyTorch's oneDNN: fewer multiplies was
what was left. Only the sums' order changes: against lax at "highest" precision its
largest error was 1.4-3.0e-6 of the largest output on kernel_cnn:5/:7's layers, the
direct kernel's 0.6-2.4e-6 (a one-off check; tests/test_winograd.py bounds it at 1e-5).
Measured in models/conv.py (trick 7).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from digitjax.models import weight_grad

KERNEL_SIZES = (3, 5, 7)  # the heights it is used for
MIN_CHANNELS = 8  # input channels at least: first layers (1 channel) keep the direct kernel


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
    """Whether `conv` computes this stride-1 convolution: float32 on one XLA device with
    the kernels built, no padding, a kernel height in KERNEL_SIZES, at least MIN_CHANNELS
    input channels, and an even output height of at least 2."""
    kh, kw, c, _ = w.shape
    out_h = x.shape[1] - kh + 1
    return (all(a.dtype == jnp.float32 for a in (x, w)) and not any(map(any, pads))
            and kh in KERNEL_SIZES and kw <= x.shape[2] and c >= MIN_CHANNELS
            and out_h >= 2 and out_h % 2 == 0 and weight_grad.usable())


def conv(x: jax.Array, w: jax.Array) -> jax.Array:
    """The VALID stride-1 convolution of x (NHWC) with w (HWIO), as `takes` allows."""
    kh, kw, _, f = w.shape
    at, g, bt = toom_cook(kh)
    u = jnp.tensordot(jnp.asarray(g, jnp.float32), w, ((1,), (0,)))  # (kh + 1, kw, c, f)
    out, _ = jax.ffi.ffi_call(  # the second result is the kernel's scratch, as large as x
        weight_grad.WINOGRAD_TARGET,
        (jax.ShapeDtypeStruct((x.shape[0], x.shape[1] - kh + 1, x.shape[2] - kw + 1, f),
                              jnp.float32),
         jax.ShapeDtypeStruct(x.shape, jnp.float32)),
        vmap_method="sequential")(x, weight_grad.pad_to_vectors(u),
                                  jnp.asarray(bt, jnp.float32), jnp.asarray(at, jnp.float32))
    return out
