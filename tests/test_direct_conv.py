"""The `direct` CPU trick (models/direct_conv.py, direct_conv.cc): stride-1 convolutions
and their input gradients, and strided convolutions' forward passes, as one direct
kernel that skips the taps in the padding. Its outputs equal lax's to rounding and are
the same from run to run; models use it on one XLA device, for the convolutions `taps`
and `pointwise` leave."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from digitjax.models import conv, direct_conv, weight_grad
from tests.test_weight_grad import conv_operands

DIMS = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("batch,size,channels,features,kernel,padding", [
    (29, 10, 48, 64, 7, "VALID"),      # kernel_cnn:7's last layer; 29 images: a short tile
    (13, 16, 32, 48, 7, "VALID"),      # 3 vectors of features: tiles of 8 with AVX-512
    (6, 12, 12, 36, 5, "VALID"),       # kernel_cnn:5's widths: 36 features padded
    (5, 14, 32, 64, 3, "SAME"),        # the default CNN's second conv
    (1, 28, 1, 32, 3, "SAME"),         # one image, one channel
    (4, (9, 7), 5, 16, (3, 2), ((2, 0), (1, 3))),  # uneven kernel, padding, image
    (3, 6, 8, 8, 3, ((0, 5), (2, 0))),  # high padding past the kernel: output rows of zeros
    (7, 6, 10, 100, 3, "SAME"),        # 100 features: a second block of vectors, a tail
])
def test_kernel_equals_lax_forward_and_input_gradient(batch, size, channels, features, kernel,
                                                       padding):
    x, w, kg = conv_operands(batch, size, channels, features, kernel)
    h, w_, kh, kw = *x.shape[1:3], *w.shape[:2]
    pads = (lax.padtype_to_pads((h, w_), (kh, kw), (1, 1), padding)
            if isinstance(padding, str) else padding)
    y, pull = jax.vjp(lambda x: lax.conv_general_dilated(x, w, (1, 1), pads,
                                                         dimension_numbers=DIMS), x)
    g = jax.random.normal(kg, y.shape)
    forward = jax.jit(lambda x, w: direct_conv.conv(x, w, pads))
    backward = jax.jit(lambda g, w: direct_conv.input_grad(g, w, pads, x.shape))
    for fast, slow in ((forward(x, w), y), (backward(g, w), pull(g)[0])):
        assert fast.shape == slow.shape
        np.testing.assert_allclose(fast, slow, rtol=1e-4,
                                   atol=1e-5 * float(jnp.abs(slow).max()))
    assert np.array_equal(forward(x, w), forward(x, w))  # each output is one work item's


@pytest.mark.parametrize("batch,size,channels,features,kernel,stride,padding", [
    (7, 24, 32, 32, 5, 2, "SAME"),     # strided_cnn's first strided layer (pads 1, 2)
    (13, 8, 64, 64, 5, 2, "SAME"),     # its second; 13 images: tiles of 6, 6 and 1 (AVX2)
    (3, 28, 1, 36, 5, 2, "SAME"),      # one channel; 36 features: a tail vector
    (2, 11, 6, 16, 3, 2, "VALID"),     # an odd image: the last column never read
    (4, (13, 10), 5, 24, (3, 4), 3, ((2, 0), (1, 2))),  # stride 3, uneven everything
])
def test_kernel_equals_lax_at_strides(batch, size, channels, features, kernel, stride,
                                      padding):
    """The forward pass at stride > 1 (the strided layers' forward pass in models/conv.py);
    their input gradients go through space to depth (test_models.py; on one device
    the test below)."""
    x, w, _ = conv_operands(batch, size, channels, features, kernel)
    h, w_, kh, kw = *x.shape[1:3], *w.shape[:2]
    pads = (lax.padtype_to_pads((h, w_), (kh, kw), (stride, stride), padding)
            if isinstance(padding, str) else padding)
    slow = lax.conv_general_dilated(x, w, (stride, stride), pads, dimension_numbers=DIMS)
    fast = jax.jit(lambda x, w: direct_conv.conv(x, w, pads, stride))(x, w)
    assert fast.shape == slow.shape
    np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-5 * float(jnp.abs(slow).max()))


@pytest.mark.parametrize("shape,kernel,stride,padding", [
    ((3, 24, 24, 32), (5, 5, 32, 32), 2, "SAME"),    # strided_cnn's strided layers
    ((3, 8, 8, 64), (5, 5, 64, 64), 2, "SAME"),
    ((2, 11, 9, 6), (3, 3, 6, 16), 2, "VALID"),      # odd sizes: an input column unread
    ((2, 13, 10, 5), (3, 4, 5, 24), 3, ((2, 0), (1, 2))),  # stride 3, uneven everything
    ((2, 9, 9, 4), (1, 1, 4, 8), 2, "VALID"),        # phases without a tap: zeros
    ((2, 7, 7, 8), (2, 2, 8, 8), 3, ((1, 1), (0, 1))),
])
def test_strided_input_gradient_by_phases_equals_lax(shape, kernel, stride, padding):
    """models/conv.py's `_phase_input_grad`: a strided convolution's input gradient as
    stride * stride stride-1 convolutions on the kernel, interleaved."""
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), kernel)
    pads = conv._explicit_pads(x, w, (stride, stride), padding)
    y, pull = jax.vjp(lambda x: lax.conv_general_dilated(
        x, w, (stride, stride), pads, dimension_numbers=DIMS), x)
    g = jax.random.normal(jax.random.key(2), y.shape)
    slow = pull(g)[0]
    fast = jax.jit(lambda g, w: conv._phase_input_grad(g, w, stride, pads, shape))(g, w)
    assert fast.shape == slow.shape
    np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-5 * float(jnp.abs(slow).max()))


def test_an_images_output_does_not_depend_on_its_place_in_the_batch():
    """7 images in tiles of 6 and 1 (AVX2; 24 features: blocks of 2 vectors and 1) or one
    tile of 7 (AVX-512), against each image alone: the same bits, forward and input
    gradient (each output one order of fused multiply-adds: weight_grad.py's
    GCC_FLAGS)."""
    x, w, kg = conv_operands(7, 8, 5, 24, 3)
    pads = ((1, 1), (1, 1))
    g = jax.random.normal(kg, (7, 8, 8, 24))
    forward = jax.jit(lambda x, w: direct_conv.conv(x, w, pads))
    backward = jax.jit(lambda g, w: direct_conv.input_grad(g, w, pads, (g.shape[0], 8, 8, 5)))
    for f, a in ((forward, x), (backward, g)):
        batch = f(a, w)
        for i in range(7):
            assert np.array_equal(batch[i:i + 1], f(a[i:i + 1], w)), (f, i)


def test_takes_float32_with_padding_the_input_gradient_can_mirror(monkeypatch):
    x, w = jnp.zeros((2, 8, 8, 4)), jnp.zeros((3, 3, 4, 16))
    assert not weight_grad.usable() or jax.device_count() == 1  # 2 devices: never used
    monkeypatch.setattr(weight_grad, "usable", lambda: True)  # as on one device
    assert direct_conv.takes(x, w, ((1, 1), (1, 1)))
    assert direct_conv.takes(x, w, ((0, 0), (2, 5)))
    assert direct_conv.takes(x[:, :3, :3], w, ((0, 0), (0, 0)))  # a 1x1 output
    assert not direct_conv.takes(x.astype(jnp.bfloat16), w, ((1, 1), (1, 1)))
    assert not direct_conv.takes(x, w.astype(jnp.bfloat16), ((1, 1), (1, 1)))
    assert not direct_conv.takes(x, w, ((3, 0), (0, 0)))  # low padding >= kernel size
    assert not direct_conv.takes(x, w, ((0, -1), (0, 0)))  # a crop
    assert not direct_conv.takes(x[:, :, :2], w, ((0, 0), (0, 0)))  # an empty output
    monkeypatch.setattr(weight_grad, "usable", lambda: False)
    assert not direct_conv.takes(x, w, ((1, 1), (1, 1)))


ONE_DEVICE = """
import os
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from digitjax.models.conv import cpu_conv
dims = ("NHWC", "HWIO", "NHWC")
for shape, kernel, padding in [((4, 12, 12, 32), (5, 5, 32, 48), "VALID"),
                               ((4, 9, 9, 8), (3, 3, 8, 16), "SAME")]:
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), kernel)
    g = jax.random.normal(jax.random.key(2), jax.eval_shape(
        lambda: cpu_conv(x, w, (1, 1), padding, dimension_numbers=dims)).shape)
    loss = lambda x, w: jnp.vdot(g, cpu_conv(x, w, (1, 1), padding, dimension_numbers=dims))
    # `winograd` takes the 5x5 VALID conv's forward pass (its input gradient, padded by 4
    # over 8 rows, would multiply 0.9 of the direct kernel's rows), and both SAME passes
    wino = 1 if padding == "VALID" else 2
    for tricks, direct, by_wino in (("1", 2 - wino, wino), ("direct", 2, 0), ("0", 0, 0),
                                    ("row_split,taps,weight_grad,winograd", 0, 0)):
        os.environ["DIGITJAX_CPU_CONV_TRICKS"] = tricks
        hlo = jax.jit(jax.value_and_grad(loss, (0, 1))).lower(x, w).as_text()
        assert hlo.count("digitjax_direct_conv") == direct, (shape, tricks)
        assert hlo.count("digitjax_winograd_conv") == by_wino, (shape, tricks)
        dx, dw = jax.grad(loss, (0, 1))(x, w)
        dx0, dw0 = jax.grad(lambda x, w: jnp.vdot(g, lax.conv_general_dilated(
            x, w, (1, 1), padding, dimension_numbers=dims)), (0, 1))(x, w)
        assert np.allclose(dx, dx0, rtol=1e-4, atol=1e-3) and np.allclose(dw, dw0, rtol=1e-4,
                                                                           atol=1e-3), tricks
