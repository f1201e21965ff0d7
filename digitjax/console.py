"""What a run prints: one line per epoch, an in-epoch progress bar (tqdm) on a terminal.
Process 0 alone prints."""

from __future__ import annotations

import math
import sys
from typing import TextIO

from tqdm import tqdm

from digitjax import parallel, scores


def log(message: str, end: str = "\n") -> None:
    """Prints on process 0 only (every process runs the same code)."""
    if parallel.is_writer():
        print(message, end=end, flush=True)


def clock(seconds: float) -> str:
    seconds = max(0, int(math.ceil(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


def epoch_line(r: dict, num_epochs: int, eta: float, is_best: bool, val_count: int = 0) -> str:
    """The line a finished epoch prints (`r`: its metrics.jsonl record); the validation
    accuracy with its 95% interval over `val_count` images."""
    val = ""
    if "val_accuracy" in r:
        best = " *" if is_best else ""
        low, high = scores.interval(r["val_accuracy"], val_count) if val_count else (0, 0)
        ci = f" [{low:.4f}, {high:.4f}]" if val_count else ""
        val = f" | val loss {r['val_loss']:.4f} acc {r['val_accuracy']:.4f}{ci}{best}"
    return (f"epoch {r['epoch']:>3}/{num_epochs} | train loss {r['train_loss']:.4f} "
            f"acc {r['train_accuracy']:.4f}{val} | {r['images_per_second']:.0f} img/s | "
            f"{r['seconds']:.1f}s" + (f" (resumed at batch {r['resumed_at_batch']})"
                                      if "resumed_at_batch" in r else "")
            + f" | eta {clock(eta)}")


class Progress:
    """In-epoch progress (tqdm): steps, loss, accuracy and ETA, drawn only on a terminal
    and only on process 0; elsewhere (CI, logs, nohup) the per-epoch line says it all.
    Close it (or use it as a context manager) before printing the epoch's line."""

    def __init__(self, enabled: bool, epoch: int, num_epochs: int, total_steps: int,
                 stream: TextIO | None = None):
        stream = stream or sys.stdout
        self.epoch = epoch
        self._bar = tqdm(total=total_steps, desc=f"epoch {epoch}/{num_epochs}", unit="step",
                         file=stream, leave=False, dynamic_ncols=True,
                         disable=not (enabled and parallel.is_writer() and stream.isatty()))

    @property
    def enabled(self) -> bool:
        return not self._bar.disable

    def update(self, done: int, sums: dict) -> None:
        """`done` steps of the epoch so far; `sums`: their summed loss and accuracy."""
        if not self.enabled or not done:
            return
        self._bar.set_postfix({"loss": f"{sums['loss'] / done:.4f}",
                               "acc": f"{sums['accuracy'] / done:.4f}"}, refresh=False)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
