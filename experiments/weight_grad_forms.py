"""A convolution's weight gradient in the forms XLA:CPU could compute it, timed in one
process against the layer's forward pass and input gradient.

    python experiments/weight_grad_forms.py [--rounds 5] [--out FILE]

The weight gradient of a k x k convolution contracts over batch x height x width
(73,728 values for 128 images of 24x24) into a small k*k*c x f result, a matmul shape
the CPU libraries run far below their peak. Forms:
- `lax`: jax's own transpose rule (what `models/conv.py` keeps, `_weight_grad`);
- `tap dots`: one (c x N) @ (N x f) matmul per kernel tap over shifted input slices;
- `im2col dot`: the k*k shifted slices concatenated into one (N x k*k*c) patch matrix,
  then one matmul;
- `tap einsums`: one einsum per tap over the 4-d arrays, no reshape;
- `kernel`: digitjax's direct kernel (`models/weight_grad.py`, the `weight_grad` trick).
Milliseconds, median of `--rounds` timings of 10 calls each, on one XLA device
(digitjax's CPU flags applied); all forms are checked against `lax`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("DIGITJAX_CPU_DEVICES", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import cpu_name  # noqa: E402
from jax import lax  # noqa: E402

import digitjax  # noqa: E402,F401  (applies digitjax's XLA:CPU flags before jax starts)
from digitjax.models import weight_grad  # noqa: E402

LAYERS = ((128, 26, 32, 32, 3), (128, 12, 32, 64, 3), (128, 10, 64, 64, 3),
          (128, 24, 32, 32, 5))  # (batch, input side, in channels, out channels, kernel)
DN = ("NHWC", "HWIO", "NHWC")


def conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=DN)


def slices(x, k):
    o = x.shape[1] - k + 1
    return [[x[:, i:i + o, j:j + o, :] for j in range(k)] for i in range(k)]


def wg_lax(x, w, g):
    return jax.vjp(lambda w: conv(x, w), w)[1](g)[0]


def wg_tap_dots(x, w, g):
    c, f = x.shape[-1], g.shape[-1]
    g2 = g.reshape(-1, f)
    return jnp.stack([jnp.stack([s.reshape(-1, c).T @ g2 for s in row])
                      for row in slices(x, w.shape[0])])


def wg_im2col(x, w, g):
    k, c, f = w.shape[0], x.shape[-1], g.shape[-1]
    patches = jnp.concatenate([s for row in slices(x, k) for s in row], axis=-1)
    return (patches.reshape(-1, k * k * c).T @ g.reshape(-1, f)).reshape(w.shape)


def wg_tap_einsums(x, w, g):
    return jnp.stack([jnp.stack([jnp.einsum("bhwc,bhwf->cf", s, g) for s in row])
                      for row in slices(x, w.shape[0])])


def wg_kernel(x, w, g):
    return weight_grad.conv_weight_grad(x, g, w.shape[:2], 1, ((0, 0), (0, 0)))


def input_grad(x, w, g):
    return jax.vjp(lambda x: conv(x, w), x)[1](g)[0]


def timed(fn, *args, rounds: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(10):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / 10 * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).parent / "results" / "weight_grad_forms.md")
    a = ap.parse_args()
    forms = {"lax": wg_lax, "tap dots": wg_tap_dots, "im2col dot": wg_im2col,
             "tap einsums": wg_tap_einsums, "kernel": wg_kernel}
    lines = ["| layer | GFLOP | forward ms | input grad ms | "
             + " | ".join(f"weight grad: {n} ms" for n in forms) + " | lax weight grad GFLOP/s |",
             "| --- " * (5 + len(forms)) + "|"]
    rng = np.random.default_rng(0)
    for b, h, c, f, k in LAYERS:
        o = h - k + 1
        x = jnp.asarray(rng.random((b, h, h, c)), jnp.float32)
        w = jnp.asarray(rng.random((k, k, c, f)) * 0.1, jnp.float32)
        g = jnp.asarray(rng.random((b, o, o, f)), jnp.float32)
        gflop = 2 * b * o * o * k * k * c * f / 1e9
        ref = jax.jit(wg_lax)(x, w, g)
        times = {}
        for name, fn in forms.items():
            jitted = jax.jit(fn)
            np.testing.assert_allclose(jitted(x, w, g), ref, rtol=1e-3, atol=1e-2)
            times[name] = timed(jitted, x, w, g, rounds=a.rounds)
        fwd = timed(jax.jit(conv), x, w, rounds=a.rounds)
        ig = timed(jax.jit(input_grad), x, w, g, rounds=a.rounds)
        lines.append(f"| {b}x{h}x{h}x{c} -> {o}x{o}x{f} ({k}x{k}) | {gflop:.2f} | {fwd:.1f} | "
                     f"{ig:.1f} | " + " | ".join(f"{t:.1f}" for t in times.values())
                     + f" | {gflop / times['lax'] * 1e3:.0f} |")
        print(lines[-1], flush=True)
    cpu = cpu_name()
    a.out.write_text("# A convolution's weight gradient, in five forms\n\n"
                     f"Reproduce: `python experiments/weight_grad_forms.py --rounds {a.rounds}` "
                     f"(1 XLA device, jax {jax.__version__}; {cpu})\n\n"
                     + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
