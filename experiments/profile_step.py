"""Where the training step's time goes: a jax.profiler trace of a few steps, summed
per XLA operation (thread time, so concurrent ops add up past the wall time).

    python experiments/profile_step.py [--model cnn] [--steps 20] [--top 25] [--inference]

With --inference, the forward pass of evaluation (`train.apply_model`, as
experiments/benchmark.py times it) in place of the training step.

Run it under different XLA_FLAGS (or DIGITJAX_XLA_CPU_FLAGS=0) to compare.
"""

from __future__ import annotations

import argparse
import collections
import re
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from common import step_config
from jax.profiler import ProfileData

from digitjax import loop, train


def fusion_summary(hlo: str, name: str) -> str:
    """Output shape and the ops inside the fusion called `name`, from the HLO text (a
    custom call's target and operands)."""
    m = re.search(r"\n  %" + re.escape(name) + r" = (\S+) [^\n]*?calls=%([\w.-]+)", hlo)
    if not m:  # a custom call (digitjax's C++ kernels): its target and operand shapes
        call = re.search(r"\n  %" + re.escape(name) + r" = [^\n]*?custom-call\(([^)]*)\)"
                         r"[^\n]*?custom_call_target=\"(\w+)\"", hlo)
        return "" if not call else f"{call.group(2)}({call.group(1)})"
    start = hlo.find("%" + m.group(2) + " ")
    body = hlo[start:hlo.find("\n}", start)]
    ops = sorted(set(re.findall(r"= \w+\[[^\]]*\][^ ]* (\w+)\(", body)) - {"parameter"})
    return f"{m.group(1)} {','.join(ops)}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--inference", action="store_true")
    a = ap.parse_args()
    config = step_config(a.model)
    state = train.create_train_state(config, jax.random.key(0), (28, 28, 1), 10, 100)
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (128, 28, 28, 1), np.uint8))
    y = jnp.zeros((128,), jnp.int32)
    step = (jax.jit(lambda s, im, _: (s, train.apply_model(s, im.astype("float32") / 255)))
            if a.inference  # the state passes through, so the loop below stays one shape
            else loop.make_train_fn(config, None))
    for _ in range(5):
        state, m = step(state, x, y)
    jax.block_until_ready(m)
    with tempfile.TemporaryDirectory() as trace_dir:
        start = time.perf_counter()
        with jax.profiler.trace(trace_dir):
            for _ in range(a.steps):
                state, m = step(state, x, y)
            jax.block_until_ready(m)
        wall = (time.perf_counter() - start) / a.steps
        profile = ProfileData.from_file(str(next(Path(trace_dir).rglob("*.xplane.pb"))))
    per_op, executing = collections.Counter(), 0
    for plane in profile.planes:
        for line in plane.lines:
            if "PjRtCpuClient" in line.name:  # the threads that wait for each step
                executing += sum(e.duration_ns for e in line.events
                                 if e.name.startswith("ThunkExecutor::Execute"))
            if "XLAEigen" not in line.name:  # the threads that run the compiled step
                continue
            for event in line.events:
                if not event.name.startswith("ThunkExecutor"):
                    per_op[event.name] += event.duration_ns
    hlo = step.lower(state, x, y).compile().as_text()
    print(f"{a.model}: {wall * 1e3:.1f} ms per step (traced), the executable running "
          f"{executing / a.steps / 1e6:.1f} ms of it; {sum(per_op.values()) / a.steps / 1e6:.1f} "
          "ms of op thread time in traced ops. Eigen's convolutions record no events for "
          "their work: most of the executable's time that the ops do not cover is theirs.")
    for name, ns in per_op.most_common(a.top):
        print(f"{ns / a.steps / 1e6:7.2f} ms  {name:32s} {fusion_summary(hlo, name)[:110]}")


if __name__ == "__main__":
    main()
