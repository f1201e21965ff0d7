"""Every shipped network trains the same with the CPU speed tricks (models/conv.py,
models/pool.py) as without them: a few real training steps on real digits, compiled
both ways. A trick is a custom gradient, checked alone in test_models.py; this is the
whole step, where XLA fuses and recomputes around it (the stride-1 max pool's first
gradient divided by a tie count that XLA's recomputation could make zero: NaN
parameters after one step of `configs/inception_cnn.py`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

from digitjax import loop, train
from digitjax.configs import best, default, inception_cnn, kernel_cnn, seed

STEPS, BATCH = 2, 64


def network_config(name: str):
    """The config a user runs the network with, augmentation included."""
    if name == "seed_cnn":
        return seed.get_config()
    if name.startswith("kernel_cnn:"):
        return kernel_cnn.get_config(name.split(":")[1])
    if name == "inception_cnn":
        return inception_cnn.get_config()
    if name == "strided_cnn":
        return best.get_config()
    config = default.get_config()
    config.model = name
    return config


def losses(name: str, tricks: str, images: np.ndarray, labels: np.ndarray, monkeypatch):
    monkeypatch.setenv("DIGITJAX_CPU_CONV_TRICKS", tricks)  # read when the step is traced
    config = network_config(name)
    config.batch_size = BATCH
    state = train.create_train_state(config, jax.random.key(0), images.shape[1:], 10, 100)
    step, out = loop.make_train_fn(config, None), []
    for i in range(STEPS):
        batch = slice(i * BATCH, (i + 1) * BATCH)
        state, metrics = step(state, images[batch], labels[batch])
        out.append(float(metrics["loss"]))
    finite = all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(state.params))
    return out, finite


@pytest.mark.parametrize("name", ["cnn", "strided_cnn", "kernel_cnn:5", "inception_cnn",
                                  "resnet", "seed_cnn"])
def test_cpu_tricks_train_like_plain_xla(name, shared_data, monkeypatch):
    rows = pd.read_csv(shared_data / "digit-recognizer" / "train.csv", nrows=STEPS * BATCH)
    images = rows.iloc[:, 1:].to_numpy(np.uint8).reshape(-1, 28, 28, 1)
    labels = rows["label"].to_numpy(np.int32)
    fast, fast_finite = losses(name, "1", images, labels, monkeypatch)
    plain, plain_finite = losses(name, "0", images, labels, monkeypatch)
    assert fast_finite and plain_finite
    # the same sums in another order: float32 rounding apart, step after step
    np.testing.assert_allclose(fast, plain, rtol=1e-3)


ONE_DEVICE = """
import os, sys, types
import jax, numpy as np, pandas as pd
from digitjax.models import weight_grad
from tests.test_cpu_tricks import BATCH, STEPS, losses
assert jax.device_count() == 1 and weight_grad.usable()
rows = pd.read_csv(sys.argv[1], nrows=STEPS * BATCH)
images = rows.iloc[:, 1:].to_numpy(np.uint8).reshape(-1, 28, 28, 1)
labels = rows["label"].to_numpy(np.int32)
env = types.SimpleNamespace(setenv=os.environ.__setitem__)
for name in sys.argv[2:]:
    (fast, fast_finite), (plain, plain_finite) = (losses(name, t, images, labels, env)
                                                  for t in ("1", "0"))
    assert fast_finite and plain_finite, name
    np.testing.assert_allclose(fast, plain, rtol=1e-3, err_msg=name)
print("ok")
"""


def test_on_one_device_the_kernels_train_like_plain_xla(shared_data):
    """The C++ kernels (`weight_grad`, `direct`) run where the process has one XLA device,
    as the shipped configs do (`cpu_devices = 1`); this pytest process has two. The
    networks whose every conv takes them: kernel_cnn:7 (VALID 7x7) and the default CNN
    (SAME 3x3)."""
    env = {**os.environ, "DIGITJAX_CPU_DEVICES": "1", "XLA_FLAGS": ""}
    done = subprocess.run(
        [sys.executable, "-c", ONE_DEVICE, str(shared_data / "digit-recognizer" / "train.csv"),
         "kernel_cnn:7", "cnn"], env=env, capture_output=True, text=True, check=False,
        cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
