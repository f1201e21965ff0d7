"""Shared fixtures: the real data beside the checkout, small CSVs cut from it, and
a runner for the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """`$DIGITJAX_DATA`, else ../shared/data beside the checkout. Missing data is a
    failure, never a skip: the end-to-end tests must run."""
    path = Path(os.environ.get("DIGITJAX_DATA", REPO.parent / "shared" / "data"))
    assert (path / "digit-recognizer" / "train.csv").is_file(), (
        f"the shared data is not at {path}; set DIGITJAX_DATA to the folder holding "
        "digit-recognizer/train.csv"
    )
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_data_dir()


def head_lines(path: Path, n: int) -> list[str]:
    with open(path) as f:
        return [next(f) for _ in range(n)]


@pytest.fixture(scope="session")
def digits_dir(shared_data, tmp_path_factory) -> Path:
    """A small digit-recognizer folder: the first 640 rows of train.csv and 50 of test.csv."""
    out = tmp_path_factory.mktemp("digits")
    src = shared_data / "digit-recognizer"
    (out / "train.csv").write_text("".join(head_lines(src / "train.csv", 641)))
    (out / "test.csv").write_text("".join(head_lines(src / "test.csv", 51)))
    return out


def run_main(*args: str, cwd: Path = REPO, env: dict | None = None
             ) -> subprocess.CompletedProcess:
    """`python -m digitjax.main ARGS` in a subprocess, as a user would run it (`env`:
    variables to set on top of this process's)."""
    env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "digitjax.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def trained_workdir(digits_dir, tmp_path_factory) -> Path:
    """A workdir trained for one epoch of the seed model on `digits_dir`."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    proc = train_seed_one_epoch(workdir, digits_dir)
    assert proc.returncode == 0, proc.stderr
    return workdir


def train_seed_one_epoch(workdir: Path, digits_dir: Path, *flags: str
                         ) -> subprocess.CompletedProcess:
    """One epoch of configs/seed.py on `digits_dir` (20% held out) into `workdir`, its
    compilation cache beside it, with `flags` added."""
    return run_main("--config", "configs/seed.py", f"--workdir={workdir}",
                    f"--config.data_dir={digits_dir}", "--config.num_epochs=1",
                    "--config.val_fraction=0.2", *flags,
                    f"--config.compilation_cache_dir={workdir.parent / 'xla_cache'}")
