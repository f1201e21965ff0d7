"""Convolutions XLA:CPU runs slowly, rewritten into forms it runs fast. Seven tricks,
each used on CPU only, where it was measured, and each with the usual parameter
shapes (invisible to checkpoints; only the order of the sums changes). `cpu_conv`
picks between them. `DIGITJAX_CPU_CONV_TRICKS` (read when a model is traced) says
which CPU tricks run: unset or 1 all, 0 none (every convolution to
`lax.conv_general_dilated`, `nn.max_pool`), or names from TRICKS separated by commas.

1. `space_to_depth`: strided convolutions as stride-1 convolutions over
   space-to-depth inputs (`space_to_depth_conv`). XLA:CPU computes the input gradient
   of a strided convolution with a generic loop (the gradient is a convolution with a
   dilated input, which its fast library kernels do not take): ~50 ms per strided
   layer at batch 128, ten times a stride-1 convolution of the same size. A k x k
   convolution with stride s equals a ceil(k/s) x ceil(k/s) stride-1 convolution over
   the input rearranged into s x s blocks of pixels ("space to depth"), with the
   kernel zero-padded to a multiple of s and rearranged the same way. The
   `strided_cnn` step is 1.36x faster with it (`python experiments/xla_options.py
   --model strided_cnn`). Only the input gradient takes that form: lax's own strided
   forward pass and weight gradient are faster than the rearranged ones (24x24x32 ->
   12x12x32, 5x5/2, batch 128: 10 vs 19 ms and 16 vs 23 ms), which made the step
   another 1.09x faster (experiments/results/strided_hybrid_strided_cnn.md). On one
   device the forward pass is the `direct` kernel's at stride s (trick 6), the weight
   gradient the `weight_grad` kernel's (trick 5), and the input gradient s*s stride-1
   convolutions on the `direct` kernel, one per phase of the input pixels
   (`_phase_input_grad`), which multiply no zero taps: 1.42x and 1.65x the
   space-to-depth form's speed on strided_cnn's two strided layers (10.20 -> 7.17 and
   4.68 -> 2.84 ms, batch 128, Zen 3; a one-off paired timing), the same bits; the
   step 1.05x (paired, 11 rounds; experiments/README.md, session 22).

2. `row_split`: the input gradient of a stride-1 convolution without the "full"
   convolution's zero padding (`padded_valid_conv`). lax writes that gradient as a
   convolution of the output gradient, padded by k-1 zeros on every side, with the
   flipped kernel; Eigen multiplies the padding too, (h/o)^2 times the forward pass's
   FLOPs for an h x h input and an o x o output (1.4-2.3x in `kernel_cnn:5`, 6.3x in
   `kernel_cnn:7`'s last layer, where XLA also swaps the operands into a generic
   loop), while oneDNN's kernels skip it: the input gradients took 1.3-1.9x
   PyTorch's time where forward and weight gradient were at parity
   (`python experiments/conv_passes.py`). Here the k kernel rows become k*c output
   channels of one 1 x k convolution over the output gradient padded along the
   width only (h/o times the FLOPs, a wider matmul), and k shifted row slices are
   summed; a 1 x 1 output's gradient is one matmul. Per layer at batch 128:
   `kernel_cnn:5`'s 1.6-1.75x faster, `kernel_cnn:7`'s last 157 -> 18 ms. Whole
   training step, on and off (`python experiments/xla_options.py --model M --only
   ...`, experiments/results/row_split_*.md): kernel_cnn:3 1.17x, kernel_cnn:5 1.14x,
   kernel_cnn:7 1.91x (against lax; the matmul + col2im route it replaces gave 1.42x),
   strided_cnn 1.01x. Used where the convolution has no padding or its output is
   smaller than its kernel: a padded one pays for materialising its padded input, and
   on 28x28x32 the row split's slices cost more than the little padding it saves
   (default CNN step 0.70x with it on every SAME conv), so those stay with lax.

3. `pointwise`: a 1x1 stride-1 convolution as one matmul over all pixels
   (`pointwise_conv`, a plain reshape and dot: autodiff gives the gradients). lax's
   convolution feeds Eigen's kernels through layout transposes of the activations
   for its weight gradient; a dot takes them as they are. `inception_cnn` (eight 1x1
   convolutions in two blocks) trains 1.08-1.09x faster with it (two runs of
   `python experiments/xla_options.py --model inception_cnn --only ...`, 3 and 5
   rounds, experiments/results/pointwise_inception_cnn.md).

4. `taps`: the forward pass of a stride-1 convolution of an input with at most
   TAPS_MAX_CHANNELS channels (every network's first layer on digits or photos) as a
   sum over the kernel's taps of shifted input slices times kernel rows
   (`tap_sum_conv`): one fused elementwise loop over the output, where Eigen's
   convolution contracts over only kh*kw*c values per output (one 128x28x28x1 ->
   32-channel 3x3 layer: 5.3 -> 0.9 ms; 3 channels: 1.2-1.4x; a one-off
   micro-benchmark). The input gradient stays lax's. Whole step on and off, paired in one
   process (`python experiments/paired_tricks.py --model M --a
   space_to_depth,row_split,pool,pointwise --b 1`, experiments/results/paired_taps_*.md):
   training 1.13x cnn, 1.08x strided_cnn, 1.00x inception_cnn, 0.99x kernel_cnn:5;
   inference 1.36x, 1.10x, 1.19x, 1.05x (medians of 12 rounds). `seed_cnn` got slower
   with it (0.75x, 0.44x) and keeps lax's convolution. Kernels of more than
   TAPS_MAX_TAPS taps go to the `direct` kernel instead where it takes them: a
   128x28x28x1 layer with its BN-like epilogue, taps / direct / lax (AVX2, Zen 3;
   `python experiments/first_layer.py`, experiments/results/first_layer_zen3.md):
   7x7x16 3.34 / 1.32 / 5.61 ms, 5x5x12 1.94 / 1.50 / 5.65, 3x3x12 0.83 / 1.45 / 4.55,
   3x3x32 0.87 / 2.87 / 5.97.

5. `weight_grad`: the weight gradient of every float32 convolution above, and of the
   stride-1 padded ones the others leave to lax (`_kernel_grad_conv`), as one direct
   kernel, an XLA FFI custom call (models/weight_grad.py, weight_grad.cc), where Eigen
   runs it as a convolution far below the matmul peak. Used where the process has one
   XLA device (`weight_grad.usable`) and the output has more than one pixel (one
   pixel's weight gradient is a matmul, lax's: `weight_grad.takes`). Per layer
   2.1-3.2x faster than lax's (`python experiments/weight_grad_forms.py`, AVX-512;
   with AVX2, 1.05-3.32x on 21 of 23 layers:
   experiments/results/layer_weight_grad_zen3.md); whole training step,
   kernel off and on, paired on one device: cnn 1.35x, strided_cnn 1.45x
   (experiments/README.md, session 15).

6. `direct`: the forward pass and input gradient of a float32 stride-1 convolution
   (`_direct_conv`; also a strided convolution's, trick 1: its forward pass at stride s
   and its input gradient by phases, `_phase_input_grad`) as one direct kernel, an XLA
   FFI custom call (models/direct_conv.py, direct_conv.cc). It
   skips the taps that fall in the padding: the input gradient is a convolution of the
   output gradient padded by k - 1, whose padding Eigen multiplies and the row split
   above still multiplies along the width. It keeps a block of 6-12 images x up to 64
   (AVX-512) or 16 (AVX2: direct_conv.cc's kBlockVectors, measured there) output
   features in registers. Used where the process has one XLA device, like
   `weight_grad`, for the convolutions `taps` and `pointwise` leave (and first layers
   with kernels past TAPS_MAX_TAPS), before the row split. Per layer at batch 128 (a
   one-off script; kernel_cnn:7's last three layers), input gradient 17.9/22.0/10.9
   ms with the row split, 11.9/14.2/4.2 ms here; forward
   passes at parity with Eigen's or faster (AVX-512; with AVX2, 21 of the six models'
   23 layers: experiments/results/layer_forward_zen3_bv2.md). Whole step, this trick
   off vs on, paired on one device (`python experiments/paired_tricks.py --model M --a
   space_to_depth,row_split,pool,pointwise,taps,weight_grad,bn_relu --b 1 --rounds 5`,
   experiments/results/paired_direct_*.md), training / inference: kernel_cnn:7
   1.30x / 1.08x, kernel_cnn:5 1.06 / 1.10, kernel_cnn:3 1.04 / 1.09, cnn 1.10 / 1.09,
   strided_cnn 1.05 / 0.94, inception_cnn 1.10 / 1.24. The kernel also takes a stride:
   strided layers' forward passes run on it (the window of an output pixel starts s
   pixels on; a kernel row's taps still lie side by side), where lax's took 1.44x and
   1.63x its time on strided_cnn's two (5x5/2 over 24x24x32 and 8x8x64, AVX2, Zen 3:
   `DIGITJAX_CPU_DEVICES=1 python experiments/layer_forward.py --models strided_cnn`,
   experiments/results/layer_forward_zen3_strided.md); the strided_cnn step 1.10x,
   its inference 1.12x (paired in one process, 9 rounds, against lax's strided forward
   pass; experiments/README.md, session 22).

7. `winograd`: stride-1 3x3, 5x5 and 7x7 convolutions with at least 8 input channels
   (models/winograd.py), inside `_direct_conv` (`_stride1_conv`), by a 1-D Winograd
   F(2, k) down the height: kernel_cnn:5 and :7 sat at the Zen 3 CPU's FMA peak in both
   frameworks (the direct kernel at 93-97% of XLA's matmul rate), so only fewer
   multiplies could move them: k + 1 transformed rows of 1 x k taps per pair of output
   rows instead of 2k rows, 0.57x the multiply-adds for 7x7, 0.6x for 5x5, 0.67x for
   3x3, on the direct kernel's register block in direct_conv.cc. First (session 23) the
   unpadded forward passes; per layer, against the direct kernel (batch 128, AVX2, Zen
   3, 9-11 alternating rounds, one-off scripts): 1.38-1.50x on kernel_cnn:5/:7's seven
   layers past the first, 1.01-1.27x on kernel_cnn:3's nine and 1.19-1.28x on
   strided_cnn's three 3x3 layers (transforming each pair's rows in registers, not a
   pass per coefficient, took 5x5/7x7 from 1.07-1.21x to that). Whole model, this trick
   off vs on, paired on one device (`DIGITJAX_CPU_DEVICES=1 python
   experiments/paired_tricks.py --model M --a <all but winograd> --b 1 --rounds 9`,
   experiments/results/paired_winograd_*.md), inference / training: kernel_cnn:7 1.45x
   / 1.08x, kernel_cnn:5 1.36x / 1.09x, kernel_cnn:3 1.17x / 1.07x, strided_cnn 1.09x /
   1.03x. Then (session 24) padded convolutions and odd output heights: the SAME convs
   of cnn and inception_cnn, and input gradients (padded by k - 1), where Winograd
   multiplies at most `winograd.MAX_ROW_RATIO` of the rows the direct kernel does (it
   skips rows in the padding, Winograd's pairs multiply them). Every convolution of the
   six models' training steps, direct kernel over Winograd (AMD EPYC Zen 1, AVX2 as two
   128-bit halves; `DIGITJAX_CPU_DEVICES=1 python experiments/winograd_layers.py`,
   experiments/results/winograd_layers_zen1.md): forward
   1.08-1.53x, input gradients 1.07-1.22x up to a row ratio of 0.83, 0.99-1.00x at
   0.90-0.91, 0.65x at 1.43. Whole model off vs on, paired as above (Zen 1,
   experiments/results/paired_winograd_padded_*.md), training / inference: cnn 1.07x /
   1.20x, inception_cnn 1.03x / 1.02x, kernel_cnn:7 1.09x / 1.46x, kernel_cnn:5 1.11x /
   1.35x, kernel_cnn:3 1.15x / 1.24x, strided_cnn 1.03x / 1.20x. A strided conv's
   input gradient by phases makes the same choice per phase (session 25): on
   strided_cnn's first 5x5/2 layer the two 3-row phases (ratio 0.80) gained 1.07x and
   1.03x, 0.3 ms of a step; its second layer's (1.09) stay direct
   (experiments/results/winograd_layers_zen1_phases.md). The weight gradients
   stay the weight_grad kernel's. Its error against lax at "highest" precision was
   1.4-3.0e-6 of the largest output, the direct kernel's 0.6-2.4e-6. The same F(2, k)
   built from XLA ops around the direct kernel lost (0.26-1.21x;
   experiments/winograd_1d.py).

`pool` (models/pool.py's pooling) and `bn_relu` (models/norm.py's batch norm + ReLU as
one layer: cnn 1.33x, strided_cnn 1.13x) are switched the same way.

All but `pointwise` (and models/pool.py's max pools) are custom VJPs: reverse mode only
(`jax.grad`, `jax.vjp`); forward-mode derivatives (`jax.jvp`, `jax.jacfwd`) of a model
using them need DIGITJAX_CPU_CONV_TRICKS=0 (or `pointwise` alone).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator, Sequence
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from digitjax.errors import UserError
from digitjax.models import direct_conv, weight_grad, winograd

NHWC = ("NHWC", "HWIO", "NHWC")  # the layout flax's nn.Conv uses, and the only one rearranged


def _space_to_depth(x: jax.Array, s: int) -> jax.Array:
    n, h, w, c = x.shape
    x = x.reshape(n, h // s, s, w // s, s, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // s, w // s, s * s * c)


def space_to_depth_conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                        padding, lhs_dilation=None, rhs_dilation=None,
                        dimension_numbers=None, feature_group_count: int = 1,
                        precision=None) -> jax.Array:
    """Drop-in for `lax.conv_general_dilated` as flax's `nn.Conv` calls it (NHWC, HWIO):
    a strided convolution whose input gradient goes through space-to-depth (the forward
    pass and weight gradient stay lax's, which Eigen runs faster than the rearranged
    form; with a `precision` given, everything goes through space-to-depth)."""
    strides = tuple(window_strides)
    plain = (not tricks_on("space_to_depth") or len(strides) != 2 or strides[0] != strides[1]
             or strides[0] == 1 or not _rewritable(lhs, rhs, lhs_dilation, rhs_dilation,
                                                   dimension_numbers, feature_group_count))
    if plain:
        return lax.conv_general_dilated(lhs, rhs, strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count,
                                        precision=precision)
    pads = _explicit_pads(lhs, rhs, strides, padding)
    if precision is not None:
        return _s2d_conv(lhs, rhs, strides[0], pads, precision)
    return _strided_conv(lhs, rhs, strides[0], pads)


def _s2d_conv(lhs: jax.Array, rhs: jax.Array, s: int, padding, precision=None) -> jax.Array:
    """The stride-s convolution as a stride-1 one over space-to-depth inputs."""
    kh, kw = rhs.shape[:2]
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
    x = _space_to_depth(x, s)
    return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=NHWC,
                                    precision=precision)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _strided_conv(x: jax.Array, w: jax.Array, s: int, pads) -> jax.Array:
    """The forward pass: the `direct` kernel at stride s where it takes the call (see the
    top, trick 6), else lax's."""
    if tricks_on("direct") and direct_conv.takes(x, w, pads):
        return direct_conv.conv(x, w, pads, s)
    return lax.conv_general_dilated(x, w, (s, s), pads, dimension_numbers=NHWC)


