"""An ensemble member after An et al. 2020: a plain CNN of one kernel size, batch norm,
no pooling (`models/kernel_cnn.py`). Pick the size on the command line:

    python -m digitjax.main --config configs/kernel_cnn.py:5 ...     # 3, 5 or 7

Widths are An et al.'s, scaled to a 2-core CPU (each ~35-50 MFLOPs per image, about a
strided_cnn): their full widths are --config.kernel_cnn.features=(32,48,...,176) (3x3),
(32,64,96,128,160) (5x5) and (48,96,144,192) (7x7), seven to ten times the cost, for a
GPU. Augmentation and schedule as configs/best.py.
"""

import ml_collections

from digitjax.configs import best

# Per kernel size: the channels of each unpadded layer (28x28 -> 8x8, 8x8 and 4x4).
FEATURES = {3: (12, 18, 24, 30, 36, 42, 48, 54, 60, 66),
            5: (12, 24, 36, 48, 60),
            7: (16, 32, 48, 64)}


def get_config(kernel_size: str = "5") -> ml_collections.ConfigDict:
    config = best.get_config()
    k = int(kernel_size)
    config.model = "kernel_cnn"
    config.kernel_cnn.kernel_size = k  # 3, 5 or 7: the receptive field's growth per layer.
    config.kernel_cnn.features = FEATURES[k]  # Channels per layer (see above for full size).
    config.kernel_cnn.dropout = 0.25  # Before the classifier (An et al. use none, 60k digits).
    return config
