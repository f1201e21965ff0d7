"""Each convolution of a `kernel_cnn` member (or of `strided_cnn`) timed alone, per
pass (forward, input gradient, weight gradient), in XLA:CPU as digitjax runs it (`models/conv.py`'s
`cpu_conv`, rewrites included) and in PyTorch (oneDNN).

    python experiments/conv_passes.py [--kernel 5] [--batch 128] [--rounds 2]
    python experiments/conv_passes.py --model strided_cnn   # or --model cnn

Says which pass of which layer holds the gap the whole-step benchmark shows
(`experiments/benchmark.py`). One XLA device (DIGITJAX_CPU_DEVICES=1) and PyTorch with
as many threads as cores, each framework in its own process, rounds interleaved;
the first layer's input gradient is not needed in training and is left out of the
sums. Milliseconds, median of 10 calls after a warm-up; writes
experiments/results/conv_passes_k<K>.md (conv_passes_strided_cnn.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import REPO, cpu_name

PASSES = ("forward", "input grad", "weight grad")

JAX_WORKER = r'''
import json, os, statistics, sys, time
os.environ["DIGITJAX_CPU_DEVICES"] = "1"
import digitjax  # noqa: F401  (its XLA:CPU flags, as training runs)
import jax, jax.numpy as jnp, numpy as np
from digitjax.models.conv import cpu_conv  # what the model's nn.Conv calls
layers, n = json.loads(sys.argv[1]), int(sys.argv[2])
def conv(x, w, s, pad):
    return cpu_conv(x, w, (s, s), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
def ms(f, *a):
    jax.block_until_ready(f(*a)); ts = []
    for _ in range(10):
        t = time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)
rng, out = np.random.default_rng(0), []
for h, c, k, f, s, pad in layers:
    fwd = jax.jit(lambda x, w: conv(x, w, s, pad))
    dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w, s, pad), x)[1](g)[0])
    dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w, s, pad), w)[1](g)[0])
    x, w = rng.random((n, h, h, c), np.float32), rng.random((k, k, c, f), np.float32)
    g = rng.random(jax.eval_shape(fwd, x, w).shape, np.float32)
    x, w, g = jax.device_put((x, w, g))  # resident, as PyTorch's tensors are
    out.append([ms(fwd, x, w), ms(dx, x, w, g), ms(dw, x, w, g)])
print("RESULT", json.dumps(out))
'''

TORCH_WORKER = r'''
import json, os, statistics, sys, time
import torch
torch.set_num_threads(os.cpu_count() or 1)
layers, n = json.loads(sys.argv[1]), int(sys.argv[2])
def ms(f):
    f(); ts = []
    for _ in range(10):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)
F, out = torch.nn.functional, []
with torch.no_grad():
    for h, c, k, f, s, pad in layers:
        p = k // 2 if pad == "SAME" else 0  # the same output size as XLA's SAME here
        x, w = torch.rand(n, c, h, h), torch.rand(f, c, k, k)
        g = torch.zeros_like(F.conv2d(x, w, stride=s, padding=p)).uniform_()
        out.append([ms(lambda: F.conv2d(x, w, stride=s, padding=p)),
                    ms(lambda: torch.nn.grad.conv2d_input(x.shape, w, g, s, p)),
                    ms(lambda: torch.nn.grad.conv2d_weight(x, w.shape, g, s, p))])
print("RESULT", json.dumps(out))
'''


def layers(model: str, kernel: int) -> list[tuple[int, int, int, int, int, str]]:
    """(input side, input channels, kernel, output channels, stride, padding) of each
    conv of configs/kernel_cnn.py:K, or of strided_cnn or the default cnn on 28x28."""
    if model == "cnn":  # configs/default.py's
        return [(28, 1, 3, 32, 1, "SAME"), (14, 32, 3, 64, 1, "SAME")]
    if model == "strided_cnn":
        return [(28, 1, 3, 32, 1, "VALID"), (26, 32, 3, 32, 1, "VALID"),
                (24, 32, 5, 32, 2, "SAME"), (12, 32, 3, 64, 1, "VALID"),
                (10, 64, 3, 64, 1, "VALID"), (8, 64, 5, 64, 2, "SAME"),
                (4, 64, 4, 128, 1, "VALID")]
    sys.path.insert(0, str(REPO))
    from configs.kernel_cnn import FEATURES

    side, channels, out = 28, 1, []
    for f in FEATURES[kernel]:
        out.append((side, channels, kernel, f, 1, "VALID"))
        side, channels = side - kernel + 1, f
    return out


def run(worker: str, spec: list, batch: int) -> list[list[float]]:
    proc = subprocess.run([sys.executable, "-c", worker, json.dumps(spec), str(batch)],
                          capture_output=True, text=True, cwd=REPO)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    if not lines:
        sys.exit(f"worker failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[0][len("RESULT"):])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="kernel_cnn", choices=("kernel_cnn", "strided_cnn", "cnn"))
    ap.add_argument("--kernel", type=int, default=5, choices=(3, 5, 7))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, help="the results file (default: "
                    "experiments/results/conv_passes_<model>.md)")
    a = ap.parse_args()
    spec = layers(a.model, a.kernel)
    runs = {"digitjax": [], "torch": []}
    for _ in range(a.rounds):
        runs["digitjax"].append(run(JAX_WORKER, spec, a.batch))
        runs["torch"].append(run(TORCH_WORKER, spec, a.batch))
    med = {fw: [[statistics.median(r[i][p] for r in rs) for p in range(3)]
                for i in range(len(spec))] for fw, rs in runs.items()}
    lines = ["| layer | pass | digitjax ms | PyTorch ms | digitjax/PyTorch time |",
             "| --- | --- | --- | --- | --- |"]
    totals = {fw: [0.0, 0.0, 0.0] for fw in med}
    for i, (h, c, k, f, s, pad) in enumerate(spec):
        o = (h + s - 1) // s if pad == "SAME" else (h - k) // s + 1
        for p, name in enumerate(PASSES):
            if i == 0 and p == 1:
                continue  # no input gradient for the images
            j, t = med["digitjax"][i][p], med["torch"][i][p]
            for fw in med:
                totals[fw][p] += med[fw][i][p]
            lines.append(f"| {h}x{h}x{c} -> {o}x{o}x{f} ({k}x{k}/{s} {pad}) | {name} | "
                         f"{j:.1f} | {t:.1f} | {j / t:.2f} |")
    for p, name in enumerate(PASSES):
        j, t = totals["digitjax"][p], totals["torch"][p]
        lines.append(f"| **all layers** | **{name}** | **{j:.1f}** | **{t:.1f}** | "
                     f"**{j / t:.2f}** |")
    text = "\n".join(lines) + "\n"
    print(text)
    name = f"k{a.kernel}" if a.model == "kernel_cnn" else a.model
    title = f"kernel_cnn:{a.kernel}" if a.model == "kernel_cnn" else a.model
    out = a.out or REPO / "experiments" / "results" / f"conv_passes_{name}.md"
    out.write_text(f"# Convolution passes, {title}, batch {a.batch}\n\n"
                   f"Reproduce: `python experiments/conv_passes.py --model {a.model} "
                   f"--kernel {a.kernel} "
                   f"--batch {a.batch} --rounds {a.rounds}` (1 XLA device; PyTorch "
                   f"{os.cpu_count()} threads; {cpu_name()})\n\n" + text)


if __name__ == "__main__":
    main()
