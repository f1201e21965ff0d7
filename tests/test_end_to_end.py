"""One real run on the competition's files (set DIGITJAX_DATA; fails when missing)."""

import json

import numpy as np
import pandas as pd

from tests.conftest import run_main


def test_default_config_on_the_shared_digits(shared_data, tmp_path):
    workdir = tmp_path / "run"
    proc = run_main("--config", "configs/default.py", f"--workdir={workdir}",
                    f"--config.data_dir={shared_data / 'digit-recognizer'}",
                    "--config.num_epochs=1")
    assert proc.returncode == 0, proc.stderr
    (record,) = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert record["epoch"] == 1 and record["step"] == 37_800 // 128
    assert record["val_accuracy"] > 0.95  # one epoch, all of it warmup: it learned
    sub = pd.read_csv(workdir / "submission.csv")
    sample = pd.read_csv(shared_data / "digit-recognizer" / "sample_submission.csv")
    assert list(sub.columns) == list(sample.columns) == ["ImageId", "Label"]
    assert sub["ImageId"].tolist() == sample["ImageId"].tolist()
    assert sub["Label"].between(0, 9).all() and sub["Label"].nunique() == 10
    assert np.load(workdir / "test_probs.npy").shape == (28_000, 10)
