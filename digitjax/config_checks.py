"""`check_config`: every value no run could use is refused before anything is
written, with one line naming the field and what it expects."""

from __future__ import annotations

import jax
import ml_collections

from digitjax.errors import UserError
from digitjax.models import DTYPES, MODELS
from digitjax.registry import lookup
from digitjax.train import create_optimizer


def check_config(config: ml_collections.ConfigDict) -> None:
    def need(ok: bool, field: str, expected: str) -> None:
        if not ok:
            value = config
            for part in field.split("."):
                value = value[part]
            raise UserError(f"config.{field}: expected {expected}, got {value!r}")

    lookup(MODELS, config.model, "model")
    lookup(DTYPES, config.dtype, "dtype")
    need(config.num_epochs >= 1, "num_epochs", "an integer >= 1")
    need(config.batch_size >= 1, "batch_size", "an integer >= 1")
    need(config.eval_batch_size >= 1, "eval_batch_size", "an integer >= 1")
    need(config.learning_rate > 0, "learning_rate", "a number > 0")
    need(0 <= config.val_fraction < 1, "val_fraction", "a number in [0, 1)")
    need(config.num_folds == 0 or config.num_folds >= 2, "num_folds", "0 (off) or >= 2")
    need(config.num_folds == 0 and config.fold == 0 or 0 <= config.fold < config.num_folds,
         "fold", f"0..{max(config.num_folds - 1, 0)} (config.num_folds - 1)")
    need(0 < config.bag_fraction <= 1, "bag_fraction", "a number in (0, 1]")
    need(config.predict_checkpoint in ("best", "last"), "predict_checkpoint",
         "'best' or 'last'")
    need(config.num_classes >= 2, "num_classes", "an integer >= 2")
    need(config.normalization in ("unit", "standardize"), "normalization",
         "'unit' or 'standardize'")
    n = jax.device_count()
    need(config.batch_size % n == 0, "batch_size", f"a multiple of the {n} devices")
    need(config.eval_batch_size % n == 0, "eval_batch_size", f"a multiple of the {n} devices")
    need(0 <= config.ema_decay < 1, "ema_decay", "a number in [0, 1)")
    need(config.tfds_in_memory_mb >= 0, "tfds_in_memory_mb", "a number of MB >= 0")
    for field in ("rotation_deg", "zoom", "shift", "shear_deg", "elastic_alpha"):
        need(config.augment[field] >= 0, f"augment.{field}", "a number >= 0")
    need(config.augment.zoom < 1, "augment.zoom", "a number < 1 (scale in 1 +- zoom)")
    need(config.augment.elastic_sigma > 0, "augment.elastic_sigma", "a number > 0")
    create_optimizer(config, 1)  # names a bad optimizer, schedule or their kwargs
