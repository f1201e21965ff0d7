"""Training: `create_train_state`, `train_step`, `eval_step`, `train_and_evaluate`.

`train_step` and `eval_step` are pure functions of (state, batch): no files,
flags or globals. With `axis_name` they average over that axis, so

    jax.pmap(functools.partial(train_step, axis_name="batch"), axis_name="batch")

works as written; under `jax.jit` over a sharded batch leave it None.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from digitjax import augment, checkpoint, files, parallel, transforms
from digitjax.data import Dataset, embedded, load_train
from digitjax.errors import UserError
from digitjax.models import MODELS, create_model

Batch = dict[str, jax.Array]
_FETCH_EVERY = 20  # steps between metric fetches (and progress updates)


class TrainState(train_state.TrainState):
    batch_stats: Any = None  # Batch-norm running statistics; None for models without.
    dropout_key: jax.Array | None = None  # Folded with the step: a new key every step.
    ema_params: Any = None  # Moving average of the weights, evaluated instead; None = off.
    label_smoothing: float = struct.field(pytree_node=False, default=0.0)
    ema_decay: float = struct.field(pytree_node=False, default=0.0)


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int):
    lr, total = config.learning_rate, config.num_epochs * steps_per_epoch
    if config.schedule == "constant":
        return optax.constant_schedule(lr)
    if config.schedule == "warmup_cosine":
        warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total, end_value=lr * 1e-3)
    if config.schedule == "onecycle":
        return optax.cosine_onecycle_schedule(total, lr)
    if config.schedule == "exponential":
        return optax.exponential_decay(lr, steps_per_epoch, config.decay_rate)
    raise UserError(
        "config.schedule: expected 'constant', 'warmup_cosine', 'onecycle' or 'exponential', "
        f"got '{config.schedule}'"
    )


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
    schedule = learning_rate_schedule(config, steps_per_epoch)
    if config.optimizer == "adam":
        opt = optax.adam(schedule)
    elif config.optimizer == "adamw":
        opt = optax.adamw(schedule, weight_decay=config.weight_decay)
    else:
        raise UserError(f"config.optimizer: expected 'adam' or 'adamw', got '{config.optimizer}'")
    if config.grad_clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), opt)
    return opt


def create_train_state(
    config: ml_collections.ConfigDict,
    rng: jax.Array,
    input_shape: tuple[int, ...],
    num_classes: int | None = None,
    steps_per_epoch: int = 1,
) -> TrainState:
    """A fresh state for `config.model` on images of `input_shape` ((H, W, C) or NHWC).

    `steps_per_epoch` sizes the learning-rate schedule.
    """
    model = create_model(config, num_classes or config.num_classes)
    init_key, dropout_key = jax.random.split(rng)
    dummy = jnp.zeros((1, *tuple(input_shape)[-3:]), jnp.float32)
    variables = model.init({"params": init_key}, dummy, train=False)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=create_optimizer(config, steps_per_epoch),
        batch_stats=variables.get("batch_stats"),
        dropout_key=dropout_key,
        # A copy, not the same buffers: the step donates the state, and one buffer
        # cannot be donated twice.
        ema_params=jax.tree.map(jnp.copy, variables["params"]) if config.ema_decay > 0 else None,
        label_smoothing=config.label_smoothing,
        ema_decay=config.ema_decay,
    )


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy on integer labels."""
    if not smoothing:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def eval_params(state: TrainState):
    """The weights to evaluate and predict with: the moving average when kept."""
    return state.ema_params if state.ema_params is not None else state.params


def _variables(state: TrainState, params) -> dict:
    if state.batch_stats is None:
        return {"params": params}
    return {"params": params, "batch_stats": state.batch_stats}


