"""The default digit CNN (`config.model = "cnn"`), for NHWC images of any H x W x C."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from digitjax.models.conv import cpu_conv
from digitjax.models.layers import batch_norm, classifier
from digitjax.models.pool import avg_pool


class CNN(nn.Module):
    """Per stage, `convs_per_stage` convs (batch norm, relu) then 2x2 average
    pooling; then a dense layer with dropout.

    Average pooling rather than max: its gradient is a cheap broadcast on CPU,
    where max pooling's select-and-scatter made the step ~1.5x slower (measured;
    `models/pool.py` has the faster forms of both).
    """

    num_classes: int = 10
    features: Sequence[int] = (32, 64)
    convs_per_stage: int = 1
    kernel_size: int = 3
    dense: int = 256
    dropout: float = 0.25
    batch_norm: bool = True
    dtype: Any = jnp.float32  # compute dtype; parameters stay float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for f in self.features:
            for _ in range(self.convs_per_stage):
                k = (self.kernel_size, self.kernel_size)
                x = nn.Conv(f, k, use_bias=not self.batch_norm, dtype=self.dtype,
                            conv_general_dilated=cpu_conv)(x)
                x = (batch_norm(train, relu=True, dtype=self.dtype)(x) if self.batch_norm
                     else nn.relu(x))
            x = avg_pool(x, (2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(self.dense, use_bias=not self.batch_norm, dtype=self.dtype)(x)
        x = (batch_norm(train, relu=True, dtype=self.dtype)(x) if self.batch_norm
             else nn.relu(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return classifier(self.num_classes)(x)
