"""XLA:CPU settings digitjax chooses, applied before jax starts its CPU backend.

jaxlib 0.10 hands convolutions to YNNPACK, whose convolutions run on one thread
and whose gradient convolutions are slow; Eigen's are faster here. Keeping YNNPACK
for everything but convolutions made the training step at batch 128 1.30x faster
for the default CNN and 2.66x for `strided_cnn` on the project's 2-core CPU
(`python experiments/xla_options.py --model cnn`, `--model strided_cnn`). XLA reads
XLA_FLAGS once, when the first computation starts its CPU backend, so this must run
before that; importing digitjax does it.

A flag the user already set in XLA_FLAGS wins; DIGITJAX_XLA_CPU_FLAGS=0 adds none.
GPU and TPU backends ignore XLA:CPU flags.
"""

from __future__ import annotations

import os
from importlib import metadata

CPU_FLAGS = {"--xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"}
MIN_JAXLIB = (0, 10)  # older jaxlibs reject flags they do not know


def _jaxlib_version() -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in metadata.version("jaxlib").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return (0, 0)


def apply_cpu_flags() -> None:
    if os.environ.get("DIGITJAX_XLA_CPU_FLAGS", "1") == "0" or _jaxlib_version() < MIN_JAXLIB:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    for name, value in CPU_FLAGS.items():
        if name not in flags:
            flags = f"{flags} {name}={value}".strip()
    os.environ["XLA_FLAGS"] = flags
