"""XLA:CPU settings digitjax chooses, applied before jax starts its CPU backend.

jaxlib 0.10 hands convolutions to YNNPACK, whose convolutions run on one thread
and whose gradient convolutions are slow; Eigen's are faster here. Keeping YNNPACK
for everything but convolutions made the training step at batch 128 1.30x faster
for the default CNN and 2.66x for `strided_cnn` on the project's 2-core CPU
(`python experiments/xla_options.py --model cnn`, `--model strided_cnn`). XLA reads
XLA_FLAGS once, when the first computation starts its CPU backend, so this must run
before that; importing digitjax does it.

On a CPU with 2 or more cores the host is also split into 2 XLA devices, and the
loop's data mesh (`parallel.data_mesh`) gives each half of every batch: two small
single-stream programs beat one program whose ops are each split over both cores.
Measured on the project's 2-core CPU, training step at batch 128, 2 devices vs 1
(`python experiments/xla_options.py --model M --only ...`, experiments/results/
devices_*.md): cnn 1.44x, kernel_cnn:3 1.08x, kernel_cnn:7 1.10x, strided_cnn and
kernel_cnn:5 1.00x, inception_cnn 0.94x (older sessions; the default CNN 1.20x and, paired
in one process, 1.05x in later ones). Where batch norm follows every conv, each layer's
batch statistics are an all-reduce across the two devices, forward and back, and those
syncs cost more than the split gains: configs/best.py and the configs built on it set
`config.cpu_devices = 1` (measured there and in experiments/README.md, session 6), and
since the `weight_grad` kernel (models/weight_grad.py, one device only) configs/default.py
does too (its CNN 1.10x faster on one device with the kernel than split without). More
than 2 was not measured, so it is not chosen; DIGITJAX_CPU_DEVICES=N sets another count
(1: one device, as jax's default) where the config leaves the count to digitjax
(`config.cpu_devices = 0`); a config's own count wins over both.
A computation not placed on the mesh (e.g. a plain `jax.jit` of `train_step` on
uncommitted arrays) runs on device 0 as before. A step with a collective across the two
devices must not be queued more than ~30 deep without a read-back: jax 0.10.2's CPU
client then aborts the process (`experiments/deep_queue.py`; `loop.FETCH_EVERY`).

An unknown flag in XLA_FLAGS aborts every computation, on every backend, so the flag
is added only where it cannot hurt:
- the installed jaxlib is one whose XLA:CPU was checked to accept it (TESTED_JAXLIB:
  major.minor versions this flag ran under); a newer jaxlib gets no flag until a
  session measures it and adds the version;
- CPU will be the backend: JAX_PLATFORMS names cpu first, or no GPU/TPU plugin is
  installed (a GPU or TPU run never reads an XLA:CPU flag, and must never die of one).
A flag the user already set in XLA_FLAGS wins (jax's own `jax_num_cpu_devices` wins
over the device count); DIGITJAX_XLA_CPU_FLAGS=0 adds none.
"""

from __future__ import annotations

import importlib.util
import os
from importlib import metadata

CPU_FLAGS = {"--xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"}
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
SPLIT_MARK = "DIGITJAX_CPU_SPLIT"  # the device count flag digitjax added; children inherit it
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


def cpu_device_count() -> int:
    """2 devices where there are 2 or more cores (see above), else 1;
    DIGITJAX_CPU_DEVICES overrides."""
    chosen = os.environ.get("DIGITJAX_CPU_DEVICES", "").strip()
    if chosen:
        if not chosen.isdigit() or int(chosen) < 1:
            raise SystemExit(f"error: DIGITJAX_CPU_DEVICES={chosen!r}: expected an integer >= 1")
        return int(chosen)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 2 if (cores or 1) >= 2 else 1


def host_split_by_digitjax() -> bool:
    """Whether the CPU device count is digitjax's choice (here or in a parent process
    whose environment this one inherited), not the user's."""
    mark = os.environ.get(SPLIT_MARK, "")
    return bool(mark) and mark in os.environ.get("XLA_FLAGS", "").split()


def apply_cpu_flags() -> None:
    if (os.environ.get("DIGITJAX_XLA_CPU_FLAGS", "1") == "0"
            or jaxlib_version() not in TESTED_JAXLIB or not cpu_is_the_backend()):
        return
    flags = os.environ.get("XLA_FLAGS", "")
    wanted = dict(CPU_FLAGS)
    count = cpu_device_count()
    if count > 1:
        wanted[DEVICE_COUNT_FLAG] = str(count)
    for name, value in wanted.items():
        if name not in flags:
            flags = f"{flags} {name}={value}".strip()
            if name == DEVICE_COUNT_FLAG:
                os.environ[SPLIT_MARK] = f"{name}={value}"
    os.environ["XLA_FLAGS"] = flags
