"""The training loop: `train_and_evaluate(config, workdir)`.

One road for every topology: a device mesh spanning every device of every process,
global batches sharded over it (`digitjax.parallel`), and the pure `train_step`
jit-compiled with scaling and augmentation fused in front of it. Each epoch ends
with evaluation, a line of metrics and a checkpoint; SIGTERM/SIGINT, and optionally
every `config.checkpoint_every_steps`, save mid-epoch. A re-run resumes at the saved
step and ends bit-identical (the order of batches is a function of seed and epoch).
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.sharding import Mesh

from digitjax import (
    augment,
    compile_cache,
    console,
    faults,
    files,
    model_summary,
    parallel,
    preemption,
    scores,
    transforms,
)
from digitjax import workdir as runs
from digitjax.checkpoint import Checkpoints
from digitjax.config_checks import check_config, check_model
from digitjax.data import Dataset, check_test, describe, embedded, load_train
from digitjax.data.sampling import epoch_batches, padded_batches, steps_per_epoch, train_val_rows
from digitjax.errors import TrainingDiverged, UserError
from digitjax.metrics_writer import MetricsWriter
from digitjax.train import (
    TrainState,
    create_train_state,
    eval_step,
    learning_rate_schedule,
    train_step,
)

# Steps between metric fetches (NaN checks and progress updates), and so the most steps
# in flight. Keep it under ~30: on the CPU split into 2 devices (cpu_flags.py) jax
# 0.10.2's CPU client aborts with more than ~35 queued steps (experiments/deep_queue.py).
FETCH_EVERY = 20


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


@dataclasses.dataclass
class Position:
    """Where a run stands: whole epochs done, batches done in the next one, and the
    train-metric sums of those batches (so a resumed epoch reports the same means)."""

    epoch: int = 0
    batch: int = 0
    sums: dict = dataclasses.field(default_factory=lambda: {"loss": 0.0, "accuracy": 0.0})


def train_epoch(train_fn, state, data: Dataset, batches: np.ndarray, mesh,
                progress: console.Progress, at: Position, stop: preemption.StopFlag,
                save_every: int = 0, save=None,
                writer: MetricsWriter | None = None) -> tuple[TrainState, Position, int]:
    """Steps through `batches[at.batch:]` (global row indices) from position `at`;
    returns (state, the position reached, the signal that stopped it or 0).

    Metrics are fetched every FETCH_EVERY steps, so the host runs ahead of the device;
    a non-finite loss stops the run there, naming the step it first appeared at. A
    stop request is honoured after the step in flight (one process), or at the next
    fetch, where all processes agree on it. `save(state, position)` is called every
    `save_every` steps inside the epoch. Each fetch updates the progress bar and logs
    the fetched steps' mean train metrics to `writer`.
    """
    rows = parallel.process_rows(batches.shape[1])
    sums, pending, done = dict(at.sums), [], at.batch
    step0 = int(jax.device_get(state.step)) - at.batch

    def flush() -> None:
        nonlocal sums, pending
        fetched = jax.device_get(pending)
        for j, m in enumerate(fetched):
            if not np.isfinite(m["loss"]):
                bad = done - len(pending) + j + 1
                raise TrainingDiverged(
                    f"train loss became {float(m['loss'])} at step {step0 + bad} (batch "
                    f"{bad} of {len(batches)} in epoch {at.epoch + 1}): lower "
                    "config.learning_rate or set config.grad_clip_norm")
            sums = {k: sums[k] + float(m[k]) for k in sums}
        pending = []
        progress.update(done, sums)
        if writer is not None and fetched:
            writer.steps(step0 + done, {k: float(np.mean([m[k] for m in fetched]))
                                        for k in sums})

    for i in range(at.batch, len(batches)):
        idx = batches[i][rows]
        state, metrics = train_fn(state, parallel.global_array(data.images[idx], mesh),
                                  parallel.global_array(data.labels[idx], mesh))
        faults.point("step")
        pending.append(metrics)
        done = i + 1
        boundary = len(pending) == FETCH_EVERY or done == len(batches)
        if boundary:
            flush()
        if done == len(batches):
            break
        signum = stop.signum if jax.process_count() == 1 else (stop.agreed() if boundary else 0)
        due = save_every and (step0 + done) % save_every == 0
        if signum or due:
            flush()
            if signum:
                return state, Position(at.epoch, done, sums), signum
            save(state, Position(at.epoch, done, sums))
    return state, Position(at.epoch + 1, 0, sums), 0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: epath.PathLike,
                       stop_after_epoch: int = 0) -> dict:
    """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the
    last epoch's metrics. A run that already reached `num_epochs` is not retrained.

    `stop_after_epoch` (> 0) ends this invocation after that epoch's checkpoint; the
    same command later resumes where it stopped. SIGTERM or SIGINT save at the
    current step and raise `preemption.Stopped`. One run at a time writes the workdir.
    """
    check_config(config)
    workdir = epath.Path(workdir)
    runs.check_same_run(workdir, config)
    with preemption.StopFlag() as stop:
        return _train(config, workdir, stop_after_epoch, stop)


def _train(config, workdir: epath.Path, stop_after_epoch: int, stop) -> dict:
    data = load_train(config, runs.cache_dir(workdir))
    faults.point("data_loaded")
    train_idx, val_idx = train_val_rows(data.labels, config)
    steps = steps_per_epoch(len(train_idx), config.batch_size)
    if len(train_idx) == 0:
        fields = "config.num_folds/fold" if config.num_folds else "config.val_fraction"
        raise UserError(f"{fields}: expected settings that leave training rows; these hold "
                        f"out all {len(data.labels)} rows of {data.source}")
    if steps == 0:
        raise UserError(f"config.batch_size: expected at most the {len(train_idx)} training "
                        f"rows of {data.source}, got {config.batch_size}")
    console.log(f"data: {data.source}: {len(data.images)} images {data.image_shape}, "
                f"{len(train_idx)} train / {len(val_idx)} validation")
    if data.source == embedded.SOURCE:
        console.log("note: no config.data_dir given, so this runs on the embedded 5,000 "
                    "digits; for the competition add --config.data_dir=path/to/digit-recognizer")
    check_model(config, data.image_shape, len(data.class_names))
    check_test(config, data.image_shape, runs.cache_dir(workdir), data.columns)
    norm = None
    if config.normalization == "standardize":
        mean, std = transforms.channel_stats(data.images, train_idx)
        norm = {"mean": mean, "std": std}

    mesh = parallel.data_mesh(config)
    console.log(f"devices: {mesh.size} {jax.default_backend()} device{'s' * (mesh.size > 1)} "
                "on the data mesh" + (f", {jax.process_count()} processes"
                                      if jax.process_count() > 1 else ""))
    state = parallel.init_state(
        lambda: create_train_state(config, jax.random.key(config.seed), data.image_shape,
                                   len(data.class_names), steps),
        mesh, config.shard_params)
    # Locked from the first write on: bad data or settings, found above, leave no trace.
    with runs.lock(workdir):
        ckpts = Checkpoints(workdir, keep=config.keep_checkpoints)
        try:
            return _epochs(_Run(config, workdir, data, train_idx, val_idx, steps, norm, mesh,
                                ckpts, stop), state, stop_after_epoch)
        finally:
            ckpts.close()  # waits for the saves in flight: a stop or an error keeps them


@dataclasses.dataclass
class _Run:
    """What the epochs of one invocation share: its settings, data, mesh and checkpoints,
    and the best score so far (validation accuracy; without validation, the epoch)."""

    config: ml_collections.ConfigDict
    workdir: epath.Path
    data: Dataset
    train_idx: np.ndarray
    val_idx: np.ndarray
    steps: int  # per epoch: sampling.steps_per_epoch of the training rows
    norm: dict | None
    mesh: Mesh
    ckpts: Checkpoints
    stop: preemption.StopFlag
    best: float = -1.0

    def save(self, state: TrainState, position: Position, score: float | None = None,
             val_accuracy: float | None = None) -> None:
        step = int(jax.device_get(state.step))
        record = runs.checkpoint_record(self.config, step, position.epoch, position.batch,
                                        position.sums, self.best, self.data.image_shape,
                                        self.data.class_names, self.norm, val_accuracy,
                                        self.data.columns)
        faults.point("before_save")
        self.ckpts.save(step, state, record, score)
        faults.point("save_started")


def _epochs(run: _Run, state: TrainState, stop_after_epoch: int) -> dict:
    """From the latest checkpoint (or `state`) to `config.num_epochs`, or to
    `stop_after_epoch`; returns the last epoch's metrics.jsonl record."""
    config, workdir = run.config, run.workdir
    state, at, run.best = _resume(run.ckpts, state)
    if parallel.is_writer():
        files.write_json(workdir / "config.json", json.loads(config.to_json()))
        files.write_json(workdir / "classes.json", run.data.class_names)
    history = runs.read_history(workdir, at.epoch)
    start_epoch = at.epoch
    train_fn = make_train_fn(config, run.norm, jax.tree.map(lambda x: x.sharding, state))
    eval_fn = make_eval_fn(run.norm)
    last_epoch = min(config.num_epochs, stop_after_epoch or config.num_epochs)
    writer = MetricsWriter(workdir, learning_rate_schedule(config, run.steps),
                           start_step=int(jax.device_get(state.step)))
    if at.epoch < last_epoch:
        compiled = compile_cache.compile_ahead(train_fn, state, *_batch_layout(run))
        try:
            describe_run(config, workdir, run.data, (run.train_idx, run.val_idx), writer)
            if len(run.val_idx):  # beside the step's compile, waited for here
                compile_cache.compile_ahead(eval_fn, state, *_batch_layout(run, True))()
                scores.preload()  # the validation report's imports, in the same wait
        finally:  # an error above waits too: exiting amid XLA's compile aborts the process
            compiled()
    try:
        while at.epoch < last_epoch:
            state, at, record = _train_one_epoch(run, train_fn, state, at, writer)
            _end_epoch(run, eval_fn, state, at, record, history, writer)
            signum = run.stop.signum if jax.process_count() == 1 else run.stop.agreed()
            if signum and at.epoch < last_epoch:
                raise _stopped(run.ckpts, signum, f"epoch {at.epoch}")
    finally:
        writer.close()
    if at.epoch == start_epoch >= config.num_epochs:
        console.log(f"{workdir}: already trained for {at.epoch} epochs (nothing retrained)")
    return history[-1] if history else {"epoch": at.epoch}


