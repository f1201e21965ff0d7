"""Named points where the crash tests kill the process (`kill -9` at an exact moment).

`DIGITJAX_CRASH_AT=name:n[:SIGNAL]` sends SIGKILL (or SIGNAL, e.g. SIGTERM) to this
process the n-th time (1-based) it passes `point(name)`; unset, `point` is one
environment lookup and nothing else. Used by tests/test_crash.py only.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def point(name: str) -> None:
    target = os.environ.get("DIGITJAX_CRASH_AT")
    if not target:
        return
    parts = target.split(":")
    where, n, sig = parts[0], int(parts[1]) if len(parts) > 1 else 1, parts[2:] or ["SIGKILL"]
    if where == name:
        _counts[name] = _counts.get(name, 0) + 1
        if _counts[name] == n:
            os.kill(os.getpid(), signal.Signals[sig[0]])
