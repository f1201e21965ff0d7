"""The `weight_grad` CPU trick: a convolution's weight gradient as a direct kernel
(weight_grad.cc, an XLA FFI custom call), where XLA:CPU hands it to Eigen as a
convolution whose "kernel" is the output gradient and runs it far below the matmul
peak (on the AVX-512 host, 1.6-3.8x PyTorch's oneDNN time per layer; every other pass
is at parity: experiments/README.md, "on the AVX-512 host the gap is the weight
gradient").

This module also builds and registers digitjax's C++ kernels, this one and
direct_conv.cc's (models/direct_conv.py), as one library: compiled on first use with
the machine's C++ compiler (`c++`, or $CXX), for this CPU (`-march=native`), against the
FFI headers jaxlib ships, into `$DIGITJAX_KERNEL_CACHE` (default
`~/.cache/digitjax/kernels`; one file per version of the sources, flags, jaxlib and CPU,
written atomically), and loaded from there afterwards. Where it cannot be built,
digitjax warns once and lax's convolutions run instead. It takes
float32 convolutions; output channels that are not a multiple of the vector width (8,
or 16 with AVX-512) are padded with zeros up to one (the CPU-width `kernel_cnn` members'
24-66 channels).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax import lax

SOURCE_DIR = Path(__file__).parent
SOURCES = tuple(SOURCE_DIR / name for name in ("weight_grad.cc", "direct_conv.cc", "kernels.h"))
TARGET = "digitjax_conv_weight_grad"
DIRECT_TARGET = "digitjax_direct_conv"  # models/direct_conv.py
WINOGRAD_TARGET = "digitjax_winograd_conv"  # models/winograd.py
MAX_CHUNKS = 8  # partial sums over the batch that weight_grad.cc adds in order
_lock = threading.Lock()
_state: dict[str, object] = {}  # "lanes": int once registered, "error": str if it failed


FLAGS = ("-O3", "-march=native", "-std=c++17", "-fPIC", "-w")
# GCC only: contract every `acc += b * w` into one fused multiply-add. Tuned for AMD Zen
# (-march=native there), GCC 12 leaves a block with a single accumulator as a multiply
# and an add, rounded twice, while larger blocks fuse: an output's bits then depended on
# which block computed it (on its image's place in the batch, or on how many features
# sat beside it). tests/test_direct_conv.py and test_weight_grad.py check that they
# do not.
GCC_FLAGS = ("--param", "avoid-fma-max-bits=0")


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    return next((line for line in text.splitlines() if line.startswith("flags")), "")


def _library_path() -> Path:
    cache = Path(os.environ.get("DIGITJAX_KERNEL_CACHE")
                 or Path.home() / ".cache" / "digitjax" / "kernels")
    key = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES) + jaxlib.__version__.encode()
                         + " ".join(FLAGS + GCC_FLAGS).encode()
                         + _cpu_flags().encode()).hexdigest()[:16]
    return cache / f"conv_kernels-{key}.so"


def _run_all(commands: list[list[str]]) -> None:
    """Runs the commands side by side; raises with the first failure's message."""
    running = [(cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)) for cmd in commands]
    errors = [(cmd, proc.communicate()[1], proc.returncode) for cmd, proc in running]
    for cmd, err, code in errors:  # all have exited: none is left writing into the build dir
        if code:
            raise RuntimeError(f"{' '.join(cmd)} failed: {err.strip()[-500:]}")


def _build(path: Path) -> None:
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler:
        raise RuntimeError("no C++ compiler (c++, g++ or $CXX) on this machine")
    path.parent.mkdir(parents=True, exist_ok=True)
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             check=False).stdout
    flags = [*FLAGS, *(() if "clang" in version.lower() else GCC_FLAGS),
             f"-I{jax.ffi.include_dir()}"]
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        sources = [p for p in SOURCES if p.suffix == ".cc"]
        objects = [str(Path(tmp) / f"{p.stem}.o") for p in sources]
        out = Path(tmp) / path.name
        _run_all([[compiler, *flags, "-c", str(p), "-o", o]  # side by side: 6-9 s each
                  for p, o in zip(sources, objects, strict=True)])
        _run_all([[compiler, "-shared", *objects, "-o", str(out)]])
        os.replace(out, path)  # atomic: a concurrent process loads a whole file or builds