def _strided_conv_fwd(x: jax.Array, w: jax.Array, s: int, pads):
    return _strided_conv(x, w, s, pads), (x, w)


def _strided_conv_bwd(s: int, pads, res, g: jax.Array):
    x, w = res
    # every phase's convolution is one the kernel takes (padding below: its size - 1)
    # when a 1x1 one over g is: float32, one device
    if tricks_on("direct") and direct_conv.takes(g, w[:1, :1], ((0, 0), (0, 0))):
        dx = _phase_input_grad(g, w, s, pads, x.shape)
    else:
        _, input_vjp = jax.vjp(lambda x: _s2d_conv(x, w, s, pads), x)
        dx = input_vjp(g)[0]
    return dx, _weight_grad(x, w, g, (s, s), pads)


def _phase_input_grad(g: jax.Array, w: jax.Array, s: int, pads, x_shape) -> jax.Array:
    """The input gradient of a stride-s convolution as s*s stride-1 ones on the `direct`
    kernel, one per phase of the input pixels: padded input row R = s*m + a (a < s) gets
    sum over t of g[m - t] * w[a + s*t] (likewise along W), a stride-1 convolution of g
    with the sub-kernel w[a::s] flipped, padded by its size - 1 below. The s*s outputs
    interleave into the padded input, which is cropped. No tap is a zero: through space
    to depth the kernel is zero-padded to a multiple of s (5x5/2: 36 taps for 25) and the
    gradient covers the rearranged input's blocks."""
    n, h, wd, c = x_shape
    rows, cols = -(-(pads[0][0] + h) // s), -(-(pads[1][0] + wd) // s)  # m per phase
    g = g[:, :rows, :cols]  # rows of g past those reach no input pixel
    phases = []
    for a in range(s):
        for b in range(s):
            sub = w[a::s, b::s]
            if sub.shape[0] == 0 or sub.shape[1] == 0:  # no tap has this phase
                phases.append(jnp.zeros((n, rows, cols, c), g.dtype))
                continue
            th, tw = sub.shape[:2]
            flipped = jnp.flip(sub, (0, 1)).transpose(0, 1, 3, 2)
            phases.append(_stride1_conv(
                g, flipped, ((th - 1, rows - g.shape[1]), (tw - 1, cols - g.shape[2]))))
    grid = jnp.stack(phases).reshape(s, s, n, rows, cols, c).transpose(2, 3, 0, 4, 1, 5)
    grid = grid.reshape(n, rows * s, cols * s, c)
    return grid[:, pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + wd]


def _weight_grad(x: jax.Array, w: jax.Array, g: jax.Array, strides, pads) -> jax.Array:
    """The weight gradient of an NHWC/HWIO convolution (every custom VJP here): the
    `weight_grad` kernel where it takes the call, else lax's own."""
    pads = _explicit_pads(x, w, strides, pads)
    if (tricks_on("weight_grad") and strides[0] == strides[1]
            and weight_grad.takes(x, w, g)):
        return weight_grad.conv_weight_grad(x, g, w.shape[:2], strides[0], pads)
    _, weight_vjp = jax.vjp(lambda w: lax.conv_general_dilated(
        x, w, strides, pads, dimension_numbers=NHWC), w)
    return weight_vjp(g)[0]


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _kernel_grad_conv(x: jax.Array, w: jax.Array, strides, pads) -> jax.Array:
    """lax's convolution and input gradient, the weight gradient `_weight_grad`'s."""
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=NHWC)


