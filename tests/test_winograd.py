"""The `winograd` CPU trick (models/winograd.py, direct_conv.cc's WinogradConv): 3x3,
5x5 and 7x7 unpadded stride-1 forward passes by F(2, k) down the height. Its transforms
are exact, its outputs equal lax's to rounding and do not depend on an image's place in
the batch; models use it on one XLA device (test_direct_conv.py's one-device script)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from digitjax.models import weight_grad, winograd
from tests.test_weight_grad import conv_operands

DIMS = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("k", [3, 5, 7])
def test_toom_cook_matrices_give_the_correlation(k):
    """A^T [(G w) * (B^T d)] is the pair y[m] = sum over j of d[m + j] w[j], in float64."""
    at, g, bt = winograd.toom_cook(k)
    rng = np.random.default_rng(k)
    for _ in range(5):
        d, w = rng.standard_normal(k + 1), rng.standard_normal(k)
        np.testing.assert_allclose(at @ ((g @ w) * (bt @ d)),
                                   [d[m:m + k] @ w for m in (0, 1)], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch,size,channels,features,kernel", [
    (29, 10, 48, 64, 7),         # kernel_cnn:7's last layer; 29 images: a short tile
    (13, 16, 32, 48, 7),         # its second
    (6, 12, 48, 60, 5),          # kernel_cnn:5's last: 60 features, a tail vector
    (7, (14, 9), 9, 100, 5),     # 9 channels (odd), 100 features: a second block, a tail
    (1, (6, 7), 8, 8, (5, 3)),   # one image; a 5x3 kernel: only the height's size counts
    (8, 12, 32, 64, 3),          # strided_cnn's 3x3 layers
    (3, (10, 5), 12, 18, (3, 4)),  # kernel_cnn:3's second layer's widths, a 3x4 kernel
])
def test_kernel_equals_lax(batch, size, channels, features, kernel):
    x, w, _ = conv_operands(batch, size, channels, features, kernel)
    slow = lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=DIMS,
                                    precision="highest")
    fast = jax.jit(winograd.conv)(x, w)
    assert fast.shape == slow.shape
    # the direct kernel's error on these is 1e-6 of the largest output; this one's 2-4e-6
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-5 * float(jnp.abs(slow).max()))
    assert np.array_equal(fast, jax.jit(winograd.conv)(x, w))


def test_an_images_output_does_not_depend_on_its_place_in_the_batch():
    """7 images (tiles of 6 and 1 with AVX2) against each alone: the same bits. 9
    channels on 10 columns: rows of 540 and 90 floats, whose last values take the
    transform's scalar tail in one tile and its vectors in another."""
    x, w, _ = conv_operands(7, (12, 10), 9, 24, 5)
    batch = jax.jit(winograd.conv)(x, w)
    for i in range(7):
        assert np.array_equal(batch[i:i + 1], jax.jit(winograd.conv)(x[i:i + 1], w)), i


def test_takes_unpadded_3x3_5x5_7x7_with_an_even_output_height(monkeypatch):
    monkeypatch.setattr(weight_grad, "usable", lambda: True)  # as on one device
    x, w7, w5 = jnp.zeros((2, 16, 16, 32)), jnp.zeros((7, 7, 32, 48)), jnp.zeros((5, 5, 32, 8))
    none = ((0, 0), (0, 0))
    assert winograd.takes(x, w7, none) and winograd.takes(x[:, :14], w5, none)
    assert not winograd.takes(x[:, :15], w7, none)  # an odd output height
    assert not winograd.takes(x[:, :6], w7, none)  # no output
    assert not winograd.takes(x, w7, ((1, 1), (1, 1)))  # padded
    assert winograd.takes(x, jnp.zeros((3, 3, 32, 48)), none)
    assert not winograd.takes(x, jnp.zeros((4, 4, 32, 48)), none)  # untried heights
    assert not winograd.takes(x[..., :4], w7[:, :, :4], none)  # few channels (first layers)
    assert not winograd.takes(x.astype(jnp.bfloat16), w7, none)
    monkeypatch.setattr(weight_grad, "usable", lambda: False)  # 2 devices, or no compiler
    assert not winograd.takes(x, w7, none)