def _register() -> int:
    """Builds (once per machine) and registers the kernels; their vector width."""
    path = _library_path()
    if not path.exists():
        _build(path)
    library = ctypes.cdll.LoadLibrary(str(path))
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.DigitjaxConvWeightGrad),
                                platform="cpu")
    jax.ffi.register_ffi_target(DIRECT_TARGET, jax.ffi.pycapsule(library.DigitjaxDirectConv),
                                platform="cpu")
    jax.ffi.register_ffi_target(WINOGRAD_TARGET,
                                jax.ffi.pycapsule(library.DigitjaxWinogradConv), platform="cpu")
    return int(library.DigitjaxWeightGradLanes())  # 16 where it was built for AVX-512


def lanes() -> int | None:
    """The kernel's vector width once registered, or None where it cannot be built
    (warned once, with the reason)."""
    with _lock:
        if not _state:
            try:
                _state["lanes"] = _register()
            except Exception as err:  # noqa: BLE001 - any failure falls back to lax
                _state["error"] = str(err)
                warnings.warn(f"digitjax: the C++ kernels (weight_grad, direct) are not "
                              f"available, lax's convolutions run instead ({err})",
                              stacklevel=2)
        return _state.get("lanes")  # type: ignore[return-value]


def usable() -> bool:
    """Whether models use the kernel in this process: one XLA device in all, and the
    kernel built. A custom call has no partitioning rule, so on a mesh of 2 or more
    devices XLA gathers its operands, the whole batch, onto every device and each
    computes the whole gradient: the default CNN's and strided_cnn's steps on
    digitjax's 2-device CPU split ran 0.83x and 0.87x as fast with it as without
    (experiments/README.md, session 15); there lax's gradient runs."""
    return jax.device_count() == 1 and lanes() is not None


def takes(x: jax.Array, w: jax.Array, g: jax.Array) -> bool:
    """Whether the kernel computes this convolution's weight gradient here: `usable`,
    float32, and more than one output pixel. A one-pixel output's weight gradient is a
    matmul (images x taps*channels by images x features), which lax's runs 5x faster:
    strided_cnn's 4x4x64 -> 1x1x128 layer at batch 128, 0.43 ms against the kernel's
    2.47 (AVX2, Zen 3; a one-off micro-benchmark, experiments/README.md session 21)."""
    return (all(a.dtype == jnp.float32 for a in (x, w, g)) and g.shape[1] * g.shape[2] > 1
            and usable())


def pad_to_vectors(a: jax.Array) -> jax.Array:
    """`a` with zeros added along its last axis up to a whole number of the kernels'
    vectors (8 floats, or 16 with AVX-512)."""
    wide = -(-a.shape[-1] // lanes()) * lanes()  # type: ignore[operator]
    return a if wide == a.shape[-1] else jnp.pad(
        a, [(0, 0)] * (a.ndim - 1) + [(0, wide - a.shape[-1])])


def conv_weight_grad(x: jax.Array, g: jax.Array, kernel_hw: tuple[int, int], stride: int,
                     pads) -> jax.Array:
    """The HWIO weight gradient of a stride-`stride` NHWC/HWIO convolution of `x`
    (padded by `pads`, (low, high) pairs for H and W) whose output gradient is `g`."""
    if lanes() is None:
        raise RuntimeError(f"the weight_grad kernel is not available: {_state['error']}")
    kh, kw = kernel_hw
    need_h = (g.shape[1] - 1) * stride + kh  # the input rows the output reads
    need_w = (g.shape[2] - 1) * stride + kw
    xp = lax.pad(x, jnp.zeros((), x.dtype),  # the high side may be negative: a crop
                 ((0, 0, 0), (pads[0][0], need_h - x.shape[1] - pads[0][0], 0),
                  (pads[1][0], need_w - x.shape[2] - pads[1][0], 0), (0, 0, 0)))
    features = g.shape[3]
    g = pad_to_vectors(g)  # the padded features' gradient is dropped below
    out = jax.ShapeDtypeStruct((kh, kw, x.shape[3], g.shape[3]), jnp.float32)
    # the chunks' partial sums in a buffer XLA allocates, rather than one the kernel
    # would allocate (and page in) on every call
    scratch = jax.ShapeDtypeStruct((max(min(x.shape[0], MAX_CHUNKS), 1), *out.shape),
                                   jnp.float32)
    dw, _ = jax.ffi.ffi_call(TARGET, (out, scratch), vmap_method="sequential")(
        xp, g, stride=np.int64(stride))
    return dw[..., :features]
