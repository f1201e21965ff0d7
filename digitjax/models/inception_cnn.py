"""A small Inception-style CNN (`config.model = "inception_cnn"`): every block looks at
the image through 1x1, 3x3 and 5x5 windows side by side (Szegedy et al. 2015) and
concatenates them, so one layer mixes receptive fields that the plain CNNs stack in
depth; a different way of seeing, hence different errors, for ensembles.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from digitjax.models.conv import cpu_conv
from digitjax.models.layers import batch_norm, classifier
from digitjax.models.pool import max_pool


class InceptionCNN(nn.Module):
    """A 3x3 stem, then per stage `blocks_per_stage` inception blocks of `features[i]`
    channels (a quarter each from 1x1, 3x3, 5x5 = two 3x3, and 3x3 max-pool + 1x1
    branches) and 2x2 max pooling after every stage but the last; global average
    pooling, dropout and the classifier."""

    num_classes: int = 10
    features: Sequence[int] = (64, 128)
    blocks_per_stage: int = 2
    dropout: float = 0.3
    dtype: Any = jnp.float32  # compute dtype; parameters stay float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def conv(x, f, k):
            x = nn.Conv(f, (k, k), padding="SAME", use_bias=False, dtype=self.dtype,
                        conv_general_dilated=cpu_conv)(x)
            return batch_norm(train, relu=True, dtype=self.dtype)(x)

        x = conv(x, self.features[0] // 2, 3)
        for i, f in enumerate(self.features):
            for _ in range(self.blocks_per_stage):
                b = f // 4
                pooled = max_pool(x, (3, 3), (1, 1), "SAME")
                x = jnp.concatenate([conv(x, b, 1), conv(conv(x, b, 1), b, 3),
                                     conv(conv(conv(x, b, 1), b, 3), b, 3),
                                     conv(pooled, f - 3 * b, 1)], axis=-1)
            if i < len(self.features) - 1:
                x = max_pool(x, (2, 2), (2, 2))
        x = x.mean(axis=(1, 2))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return classifier(self.num_classes)(x)
