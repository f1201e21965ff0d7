"""The `weight_grad` CPU trick (models/weight_grad.py, weight_grad.cc): a direct kernel
for a convolution's weight gradient, built with the machine's compiler on first use.
Its gradients equal lax's, bit for bit from run to run; models use it on one XLA
device; where it cannot be built lax's gradient runs instead, with one warning."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from digitjax.models import weight_grad

DIMS = ("NHWC", "HWIO", "NHWC")


def conv_operands(batch: int, size, channels: int, features: int, kernel):
    """Random NHWC input, HWIO kernel (`size`, `kernel`: an int or (h, w)) and a key for
    the output gradient; fails the test where the kernels did not build."""
    if weight_grad.lanes() is None:
        pytest.fail(f"the kernels did not build: {weight_grad._state.get('error')}")
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    h, w = (size, size) if isinstance(size, int) else size
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    return (jax.random.normal(kx, (batch, h, w, channels)),
            jax.random.normal(kk, (kh, kw, channels, features)), kg)


def test_empty_weights_and_outputs_compute_nothing():
    """No input channels (no weights), or no output pixels: no division by zero in the
    kernels' blocking, and the usual shapes (zeros where there are values)."""
    x, _, _ = conv_operands(3, 6, 2, 8, 3)
    dw = weight_grad.conv_weight_grad(x[..., :0], jnp.ones((3, 4, 4, 8)), (3, 3), 1,
                                      ((0, 0), (0, 0)))
    assert dw.shape == (3, 3, 0, 8)
    dw = weight_grad.conv_weight_grad(x[:, :0], jnp.ones((3, 0, 4, 8)), (1, 3), 1,
                                      ((0, 0), (0, 0)))
    assert dw.shape == (1, 3, 2, 8) and not np.asarray(dw).any()


def test_a_features_gradient_does_not_depend_on_the_features_beside_it():
    """8 features and 40 features block a kernel row of 13 values differently (AVX2:
    12 + 1 with one vector, 6 + 6 + 1 with two; AVX-512: 12 + 1, and 8 + 5 with three):
    the first 8 features' gradients are still the same bits, each sum over images and
    pixels running in one order of fused multiply-adds (weight_grad.py's GCC_FLAGS)."""
    x, _, kg = conv_operands(11, 9, 13, 40, (3, 1))
    g = jax.random.normal(kg, (11, 7, 9, 40))
    dw = jax.jit(lambda x, g: weight_grad.conv_weight_grad(x, g, (3, 1), 1, ((0, 0), (0, 0))))
    wide, narrow = dw(x, g), dw(x, g[..., :8])
    assert narrow.shape == (3, 1, 13, 8)
    assert np.array_equal(narrow, wide[..., :8])


@pytest.mark.parametrize("batch,size,channels,features,kernel,stride,padding", [
    (16, 12, 32, 32, 3, 1, "VALID"),   # strided_cnn's stride-1 layers, 2 images a chunk
    (13, 12, 32, 64, 5, 2, "SAME"),    # a strided layer; 13 images in 8 uneven chunks
    (3, 9, 1, 32, 3, 1, "SAME"),       # a first layer (one channel), fewer images than chunks
    (5, (9, 7), 6, 48, (2, 3), 1, ((0, 2), (1, 0))),  # 3 vectors of features, 6 channels
    (4, 11, 24, 16, 4, 3, "VALID"),    # stride 3; 16 features: one AVX-512 vector
    (6, 10, 30, 36, 3, 1, "VALID"),    # kernel_cnn:3's CPU widths: 36 features padded
    (2, 7, 5, 3, 3, 2, "SAME"),        # 3 features: less than a vector
    (40, 16, 16, 32, 7, 1, "VALID"),   # kernel_cnn:7's widths: 7 * 16 values a kernel row
    # (blocks of 6 and a tail of 4 with AVX2); 5 images a chunk in groups of 2, 2 and 1
])
def test_kernel_equals_lax_weight_gradient(batch, size, channels, features, kernel, stride,
                                           padding):
    x, w, kg = conv_operands(batch, size, channels, features, kernel)
    h, w_, kh, kw = *x.shape[1:3], *w.shape[:2]

    def reference(w):
        return lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=DIMS)

    y, pull = jax.vjp(reference, w)
    g = jax.random.normal(kg, y.shape)
    pads = (lax.padtype_to_pads((h, w_), (kh, kw), (stride, stride), padding)
            if isinstance(padding, str) else padding)
    fast = jax.jit(lambda x, g: weight_grad.conv_weight_grad(x, g, (kh, kw), stride, pads))
    out = fast(x, g)
    np.testing.assert_allclose(out, pull(g)[0], rtol=1e-4, atol=1e-4 * float(jnp.abs(out).max()))
    assert np.array_equal(out, fast(x, g))  # the chunks are summed in a fixed order


