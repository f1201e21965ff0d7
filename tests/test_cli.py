"""The command line as a user meets it: outputs, predict mode, and bad input."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.conftest import run_main, train_seed_one_epoch


def snapshot(folder):
    """Hashes of every file in `folder` but the parse cache (a new, correct entry
    there damages nothing) and the lock (it names the last run that held it)."""
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).parts[0] not in ("cache", ".lock")}


def assert_clean_failure(proc, *fragments):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_training_writes_every_output(trained_workdir):
    names = {p.name for p in trained_workdir.iterdir()}
    assert {"config.json", "classes.json", "metrics.jsonl", "submission.csv",
            "predictions.csv", "test_probs.npy", "checkpoints", "cache"} <= names
    # one checkpoint per epoch, named by its step (15 steps of 32 from 511 training rows)
    step = json.loads((trained_workdir / "metrics.jsonl").read_text())["step"]
    assert {p.name for p in (trained_workdir / "checkpoints").iterdir()} == {"15"} == {str(step)}
    sub = pd.read_csv(trained_workdir / "submission.csv")
    assert list(sub.columns) == ["ImageId", "Label"]
    assert sub["ImageId"].tolist() == list(range(1, 51))
    assert sub["Label"].between(0, 9).all()
    probs = np.load(trained_workdir / "test_probs.npy")
    assert probs.shape == (50, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert np.array_equal(probs.argmax(axis=1), sub["Label"].to_numpy())


@pytest.mark.parametrize("fast", ["1", "0"])
def test_a_finished_command_ends_after_its_exit_handlers_and_output(fast):
    """`main.exit_without_teardown`: the exit handlers run and the output is flushed,
    then the process ends there (DIGITJAX_FAST_EXIT=0: it returns, the ordinary exit)."""
    code = ("import atexit\nfrom digitjax import main\n"
            "atexit.register(lambda: print('handler ran'))\n"
            "print('output', end='')\nmain.exit_without_teardown()\nprint(' returned')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "DIGITJAX_FAST_EXIT": fast}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == {"1": "outputhandler ran\n", "0": "output returned\nhandler ran\n"}[fast]


def test_predict_mode_reloads_without_retraining(trained_workdir, digits_dir, tmp_path):
    before = snapshot(trained_workdir / "checkpoints")
    proc = run_main("--config", "configs/seed.py", f"--workdir={trained_workdir}",
                    "--mode=predict", f"--input={digits_dir / 'test.csv'}",
                    f"--output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert "epoch" not in proc.stdout
    preds = pd.read_csv(tmp_path / "predictions.csv")
    assert list(preds.columns) == ["id", "label"] + [f"prob_{i}" for i in range(10)]
    assert len(preds) == 50
    # the same best checkpoint on the same file: the training run's submission, exactly
    assert (tmp_path / "submission.csv").read_bytes() == \
        (trained_workdir / "submission.csv").read_bytes()
    assert snapshot(trained_workdir / "checkpoints") == before


def test_a_run_on_its_own_device_count_predicts_under_other_counts(digits_dir, tmp_path):
    """Trained on one CPU device with an odd eval batch; predicted by a process with
    digitjax's 2-device split (no --config): the mesh shrinks to what divides the batch,
    and the predictions are the training run's own. Under 2 devices the user chose
    (XLA_FLAGS), which nothing shrinks, prediction pads its batch to 6 instead."""
    workdir = tmp_path / "run"
    proc = train_seed_one_epoch(workdir, digits_dir, "--config.cpu_devices=1",
                                "--config.eval_batch_size=5", "--config.plots=False")
    assert proc.returncode == 0, proc.stderr
    assert "devices: 1 cpu device on the data mesh" in proc.stdout + proc.stderr
    proc = run_main(f"--workdir={workdir}", "--mode=predict",
                    f"--input={digits_dir / 'test.csv'}", f"--output_dir={tmp_path / 'out'}")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "submission.csv").read_bytes() == \
        (workdir / "submission.csv").read_bytes()
    proc = run_main(f"--workdir={workdir}", "--mode=predict",
                    f"--input={digits_dir / 'test.csv'}", f"--output_dir={tmp_path / 'two'}",
                    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                         "DIGITJAX_CPU_SPLIT": ""})
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "two" / "submission.csv").read_bytes() == \
        (workdir / "submission.csv").read_bytes()


def write_csv(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


PIXELS = ",".join(f"pixel{i}" for i in range(784))
ROW = ",".join(["0"] * 784)


@pytest.mark.parametrize(
    "name, text, fragments",
    [
        ("missing.csv", None, ["missing.csv: no such file"]),
        ("empty.csv", "", ["empty.csv: the file is empty"]),
        ("text.csv", PIXELS + "\n" + ROW.replace("0", "x", 1) + "\n",
         ["text.csv, line 2, column 'pixel0'", "expected a pixel value 0-255, got 'x'"]),
        ("big.csv", PIXELS + "\n" + ROW + "\n" + ROW[:-1] + "300\n",
         ["big.csv, line 3, column 'pixel783'", "got '300'"]),
        ("narrow.csv", PIXELS.rsplit(",", 1)[0] + "\n" + ROW[2:] + "\n",
         ["narrow.csv: has 783 pixel columns, but the model was trained on 28x28x1 = 784"]),
    ],
)
def test_bad_predict_input_fails_cleanly_and_damages_nothing(
        trained_workdir, tmp_path, name, text, fragments):
    path = tmp_path / name if text is None else write_csv(tmp_path, name, text)
    before = snapshot(trained_workdir)
    proc = run_main("--config", "configs/seed.py", f"--workdir={trained_workdir}",
                    "--mode=predict", f"--input={path}")
    assert_clean_failure(proc, *fragments)
    assert snapshot(trained_workdir) == before


@pytest.mark.parametrize(
    "train_text, fragments",
    [
        ("label," + PIXELS + "\n12," + ROW + "\n",
         ["train.csv, line 2, column 'label'", "expected a label in 0..9", "got 12"]),
        (PIXELS + "\n" + ROW + "\n", ["train.csv: no label column 'label'"]),
        ("label," + PIXELS + "\n1,-3" + ROW[1:] + "\n",
         ["train.csv, line 2, column 'pixel0'", "got '-3'"]),
    ],
)
def test_bad_training_data_fails_cleanly_and_damages_nothing(
        trained_workdir, tmp_path, train_text, fragments):
    write_csv(tmp_path, "train.csv", train_text)
    before = snapshot(trained_workdir)
    proc = run_main("--config", "configs/seed.py", f"--workdir={trained_workdir}",
                    f"--config.data_dir={tmp_path}", "--config.num_epochs=2",
                    "--config.val_fraction=0.2")
    assert_clean_failure(proc, *fragments)
    assert snapshot(trained_workdir) == before


@pytest.mark.parametrize(
    "flag, fragments",
    [
        ("--config.num_epochs=abc", ["--config.num_epochs=abc", "invalid literal for int()"]),
        ("--config.batch_size=0", ["config.batch_size: expected an integer >= 1, got 0"]),
        ("--config.val_fraction=1.5", ["config.val_fraction: expected a number in [0, 1)"]),
        ("--config.model=vgg", ["config.model: expected one of ['cnn', 'inception_cnn', "
                                "'kernel_cnn', 'resnet', 'seed_cnn', 'strided_cnn'], got 'vgg'"]),
        ("--config.schedule=zigzag", ["config.schedule: expected one of ['constant'", "'zigzag'"]),
        ("--config.augment.shear_deg=-5", ["config.augment.shear_deg: expected a number >= 0, "
                                           "got -5.0"]),
        ("--config.augment.elastic_sigma=0", ["config.augment.elastic_sigma: expected a number "
                                              "> 0, got 0.0"]),
        ("--config.no_such_field=1", ["no config field 'no_such_field'"]),
        ("--config.cpu_devices=-1", ["config.cpu_devices: expected an integer >= 0"]),
        # the host split into 3 devices as asked, and a count you choose is not reduced
        ("--config.cpu_devices=3", ["config.batch_size: expected a multiple of the 3 devices, "
                                    "got 32"]),
        ("--config.learning_rate=0.01", ["this workdir holds a run with a different config",
                                         "config.learning_rate"]),
        ("--config.augment.zoom=0.2", ["a different config (fields config.augment.zoom)"]),
    ],
)
def test_bad_config_fails_cleanly_and_damages_nothing(trained_workdir, flag, fragments):
    before = snapshot(trained_workdir)
    proc = run_main("--config", "configs/seed.py", f"--workdir={trained_workdir}",
                    "--config.val_fraction=0.2", flag)
    assert_clean_failure(proc, *fragments)
    assert snapshot(trained_workdir) == before


@pytest.mark.parametrize("field, value, message", [
    ("cnn.features", ("abc",), "config.cnn.features: expected one or more channel counts"),
    ("cnn.features", (32, 0), "config.cnn.features: expected one or more channel counts"),
    ("tta_shifts", ((1,),), "config.tta_shifts: expected (dy, dx) pairs"),
    ("tta_shifts", (1, 2), "config.tta_shifts: expected (dy, dx) pairs"),
    ("checkpoint_every_steps", -5, "config.checkpoint_every_steps: expected an integer >= 0"),
    ("keep_checkpoints", 0, "config.keep_checkpoints: expected an integer >= 1"),
])
def test_check_config_refuses_values_no_run_could_use(field, value, message):
    """Values as `--config.FIELD=...` parses them, which ml_collections' own type check
    lets through (`--config.cnn.features=abc` becomes the 1-tuple ('abc',))."""
    from digitjax.config_checks import check_config
    from digitjax.configs import default
    from digitjax.errors import UserError

    config = default.get_config()
    *parents, name = field.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    node[name] = value
    with pytest.raises(UserError) as raised:
        check_config(config)
    assert str(raised.value).startswith(message), raised.value
    config = default.get_config()
    config.tta_shifts = ((0, 0), (1, -1))
    check_config(config)  # well-formed shifts pass


def test_a_workdir_or_output_dir_that_is_a_file_is_refused(tmp_path, digits_dir):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    proc = run_main("--config", "configs/seed.py", f"--workdir={afile}",
                    f"--config.data_dir={digits_dir}")
    assert_clean_failure(proc, f"--workdir: expected a folder (or a new path), got the file "
                               f"'{afile}'")
    proc = run_main("--config", "configs/seed.py", f"--workdir={tmp_path / 'run'}",
                    "--mode=predict", f"--input={digits_dir / 'test.csv'}",
                    f"--output_dir={afile}")
    assert_clean_failure(proc, "--output_dir: expected a folder (or a new path), got the file")
    assert afile.read_text() == "mine"


def test_a_bad_test_file_stops_the_run_before_the_first_epoch(tmp_path, digits_dir):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "train.csv").write_bytes((digits_dir / "train.csv").read_bytes())
    lines = (digits_dir / "test.csv").read_text().splitlines()
    cells = lines[3].split(",")
    cells[4] = "x"
    lines[3] = ",".join(cells)
    (data_dir / "test.csv").write_text("\n".join(lines) + "\n")
    proc = run_main("--config", "configs/seed.py", f"--workdir={tmp_path / 'run'}",
                    f"--config.data_dir={data_dir}", "--config.val_fraction=0.2")
    assert_clean_failure(proc, "test.csv, line 4, column 'pixel4': expected a pixel value "
                               "0-255, got 'x'")
    assert "epoch" not in proc.stdout
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bad_conv_tricks_env_fails_before_anything_is_written(tmp_path):
    proc = run_main("--config", "configs/default.py", f"--workdir={tmp_path / 'run'}",
                    env={"DIGITJAX_CPU_CONV_TRICKS": "row_split,fast"})
    assert_clean_failure(proc, "DIGITJAX_CPU_CONV_TRICKS='row_split,fast': expected 1, 0 or "
                         "names from space_to_depth, row_split, pool, pointwise, taps")
    assert not (tmp_path / "run").exists()


def test_missing_config_file(tmp_path):
    proc = run_main("--config", "configs/nope.py", f"--workdir={tmp_path}")
    assert_clean_failure(proc, "--config: cannot load 'configs/nope.py'")


def test_embedded_default_runs_offline(tmp_path):
    proc = run_main("--config", "configs/default.py", f"--workdir={tmp_path}",
                    "--config.num_epochs=1")
    assert proc.returncode == 0, proc.stderr
    assert "embedded 5,000 digits" in proc.stdout
    assert "--config.data_dir=path/to/digit-recognizer" in proc.stdout
    sub = pd.read_csv(tmp_path / "submission.csv")
    assert len(sub) == 1000


def test_validation_report_with_tta(trained_workdir, digits_dir):
    from digitjax import predict, workdir
    from digitjax.configs import default
    from digitjax.data import sampling

    config = workdir.saved_config(trained_workdir, default.get_config())
    assert config.model == "seed_cnn" and config.tta_shifts == ()
    report = predict.validation_report(config, trained_workdir)
    assert set(report) == {"best_epoch", "checkpoint", "val_count", "val_accuracy", "macro_f1",
                           "per_class", "confusion_matrix"}
    assert report["checkpoint"] == "best"
    record = json.loads((trained_workdir / "metrics.jsonl").read_text().splitlines()[-1])
    assert report["val_accuracy"] == pytest.approx(record["val_accuracy"], abs=1e-6)
    config.tta_shifts = ((0, 0), (1, 0), (0, -1))
    with_tta = predict.validation_report(config, trained_workdir)
    assert 0.0 < with_tta["val_accuracy_tta"] <= 1.0
    probs = np.load(trained_workdir / "val_probs.npy")
    labels = np.load(trained_workdir / "val_labels.npy")
    train_labels = pd.read_csv(digits_dir / "train.csv", usecols=["label"])["label"].to_numpy()
    _, val_idx = sampling.stratified_split(train_labels, 0.2, config.split_seed)
    assert probs.shape == (len(val_idx), 10) and np.array_equal(labels, train_labels[val_idx])
    assert np.array_equal(np.load(trained_workdir / "val_rows.npy"), val_idx)
    assert report["val_count"] == len(val_idx)
    assert np.mean(probs.argmax(1) == labels) == with_tta["val_accuracy_tta"]
