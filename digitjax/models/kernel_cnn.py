"""Plain CNNs of one kernel size (`config.model = "kernel_cnn"`), after An et al. 2020,
"An Ensemble of Simple CNN Models for MNIST Digit Recognition": unpadded k x k
convolutions with batch norm and no pooling, so each layer shrinks the image by k-1
pixels and the kernel size alone sets how fast the receptive field grows. Their three
members (3x3, 5x5, 7x7) err on different digits, which is what an ensemble needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from digitjax.models.conv import cpu_conv
from digitjax.models.layers import batch_norm, classifier


class KernelCNN(nn.Module):
    """`features[i]` channels in layer i, each an unpadded `kernel_size` conv + batch
    norm + ReLU; then flatten, batch norm, dropout and the classifier. On 28x28 inputs
    An et al.'s sizes leave 8x8 (3x3: 10 layers), 8x8 (5x5: 5) and 4x4 (7x7: 4)."""

    num_classes: int = 10
    kernel_size: int = 3
    features: Sequence[int] = (32, 48, 64, 80, 96, 112, 128, 144, 160, 176)
    dropout: float = 0.0
    dtype: Any = jnp.float32  # compute dtype; parameters stay float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        k = self.kernel_size
        side = min(x.shape[1:3]) - len(self.features) * (k - 1)
        if side < 1:
            raise ValueError(f"{len(self.features)} unpadded {k}x{k} layers need images of at "
                             f"least {len(self.features) * (k - 1) + 1} pixels a side; use "
                             "fewer features (layers) or a smaller kernel_size")
        for f in self.features:
            x = nn.Conv(f, (k, k), padding="VALID", use_bias=False, dtype=self.dtype,
                        conv_general_dilated=cpu_conv)(x)
            x = batch_norm(train, relu=True, dtype=self.dtype)(x)
        x = x.reshape((x.shape[0], -1))
        x = batch_norm(train, dtype=self.dtype)(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return classifier(self.num_classes)(x)