def _kernel_grad_conv_fwd(x, w, strides, pads):
    return _kernel_grad_conv(x, w, strides, pads), (x, w)


def _kernel_grad_conv_bwd(strides, pads, res, g):
    x, w = res
    _, input_vjp = jax.vjp(lambda x: lax.conv_general_dilated(
        x, w, strides, pads, dimension_numbers=NHWC), x)
    return input_vjp(g)[0], _weight_grad(x, w, g, strides, pads)


_kernel_grad_conv.defvjp(_kernel_grad_conv_fwd, _kernel_grad_conv_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _direct_conv(x: jax.Array, w: jax.Array, pads) -> jax.Array:
    """The `direct` kernel's stride-1 convolution and input gradient (both by `winograd`
    where it takes them), the weight gradient `_weight_grad`'s."""
    return _stride1_conv(x, w, pads)


def _stride1_conv(x: jax.Array, w: jax.Array, pads) -> jax.Array:
    """`winograd`'s convolution where it takes the call, else the `direct` kernel's."""
    if tricks_on("winograd") and winograd.takes(x, w, pads):
        return winograd.conv(x, w, pads)
    return direct_conv.conv(x, w, pads)


def _direct_conv_fwd(x, w, pads):
    return _direct_conv(x, w, pads), (x, w)


def _direct_conv_bwd(pads, res, g):
    x, w = res
    return (direct_conv.input_grad(g, w, pads, x.shape, _stride1_conv),
            _weight_grad(x, w, g, (1, 1), pads))


_direct_conv.defvjp(_direct_conv_fwd, _direct_conv_bwd)


_strided_conv.defvjp(_strided_conv_fwd, _strided_conv_bwd)


def _explicit_pads(lhs: jax.Array, rhs: jax.Array, strides, padding) -> tuple:
    """An NHWC/HWIO convolution's padding as static (low, high) pairs for H and W."""
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _rewritable(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                feature_group_count) -> bool:
    """Whether a call is what the rewrites take: undilated, ungrouped, NHWC/HWIO."""
    return (feature_group_count == 1
            and all(d == 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
            and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
            == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC))


TRICKS = ("space_to_depth", "row_split", "pool", "pointwise", "taps",
          "weight_grad", "bn_relu", "direct", "winograd")
# pool: models/pool.py; weight_grad: models/weight_grad.py; bn_relu: models/norm.py;
# direct: models/direct_conv.py; winograd: models/winograd.py


_this_thread = threading.local()  # .off: `tricks_off` is active on this thread


@contextlib.contextmanager
def tricks_off() -> Iterator[None]:
    """Models traced inside, on this thread, use lax's own convolutions, pooling and
    batch norm, as with DIGITJAX_CPU_CONV_TRICKS=0: for XLA's cost analysis, which
    counts no FLOPs inside the kernels' custom calls. Other threads (a training step
    compiling in the background) are not affected."""
    outer = getattr(_this_thread, "off", False)
    _this_thread.off = True
    try:
        yield
    finally:
        _this_thread.off = outer


def enabled_tricks() -> tuple[str, ...]:
    """The CPU rewrites DIGITJAX_CPU_CONV_TRICKS allows (read at each trace)."""
    if getattr(_this_thread, "off", False):
        return ()
    chosen = os.environ.get("DIGITJAX_CPU_CONV_TRICKS", "").strip() or "1"
    names = (TRICKS if chosen == "1" else () if chosen == "0"
             else tuple(n.strip() for n in chosen.split(",") if n.strip()))
    unknown = [n for n in names if n not in TRICKS]
    if unknown:
        raise UserError(f"DIGITJAX_CPU_CONV_TRICKS={chosen!r}: expected 1, 0 or names from "
                        f"{', '.join(TRICKS)} separated by commas")
    return names


def tricks_on(name: str) -> bool:
    """Whether this trace may use the CPU rewrite `name` (one of TRICKS): the backend
    is CPU and DIGITJAX_CPU_CONV_TRICKS does not switch it off."""
    return jax.default_backend() == "cpu" and name in enabled_tricks()


def _row_split_input_grad(g: jax.Array, w: jax.Array) -> jax.Array:
    """The input gradient of a VALID stride-1 NHWC/HWIO convolution (see the top)."""
    kh, kw, c, f = w.shape
    n, oh, ow, _ = g.shape
    if oh == ow == 1:  # each tap of the kernel meets the one output pixel once
        return jnp.einsum("nf,ijcf->nijc", g[:, 0, 0], w)
    # rows[n, r, x, i, c]: kernel row i's contribution from output row r to input column x
    rows_kernel = jnp.flip(w, 1).transpose(1, 3, 0, 2).reshape(1, kw, f, kh * c)
    padded = jnp.pad(g, ((0, 0), (0, 0), (kw - 1, kw - 1), (0, 0)))
    rows = lax.conv_general_dilated(padded, rows_kernel, (1, 1), "VALID",
                                    dimension_numbers=NHWC).reshape(n, oh, ow + kw - 1, kh, c)
    # input row r + i gets kernel row i's part of output row r
    return sum(jnp.pad(rows[:, :, :, i], ((0, 0), (i, kh - 1 - i), (0, 0), (0, 0)))
               for i in range(kh))


@jax.custom_vjp
def _valid_conv(x: jax.Array, w: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=NHWC)


def _valid_conv_fwd(x: jax.Array, w: jax.Array):
    return _valid_conv(x, w), (x, w)


def _valid_conv_bwd(res, g: jax.Array):
    x, w = res
    return (_row_split_input_grad(g, w).astype(x.dtype),
            _weight_grad(x, w, g, (1, 1), "VALID"))


_valid_conv.defvjp(_valid_conv_fwd, _valid_conv_bwd)


def padded_valid_conv(lhs: jax.Array, rhs: jax.Array, padding) -> jax.Array:
    """A stride-1 NHWC/HWIO convolution, `padding` as (low, high) pairs for H and W,
    whose input gradient is `_row_split_input_grad` (the padding is applied first; its
    own gradient crops)."""
    x = lax.pad(lhs, jnp.zeros((), lhs.dtype),
                ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))
    return _valid_conv(x, rhs)


