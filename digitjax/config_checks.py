"""`check_config`: every value no run could use is refused before anything is
written, with one line naming the field and what it expects."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from digitjax import parallel
from digitjax.errors import UserError
from digitjax.models import DTYPES, MODELS, create_model
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
    need(config.cpu_devices >= 0, "cpu_devices", "an integer >= 0 (0: digitjax's choice)")
    n = parallel.data_mesh(config).size
    need(config.batch_size % n == 0, "batch_size", f"a multiple of the {n} devices")
    need(config.eval_batch_size % n == 0, "eval_batch_size", f"a multiple of the {n} devices")
    need(0 <= config.ema_decay < 1, "ema_decay", "a number in [0, 1)")
    need(config.tfds_in_memory_mb >= 0, "tfds_in_memory_mb", "a number of MB >= 0")
    need(config.checkpoint_every_steps >= 0, "checkpoint_every_steps",
         "an integer >= 0 (0: at epoch ends only)")
    need(config.keep_checkpoints >= 1, "keep_checkpoints", "an integer >= 1")
    need(all(_is_shift(s) for s in config.tta_shifts), "tta_shifts",
         "(dy, dx) pairs of integer pixel shifts, e.g. ((0, 0), (1, 0), (-1, 0))")
    for field in ("rotation_deg", "zoom", "shift", "shear_deg", "elastic_alpha"):
        need(config.augment[field] >= 0, f"augment.{field}", "a number >= 0")
    need(config.augment.zoom < 1, "augment.zoom", "a number < 1 (scale in 1 +- zoom)")
    need(config.augment.elastic_sigma > 0, "augment.elastic_sigma", "a number > 0")
    kwargs = config.get(config.model) or {}
    if "dropout" in kwargs:
        need(0 <= kwargs["dropout"] < 1, f"{config.model}.dropout", "a number in [0, 1)")
    if "features" in kwargs:
        features = kwargs["features"]
        need(not isinstance(features, str) and len(features) >= 1
             and all(_is_int(f) and int(f) >= 1 for f in features),
             f"{config.model}.features", "one or more channel counts >= 1")
    for field in ("kernel_size", "blocks_per_stage", "convs_per_stage"):
        if field in kwargs:
            need(kwargs[field] >= 1, f"{config.model}.{field}", "an integer >= 1")
    create_optimizer(config, 1)  # names a bad optimizer, schedule or their kwargs


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_shift(value) -> bool:
    """A (dy, dx) pair of integers (config.tta_shifts is a tuple: ml_collections keeps its
    type, and `--config.tta_shifts=5` arrives as (5,))."""
    return isinstance(value, tuple | list) and len(value) == 2 and all(map(_is_int, value))


def check_model(config: ml_collections.ConfigDict, image_shape: tuple[int, ...],
                num_classes: int) -> None:
    """Refuses, in one line, model settings that cannot be built on the data's images
    (e.g. more unpadded layers than the image has pixels): the model is traced on
    abstract arrays, which costs no compute."""
    model = create_model(config, num_classes)
    try:
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape))))
    except Exception as e:  # noqa: BLE001 - whatever the model raises, the settings are at fault
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"config.{config.model}: cannot build this model on "
                        f"{'x'.join(map(str, image_shape))} images ({reason})") from None
