"""Models by name: `config.model` picks one from MODELS."""

from __future__ import annotations

import flax.linen as nn
import ml_collections

from digitjax.errors import UserError
from digitjax.models.cnn import CNN, SeedCNN

MODELS = {"seed": SeedCNN, "cnn": CNN}


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """Builds `config.model` with the settings its config fields give."""
    if config.model not in MODELS:
        raise UserError(f"config.model: expected one of {sorted(MODELS)}, got '{config.model}'")
    if config.model == "seed":
        return SeedCNN(num_classes=num_classes)
    return CNN(
        num_classes=num_classes,
        features=tuple(config.cnn.features),
        convs_per_stage=config.cnn.convs_per_stage,
        kernel_size=config.cnn.kernel_size,
        dense=config.cnn.dense,
        dropout=config.cnn.dropout,
        batch_norm=config.cnn.batch_norm,
    )
