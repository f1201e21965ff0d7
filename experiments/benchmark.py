"""Speed and memory of digitjax against PyTorch and Keras 3 on the same architectures.

    pip install -e '.[bench]'        # torch and keras: optional peers
    python experiments/benchmark.py [--rounds 3] [--models cnn,seed] [--skip-data]
    python experiments/benchmark.py --skip-models --out experiments/results/tfds.md

For each model: training and inference throughput (images/s, median over timed
repeats after warm-up), the first step's compile time and the process's peak
memory, for digitjax and, when installed, the same network in PyTorch (CPU, as
many threads as cores) and Keras 3 (JAX backend); `--peers` adds PyTorch with
channels-last memory format (`torch_channels_last`), `torch.compile`
(`torch_compile`) and eager PyTorch with digitjax's own malloc settings
(`torch_malloc`: the same three as digitjax/host_memory.py, given to its process as
GLIBC_TUNABLES). Every measurement runs in its
own subprocess, frameworks interleaved round by round, so the peers see the same
machine. Then the data path: pixel CSV ingest cold and cached, image-folder decode
cold and cached, the TFDS dataset of the same digits decoded into memory and read
lazily by index, and one epoch of the full `main` run from the CSV, TFDS in memory
and TFDS lazy.

Prints a table with the ratios digitjax/peer and the fraction of this machine's
measured matmul peak, and writes experiments/results/benchmark.md.

On a CUDA machine the same command times each framework on the GPU (jax[cuda]: digitjax
and Keras on JAX's default device; PyTorch CUDA) in bfloat16 (`--precision auto`:
bfloat16 on an accelerator, float32 on a CPU; digitjax's `config.dtype`, PyTorch's
autocast, Keras's mixed_bfloat16 policy), each row naming its device and precision where
they are not the CPU's float32. Not yet run on a GPU (none was lent to the session
that wrote this); `--precision bfloat16` on a CPU runs the same code paths but the device's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import cpu_name  # the host in the header: ratios differ between CPUs

os.environ.setdefault("KERAS_BACKEND", "jax")  # Keras 3 on JAX: no TensorFlow needed
REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TRAIN_CSV = DATA / "digit-recognizer" / "train.csv"
FRAMEWORKS = ("digitjax", "torch", "torch_channels_last", "torch_compile", "torch_malloc",
              "keras")
# torch_malloc: glibc's names for digitjax/host_memory.py's mallopt settings
TORCH_MALLOC = ("glibc.malloc.mmap_max=0:glibc.malloc.arena_max=1:"
                "glibc.malloc.trim_threshold=2147483647")
PEERS = "torch,keras"  # the peers as users run them by default; --peers adds the variants
BATCH = 128
WARMUP_STEPS, TIMED_STEPS, REPEATS = 5, 20, 5
KERAS_MODELS = ("seed", "flax_example", "cnn", "strided_cnn")  # the networks written for Keras


# --- Workers: one framework, one model, in a fresh process -------------------------


def digits(n: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 28, 28, 1), np.uint8), rng.integers(0, 10, n).astype(np.int32)


def timed(step, n_images: int) -> tuple[float, float]:
    """(first call seconds, median images/s over REPEATS timed runs)."""
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(WARMUP_STEPS):
        step()
    rates = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(TIMED_STEPS):
            step()
        rates.append(TIMED_STEPS * n_images / (time.perf_counter() - start))
    return first, statistics.median(rates)


def precision_for(precision: str, accelerator: bool) -> str:
    """--precision as a worker applies it: "auto" is bfloat16 on an accelerator."""
    return ("bfloat16" if accelerator else "float32") if precision == "auto" else precision


def jax_device() -> tuple[str, bool]:
    """(JAX's default device kind, whether it is an accelerator)."""
    import jax

    return jax.devices()[0].device_kind, jax.default_backend() != "cpu"


def worker_digitjax(model: str, precision: str) -> dict:
    import jax
    from common import step_config

    from digitjax import loop, parallel, train
    from digitjax.models import conv

    config = step_config(model, BATCH)
    parallel.set_cpu_devices(config.cpu_devices)  # the shipped config's, as `main` applies it
    device, accelerator = jax_device()  # after: asking starts the backends
    config.dtype = precision_for(precision, accelerator)  # the CPU tricks take float32 only
    # placed as the loop places them: state replicated, batch split over the data mesh
    # (all CPU devices: 2 on a 2-core CPU, see digitjax/cpu_flags.py, unless the config
    # sets one, as configs/best.py and its ensemble members do)
    mesh = parallel.data_mesh(config)
    state = jax.device_put(
        train.create_train_state(config, jax.random.key(0), (28, 28, 1), 10, 100),
        parallel.replicated(mesh))
    train_fn = loop.make_train_fn(config, None)
    x, y = digits()
    xd, yd = parallel.global_array(x, mesh), parallel.global_array(y, mesh)
    holder = {"state": state}

    def step():
        holder["state"], m = train_fn(holder["state"], xd, yd)
        jax.block_until_ready(m)

    compile_s, train_rate = timed(step, BATCH)  # the first call compiles
    # XLA's cost analysis counts no FLOPs inside a custom call (the C++ kernels): the
    # FLOPs are those of the same step traced with lax's own convolutions (whose input
    # gradients also count the multiplies by padding that the kernels skip)
    with conv.tricks_off():
        flops = loop.make_train_fn(config, None).lower(
            holder["state"], xd, yd).compile().cost_analysis()
    flops = (flops[0] if isinstance(flops, list) else flops).get("flops", float("nan"))
    predict = jax.jit(lambda s, im: train.apply_model(s, im.astype("float32") / 255.0))
    _, infer_rate = timed(lambda: jax.block_until_ready(predict(holder["state"], xd)), BATCH)
    return {"compile_s": compile_s, "train_ips": train_rate, "infer_ips": infer_rate,
            # cost analysis of a program split over the mesh counts one device's share
            "train_flops_per_image": flops * mesh.size / BATCH, "devices": mesh.size,
            "device": device if accelerator else "cpu", "dtype": config.dtype}


def worker_torch(model: str, precision: str, variant: str = "") -> dict:
    """PyTorch as a user runs it (NCHW, eager); `variant` "channels_last" (NHWC memory
    format, which oneDNN's CPU convolutions prefer) or "compile" (`torch.compile`, its
    default inductor backend): the peer's own speed-ups, reported beside its default.
    On CUDA when PyTorch sees it, bfloat16 by autocast where `precision` says so."""
    import contextlib

    import torch
    from torch import nn

    cuda = torch.cuda.is_available()
    dtype = precision_for(precision, cuda)
    device = torch.device("cuda" if cuda else "cpu")

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    if model == "seed":
        net = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Flatten(),
                            nn.Linear(26 * 26 * 32, 10))
    elif model == "flax_example":
        net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
            nn.Linear(7 * 7 * 64, 256), nn.ReLU(), nn.Linear(256, 10))
    elif model == "strided_cnn":  # configs/best.py's network, layer for layer
        def conv(c_in, c_out, k, stride=1, padding=0):
            return [nn.Conv2d(c_in, c_out, k, stride, padding, bias=False),
                    nn.BatchNorm2d(c_out), nn.ReLU()]

        net = nn.Sequential(
            *conv(1, 32, 3), *conv(32, 32, 3), *conv(32, 32, 5, 2, 2), nn.Dropout(0.4),
            *conv(32, 64, 3), *conv(64, 64, 3), *conv(64, 64, 5, 2, 2), nn.Dropout(0.4),
            *conv(64, 128, 4), nn.Flatten(), nn.Dropout(0.4), nn.Linear(128, 10))
    elif model.startswith("kernel_cnn:"):  # configs/kernel_cnn.py:K's network
        from digitjax.configs import kernel_cnn

        k = int(model.split(":")[1])
        layers, c_in, side = [], 1, 28
        for f in kernel_cnn.FEATURES[k]:
            layers += [nn.Conv2d(c_in, f, k, bias=False), nn.BatchNorm2d(f), nn.ReLU()]
            c_in, side = f, side - k + 1
        net = nn.Sequential(*layers, nn.Flatten(), nn.BatchNorm1d(c_in * side * side),
                            nn.Dropout(0.25), nn.Linear(c_in * side * side, 10))
    elif model == "inception_cnn":  # configs/inception_cnn.py's network (32, 64; 1 block)
        def conv(c_in, c_out, k):
            return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),
                                 nn.BatchNorm2d(c_out), nn.ReLU())

        class Block(nn.Module):
            def __init__(self, c_in, f):
                super().__init__()
                b = f // 4
                self.one = conv(c_in, b, 1)
                self.three = nn.Sequential(conv(c_in, b, 1), conv(b, b, 3))
                self.five = nn.Sequential(conv(c_in, b, 1), conv(b, b, 3), conv(b, b, 3))
                self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv(c_in, f - 3 * b, 1))

            def forward(self, x):
                return torch.cat([self.one(x), self.three(x), self.five(x), self.pool(x)], 1)

        net = nn.Sequential(conv(1, 16, 3), Block(16, 32), nn.MaxPool2d(2), Block(32, 64),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3),
                            nn.Linear(64, 10))
    else:  # digitjax's default CNN, layer for layer
        net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.AvgPool2d(2), nn.Flatten(),
            nn.Linear(7 * 7 * 64, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU(),
            nn.Dropout(0.25), nn.Linear(256, 10))
    net.to(device)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x, y = digits()
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device)  # NCHW, its layout
    yt = torch.from_numpy(y).long().to(device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if (
        dtype == "bfloat16") else contextlib.nullcontext
    sync = torch.cuda.synchronize if cuda else (lambda: None)  # CUDA calls return early
    if variant == "channels_last":  # Module.to converts the parameters in place
        net.to(memory_format=torch.channels_last)
        xt = xt.contiguous(memory_format=torch.channels_last)
    # torch.compile compiles at the first call of each mode (train, eval)
    forward = torch.compile(net) if variant == "compile" else net

    def step():
        net.train()
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(forward(xt.float() / 255.0), yt)
        loss.backward()
        opt.step()
        sync()

    compile_s, train_rate = timed(step, BATCH)

    def infer():
        net.eval()
        with torch.inference_mode(), autocast():
            forward(xt.float() / 255.0)
        sync()

    _, infer_rate = timed(infer, BATCH)
    return {"compile_s": compile_s, "train_ips": train_rate, "infer_ips": infer_rate,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu", "dtype": dtype}


def worker_keras(model: str, precision: str) -> dict:
    import keras
    from keras import layers

    device, accelerator = jax_device()  # Keras 3 on its JAX backend: JAX's device
    dtype = precision_for(precision, accelerator)
    if dtype == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    if model == "seed":
        net = keras.Sequential([keras.Input((28, 28, 1)), layers.Conv2D(32, 3, activation="relu"),
                                layers.Flatten(), layers.Dense(10)])
    elif model == "flax_example":
        net = keras.Sequential([
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, 3, padding="same", activation="relu"), layers.AveragePooling2D(2),
            layers.Conv2D(64, 3, padding="same", activation="relu"), layers.AveragePooling2D(2),
            layers.Flatten(), layers.Dense(256, activation="relu"), layers.Dense(10)])
    elif model == "strided_cnn":
        def conv(f, k, stride=1, padding="valid"):
            return [layers.Conv2D(f, k, stride, padding, use_bias=False),
                    layers.BatchNormalization(), layers.ReLU()]

        net = keras.Sequential([
            keras.Input((28, 28, 1)), *conv(32, 3), *conv(32, 3), *conv(32, 5, 2, "same"),
            layers.Dropout(0.4), *conv(64, 3), *conv(64, 3), *conv(64, 5, 2, "same"),
            layers.Dropout(0.4), *conv(128, 4), layers.Flatten(), layers.Dropout(0.4),
            layers.Dense(10)])
    else:  # "cnn" (KERAS_MODELS lists the networks written here)
        net = keras.Sequential([
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, 3, padding="same", use_bias=False), layers.BatchNormalization(),
            layers.ReLU(), layers.AveragePooling2D(2),
            layers.Conv2D(64, 3, padding="same", use_bias=False), layers.BatchNormalization(),
            layers.ReLU(), layers.AveragePooling2D(2), layers.Flatten(),
            layers.Dense(256, use_bias=False), layers.BatchNormalization(), layers.ReLU(),
            layers.Dropout(0.25), layers.Dense(10)])
    net.compile(keras.optimizers.Adam(1e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = digits()
    xf = x.astype("float32") / 255.0
    compile_s, train_rate = timed(lambda: net.train_on_batch(xf, y), BATCH)
    _, infer_rate = timed(lambda: net.predict_on_batch(xf), BATCH)
    return {"compile_s": compile_s, "train_ips": train_rate, "infer_ips": infer_rate,
            "device": device if accelerator else "cpu", "dtype": dtype}


def peak_rss_mb() -> float:
    """This process's peak resident memory. Not getrusage's ru_maxrss: on Linux it
    survives execve, so a worker would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_worker(framework: str, model: str, precision: str) -> None:
    result = {"digitjax": worker_digitjax, "torch": worker_torch,
              "torch_channels_last": lambda m, p: worker_torch(m, p, "channels_last"),
              "torch_compile": lambda m, p: worker_torch(m, p, "compile"),
              "torch_malloc": worker_torch,  # eager, in a process started with TORCH_MALLOC
              "keras": worker_keras}[framework](model, precision)
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result))


# --- The harness ----------------------------------------------------------------------


def available(framework: str) -> bool:
    if framework == "digitjax":
        return True
    try:
        __import__(framework.split("_")[0])
        return True
    except ImportError:
        return False


def measure(framework: str, model: str, precision: str) -> dict:
    env = dict(os.environ)
    if framework == "torch_malloc":
        env["GLIBC_TUNABLES"] = TORCH_MALLOC
    proc = subprocess.run([sys.executable, __file__, "--worker", framework, model, precision],
                          capture_output=True, text=True, env=env, cwd=REPO)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        raise RuntimeError(f"{framework}/{model} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[0][len("RESULT "):])


def matmul_gflops() -> float:
    """This machine's float32 matmul peak as XLA reaches it (2048^3, median of 5)."""
    code = ("import jax, jax.numpy as jnp, time, statistics\n"
            "a = jnp.ones((2048, 2048)); f = jax.jit(lambda a: a @ a); f(a).block_until_ready()\n"
            "r = []\n"
            "for _ in range(5):\n"
            "    t = time.perf_counter(); f(a).block_until_ready()\n"
            "    r.append(2 * 2048**3 / (time.perf_counter() - t) / 1e9)\n"
            "print(statistics.median(r))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


N_DIGITS, N_TRAIN = 42_000, 37_800  # train.csv's rows; the training split of 90% of them
TFDS_CONFIG = ("from digitjax.configs import tfds_digits\n"
               "c = tfds_digits.get_config()\n"
               f"c.tfds_data_dir = {str(DATA / 'tfds')!r}\n")


def data_path() -> list[tuple[str, float, int, float]]:
    """(what, seconds, images, peak RSS MB) for the data path, each in a fresh process
    (cold = no digitjax cache): the pixel CSV, PNG files and the TFDS dataset of the
    same 42,000 digits, read whole and (TFDS) by index in the loop's batches of 128;
    then one epoch of `main` fed from each."""
    rows = []
    batches = ("import numpy as np\n"
               "from digitjax.data.sampling import epoch_batches\n"
               f"order = epoch_batches(np.arange({N_DIGITS}), 128, 0, 1)\n")
    with tempfile.TemporaryDirectory() as tmp:
        csv_code = ("from digitjax.data.pixels import read_pixel_csv\n"
                    "t = time.perf_counter()\n"
                    f"read_pixel_csv({str(DATA / 'digit-recognizer' / 'train.csv')!r}, "
                    f"cache_dir={tmp!r})\n")
        for label in ("train.csv -> uint8, cold", "train.csv -> uint8, cached"):
            rows.append((label, *_measure(csv_code)))
        subprocess.run([sys.executable, str(DATA / "make_mnist_png.py"), "--split", "train"],
                       check=True, capture_output=True)
        png_code = ("from pathlib import Path\n"
                    "from digitjax.data import images as I\n"
                    "t = time.perf_counter()\n"
                    f"p, _, _ = I.list_class_folders(Path({str(DATA / 'mnist-png' / 'train')!r}))\n"
                    "I.decode_all(p, I.DecodeSettings(28, 1, 'resize', False, 2), "
                    f"Path({tmp!r}))\n")
        for label in ("42,000 PNGs -> uint8, cold", "42,000 PNGs -> uint8, cached"):
            rows.append((label, *_measure(png_code)))
        rows.append(("train.csv in memory: 42,000 rows gathered by index, batches of 128",
                     *_measure(batches + "from digitjax.data.pixels import read_pixel_csv\n"
                               f"x = read_pixel_csv({str(TRAIN_CSV)!r}, cache_dir={tmp!r})"
                               ".pixels.reshape(-1, 28, 28, 1)\n"
                               "t = time.perf_counter()\nfor b in order: x[b]\n")))
        # imports before the clock, as for the CSV: TFDS's import is ~0.3 s once per process
        tfds_load = (TFDS_CONFIG + "import tensorflow_datasets\n"
                     "from digitjax.data import load_train\n")
        rows.append(("TFDS -> uint8 in memory: open + decode 42,000 PNG records",
                     *_measure(tfds_load + "t = time.perf_counter()\nload_train(c, None)\n")))
        rows.append(("TFDS, tfds.data_source's own per-example decode of the 42,000",
                     *_measure("import tensorflow_datasets as tfds\nt = time.perf_counter()\n"
                               f"s = tfds.data_source('digit_recognizer', data_dir="
                               f"{str(DATA / 'tfds')!r}, split='train', download=False)\n"
                               f"s.__getitems__(list(range({N_DIGITS})))\n")))
        rows.append(("TFDS lazy: open + labels of 42,000 (no image decoded)",
                     *_measure(tfds_load + "c.tfds_in_memory_mb = 0\n"
                               "t = time.perf_counter()\nload_train(c, None)\n")))
        rows.append(("TFDS lazy: 42,000 images read by index, batches of 128 (an epoch's reads)",
                     *_measure(tfds_load + batches + "c.tfds_in_memory_mb = 0\n"
                               "d = load_train(c, None)\nt = time.perf_counter()\n"
                               "for b in order: d.images[b]\n")))
        for name, flags in [("pixel CSV", ["--config", "configs/default.py",
                                           f"--config.data_dir={DATA / 'digit-recognizer'}"]),
                            ("TFDS in memory", ["--config", "configs/tfds_digits.py",
                                                f"--config.tfds_data_dir={DATA / 'tfds'}",
                                                f"--config.data_dir={DATA / 'digit-recognizer'}"]),
                            ("TFDS lazy", ["--config", "configs/tfds_digits.py",
                                           f"--config.tfds_data_dir={DATA / 'tfds'}",
                                           f"--config.data_dir={DATA / 'digit-recognizer'}",
                                           "--config.tfds_in_memory_mb=0"])]:
            workdir = f"{tmp}/run_{name.replace(' ', '_')}"
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "digitjax.main", *flags, f"--workdir={workdir}",
                            "--config.num_epochs=1", "--config.progress=false"], cwd=REPO,
                           check=True, capture_output=True, env=dict(os.environ))
            wall = time.perf_counter() - start
            epoch = json.loads((Path(workdir) / "metrics.jsonl").read_text())["seconds"]
            rows.append((f"main, default recipe, {name}: 1 epoch of 37,800 images (train loop)",
                         epoch, N_TRAIN, float("nan")))
            rows.append((f"main, default recipe, {name}: whole 1-epoch run incl. start-up, "
                         "eval, 28,000 test predictions", wall, 0, float("nan")))
    return rows


def _measure(code: str) -> tuple[float, int, float]:
    """(seconds from `t` to the end of `code`, images, peak RSS MB) in a fresh process."""
    code = ("import time\n" + code + "seconds = time.perf_counter() - t\n"
            "from pathlib import Path\n"
            "rss = [int(x.split()[1]) / 1024 for x in Path('/proc/self/status').read_text()"
            ".splitlines() if x.startswith('VmHWM:')][0]\n"
            "print(seconds, rss)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO)
    seconds, rss = out.stdout.strip().splitlines()[-1].split()
    return float(seconds), N_DIGITS, float(rss)


def ratio(ours: list[dict], peer: list[dict], key: str) -> str:
    """digitjax/peer of the medians over rounds and, with 2 or more rounds, the lowest
    and highest ratio of one round (each round's processes ran back to back): the noise."""
    medians = [statistics.median(r[key] for r in runs) for runs in (ours, peer)]
    text = f"{medians[0] / medians[1]:.2f}"
    rounds = [o[key] / p[key] for o, p in zip(ours, peer, strict=True)]
    return text + (f" ({min(rounds):.2f}-{max(rounds):.2f})" if len(rounds) > 1 else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=3, metavar=("FRAMEWORK", "MODEL", "PRECISION"))
    ap.add_argument("--models", default="flax_example,cnn,seed,strided_cnn,kernel_cnn:3,"
                    "kernel_cnn:5,kernel_cnn:7,inception_cnn")
    ap.add_argument("--peers", default=PEERS,
                    help=f"peers to time, from {', '.join(FRAMEWORKS[1:])}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                    help="compute precision of every framework; auto: bfloat16 on a GPU")
    ap.add_argument("--skip-data", action="store_true")
    ap.add_argument("--skip-models", action="store_true")
    ap.add_argument("--out", default="", help="Markdown file to write (default "
                    "experiments/results/benchmark.md)")
    a = ap.parse_args()
    if a.worker:
        return run_worker(*a.worker)
    if a.skip_models:
        a.models = ""
    models = [m for m in a.models.split(",") if m]
    peers = [p for p in a.peers.split(",") if p]  # --peers "": digitjax alone
    unknown = set(peers) - set(FRAMEWORKS[1:])
    if unknown:
        sys.exit(f"--peers: unknown {sorted(unknown)}; expected names from "
                 f"{', '.join(FRAMEWORKS[1:])}")
    for p in peers:
        if not available(p):
            print(f"--peers: {p} is not installed (pip install -e '.[bench]'); left out")
    frameworks = [f for f in FRAMEWORKS if f == "digitjax" or (f in peers and available(f))]
    load = os.getloadavg()[0]  # other work on the machine slows every number here
    peak = matmul_gflops()
    results = {(f, m): [] for f in frameworks for m in models
               if f != "keras" or m in KERAS_MODELS}
    for _ in range(a.rounds):  # interleaved: each framework sees the same machine state
        for model in models:
            for f in frameworks:
                if (f, model) in results:
                    results[(f, model)].append(measure(f, model, a.precision))
    lines = [f"Machine: {cpu_name()}, {os.cpu_count()} cores, load average {load:.1f} at the "
             f"start; float32 matmul peak (XLA) {peak:.0f} GFLOP/s"
             + (f"; batch {BATCH}; medians over {a.rounds} rounds x {REPEATS} repeats of "
                f"{TIMED_STEPS} steps; a ratio's brackets: its lowest and highest round."
                if models else "."), ""]
    if models:
        lines += ["| model | framework | train img/s | infer img/s | first step s | peak RSS MB "
                  "| digitjax/peer train | digitjax/peer infer | effective % of matmul peak |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model in models:
        med = {f: {k: statistics.median(r[k] for r in results[(f, model)])
                   for k, v in results[(f, model)][0].items() if not isinstance(v, str)}
               for f in frameworks if (f, model) in results}
        ours = med["digitjax"]
        for f in med:
            m = med[f]
            ratio_t, ratio_i = (("-", "-") if f == "digitjax" else
                                (ratio(results[("digitjax", model)], results[(f, model)], k)
                                 for k in ("train_ips", "infer_ips")))
            frac = ""
            if "train_flops_per_image" in ours:  # same network: same FLOPs per image
                frac = f"{100 * ours['train_flops_per_image'] * m['train_ips'] / 1e9 / peak:.0f}%"
            who = f"digitjax ({m['devices']:.0f} XLA device{'s' * (m['devices'] > 1)})" if (
                f == "digitjax" and "devices" in m) else f
            where = results[(f, model)][0]  # device and precision: the same every round
            if (where["device"], where["dtype"]) != ("cpu", "float32"):
                who += f" [{where['device']}, {where['dtype']}]"
            lines.append(f"| {model} | {who} | {m['train_ips']:.0f} | {m['infer_ips']:.0f} | "
                         f"{m['compile_s']:.2f} | {m['peak_rss_mb']:.0f} | {ratio_t} | "
                         f"{ratio_i} | {frac} |")
        lines.append(f"| {model} | (XLA cost analysis) | "
                     f"{ours['train_flops_per_image'] / 1e6:.1f} MFLOP per image per "
                     "training step, lax's convolutions | | | | | | |")
    if models:  # winograd multiplies less than lax's convolution that the FLOPs count
        lines += ["", "Effective % of matmul peak: lax's convolution FLOPs per image x images/s "
                  "over the matmul peak. The kernels multiply less than lax's convolution "
                  "counts (winograd; no multiplies by padding), so this is a rate, not the "
                  "share of the hardware used, and it can overstate that share."]
    if not a.skip_data:
        lines += [""] * bool(models) + ["| data path | seconds | images/s | peak RSS MB |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {label} | {sec:.2f} | {f'{n / sec:.0f}' if n else ''} | "
                  f"{'' if rss != rss else f'{rss:.0f}'} |" for label, sec, n, rss in data_path()]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(a.out) if a.out else REPO / "experiments" / "results" / "benchmark.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python experiments/benchmark.py", *sys.argv[1:]])
    out.write_text(f"# Benchmark\n\nReproduce: `{command}`\n\n" + text)


if __name__ == "__main__":
    main()