def train_step(state: TrainState, batch: Batch, axis_name: str | None = None):
    """One Adam step on `batch` ({'image': NHWC float32, 'label': int32}).

    Returns (new state, {'loss', 'accuracy'}) with the metrics of this batch.
    """
    key = jax.random.fold_in(state.dropout_key, state.step)
    if axis_name is not None:  # different dropout masks on each device
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    has_stats = state.batch_stats is not None

    def loss_fn(params):
        out = state.apply_fn(
            _variables(state, params), batch["image"], train=True, rngs={"dropout": key},
            mutable=["batch_stats"] if has_stats else False,
        )
        logits, updates = out if has_stats else (out, {})
        loss = cross_entropy(logits, batch["label"], state.label_smoothing).mean()
        return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}
    batch_stats = updates.get("batch_stats")
    if axis_name is not None:
        grads, metrics = jax.lax.pmean((grads, metrics), axis_name)
        if has_stats:
            batch_stats = jax.lax.pmean(batch_stats, axis_name)
    state = state.apply_gradients(grads=grads)
    if has_stats:
        state = state.replace(batch_stats=batch_stats)
    if state.ema_params is not None:  # warmed up, so early averages follow the weights
        d = jnp.minimum(state.ema_decay, (1.0 + state.step) / (10.0 + state.step))
        state = state.replace(ema_params=jax.tree.map(lambda e, p: d * e + (1 - d) * p,
                                                      state.ema_params, state.params))
    return state, metrics


def eval_step(state: TrainState, batch: Batch, axis_name: str | None = None) -> dict:
    """{'loss', 'accuracy', 'count'} over the examples of `batch` whose optional
    'mask' is true (padding is left out of the means)."""
    logits = state.apply_fn(_variables(state, eval_params(state)), batch["image"], train=False)
    mask = batch.get("mask", jnp.ones(logits.shape[0], bool)).astype(jnp.float32)
    sums = {
        "loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
        "accuracy": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
        "count": jnp.sum(mask),
    }
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
    count = jnp.maximum(sums["count"], 1.0)
    return {"loss": sums["loss"] / count, "accuracy": sums["accuracy"] / count,
            "count": sums["count"]}


# --- The loop around the steps -------------------------------------------------


def preprocess(config: ml_collections.ConfigDict, norm: dict | None):
    """uint8 NHWC -> the float32 images the model sees (inside jit)."""
    if norm is None:
        return transforms.scale
    mean, std = np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)
    return lambda images: transforms.standardize(images, mean, std)


def make_train_fn(config: ml_collections.ConfigDict, norm: dict | None, state_sharding=None):
    """The compiled training step on a uint8 batch: scale, augment, `train_step`.

    Scaling and augmentation are fused into the compiled step, so the host only
    gathers uint8 rows. The state's buffers are donated (updated in place). Not
    `lax.scan` over several steps: on XLA:CPU a conv inside a loop body ran ~10x
    slower than the same step dispatched alone (measured, see experiments/).

    `config.parallelism`: "jit" takes global arrays sharded over the mesh (the new
    state keeps `state_sharding`, e.g. sharded parameters); "pmap" takes a leading
    device axis and runs `train_step` with `axis_name`.
    """
    to_float = preprocess(config, norm)
    aug = config.augment
    augmenting = (aug.rotation_deg > 0 or aug.zoom > 0 or aug.shift > 0 or aug.shear_deg > 0
                  or aug.elastic_alpha > 0 or aug.flip_horizontal)
    axis_name = parallel.PMAP_AXIS if config.parallelism == "pmap" else None

    def step(state, images, labels):
        images = to_float(images)
        if augmenting:
            key = jax.random.fold_in(augment_base_key(config.seed), state.step)
            part = None
            if axis_name:  # draw for the global batch, as the jit path does
                part = (jax.lax.axis_index(axis_name), jax.local_device_count())
            images = augment.random_affine(images, key, part=part, **aug)
        return train_step(state, {"image": images, "label": labels}, axis_name)

    if axis_name:
        return jax.pmap(step, axis_name=axis_name, donate_argnums=0)
    return jax.jit(step, donate_argnums=0, out_shardings=(state_sharding, None))