ONE_DEVICE = """
import jax, jax.numpy as jnp, numpy as np
from digitjax.models import weight_grad
from digitjax.models.conv import cpu_conv
assert jax.device_count() == 1 and weight_grad.usable()
dims = ("NHWC", "HWIO", "NHWC")
# every route of cpu_conv: row split (VALID), space-to-depth (strided), taps (1 channel),
# lax's own conv (padded SAME): the weight gradient is the kernel's, bit for bit
for shape, kernel, stride, padding in [((4, 12, 12, 32), (3, 3, 32, 32), 1, "VALID"),
                                       ((4, 12, 12, 32), (5, 5, 32, 64), 2, "SAME"),
                                       ((4, 9, 9, 1), (3, 3, 1, 32), 1, "SAME"),
                                       ((4, 9, 9, 8), (3, 3, 8, 16), 1, "SAME"),
                                       ((4, 10, 10, 30), (3, 3, 30, 36), 1, "VALID")]:
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), kernel)
    y = cpu_conv(x, w, (stride, stride), padding, dimension_numbers=dims)
    g = jax.random.normal(jax.random.key(2), y.shape)
    assert "digitjax_conv_weight_grad" in str(jax.jit(jax.grad(lambda w: jnp.vdot(
        g, cpu_conv(x, w, (stride, stride), padding, dimension_numbers=dims)))).lower(w)
        .as_text()), shape
    fast = jax.grad(lambda w: jnp.vdot(g, cpu_conv(x, w, (stride, stride), padding,
                                                   dimension_numbers=dims)))(w)
    pads = jax.lax.padtype_to_pads(shape[1:3], kernel[:2], (stride, stride), padding)
    assert np.array_equal(fast, weight_grad.conv_weight_grad(x, g, kernel[:2], stride, pads))
x, g = jnp.zeros((2, 6, 6, 3)), jnp.zeros((2, 4, 4, 32))
assert weight_grad.takes(x, jnp.zeros((3, 3, 3, 32)), g)
assert weight_grad.takes(x, jnp.zeros((3, 3, 3, 4)), g[..., :4])  # padded to a vector
assert not weight_grad.takes(x.astype(jnp.bfloat16), jnp.zeros((3, 3, 3, 32)), g)
assert not weight_grad.takes(x, jnp.zeros((6, 6, 3, 32)), g[:, :1, :1])  # a matmul: lax's
print("ok")
"""


def test_on_one_device_every_float32_conv_takes_the_kernel():
    """Where the process has one XLA device (the shipped configs' `cpu_devices = 1`),
    each of cpu_conv's routes computes its weight gradient with the kernel; this pytest
    process has digitjax's 2-device split, where lax's runs (`weight_grad.usable`)."""
    env = {**os.environ, "DIGITJAX_CPU_DEVICES": "1", "XLA_FLAGS": ""}
    done = subprocess.run([sys.executable, "-c", ONE_DEVICE], env=env, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
    assert weight_grad.usable() == (jax.device_count() == 1)


def test_a_kernel_that_cannot_be_built_falls_back_to_lax_with_one_warning(tmp_path):
    code = """
import warnings
import jax, jax.numpy as jnp
from jax import lax
from digitjax.models.conv import cpu_conv
x, w = jnp.ones((2, 8, 8, 5)), jnp.ones((3, 3, 5, 32))
dims = ("NHWC", "HWIO", "NHWC")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    fast = jax.grad(lambda w: cpu_conv(x, w, (1, 1), "VALID", dimension_numbers=dims).sum())(w)
    jax.grad(lambda w: cpu_conv(x, w, (1, 1), "VALID", dimension_numbers=dims).sum())(w)
plain = jax.grad(lambda w: lax.conv_general_dilated(
    x, w, (1, 1), "VALID", dimension_numbers=dims).sum())(w)
assert jnp.allclose(fast, plain), "not lax's gradient"
ours = [str(c.message) for c in caught if "weight_grad" in str(c.message)]
print(len(ours), ours[0])
"""
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "XLA_FLAGS": "",
           "DIGITJAX_KERNEL_CACHE": str(tmp_path / "kernels"), "DIGITJAX_CPU_DEVICES": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("1 digitjax: the C++ kernels (weight_grad, direct) are not "
                                  "available, lax's convolutions run instead"), done.stdout
    assert not any((tmp_path / "kernels").glob("*.so"))  # nothing half-built left behind


def test_the_kernel_is_built_once_into_its_cache(tmp_path):
    code = ("from digitjax.models import weight_grad; print(weight_grad.lanes(), "
            "weight_grad._library_path())")
    env = {**os.environ, "DIGITJAX_KERNEL_CACHE": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, check=True).stdout.split()
    built = sorted(p.name for p in tmp_path.iterdir())
    assert first[0] in ("8", "16") and built == [os.path.basename(first[1])]
    stamp = os.stat(first[1]).st_mtime_ns
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, check=True).stdout.split()
    assert second == first and os.stat(first[1]).st_mtime_ns == stamp  # loaded, not rebuilt