# strided convs: the input gradient as one stride-1 convolution per phase, 2 x 2 of them;
# `winograd` takes the two 3-row phases of a 24x24 input's (strided_cnn's first strided
# layer: 0.8 of the direct kernel's rows), none of a 12x12 one's (0.94)
for size, wino in ((12, 0), (24, 2)):
    x, w = jax.random.normal(jax.random.key(0), (2, size, size, 8)), jnp.ones((5, 5, 8, 16))
    for tricks, uses in (("1", True), ("space_to_depth,weight_grad", False)):
        os.environ["DIGITJAX_CPU_CONV_TRICKS"] = tricks
        forward = jax.jit(lambda x: cpu_conv(x, w, (2, 2), "SAME", dimension_numbers=dims))
        assert ("digitjax_direct_conv" in forward.lower(x).as_text()) == uses, tricks
        assert np.allclose(forward(x), lax.conv_general_dilated(x, w, (2, 2), "SAME",
                                                                dimension_numbers=dims),
                           atol=1e-4)
        strided = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w, (2, 2), "SAME",
                                                                 dimension_numbers=dims)))
        for fast, slow in zip(jax.grad(strided(cpu_conv), (0, 1))(x, w),
                              jax.grad(strided(lax.conv_general_dilated), (0, 1))(x, w)):
            assert np.allclose(fast, slow, rtol=1e-4, atol=1e-3), (size, tricks)
        # the forward pass (sin's derivative needs it) and the four phases
        hlo = jax.jit(jax.grad(strided(cpu_conv))).lower(x, w).as_text()
        assert hlo.count("digitjax_direct_conv") == (5 - wino if uses else 0), (size, tricks)
        assert hlo.count("digitjax_winograd_conv") == (wino if uses else 0), (size, tricks)
