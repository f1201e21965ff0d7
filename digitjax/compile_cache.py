"""jax's persistent compilation cache, so a second run does not compile again; and
compiling ahead on a thread, so a first run compiles while it does other work.

With every compiled program cached (also the small ones jax compiles while
initialising a model), a cold process reached its first trained step in 2.0 s
instead of 5.9 s on the 2-core CPU (`configs/quick.py`'s CNN; experiments/README.md).
Off with `--config.compilation_cache_dir=`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import jax


def enable(path: str) -> None:
    """Caches compiled programs under `path` ("" leaves jax's default: no cache)."""
    if not path:
        return
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def compile_ahead(fn, *args) -> Callable[[], None]:
    """Starts compiling the jitted `fn` for `args` (arrays or ShapeDtypeStructs, laid out
    as the real call's) on a thread; returns the function that waits for it.

    XLA compiles a program on one core and releases the GIL, so on a 2-core CPU the
    training step's compile (3-5 s for configs/quick.py, 8-12 s for best.py) runs
    beside the model summary and the validation step's compile instead of after the
    one and before the other; the first real call then finds the program compiled.
    A failure here is dropped: the real call compiles again and reports it. Off with
    DIGITJAX_COMPILE_AHEAD=0.
    """
    if os.environ.get("DIGITJAX_COMPILE_AHEAD", "1") == "0":
        return lambda: None

    def work() -> None:
        try:
            fn.lower(*args).compile()
        except Exception:  # noqa: BLE001, S110 - reported by the real call instead
            pass

    thread = threading.Thread(target=work, name="compile_ahead", daemon=True)
    thread.start()
    return thread.join
