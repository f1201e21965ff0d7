"""Atomic output files: a reader never sees a half-written file, and a failed
write leaves the earlier version in place.

Paths are `etils.epath` paths, so a `gs://` workdir stays a bucket URL. Locally the
file is written beside its target and renamed onto it; an object store replaces an
object whole on upload, so there the bytes are written to the object directly.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from etils import epath

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: epath.PathLike, write: Callable[[str], None]) -> epath.Path:
    """Calls `write(tmp_path)`, then renames the temp file onto `path` (a URL: uploads
    the temp file's bytes)."""
    if "://" in str(path):
        path = epath.Path(path)
        with tempfile.TemporaryDirectory() as folder:
            tmp = os.path.join(folder, path.name)
            write(tmp)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(Path(tmp).read_bytes())
        return path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path: epath.PathLike, text: str) -> epath.Path:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    return atomic_write(path, write)


def write_bytes(path: epath.PathLike, data: bytes) -> epath.Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write)


def write_json(path: epath.PathLike, obj: Any) -> epath.Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_npy(path: epath.PathLike, array: np.ndarray) -> epath.Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    return atomic_write(path, write)


def write_csv(path: epath.PathLike, frame) -> epath.Path:
    """Writes a pandas DataFrame without its index."""
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
