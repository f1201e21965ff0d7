"""A small ResNet (`config.model = "resnet"`) for RGB and larger images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from digitjax.models.conv import cpu_conv
from digitjax.models.layers import batch_norm, classifier


class ResidualBlock(nn.Module):
    features: int
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = nn.Conv(self.features, (3, 3), self.stride, use_bias=False,
                    conv_general_dilated=cpu_conv, dtype=self.dtype)(x)
        y = batch_norm(train, relu=True, dtype=self.dtype)(y)
        y = nn.Conv(self.features, (3, 3), use_bias=False, dtype=self.dtype)(y)
        # the block starts as identity
        y = batch_norm(train, scale_init=nn.initializers.zeros, dtype=self.dtype)(y)
        if x.shape[-1] != self.features or self.stride != 1:
            # the batch norm is made before the conv, as ever: their auto-names stay
            x = batch_norm(train, dtype=self.dtype)(
                nn.Conv(self.features, (1, 1), self.stride, use_bias=False, dtype=self.dtype)(x))
        return nn.relu(x + y)


class ResNet(nn.Module):
    """A 3x3 stem, then per stage `blocks_per_stage` basic blocks (the first of each
    later stage strided), then global average pooling."""

    num_classes: int = 10
    features: Sequence[int] = (32, 64, 128)
    blocks_per_stage: int = 2
    dtype: Any = jnp.float32  # compute dtype; parameters stay float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(self.features[0], (3, 3), use_bias=False, dtype=self.dtype)(x)
        x = batch_norm(train, relu=True, dtype=self.dtype)(x)
        for i, f in enumerate(self.features):
            for j in range(self.blocks_per_stage):
                x = ResidualBlock(f, stride=2 if i > 0 and j == 0 else 1, dtype=self.dtype)(
                    x, train)
        x = jnp.mean(x, axis=(1, 2))
        return classifier(self.num_classes)(x)
