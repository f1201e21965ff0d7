"""Tried for issue 17 (kernel_cnn:5/:7 inference at parity with PyTorch, both near this
CPU's FMA peak): fewer multiplies by a 1-D Winograd F(2, k), built from XLA ops around
the existing direct kernel. Dropped for the same F(2, k) inside the kernel
(models/winograd.py): here the k + 1 kernel calls alone took 0.8-0.9x the direct
kernel's time (experiments/results/winograd_1d*_zen3.md, experiments/README.md).

    DIGITJAX_CPU_DEVICES=1 python experiments/winograd_1d.py [--models kernel_cnn:5,kernel_cnn:7] \
        [--axis 1|2] [--out winograd_1d]

A stride-1 VALID k x k convolution with an even output size along `--axis` (1: the
height, 2: the width) gives each pair of output rows (columns) from k + 1 input rows:
out = A^T [(G w) * (B^T d)] (Toom-Cook on the points 0, +-1, +-2, +-1/2 and infinity).
Per pixel pair that is k + 1 products per (tap, channel, feature) where the direct form
has 2k: 0.57x the multiplies for k = 7, 0.6x for k = 5. Here B^T d and A^T m are sums of
strided slices (XLA fusions) and the k + 1 products are k + 1 calls of the direct kernel
with 1 x k (or k x 1) kernels. Each layer prints the direct kernel's time, the Winograd
form's, and the k + 1 kernel calls alone (the form's floor with free transforms), timed
in alternating rounds, and the form's largest error relative
to lax at "highest" precision beside the direct kernel's.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from common import cpu_name, time_pair, write_results
from jax import lax
from layer_forward import direct_layers

from digitjax.models import conv, direct_conv, weight_grad
from digitjax.models.winograd import toom_cook

VALID = ((0, 0), (0, 0))


def winograd(x: jax.Array, w: jax.Array, only_products: bool = False,
             axis: int = 1) -> jax.Array:
    """The VALID stride-1 convolution of x (NHWC) with w (HWIO) by F(2, k) along `axis`
    (1: the height, 2: the width); the output's size on it must be even. Along the
    height, each of the k + 1 kernel calls takes a 1 x kw kernel, whose taps and channels
    lie side by side (the kernel's flat loop runs over kw * c of them); along the width,
    a kh x 1 kernel, c at a time."""
    k = w.shape[axis - 1]
    at, g, bt = toom_cook(k)
    pairs = (x.shape[axis] - k + 1) // 2
    cols = [lax.slice_in_dim(x, t, t + 2 * pairs - 1, 2, axis) for t in range(k + 1)]
    v = [sum(float(bt[r, t]) * cols[t] for t in range(k + 1) if bt[r, t]) for r in range(k + 1)]
    u = jnp.tensordot(jnp.asarray(g, jnp.float32), w, ((1,), (axis - 1,)))
    u = jnp.expand_dims(u, axis)  # r, then the kernel with 1 tap on `axis`
    prods = [direct_conv.conv(v[r], u[r], VALID) for r in range(k + 1)]
    if only_products:
        return sum(p[:1, :1, :1, :1] for p in prods)  # keeps the calls, skips A^T
    out = [sum(float(at[i, r]) * prods[r] for r in range(k + 1) if at[i, r]) for i in (0, 1)]
    y = jnp.stack(out, axis=axis + 1)  # the pair's two outputs beside each other
    shape = list(prods[0].shape)
    shape[axis] *= 2
    return y.reshape(shape)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="kernel_cnn:5,kernel_cnn:7")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--axis", type=int, choices=(1, 2), default=1,
                    help="1: F(2, k) along the height (1 x k kernel calls), 2: the width")
    ap.add_argument("--out", default="winograd_1d")
    a = ap.parse_args()
    if weight_grad.lanes() is None or len(jax.devices()) != 1:
        raise SystemExit("needs the C++ kernels and one XLA device (DIGITJAX_CPU_DEVICES=1)")
    rows = ["| model | input | kernel | direct ms | Winograd ms | its kernel calls ms | "
            "direct / Winograd | error Winograd | error direct |",
            "|" + " --- |" * 9]
    rng = np.random.default_rng(0)
    for model in a.models.split(","):
        for shape, kernel, pads, s in direct_layers(model, a.batch):
            out_side = shape[a.axis - 1] - kernel[a.axis - 1] + 1
            if s != 1 or pads != VALID or out_side % 2 or kernel[a.axis - 1] < 3:
                continue
            x = jnp.asarray(rng.standard_normal((a.batch, *shape), np.float32))
            w = jnp.asarray(rng.standard_normal(kernel, np.float32)
                            / np.sqrt(np.prod(kernel[:3])))
            fns = (jax.jit(lambda x, w: direct_conv.conv(x, w, VALID)),
                   jax.jit(lambda x, w: winograd(x, w, axis=a.axis)),
                   jax.jit(lambda x, w: winograd(x, w, only_products=True, axis=a.axis)))
            times = time_pair(fns, (x, w))
            exact = lax.conv_general_dilated(x, w, (1, 1), VALID, dimension_numbers=conv.NHWC,
                                             precision="highest")
            scale = float(jnp.max(jnp.abs(exact)))
            errs = [float(jnp.max(jnp.abs(f(x, w) - exact))) / scale for f in fns[:2]]
            rows.append(f"| {model} | {'x'.join(map(str, shape))} | "
                        f"{'x'.join(map(str, kernel))} | {times[0]:.2f} | {times[1]:.2f} | "
                        f"{times[2]:.2f} | {times[0] / times[1]:.2f} | {errs[1]:.1e} | "
                        f"{errs[0]:.1e} |")
            print(rows[-1], flush=True)
    note = (f"\nCPU: {cpu_name()}; batch {a.batch}; medians of 7 alternating rounds of 10 "
            "calls. Errors: largest absolute difference from lax at precision 'highest', "
            "over its largest output.\n")
    write_results(a.out, "1-D Winograd F(2, k) over the direct kernel vs the direct kernel",
                  "\n".join(rows) + "\n" + note,
                  f"DIGITJAX_CPU_DEVICES=1 python experiments/winograd_1d.py --models "
                  f"{a.models} --batch {a.batch} --axis {a.axis} --out {a.out}")


if __name__ == "__main__":
    main()
