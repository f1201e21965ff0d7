"""The best single model: the strided-conv digit CNN with batch norm and dropout,
on-device augmentation, warmup + cosine, and test-time shifts."""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = "strided_cnn"  # Two 3x3 convs + a strided 5x5 conv per stage, BN, dropout.
    config.num_epochs = 32  # ~45 s per epoch on a 2-core CPU: fits the hour with evaluation.
    config.learning_rate = 3e-3  # Peak of the warmup + cosine schedule.
    config.warmup_epochs = 1.0  # Linear warmup.
    # No weight average: with batch norm at this learning rate, a 0.999 average
    # drifted from the batch statistics and scored 9.6% for the first 3 epochs.
    config.tta_shifts = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))  # Five one-pixel views.
    return config
