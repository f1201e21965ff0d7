"""The compiled training step of a config in float32 and in bfloat16, timed in turns
in one process (a shared CPU's load hits both alike; compare the ratio).

    python experiments/precision_step.py [--model cnn] [--rounds 5] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from digitjax import loop, parallel, train
from digitjax.configs import default


def step_fn(model: str, dtype: str, batch: int):
    config = default.get_config()
    config.model, config.dtype, config.batch_size = model, dtype, batch
    mesh = parallel.data_mesh()
    state = parallel.init_state(
        lambda: train.create_train_state(config, jax.random.key(0), (28, 28, 1), 10, 100), mesh)
    return loop.make_train_fn(config, None, jax.tree.map(lambda x: x.sharding, state)), state


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, args.batch).astype(np.int32)
    runs = {d: step_fn(args.model, d, args.batch) for d in ("float32", "bfloat16")}
    states, times = {}, {d: [] for d in runs}
    for d, (fn, state) in runs.items():  # compile and warm up
        start = time.perf_counter()
        state, m = fn(state, images, labels)
        jax.block_until_ready(m)
        states[d] = state
        print(f"{d}: first step (compile) {time.perf_counter() - start:.1f} s")
    for _ in range(args.rounds):
        for d, (fn, _) in runs.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                states[d], m = fn(states[d], images, labels)
            jax.block_until_ready(m)
            times[d].append((time.perf_counter() - start) / args.steps * 1000)
    for d, t in times.items():
        print(f"{args.model} {d}: {statistics.median(t):.1f} ms/step (median of {args.rounds} "
              f"rounds of {args.steps}; all: {', '.join(f'{x:.1f}' for x in t)})")
    ratio = statistics.median(times["bfloat16"]) / statistics.median(times["float32"])
    print(f"bfloat16 / float32 step time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
