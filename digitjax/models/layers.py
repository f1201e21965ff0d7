"""Layers every model family shares."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from digitjax.models.norm import BatchNorm


def batch_norm(train: bool, relu: bool = False, **kwargs) -> nn.BatchNorm:
    """Every model's batch norm: batch statistics in training, running ones after;
    `relu` puts a ReLU after it, fused with it in training on CPU (models/norm.py).

    With a `dtype` of bfloat16 the output is bfloat16, while flax computes the batch
    mean and variance in float32 and keeps the running statistics (and scale/bias)
    in float32 (`param_dtype`).
    """
    return BatchNorm(use_running_average=not train, momentum=0.9, relu=relu, **kwargs)


def classifier(num_classes: int, **kwargs: Any) -> nn.Dense:
    """Every model's last layer, computed in float32 whatever the model's `dtype`.

    Its bfloat16 inputs are promoted, so the logits come out float32 without being
    rounded to bfloat16's 8-bit mantissa (which would tie close logits in the argmax
    and coarsen the loss); it is the smallest layer of every model but `seed_cnn`.
    """
    return nn.Dense(num_classes, dtype=jnp.float32, **kwargs)
