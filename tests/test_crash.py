"""No work lost, no silent wrong answer: kill -9 at named moments, SIGTERM and SIGINT
mid-epoch, a signal to one of two processes, damaged checkpoints, two runs on one
workdir, a disk that fills up, a read-only workdir, a bucket URL as workdir.

Every resumed run must end bit-identical to the uninterrupted one: same test
probabilities byte for byte, each epoch once in metrics.jsonl.
"""

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from digitjax import checkpoint, loop
from digitjax.configs import seed
from tests.conftest import REPO
from tests.test_report import events

# The seed model, 2 epochs of 18 steps (577 training rows, batch 32).
FLAGS = ["--config", "configs/seed.py", "--config.num_epochs=2", "--config.progress=false"]


def main(workdir, data, *extra, crash: str = "", env: dict | None = None, wait=True):
    env = dict(os.environ, **(env or {}))
    env.pop("DIGITJAX_CRASH_AT", None)
    if crash:
        env["DIGITJAX_CRASH_AT"] = crash
    cmd = [sys.executable, "-m", "digitjax.main", *FLAGS, f"--workdir={workdir}",
           f"--config.data_dir={data}", *extra]
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def reference(digits_dir, tmp_path_factory):
    """The uninterrupted run."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    proc = main(workdir, digits_dir)
    assert proc.returncode == 0, proc.stderr
    return workdir


def assert_same_as(reference: Path, workdir: Path) -> None:
    assert (workdir / "test_probs.npy").read_bytes() == (reference / "test_probs.npy").read_bytes()
    epochs = [json.loads(x)["epoch"] for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    assert timeless_metrics(workdir) == timeless_metrics(reference)


def timeless_metrics(workdir: Path) -> list[dict]:
    """metrics.jsonl without its wall-clock fields: every loss and accuracy, exactly."""
    clock = ("seconds", "images_per_second", "resumed_at_batch")
    return [{k: v for k, v in json.loads(x).items() if k not in clock}
            for x in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("crash, extra", [
    ("data_loaded:1", []),  # during start-up, nothing saved yet
    ("step:25", []),  # mid-epoch 2, the epoch-1 checkpoint is the newest
    ("metrics_written:1", []),  # metrics.jsonl has epoch 1, its checkpoint not started
    ("save_started:1", []),  # epoch 1's checkpoint being written in the background
    ("before_save:2", []),  # between the epoch-1 and epoch-2 checkpoints
    ("step:27", ["--config.checkpoint_every_steps=5"]),  # after a mid-epoch save at 25
])
def test_kill_9_then_resume_is_bit_identical(reference, digits_dir, tmp_path, crash, extra):
    killed = main(tmp_path, digits_dir, *extra, crash=crash)
    assert killed.returncode == -9, killed.stderr
    resumed = main(tmp_path, digits_dir, *extra)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_as(reference, tmp_path)


@pytest.mark.parametrize("signal_name, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_mid_epoch_saves_that_step_and_resumes_bit_identical(
        reference, digits_dir, tmp_path, signal_name, code):
    stopped = main(tmp_path, digits_dir, crash=f"step:25:{signal_name}")
    assert stopped.returncode == code
    assert "Traceback" not in stopped.stderr
    assert (f"stopped by {signal_name} after step 25 (epoch 2, batch 7 of 18); saved in "
            f"{tmp_path / 'checkpoints'}; run the same command to resume") in stopped.stderr
    assert checkpoint.latest_meta(tmp_path)["step"] == 25
    resumed = main(tmp_path, digits_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "in epoch 2, after batch 7" in resumed.stdout
    assert_same_as(reference, tmp_path)
    # Epoch 2's seconds are the resumed part's: its images/s counts batches 8-18 only.
    epoch2 = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[1])
    assert epoch2["resumed_at_batch"] == 7 and "(resumed at batch 7)" in resumed.stdout
    assert epoch2["images_per_second"] == pytest.approx((18 - 7) * 32 / epoch2["seconds"])
    assert "resumed_at_batch" not in json.loads(
        (tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    report = (tmp_path / "report.html").read_text()
    assert "(from batch 7)" in report and "1 epoch resumed mid-way" in report
    tags = events(tmp_path).Tags()["scalars"]  # a position, not a TensorBoard curve
    assert "epoch/images_per_second" in tags and "epoch/resumed_at_batch" not in tags


def damage_truncate(step_dir: Path) -> None:
    biggest = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[:100])


def damage_metadata(step_dir: Path) -> None:
    for p in step_dir.rglob("_METADATA"):
        p.unlink()


@pytest.mark.parametrize("damage", [damage_truncate, damage_metadata])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(reference, digits_dir,
                                                                  tmp_path, damage):
    for name in ("checkpoints", "config.json", "classes.json", "metrics.jsonl"):
        subprocess.run(["cp", "-r", str(reference / name), str(tmp_path / name)], check=True)
    damage(tmp_path / "checkpoints" / "36")
    # Predicting: the best checkpoint (36) is damaged, so the next one serves, with a warning.
    out = tmp_path / "out"
    pred = main(tmp_path, digits_dir, "--mode=predict",
                f"--input={digits_dir / 'test.csv'}", f"--output_dir={out}")
    assert pred.returncode == 0, pred.stderr
    assert f"warning: checkpoint {tmp_path / 'checkpoints' / '36'} cannot be read" in pred.stderr
    assert "Traceback" not in pred.stderr and (out / "submission.csv").is_file()
    # Resuming: epoch 2 is retrained from step 18 and ends as the uninterrupted run did.
    resumed = main(tmp_path, digits_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "/18 after epoch 1" in resumed.stdout
    assert (tmp_path / "checkpoints-damaged" / "36").is_dir()  # kept aside, not deleted
    assert_same_as(reference, tmp_path)


def test_a_second_run_on_a_workdir_in_use_refuses_and_touches_nothing(digits_dir, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / ".lock", "a+") as held:  # what a running run holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 12345 on trainer-0, since 2026-11-30 10:00:00")
        held.flush()
        proc = main(tmp_path, digits_dir)
        assert proc.returncode == 2
        assert proc.stderr.strip() == (
            f"error: {tmp_path}: in use by another run (pid 12345 on trainer-0, since "
            "2026-11-30 10:00:00); wait for it to end, or use another --workdir")
        # only the decoded-data cache (shared, written atomically) may have appeared
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "cache"]
        held.seek(0)
        assert held.read() == "pid 12345 on trainer-0, since 2026-11-30 10:00:00"
    # The holder is gone (as when its process dies): the workdir is free again.
    proc = main(tmp_path, digits_dir, "--config.num_epochs=1")
    assert proc.returncode == 0, proc.stderr


def test_a_second_real_run_is_refused_while_the_first_trains(digits_dir, tmp_path):
    first = main(tmp_path, digits_dir, "--config.num_epochs=200", wait=False)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.2)
        second = main(tmp_path, digits_dir, "--config.num_epochs=200")
        assert second.returncode == 2
        assert f"in use by another run (pid {first.pid} on " in second.stderr
    finally:
        first.kill()
        first.wait()


@pytest.fixture
def mount(tmp_path):
    """Mounts for the test (root only, as on the project's machines and CI)."""
    mounted = []

    def do(*args):
        subprocess.run(["mount", *args], check=True)
        mounted.append(args[-1])

    yield do
    for point in reversed(mounted):
        subprocess.run(["umount", point], check=False)


def test_a_full_disk_stops_with_one_line_and_keeps_the_earlier_checkpoint(
        digits_dir, tmp_path, mount):
    disk = tmp_path / "disk"
    disk.mkdir()
    mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk))  # room for one checkpoint
    proc = main(disk / "run", digits_dir, "--config.num_epochs=5")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write the run's files: "
                                                   "No space left on device"), proc.stderr
    meta = checkpoint.latest_meta(disk / "run")
    assert meta is not None and meta["epoch"] >= 1
    out = tmp_path / "out"
    pred = main(disk / "run", digits_dir, "--mode=predict",
                f"--input={digits_dir / 'test.csv'}", f"--output_dir={out}")
    assert pred.returncode == 0, pred.stderr  # what was saved before still predicts


