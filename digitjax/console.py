"""What a run prints: one line per epoch, an in-epoch progress bar on a terminal.
Process 0 alone prints."""

from __future__ import annotations

import math
import sys
import time

from digitjax import parallel


def log(message: str, end: str = "\n") -> None:
    """Prints on process 0 only (every process runs the same code)."""
    if parallel.is_writer():
        print(message, end=end, flush=True)


def clock(seconds: float) -> str:
    seconds = max(0, int(math.ceil(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


def epoch_line(r: dict, num_epochs: int, eta: float, is_best: bool) -> str:
    """The line a finished epoch prints (`r`: its metrics.jsonl record)."""
    val = ""
    if "val_accuracy" in r:
        best = " *" if is_best else ""
        val = f" | val loss {r['val_loss']:.4f} acc {r['val_accuracy']:.4f}{best}"
    return (f"epoch {r['epoch']:>3}/{num_epochs} | train loss {r['train_loss']:.4f} "
            f"acc {r['train_accuracy']:.4f}{val} | {r['images_per_second']:.0f} img/s | "
            f"{r['seconds']:.1f}s | eta {clock(eta)}")


class Progress:
    """An in-epoch bar with loss, accuracy and ETA, drawn only on a terminal."""

    def __init__(self, enabled: bool, epoch: int, num_epochs: int, total_steps: int):
        self.enabled = enabled and sys.stdout.isatty()
        self.epoch, self.num_epochs, self.total = epoch, num_epochs, total_steps
        self.start = time.perf_counter()

    def update(self, done: int, sums: dict) -> None:
        if not self.enabled or not done:
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / done * (self.total - done)
        width = 24
        bar = "#" * (width * done // self.total) + "." * (width - width * done // self.total)
        log(f"\repoch {self.epoch}/{self.num_epochs} [{bar}] {done}/{self.total} "
            f"loss {sums['loss'] / done:.4f} acc {sums['accuracy'] / done:.4f} "
            f"eta {clock(eta)}", end="")
        if done == self.total:
            log("\r" + " " * 100 + "\r", end="")
