"""The beginner's recipe: Conv(32) -> Flatten -> Dense, Adam 1e-3, batch 32,
10 epochs, no augmentation."""

import ml_collections

from digitjax.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = "seed_cnn"  # Conv(32, 3x3, VALID, relu) -> Flatten -> Dense(10).
    config.num_epochs = 10  # As the recipe.
    config.batch_size = 32  # As the recipe.
    config.learning_rate = 1e-3  # Adam's default.
    config.schedule = "constant"  # No schedule in the recipe.
    config.schedule_kwargs = ml_collections.ConfigDict()  # A constant takes none.
    config.augment.rotation_deg = 0.0  # No augmentation.
    config.augment.zoom = 0.0
    config.augment.shift = 0.0
    return config
