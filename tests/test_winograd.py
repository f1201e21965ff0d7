"""The `winograd` CPU trick (models/winograd.py, direct_conv.cc's WinogradConv): 3x3,
5x5 and 7x7 stride-1 convolutions, padded or not, by F(2, k) down the height. Its
transforms are exact, its outputs equal lax's to rounding and do not depend on an
image's place in the batch; models use it on one XLA device, forward and for input
gradients (test_direct_conv.py's one-device script)."""

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


NONE = ((0, 0), (0, 0))


@pytest.mark.parametrize("batch,size,channels,features,kernel,pads", [
    (29, 10, 48, 64, 7, NONE),         # kernel_cnn:7's last layer; 29 images: a short tile
    (13, 16, 32, 48, 7, NONE),         # its second
    (6, 12, 48, 60, 5, NONE),          # kernel_cnn:5's last: 60 features, a tail vector
    (7, (14, 9), 9, 100, 5, NONE),     # 9 channels (odd), 100 features: a second block, a tail
    (1, (6, 7), 8, 8, (5, 3), NONE),   # one image; a 5x3 kernel: only the height's size counts
    (8, 12, 32, 64, 3, NONE),          # strided_cnn's 3x3 layers
    (3, (10, 5), 12, 18, (3, 4), NONE),  # kernel_cnn:3's second layer's widths, a 3x4 kernel
    (5, 7, 64, 64, 3, ((1, 1), (1, 1))),  # SAME on 7x7: an odd height, the last pair's 1 row
    (7, 14, 32, 64, 3, ((1, 1), (1, 1))),  # the default CNN's second layer
    (9, 16, 32, 20, 7, ((6, 6), (6, 6))),  # an input gradient of kernel_cnn:7: padded by 6
    (3, (12, 9), 9, 20, 5, ((4, 4), (4, 4))),  # kernel_cnn:5's, odd channels and widths
    (4, (10, 11), 16, 24, 3, ((2, 0), (0, 2))),  # one side's padding only, on each axis
    (13, 9, 8, 8, (3, 5), ((1, 2), (3, 1))),  # uneven pads, a wider kernel than tall
])
def test_kernel_equals_lax(batch, size, channels, features, kernel, pads):
    x, w, _ = conv_operands(batch, size, channels, features, kernel)
    slow = lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=DIMS,
                                    precision="highest")
    fast = jax.jit(winograd.conv, static_argnums=2)(x, w, pads)
    assert fast.shape == slow.shape
    # the direct kernel's error on these is 1e-6 of the largest output; this one's 2-4e-6
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-5 * float(jnp.abs(slow).max()))
    assert np.array_equal(fast, jax.jit(winograd.conv, static_argnums=2)(x, w, pads))


@pytest.mark.parametrize("pads", [NONE, ((2, 1), (1, 2))])
def test_an_images_output_does_not_depend_on_its_place_in_the_batch(pads):
    """7 images (tiles of 6 and 1 with AVX2) against each alone: the same bits. 9
    channels on 10 columns: rows of 540 and 90 floats, whose last values take the
    transform's scalar tail in one tile and its vectors in another; padded, an odd
    output height."""
    x, w, _ = conv_operands(7, (12, 10), 9, 24, 5)
    conv = jax.jit(winograd.conv, static_argnums=2)
    batch = conv(x, w, pads)
    for i in range(7):
        assert np.array_equal(batch[i:i + 1], conv(x[i:i + 1], w, pads)), i


@pytest.mark.parametrize("h,k,pads,ratio", [
    (22, 7, (0, 0), 8 * 8 / (16 * 7)),  # unpadded: (k + 1) per pair against 2k
    (28, 3, (1, 1), 14 * 4 / (28 * 3 - 2)),  # SAME: the first and last rows meet 2 rows
    (4, 7, (6, 6), 5 * 8 / (4 * 7)),  # a small output gradient's input gradient: 1.43
    (10, 3, (0, 6), 7 * 4 / (8 * 3 + 2 + 1)),  # the last 4 rows' windows all in the padding
])
def test_row_ratio_counts_the_rows_each_form_multiplies(h, k, pads, ratio):
    assert winograd.row_ratio(h, k, pads) == pytest.approx(ratio)


def test_takes_3x3_5x5_7x7_where_it_multiplies_fewer_rows(monkeypatch):
    monkeypatch.setattr(weight_grad, "usable", lambda: True)  # as on one device
    x, w7, w5 = jnp.zeros((2, 16, 16, 32)), jnp.zeros((7, 7, 32, 48)), jnp.zeros((5, 5, 32, 8))
    assert winograd.takes(x, w7, NONE) and winograd.takes(x[:, :14], w5, NONE)
    assert winograd.takes(x[:, :15], w7, NONE)  # an odd output height
    assert winograd.takes(x, w7, ((3, 3), (3, 3)))  # SAME
    assert winograd.takes(x, w7, ((6, 6), (6, 6)))  # an input gradient: ratio 0.79
    assert not winograd.takes(x[:, :10], w7, ((6, 6), (6, 6)))  # 0.91: the direct kernel
    assert not winograd.takes(x, w7, ((7, 0), (0, 0)))  # low padding past the kernel
    assert not winograd.takes(x, w7, ((0, -1), (0, 0)))  # negative padding
    assert not winograd.takes(x[:, :6], w7, NONE)  # no output
    assert winograd.takes(x, jnp.zeros((3, 3, 32, 48)), NONE)
    assert not winograd.takes(x, jnp.zeros((4, 4, 32, 48)), NONE)  # untried heights
    assert not winograd.takes(x[..., :4], w7[:, :, :4], NONE)  # few channels (first layers)
    assert not winograd.takes(x.astype(jnp.bfloat16), w7, NONE)
    monkeypatch.setattr(weight_grad, "usable", lambda: False)  # 2 devices, or no compiler
    assert not winograd.takes(x, w7, NONE)
