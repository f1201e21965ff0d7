"""TensorBoard event files of a run, in `<workdir>/tensorboard/` (`tensorboard --logdir runs/`).

Written with tensorboardX, which needs no TensorFlow. Every scalar is logged against the
optimizer step, so per-epoch and per-step curves share one x axis:

- `epoch/<field>`: every number of the epoch's metrics.jsonl record (train/val loss and
  accuracy, learning rate, images per second, seconds; not `resumed_at_batch`, a
  position, not a measurement);
- `steps/train_loss`, `steps/train_accuracy`, `steps/learning_rate`: the mean over each
  stretch of steps the loop fetches together (every `loop.FETCH_EVERY` steps);
- the config and the model summary as text.

Each epoch's events go to a file of their own, closed when the epoch is recorded (the
writer's queue is drained only on close), so whatever metrics.jsonl and the checkpoint
hold is on disk too. Each file starts with a marker that hides the events of earlier
files from its first step on: a run resumed after a crash shows each step once, as
metrics.jsonl does. Process 0 alone writes; elsewhere every call does nothing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

import jax
import numpy as np
from etils import epath

from digitjax import parallel

SUBDIR = "tensorboard"


def summary_writer_class() -> type:
    """tensorboardX's SummaryWriter, imported without torch. tensorboardX imports torch
    whenever it is installed (as it is on Kaggle's images and with `.[bench]`), only to
    name `torch.Tensor` in its type hints; that import took 2.1-2.3 s of a cold run's
    start-up against 0.13-0.17 s without it (three fresh processes each, `import
    tensorboardX`). Hiding torch for that one import makes tensorboardX fall back to
    numpy; scalars and text, all this module writes, never touch torch. Switch:
    DIGITJAX_TB_WITHOUT_TORCH=0. Where torch is already imported it costs nothing."""
    if "tensorboardX" in sys.modules:  # each epoch's writer: nothing hidden again
        return sys.modules["tensorboardX"].SummaryWriter
    # Not thread-safe: another thread importing torch in this moment would fail.
    hide = ("torch" not in sys.modules
            and os.environ.get("DIGITJAX_TB_WITHOUT_TORCH", "1") != "0")
    if hide:
        sys.modules["torch"] = None  # `import torch` raises ImportError while this stands
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return SummaryWriter


class MetricsWriter:
    """Opens an event file on the first write after each epoch: a run with nothing to
    train writes none."""

    def __init__(self, workdir: epath.PathLike, learning_rate: Callable[[int], float],
                 start_step: int = 0):
        self.logdir = epath.Path(workdir) / SUBDIR  # tensorboardX writes gs:// itself
        # The schedule (update count -> rate), compiled once: called eagerly, optax's
        # schedules compiled each of their ~11 jnp ops on the first call, 1.4 s of every
        # run's first epoch (configs/quick.py, a jax.monitoring trace of a cold run).
        self._learning_rate = jax.jit(learning_rate)
        self._start_step = start_step  # the last step already recorded
        self._writer = None

    def _open(self):
        if self._writer is None and parallel.is_writer():
            SummaryWriter = summary_writer_class()  # imported late: only process 0 writes
            # A START event at the first new step hides older files' events from there on.
            # The suffix keeps two files opened within one second from sharing a name
            # (tensorboardX names files by the second), in the order they were opened.
            self._writer = SummaryWriter(logdir=str(self.logdir),
                                         purge_step=self._start_step + 1, flush_secs=30,
                                         filename_suffix=f".{time.time_ns()}")
        return self._writer

    def learning_rate(self, step: int) -> float:
        """The rate of update number `step` (1-based; optax counts from 0)."""
        # float32, written in its shortest form (0.001, not 0.0010000000474974513)
        return float(str(np.float32(self._learning_rate(max(step - 1, 0)))))

    def text(self, tag: str, text: str) -> None:
        """A block of text (shown as code) at the last recorded step."""
        if w := self._open():
            body = "\n".join("    " + line for line in text.splitlines())
            w.add_text(tag, body, global_step=self._start_step)

    def config(self, config_json: str) -> None:
        self.text("config", json.dumps(json.loads(config_json), indent=2, sort_keys=True))

    def steps(self, step: int, metrics: dict[str, float]) -> None:
        """Mean train `metrics` of the steps fetched together, the last being `step`."""
        if w := self._open():
            for name, value in metrics.items():
                w.add_scalar(f"steps/train_{name}", value, step)
            w.add_scalar("steps/learning_rate", self.learning_rate(step), step)

    def epoch(self, record: dict) -> None:
        """Every number of an epoch's metrics.jsonl record, at its step; then the file is
        closed, all of it on disk."""
        if w := self._open():
            for name, value in record.items():
                if (name not in ("epoch", "step", "resumed_at_batch")
                        and isinstance(value, int | float)):
                    w.add_scalar(f"epoch/{name}", value, record["step"])
        self.close()
        self._start_step = record["step"]

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
