"""Convolutional classifiers for NHWC images of any H x W x C."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from digitjax.models.conv import space_to_depth_conv


def batch_norm(train: bool, **kwargs) -> nn.BatchNorm:
    """Every model's batch norm: batch statistics in training, running ones after."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, **kwargs)


class SeedCNN(nn.Module):
    """The beginner's recipe: Conv(32, 3x3, VALID, relu) -> Flatten -> Dense.

    216,650 parameters on 28x28x1 with 10 classes, as Keras counts them, and
    Keras's initialisation (Glorot-uniform kernels, zero biases), so the recipe is
    reproduced rather than approximated.
    """

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        glorot = nn.initializers.glorot_uniform()
        x = nn.relu(nn.Conv(32, (3, 3), padding="VALID", kernel_init=glorot)(x))
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.num_classes, kernel_init=glorot)(x)


class CNN(nn.Module):
    """The default: per stage, `convs_per_stage` convs (batch norm, relu) then 2x2
    average pooling; then a dense layer with dropout.

    Average pooling rather than max: its gradient is a cheap broadcast on CPU,
    where max pooling's select-and-scatter made the step ~1.5x slower (measured).
    """

    num_classes: int = 10
    features: Sequence[int] = (32, 64)
    convs_per_stage: int = 1
    kernel_size: int = 3
    dense: int = 256
    dropout: float = 0.25
    batch_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for f in self.features:
            for _ in range(self.convs_per_stage):
                k = (self.kernel_size, self.kernel_size)
                x = nn.Conv(f, k, use_bias=not self.batch_norm)(x)
                x = nn.relu(batch_norm(train)(x) if self.batch_norm else x)
            x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(self.dense, use_bias=not self.batch_norm)(x)
        x = nn.relu(batch_norm(train)(x) if self.batch_norm else x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


class StridedCNN(nn.Module):
    """The design behind the 99.75% Kaggle digit ensembles: per stage two unpadded
    3x3 convs and a strided 5x5 conv in place of pooling, each with batch norm, then
    dropout; a conv over what is left (4x4 on 28x28 inputs) and the classifier.
    """

    num_classes: int = 10
    features: Sequence[int] = (32, 64)
    head_features: int = 128
    dropout: float = 0.4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def conv(x, f, k, stride=1, padding="SAME"):
            x = nn.Conv(f, (k, k), strides=stride, padding=padding, use_bias=False,
                        conv_general_dilated=space_to_depth_conv)(x)
            return nn.relu(batch_norm(train)(x))

        for f in self.features:
            x = conv(x, f, 3, padding="VALID")
            x = conv(x, f, 3, padding="VALID")
            x = conv(x, f, 5, stride=2)
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = conv(x, self.head_features, x.shape[1], padding="VALID")  # covers what is left
        x = x.reshape((x.shape[0], -1))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


class ResidualBlock(nn.Module):
    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = nn.Conv(self.features, (3, 3), self.stride, use_bias=False,
                    conv_general_dilated=space_to_depth_conv)(x)
        y = nn.relu(batch_norm(train)(y))
        y = nn.Conv(self.features, (3, 3), use_bias=False)(y)
        y = batch_norm(train, scale_init=nn.initializers.zeros)(y)  # block starts as identity
        if x.shape[-1] != self.features or self.stride != 1:
            x = batch_norm(train)(nn.Conv(self.features, (1, 1), self.stride, use_bias=False)(x))
        return nn.relu(x + y)


class ResNet(nn.Module):
    """A small ResNet for RGB and larger images: a 3x3 stem, then per stage
    `blocks_per_stage` basic blocks (the first of each later stage strided), then
    global average pooling."""

    num_classes: int = 10
    features: Sequence[int] = (32, 64, 128)
    blocks_per_stage: int = 2

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(self.features[0], (3, 3), use_bias=False)(x)
        x = nn.relu(batch_norm(train)(x))
        for i, f in enumerate(self.features):
            for j in range(self.blocks_per_stage):
                x = ResidualBlock(f, stride=2 if i > 0 and j == 0 else 1)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)
