"""Layers every model family shares."""

from __future__ import annotations

import flax.linen as nn


def batch_norm(train: bool, **kwargs) -> nn.BatchNorm:
    """Every model's batch norm: batch statistics in training, running ones after."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, **kwargs)
