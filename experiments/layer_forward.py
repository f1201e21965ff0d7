"""The `direct` kernel's forward pass against lax's, layer by layer, for every
convolution a model hands the kernel (models/conv.py's `_direct_conv`, and the strided
layers' forward passes in `_strided_conv`): the measurement
behind direct_conv.cc's block size on AVX2 (`kBlockVectors`). With `--pass weight_grad`,
the same layers' weight gradients: the `weight_grad` kernel against lax's (the
measurement behind weight_grad.cc's AVX2 blocks and image groups).

    python experiments/layer_forward.py [--models kernel_cnn:7,cnn] [--batch 128] \
        [--pass forward|weight_grad] [--out layer_forward]

Each layer's two forms are jitted alone on random inputs and timed in alternating
rounds (7 rounds of 10 calls); the medians and lax's time over the kernel's are
printed (above 1: the kernel is faster). Run it on the CPU whose blocking is in question;
it needs the kernels built (a C++ compiler) and one XLA device (DIGITJAX_CPU_DEVICES=1).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from common import cpu_name, step_config, time_pair, write_results
from jax import lax

from digitjax import train
from digitjax.models import conv, direct_conv, weight_grad


def direct_layers(model: str, batch: int) -> list[tuple]:
    """(input shape without the batch, kernel shape, pads, stride) of each distinct
    convolution `model` hands the direct kernel at inference, in order."""
    seen: list[tuple] = []
    original = direct_conv.conv

    def record(x, w, pads, stride=1):
        if (x.shape[1:], w.shape, pads, stride) not in seen:
            seen.append((x.shape[1:], w.shape, pads, stride))
        return original(x, w, pads, stride)

    config = step_config(model, batch)
    state = train.create_train_state(config, jax.random.key(0), (28, 28, 1), 10, 100)
    direct_conv.conv = record
    try:
        jax.eval_shape(lambda s, x: s.apply_fn({"params": s.params,
                                                "batch_stats": s.batch_stats}, x),
                       state, jnp.zeros((batch, 28, 28, 1)))
    finally:
        direct_conv.conv = original
    return seen


def forward_forms(pads, s: int) -> tuple:
    """The kernel's and lax's convolution at stride s, each of (x, w)."""
    return (jax.jit(lambda x, w: direct_conv.conv(x, w, pads, s)),
            jax.jit(lambda x, w: lax.conv_general_dilated(x, w, (s, s), pads,
                                                          dimension_numbers=conv.NHWC)))


def weight_grad_forms(kernel: tuple, pads, s: int) -> tuple:
    """The kernel's and lax's weight gradient, each of (x, output gradient g)."""
    def by_lax(x, g):
        w = jnp.zeros(kernel, jnp.float32)
        _, pull = jax.vjp(lambda w: lax.conv_general_dilated(
            x, w, (s, s), pads, dimension_numbers=conv.NHWC), w)
        return pull(g)[0]
    return (jax.jit(lambda x, g: weight_grad.conv_weight_grad(x, g, kernel[:2], s, pads)),
            jax.jit(by_lax))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="cnn,strided_cnn,kernel_cnn:3,kernel_cnn:5,"
                                        "kernel_cnn:7,inception_cnn")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--pass", dest="pass_", choices=("forward", "weight_grad"),
                    default="forward")
    ap.add_argument("--out", default="layer_forward")
    a = ap.parse_args()
    if weight_grad.lanes() is None or len(jax.devices()) != 1:
        raise SystemExit("needs the C++ kernels and one XLA device (DIGITJAX_CPU_DEVICES=1)")
    rows = ["| model | input | kernel | pads | stride | kernel ms | lax ms | lax / kernel |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    rng = np.random.default_rng(0)
    for model in a.models.split(","):
        for shape, kernel, pads, s in direct_layers(model, a.batch):
            x = jnp.asarray(rng.standard_normal((a.batch, *shape), np.float32))
            w = jnp.asarray(rng.standard_normal(kernel, np.float32))
            if a.pass_ == "forward":
                fns, second = forward_forms(pads, s), w
            else:  # the weight gradient takes the output gradient in place of w
                fns = weight_grad_forms(kernel, pads, s)
                y = jax.eval_shape(forward_forms(pads, s)[1], x, w)
                second = jnp.asarray(rng.standard_normal(y.shape, np.float32))
            k_ms, l_ms = time_pair(fns, (x, second))
            rows.append(f"| {model} | {'x'.join(map(str, shape))} | "
                        f"{'x'.join(map(str, kernel))} | {pads} | {s} | {k_ms:.2f} | "
                        f"{l_ms:.2f} | "
                        f"{l_ms / k_ms:.2f} |")
            print(rows[-1], flush=True)
    note = (f"\nCPU: {cpu_name()}, kernel vector width "
            f"{weight_grad.lanes()} floats; batch {a.batch}; medians of 7 alternating rounds "
            f"of 10 calls.\n")
    title = {"forward": "The direct kernel's forward pass vs lax's, per layer",
             "weight_grad": "The weight_grad kernel vs lax's weight gradient, per layer"}
    write_results(a.out, title[a.pass_], "\n".join(rows) + "\n" + note,
                  f"DIGITJAX_CPU_DEVICES=1 python experiments/layer_forward.py --models "
                  f"{a.models} --batch {a.batch} --pass {a.pass_} --out {a.out}")


if __name__ == "__main__":
    main()
