"""jax's persistent compilation cache, so a second run does not compile again.

With every compiled program cached (also the small ones jax compiles while
initialising a model), a cold process reached its first trained step in 2.0 s
instead of 5.9 s on the 2-core CPU (`configs/quick.py`'s CNN; experiments/README.md).
Off with `--config.compilation_cache_dir=`.
"""

from __future__ import annotations

import os

import jax


def enable(path: str) -> None:
    """Caches compiled programs under `path` ("" leaves jax's default: no cache)."""
    if not path:
        return
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
