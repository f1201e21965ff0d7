"""The training state, the optimizer and the two pure steps other code imports:
`create_train_state`, `train_step`, `eval_step`.

`train_step` and `eval_step` are pure functions of (state, batch): no files,
flags or globals. With `axis_name` they average over that axis, so

    jax.pmap(functools.partial(train_step, axis_name="batch"), axis_name="batch")

works as written; under `jax.jit` over a sharded batch (digitjax's own loop,
`digitjax.loop`) leave it None.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct
from flax.training import train_state

from digitjax.errors import UserError
from digitjax.models import create_model
from digitjax.registry import lookup

Batch = dict[str, jax.Array]


class TrainState(train_state.TrainState):
    batch_stats: Any = None  # Batch-norm running statistics; None for models without.
    dropout_key: jax.Array | None = None  # Folded with the step: a new key every step.
    ema_params: Any = None  # Moving average of the weights, evaluated instead; None = off.
    label_smoothing: float = struct.field(pytree_node=False, default=0.0)
    ema_decay: float = struct.field(pytree_node=False, default=0.0)


# Learning-rate schedules by name (`config.schedule`), each an optax schedule built
# from the peak rate, the run's length in steps and `config.schedule_kwargs` (in epochs).
SCHEDULES: dict[str, Callable[..., optax.Schedule]] = {
    "constant": lambda lr, steps_per_epoch, total: optax.constant_schedule(lr),
    "warmup_cosine": lambda lr, steps_per_epoch, total, warmup_epochs=1.0: (
        optax.warmup_cosine_decay_schedule(
            0.0, lr, min(int(warmup_epochs * steps_per_epoch), total - 1), total,
            end_value=lr * 1e-3)),
    "onecycle": lambda lr, steps_per_epoch, total: optax.cosine_onecycle_schedule(total, lr),
    "exponential": lambda lr, steps_per_epoch, total, decay_rate=0.9: (
        optax.exponential_decay(lr, steps_per_epoch, decay_rate)),
}


def _call(fn: Callable, field: str, name: str, *args, **kwargs):
    """`fn(*args, **kwargs)`, naming `config.<field>` when a keyword does not fit."""
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as e:
        raise UserError(f"config.{field}: {e} (for '{name}')") from None
    return fn(*args, **kwargs)


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           steps_per_epoch: int) -> optax.Schedule:
    schedule = lookup(SCHEDULES, config.schedule, "schedule")
    return _call(schedule, "schedule_kwargs", config.schedule, config.learning_rate,
                 steps_per_epoch, config.num_epochs * steps_per_epoch,
                 **config.schedule_kwargs)


def create_optimizer(config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> optax.GradientTransformation:
    """`optax.<config.optimizer>(schedule, **config.optimizer_kwargs)`, behind a global-norm
    clip when `config.grad_clip_norm` > 0."""
    factory = getattr(optax, config.optimizer, None)
    if not callable(factory) or "learning_rate" not in _parameters(factory):
        raise UserError(f"config.optimizer: expected the name of an optax optimizer such as "
                        f"'adam', 'adamw' or 'sgd', got '{config.optimizer}'")
    schedule = learning_rate_schedule(config, steps_per_epoch)
    opt = _call(factory, "optimizer_kwargs", config.optimizer, schedule,
                **config.optimizer_kwargs)
    if config.grad_clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), opt)
    return opt


def _parameters(fn: Callable) -> tuple[str, ...]:
    try:
        return tuple(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return ()


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
    """One optimizer step on `batch` ({'image': NHWC float32, 'label': int32}).

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
    logits = apply_model(state, batch["image"])
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


def apply_model(state: TrainState, images: jax.Array) -> jax.Array:
    """Eval-mode logits: the weights to evaluate (`eval_params`) and running statistics."""
    return state.apply_fn(_variables(state, eval_params(state)), images, train=False)
