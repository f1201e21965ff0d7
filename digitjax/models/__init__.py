"""Models by name: `config.model` picks one from MODELS."""

from __future__ import annotations

import flax.linen as nn
import ml_collections

from digitjax.errors import UserError
from digitjax.models.cnn import CNN, ResNet, SeedCNN, StridedCNN

MODELS = {"seed": SeedCNN, "cnn": CNN, "strided_cnn": StridedCNN, "resnet": ResNet}


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """Builds `config.model` with the settings its config fields give."""
    if config.model not in MODELS:
        raise UserError(f"config.model: expected one of {sorted(MODELS)}, got '{config.model}'")
    if config.model == "seed":
        return SeedCNN(num_classes=num_classes)
    if config.model == "strided_cnn":
        return StridedCNN(num_classes=num_classes, features=tuple(config.strided_cnn.features),
                          head_features=config.strided_cnn.head_features,
                          dropout=config.strided_cnn.dropout)
    if config.model == "resnet":
        return ResNet(num_classes=num_classes, features=tuple(config.resnet.features),
                      blocks_per_stage=config.resnet.blocks_per_stage)
    return CNN(
        num_classes=num_classes,
        features=tuple(config.cnn.features),
        convs_per_stage=config.cnn.convs_per_stage,
        kernel_size=config.cnn.kernel_size,
        dense=config.cnn.dense,
        dropout=config.cnn.dropout,
        batch_norm=config.cnn.batch_norm,
    )
