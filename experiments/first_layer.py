"""A network's first layer (one input channel) three ways: models/conv.py's `taps` (a
sum of shifted slices), the `direct` kernel and lax's convolution, each followed by a
batch-norm-like scale, shift and ReLU as in a model. The measurement behind
conv.py's TAPS_MAX_TAPS.

    DIGITJAX_CPU_DEVICES=1 python experiments/first_layer.py [--out first_layer]

Each form is jitted alone on a batch of 128 random 28x28x1 images and timed in
alternating rounds (7 rounds of 10 calls); medians in ms. It needs the kernels built
(a C++ compiler) and one XLA device.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from common import cpu_name, time_pair, write_results
from jax import lax

from digitjax.models import conv, direct_conv, weight_grad

LAYERS = ((7, 16, 0), (5, 12, 0), (3, 12, 0), (3, 32, 1), (3, 32, 0))  # kernel, features, pad
# kernel_cnn:7, :5 and :3's first layers; the default CNN's (SAME) and strided_cnn's


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="first_layer")
    a = ap.parse_args()
    assert weight_grad.usable(), "needs the kernels and one XLA device (DIGITJAX_CPU_DEVICES=1)"
    x = jax.random.normal(jax.random.key(0), (128, 28, 28, 1))
    rows = ["| kernel | pads | taps ms | direct ms | lax ms |", "| --- | --- | --- | --- | --- |"]
    for k, f, pad in LAYERS:
        w = jax.random.normal(jax.random.key(1), (k, k, 1, f))
        pads = ((pad, pad), (pad, pad))

        def epilogue(y):
            return jnp.maximum(y * 1.1 + 0.2, 0.0)

        forms = {
            "taps": jax.jit(lambda x, w, p=pads: epilogue(conv.tap_sum_conv(x, w, p))),
            "direct": jax.jit(lambda x, w, p=pads: epilogue(direct_conv.conv(x, w, p))),
            "lax": jax.jit(lambda x, w, p=pads: epilogue(lax.conv_general_dilated(
                x, w, (1, 1), p, dimension_numbers=conv.NHWC))),
        }
        ms = dict(zip(forms, time_pair(list(forms.values()), (x, w)), strict=True))
        rows.append(f"| {k}x{k}x1x{f} | {pad} | {ms['taps']:.2f} | {ms['direct']:.2f} | "
                    f"{ms['lax']:.2f} |")
    table = "\n".join(rows) + (f"\n\nCPU: {cpu_name()}, kernel vector width "
                               f"{weight_grad.lanes()} floats; batch 128; medians of 7 "
                               "alternating rounds of 10 calls.\n")
    write_results(a.out, "A first layer (one input channel): taps, direct kernel, lax", table,
                  f"DIGITJAX_CPU_DEVICES=1 python experiments/first_layer.py --out {a.out}")


if __name__ == "__main__":
    main()
