"""Shared fixtures: the real data beside the checkout, small CSVs cut from it, and
a runner for the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_compilation_cache

from digitjax import compile_cache

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


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory) -> Path:
    """One persistent XLA cache for the tests run in this pytest process, as `main` keeps
    one for a user's runs (compile_cache.enable): the in-process tests compile the same
    small training steps again and again, and XLA's compile is most of their time
    (test_train.py's three resume/restore tests: 82 s without it, 48 s with it starting
    empty). New for every session, shared by its xdist workers; a test about compiling
    itself switches it off (`without_compilation_cache`). Subprocess runs keep their own
    (the config's compilation_cache_dir)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers' basetemps share a parent
        base = base.parent
    path = base / "xla_cache"
    path.mkdir(exist_ok=True)
    compile_cache.enable(str(path))
    return path


@pytest.fixture
def without_compilation_cache():
    """Every program compiled by XLA in this test, none read from the cache."""
    jax.config.update("jax_enable_compilation_cache", False)
    jax_compilation_cache.reset_cache()  # it remembers whether it is used
    yield
    jax.config.update("jax_enable_compilation_cache", True)
    jax_compilation_cache.reset_cache()


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