def _batch_layout(run: _Run, validation: bool = False) -> tuple[jax.ShapeDtypeStruct, ...]:
    """The arguments of a training (or validation) step as shapes, dtypes and
    shardings, the same as `parallel.global_array` gives the real calls: what
    `compile_cache.compile_ahead` compiles them for."""
    size = run.config.eval_batch_size if validation else run.config.batch_size
    args = [((size, *run.data.image_shape), run.data.images.dtype),  # images
            ((size,), run.data.labels.dtype)]  # labels
    if validation:
        args.append(((size,), np.bool_))  # the mask of real (not padding) rows
    sharding = parallel.batch_sharding(run.mesh)
    return tuple(jax.ShapeDtypeStruct(shape, jax.dtypes.canonicalize_dtype(dtype),
                                      sharding=sharding) for shape, dtype in args)


def _train_one_epoch(run: _Run, train_fn, state: TrainState, at: Position,
                     writer: MetricsWriter) -> tuple[TrainState, Position, dict]:
    """The steps of epoch `at.epoch + 1` from `at`; returns the state, the position at
    the epoch's end and its metrics.jsonl record (train metrics only). A stop signal
    saves where the run is and raises `Stopped`; a diverged loss says whether
    checkpoints are kept."""
    config = run.config
    start, first_batch = time.perf_counter(), at.batch
    batches = epoch_batches(run.train_idx, config.batch_size, config.seed, at.epoch + 1)
    try:
        with console.Progress(config.progress, at.epoch + 1, config.num_epochs,
                              len(batches)) as progress:
            state, at, signum = train_epoch(train_fn, state, run.data, batches, run.mesh,
                                            progress, at, run.stop,
                                            config.checkpoint_every_steps, run.save, writer)
    except TrainingDiverged as e:
        kept = (f"the checkpoints in {run.ckpts.directory} are intact" if run.ckpts.steps()
                else "no checkpoint was saved")
        raise TrainingDiverged(f"{e}; {kept}") from None
    if signum:
        run.save(state, at)
        raise _stopped(run.ckpts, signum, f"step {int(jax.device_get(state.step))} "
                       f"(epoch {at.epoch + 1}, batch {at.batch} of {len(batches)})")
    record = _epoch_record(state, at, batches, first_batch, time.perf_counter() - start, writer)
    return state, Position(at.epoch), record


