"""Reproduces an abort of jax's CPU client (jax/jaxlib 0.10.2): on 2 XLA CPU devices, a
data-parallel step (its gradient averaged over the devices: one all-reduce) dispatched
more than ~35 times without anything read back ends in XLA:CPU's collective rendezvous,
"waiting for `all reduce RendezvousKey{...}` ... Termination timeout of 40 seconds
exceeded", and the process is killed (SIGABRT). Pure jax, no digitjax (whose import adds
XLA flags): the bug is jax's. Each queue depth runs in a fresh process.

    python experiments/deep_queue.py [--depths 20,30,35,36,40,100] [--tries 100]

Measured on the project's 2-core CPU (2026-12-01, 2 devices via `jax_num_cpu_devices`):
depths 2-35 ran 100 tries each with no abort; 36, 40, 50, 100, 200, 2000 aborted in their
first try; digitjax's own training step (models `seed_cnn`, `cnn`) the same way. It
matches the CPU client's limit of 32 computations in flight per device (its admission
semaphore), past which dispatch blocks while the devices' queued collectives wait on
each other. digitjax's loop reads its metrics back every `loop.FETCH_EVERY` = 20 steps,
and evaluation and prediction read back every batch, so at most ~20 steps are ever in
flight; a loop of your own over `train_step` on the CPU split must also read something
back (e.g. the loss) at least every ~30 steps.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

WORKER = r'''
import sys
import jax
jax.config.update("jax_num_cpu_devices", 2)
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

depth, tries = int(sys.argv[1]), int(sys.argv[2])
mesh = Mesh(np.array(jax.devices()), ("data",))
w = jax.device_put(jnp.zeros((784, 64)), NamedSharding(mesh, P()))
x = jax.device_put(jnp.ones((128, 784)), NamedSharding(mesh, P("data")))
step = jax.jit(lambda w, x: w - 0.1 * jax.grad(lambda w: jnp.mean(jnp.tanh(x @ w) ** 2))(w))
for _ in range(tries):
    for _ in range(depth):  # nothing read back until the end
        w = step(w, x)
    jax.block_until_ready(w)
print("OK")
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depths", default="20,30,35,36,40,100")
    ap.add_argument("--tries", type=int, default=100)
    a = ap.parse_args()
    import jax

    print(f"jax {jax.__version__}; each depth in a fresh process, {a.tries} tries")
    for depth in map(int, a.depths.split(",")):
        try:
            proc = subprocess.run([sys.executable, "-c", WORKER, str(depth), str(a.tries)],
                                  capture_output=True, text=True, timeout=180)
            aborted = "Termination timeout" in proc.stderr
            result = ("ok" if proc.returncode == 0 and "OK" in proc.stdout else
                      f"aborted (exit {proc.returncode}): rendezvous termination timeout"
                      if aborted else f"failed (exit {proc.returncode})")
        except subprocess.TimeoutExpired:
            result = "hung past 180 s"
        print(f"{depth:5d} steps queued: {result}", flush=True)


if __name__ == "__main__":
    main()
