"""Models by name: `config.model` picks a class from MODELS, built with the keyword
arguments in the config's field of the same name (`config.cnn`, `config.resnet`, ...).
One file per model family."""

from __future__ import annotations

import flax.linen as nn
import ml_collections

from digitjax.models.cnn import CNN
from digitjax.models.resnet import ResNet
from digitjax.models.seed_cnn import SeedCNN
from digitjax.models.strided_cnn import StridedCNN
from digitjax.registry import lookup

MODELS: dict[str, type[nn.Module]] = {
    "seed_cnn": SeedCNN, "cnn": CNN, "strided_cnn": StridedCNN, "resnet": ResNet}


def _hashable(value):
    """JSON and the command line give lists; flax module fields want tuples."""
    return tuple(_hashable(v) for v in value) if isinstance(value, list | tuple) else value


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """`MODELS[config.model](num_classes=..., **config[config.model])`."""
    model = lookup(MODELS, config.model, "model")
    kwargs = config.get(config.model) or {}
    return model(num_classes=num_classes, **{k: _hashable(v) for k, v in kwargs.items()})
