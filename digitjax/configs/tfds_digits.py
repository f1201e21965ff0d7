"""The default recipe on the competition's training digits as a prepared TFDS dataset
(`../shared/data/tfds/digit_recognizer`, array_record, PNG images), read without
TensorFlow; test.csv of the competition layout is predicted into submission.csv.

python -m digitjax.main --config configs/tfds_digits.py --workdir runs/tfds_digits
"""

import ml_collections

from digitjax.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.data_format = "tfds"  # A prepared TFDS dataset.
    config.tfds_name = "digit_recognizer"  # 42,000 labelled 28x28x1 digits (train.csv's).
    config.tfds_data_dir = "../shared/data/tfds"  # Holds digit_recognizer/1.0.0/.
    config.tfds_train_split = "train"  # All of it; config.val_fraction holds out 10%.
    config.tfds_test_split = ""  # It has no test split: the Kaggle test.csv below instead.
    config.data_dir = "../shared/data/digit-recognizer"  # Its test.csv -> submission.csv.
    return config
