"""digitjax's malloc settings (digitjax/host_memory.py): a step that allocates a large
buffer reuses the pages of the call before instead of faulting in fresh ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from digitjax import host_memory

# What XLA:CPU does every step, from a thread other than the main one (as XLA's
# threads do): allocate a 48 MiB buffer, write it, free it; the page faults per round
# after warm-up. argv[1] is imported before digitjax (as a user's script might).
PROBE = """
import ctypes, importlib, json, resource, sys, threading
importlib.import_module(sys.argv[1])
import digitjax
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size, out = 48 << 20, []
def rounds():
    for i in range(13):
        if i == 3:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        p = libc.malloc(size)
        ctypes.memset(p, 1, size)
        libc.free(p)
    out.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
t = threading.Thread(target=rounds)
t.start()
t.join()
print(json.dumps(out[0]))
"""


def faults_per_round(setting: str, first: str = "os") -> float:
    env = dict(os.environ, DIGITJAX_HOST_MEMORY=setting)
    out = subprocess.run([sys.executable, "-c", PROBE, first], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_large_buffers_reuse_their_pages():
    assert host_memory.glibc_version()  # the project's hosts and CI run glibc
    # 48 MiB is 12,288 pages of 4 KiB: without the settings each round maps them afresh
    assert faults_per_round("0") > 12_000
    assert faults_per_round("1") < 10
    # numpy imported first (its BLAS threads started) changes nothing
    assert faults_per_round("1", first="numpy") < 10


def test_switched_off_by_the_environment_or_another_backend(monkeypatch):
    monkeypatch.setenv("DIGITJAX_HOST_MEMORY", "0")
    assert not host_memory.apply_host_memory_settings()
    monkeypatch.setenv("DIGITJAX_HOST_MEMORY", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    assert not host_memory.apply_host_memory_settings()
