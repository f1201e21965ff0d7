"""glibc malloc settings digitjax chooses for the CPU backend, applied when digitjax is
imported (trick `DIGITJAX_HOST_MEMORY`; `=0` leaves malloc as it is).

XLA:CPU allocates every step's buffers (activations, gradients, the kernels' scratch)
afresh and frees them at the end of the step. glibc serves a large request with a fresh
`mmap` and gives it back with `munmap`: above a threshold that adapts up to 32 MiB, and,
in a thread's own arena (a 64 MiB heap), whatever does not fit there. So the next step
touches new pages, which the kernel zeroes and maps one 4 KiB fault at a time: a
training step of the default CNN at batch 128 took ~8,700 page faults, `strided_cnn`'s
~19,500. Three settings keep that memory in the
process instead, so a step reuses the pages of the step before:

- `M_MMAP_MAX = 0`: no request is served by mmap;
- `M_ARENA_MAX = 1`: every thread allocates from the main (brk) heap, since a thread's
  own arena still falls back to mmap where its heap cannot hold a request (with only
  `M_MMAP_MAX = 0`, the default CNN's faults went, `strided_cnn`'s stayed);
- `M_TRIM_THRESHOLD` at its maximum: freed memory at the top of the heap is not
  given back to the kernel.

Measured on the project's 2-core CPU (training step at batch 128, one device, median of
5 x 10 steps, one process per setting, alternated; `python experiments/host_memory.py`,
experiments/results/host_memory.md): the default CNN 55.7 -> 40.7 ms (1.37x),
`strided_cnn` 1.22x, kernel_cnn:3 1.17x, inception_cnn 1.26x; kernel_cnn:7 1.00x (its
buffers happened to stay mapped: ~400 faults per step either way). Results are
bit-identical (quick.py's test probabilities with and without).

The cost is memory. The process keeps what it has used, and the one heap fragments
(small allocations land in freed large blocks) before it settles: a loop of one
convolution's gradient at 128x28x28x32 settled at 1,050 MB resident after ~100 calls,
against 321 MB with mmap. Whole runs grew less: configs/quick.py's peak 686 -> 724 MB,
the training steps above 5-28% (host_memory.md's last column).

Only where CPU is the backend (cpu_flags.cpu_is_the_backend) and the C library is
glibc. The arena limit binds only threads whose first allocation comes after it, so
this runs first thing when digitjax is imported, before jax starts XLA's threads.
"""

from __future__ import annotations

import ctypes
import os

from digitjax.cpu_flags import cpu_is_the_backend

# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
SETTINGS = ((M_MMAP_MAX, 0), (M_ARENA_MAX, 1), (M_TRIM_THRESHOLD, 2**31 - 1))
SWITCH = "DIGITJAX_HOST_MEMORY"


def glibc_version() -> str | None:
    """"glibc 2.36", or None where the C library is another (or unknown)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError, AttributeError):
        return None


def apply_host_memory_settings() -> bool:
    """Applies SETTINGS with mallopt; returns whether they were applied."""
    if os.environ.get(SWITCH, "1") == "0" or not glibc_version() or not cpu_is_the_backend():
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS)