def _end_epoch(run: _Run, eval_fn, state: TrainState, at: Position, record: dict,
               history: list[dict], writer: MetricsWriter) -> None:
    """Validation, the best score, metrics.jsonl, TensorBoard, the epoch's checkpoint
    and its line, in that order: metrics.jsonl before the checkpoint, since a resume
    drops the lines past its checkpoint."""
    config = run.config
    if len(run.val_idx):
        val = evaluate(eval_fn, state, run.data, run.val_idx, config.eval_batch_size, run.mesh)
        record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
    score = record.get("val_accuracy", at.epoch)  # without validation, newest is best
    is_best = score > run.best
    run.best = max(score, run.best)
    history.append(record)
    if parallel.is_writer():
        files.write_text(run.workdir / "metrics.jsonl",
                         "".join(json.dumps(r) + "\n" for r in history))
    faults.point("metrics_written")
    writer.epoch(record)
    run.save(state, at, score, record.get("val_accuracy"))
    epochs_left = config.num_epochs - at.epoch
    eta = run.steps * config.batch_size / record["images_per_second"] * epochs_left
    console.log(console.epoch_line(record, config.num_epochs, eta, is_best, len(run.val_idx)))


def _resume(ckpts: Checkpoints, state: TrainState) -> tuple[TrainState, Position, float]:
    """The latest checkpoint's state, position and best score; a fresh run's without one."""
    restored = ckpts.restore_latest(state)
    if restored is None:
        return state, Position(), -1.0
    state, meta = restored
    at = Position(meta["epoch"], meta.get("batch", 0),
                  meta.get("sums", {"loss": 0.0, "accuracy": 0.0}))
    # epochs counted from 1, as the epoch lines and the stop message count them
    console.log(f"resumed from {ckpts.directory / str(meta['step'])} "
                + (f"in epoch {at.epoch + 1}, after batch {at.batch}" if at.batch
                   else f"after epoch {at.epoch}"))
    return state, at, meta["best_val_accuracy"]


