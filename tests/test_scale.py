"""Data parallelism on CPU: 8 fake devices (replicated and sharded) and two jax.distributed
processes on localhost must end with the single-device parameters."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from digitjax import checkpoint, train
from digitjax.configs import seed
from tests.conftest import REPO, run_main

# The seed model (no batch statistics, no dropout) with augmentation switched on,
# so the per-example random draws are checked across layouts too.
FLAGS = ["--config", "configs/seed.py", "--config.num_epochs=2", "--config.batch_size=64",
         "--config.val_fraction=0.2", "--config.augment.rotation_deg=10",
         "--config.augment.shift=0.1", "--config.progress=false",
         "--config.cpu_devices=0"]  # the device count XLA_FLAGS sets (configs set 1)


def devices_env(n: int) -> dict:
    return {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}


def run(workdir, digits_dir, *extra, env=None, **kw):
    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        return run_main(*FLAGS, f"--workdir={workdir}", f"--config.data_dir={digits_dir}",
                        *extra, **kw)
    finally:
        os.environ.clear()
        os.environ.update(old)


def final_params(workdir):
    config = seed.get_config()
    template = train.create_train_state(config, jax.random.key(0), (28, 28, 1), 10, 1)
    state, meta = checkpoint.load(workdir, lambda m: template, "latest")
    return state.params, meta


@pytest.fixture(scope="module")
def single(digits_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("single") / "run"
    proc = run(workdir, digits_dir, env=devices_env(1))
    assert proc.returncode == 0, proc.stderr
    return final_params(workdir)


def assert_same_params(workdir, single):
    params, meta = final_params(workdir)
    expected, expected_meta = single
    assert meta["epoch"] == expected_meta["epoch"] == 2
    # Float tolerance: the all-reduces sum in another order. Such last-bit differences
    # can flip a ReLU where a pre-activation sits at zero (on a background pixel it is
    # the bias alone, and biases start at zero), and Adam's m/sqrt(v) turns near-zero
    # gradients into whole steps, so a few weights may move further (CI on an AVX-512
    # host: 1 of 216,320 by 2.6e-5). Allow 1 in 10,000 outside rtol 2e-4 / atol 1e-5 and
    # none beyond 2 Adam steps (2e-3): a wrong gradient mean, data order or random draw
    # moves most weights.
    a, b = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)]) for t in (params, expected))
    assert a.shape == b.shape
    far = int(np.sum(~np.isclose(a, b, rtol=2e-4, atol=1e-5)))
    assert far <= a.size // 10_000, f"{far} of {a.size} weights differ"
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-3)


@pytest.mark.parametrize("flags", [[], ["--config.shard_params=true"]])
def test_eight_devices_match_one(single, digits_dir, tmp_path, flags):
    proc = run(tmp_path, digits_dir, *flags, env=devices_env(8))
    assert proc.returncode == 0, proc.stderr
    assert "devices: 8 cpu devices on the data mesh" in proc.stdout + proc.stderr
    assert_same_params(tmp_path, single)


def test_sharded_parameters_are_split_over_the_devices():
    code = ("import jax\n"
            "from digitjax.configs import seed\n"
            "from digitjax import parallel, train\n"
            "c = seed.get_config()\n"
            "s = parallel.init_state(lambda: train.create_train_state(c, jax.random.key(0), "
            "(28, 28, 1), 10, 1), parallel.data_mesh(), shard_params=True)\n"
            "k = s.params['Dense_0']['kernel']\n"
            "print(k.shape, k.addressable_shards[0].data.shape, "
            "s.opt_state[0].mu['Dense_0']['kernel'].addressable_shards[0].data.shape)\n")
    env = dict(os.environ, **devices_env(8))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(21632,", "10)", "(2704,", "10)", "(2704,", "10)"]


def test_batch_must_divide_by_devices(digits_dir, tmp_path):
    proc = run(tmp_path, digits_dir, "--config.batch_size=60", env=devices_env(8))
    assert proc.returncode == 2
    assert "config.batch_size: expected a multiple of the 8 devices, got 60" in proc.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(workdir, digits_dir, *extra):
    """Two jax.distributed processes with 2 CPU devices each, on localhost."""
    port = free_port()
    env = dict(os.environ, **devices_env(2))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "digitjax.main", *FLAGS, f"--workdir={workdir}",
             f"--config.data_dir={digits_dir}", f"--coordinator_address=127.0.0.1:{port}",
             "--num_processes=2", f"--process_id={i}", *extra],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    return outs


def test_two_processes_match_one(single, digits_dir, tmp_path):
    outs = run_two_processes(tmp_path, digits_dir)
    assert "epoch   2/2" in outs[0][0] and "epoch" not in outs[1][0]  # process 0 reports
    assert "devices: 4 cpu devices on the data mesh, 2 processes" in outs[0][0] + outs[0][1]
    assert_same_params(tmp_path, single)
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert len((tmp_path / "submission.csv").read_text().splitlines()) == 51


def test_resume_a_two_process_checkpoint_in_one_process(single, digits_dir, tmp_path):
    run_two_processes(tmp_path, digits_dir, "--stop_after_epoch=1")
    assert checkpoint.latest_meta(tmp_path)["epoch"] == 1
    assert not (tmp_path / "submission.csv").exists()
    proc = run(tmp_path, digits_dir, env=devices_env(1))
    assert proc.returncode == 0, proc.stderr
    assert "resumed" in proc.stdout and "epoch   2/2" in proc.stdout
    assert_same_params(tmp_path, single)
