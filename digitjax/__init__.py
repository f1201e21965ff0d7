"""digitjax: JAX/Flax image classification for Kaggle-style data."""

from digitjax.cpu_flags import apply_cpu_flags
from digitjax.host_memory import apply_host_memory_settings

__version__ = "0.1.0"

apply_host_memory_settings()  # first: before any thread of XLA allocates
apply_cpu_flags()
