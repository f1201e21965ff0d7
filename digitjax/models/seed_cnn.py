"""The beginner's recipe (`config.model = "seed_cnn"`)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from digitjax.models.layers import classifier


class SeedCNN(nn.Module):
    """Conv(32, 3x3, VALID, relu) -> Flatten -> Dense.

    216,650 parameters on 28x28x1 with 10 classes, as Keras counts them, and
    Keras's initialisation (Glorot-uniform kernels, zero biases), so the recipe is
    reproduced rather than approximated.
    """

    num_classes: int = 10
    dtype: Any = jnp.float32  # compute dtype; parameters stay float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        glorot = nn.initializers.glorot_uniform()
        x = nn.relu(nn.Conv(32, (3, 3), padding="VALID", kernel_init=glorot,
                             dtype=self.dtype)(x))
        x = x.reshape((x.shape[0], -1))
        return classifier(self.num_classes, kernel_init=glorot)(x)