os.environ["DIGITJAX_CPU_CONV_TRICKS"] = "1"
for k, route in ((5, "_direct_conv"), (3, "tap_sum_conv")):  # a first layer: one channel
    x, w = jnp.ones((2, 12, 12, 1)), jnp.ones((k, k, 1, 16))
    jaxpr = str(jax.make_jaxpr(lambda x: cpu_conv(x, w, (1, 1), "VALID",
                                                  dimension_numbers=dims))(x))
    assert f"name={route}" in jaxpr, (k, jaxpr)
print("ok")
"""


def test_on_one_device_stride_1_convolutions_take_the_kernel_both_ways():
    """Forward pass and input gradient (two custom calls in the gradient's program) on
    one XLA device with the trick on; none with it off; a strided convolution's forward
    pass too, with its gradients equal to lax's; a one-channel input's 5x5 kernel takes
    it too, a 3x3 one `taps`. This pytest process has digitjax's 2-device split, where
    lax's convolutions run."""
    env = {**os.environ, "DIGITJAX_CPU_DEVICES": "1", "XLA_FLAGS": ""}
    done = subprocess.run([sys.executable, "-c", ONE_DEVICE], env=env, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


SUMMARY_FLOPS = """
import os
import jax, jax.numpy as jnp
from digitjax import model_summary
from digitjax.configs import best
from digitjax.models import create_model
config = best.get_config()
model = create_model(config, 10)
x = jnp.zeros((1, 28, 28, 1))
variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
hlo = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).as_text()
assert "digitjax_direct_conv" in hlo  # the kernel computes the model's inference here
with_tricks = model_summary.summarize(config, (28, 28, 1), 10)["flops_per_image"]
os.environ["DIGITJAX_CPU_CONV_TRICKS"] = "0"
lax_only = model_summary.summarize(config, (28, 28, 1), 10)["flops_per_image"]
assert with_tricks == lax_only > 25e6, (with_tricks, lax_only)
print("ok")
"""


def test_the_model_summary_counts_the_flops_the_kernels_compute():
    """XLA's cost analysis counts nothing inside a custom call: on one device, where
    strided_cnn's inference runs on the direct kernel, the summary still counts every
    convolution (lax's, traced with the tricks off), as with DIGITJAX_CPU_CONV_TRICKS=0."""
    env = {**os.environ, "DIGITJAX_CPU_DEVICES": "1", "XLA_FLAGS": ""}
    done = subprocess.run([sys.executable, "-c", SUMMARY_FLOPS], env=env, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
