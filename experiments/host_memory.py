"""digitjax's malloc settings (`digitjax/host_memory.py`) off vs on: the training step and
inference at batch 128, each setting in its own process (mallopt is process-wide and
must run before XLA's threads allocate), the two alternated round by round.

    python experiments/host_memory.py [--models cnn,strided_cnn] [--rounds 3]

Per process: the median of 5 x 10 training steps, of 5 x 10 inference calls, the
page faults per training step (getrusage's minor faults) and the process's peak
resident memory. The ratio off/on is taken per round; its median is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from common import cpu_name, step_config, write_results


def worker(model: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from digitjax import loop, parallel, train

    config = step_config(model)
    parallel.set_cpu_devices(config.cpu_devices)  # the shipped config's, as `main` applies it
    state = train.create_train_state(config, jax.random.key(0), (28, 28, 1), 10, 100)
    step = loop.make_train_fn(config, None)
    infer = jax.jit(lambda s, im: train.apply_model(s, im.astype("float32") / 255.0))
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (128, 28, 28, 1), np.uint8))
    y = jnp.zeros((128,), jnp.int32)
    for _ in range(5):
        state, m = step(state, x, y)
        jax.block_until_ready(infer(state, x))
    jax.block_until_ready(m)

    def timed(run) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            jax.block_until_ready(run())
            times.append((time.perf_counter() - start) / 10)
        return statistics.median(times)

    def train_10():
        nonlocal state
        for _ in range(10):
            state, metrics = step(state, x, y)
        return metrics

    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    train_s = timed(train_10)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 50
    infer_s = timed(lambda: [infer(state, x) for _ in range(10)])
    return {"train_ms": 1e3 * train_s, "infer_ms": 1e3 * infer_s, "faults": faults,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run(model: str, on: bool) -> dict:
    env = dict(os.environ, DIGITJAX_HOST_MEMORY="1" if on else "0")
    out = subprocess.run([sys.executable, __file__, "--worker", model], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def med(runs: list[dict], key: str) -> float:
    return statistics.median(x[key] for x in runs)


def ratio(off: list[dict], on: list[dict], key: str) -> str:
    rs = sorted(x[key] / y[key] for x, y in zip(off, on, strict=True))
    return f"**{statistics.median(rs):.2f}** ({rs[0]:.2f}-{rs[-1]:.2f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="cnn,strided_cnn")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="host_memory")
    ap.add_argument("--worker")
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker)))
        return
    rows = []
    for model in a.models.split(","):
        off, on = [], []
        for r in range(a.rounds):
            off.append(run(model, False))
            on.append(run(model, True))
            print(f"{model} round {r + 1}: off {off[-1]}, on {on[-1]}", flush=True)

        rows.append(f"| {model} | {med(off, 'train_ms'):.1f} | {med(on, 'train_ms'):.1f} | "
                    f"{ratio(off, on, 'train_ms')} | {med(off, 'infer_ms'):.1f} | "
                    f"{med(on, 'infer_ms'):.1f} | {ratio(off, on, 'infer_ms')} | "
                    f"{med(off, 'faults'):.0f} / {med(on, 'faults'):.0f} | "
                    f"{med(off, 'peak_mib'):.0f} / {med(on, 'peak_mib'):.0f} |")
    table = (f"{cpu_name()}, {a.rounds} rounds, batch 128, one process per setting and "
             "round.\n\n| model | training ms, off | on | off/on | inference ms, off | on | "
             "off/on | faults per training step, off / on | peak MiB, off / on |\n"
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n")
    write_results(a.out, "digitjax's malloc settings off vs on (DIGITJAX_HOST_MEMORY=0/1)",
                  table, "python experiments/host_memory.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
