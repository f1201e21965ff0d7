"""Two settings of DIGITJAX_CPU_CONV_TRICKS timed against each other in one process:
the training step (as the loop runs it: batch 128 split over the data mesh) and
inference, each compiled under both settings, then timed in alternating rounds.

    python experiments/paired_tricks.py --model inception_cnn --a 0 --b 1 [--rounds 15]
    python experiments/paired_tricks.py --model strided_cnn --a 1 --b 1 --b-devices 1

With --b-devices N, B runs on the first N of the process's XLA devices (its state
and batch placed on a mesh of those), A on all of them (digitjax's 2-device split of
a 2-core CPU): the split against one device using every core, paired the same way.

A fresh process per setting (`xla_options.py`) sees the machine's drift between
processes; here each round times A then B back to back, and the ratio is taken per
round: its median and quartiles over the rounds are what is reported. The tricks are
read when a step is traced, so both compile in this one process. Also checks that
both give finite losses and the same inference output to rounding.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import numpy as np
from common import step_config, write_results
from jax.sharding import Mesh

from digitjax import loop, parallel, train


def compiled(config, tricks: str, mesh, xs, ys):
    """The training step, its state after one step, and inference, traced under `tricks`."""
    os.environ["DIGITJAX_CPU_CONV_TRICKS"] = tricks
    state = jax.device_put(train.create_train_state(config, jax.random.key(0), (28, 28, 1),
                                                    10, 100), parallel.replicated(mesh))
    step = loop.make_train_fn(config, None)
    state, metrics = step(state, xs, ys)
    infer = jax.jit(lambda s, im: train.apply_model(s, im.astype("float32") / 255.0))
    jax.block_until_ready(infer(state, xs))
    return step, state, infer, float(metrics["loss"])


def per_call(fn, calls: int) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(calls))
    return (time.perf_counter() - start) / calls


def summary(a: list[float], b: list[float]) -> str:
    ratios = sorted(x / y for x, y in zip(a, b, strict=True))
    q = len(ratios) // 4
    return (f"{1e3 * statistics.median(a):.1f} | {1e3 * statistics.median(b):.1f} | "
            f"**{statistics.median(ratios):.2f}** | {ratios[q]:.2f}-{ratios[-1 - q]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="inception_cnn")
    ap.add_argument("--a", default="0", help="DIGITJAX_CPU_CONV_TRICKS of the baseline")
    ap.add_argument("--b", default="1", help="DIGITJAX_CPU_CONV_TRICKS compared with it")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--b-devices", type=int, default=0,
                    help="B on the first N XLA devices (0: all, as A)")
    ap.add_argument("--out", default="", help="results file name (default paired_<model>)")
    a = ap.parse_args()
    config, mesh = step_config(a.model), parallel.data_mesh()
    if not (0 <= a.b_devices <= len(jax.devices()) and 128 % (a.b_devices or 1) == 0):
        ap.error(f"--b-devices: expected 0 or a divisor of 128 up to {len(jax.devices())}")
    mesh_b = Mesh(np.asarray(jax.devices()[:a.b_devices or None]), (parallel.DATA_AXIS,))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (128, 28, 28, 1), np.uint8)
    labels = rng.integers(0, 10, (128,)).astype(np.int32)
    batch = {k: (parallel.global_array(images, m), parallel.global_array(labels, m))
             for k, m in (("a", mesh), ("b", mesh_b))}
    step_a, state_a, infer_a, loss_a = compiled(config, a.a, mesh, *batch["a"])
    step_b, state_b, infer_b, loss_b = compiled(config, a.b, mesh_b, *batch["b"])
    # the steps donate their state; both infer on one copy of A's, placed on each mesh
    frozen = {"a": jax.tree.map(lambda v: v.copy(), state_a)}
    frozen["b"] = jax.device_put(frozen["a"], parallel.replicated(mesh_b))
    out_a = np.asarray(infer_a(frozen["a"], batch["a"][0]))
    out_b = np.asarray(infer_b(frozen["b"], batch["b"][0]))
    states = {"a": state_a, "b": state_b}

    def steps(key, fn):
        def run(calls):
            for _ in range(calls):
                states[key], metrics = fn(states[key], *batch[key])
            return metrics
        return run

    def infers(key, fn):
        def run(calls):
            for _ in range(calls):
                out = fn(frozen[key], batch[key][0])
            return out
        return run

    times = {k: [] for k in ("train a", "train b", "infer a", "infer b")}
    for _ in range(a.rounds):
        times["train a"].append(per_call(steps("a", step_a), 8))
        times["train b"].append(per_call(steps("b", step_b), 8))
        times["infer a"].append(per_call(infers("a", infer_a), 16))
        times["infer b"].append(per_call(infers("b", infer_b), 16))
    table = (f"A: DIGITJAX_CPU_CONV_TRICKS={a.a} on {mesh.size} XLA device(s); "
             f"B: DIGITJAX_CPU_CONV_TRICKS={a.b} on {mesh_b.size}; "
             f"{a.model}, batch 128, {a.rounds} rounds "
             f"(8 training steps, 16 inference calls each), load average "
             f"{os.getloadavg()[0]:.1f} at the end.\n\n"
             "| pass | A ms | B ms | A/B time (B's speed-up), median | quartiles |\n"
             "| --- | --- | --- | --- | --- |\n"
             f"| training step | {summary(times['train a'], times['train b'])} |\n"
             f"| inference | {summary(times['infer a'], times['infer b'])} |\n\n"
             f"First step's loss A {loss_a:.6f}, B {loss_b:.6f}; largest inference "
             f"difference {np.abs(out_a - out_b).max():.2e}; non-finite outputs "
             f"{int((~np.isfinite(out_a)).sum())} / {int((~np.isfinite(out_b)).sum())}.\n")
    command = (f"python experiments/paired_tricks.py --model {a.model} --a {a.a} --b {a.b} "
               f"--rounds {a.rounds}" + (f" --b-devices {a.b_devices}" if a.b_devices else "")
               + (f" --out {a.out}" if a.out else ""))
    title = f"CPU tricks {a.a} vs {a.b}" + (f", {mesh.size} XLA devices vs {mesh_b.size}"
                                             if a.b_devices else "")
    write_results(a.out or f"paired_{'devices_' * bool(a.b_devices)}{a.model}", title, table,
                  command)


if __name__ == "__main__":
    main()
