"""What a model costs, printed at the start of every run and kept for the report:
flax's own table of layers (inputs, outputs, parameters), the parameters per layer and
in total, the forward FLOPs per image from XLA's cost analysis of the compiled model,
and the memory of the layers' outputs for one training batch.

Everything is computed from shapes (`jax.eval_shape`) but the FLOPs, which compile
the model once on a batch of one image.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from digitjax.models import conv, create_model

TABLE_WIDTH = 120  # characters of the layer table


def summarize(config: ml_collections.ConfigDict, input_shape: tuple[int, ...],
              num_classes: int) -> dict[str, Any]:
    """The model summary of `config.model` on (H, W, C) images, as JSON-ready numbers
    and the text table (`table`)."""
    model = create_model(config, num_classes)
    image = jax.ShapeDtypeStruct((1, *tuple(input_shape)[-3:]), jnp.float32)
    key = jax.random.key(0)
    variables = jax.eval_shape(lambda x: model.init(key, x, train=False), image)
    params = variables["params"]
    # No FLOPs per layer: flax lowers every submodule on its own for them, 0.5 s of each
    # run's start for configs/quick.py's 7 layers and 0.8 s for best.py's (2-core CPU);
    # the headline's total comes from one compile of the whole model.
    table = nn.tabulate(model, key, compute_flops=False,
                        console_kwargs={"width": TABLE_WIDTH, "force_terminal": False,
                                        "color_system": None})(jnp.zeros(image.shape),
                                                               train=False)
    with conv.tricks_off():  # the model's FLOPs: none are counted inside a custom call
        cost = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(
            variables, image).compile().cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per computation
        cost = cost[0] if cost else {}
    _, captured = jax.eval_shape(lambda v, x: model.apply(
        v, x, train=False, capture_intermediates=True, mutable=["intermediates"]),
        variables, image)
    per_image = sum(math.prod(x.shape) * x.dtype.itemsize
                    for x in _leaf_outputs(captured["intermediates"]))
    return {
        "model": config.model,
        "input_shape": list(input_shape),
        "parameters": _count(params),
        "parameters_per_layer": {name: _count(tree) for name, tree in params.items()},
        "batch_stats": _count(variables.get("batch_stats", {})),
        "flops_per_image": float(cost.get("flops", 0.0)),
        "batch_size": int(config.batch_size),
        "activation_bytes_per_batch": int(per_image * config.batch_size),
        "table": "\n".join(line.rstrip() for line in table.splitlines()).strip("\n"),
    }


def _count(tree) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def _leaf_outputs(tree: dict) -> list:
    """The outputs of every module without submodules (Conv, Dense, BatchNorm, ...): the
    activations a backward pass keeps. The model's own output is a leaf's output too."""
    children = {k: v for k, v in tree.items() if k != "__call__"}
    if not children:
        return jax.tree.leaves(tree.get("__call__", ()))
    return [x for child in children.values() for x in _leaf_outputs(child)]


def headline(summary: dict) -> str:
    """One line: parameters, FLOPs per image, activation memory per batch."""
    return (f"model {summary['model']}: {summary['parameters']:,} parameters"
            + (f" (+{summary['batch_stats']:,} batch-norm statistics)"
               if summary["batch_stats"] else "")
            + f", {summary['flops_per_image'] / 1e6:,.2f} MFLOPs per image (forward, XLA), "
            f"layer outputs {summary['activation_bytes_per_batch'] / 2**20:,.1f} MiB per "
            f"batch of {summary['batch_size']}")


def text(summary: dict) -> str:
    """The layer table and the headline, as a run prints them."""
    return f"{summary['table']}\n{headline(summary)}"
