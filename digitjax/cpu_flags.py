"""XLA:CPU settings digitjax chooses, applied before jax starts its CPU backend.

jaxlib 0.10 hands convolutions to YNNPACK, whose convolutions run on one thread
and whose gradient convolutions are slow; Eigen's are faster here. Keeping YNNPACK
for everything but convolutions made the training step at batch 128 1.30x faster
for the default CNN and 2.66x for `strided_cnn` on the project's 2-core CPU
(`python experiments/xla_options.py --model cnn`, `--model strided_cnn`). XLA reads
XLA_FLAGS once, when the first computation starts its CPU backend, so this must run
before that; importing digitjax does it.

An unknown flag in XLA_FLAGS aborts every computation, on every backend, so the flag
is added only where it cannot hurt:
- the installed jaxlib is one whose XLA:CPU was checked to accept it (TESTED_JAXLIB:
  major.minor versions this flag ran under); a newer jaxlib gets no flag until a
  session measures it and adds the version;
- CPU will be the backend: JAX_PLATFORMS names cpu first, or no GPU/TPU plugin is
  installed (a GPU or TPU run never reads an XLA:CPU flag, and must never die of one).
A flag the user already set in XLA_FLAGS wins; DIGITJAX_XLA_CPU_FLAGS=0 adds none.
"""

from __future__ import annotations

import importlib.util
import os
from importlib import metadata

CPU_FLAGS = {"--xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"}
TESTED_JAXLIB = {(0, 10)}  # jaxlib major.minor whose XLA:CPU accepted CPU_FLAGS here
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                       "jax_rocm7_plugin", "libtpu")


def jaxlib_version() -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in metadata.version("jaxlib").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return (0, 0)


def cpu_is_the_backend() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(importlib.util.find_spec(p) for p in ACCELERATOR_PLUGINS)


def apply_cpu_flags() -> None:
    if (os.environ.get("DIGITJAX_XLA_CPU_FLAGS", "1") == "0"
            or jaxlib_version() not in TESTED_JAXLIB or not cpu_is_the_backend()):
        return
    flags = os.environ.get("XLA_FLAGS", "")
    for name, value in CPU_FLAGS.items():
        if name not in flags:
            flags = f"{flags} {name}={value}".strip()
    os.environ["XLA_FLAGS"] = flags