def augment_base_key(seed: int) -> jax.Array:
    """The augmentation stream of a run; made inside the trace, never a captured array."""
    return jax.random.fold_in(jax.random.key(seed), 1)


def make_eval_fn(config: ml_collections.ConfigDict, norm: dict | None):
    to_float = preprocess(config, norm)

    def evaluate(state, images, labels, mask):
        return eval_step(state, {"image": to_float(images), "label": labels, "mask": mask})

    return jax.jit(evaluate)


def evaluate(eval_fn, state, data: Dataset, indices: np.ndarray, batch_size: int, mesh) -> dict:
    """Mean loss and accuracy of `state` on `data.images[indices]`."""
    batches, masks = transforms.padded_batches(len(indices), batch_size)
    rows = parallel.process_rows(batch_size)
    total = {"loss": 0.0, "accuracy": 0.0, "count": 0.0}
    for batch, mask in zip(batches, masks, strict=True):
        idx = indices[batch[rows]]
        m = eval_fn(state, parallel.global_array(data.images[idx], mesh),
                    parallel.global_array(data.labels[idx], mesh),
                    parallel.global_array(mask[rows], mesh))
        m = jax.device_get(m)
        for k in ("loss", "accuracy"):
            total[k] += float(m[k]) * float(m["count"])
        total["count"] += float(m["count"])
    n = max(total["count"], 1.0)
    return {"loss": total["loss"] / n, "accuracy": total["accuracy"] / n}


def check_config(config: ml_collections.ConfigDict) -> None:
    """Rejects values no run could use, naming the field, before anything is written."""
    def need(ok: bool, field: str, expected: str) -> None:
        if not ok:
            raise UserError(f"config.{field}: expected {expected}, got {config[field]!r}")

    need(config.model in MODELS, "model", f"one of {sorted(MODELS)}")
    need(config.num_epochs >= 1, "num_epochs", "an integer >= 1")
    need(config.batch_size >= 1, "batch_size", "an integer >= 1")
    need(config.eval_batch_size >= 1, "eval_batch_size", "an integer >= 1")
    need(config.learning_rate > 0, "learning_rate", "a number > 0")
    need(0 <= config.val_fraction < 1, "val_fraction", "a number in [0, 1)")
    need(config.num_classes >= 2, "num_classes", "an integer >= 2")
    need(config.normalization in ("unit", "standardize"), "normalization",
         "'unit' or 'standardize'")
    need(config.parallelism in ("jit", "pmap"), "parallelism", "'jit' or 'pmap'")
    need(config.parallelism == "jit" or jax.process_count() == 1, "parallelism",
         "'jit' when running several processes ('pmap' is single-process)")
    need(config.parallelism == "jit" or not config.shard_params, "parallelism",
         "'jit' with config.shard_params (pmap replicates everything)")
    n = jax.device_count()
    need(config.batch_size % n == 0, "batch_size", f"a multiple of the {n} devices")
    need(config.eval_batch_size % n == 0, "eval_batch_size", f"a multiple of the {n} devices")
    need(0 <= config.ema_decay < 1, "ema_decay", "a number in [0, 1)")
    for field in ("rotation_deg", "zoom", "shift", "shear_deg", "elastic_alpha"):
        need(config.augment[field] >= 0, f"augment.{field}", "a number >= 0")
    need(config.augment.zoom < 1, "augment.zoom", "a number < 1 (scale in 1 +- zoom)")
    need(config.augment.elastic_sigma > 0, "augment.elastic_sigma", "a number > 0")
    create_optimizer(config, 1)  # names a bad config.optimizer or config.schedule


# Fields a resumed run may change: they do not alter what has been trained so far.
RESUMABLE_CHANGES = ("num_epochs", "progress", "data_dir", "test_file", "test_dir",
                     "eval_batch_size", "parallelism", "shard_params", "tta_shifts",
                     "decode_workers")

