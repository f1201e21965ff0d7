import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import pytest
from jax import lax

from digitjax import cpu_flags, parallel
from digitjax.configs import default, seed
from digitjax.errors import UserError
from digitjax.models import create_model, weight_grad
from digitjax.models.conv import cpu_conv, space_to_depth_conv
from digitjax.models.pool import avg_pool, max_pool


def param_count(variables) -> int:
    return sum(x.size for x in jax.tree.leaves(variables["params"]))


def test_seed_model_has_the_keras_parameter_count():
    model = create_model(seed.get_config(), 10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    assert param_count(variables) == 216_650  # Keras: 320 conv + 216,330 dense
    assert model.apply(variables, jnp.zeros((5, 28, 28, 1))).shape == (5, 10)


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (45, 61, 3)])
def test_default_cnn_takes_any_image_shape(shape):
    model = create_model(default.get_config(), 7)
    variables = model.init(jax.random.key(0), jnp.zeros((1, *shape)))
    assert set(variables) == {"params", "batch_stats"}
    logits = model.apply(variables, jnp.ones((3, *shape)))
    assert logits.shape == (3, 7)


def test_default_cnn_parameter_count():
    # conv 3x3x1x32 + bn, conv 3x3x32x64 + bn, dense 7*7*64 -> 256 + bn, dense 256 -> 10
    expected = 288 + 64 + 18432 + 128 + 3136 * 256 + 512 + 2570
    variables = create_model(default.get_config(), 10).init(
        jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    assert param_count(variables) == expected


def test_unknown_model_is_named():
    config = default.get_config()
    config.model = "vgg"
    names = r"\['cnn', 'inception_cnn', 'kernel_cnn', 'resnet', 'seed_cnn', 'strided_cnn'\]"
    with pytest.raises(UserError, match=r"config.model: expected one of " + names):
        create_model(config, 10)


@pytest.mark.parametrize("name, shape", [("strided_cnn", (28, 28, 1)), ("resnet", (28, 28, 1)),
                                         ("resnet", (64, 64, 3)), ("strided_cnn", (32, 32, 3))])
def test_stronger_models_run_on_digits_and_photos(name, shape):
    config = default.get_config()
    config.model = name
    model = create_model(config, 5)
    variables = model.init(jax.random.key(0), jnp.zeros((1, *shape)))
    assert "batch_stats" in variables
    logits, updates = model.apply(variables, jnp.ones((2, *shape)), train=True,
                                  rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"])
    assert logits.shape == (2, 5) and "batch_stats" in updates


@pytest.mark.parametrize("size,kernel,stride,padding", [
    (24, 5, 2, "SAME"), (27, 3, 2, "VALID"), (17, 4, 3, "SAME"), (10, 3, 2, ((0, 5), (1, 0))),
])
def test_space_to_depth_conv_equals_the_strided_conv(size, kernel, stride, padding):
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, size, size + 1, 3))
    w = jax.random.normal(kw, (kernel, kernel, 3, 4))
    dims = ("NHWC", "HWIO", "NHWC")
    assert jax.default_backend() == "cpu"  # where the rearranged path runs

    def reference(x, w):
        return lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=dims)

    def fast(x, w):
        return space_to_depth_conv(x, w, (stride, stride), padding, dimension_numbers=dims)

    y, pull = jax.vjp(reference, x, w)
    y_fast, pull_fast = jax.vjp(fast, x, w)
    assert y_fast.shape == y.shape
    assert jnp.allclose(y_fast, y, atol=1e-4)
    g = jax.random.normal(kg, y.shape)
    for a, b in zip(pull(g), pull_fast(g), strict=True):
        assert jnp.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("size,kernel,padding", [
    ((10, 10), 7, "VALID"), ((6, 9), 7, "VALID"), ((4, 5), 5, "SAME"),
    ((8, 8), 7, ((1, 0), (2, 3))), ((12, 12), 3, "VALID"), ((9, 7), 3, "VALID"),
    ((4, 4), 4, "VALID"), ((7, 6), (2, 5), ((0, 2), (1, 1))),
])
def test_row_split_conv_equals_lax_with_its_gradients(size, kernel, padding):
    """Unpadded stride-1 convolutions, and padded ones whose output is smaller than the
    kernel, go through the row-split input gradient (a 1x1 output through one matmul);
    value and both gradients equal lax's, and the route is the one cpu_conv picks."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    kx, kw_, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (3, *size, 5))
    w = jax.random.normal(kw_, (kh, kw, 5, 4))
    dims = ("NHWC", "HWIO", "NHWC")

    def reference(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dims)

    def fast(x, w):
        return cpu_conv(x, w, (1, 1), padding, dimension_numbers=dims)

    y, pull = jax.vjp(reference, x, w)
    y_fast, pull_fast = jax.vjp(fast, x, w)
    assert "name=_valid_conv" in str(jax.make_jaxpr(fast)(x, w))  # the row-split route
    assert y_fast.shape == y.shape
    assert jnp.allclose(y_fast, y, atol=1e-4)
    g = jax.random.normal(kg, y.shape)
    for a, b in zip(pull(g), pull_fast(g), strict=True):
        assert jnp.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_pointwise_conv_is_a_matmul_equal_to_lax_with_its_gradients(padding):
    x = jax.random.normal(jax.random.key(0), (3, 7, 5, 6))
    w = jax.random.normal(jax.random.key(1), (1, 1, 6, 4))
    dims = ("NHWC", "HWIO", "NHWC")

    def reference(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dims)

    def fast(x, w):
        return cpu_conv(x, w, (1, 1), padding, dimension_numbers=dims)

    jaxpr = str(jax.make_jaxpr(fast)(x, w))
    assert "dot_general" in jaxpr and "conv_general_dilated" not in jaxpr
    y, pull = jax.vjp(reference, x, w)
    y_fast, pull_fast = jax.vjp(fast, x, w)
    assert y_fast.shape == y.shape
    assert jnp.allclose(y_fast, y, atol=1e-5)
    g = jax.random.normal(jax.random.key(2), y.shape)
    for a, b in zip(pull(g), pull_fast(g), strict=True):
        assert a.shape == b.shape and jnp.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("channels,kernel,padding", [
    (1, 3, "SAME"), (1, 5, "VALID"), (3, 3, "SAME"), (4, (2, 3), ((0, 2), (1, 0))),
])
def test_tap_sum_conv_equals_lax_with_its_gradients(channels, kernel, padding, monkeypatch):
    """A stride-1 convolution of a few-channel input sums shifted slices (no
    convolution in its forward pass); value and both gradients equal lax's. (With the
    `direct` trick on one device, kernels past TAPS_MAX_TAPS go there instead:
    test_direct_conv.py.)"""
    monkeypatch.setenv("DIGITJAX_CPU_CONV_TRICKS", "taps")
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = jax.random.normal(jax.random.key(0), (3, 9, 8, channels))
    w = jax.random.normal(jax.random.key(1), (kh, kw, channels, 5))
    dims = ("NHWC", "HWIO", "NHWC")

    def reference(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dims)

    def fast(x, w):
        return cpu_conv(x, w, (1, 1), padding, dimension_numbers=dims)

    assert "name=tap_sum_conv" in str(jax.make_jaxpr(fast)(x, w))
    y, pull = jax.vjp(reference, x, w)
    y_fast, pull_fast = jax.vjp(fast, x, w)
    assert y_fast.shape == y.shape and y_fast.dtype == y.dtype
    assert jnp.allclose(y_fast, y, atol=1e-5)
    g = jax.random.normal(jax.random.key(2), y.shape)
    for a, b in zip(pull(g), pull_fast(g), strict=True):
        assert a.shape == b.shape and jnp.allclose(a, b, atol=1e-4)


def test_each_cpu_trick_switches_off_alone(monkeypatch):
    x = jax.random.normal(jax.random.key(0), (2, 12, 12, 8))  # past TAPS_MAX_CHANNELS
    w = jax.random.normal(jax.random.key(1), (3, 3, 8, 4))
    dims = ("NHWC", "HWIO", "NHWC")

    def taps() -> bool:
        return "name=tap_sum_conv" in str(jax.make_jaxpr(lambda x: cpu_conv(
            x, w[:, :, :1], (1, 1), "SAME", dimension_numbers=dims))(x[..., :1]))

    def routes() -> tuple[bool, bool]:
        """(stride-1 conv takes the row split, strided conv takes space-to-depth)"""
        plain = str(jax.make_jaxpr(lambda x: cpu_conv(
            x, w, (1, 1), "VALID", dimension_numbers=dims))(x))
        strided = str(jax.make_jaxpr(lambda x: cpu_conv(
            x, w, (2, 2), "SAME", dimension_numbers=dims))(x))
        return "name=_valid_conv" in plain, "name=_strided_conv" in strided

    def pointwise() -> bool:
        return "dot_general" in str(jax.make_jaxpr(lambda x: cpu_conv(
            x, w[:1, :1], (1, 1), "SAME", dimension_numbers=dims))(x))

    def padded() -> str:
        """the custom VJP a padded stride-1 conv (12x12 out) takes: the direct kernel,
        lax's conv with the weight_grad kernel's gradient, or none (lax)"""
        jaxpr = str(jax.make_jaxpr(lambda x: cpu_conv(
            x, w, (1, 1), "SAME", dimension_numbers=dims))(x))
        return next((name for name in ("_direct_conv", "_kernel_grad_conv")
                     if f"name={name}" in jaxpr), "custom_vjp" if "custom_vjp" in jaxpr else "")

    # the kernels' routes where this process has one device (test_weight_grad.py and
    # test_direct_conv.py check them there); on digitjax's 2-device split, lax
    kernel = "_direct_conv" if weight_grad.usable() else ""
    assert routes() == (True, True) and pointwise() and taps()
    assert padded() == kernel
    for value, expected in [("0", (False, False)), ("row_split", (True, False)),
                            ("space_to_depth,pool", (False, True)), ("1", (True, True)),
                            (" row_split , pool ", (True, False)), ("", (True, True))]:
        monkeypatch.setenv("DIGITJAX_CPU_CONV_TRICKS", value)
        assert routes() == expected, value
        assert pointwise() == taps() == (value.strip() in ("", "1")), value
        assert padded() == (kernel if value.strip() in ("", "1") else ""), value
    monkeypatch.setenv("DIGITJAX_CPU_CONV_TRICKS", "pointwise")
    assert routes() == (False, False) and pointwise() and not taps()
    monkeypatch.setenv("DIGITJAX_CPU_CONV_TRICKS", "taps")
    assert routes() == (False, False) and not pointwise() and taps()
    monkeypatch.setenv("DIGITJAX_CPU_CONV_TRICKS", "weight_grad")
    assert routes() == (False, False) and not pointwise() and not taps()
    assert padded() == ("_kernel_grad_conv" if kernel else "")
    monkeypatch.setenv("DIGITJAX_CPU_CONV_TRICKS", "row_split,fast")
    with pytest.raises(UserError, match="DIGITJAX_CPU_CONV_TRICKS='row_split,fast': expected "
                       "1, 0 or names from space_to_depth, row_split, pool, pointwise, taps, "
                       "weight_grad, bn_relu, direct"):
        routes()


@pytest.mark.parametrize("window,strides,padding", [
    ((3, 3), (1, 1), "SAME"), ((2, 4), (1, 1), "SAME"), ((5, 5), (1, 1), "SAME"),
    ((2, 2), (2, 2), "VALID"), ((3, 2), (3, 2), "VALID"),
    ((3, 3), (2, 2), "SAME"),  # the last: nn.max_pool itself
])
def test_max_pool_equals_flax_with_its_gradient_ties_included(window, strides, padding):
    """The values and gradients are nn.max_pool's bit for bit, on ties too (integers):
    each output's gradient goes to the first input in its window holding the maximum."""
    weights = jnp.arange(2 * 12 * 12 * 3, dtype=jnp.float32).reshape(2, 12, 12, 3)

    def loss(pool):  # a different weight per output, so a misrouted gradient shows
        return lambda x: jnp.sum(jnp.sin(pool(x)) * weights[tuple(map(slice, pool(x).shape))])

    def reference(x):
        return nn.max_pool(x, window, strides=strides, padding=padding)

    def fast(x):
        return max_pool(x, window, strides, padding)

    for x in (jax.random.normal(jax.random.key(0), (2, 12, 12, 3)),
              jnp.round(jax.random.normal(jax.random.key(1), (2, 12, 12, 3)))):
        assert jnp.array_equal(fast(x), reference(x))
        assert jnp.array_equal(jax.grad(loss(fast))(x), jax.grad(loss(reference))(x))


