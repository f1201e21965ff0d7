"""Is the training step fed from TFDS? The default recipe's step on the 42,000
digits of ../shared/data/tfds, fed four ways, the same batches in the same order:

- in memory: the split decoded once into one uint8 array (`data.images[idx]`);
- lazy: `LazyImages` decoding each batch's rows when the loop indexes them, in the
  loop's thread, while the previous steps run (jax dispatches asynchronously);
- grain, 1 and 2 worker processes: the same decode in grain's multiprocess prefetch
  (`MapDataset.source(batches).map(decode).to_iter_dataset().mp_prefetch(...)`).

    pip install -e ".[bench]"   # grain: optional, only this script uses it
    python experiments/tfds_feed.py [--steps 80] [--rounds 2]

Prints training images/s for each (after 3 warm-up steps; grain's start-up is shown
apart) and writes experiments/results/tfds_feed.md.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from common import DATA, markdown_table, write_results

_LAZY = None  # the lazy Dataset, a global so grain's workers get it by pickling


def _decode(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _LAZY.images[idx], _LAZY.labels[idx]


class _Batches:
    """grain source: item i is the i-th batch of row indices."""

    def __init__(self, batches: np.ndarray):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.batches[i]


def main() -> None:
    global _LAZY
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()

    import jax

    from digitjax import data, loop, parallel
    from digitjax.configs import tfds_digits
    from digitjax.data.sampling import epoch_batches
    from digitjax.train import create_train_state

    config = tfds_digits.get_config()
    config.tfds_data_dir = str(DATA / "tfds")
    memory = data.load_train(config, None)
    config.tfds_in_memory_mb = 0
    _LAZY = data.load_train(config, None)
    mesh = parallel.data_mesh()
    batches = epoch_batches(np.arange(len(memory.labels)), config.batch_size, 0, 1)
    warm, timed = batches[:3], batches[3:3 + a.steps]

    def fresh():
        state = parallel.init_state(lambda: create_train_state(
            config, jax.random.key(0), (28, 28, 1), 10, 300), mesh)
        fn = loop.make_train_fn(config, None, jax.tree.map(lambda x: x.sharding, state))
        for b in warm:
            state, m = fn(state, memory.images[b], memory.labels[b])
        jax.block_until_ready(m)
        return state, fn

    rows = []
    feeds = (("in memory", memory), ("lazy, in the loop's thread", _LAZY))
    for name, d in feeds * a.rounds:  # interleaved: both see the same machine state
        state, fn = fresh()
        start = time.perf_counter()
        for b in timed:
            state, m = fn(state, d.images[b], d.labels[b])
        jax.block_until_ready(m)
        rows.append({"feed": name, "start_seconds": 0.0,
                     "images_per_second": len(timed) * config.batch_size /
                     (time.perf_counter() - start)})
    try:
        import grain
        from absl import flags

        flags.FLAGS.mark_as_parsed()  # grain reads absl flags
    except ImportError:
        grain = None
    for workers in (1, 2) if grain else ():
        state, fn = fresh()
        start = time.perf_counter()
        it = iter(grain.MapDataset.source(_Batches(timed)).map(_decode).to_iter_dataset()
                  .mp_prefetch(grain.MultiprocessingOptions(num_workers=workers)))
        first = next(it)
        started = time.perf_counter()
        state, m = fn(state, *first)
        for x, y in it:
            state, m = fn(state, x, y)
        jax.block_until_ready(m)
        rows.append({"feed": f"grain mp_prefetch, {workers} worker process(es)",
                     "start_seconds": started - start,
                     "images_per_second": (len(timed) - 1) * config.batch_size /
                     (time.perf_counter() - started)})
    table = (f"Machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end; "
             f"the default recipe's step (cnn, batch {config.batch_size}, augmentation on), "
             f"{a.steps} steps after 3 warm-up steps.\n\n"
             + markdown_table(rows, ["feed", "images_per_second", "start_seconds"]))
    write_results("tfds_feed", "Feeding the training step from TFDS: memory, lazy, grain",
                  table, f"python experiments/tfds_feed.py --steps {a.steps} --rounds {a.rounds}")


if __name__ == "__main__":
    main()
