"""The digits as PNG class folders (`python ../shared/data/make_mnist_png.py` writes
them): the default recipe, fed from image files instead of the pixel CSV."""

import ml_collections

from digitjax.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.data_format = "class_folders"  # root/<label>/<row>.png
    config.data_dir = "../shared/data/mnist-png/train"  # 42,000 labelled PNGs.
    config.test_dir = "../test"  # 28,000 unlabelled PNGs, named by ImageId.
    config.image_size = 28  # Decoded size (the PNGs are 28x28 already).
    config.channels = 1  # Grayscale.
    return config
