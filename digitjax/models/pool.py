"""Pooling in forms XLA:CPU runs fast (CPU speed tricks; `avg_pool` at the end).

`nn.max_pool` is a `reduce_window`; its gradient is a select-and-scatter, which
XLA:CPU runs as a variadic reduce-window over (value, index) pairs plus a scatter:
in `inception_cnn`'s step those took ~180 of 345 ms of thread time at batch 128
(`python experiments/profile_step.py --model inception_cnn`). The same maxima here:
- a non-overlapping window (window == strides, VALID, sizes divisible): a reshape into
  blocks and a `max` over them;
- a stride-1 SAME window: the maximum over the window's rows, then its columns
  (shifted slices, exactly nn.max_pool's values). The separable forward made
  `inception_cnn`'s inference 1.21x and 1.75x faster in two runs (medians of 3 rounds
  interleaved with nn.max_pool's forward: 3,747 vs 3,089 and 4,580 vs 2,615 img/s,
  `python experiments/benchmark.py --worker digitjax inception_cnn`); its training step
  0.98x both times, noise.
In training, both save per output the index of the first input of its window holding
the maximum (int8) and route the output's gradient to it: selects and adds of shifted
slices in one fusion. Values and gradients are nn.max_pool's bit for bit, ties
included. The index is what makes it safe: a gradient found by comparing the inputs
with the saved maximum (JAX's rule for `max`, and this module's before) divides by the
count of inputs equal to it, and in `configs/inception_cnn.py`'s compiled step some
windows had none (XLA recomputes the pool's input, batch norm + ReLU branches
concatenated, inside the gradient's fusions): 0/0, NaN parameters after the first step
(tests/test_cpu_tricks.py). Measured on the forward + gradient of one 128x28x28x16
pool (the equality form): 3x3 stride 1 162 -> 46 ms, 2x2 stride 2 35 -> 3-5 ms (load
~2, a one-off micro-benchmark); the whole `inception_cnn` step is 1.61x faster
(experiments/results/rewrites_inception_cnn.md, `python experiments/xla_options.py`).
Other windows, other backends, and `DIGITJAX_CPU_CONV_TRICKS=0` (or a list without
`pool`) get `nn.max_pool`.
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


def _first_max_index(taps: list[jax.Array]) -> jax.Array:
    """Per element, the index of the first of `taps` holding their maximum (int8 for
    windows of up to 127 inputs)."""
    dtype = jnp.int8 if len(taps) <= 127 else jnp.int32
    best, index = taps[0], jnp.zeros(taps[0].shape, dtype)
    for t, tap in enumerate(taps[1:], 1):
        larger = tap > best
        best, index = jnp.where(larger, tap, best), jnp.where(larger, dtype(t), index)
    return index


def _route(index: jax.Array, g: jax.Array, t: int) -> jax.Array:
    return jnp.where(index == t, g, jnp.zeros((), g.dtype))


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _same_max_pool(x: jax.Array, window: tuple[int, int]) -> jax.Array:
    # the maximum over the window's rows, then over its columns: kh + kw shifted slices
    # that XLA fuses, where reduce-window visits all kh * kw inputs of every output
    (kh, kw), (rows_pad, cols_pad) = window, _same_pads(window)
    rows = reduce(jnp.maximum, _shifts(x, (rows_pad, (0, 0)), -jnp.inf, kh, 1))
    return reduce(jnp.maximum, _shifts(rows, ((0, 0), cols_pad), -jnp.inf, 1, kw))


def _same_max_pool_fwd(x: jax.Array, window: tuple[int, int]):
    (kh, kw), pads = window, _same_pads(window)
    return _same_max_pool(x, window), _first_max_index(_shifts(x, pads, -jnp.inf, kh, kw))


def _same_max_pool_bwd(window: tuple[int, int], index: jax.Array, g: jax.Array):
    (kh, kw), pads = window, _same_pads(window)
    # input p lies in the windows of outputs p - after .. p + before; the s-th shift
    # below brings the output whose window holds p as tap kh * kw - 1 - s
    flipped = tuple((after, before) for before, after in pads)
    shifted = zip(_shifts(index, flipped, -1, kh, kw), _shifts(g, flipped, 0.0, kh, kw),
                  strict=True)
    return (sum(_route(i, gs, kh * kw - 1 - s) for s, (i, gs) in enumerate(shifted)),)


_same_max_pool.defvjp(_same_max_pool_fwd, _same_max_pool_bwd)


def _blocks(x: jax.Array, window: tuple[int, int]) -> jax.Array:
    (wh, ww), (n, h, w, c) = window, x.shape
    return x.reshape(n, h // wh, wh, w // ww, ww, c)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _block_max_pool(x: jax.Array, window: tuple[int, int]) -> jax.Array:
    return _blocks(x, window).max(axis=(2, 4))


def _block_max_pool_fwd(x: jax.Array, window: tuple[int, int]):
    blocks = _blocks(x, window)
    taps = [blocks[:, :, i, :, j] for i in range(window[0]) for j in range(window[1])]
    return _block_max_pool(x, window), _first_max_index(taps)


def _block_max_pool_bwd(window: tuple[int, int], index: jax.Array, g: jax.Array):
    (wh, ww), (n, ho, wo, c) = window, g.shape
    rows = [jnp.stack([_route(index, g, i * ww + j) for j in range(ww)], axis=3)
            for i in range(wh)]
    return (jnp.stack(rows, axis=2).reshape(n, ho * wh, wo * ww, c),)


_block_max_pool.defvjp(_block_max_pool_fwd, _block_max_pool_bwd)


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int],
             padding: str = "VALID") -> jax.Array:
    """`nn.max_pool(x, window, strides, padding)` for NHWC `x`."""
    (wh, ww), (sh, sw) = tuple(window), tuple(strides)
    h, w = x.shape[1:3]
    if tricks_on("pool") and (wh, ww) == (sh, sw) and padding == "VALID" and not (h % wh or w % ww):
        return _block_max_pool(x, (wh, ww))
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
