"""TensorBoard event files of a run, in `<workdir>/tensorboard/` (`tensorboard --logdir runs/`).

Written with tensorboardX, which needs no TensorFlow. Every scalar is logged against the
optimizer step, so per-epoch and per-step curves share one x axis:

- `epoch/<field>`: every number of the epoch's metrics.jsonl record (train/val loss and
  accuracy, learning rate, images per second, seconds);
- `steps/train_loss`, `steps/train_accuracy`, `steps/learning_rate`: the mean over each
  stretch of steps the loop fetches together (every `loop.FETCH_EVERY` steps);
- the config and the model summary as text.

A resumed run starts a new event file that purges the steps past its checkpoint, so
TensorBoard shows what metrics.jsonl holds. Process 0 alone writes; elsewhere every call
does nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from digitjax import parallel

SUBDIR = "tensorboard"


class MetricsWriter:
    """Opens its event file on the first write: a run with nothing to train writes none."""

    def __init__(self, workdir: str | Path, learning_rate: Callable[[int], float],
                 start_step: int = 0):
        self.logdir = Path(workdir) / SUBDIR
        self._learning_rate = learning_rate  # the schedule: update count -> rate
        self._start_step = start_step
        self._writer = None

    def _open(self):
        if self._writer is None and parallel.is_writer():
            from tensorboardX import SummaryWriter  # imported late: only process 0 writes

            # A START event at the first new step hides older files' events from there on.
            self._writer = SummaryWriter(logdir=str(self.logdir),
                                         purge_step=self._start_step + 1, flush_secs=30)
        return self._writer

    def learning_rate(self, step: int) -> float:
        """The rate of update number `step` (1-based; optax counts from 0)."""
        return float(self._learning_rate(max(step - 1, 0)))

    def text(self, tag: str, text: str) -> None:
        """A block of text (shown as code) at the run's first new step."""
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
        """Every number of an epoch's metrics.jsonl record, at its step."""
        if w := self._open():
            for name, value in record.items():
                if name not in ("epoch", "step") and isinstance(value, int | float):
                    w.add_scalar(f"epoch/{name}", value, record["step"])
            w.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
