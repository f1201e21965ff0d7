"""Pooling in forms XLA:CPU runs fast (CPU speed tricks; `avg_pool` at the end).

`nn.max_pool` is a `reduce_window`; its gradient is a select-and-scatter, which
XLA:CPU runs as a variadic reduce-window over (value, index) pairs plus a scatter:
in `inception_cnn`'s step those took ~180 of 345 ms of thread time at batch 128
(`python experiments/profile_step.py --model inception_cnn`). The same maxima here:
- a non-overlapping window (window == strides, VALID, sizes divisible): a reshape into
  blocks and a `max` over them, whose gradient is an equality mask (elementwise);
- a stride-1 SAME window: the maximum over the window's rows, then its columns
  (shifted slices, exactly nn.max_pool's values), and a gradient written out as the
  window's shifted slices (each input gets the gradient of every output whose
  maximum it equals): selects and adds in one fusion. The separable forward made
  `inception_cnn`'s inference 1.21x and 1.75x faster in two runs (medians of 3 rounds
  interleaved with nn.max_pool's forward: 3,747 vs 3,089 and 4,580 vs 2,615 img/s,
  `python experiments/benchmark.py --worker digitjax inception_cnn`); its training step
  0.98x both times, noise.
Both split a tie's gradient equally among the tied inputs (JAX's rule for `max`)
instead of giving it to the first one; the two agree away from ties, and both are
subgradients. Measured on the forward + gradient of one 128x28x28x16 pool: 3x3
stride 1 162 -> 46 ms, 2x2 stride 2 35 -> 3-5 ms (load ~2, a one-off micro-benchmark);
the whole `inception_cnn` step is 1.61x faster (experiments/results/
rewrites_inception_cnn.md, `python experiments/xla_options.py`). Other windows, other
backends, and `DIGITJAX_CPU_CONV_TRICKS=0` (or a list without `pool`) get `nn.max_pool`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial, reduce

import flax.linen as nn
import jax
import jax.numpy as jnp

from digitjax.models.conv import tricks_on


def _shifts(x: jax.Array, pads: tuple[tuple[int, int], ...], value: float, kh: int, kw: int):
    """The kh x kw shifted views of `x` padded by `pads` (H, W) with `value`."""
    h, w = x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=value)
    return [padded[:, i:i + h, j:j + w] for i in range(kh) for j in range(kw)]


def _same_pads(window: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(before, after) padding of H and W for a stride-1 SAME window (lax's split)."""
    return tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for k in window)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _same_max_pool(x: jax.Array, window: tuple[int, int]) -> jax.Array:
    # the maximum over the window's rows, then over its columns: kh + kw shifted slices
    # that XLA fuses, where reduce-window visits all kh * kw inputs of every output
    (kh, kw), (rows_pad, cols_pad) = window, _same_pads(window)
    rows = reduce(jnp.maximum, _shifts(x, (rows_pad, (0, 0)), -jnp.inf, kh, 1))
    return reduce(jnp.maximum, _shifts(rows, ((0, 0), cols_pad), -jnp.inf, 1, kw))


def _same_max_pool_fwd(x: jax.Array, window: tuple[int, int]):
    y = _same_max_pool(x, window)
    return y, (x, y)


def _same_max_pool_bwd(window: tuple[int, int], res, g: jax.Array):
    x, y = res
    (kh, kw), pads = window, _same_pads(window)
    # the inputs in output q's window that equal its maximum share its gradient
    ties = sum((xs == y).astype(g.dtype) for xs in _shifts(x, pads, -jnp.inf, kh, kw))
    share = g / ties
    # input p lies in the windows of outputs p - after .. p + before
    flipped = tuple((after, before) for before, after in pads)
    return (sum(jnp.where(x == ys, gs, 0.0) for ys, gs in zip(
        _shifts(y, flipped, jnp.inf, kh, kw), _shifts(share, flipped, 0.0, kh, kw),
        strict=True)),)


_same_max_pool.defvjp(_same_max_pool_fwd, _same_max_pool_bwd)


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int],
             padding: str = "VALID") -> jax.Array:
    """`nn.max_pool(x, window, strides, padding)` for NHWC `x`."""
    (wh, ww), (sh, sw) = tuple(window), tuple(strides)
    n, h, w, c = x.shape
    if tricks_on("pool") and (wh, ww) == (sh, sw) and padding == "VALID" and not (h % wh or w % ww):
        return x.reshape(n, h // wh, wh, w // ww, ww, c).max(axis=(2, 4))
    if tricks_on("pool") and (sh, sw) == (1, 1) and padding == "SAME":
        return _same_max_pool(x, (wh, ww))
    return nn.max_pool(x, tuple(window), strides=tuple(strides), padding=padding)


def avg_pool(x: jax.Array, window: Sequence[int]) -> jax.Array:
    """`nn.avg_pool(x, window, strides=window)` for NHWC `x` whose sides the window
    divides, as the sum of the window's strided slices. nn.avg_pool (a reduce-window)
    and a reshape + mean (a reduce) both become YNNPACK reduce fusions that absorb the
    ReLU before them, and YNNPACK takes the ReLU's zero as a materialised 128x28x28x32
    tensor, rebuilt every step (~15 of the default CNN's ~65 ms of thread time); slices
    and adds fuse into XLA's own loops, broadcasts and all."""
    (wh, ww), (_, h, w, _) = tuple(window), x.shape
    if not tricks_on("pool") or h % wh or w % ww:
        return nn.avg_pool(x, tuple(window), strides=tuple(window))
    return sum(x[:, i::wh, j::ww] for i in range(wh) for j in range(ww)) * (1 / (wh * ww))
