"""The beginner's recipe (`config.model = "seed_cnn"`)."""

from __future__ import annotations

import flax.linen as nn
import jax


class SeedCNN(nn.Module):
    """Conv(32, 3x3, VALID, relu) -> Flatten -> Dense.

    216,650 parameters on 28x28x1 with 10 classes, as Keras counts them, and
    Keras's initialisation (Glorot-uniform kernels, zero biases), so the recipe is
    reproduced rather than approximated.
    """

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        glorot = nn.initializers.glorot_uniform()
        x = nn.relu(nn.Conv(32, (3, 3), padding="VALID", kernel_init=glorot)(x))
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.num_classes, kernel_init=glorot)(x)
