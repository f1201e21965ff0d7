"""models/norm.py: batch norm + ReLU as one custom VJP equals flax's `nn.BatchNorm`
then `nn.relu` (output, gradients, running averages), and only runs where it may."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digitjax.models.layers import batch_norm
from digitjax.models.norm import bn_relu


def flax_bn_relu(x, scale, bias):
    bn = nn.BatchNorm(use_running_average=False, momentum=0.9)
    stats = {"mean": jnp.zeros_like(scale), "var": jnp.ones_like(scale)}
    y, _ = bn.apply({"params": {"scale": scale, "bias": bias}, "batch_stats": stats}, x,
                    mutable=["batch_stats"])
    return nn.relu(y)


@pytest.mark.parametrize("shape", [(8, 6, 6, 5), (16, 12), (3, 4, 7, 2, 3)])
def test_bn_relu_equals_flax_batch_norm_then_relu_with_its_gradients(shape):
    keys = jax.random.split(jax.random.key(0), 4)
    x = 3.0 * jax.random.normal(keys[0], shape) + 1.5
    x = x.at[..., 0].set(0.0)  # a dead channel: zero variance, exactly, in any sum order
    c = shape[-1]
    scale = jnp.linspace(-1.5, 2.0, c)  # a negative scale flips a channel's mask
    bias = jnp.linspace(0.5, -0.5, c)  # the dead channel passes the ReLU
    g = jax.random.normal(keys[1], shape)
    ours, ours_vjp = jax.vjp(lambda *a: bn_relu(*a)[0], x, scale, bias)
    theirs, theirs_vjp = jax.vjp(flax_bn_relu, x, scale, bias)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    assert 0 < float(jnp.mean(ours > 0)) < 1  # the ReLU cuts something
    expected = theirs_vjp(g)
    for a, b, name in zip(ours_vjp(g), expected, ("x", "scale", "bias"), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()),
                                   err_msg=name)
    _, mean, var = bn_relu(x, scale, bias)
    axes = tuple(range(len(shape) - 1))
    np.testing.assert_allclose(mean, jnp.mean(x, axes), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(var, jnp.var(x, axes), rtol=1e-5, atol=1e-5)
    jitted = jax.jit(lambda x: jax.vjp(lambda x: bn_relu(x, scale, bias)[0], x)[1](g)[0])
    np.testing.assert_allclose(jitted(x), expected[0], rtol=1e-4,
                               atol=1e-4 * float(jnp.abs(expected[0]).max()))


def module_step(monkeypatch, tricks: str, x, train: bool = True, dtype=jnp.float32):
    """(output, parameter and input gradients, updated statistics, whether bn_relu ran) of a
    `batch_norm(relu=True)` layer, after one update of its running averages."""
    monkeypatch.setenv("DIGITJAX_CPU_CONV_TRICKS", tricks)
    layer = batch_norm(train, relu=True, dtype=dtype)
    variables = layer.init(jax.random.key(0), x)
    params = {"scale": jnp.linspace(0.5, 1.5, x.shape[-1]),
              "bias": jnp.linspace(-0.3, 0.3, x.shape[-1])}

    def loss(params, x):
        y, updates = layer.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                 x, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y.astype(jnp.float32))), (y, updates["batch_stats"])

    (_, (y, stats)), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(params, x)
    jaxpr = str(jax.make_jaxpr(loss)(params, x))
    return y, grads, stats, "name=bn_relu" in jaxpr


def test_batch_norm_layer_fuses_only_in_float32_training_on_cpu(monkeypatch):
    x = jax.random.normal(jax.random.key(1), (4, 5, 5, 6)) * 2 + 0.5
    y, grads, stats, fused = module_step(monkeypatch, "1", x)
    y0, grads0, stats0, fused0 = module_step(monkeypatch, "0", x)
    assert fused and not fused0
    assert jax.tree.structure(grads) == jax.tree.structure(grads0)
    assert jax.tree.structure(stats) == jax.tree.structure(stats0)
    np.testing.assert_allclose(y, y0, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves((grads, stats)), jax.tree.leaves((grads0, stats0)),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert not float(jnp.abs(stats["mean"]).max()) == 0  # the averages moved
    assert not module_step(monkeypatch, "1", x, train=False)[3]  # running statistics
    assert not module_step(monkeypatch, "1", x, dtype=jnp.bfloat16)[3]
    assert not module_step(monkeypatch, "weight_grad", x)[3]
    assert module_step(monkeypatch, "bn_relu", x)[3]
