"""Helpers for the experiment scripts: the config the speed scripts time, run the
command line, read a workdir, write a Markdown table."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import ml_collections

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DIGITS = DATA / "digit-recognizer"  # the competition's train.csv and test.csv


def cpu_name() -> str:
    """The CPU model, for a results header: timings from two hosts are not comparable."""
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    return next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")),
                "unknown CPU")


def step_config(model: str, batch_size: int = 128) -> ml_collections.ConfigDict:
    """The config the speed scripts time `model` under: its shipped config ("seed":
    configs/seed.py, "strided_cnn": configs/best.py, "kernel_cnn:K" and
    "inception_cnn": the ensemble members' configs, "flax_example": the Flax MNIST
    example, i.e. the default CNN without batch norm or dropout, any other name in
    digitjax.models.MODELS: configs/default.py with that model), at `batch_size`, with
    augmentation off so only the network is timed. Its `cpu_devices` is the shipped
    one; benchmark.py applies it (`parallel.set_cpu_devices`) as `main` does, the other
    scripts time the split they are started with."""
    from digitjax.configs import best, default, inception_cnn, kernel_cnn, seed

    if model == "seed":
        config = seed.get_config()
    elif model == "strided_cnn":
        config = best.get_config()
    elif model.startswith("kernel_cnn:"):
        config = kernel_cnn.get_config(model.split(":")[1])
    elif model == "inception_cnn":
        config = inception_cnn.get_config()
    else:
        config = default.get_config()
        if model == "flax_example":
            config.cnn.batch_norm, config.cnn.dropout = False, 0.0
        else:
            config.model = model
    config.batch_size = batch_size
    config.augment.rotation_deg = config.augment.zoom = config.augment.shift = 0.0
    return config


def validation_split(workdir: Path):
    """(config, data, rows): a trained workdir's saved config, its training data, and
    the rows of that data its validation split holds."""
    from digitjax import workdir as runs
    from digitjax.configs import default
    from digitjax.data import load_train
    from digitjax.data.sampling import train_val_rows

    config = runs.saved_config(workdir, default.get_config())
    data = load_train(config, Path(workdir) / "cache")
    _, rows = train_val_rows(data.labels, config)
    return config, data, rows


def run_main(*args: str) -> float:
    """Runs `python -m digitjax.main ARGS`, streaming its output; returns wall seconds."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "digitjax.main", *args], cwd=REPO)
    if proc.returncode:
        sys.exit(f"failed: digitjax.main {' '.join(args)}")
    return time.perf_counter() - start


def train_folds(config: str, member: Path, folds: int, *overrides: str,
                first: int = 0) -> float:
    """Trains `config` on each of the k folds of `config.num_folds` into member/fold<i>
    (the first `first` of them only, if given: a screening run); each fold's last
    checkpoint predicts its held-out rows (nothing chosen on them), so the k folds
    together predict every training row once, out of fold. A fold run before with the
    same config resumes or says it is trained (seconds); with another config,
    digitjax.main refuses its workdir and this exits. Returns the wall seconds spent."""
    wall = 0.0
    for fold in range(first or folds):
        workdir = Path(member) / f"fold{fold}"
        wall += run_main("--config", config, f"--workdir={workdir}",
                         f"--config.data_dir={DIGITS}",
                         f"--config.num_folds={folds}", f"--config.fold={fold}",
                         "--config.predict_checkpoint=last", "--config.plots=false",
                         "--config.progress=false", *overrides)
    return wall


def metrics(workdir: Path) -> list[dict]:
    return [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def summary(workdir: Path) -> dict:
    """Best and last validation accuracy of a finished run."""
    records = metrics(workdir)
    return {"best_val": max(r.get("val_accuracy", 0.0) for r in records),
            "last_val": records[-1].get("val_accuracy", float("nan")),
            "epochs": records[-1]["epoch"],
            "train_seconds": sum(r["seconds"] for r in records)}


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.4f}" if isinstance(row[c], float) and row[c] < 1.5
                 else f"{row[c]:.1f}" if isinstance(row[c], float) else str(row[c])
                 for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def time_pair(fns, args, rounds: int = 7, calls: int = 10) -> list[float]:
    """Median ms per call of each function, timed in alternating rounds."""
    for f in fns:
        f(*args).block_until_ready()
    times = [[] for _ in fns]
    for _ in range(rounds):
        for f, t in zip(fns, times, strict=True):
            start = time.perf_counter()
            for _ in range(calls):
                out = f(*args)
            out.block_until_ready()
            t.append((time.perf_counter() - start) / calls * 1e3)
    return [statistics.median(t) for t in times]


def write_results(name: str, title: str, table: str, command: str) -> Path:
    out = REPO / "experiments" / "results" / f"{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# {title}\n\nReproduce: `{command}`\n\n{table}")
    print(table)
    return out
