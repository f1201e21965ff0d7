"""The optimized HLO of the compiled training step of each shipped model, with source
locations and stack frames stripped, so two commits can be compared instruction by
instruction: a refactor that leaves it unchanged cannot have slowed the step.

    python experiments/step_hlo.py OUT_DIR      # then: diff -r OUT_DIR_a OUT_DIR_b
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from digitjax import loop, train
from digitjax.configs import default

TABLES = ("FileNames", "FunctionNames", "FileLocations", "StackFrames")


def normalized_hlo(model: str) -> str:
    config = default.get_config()  # augmentation on: the step a run compiles
    config.model = model
    state = train.create_train_state(config, jax.random.key(0), (28, 28, 1), 10, 100)
    images, labels = jnp.zeros((128, 28, 28, 1), jnp.uint8), jnp.zeros((128,), jnp.int32)
    text = loop.make_train_fn(config, None).lower(state, images, labels).compile().as_text()
    lines, skipping = [], False
    for line in text.splitlines():
        if line in TABLES:
            skipping = True
            continue
        if skipping and (line.startswith(("%", "ENTRY")) or not line):
            skipping = False
        if not skipping:
            line = re.sub(r", metadata=\{[^}]*\}", "", line)
            lines.append(re.sub(r",? ?stack_frame_id=\d+", "", line))
    lines[0] = re.sub(r"^HloModule \S+", "HloModule", lines[0])
    return "\n".join(lines) + "\n"


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for model in ("cnn", "strided_cnn", "resnet", "seed_cnn"):
        text = normalized_hlo(model)
        (out / f"{model}.hlo").write_text(text)
        print(model, hashlib.sha256(text.encode()).hexdigest()[:16], text.count("\n"), "lines")


if __name__ == "__main__":
    main()
