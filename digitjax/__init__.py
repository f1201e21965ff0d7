"""digitjax: JAX/Flax image classification for Kaggle-style data."""

from digitjax.cpu_flags import apply_cpu_flags

__version__ = "0.1.0"

apply_cpu_flags()
