"""Times digitjax's training step under XLA:CPU option sets and step variants, each
in a fresh process, rounds interleaved (the machine is shared and noisy).

    python experiments/xla_options.py [--model cnn] [--rounds 3]

What made it into the code is named in the table; the rest is kept as evidence.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

VARIANTS = {  # name: (extra XLA_FLAGS, step options); the first is the baseline
    "digitjax (jit, batch 128)": ("", {}),
    "jaxlib defaults (YNNPACK convs)": ("", {"env": {"DIGITJAX_XLA_CPU_FLAGS": "0"}}),
    "no YNNPACK at all": ("--xla_cpu_experimental_ynn_fusion_type=", {}),
    "no conv/pool rewrites (models/conv.py, pool.py)": (
        "", {"env": {"DIGITJAX_CPU_CONV_TRICKS": "0"}}),
    "no row-split input gradients (models/conv.py)": (
        "", {"env": {"DIGITJAX_CPU_CONV_TRICKS": "space_to_depth,pool,pointwise,taps"}}),
    "1x1 convolutions as lax's, not matmuls (models/conv.py)": (
        "", {"env": {"DIGITJAX_CPU_CONV_TRICKS": "space_to_depth,row_split,pool,taps"}}),
    "few-channel convolutions as lax's, not tap sums (models/conv.py)": (
        "", {"env": {"DIGITJAX_CPU_CONV_TRICKS": "space_to_depth,row_split,pool,pointwise"}}),
    "batch 256": ("", {"batch_size": 256}),
    "fast math": ("--xla_cpu_enable_fast_math=true", {}),
    "oneDNN": ("--xla_cpu_use_onednn=true", {}),
    "XNNPACK": ("--xla_cpu_use_xnnpack=true", {}),
    "no Eigen threads": ("--xla_cpu_multi_thread_eigen=false", {}),
    "lax.scan 8 steps": ("", {"scan": 8}),
    # digitjax's default splits the host into 2 devices (cpu_flags.py); this is jax's 1,
    # which configs/best.py and its ensemble members ship (config.cpu_devices = 1)
    "1 CPU device (DIGITJAX_CPU_DEVICES=1)": ("", {"env": {"DIGITJAX_CPU_DEVICES": "1"}}),
    # YNNPACK's convolutions run on one thread: on 2 devices each has a core of its own
    "YNNPACK convs, 2 devices": ("--xla_force_host_platform_device_count=2",
                                 {"env": {"DIGITJAX_XLA_CPU_FLAGS": "0"}}),
}

WORKER = r'''
import json, statistics, sys, time
import jax, jax.numpy as jnp, numpy as np
from common import step_config
from digitjax import loop, train
opts = json.loads(sys.argv[1]); model = sys.argv[2]
config = step_config(model, opts.get("batch_size", 128))
state = train.create_train_state(config, jax.random.key(0), (28, 28, 1), 10, 100)
fn = loop.make_train_fn(config, None)
b, k = config.batch_size, opts.get("scan", 1)
x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (k, b, 28, 28, 1), np.uint8))
y = jnp.zeros((k, b), jnp.int32)
if k > 1:
    step = jax.jit(lambda s, xs, ys: jax.lax.scan(lambda s, a: train.train_step(
        s, {"image": a[0].astype(jnp.float32) / 255, "label": a[1]}), s, (xs, ys)))
    call = lambda s: step(s, x, y)
else:  # placed as the loop places them: the batch split over the data mesh
    from digitjax import parallel
    mesh = parallel.data_mesh()
    state = jax.device_put(state, parallel.replicated(mesh))
    xs = parallel.global_array(np.asarray(x[0]), mesh)
    ys = parallel.global_array(np.asarray(y[0]), mesh)
    call = lambda s: fn(s, xs, ys)
s, m = call(state); jax.block_until_ready(m)
for _ in range(3):
    s, m = call(s)
jax.block_until_ready(m)
rates = []
for _ in range(5):
    t = time.perf_counter()
    for _ in range(max(1, 16 // k)):
        s, m = call(s)
    jax.block_until_ready(m)
    rates.append(max(1, 16 // k) * k * b / (time.perf_counter() - t))
print("RESULT", statistics.median(rates))
'''


def run(flags: str, opts: dict, model: str) -> float:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
    env.update(opts.get("env", {}))
    out = subprocess.run([sys.executable, "-c", WORKER, json.dumps(opts), model], env=env,
                         cwd=REPO / "experiments", capture_output=True, text=True)
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT")]
    if not lines:
        return float("nan")  # an option this jaxlib rejects
    return float(lines[0].split()[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="", help="variant names separated by ';'")
    ap.add_argument("--out", default="", help="Markdown file to write (default "
                    "experiments/results/xla_options_<model>.md)")
    a = ap.parse_args()
    names = [n for n in VARIANTS if not a.only or n in a.only.split(";")]
    rates = {n: [] for n in names}
    for _ in range(a.rounds):
        for n in names:
            rates[n].append(run(*VARIANTS[n], a.model))
    base = statistics.median(rates[names[0]])
    lines = [f"| variant ({a.model}) | train img/s | vs baseline |", "| --- | --- | --- |"]
    for n in names:
        r = statistics.median(rates[n])
        lines.append(f"| {n} | {r:.0f} | {r / base:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(a.out) if a.out else REPO / "experiments" / "results" / f"xla_options_{a.model}.md"
    out.write_text(f"# XLA:CPU options and step variants\n\nReproduce: "
                   f"`python experiments/xla_options.py --model {a.model}"
                   + (f" --rounds {a.rounds} --only '{a.only}'" if a.only else "")
                   + (f" --out {a.out}" if a.out else "")
                   + "`\n\n" + text)


if __name__ == "__main__":
    main()
