"""An ensemble member that sees each layer through 1x1, 3x3 and 5x5 windows at once
(`models/inception_cnn.py`), at a 2-core CPU's size; augmentation and schedule as
configs/best.py."""

import ml_collections

from digitjax.configs import best


def get_config() -> ml_collections.ConfigDict:
    config = best.get_config()
    config.model = "inception_cnn"
    config.inception_cnn.features = (32, 64)  # Channels per stage (~9 MFLOPs an image, many ops).
    config.inception_cnn.blocks_per_stage = 1  # Inception blocks per stage (2: twice the time).
    config.inception_cnn.dropout = 0.3  # Before the classifier.
    return config
