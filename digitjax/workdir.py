"""What a workdir records about its run, and how a new invocation reads it back:
the saved config (brought up to date from older layouts), whether a config may
resume it, the metrics history, and the record stored beside each checkpoint."""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
import socket
import time
from pathlib import Path

import ml_collections
from etils import epath

from digitjax import console, parallel
from digitjax.errors import UserError

RUN_INFO = "run_info.json"  # the data and model summaries, written when training starts

# Fields a resumed run may change: they do not alter what has been trained so far.
RESUMABLE_CHANGES = ("num_epochs", "progress", "data_dir", "test_file", "test_dir",
                     "eval_batch_size", "shard_params", "tta_shifts", "decode_workers",
                     "compilation_cache_dir", "checkpoint_every_steps", "keep_checkpoints",
                     "tfds_data_dir", "tfds_test_split", "tfds_in_memory_mb", "plots",
                     "predict_checkpoint", "cpu_devices")

# Fields added after runs were made, each at the value that reproduces those runs: a
# saved config without the field was trained as if it had this value ("group.name", or
# "name" for a top-level field).
ADDED_FIELDS = {"augment.shear_deg": 0.0, "augment.elastic_alpha": 0.0,
                "augment.elastic_sigma": 4.0, "tfds_name": "", "tfds_data_dir": "",
                "tfds_train_split": "train", "tfds_test_split": "", "tfds_image_key": "",
                "tfds_label_key": "", "tfds_in_memory_mb": 4096,
                "dtype": "float32", "num_folds": 0, "fold": 0, "bag_fraction": 1.0,
                "kernel_cnn.kernel_size": 3,
                "kernel_cnn.features": [32, 48, 64, 80, 96, 112, 128, 144, 160, 176],
                "kernel_cnn.dropout": 0.0, "inception_cnn.features": [64, 128],
                "inception_cnn.blocks_per_stage": 2, "inception_cnn.dropout": 0.3,
                "predict_checkpoint": "best", "cpu_devices": 0}

# Model names that changed: the saved name -> today's (the parameters are the same).
RENAMED_MODELS = {"seed": "seed_cnn"}


def migrate(saved: dict) -> dict:
    """A config.json written by an earlier digitjax, in today's layout.

    Before the registries, the schedule and optimizer settings were top-level fields
    (warmup_epochs, decay_rate, weight_decay) and `parallelism` chose jit or pmap;
    each maps to the field that now holds it, with the values that trained the run.
    """
    saved = copy.deepcopy(saved)
    saved["model"] = RENAMED_MODELS.get(saved.get("model"), saved.get("model"))
    saved.pop("parallelism", None)  # the loop is jit-only; the numbers were the same
    if "schedule_kwargs" not in saved:
        warmup, decay = saved.pop("warmup_epochs", 1.0), saved.pop("decay_rate", 0.9)
        saved["schedule_kwargs"] = {"warmup_cosine": {"warmup_epochs": warmup},
                                    "exponential": {"decay_rate": decay}}.get(
                                        saved.get("schedule"), {})
    if "optimizer_kwargs" not in saved:
        decay = saved.pop("weight_decay", 0.0)
        saved["optimizer_kwargs"] = {"weight_decay": decay} if saved.get(
            "optimizer") == "adamw" else {}
    for field, value in ADDED_FIELDS.items():
        *groups, name = field.split(".")
        node = saved
        for group in groups:
            node = node.setdefault(group, {})
        node.setdefault(name, value)
    return saved


def read_saved_config(workdir: epath.PathLike) -> dict | None:
    path = epath.Path(workdir) / "config.json"
    return migrate(json.loads(path.read_text())) if path.is_file() else None


