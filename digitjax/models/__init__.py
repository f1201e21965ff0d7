"""Models by name: `config.model` picks a class from MODELS, built with the keyword
arguments in the config's field of the same name (`config.cnn`, `config.resnet`, ...),
and the compute dtype named by `config.dtype`. One file per model family."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from digitjax.models.cnn import CNN
from digitjax.models.inception_cnn import InceptionCNN
from digitjax.models.kernel_cnn import KernelCNN
from digitjax.models.resnet import ResNet
from digitjax.models.seed_cnn import SeedCNN
from digitjax.models.strided_cnn import StridedCNN
from digitjax.registry import lookup

MODELS: dict[str, type[nn.Module]] = {
    "seed_cnn": SeedCNN, "cnn": CNN, "strided_cnn": StridedCNN, "resnet": ResNet,
    "kernel_cnn": KernelCNN, "inception_cnn": InceptionCNN}

# Compute dtypes by name (`config.dtype`): activations and convolutions run in it, while
# parameters, optimizer state, batch-norm statistics and the logits stay float32.
DTYPES: dict[str, type] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _hashable(value):
    """JSON and the command line give lists; flax module fields want tuples."""
    return tuple(_hashable(v) for v in value) if isinstance(value, list | tuple) else value


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """`MODELS[config.model](num_classes=..., dtype=DTYPES[config.dtype],
    **config[config.model])`."""
    model = lookup(MODELS, config.model, "model")
    dtype = lookup(DTYPES, config.get("dtype", "float32"), "dtype")
    kwargs = config.get(config.model) or {}
    return model(num_classes=num_classes, dtype=dtype,
                 **{k: _hashable(v) for k, v in kwargs.items()})