def test_a_read_only_workdir_predicts_into_output_dir(reference, digits_dir, tmp_path, mount):
    ro = tmp_path / "ro"
    ro.mkdir()
    mount("--bind", str(reference), str(ro))
    mount("-o", "remount,ro,bind", str(ro))
    out = tmp_path / "out"
    pred = main(ro, digits_dir, "--mode=predict", f"--input={digits_dir / 'test.csv'}",
                f"--output_dir={out}")
    assert pred.returncode == 0, pred.stderr
    assert (out / "submission.csv").read_bytes() == (reference / "submission.csv").read_bytes()
    train = main(ro, digits_dir, "--config.num_epochs=3")
    assert train.returncode != 0 and "Traceback" not in train.stderr
    assert train.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Read-only file system" in train.stderr


def test_a_bucket_workdir_reaches_orbax_as_a_url(digits_dir, tmp_path, monkeypatch):
    """gs:// stays gs://: a stand-in filesystem (fsspec's in-memory one registered for
    the gs protocol) takes the files; orbax's manager is stopped at construction, its
    directory recorded. No local folder named 'gs:' appears."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    class StandInBucket(MemoryFileSystem):  # gs:// paths, kept in memory
        protocol = ("gs", "gcs")

        def __init__(self, *args, finalize_on_close=None, **kwargs):
            super().__init__(*args, **kwargs)

    for name in ("gs", "gcs"):
        fsspec.register_implementation(name, StandInBucket, clobber=True)
    monkeypatch.chdir(tmp_path)
    seen = []

    class Recorder:
        def __init__(self, directory, **kwargs):
            seen.append(str(directory))
            raise KeyboardInterrupt  # stop here: tensorstore would need a real bucket

    monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", Recorder)
    config = seed.get_config()
    config.data_dir, config.num_epochs = str(digits_dir), 1
    with pytest.raises(KeyboardInterrupt):
        loop.train_and_evaluate(config, "gs://bucket/run")
    assert seen == ["gs://bucket/run/checkpoints"]
    assert not any(p.name.startswith("gs") for p in tmp_path.iterdir())
    from etils import epath

    assert (epath.Path("gs://bucket/run") / ".lock").exists() is False  # no lock in a bucket
    for name in ("gs", "gcs"):  # later tests see the real (missing) gcsfs again
        fsspec.register_implementation(name, "gcsfs.GCSFileSystem", clobber=True,
                                       errtxt="Please install gcsfs to access Google Storage")


def test_a_bucket_url_without_its_filesystem_is_named(digits_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "digitjax.main", "--config", str(REPO / "configs" / "seed.py"),
         "--workdir=gs://no-such-bucket/run",
         f"--config.data_dir={digits_dir}"], cwd=tmp_path, capture_output=True, text=True,
        env=dict(os.environ))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --workdir: cannot reach 'gs://no-such-bucket/run' "
                                  "(Please install gcsfs to access Google Storage)")
    assert not list(tmp_path.iterdir())  # no folder named 'gs:'


def test_two_processes_stop_together_when_one_is_signalled(digits_dir, tmp_path):
    """Process 1 gets SIGTERM at step 5; both stop after step 20 (the first step where
    they compare flags), save it together, and the resumed pair ends as an
    uninterrupted pair does."""
    from tests.test_scale import free_port

    def pair(workdir, crash_on_1=""):
        port = free_port()
        procs = []
        for i in range(2):
            env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
            procs.append(main(workdir, digits_dir, "--config.batch_size=16",
                              "--config.cpu_devices=0",  # XLA_FLAGS' 2 devices each
                              f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                              f"--process_id={i}", env=env, wait=False,
                              crash=crash_on_1 if i == 1 else ""))
        outs = [p.communicate(timeout=600) for p in procs]
        return [(p.returncode, *out) for p, out in zip(procs, outs, strict=True)]

    straight = pair(tmp_path / "straight")
    assert [r[0] for r in straight] == [0, 0], straight[0][2][-2000:]
    stopped = pair(tmp_path / "run", crash_on_1="step:5:SIGTERM")
    assert [r[0] for r in stopped] == [143, 143], [r[2][-800:] for r in stopped]
    assert "after step 20 (epoch 1, batch 20 of 36)" in stopped[0][2]
    assert checkpoint.latest_meta(tmp_path / "run")["step"] == 20
    resumed = pair(tmp_path / "run")
    assert [r[0] for r in resumed] == [0, 0], resumed[0][2][-2000:]
    a = np.load(tmp_path / "straight" / "test_probs.npy")
    b = np.load(tmp_path / "run" / "test_probs.npy")
    assert np.array_equal(a, b)


def test_a_relative_workdir_trains_and_resumes(digits_dir, tmp_path):
    """As the README runs it: --workdir=runs/default, relative to where you stand."""
    config = str(REPO / "configs" / "seed.py")
    cmd = [sys.executable, "-m", "digitjax.main", "--config", config, "--workdir=runs/x",
           f"--config.data_dir={digits_dir}", "--config.progress=false"]
    first = subprocess.run([*cmd, "--config.num_epochs=1"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    again = subprocess.run([*cmd, "--config.num_epochs=2"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stdout
    assert (tmp_path / "runs" / "x" / "submission.csv").is_file()
