"""Intermittent abort noticed on the 2-device CPU split (jax/jaxlib 0.10.2): many training
steps dispatched without reading anything back can end in XLA:CPU's collective rendezvous
("waiting for `all gather RendezvousKey{...}` ... Termination timeout of 40 seconds
exceeded"), which kills the process. Seen twice in ad-hoc versions of this script (after
1+2+5+20+100 queued steps, and after 5+100); not with 20, 30, 40, 60, 80 or a lone 100,
and not in this script's first 2 tries (2026-12-01): intermittent. digitjax's loop
reads its metrics back every `loop.FETCH_EVERY` = 20 steps and has not hit it; a user's own
loop over `train_step` on the split might. Not root-caused (XLA issue material).

    python experiments/deep_queue.py [--queued 1,2,5,20,100] [--tries 3]
"""

from __future__ import annotations

import argparse
import time

import jax
from common import DATA

from digitjax import loop, parallel, train
from digitjax.configs import default
from digitjax.data import load_train
from digitjax.data.sampling import epoch_batches, train_val_rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queued", default="1,2,5,20,100")
    ap.add_argument("--tries", type=int, default=3)
    a = ap.parse_args()
    config = default.get_config()
    config.data_dir = str(DATA / "digit-recognizer")
    data = load_train(config, None)
    train_idx, _ = train_val_rows(data.labels, config)
    mesh = parallel.data_mesh(config)
    state = parallel.init_state(lambda: train.create_train_state(
        config, jax.random.key(0), data.image_shape, 10, 100), mesh)
    step = loop.make_train_fn(config, None, jax.tree.map(lambda x: x.sharding, state))
    batches = epoch_batches(train_idx, config.batch_size, config.seed, 1)
    print(f"{mesh.size} devices", flush=True)
    for t in range(a.tries):
        for n in map(int, a.queued.split(",")):
            start = time.perf_counter()
            for i in range(n):  # nothing read back until the end
                idx = batches[i % len(batches)]
                state, _ = step(state, parallel.global_array(data.images[idx], mesh),
                                parallel.global_array(data.labels[idx], mesh))
            jax.block_until_ready(state)
            print(f"try {t + 1}: {n} steps queued, {time.perf_counter() - start:.1f} s",
                  flush=True)


if __name__ == "__main__":
    main()
