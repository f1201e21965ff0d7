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
    out = augment.random_augment(x, jax.random.key(0))
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
    a = augment.random_augment(x, jax.random.key(1), **kw)
    b = augment.random_augment(x, jax.random.key(1), **kw)
    c = augment.random_augment(x, jax.random.key(2), **kw)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a[0], a[1])  # per-example randomness


def test_flip_mirrors_about_half():
    x = jnp.tile(jnp.arange(8.0)[None, None, :, None], (64, 8, 1, 1))
    out = augment.random_augment(x, jax.random.key(5), flip_horizontal=True)
    flipped = np.all(np.asarray(out) == np.asarray(x)[:, :, ::-1], axis=(1, 2, 3))
    kept = np.all(np.asarray(out) == np.asarray(x), axis=(1, 2, 3))
    assert np.all(flipped | kept) and 16 < flipped.sum() < 48


def vertical_bar(size=9):
    x = np.zeros((1, size, size, 1), np.float32)
    x[:, :, size // 2] = 1.0
    return jnp.asarray(x)


def no_rotation_zoom_shift(n=1):
    return jnp.zeros(n), jnp.ones(n), jnp.zeros((n, 2))


def test_shear_of_45_degrees_turns_a_vertical_bar_into_the_diagonal():
    out = augment.affine(vertical_bar(), *no_rotation_zoom_shift(), jnp.deg2rad(jnp.full(1, 45.0)))
    np.testing.assert_allclose(np.asarray(out)[0, ..., 0], np.eye(9), atol=1e-6)


def test_a_constant_displacement_moves_where_every_pixel_samples():
    displacement = jnp.zeros((1, 9, 9, 2)).at[..., 1].set(1.0)  # sample one pixel right
    out = augment.affine(vertical_bar(), *no_rotation_zoom_shift(), displacement=displacement)
    expected = np.zeros((9, 9), np.float32)
    expected[:, 3] = 1.0  # so the bar appears one pixel left
    np.testing.assert_allclose(np.asarray(out)[0, ..., 0], expected, atol=1e-6)


def test_gaussian_blur_keeps_a_constant_inside_and_spreads_a_point_as_a_gaussian():
    blurred = augment.gaussian_blur(jnp.ones((1, 41, 41, 1)), 2.0)
    np.testing.assert_allclose(blurred[0, 20, 20, 0], 1.0, atol=1e-5)
    point = jnp.zeros((1, 41, 41, 1)).at[0, 20, 20, 0].set(1.0)
    blurred = np.asarray(augment.gaussian_blur(point, 2.0))[0, :, :, 0]
    g = np.exp(-0.5 * (np.arange(41) - 20) ** 2 / 4.0) / (2.0 * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(blurred, np.outer(g, g), atol=1e-6)


def test_shear_and_elastic_are_random_per_example_and_repeatable():
    x = jax.random.uniform(jax.random.key(6), (8, 12, 12, 1))
    for kw in (dict(shear_deg=20.0), dict(elastic_alpha=30.0, elastic_sigma=3.0)):
        a = augment.random_augment(x, jax.random.key(7), **kw)
        assert np.array_equal(a, augment.random_augment(x, jax.random.key(7), **kw))
        assert not np.allclose(a, augment.random_augment(x, jax.random.key(8), **kw))
        moved = np.abs(np.asarray(a) - np.asarray(x)).mean(axis=(1, 2, 3))
        assert np.all(moved > 1e-3) and len(np.unique(moved)) == 8, kw


def test_shear_and_elastic_leave_the_other_draws_as_they_were():
    """Their keys are folded in, so turning them off reproduces earlier runs exactly."""
    x = jax.random.uniform(jax.random.key(9), (4, 8, 8, 1))
    key = jax.random.key(10)
    k_rot, k_zoom, k_shift, _ = jax.random.split(key, 4)
    angle = jnp.deg2rad(jax.random.uniform(k_rot, (4,), minval=-15.0, maxval=15.0))
    scale = jax.random.uniform(k_zoom, (4,), minval=0.9, maxval=1.1)
    offset = jax.random.uniform(k_shift, (4, 2), minval=-0.1, maxval=0.1) * 8
    out = augment.random_augment(x, key, rotation_deg=15.0, zoom=0.1, shift=0.1)
    np.testing.assert_allclose(out, augment.affine(x, angle, scale, offset), atol=1e-6)


def test_bilinear_sample_is_four_masked_taps_anywhere():
    """The window gather against the textbook form, pixel by pixel: inside, on the edges,
    and far outside (zero fill), with three channels."""
    rng = np.random.default_rng(0)
    images = rng.random((2, 5, 6, 3)).astype(np.float32)
    y = rng.uniform(-9, 14, (2, 4, 7)).astype(np.float32)
    x = rng.uniform(-9, 15, (2, 4, 7)).astype(np.float32)
    y[0, 0, :3], x[0, 0, :3] = [0.0, 4.0, 4.5], [0.0, 5.0, -0.5]  # corners, half outside
    expected = np.zeros((2, 4, 7, 3), np.float32)
    for b, i, j in np.ndindex(2, 4, 7):
        for yy in (np.floor(y[b, i, j]), np.floor(y[b, i, j]) + 1):
            for xx in (np.floor(x[b, i, j]), np.floor(x[b, i, j]) + 1):
                if 0 <= yy < 5 and 0 <= xx < 6:
                    weight = (1 - abs(y[b, i, j] - yy)) * (1 - abs(x[b, i, j] - xx))
                    expected[b, i, j] += weight * images[b, int(yy), int(xx)]
    out = augment.bilinear_sample(jnp.asarray(images), jnp.asarray(y), jnp.asarray(x))
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert np.all(np.asarray(out)[(y < -1) | (y > 5) | (x < -1) | (x > 6)] == 0)


def test_each_images_rotation_is_computed_once_not_per_pixel():
    """`augment._per_image`: in the compiled augmentation, cos and sin run on the batch's
    B angles once; XLA:CPU had fused them into every per-pixel fusion that read them."""
    images = jnp.zeros((8, 28, 28, 1), jnp.float32)
    fn = jax.jit(lambda x, k: augment.random_augment(x, k, rotation_deg=10.0, zoom=0.1,
                                                     shift=0.1, shear_deg=5.0))
    hlo = fn.lower(images, jax.random.key(0)).compile().as_text()
    assert hlo.count(" cosine(") == 1 and hlo.count(" sine(") == 1, hlo
    values = [jnp.arange(3.0), jnp.array([np.pi, -0.0, 1e-30])]
    assert all(np.array_equal(a[:, 0, 0], b) for a, b in zip(augment._per_image(*values),
                                                             values, strict=True))