# Fields added after runs were made, each at the value that reproduces those runs: a
# saved config without the field was trained as if it had this value.
ADDED_FIELDS = {"augment.shear_deg": 0.0, "augment.elastic_alpha": 0.0,
                "augment.elastic_sigma": 4.0}


def _flatten(tree: dict, prefix: str = "") -> dict:
    """{"augment": {"zoom": 0.1}} -> {"augment.zoom": 0.1}: a changed field is named whole."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _check_same_run(workdir: Path, config: ml_collections.ConfigDict) -> None:
    saved_path = workdir / "config.json"
    if not saved_path.is_file():
        return
    saved = {**ADDED_FIELDS, **_flatten(json.loads(saved_path.read_text()))}
    now = _flatten(json.loads(config.to_json()))
    changed = sorted(k for k in set(saved) | set(now)
                     if saved.get(k) != now.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        raise UserError(
            f"{saved_path}: this workdir holds a run with a different config "
            f"(fields {', '.join('config.' + k for k in changed)}); "
            "use a new --workdir, or the same config to resume"
        )


def log(message: str, end: str = "\n") -> None:
    if parallel.is_writer():
        print(message, end=end, flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_after_epoch: int = 0) -> dict:
    """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the
    last epoch's metrics. A run that already reached `num_epochs` is not retrained.

    `stop_after_epoch` (> 0) ends this invocation after that epoch's checkpoint
    (preemptible jobs); the same command later resumes where it stopped.
    """
    check_config(config)
    workdir = Path(workdir)
    _check_same_run(workdir, config)
    data = load_train(config, workdir / "cache")
    train_idx, val_idx = transforms.stratified_split(data.labels, config.val_fraction,
                                                     config.split_seed)
    steps_per_epoch = len(train_idx) // config.batch_size
    if steps_per_epoch == 0:
        raise UserError(
            f"config.batch_size: expected at most the {len(train_idx)} training rows "
            f"of {data.source}, got {config.batch_size}"
        )
    log(f"data: {data.source}: {len(data.images)} images {data.image_shape}, "
        f"{len(train_idx)} train / {len(val_idx)} validation")
    if data.source == embedded.SOURCE:
        log("note: no config.data_dir given, so this runs on the embedded 5,000 digits; "
            "for the competition add --config.data_dir=path/to/digit-recognizer")

    norm = None
    if config.normalization == "standardize":
        mean, std = transforms.channel_stats(data.images[train_idx])
        norm = {"mean": mean, "std": std}
    mesh = parallel.data_mesh()
    state = parallel.init_state(
        lambda: create_train_state(config, jax.random.key(config.seed), data.image_shape,
                                   len(data.class_names), steps_per_epoch),
        mesh, config.shard_params)
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    meta = {"epoch": 0, "best_val_accuracy": -1.0}
    if checkpoint.exists(workdir):
        state, meta = checkpoint.restore(workdir, state)
        log(f"resumed from {workdir}/checkpoints/latest at epoch {meta['epoch']}")
    if parallel.is_writer():
        files.write_json(workdir / "config.json", json.loads(config.to_json()))
        files.write_json(workdir / "classes.json", data.class_names)

    history = _read_history(workdir, meta["epoch"])
    train_fn = make_train_fn(config, norm, state_sharding)
    eval_fn = make_eval_fn(config, norm)
    rows = parallel.process_rows(config.batch_size)
    pmap = config.parallelism == "pmap"
    place = parallel.pmap_split if pmap else (lambda x: parallel.global_array(x, mesh))
    last_epoch = min(config.num_epochs, stop_after_epoch or config.num_epochs)
    for epoch in range(meta["epoch"] + 1, last_epoch + 1):
        start = time.perf_counter()
        batches = transforms.epoch_batches(train_idx, config.batch_size, config.seed, epoch)
        pending, sums, seen = [], {"loss": 0.0, "accuracy": 0.0}, 0
        step_state = parallel.pmap_replicate(state) if pmap else state
        for i, batch in enumerate(batches):
            idx = batch[rows]
            step_state, metrics = train_fn(step_state, place(data.images[idx]),
                                           place(data.labels[idx]))
            pending.append(metrics)  # fetched in groups: the host runs ahead of the device
            if len(pending) == _FETCH_EVERY or i == len(batches) - 1:
                for m in jax.device_get(pending):
                    sums = {k: sums[k] + float(np.mean(m[k])) for k in sums}
                seen, pending = seen + len(pending), []
                if config.progress and sys.stdout.isatty():
                    _progress(epoch, config.num_epochs, seen, len(batches), sums, start)
        if pmap:
            step_state = jax.device_put(parallel.pmap_unreplicate(step_state), state_sharding)
        state = step_state
        seconds = time.perf_counter() - start
        record = {
            "epoch": epoch,
            "step": int(jax.device_get(state.step)),
            "train_loss": sums["loss"] / seen,
            "train_accuracy": sums["accuracy"] / seen,
            "seconds": seconds,
            "images_per_second": seen * config.batch_size / seconds,
        }
        if len(val_idx):
            val = evaluate(eval_fn, state, data, val_idx, config.eval_batch_size, mesh)
            record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
        score = record.get("val_accuracy", epoch)  # without validation, the newest is best
        is_best = score > meta["best_val_accuracy"]
        meta = {
            "epoch": epoch,
            "step": record["step"],
            "val_accuracy": record.get("val_accuracy"),
            "best_val_accuracy": max(score, meta["best_val_accuracy"]),
            "input_shape": list(data.image_shape),
            "class_names": data.class_names,
            "normalization": norm,
            "model": config.model,
        }
        history.append(record)
        if parallel.is_writer():  # before the checkpoint: a resume drops lines past it
            files.write_text(workdir / "metrics.jsonl",
                             "".join(json.dumps(r) + "\n" for r in history))
        checkpoint.save(workdir, state, meta, best=is_best)
        eta = seconds * (config.num_epochs - epoch)
        log(_epoch_line(record, config.num_epochs, eta, is_best))
    if meta["epoch"] >= config.num_epochs and not history:
        log(f"{workdir}: already trained for {meta['epoch']} epochs")
    return history[-1] if history else {"epoch": meta["epoch"]}


def _read_history(workdir: Path, last_epoch: int) -> list[dict]:
    """Metrics of the epochs already in the checkpoint (later lines are from a crash)."""
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["epoch"] <= last_epoch]


def _epoch_line(r: dict, num_epochs: int, eta: float, is_best: bool) -> str:
    val = ""
    if "val_accuracy" in r:
        best = " *" if is_best else ""
        val = f" | val loss {r['val_loss']:.4f} acc {r['val_accuracy']:.4f}{best}"
    return (f"epoch {r['epoch']:>3}/{num_epochs} | train loss {r['train_loss']:.4f} "
            f"acc {r['train_accuracy']:.4f}{val} | {r['images_per_second']:.0f} img/s | "
            f"{r['seconds']:.1f}s | eta {_clock(eta)}")


def _progress(epoch, num_epochs, done, total, sums, start) -> None:
    elapsed = time.perf_counter() - start
    eta = elapsed / done * (total - done)
    width = 24
    bar = "#" * (width * done // total) + "." * (width - width * done // total)
    log(f"\repoch {epoch}/{num_epochs} [{bar}] {done}/{total} loss {sums['loss'] / done:.4f} "
        f"acc {sums['accuracy'] / done:.4f} eta {_clock(eta)}", end="")
    if done == total:
        log("\r" + " " * 100 + "\r", end="")


def _clock(seconds: float) -> str:
    seconds = max(0, int(math.ceil(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


def apply_model(state: TrainState, images: jax.Array) -> jax.Array:
    """Eval-mode logits (used by prediction)."""
    return state.apply_fn(_variables(state, eval_params(state)), images, train=False)

