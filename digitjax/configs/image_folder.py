"""A generic RGB default for photos in class folders, shown on the ants-vs-bees
photos (245 JPEGs of varied size, one GIF). Predict a folder of new photos with
--mode=predict --input=FOLDER."""

import ml_collections

from digitjax.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.data_format = "class_folders"  # root/<class>/<image>
    config.data_dir = "../shared/data/hymenoptera/train"  # ants/ and bees/.
    config.image_size = 64  # Decoded side: small photos keep CPU training short.
    config.channels = 3  # RGB.
    config.resize = "center_crop"  # Shorter side to 64, then the centre: no distortion.
    config.normalization = "standardize"  # Per-channel z-score from the training split.
    config.val_fraction = 0.2  # 49 photos held out.
    config.cnn.features = (32, 64, 128)  # One more stage for 64x64 inputs.
    config.cnn.dense = 128  # Few examples: a narrower head.
    config.cnn.dropout = 0.5  # Few examples: more dropout.
    config.num_epochs = 30  # 196 photos: epochs are short.
    config.batch_size = 32  # Small data set, small batch.
    config.learning_rate = 1e-3  # Peak learning rate.
    config.augment.flip_horizontal = True  # Ants and bees have no handedness.
    config.augment.rotation_deg = 15.0  # Photos tolerate more rotation than digits.
    config.augment.zoom = 0.15  # Random scale in 1 +- zoom.
    config.augment.shift = 0.1  # Random shift in +- fraction of the size.
    return config