def pointwise_conv(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    """A 1x1 stride-1 NHWC/HWIO convolution as one matmul over all pixels."""
    n, h, w, c = lhs.shape
    return (lhs.reshape(n * h * w, c) @ rhs.reshape(c, -1)).reshape(n, h, w, -1)


TAPS_MAX_CHANNELS = 4  # input channels up to which `taps` takes a convolution
TAPS_MAX_TAPS = 9  # kernel taps (kh * kw) past which `direct`, where it applies, takes it


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def tap_sum_conv(lhs: jax.Array, rhs: jax.Array, padding) -> jax.Array:
    """A stride-1 NHWC/HWIO convolution of an input with few channels (an image's 1 or
    3) as a sum over the kernel's taps and input channels of shifted input slices
    times a kernel row: one fused elementwise loop, vectorised over the output
    channels, where Eigen's convolution contracts over only kh*kw*c. The input
    gradient is lax's, the weight gradient `_weight_grad`'s."""
    kh, kw, c, _ = rhs.shape
    x = lax.pad(lhs, jnp.zeros((), lhs.dtype),
                ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))
    oh, ow = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    x, w = x.astype(jnp.float32), rhs.astype(jnp.float32)
    out = sum(x[:, i:i + oh, j:j + ow, k:k + 1] * w[i, j, k]
              for i in range(kh) for j in range(kw) for k in range(c))
    return out.astype(jnp.result_type(lhs, rhs))