def _epoch_record(state: TrainState, at: Position, batches: np.ndarray, first_batch: int,
                  seconds: float, writer: MetricsWriter) -> dict:
    """metrics.jsonl's line for the epoch just finished at `at` (before validation).
    An epoch resumed at batch `first_batch` ran only `batches[first_batch:]` in this
    process: `seconds` and images/s are that part's, and `resumed_at_batch` says so."""
    step = int(jax.device_get(state.step))
    record = {"epoch": at.epoch, "step": step, "train_loss": at.sums["loss"] / len(batches),
              "train_accuracy": at.sums["accuracy"] / len(batches), "seconds": seconds,
              "images_per_second": (len(batches) - first_batch) * batches.shape[1] / seconds,
              "learning_rate": writer.learning_rate(step)}
    if first_batch:
        record["resumed_at_batch"] = first_batch
    return record


def _stopped(ckpts: Checkpoints, signum: int, where: str) -> preemption.Stopped:
    """Waits for the checkpoint just started, then says where the run stopped."""
    ckpts.wait()
    return preemption.Stopped(signum, f"stopped by {preemption.name(signum)} after {where}; "
                              f"saved in {ckpts.directory}; run the same command to resume")


def describe_run(config: ml_collections.ConfigDict, workdir: epath.Path, data: Dataset, split,
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
