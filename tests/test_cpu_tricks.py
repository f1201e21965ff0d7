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
import os, sys
import jax, numpy as np, pandas as pd
from digitjax import train
from digitjax.models import weight_grad
from tests.test_cpu_tricks import BATCH, network_config
assert jax.device_count() == 1 and weight_grad.usable()
rows = pd.read_csv(sys.argv[1], nrows=BATCH)
images = rows.iloc[:, 1:].to_numpy(np.float32).reshape(-1, 28, 28, 1) / 255
labels = rows["label"].to_numpy(np.int32)
for name in sys.argv[2:]:
    state = train.create_train_state(network_config(name), jax.random.key(0),
                                     images.shape[1:], 10, 100)

    def loss(params):
        logits, _ = state.apply_fn({"params": params, "batch_stats": state.batch_stats},
                                   images, train=True, rngs={"dropout": jax.random.key(1)},
                                   mutable=["batch_stats"])
        return train.cross_entropy(logits, labels).mean()

    grads = {}
    for tricks in ("1", "0"):
        os.environ["DIGITJAX_CPU_CONV_TRICKS"] = tricks  # read when traced
        grads[tricks] = jax.jit(jax.grad(loss))(state.params)
    # against the largest gradient anywhere: a batch norm scale's gradient (~1e-6, a sum
    # that cancels) moves by 0.4% of itself with the order of the sums; the rest agree
    # to ~1e-6 relative, and a wrong input gradient would move whole layers' gradients
    top = max(float(np.abs(np.asarray(g)).max()) for g in jax.tree.leaves(grads["0"]))
    plain = dict(jax.tree_util.tree_leaves_with_path(grads["0"]))
    for path, fast in jax.tree_util.tree_leaves_with_path(grads["1"]):
        np.testing.assert_allclose(fast, plain[path], rtol=0, atol=2e-5 * top,
                                   err_msg=f"{name} {jax.tree_util.keystr(path)}")
print("ok")
"""


def test_on_one_device_the_kernels_train_like_plain_xla(shared_data):
    """The C++ kernels (`weight_grad`, `direct`) run where the process has one XLA device,
    as the shipped configs do (`cpu_devices = 1`); this pytest process has two. Every
    parameter's gradient, tricks on vs off, in the networks whose every conv but the
    first takes them: kernel_cnn:7 (VALID 7x7) and the default CNN (SAME 3x3)."""
    env = {**os.environ, "DIGITJAX_CPU_DEVICES": "1", "XLA_FLAGS": ""}
    done = subprocess.run(
        [sys.executable, "-c", ONE_DEVICE, str(shared_data / "digit-recognizer" / "train.csv"),
         "kernel_cnn:7", "cnn"], env=env, capture_output=True, text=True, check=False,
        cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