def saved_config(workdir: epath.PathLike,
                 defaults: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (the architecture its checkpoint needs),
    over `defaults` for fields added since."""
    saved = read_saved_config(workdir)
    if saved is None:
        return defaults
    base = defaults.to_dict()
    for kwargs in ("schedule_kwargs", "optimizer_kwargs"):  # replaced whole, never merged
        base.pop(kwargs, None)

    def merge(base: dict, saved: dict) -> dict:
        for k, v in saved.items():
            if isinstance(v, dict) and isinstance(base.get(k), dict):
                merge(base[k], v)
            else:  # JSON has no tuples; the config's tuple fields want them back
                base[k] = _tuples(v) if isinstance(v, list) else v
        return base

    return ml_collections.ConfigDict(merge(base, saved))


def _tuples(v):
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def flatten(tree: dict, prefix: str = "", keep_empty: bool = False) -> dict:
    """{"augment": {"zoom": 0.1}} -> {"augment.zoom": 0.1}: a changed field is named whole.
    An empty group adds nothing, or with `keep_empty` is kept as its value ({}), as a
    table of every setting shows it."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and (value or not keep_empty):
            flat.update(flatten(value, f"{prefix}{key}.", keep_empty))
        else:
            flat[prefix + key] = value
    return flat


def check_same_run(workdir: epath.PathLike, config: ml_collections.ConfigDict) -> None:
    """Refuses a config that would not continue the run saved in `workdir`, naming the
    fields that differ (those in RESUMABLE_CHANGES may)."""
    saved = read_saved_config(workdir)
    if saved is None:
        return
    saved = flatten(saved)
    now = flatten(json.loads(config.to_json()))
    changed = sorted(k for k in set(saved) | set(now)
                     if saved.get(k) != now.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        raise UserError(
            f"{epath.Path(workdir) / 'config.json'}: this workdir holds a run with a different "
            f"config (fields {', '.join('config.' + k for k in changed)}); "
            "use a new --workdir, or the same config to resume"
        )
    if saved.get("num_epochs", config.num_epochs) != config.num_epochs:
        # allowed (to extend or shorten a run), but the schedule is not the saved run's
        console.log(f"note: num_epochs {saved['num_epochs']} -> {config.num_epochs}: the "
                    "learning-rate schedule is rebuilt over the new length, so from the "
                    "resumed step on it is not the one this run started with")


def read_metrics(workdir: epath.PathLike) -> list[dict]:
    """Every record of metrics.jsonl ([] when there is none)."""
    path = epath.Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                raise UserError(f"{path}, line {number}: not a JSON record (a damaged "
                                "file?)") from None
    return records


def read_history(workdir: epath.PathLike, last_epoch: int) -> list[dict]:
    """Metrics of the epochs already in the checkpoint (later lines are from a crash)."""
    return [r for r in read_metrics(workdir) if r["epoch"] <= last_epoch]


def checkpoint_record(config: ml_collections.ConfigDict, step: int, epoch: int, batch: int,
                      sums: dict, best_score: float, input_shape: tuple[int, ...],
                      class_names: list[str], normalization: dict | None,
                      val_accuracy: float | None = None,
                      pixel_columns: tuple[str, ...] | None = None) -> dict:
    """The JSON stored beside a checkpoint: what prediction needs without the config
    (input shape, classes, normalisation, and a pixel CSV's column names, by which the
    columns of the files predicted are matched) and where training stands (whole
    epochs, batches into the next one and their train-metric sums)."""
    return {
        "step": step,
        "epoch": epoch,
        "batch": batch,
        "sums": sums,
        "val_accuracy": val_accuracy,
        "best_val_accuracy": best_score,
        "input_shape": list(input_shape),
        "class_names": class_names,
        "normalization": normalization,
        "model": config.model,
    } | ({"pixel_columns": list(pixel_columns)} if pixel_columns else {})


def cache_dir(workdir: epath.Path) -> Path:
    """Where decoded data is cached: `<workdir>/cache` for a local workdir; a local
    folder keyed by the URL for a bucket (memory-mapped arrays need a local file)."""
    if is_local(workdir):
        return Path(workdir) / "cache"
    key = hashlib.sha256(str(workdir).encode()).hexdigest()[:16]
    return Path(os.path.expanduser("~/.cache/digitjax/data")) / key


def is_local(path: epath.PathLike) -> bool:
    return "://" not in str(path)


@contextlib.contextmanager
def lock(workdir: epath.Path):
    """One writer per workdir: process 0 holds an exclusive lock on `<workdir>/.lock`
    while it trains. A second run refuses, naming the holder; the kernel drops the
    lock when its process dies, so a crashed run never leaves it stuck. (A bucket
    has no locks: there the lock is skipped, with a note.)"""
    if not parallel.is_writer():
        yield
        return
    if not is_local(workdir):
        console.log(f"note: {workdir} is not a local folder, so no lock keeps a second "
                    "run off it; start one run per workdir")
        yield
        return
    path = Path(workdir) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise UserError(f"{workdir}: in use by another run ({holder}); wait for it to "
                            "end, or use another --workdir") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
