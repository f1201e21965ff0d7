"""The strided-conv digit CNN (`config.model = "strided_cnn"`): the design behind
the 99.75% Kaggle digit ensembles."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from digitjax.models.conv import cpu_conv
from digitjax.models.layers import batch_norm, classifier


class StridedCNN(nn.Module):
    """Per stage two unpadded 3x3 convs and a strided 5x5 conv in place of pooling,
    each with batch norm, then dropout; a conv over what is left (4x4 on 28x28
    inputs) and the classifier.
    """

    num_classes: int = 10
    features: Sequence[int] = (32, 64)
    head_features: int = 128
    dropout: float = 0.4
    dtype: Any = jnp.float32  # compute dtype; parameters stay float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def conv(x, f, k, stride=1, padding="SAME"):
            x = nn.Conv(f, (k, k), strides=stride, padding=padding, use_bias=False,
                        conv_general_dilated=cpu_conv, dtype=self.dtype)(x)
            return batch_norm(train, relu=True, dtype=self.dtype)(x)

        for f in self.features:
            x = conv(x, f, 3, padding="VALID")
            x = conv(x, f, 3, padding="VALID")
            x = conv(x, f, 5, stride=2)
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = conv(x, self.head_features, x.shape[1], padding="VALID")  # covers what is left
        x = x.reshape((x.shape[0], -1))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return classifier(self.num_classes)(x)
