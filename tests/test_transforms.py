import numpy as np
import pytest

from digitjax import transforms
from digitjax.data import sampling
from digitjax.errors import UserError


def test_infer_image_shape():
    assert transforms.infer_image_shape(784) == (28, 28, 1)
    assert transforms.infer_image_shape(32 * 32 * 3) == (32, 32, 3)
    assert transforms.infer_image_shape(12, image_size=2, channels=3) == (2, 2, 3)
    assert transforms.infer_image_shape(64, image_size=8) == (8, 8, 1)


@pytest.mark.parametrize("kwargs", [{"num_pixels": 783}, {"num_pixels": 784, "image_size": 27}])
def test_infer_image_shape_rejects(kwargs):
    with pytest.raises(UserError, match="pixel columns"):
        transforms.infer_image_shape(**kwargs, source="x.csv")


def test_an_image_size_that_makes_other_than_1_or_3_channels_is_refused():
    with pytest.raises(UserError, match=r"x.csv: config.image_size=7 makes its 784 pixel "
                                        r"columns 16 channels per pixel; expected 1"):
        transforms.infer_image_shape(784, image_size=7, source="x.csv")
    assert transforms.infer_image_shape(784, image_size=7, channels=16) == (7, 7, 16)


def test_reshape_is_row_major():
    flat = np.arange(2 * 6, dtype=np.uint8).reshape(2, 6)
    out = transforms.reshape_images(flat, (2, 3, 1))
    assert out.shape == (2, 2, 3, 1)
    assert out[1, 1, 2, 0] == 11 and out[0, 0, 1, 0] == 1


def test_scale_and_standardize():
    x = np.array([0, 51, 255], np.uint8)
    np.testing.assert_allclose(transforms.scale(x), [0.0, 0.2, 1.0], rtol=1e-6)
    assert transforms.scale(x).dtype == np.float32
    images = np.array([[[[0]], [[255]]]], np.uint8)  # 1x2x1x1
    mean, std = transforms.channel_stats(images)
    assert mean == [0.5] and std == [0.5]
    np.testing.assert_allclose(transforms.standardize(images, 0.5, 0.5).ravel(), [-1.0, 1.0])


def test_stratified_split_keeps_class_shares():
    labels = np.repeat(np.arange(3), [100, 50, 10])
    train, val = sampling.stratified_split(labels, 0.2, seed=1)
    assert np.bincount(labels[val]).tolist() == [20, 10, 2]
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 160
    again = sampling.stratified_split(labels, 0.2, seed=1)
    assert np.array_equal(val, again[1])
    other = sampling.stratified_split(labels, 0.2, seed=2)
    assert not np.array_equal(val, other[1])


def test_split_zero_trains_on_everything():
    train, val = sampling.stratified_split(np.zeros(7, int), 0.0, seed=0)
    assert train.tolist() == list(range(7)) and val.size == 0


def test_epoch_order_is_a_function_of_seed_and_epoch():
    idx = np.arange(100)
    a = sampling.epoch_order(idx, seed=3, epoch=2)
    assert np.array_equal(a, sampling.epoch_order(idx, seed=3, epoch=2))
    assert not np.array_equal(a, sampling.epoch_order(idx, seed=3, epoch=3))
    assert not np.array_equal(a, sampling.epoch_order(idx, seed=4, epoch=2))
    assert sorted(a.tolist()) == list(range(100))


def test_epoch_batches_drop_the_tail():
    batches = sampling.epoch_batches(np.arange(10, 20), 4, seed=0, epoch=1)
    assert batches.shape == (2, 4)
    assert len(set(batches.ravel().tolist())) == 8
    assert set(batches.ravel().tolist()) <= set(range(10, 20))


def test_padded_batches_cover_every_index_once():
    idx, mask = sampling.padded_batches(7, 3)
    assert idx.shape == mask.shape == (3, 3)
    assert idx[mask].tolist() == list(range(7))
    assert mask.sum() == 7
