import jax
import jax.numpy as jnp
import numpy as np

from digitjax import augment


def digits(n=4):
    x = np.zeros((n, 8, 8, 1), np.float32)
    x[:, 2:6, 3:5] = 1.0  # a bar in the middle
    return jnp.asarray(x)


def test_zero_strength_is_the_identity():
    x = digits()
    out = augment.random_affine(x, jax.random.key(0))
    np.testing.assert_allclose(out, x, atol=1e-6)


def test_integer_shift_moves_pixels_exactly():
    x = digits(1)
    out = np.asarray(augment.shift(x, 1, -2))
    expected = np.zeros_like(np.asarray(x))
    expected[:, 3:7, 1:3] = 1.0
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_same_key_same_images_other_key_other_images():
    x = digits(8)
    kw = dict(rotation_deg=15.0, zoom=0.1, shift=0.1)
    a = augment.random_affine(x, jax.random.key(1), **kw)
    b = augment.random_affine(x, jax.random.key(1), **kw)
    c = augment.random_affine(x, jax.random.key(2), **kw)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a[0], a[1])  # per-example randomness


def test_parts_of_a_batch_get_what_the_whole_gets():
    """pmap draws for the global batch and slices: the same images as unsplit."""
    x = jax.random.uniform(jax.random.key(3), (8, 8, 8, 1))
    kw = dict(rotation_deg=15.0, zoom=0.1, shift=0.1, flip_horizontal=True)
    whole = augment.random_affine(x, jax.random.key(4), **kw)
    parts = [augment.random_affine(x[i * 2:(i + 1) * 2], jax.random.key(4), part=(i, 4), **kw)
             for i in range(4)]
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-6)


def test_flip_mirrors_about_half():
    x = jnp.tile(jnp.arange(8.0)[None, None, :, None], (64, 8, 1, 1))
    out = augment.random_affine(x, jax.random.key(5), flip_horizontal=True)
    flipped = np.all(np.asarray(out) == np.asarray(x)[:, :, ::-1], axis=(1, 2, 3))
    kept = np.all(np.asarray(out) == np.asarray(x), axis=(1, 2, 3))
    assert np.all(flipped | kept) and 16 < flipped.sum() < 48
