"""Every stride-1 convolution a model's training step hands the direct kernel (forward
passes and input gradients, `conv._stride1_conv`), timed on the direct kernel and on
`winograd` in alternating rounds, beside Winograd's rows of products over the direct
kernel's (`winograd.row_ratio`): what `winograd.MAX_ROW_RATIO` is chosen from.

    DIGITJAX_CPU_DEVICES=1 python experiments/winograd_layers.py --models cnn,kernel_cnn:7

One XLA device (the kernels run only there). Convolutions winograd cannot compute at
all (a kernel height outside KERNEL_SIZES, fewer than MIN_CHANNELS channels) are left
out; the row-ratio limit is lifted while timing so that both sides of it are measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import cpu_name, step_config, write_results

from digitjax import loop, train
from digitjax.models import conv, direct_conv, winograd


def stride1_calls(model: str) -> list[tuple[tuple, tuple, tuple]]:
    """(x shape, w shape, pads) of each `_stride1_conv` call in `model`'s training step."""
    calls, inner = [], conv._stride1_conv

    def spy(x, w, pads):
        calls.append((x.shape, w.shape, tuple(map(tuple, pads))))
        return inner(x, w, pads)

    conv._stride1_conv = spy
    try:
        config = step_config(model)
        state = train.create_train_state(config, jax.random.key(0), (28, 28, 1), 10, 100)
        images = jnp.zeros((config.batch_size, 28, 28, 1), jnp.uint8)
        loop.make_train_fn(config, None).lower(state, images, jnp.zeros((128,), jnp.int32))
    finally:
        conv._stride1_conv = inner
    # in order, once each; the step's batch only (create_train_state traces one image)
    return [c for c in dict.fromkeys(calls) if c[0][0] == config.batch_size]


def per_call(fn, args, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        out = fn(*args)
    out.block_until_ready()
    return (time.perf_counter() - start) / calls * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="cnn,inception_cnn,kernel_cnn:3,kernel_cnn:5,"
                                        "kernel_cnn:7,strided_cnn")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--out", default="winograd_layers")
    a = ap.parse_args()
    if jax.device_count() != 1:
        ap.error("run it with DIGITJAX_CPU_DEVICES=1: the kernels run on one XLA device")
    winograd.MAX_ROW_RATIO = float("inf")  # measure both sides of the limit
    rng = np.random.default_rng(0)
    rows = ["| model | x | kernel | pads | rows ratio | direct ms | winograd ms | "
            "direct / winograd, median | quartiles |", "|" + " --- |" * 9]
    for model in a.models.split(","):
        for xs, ws, pads in stride1_calls(model):
            x = jnp.asarray(rng.standard_normal(xs), jnp.float32)
            w = jnp.asarray(rng.standard_normal(ws), jnp.float32)
            if not winograd.takes(x, w, pads):
                continue
            fns = [jax.jit(lambda x, w, f=f, p=pads: f(x, w, p))
                   for f in (direct_conv.conv, winograd.conv)]
            for f in fns:
                f(x, w).block_until_ready()
            calls = max(3, int(0.05 / (per_call(fns[0], (x, w), 2) / 1e3)))
            times = [[], []]
            for _ in range(a.rounds):
                for f, t in zip(fns, times, strict=True):
                    t.append(per_call(f, (x, w), calls))
            ratios = sorted(d / g for d, g in zip(*times, strict=True))
            q = len(ratios) // 4
            rows.append(f"| {model} | {xs[1]}x{xs[2]}x{xs[3]} | {ws[0]}x{ws[1]}x{ws[2]}x"
                        f"{ws[3]} | {pads[0]} {pads[1]} | "
                        f"{winograd.row_ratio(xs[1], ws[0], pads[0]):.2f} | "
                        f"{statistics.median(times[0]):.2f} | "
                        f"{statistics.median(times[1]):.2f} | "
                        f"**{statistics.median(ratios):.2f}** | "
                        f"{ratios[q]:.2f}-{ratios[-1 - q]:.2f} |")
            print(rows[-1], flush=True)
    table = (f"{cpu_name()}, batch 128, {a.rounds} alternating rounds per convolution, load "
             f"average {os.getloadavg()[0]:.1f} at the end.\n\n" + "\n".join(rows) + "\n")
    write_results(a.out, "winograd against the direct kernel, per convolution of a training "
                  "step", table, f"DIGITJAX_CPU_DEVICES=1 python experiments/winograd_layers.py "
                  f"--models {a.models} --rounds {a.rounds} --out {a.out}")


if __name__ == "__main__":
    main()