def _tap_sum_fwd(lhs, rhs, padding):
    return tap_sum_conv(lhs, rhs, padding), (lhs, rhs)


def _tap_sum_bwd(padding, res, g):
    return _kernel_grad_conv_bwd((1, 1), padding, res, g)  # lax's input gradient


tap_sum_conv.defvjp(_tap_sum_fwd, _tap_sum_bwd)


def cpu_conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding,
             lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
             feature_group_count: int = 1, precision=None) -> jax.Array:
    """Drop-in for `lax.conv_general_dilated` as flax's `nn.Conv` calls it: a strided
    NHWC convolution goes to `space_to_depth_conv`; a stride-1 one to `pointwise_conv`
    (1x1), `tap_sum_conv` (few input channels) or the `direct` kernel; where that is not
    available, one without padding, or whose output is smaller than its kernel, to
    `padded_valid_conv`; anything else (and what the switches turn off) to lax."""
    if _rewritable(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                   feature_group_count):
        if any(s != 1 for s in window_strides):
            return space_to_depth_conv(lhs, rhs, window_strides, padding, lhs_dilation,
                                       rhs_dilation, dimension_numbers, feature_group_count,
                                       precision)
        kh, kw = rhs.shape[:2]
        if kh == kw == 1 and precision is None and tricks_on("pointwise"):
            return pointwise_conv(lhs, rhs)
        pads = _explicit_pads(lhs, rhs, (1, 1), padding)
        direct = (precision is None and tricks_on("direct")
                  and direct_conv.takes(lhs, rhs, pads))
        if (rhs.shape[2] <= TAPS_MAX_CHANNELS and precision is None and tricks_on("taps")
                and not (direct and kh * kw > TAPS_MAX_TAPS)):
            return tap_sum_conv(lhs, rhs, pads)
        if direct:
            return _direct_conv(lhs, rhs, pads)
        out_h, out_w = (lhs.shape[i + 1] + sum(pads[i]) - k + 1 for i, k in enumerate((kh, kw)))
        # the row split where it was measured faster: unpadded, or an output smaller
        # than the kernel; a padded conv's padding and gradient cost more (see the top)
        if (precision is None and tricks_on("row_split")
                and (not any(map(any, pads)) or out_h < kh or out_w < kw)):
            return padded_valid_conv(lhs, rhs, pads)
        if precision is None and tricks_on("weight_grad") and weight_grad.usable():
            return _kernel_grad_conv(lhs, rhs, (1, 1), pads)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    precision=precision)