@pytest.mark.parametrize("window,size", [((2, 2), (12, 12)), ((3, 2), (9, 8)), ((2, 2), (7, 8))])
def test_avg_pool_equals_flax_with_its_gradient(window, size):
    x = jax.random.normal(jax.random.key(0), (2, *size, 3))

    def reference(x):
        return nn.avg_pool(x, window, strides=window)

    assert jnp.allclose(avg_pool(x, window), reference(x), atol=1e-6)
    grad = jax.grad(lambda x: jnp.sum(jnp.sin(avg_pool(x, window))))(x)
    assert jnp.allclose(grad, jax.grad(lambda x: jnp.sum(jnp.sin(reference(x))))(x), atol=1e-6)


def test_cpu_flags_keep_what_the_user_set(monkeypatch):
    monkeypatch.delenv("DIGITJAX_CPU_DEVICES", raising=False)
    user = ("--xla_cpu_experimental_ynn_fusion_type=dot"
            " --xla_force_host_platform_device_count=3")
    monkeypatch.setenv("XLA_FLAGS", user)
    cpu_flags.apply_cpu_flags()
    assert os.environ["XLA_FLAGS"] == user
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    cpu_flags.apply_cpu_flags()
    assert os.environ["XLA_FLAGS"] == (
        "--xla_force_host_platform_device_count=1"
        " --xla_cpu_experimental_ynn_fusion_type=-individual_convolution")


