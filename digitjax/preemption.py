"""Stopping cleanly when the machine is being taken away.

Preemptible TPU VMs and spot GPU boxes get a SIGTERM and a short grace period; a
person stops a run with Ctrl-C (SIGINT). While training, both only set a flag: the
loop finishes the step it is in, saves a checkpoint at that step, and exits with
128 + the signal's number (143 for SIGTERM, 130 for SIGINT), so a scheduler retries
and the same command resumes there. With several processes, each one's flag is
all-gathered at fixed steps (every `loop.FETCH_EVERY`), so all of them stop after the
same step and save it together, whichever process got the signal.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):  # noqa: N818 - a stop, not an error
    """Raised after the checkpoint at the stopping step is saved."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopFlag:
    """Catches SIGTERM and SIGINT while in a `with` block; `signum` is the last caught."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._catch)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _catch(self, signum, frame) -> None:
        self.signum = signum

    def agreed(self) -> int:
        """The signal every process stops for (0: none); a collective with several
        processes, so call it at the same step on all of them."""
        if jax.process_count() == 1:
            return self.signum
        flags = multihost_utils.process_allgather(np.int32(self.signum))
        return int(np.max(flags))


def name(signum: int) -> str:
    return signal.Signals(signum).name if signum else "a signal"
