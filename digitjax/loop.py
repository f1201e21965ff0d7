"""The training loop: `train_and_evaluate(config, workdir)`.

One road for every topology: a device mesh spanning every device of every process,
global batches sharded over it (`digitjax.parallel`), and the pure `train_step`
jit-compiled with scaling and augmentation fused in front of it. Each epoch ends
with evaluation, a line of metrics and a checkpoint; a re-run resumes exactly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

from digitjax import augment, checkpoint, console, files, model_summary, parallel, transforms
from digitjax import workdir as runs
from digitjax.config_checks import check_config
from digitjax.data import Dataset, describe, embedded, load_train
from digitjax.data.sampling import epoch_batches, padded_batches, stratified_split
from digitjax.errors import TrainingDiverged, UserError
from digitjax.metrics_writer import MetricsWriter
from digitjax.train import (
    TrainState,
    create_train_state,
    eval_step,
    learning_rate_schedule,
    train_step,
)

FETCH_EVERY = 20  # steps between metric fetches (NaN checks and progress updates)


def augment_base_key(seed: int) -> jax.Array:
    """The augmentation stream of a run; made inside the trace, never a captured array."""
    return jax.random.fold_in(jax.random.key(seed), 1)


def augmenting(aug: ml_collections.ConfigDict) -> bool:
    return bool(aug.rotation_deg > 0 or aug.zoom > 0 or aug.shift > 0 or aug.shear_deg > 0
                or aug.elastic_alpha > 0 or aug.flip_horizontal)


def make_train_fn(config: ml_collections.ConfigDict, normalization: dict | None,
                  state_sharding=None):
    """The compiled training step on a uint8 batch: to float, augment, `train_step`.

    Scaling and augmentation are fused into the compiled step, so the host only
    gathers uint8 rows. The state's buffers are donated (updated in place) and the
    new state keeps `state_sharding` (e.g. sharded parameters). Not `lax.scan` over
    several steps: on XLA:CPU a conv inside a loop body ran ~10x slower than the
    same step dispatched alone (measured, see experiments/).
    """
    to_float = transforms.to_float(normalization)
    aug = config.augment.to_dict() if augmenting(config.augment) else None

    def step(state: TrainState, images: jax.Array, labels: jax.Array):
        images = to_float(images)
        if aug is not None:  # drawn for the global batch: the same on any device layout
            key = jax.random.fold_in(augment_base_key(config.seed), state.step)
            images = augment.random_augment(images, key, **aug)
        return train_step(state, {"image": images, "label": labels})

    return jax.jit(step, donate_argnums=0, out_shardings=(state_sharding, None))


def make_eval_fn(normalization: dict | None):
    to_float = transforms.to_float(normalization)

    def evaluate(state, images, labels, mask):
        return eval_step(state, {"image": to_float(images), "label": labels, "mask": mask})

    return jax.jit(evaluate)


def evaluate(eval_fn, state, data: Dataset, indices: np.ndarray, batch_size: int, mesh) -> dict:
    """Mean loss and accuracy of `state` on `data.images[indices]`."""
    batches, masks = padded_batches(len(indices), batch_size)
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


def train_epoch(train_fn, state, data: Dataset, batches: np.ndarray, mesh,
                progress: console.Progress,
                writer: MetricsWriter | None = None) -> tuple[TrainState, dict]:
    """One pass over `batches` (global row indices); (state, mean train metrics).

    Metrics are fetched every FETCH_EVERY steps, so the host runs ahead of the device;
    a non-finite loss stops the run there, naming the step it first appeared at. Each
    fetch updates the progress bar and logs the fetched steps' mean to `writer`.
    """
    rows = parallel.process_rows(batches.shape[1])
    step0 = int(jax.device_get(state.step))
    pending, sums, seen = [], {"loss": 0.0, "accuracy": 0.0}, 0
    for i, batch in enumerate(batches):
        idx = batch[rows]
        state, metrics = train_fn(state, parallel.global_array(data.images[idx], mesh),
                                  parallel.global_array(data.labels[idx], mesh))
        pending.append(metrics)
        if len(pending) == FETCH_EVERY or i == len(batches) - 1:
            fetched = jax.device_get(pending)
            for j, m in enumerate(fetched):
                if not np.isfinite(m["loss"]):
                    raise TrainingDiverged(
                        f"train loss became {float(m['loss'])} at step {step0 + seen + j + 1} "
                        f"(batch {seen + j + 1} of {len(batches)} in epoch "
                        f"{progress.epoch}): lower config.learning_rate or set "
                        "config.grad_clip_norm")
                sums = {k: sums[k] + float(m[k]) for k in sums}
            seen, pending = seen + len(fetched), []
            progress.update(seen, sums)
            if writer is not None:
                writer.steps(step0 + seen, {k: float(np.mean([m[k] for m in fetched]))
                                            for k in sums})
    return state, {k: v / seen for k, v in sums.items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                       stop_after_epoch: int = 0) -> dict:
    """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the
    last epoch's metrics. A run that already reached `num_epochs` is not retrained.

    `stop_after_epoch` (> 0) ends this invocation after that epoch's checkpoint
    (preemptible jobs); the same command later resumes where it stopped.
    """
    check_config(config)
    workdir = Path(workdir)
    runs.check_same_run(workdir, config)
    data = load_train(config, workdir / "cache")
    train_idx, val_idx = stratified_split(data.labels, config.val_fraction, config.split_seed)
    steps_per_epoch = len(train_idx) // config.batch_size
    if steps_per_epoch == 0:
        raise UserError(f"config.batch_size: expected at most the {len(train_idx)} training "
                        f"rows of {data.source}, got {config.batch_size}")
    console.log(f"data: {data.source}: {len(data.images)} images {data.image_shape}, "
                f"{len(train_idx)} train / {len(val_idx)} validation")
    if data.source == embedded.SOURCE:
        console.log("note: no config.data_dir given, so this runs on the embedded 5,000 "
                    "digits; for the competition add --config.data_dir=path/to/digit-recognizer")
    norm = None
    if config.normalization == "standardize":
        mean, std = transforms.channel_stats(data.images[train_idx])
        norm = {"mean": mean, "std": std}

    mesh = parallel.data_mesh()
    state = parallel.init_state(
        lambda: create_train_state(config, jax.random.key(config.seed), data.image_shape,
                                   len(data.class_names), steps_per_epoch),
        mesh, config.shard_params)
    meta = {"epoch": 0, "best_val_accuracy": -1.0}
    if checkpoint.exists(workdir):
        state, meta = checkpoint.restore(workdir, state)
        console.log(f"resumed from {workdir}/checkpoints/latest at epoch {meta['epoch']}")
    if parallel.is_writer():
        files.write_json(workdir / "config.json", json.loads(config.to_json()))
        files.write_json(workdir / "classes.json", data.class_names)

    history = runs.read_history(workdir, meta["epoch"])
    train_fn = make_train_fn(config, norm, jax.tree.map(lambda x: x.sharding, state))
    eval_fn = make_eval_fn(norm)
    last_epoch = min(config.num_epochs, stop_after_epoch or config.num_epochs)
    writer = MetricsWriter(workdir, learning_rate_schedule(config, steps_per_epoch),
                           start_step=int(jax.device_get(state.step)))
    if meta["epoch"] < last_epoch:
        describe_run(config, workdir, data, (train_idx, val_idx), writer)
    for epoch in range(meta["epoch"] + 1, last_epoch + 1):
        start = time.perf_counter()
        batches = epoch_batches(train_idx, config.batch_size, config.seed, epoch)
        try:
            with console.Progress(config.progress, epoch, config.num_epochs,
                                  len(batches)) as progress:
                state, train_metrics = train_epoch(train_fn, state, data, batches, mesh,
                                                   progress, writer)
        except TrainingDiverged as e:
            writer.close()
            kept = (f"epoch {meta['epoch']}'s checkpoint in {workdir / 'checkpoints'} is intact"
                    if meta["epoch"] else "no checkpoint was saved")
            raise TrainingDiverged(f"{e}; {kept}") from None
        seconds = time.perf_counter() - start
        step = int(jax.device_get(state.step))
        record = {"epoch": epoch, "step": step,
                  "train_loss": train_metrics["loss"],
                  "train_accuracy": train_metrics["accuracy"], "seconds": seconds,
                  "images_per_second": batches.size / seconds,
                  "learning_rate": writer.learning_rate(step)}
        if len(val_idx):
            val = evaluate(eval_fn, state, data, val_idx, config.eval_batch_size, mesh)
            record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
        score = record.get("val_accuracy", epoch)  # without validation, the newest is best
        is_best = score > meta["best_val_accuracy"]
        meta = runs.checkpoint_record(config, record, max(score, meta["best_val_accuracy"]),
                                      data.image_shape, data.class_names, norm)
        history.append(record)
        if parallel.is_writer():  # before the checkpoint: a resume drops lines past it
            files.write_text(workdir / "metrics.jsonl",
                             "".join(json.dumps(r) + "\n" for r in history))
        writer.epoch(record)
        checkpoint.save(workdir, state, meta, best=is_best)
        console.log(console.epoch_line(record, config.num_epochs,
                                       seconds * (config.num_epochs - epoch), is_best))
    writer.close()
    if meta["epoch"] >= config.num_epochs and not history:
        console.log(f"{workdir}: already trained for {meta['epoch']} epochs")
    return history[-1] if history else {"epoch": meta["epoch"]}


def describe_run(config: ml_collections.ConfigDict, workdir: Path, data: Dataset, split,
                 writer: MetricsWriter) -> None:
    """Before the first epoch of an invocation: the model summary printed, and with the
    data summary in run_info.json (for the report); the config and the model summary
    as TensorBoard text."""
    summary = model_summary.summarize(config, data.image_shape, len(data.class_names))
    console.log(model_summary.text(summary))
    if parallel.is_writer():
        files.write_json(workdir / runs.RUN_INFO, {"data": describe(data, *split),
                                                   "model": summary})
    writer.config(config.to_json())
    writer.text("model", model_summary.text(summary))
