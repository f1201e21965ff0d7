"""digitjax: JAX/Flax image classification for Kaggle-style data."""

__version__ = "0.1.0"
