"""Batch norm followed by a ReLU, as one layer whose gradient XLA:CPU runs in fewer
passes over the activations (`bn_relu`, one of models/conv.py's TRICKS).

A training step's batch norms are memory-bound: each reads and writes a whole
activation (128x26x26x32 floats = 11 MB) several times, at the 8-16 GB/s the shared
host's two cores get. Autodiff of flax's `nn.BatchNorm` then `nn.relu` keeps the
centred input as a residual (one more 11 MB write in the forward pass) and its
backward pass materialises the normalised input and reads it back in three more
fusions. Here the forward pass computes the two sums, then the normalised, rectified
output, and keeps only the layer's input and output; the backward pass is the closed
form of batch norm's gradient with `g` masked by the ReLU: two sums, `sum(g)` and
`sum(g * x)`, then `dx = a * g + b * x + c` with per-channel a, b, c, one elementwise
pass. One 128x26x26x32 layer, forward and backward, jitted alone: 11.7-13.2 ms with
flax's, 5.0-6.3 ms with this one (a one-off micro-benchmark; 6.9-8.2 ms with the
normalised input materialised as flax does). Whole training step, paired on one
device (`python experiments/paired_tricks.py --model M --a
space_to_depth,row_split,pool,pointwise,taps,weight_grad --b 1 --rounds 8`,
experiments/results/paired_bn_relu_*.md): cnn 1.33x, strided_cnn 1.13x.

The parameters and statistics are flax's own (`BatchNorm` subclasses `nn.BatchNorm`
and keeps its name, so checkpoints and model summaries do not change), the running
averages are updated the same way, and the variance is the same E[x^2] - E[x]^2
(flax's `use_fast_variance`); only the order of the sums differs. Inference, other
backends, other dtypes and flax's other options go through `nn.BatchNorm` itself.
"""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from digitjax.models.conv import tricks_on


def _sums(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sums of `a` and `b` over all but the last axis. Two plain reductions, which
    XLA:CPU hands to YNNPACK (one variadic `lax.reduce` computing both in one pass
    ran its own loop instead, 5x slower on the layer above)."""
    axes = tuple(range(a.ndim - 1))
    return jnp.sum(a, axes), jnp.sum(b, axes)


def _forward(x, scale, bias, epsilon):
    n = x.size // x.shape[-1]
    s1, s2 = _sums(x, x * x)
    mean = s1 / n
    var = jnp.maximum(s2 / n - mean * mean, 0.0)
    inv = lax.rsqrt(var + epsilon)
    y = jnp.maximum((x - mean) * (inv * scale) + bias, 0.0)
    return (y, mean, var), (x, y, mean, inv, scale)


def _backward(epsilon, res, cotangents):
    del epsilon
    x, y, mean, inv, scale = res
    g = jnp.where(y > 0, cotangents[0], 0.0)  # the mean and variance outputs only
    n = x.size // x.shape[-1]                 # feed the running averages: no gradient
    sum_g, sum_gx = _sums(g, g * x)
    sum_gxhat = (sum_gx - mean * sum_g) * inv
    # dx = scale * inv * (g - sum_g / n - xhat * sum_gxhat / n), xhat = (x - mean) * inv,
    # as a * g + b * x + c per channel: one pass over g and x, xhat never materialised
    a = scale * inv
    b = -a * inv * sum_gxhat / n
    c = -a * sum_g / n - b * mean
    return a * g + b * x + c, sum_gxhat, sum_g


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def bn_relu(x: jax.Array, scale: jax.Array, bias: jax.Array,
            epsilon: float = 1e-5) -> tuple[jax.Array, jax.Array, jax.Array]:
    """relu(batch_norm(x)) over all but the last axis, with batch statistics, and the
    batch's mean and (biased) variance for the running averages (no gradient flows back
    through those two). Reverse mode only."""
    return _forward(x, scale, bias, epsilon)[0]


bn_relu.defvjp(_forward, _backward)


class BatchNorm(nn.BatchNorm):
    """flax's `nn.BatchNorm`, with a ReLU after it when `relu` is set; in training on
    CPU, the two as one `bn_relu` (above) where flax's settings are the defaults."""

    relu: bool = False

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        train = not nn.merge_param("use_running_average", self.use_running_average,
                                   use_running_average)
        if not (self.relu and train and mask is None and self._fusable(x)):
            y = super().__call__(x, use_running_average, mask=mask)
            return nn.relu(y) if self.relu else y
        c = x.shape[-1]
        scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (c,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (c,))
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (c,))
        y, mean, var = bn_relu(x, scale, bias, float(self.epsilon))
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y

    def _fusable(self, x: jax.Array) -> bool:
        """Whether this call is what `bn_relu` computes: float32, the last axis, scale
        and bias, no cross-device axis name (a jit-sharded batch is reduced by XLA)."""
        return (x.dtype == jnp.float32
                and (self.dtype is None or jnp.dtype(self.dtype) == jnp.float32)
                and self.param_dtype == jnp.float32 and self.axis in (-1, x.ndim - 1)
                and self.use_bias and self.use_scale and self.axis_name is None
                and self.use_fast_variance and self.force_float32_reductions
                and tricks_on("bn_relu"))
