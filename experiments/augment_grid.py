"""Saves a grid of augmented training digits as PNG (what the model sees).

    python experiments/augment_grid.py [--config configs/default.py] [--out augment_grid.png]
    python experiments/augment_grid.py --set shear_deg=15 --set elastic_alpha=34 \
        --out experiments/results/augment_grid_shear_elastic.png

Row 0 holds the originals; each further row is one training step's augmentation.
"""

from __future__ import annotations

import argparse
import importlib.util

import jax
import numpy as np
from common import DIGITS, REPO
from PIL import Image

from digitjax import augment, transforms
from digitjax.data.pixels import read_pixel_csv


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(REPO / "configs" / "default.py"))
    ap.add_argument("--out", default=str(REPO / "experiments" / "results" / "augment_grid.png"))
    ap.add_argument("--rows", type=int, default=6)
    ap.add_argument("--cols", type=int, default=12)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=NUMBER",
                    help="override a numeric config.augment field, e.g. shear_deg=15")
    a = ap.parse_args()
    spec = importlib.util.spec_from_file_location("config", a.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    aug = module.get_config().augment
    for item in a.set:
        field, value = item.split("=", 1)
        aug[field] = float(value)
    table = read_pixel_csv(DIGITS / "train.csv")
    images = transforms.scale(table.pixels[: a.cols].reshape(-1, 28, 28, 1))
    rows = [images]
    for step in range(1, a.rows):
        rows.append(np.asarray(augment.random_augment(images, jax.random.key(step), **aug)))
    grid = np.concatenate([np.concatenate(list(r[..., 0]), axis=1) for r in rows], axis=0)
    Image.fromarray((grid * 255).astype(np.uint8)).resize(
        (grid.shape[1] * 3, grid.shape[0] * 3), Image.Resampling.NEAREST).save(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
