"""The `direct` CPU trick's kernel: an NHWC/HWIO convolution (any stride) with implicit
zero padding as one direct C++ kernel (direct_conv.cc, an XLA FFI custom call, built and
registered with weight_grad.cc's kernel by models/weight_grad.py). Taps that fall in
the padding are skipped rather than multiplied, which is what a convolution's input
gradient (a convolution of the output gradient padded by k - 1) needs. models/conv.py
says where it is used and what it was measured at.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from digitjax.models import weight_grad


def takes(x: jax.Array, w: jax.Array, pads) -> bool:
    """Whether the kernel computes this convolution here: float32, one XLA device with
    the kernels built (`weight_grad.usable`), each low padding at most the kernel size -
    1 (so that a stride-1 input gradient's is not negative), no negative high padding,
    and an output of at least one pixel (at any stride)."""
    sizes = zip(pads, w.shape[:2], x.shape[1:3], strict=True)
    return (all(a.dtype == jnp.float32 for a in (x, w))
            and all(0 <= lo < k and hi >= 0 and n + lo + hi >= k for (lo, hi), k, n in sizes)
            and weight_grad.usable())


def out_size(n: int, k: int, pad: tuple[int, int], stride: int = 1) -> int:
    """Output length along an axis of n inputs, a kernel of k taps, (low, high) padding."""
    return (n + pad[0] + pad[1] - k) // stride + 1


def conv(x: jax.Array, w: jax.Array, pads, stride: int = 1) -> jax.Array:
    """The convolution of `x` (NHWC) with `w` (HWIO), `pads` as (low, high) pairs for H
    and W, `stride` on both axes. Output features that are not a whole number of vectors
    (8, or 16 with AVX-512) are computed with zero weights added, whose outputs the
    kernel does not write."""
    if weight_grad.lanes() is None:
        raise RuntimeError("the direct convolution kernel is not available")
    kh, kw, _, f = w.shape
    out_h = out_size(x.shape[1], kh, pads[0], stride)
    out_w = out_size(x.shape[2], kw, pads[1], stride)
    w = weight_grad.pad_to_vectors(w)
    out, _ = jax.ffi.ffi_call(  # the second result is the kernel's scratch, as large as x
        weight_grad.DIRECT_TARGET,
        (jax.ShapeDtypeStruct((x.shape[0], out_h, out_w, f), jnp.float32),
         jax.ShapeDtypeStruct(x.shape, jnp.float32)),
        vmap_method="sequential")(x, w, pad_h=np.int64(pads[0][0]), pad_w=np.int64(pads[1][0]),
                               stride=np.int64(stride))
    return out


def input_grad(g: jax.Array, w: jax.Array, pads, x_shape,
               stride1: Callable[[jax.Array, jax.Array, Any], jax.Array] = conv) -> jax.Array:
    """The input gradient of `conv(x, w, pads)` for output gradient `g`: the convolution
    of g with the flipped kernel, its input and output channels swapped, padded by
    k - 1 - low, computed by `stride1` (this kernel's `conv`, or one with its signature)."""
    kh, kw = w.shape[:2]
    flipped = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    back = ((kh - 1 - pads[0][0], x_shape[1] - g.shape[1] + pads[0][0]),
            (kw - 1 - pads[1][0], x_shape[2] - g.shape[2] + pads[1][0]))
    return stride1(g, flipped, back)