@pytest.mark.parametrize("cores, chosen, count", [
    (1, "", None), (2, "", "2"), (16, "", "2"), (2, "1", None), (1, "4", "4")])
def test_cpu_flags_split_the_host_into_devices(monkeypatch, cores, chosen, count):
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("DIGITJAX_CPU_DEVICES", chosen)
    monkeypatch.setattr(cpu_flags.os, "sched_getaffinity", lambda pid: set(range(cores)))
    cpu_flags.apply_cpu_flags()
    flag = "--xla_force_host_platform_device_count="
    found = [f.split("=")[1] for f in os.environ["XLA_FLAGS"].split() if f.startswith(flag)]
    assert found == ([count] if count else [])


def test_cpu_flags_refuse_a_bad_device_count(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("DIGITJAX_CPU_DEVICES", "two")
    with pytest.raises(SystemExit, match="DIGITJAX_CPU_DEVICES='two': expected an integer"):
        cpu_flags.apply_cpu_flags()


def test_digitjaxs_cpu_split_serves_batches_that_do_not_divide_by_it(monkeypatch):
    assert jax.device_count() == cpu_flags.cpu_device_count()  # this process's own split
    mark = f"{cpu_flags.DEVICE_COUNT_FLAG}={jax.device_count()}"
    monkeypatch.setenv(cpu_flags.SPLIT_MARK, mark)
    monkeypatch.setenv("XLA_FLAGS", mark)
    odd = ml_collections.ConfigDict({"batch_size": 5, "eval_batch_size": 10})
    even = ml_collections.ConfigDict({"batch_size": 4, "eval_batch_size": 8})
    assert parallel.data_mesh(odd).size == math.gcd(jax.device_count(), 5)
    assert parallel.data_mesh(even).size == jax.device_count()
    monkeypatch.setenv(cpu_flags.SPLIT_MARK, "")  # the user's own device count: all of them
    assert parallel.data_mesh(odd).size == jax.device_count()


def test_space_to_depth_conv_leaves_other_layouts_to_lax():
    x = jax.random.normal(jax.random.key(0), (2, 3, 12, 12))  # NCHW
    w = jax.random.normal(jax.random.key(1), (4, 3, 5, 5))  # OIHW
    dims = ("NCHW", "OIHW", "NCHW")
    y = space_to_depth_conv(x, w, (2, 2), "SAME", dimension_numbers=dims)
    assert jnp.array_equal(y, lax.conv_general_dilated(x, w, (2, 2), "SAME",
                                                       dimension_numbers=dims))


@pytest.mark.parametrize("version, platforms, plugin, added", [
    ((0, 10), "", False, True),
    ((0, 11), "", False, False),  # a jaxlib nobody checked the flag against
    ((0, 9), "", False, False),
    ((0, 10), "", True, False),  # a GPU/TPU plugin is installed: the run may not be on CPU
    ((0, 10), "cpu", True, True),  # ... unless JAX_PLATFORMS puts cpu first
    ((0, 10), "cuda,cpu", False, False),
])
def test_cpu_flags_only_where_they_are_known_to_be_accepted(monkeypatch, version, platforms,
                                                             plugin, added):
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    monkeypatch.setattr(cpu_flags, "jaxlib_version", lambda: version)
    monkeypatch.setattr(cpu_flags.importlib.util, "find_spec",
                        lambda name: object() if plugin and name == "libtpu" else None)
    cpu_flags.apply_cpu_flags()
    assert ("--xla_cpu_experimental_ynn_fusion_type" in os.environ["XLA_FLAGS"]) == added
