"""Looking at runs (issue 14): TensorBoard event files, plots, per-class scores, the
model summary, report.html in a real headless browser, comparisons, --mode=evaluate,
a single image predicted, and the progress bar."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from digitjax import checkpoint, console, evaluate, loop, parallel, plots, report, workdir
from digitjax.configs import default, seed
from digitjax.data import sampling
from digitjax.errors import UserError
from tests.conftest import run_main, train_seed_one_epoch
from tests.test_cli import assert_clean_failure, snapshot


def events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0,
                                                                        "tensors": 0})
    acc.Reload()
    return acc


def records(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_scalars_equal_metrics(run_dir) -> None:
    acc, history = events(run_dir), records(run_dir)
    fields = [k for k in history[0] if k not in ("epoch", "step")]
    assert {"train_loss", "val_accuracy", "learning_rate", "images_per_second"} <= set(fields)
    for name in fields:
        logged = [(e.step, e.value) for e in acc.Scalars(f"epoch/{name}")]
        assert logged == [(r["step"], np.float32(r[name])) for r in history], name


def test_tensorboard_event_files_hold_what_metrics_jsonl_holds(trained_workdir):
    assert_scalars_equal_metrics(trained_workdir)
    acc = events(trained_workdir)
    (record,) = records(trained_workdir)  # 1 epoch: 511 // 32 = 15 steps, fetched at 15
    steps = acc.Scalars("steps/train_loss")
    assert [e.step for e in steps] == [record["step"]] == [15]
    config = json.loads((trained_workdir / "config.json").read_text())
    rates = acc.Scalars("steps/learning_rate")
    assert [e.value for e in rates] == [np.float32(config["learning_rate"])]  # constant
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"model": "seed_cnn"' in text
    model = acc.Tensors("model/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "Total Parameters: 216,650" in model


def small_config(digits_dir, epochs):
    config = seed.get_config()
    config.data_dir = str(digits_dir)
    config.num_epochs, config.batch_size, config.progress = epochs, 64, False
    return config


def test_a_resumed_run_hides_the_events_past_its_checkpoint(digits_dir, tmp_path, monkeypatch):
    """Epoch 2's events are written, then its checkpoint fails: the resumed run trains
    epoch 2 again, and TensorBoard shows it once, as metrics.jsonl does."""
    real_save = checkpoint.Checkpoints.save

    def crash_at_epoch_2(self, step, state, meta, score):
        if meta["epoch"] == 2:
            raise RuntimeError("preempted")
        real_save(self, step, state, meta, score)

    monkeypatch.setattr(checkpoint.Checkpoints, "save", crash_at_epoch_2)
    with pytest.raises(RuntimeError, match="preempted"):
        loop.train_and_evaluate(small_config(digits_dir, 3), tmp_path)
    first = {e.step: e.value for e in events(tmp_path).Scalars("epoch/seconds")}
    assert sorted(first) == [9, 18]  # 577 training rows, batch 64: 9 steps an epoch
    monkeypatch.undo()
    loop.train_and_evaluate(small_config(digits_dir, 3), tmp_path)
    assert_scalars_equal_metrics(tmp_path)
    again = {e.step: e.value for e in events(tmp_path).Scalars("epoch/seconds")}
    assert again[9] == first[9] and again[18] != first[18]  # epoch 2 is the second try's
    assert [e.step for e in events(tmp_path).Scalars("steps/train_loss")] == [9, 18, 27]


def test_model_summary_counts_parameters_flops_and_activations(trained_workdir):
    info = json.loads((trained_workdir / workdir.RUN_INFO).read_text())
    model = info["model"]
    # Conv(32, 3x3) on 28x28x1 -> 26x26x32 -> Dense(10): Keras's 216,650 parameters.
    assert model["parameters"] == 216_650 and model["batch_stats"] == 0
    assert model["parameters_per_layer"] == {"Conv_0": 320, "Dense_0": 216_330}
    macs = 26 * 26 * 32 * 9 + 26 * 26 * 32 * 10  # the conv, then the dense layer
    assert 2 * macs <= model["flops_per_image"] <= 2 * macs * 1.1  # + bias, relu
    # The conv's and the dense layer's outputs, float32, for a batch of 32.
    assert model["activation_bytes_per_batch"] == (26 * 26 * 32 + 10) * 4 * 32
    assert "Conv_0" in model["table"] and "Total Parameters: 216,650" in model["table"]
    assert info["data"]["train"] == 511 and info["data"]["validation"] == 129
    assert sum(info["data"]["class_counts"]) == 640


def test_per_class_scores_in_summary_json(trained_workdir):
    """Against numpy, on val_probs.npy (which test_cli may have redone with TTA)."""
    summary = json.loads((trained_workdir / "summary.json").read_text())
    probs = np.load(trained_workdir / "val_probs.npy")
    labels = np.load(trained_workdir / "val_labels.npy")
    predicted = probs.argmax(1)
    assert [r["class"] for r in summary["per_class"]] == [str(c) for c in range(10)]
    for c, row in enumerate(summary["per_class"]):
        precision = np.mean(labels[predicted == c] == c) if np.any(predicted == c) else 0.0
        recall = np.mean(predicted[labels == c] == c)
        assert row["support"] == np.sum(labels == c)
        assert row["recall"] == pytest.approx(recall) and row["precision"] == pytest.approx(
            precision)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        assert row["f1"] == pytest.approx(f1)
    matrix = np.asarray(summary["confusion_matrix"])
    assert matrix.sum() == len(labels) and np.trace(matrix) == np.sum(predicted == labels)
    accuracy = summary.get("val_accuracy_tta", summary["val_accuracy"])
    assert np.trace(matrix) / len(labels) == pytest.approx(accuracy)


def assert_png(path, min_side=200) -> Image.Image:
    image = Image.open(path)
    image.load()
    assert image.format == "PNG" and min(image.size) >= min_side, image.size
    return image


def test_training_writes_plots_and_the_report(trained_workdir):
    written = {p.name for p in (trained_workdir / plots.SUBDIR).iterdir()}
    assert written == {"learning_curves.png", "confusion_matrix.png", "val_mistakes.png"}
    for name in written:
        assert_png(trained_workdir / plots.SUBDIR / name)
    assert (trained_workdir / report.REPORT).is_file()


@pytest.fixture(scope="module")
def second_run(digits_dir, tmp_path_factory):
    """The same digits, another learning rate, and config.plots=False."""
    run_dir = tmp_path_factory.mktemp("second") / "lr3e-3"
    proc = train_seed_one_epoch(run_dir, digits_dir, "--config.learning_rate=3e-3",
                                "--config.plots=false", "--config.progress=false")
    assert proc.returncode == 0, proc.stderr
    assert "Total Parameters: 216,650" in proc.stdout  # the model summary, at the start
    assert "(macro mean)" in proc.stdout  # the per-class table, at the end
    # config.plots=False: no plot, no report (tests below make one from the files)
    assert not list(run_dir.rglob("*.png")) and not list(run_dir.rglob("*.html"))
    return run_dir


def test_a_run_without_plots_still_scores_per_class(second_run):
    summary = json.loads((second_run / "summary.json").read_text())
    assert len(summary["per_class"]) == 10 and len(summary["confusion_matrix"]) == 10


def chromium_screenshot(html_path, out_png, tmp_path, height=2400) -> np.ndarray:
    proc = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--window-size=1280,{height}",
         f"--screenshot={out_png}", html_path.resolve().as_uri()],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and out_png.is_file(), proc.stderr[-2000:]
    return np.asarray(Image.open(out_png).convert("RGB")).astype(int)


def near(pixels: np.ndarray, rgb, tolerance: int) -> int:
    return int(np.sum(np.all(np.abs(pixels - np.asarray(rgb)) <= tolerance, axis=-1)))


def test_report_in_a_headless_browser(trained_workdir, tmp_path):
    """The report copied alone to another folder (as off a TPU VM) shows its plots."""
    html = report.write_report(default.get_config(), trained_workdir).read_text()
    assert not re.search(r"""(src|href)=["'](?!data:)""", html)  # nothing outside the file
    assert html.count('src="data:image/png;base64,') == 3
    summary = json.loads((trained_workdir / "summary.json").read_text())
    assert f"{summary['val_accuracy']:.4%}" in html and "216,650" in html
    (record,) = records(trained_workdir)  # one epoch: its checkpoint is the newest and best
    assert html.count(str((trained_workdir / "checkpoints" / str(record["step"])).resolve())) == 2
    copied = tmp_path / "copied" / "report.html"
    copied.parent.mkdir()
    shutil.copy(trained_workdir / report.REPORT, copied)
    shot = chromium_screenshot(copied, tmp_path / "report.png", tmp_path)
    assert shot.std() > 30 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 500  # not blank
    # Without its images the page has none of the plots' colours: they come from the plots.
    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r'src="data:image/png;base64,[^"]*"', 'src=""', html))
    control = chromium_screenshot(bare, tmp_path / "bare.png", tmp_path)
    orange, dark_blue, black = (255, 127, 14), (8, 48, 107), (0, 0, 0)  # curves, matrix, digits
    assert near(shot, orange, 30) > 300 and near(control, orange, 30) == 0
    assert near(shot, dark_blue, 25) > 300 and near(control, dark_blue, 25) == 0
    assert near(shot, black, 0) > 20_000 and near(control, black, 0) < 1000


def test_report_of_a_run_without_plots_makes_them_from_its_files(second_run):
    proc = run_main("--mode=report", f"--workdir={second_run}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote {second_run / report.REPORT}"
    html = (second_run / report.REPORT).read_text()
    assert html.count('src="data:image/png;base64,') == 3  # curves, matrix, mistakes
    assert not (second_run / plots.SUBDIR).exists()  # made for the page, not written


def test_runs_compared_side_by_side(trained_workdir, second_run, tmp_path):
    proc = run_main("--mode=report", f"--workdirs={trained_workdir},{second_run}",
                    f"--output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    html = (tmp_path / report.COMPARISON).read_text()
    differences = html[html.index("Config differences"):]
    assert "learning_rate" in differences and "0.003" in differences
    assert "<th>plots</th>" in differences and "<th>seed</th>" not in differences
    for run_dir in (trained_workdir, second_run):
        best = json.loads((run_dir / "summary.json").read_text())["val_accuracy"]
        assert f"{best:.4%}" in html and str(run_dir.resolve()) in html
    assert html.count('src="data:image/png;base64,') == 1


@pytest.fixture(scope="module")
def photo_workdir(shared_data, tmp_path_factory):
    """Ten ants and ten bees from the shared photos, one epoch at 32x32 RGB."""
    root = tmp_path_factory.mktemp("photos")
    for name in ("ants", "bees"):
        (root / "train" / name).mkdir(parents=True)
        for path in sorted((shared_data / "hymenoptera" / "train" / name).glob("*.jpg"))[:10]:
            shutil.copy(path, root / "train" / name / path.name)
    run_dir = root / "run"
    proc = run_main("--config", "configs/seed.py", f"--workdir={run_dir}",
                    f"--config.data_dir={root / 'train'}", "--config.data_format=class_folders",
                    "--config.image_size=32", "--config.channels=3", "--config.num_epochs=1",
                    "--config.batch_size=5", "--config.val_fraction=0.25",
                    f"--config.compilation_cache_dir={root / 'xla_cache'}")
    assert proc.returncode == 0, proc.stderr
    return run_dir


def test_bad_report_input_fails_cleanly(trained_workdir, photo_workdir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=f"{empty}: no training run here"):
        report.write_report(default.get_config(), empty)
    with pytest.raises(UserError, match=f"{empty}: no training run here"):
        report.write_comparison([trained_workdir, empty], tmp_path)
    assert not list(empty.iterdir()) and not (tmp_path / report.COMPARISON).exists()
    proc = run_main("--mode=report", f"--workdirs={trained_workdir},{photo_workdir}",
                    f"--output_dir={tmp_path}")
    assert_clean_failure(proc, f"{photo_workdir}: trained on", "(2 classes)", "one dataset")
    assert not (tmp_path / report.COMPARISON).exists()


def capture_figures(monkeypatch) -> list:
    """Every figure the plots module renders, kept as well as saved."""
    figures, real_png = [], plots.png
    monkeypatch.setattr(plots, "png", lambda fig: figures.append(fig) or real_png(fig))
    return figures


def test_photo_mistakes_show_the_photos_with_class_names(photo_workdir, shared_data, tmp_path,
                                                         monkeypatch):
    assert_png(photo_workdir / plots.SUBDIR / "val_mistakes.png")  # after training
    figures = capture_figures(monkeypatch)
    photos = shared_data / "hymenoptera" / "train"  # all 245, most never trained on
    result, written = evaluate.evaluate_path(default.get_config(), photo_workdir, str(photos),
                                             tmp_path / "out")
    assert result["images"] == 245 and [r["class"] for r in result["per_class"]] == [
        "ants", "bees"]
    assert {p.name for p in written} >= {"evaluation.json", "mistakes.png",
                                         "confusion_matrix.png", "predictions.csv"}
    grid = figures[-1]
    tiles = [ax for ax in grid.axes if ax.images]
    wrong = sum(r["support"] for r in result["per_class"]) - np.trace(result["confusion_matrix"])
    assert len(tiles) == min(plots.MISTAKES_SHOWN, wrong) > 0
    for ax in tiles:
        true, predicted = ax.get_title().split("\n")
        assert re.fullmatch(r"true (ants|bees)", true), true
        assert re.fullmatch(r"pred (ants|bees) (0\.\d\d|1\.00)", predicted), predicted
        assert true[5:] != predicted[5:9]
        shown = np.asarray(ax.images[0].get_array())
        assert shown.shape == (32, 32, 3)
        assert np.ptp(shown.astype(int), axis=-1).mean() > 5  # colour: the photo itself


def labelled_rows(digits_dir, n=60):
    """The first `n` rows of the small train.csv: (labels, uint8 28x28 images)."""
    table = pd.read_csv(digits_dir / "train.csv", nrows=n)
    return table["label"].to_numpy(), table.drop(columns="label").to_numpy(np.uint8).reshape(
        -1, 28, 28)


def test_evaluate_on_the_validation_rows_gives_the_validation_scores(trained_workdir, digits_dir,
                                                                     tmp_path):
    table = pd.read_csv(digits_dir / "train.csv")
    _, val_idx = sampling.stratified_split(table["label"].to_numpy(), 0.2, 0)
    table.iloc[val_idx].to_csv(tmp_path / "val.csv", index=False)
    result, written = evaluate.evaluate_path(default.get_config(), trained_workdir,
                                             str(tmp_path / "val.csv"), tmp_path / "out")
    (record,) = records(trained_workdir)  # one epoch: the best checkpoint's validation
    assert result["accuracy"] == pytest.approx(record["val_accuracy"], abs=1e-6)
    val_labels = table["label"].to_numpy()[val_idx]
    assert [r["support"] for r in result["per_class"]] == np.bincount(val_labels).tolist()
    assert np.trace(result["confusion_matrix"]) == round(result["accuracy"] * len(val_idx))
    saved = json.loads((tmp_path / "out" / evaluate.RESULT).read_text())
    assert saved["accuracy"] == result["accuracy"] and saved["images"] == len(val_idx)
    for name in ("confusion_matrix.png", "mistakes.png"):
        assert_png(tmp_path / "out" / name)


def test_evaluate_reads_every_labelled_layout_alike(trained_workdir, digits_dir, tmp_path):
    """The same 60 digits as a pixel CSV, as PNGs with a labels CSV, and as class
    folders (only the classes present): the same probabilities for each image."""
    labels, digits = labelled_rows(digits_dir)
    pd.read_csv(digits_dir / "train.csv", nrows=60).to_csv(tmp_path / "rows.csv", index=False)
    (tmp_path / "csv" / "train").mkdir(parents=True)
    for i, (label, digit) in enumerate(zip(labels, digits, strict=True)):
        Image.fromarray(digit).save(tmp_path / "csv" / "train" / f"d{i:02d}.png")
        (tmp_path / "folders" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(digit).save(tmp_path / "folders" / str(label) / f"d{i:02d}.png")
    pd.DataFrame({"id": [f"d{i:02d}" for i in range(60)], "label": labels}).to_csv(
        tmp_path / "csv" / "labels.csv", index=False)
    outputs = {}
    for name, path in (("pixels", tmp_path / "rows.csv"), ("labels_csv", tmp_path / "csv" /
                                                            "labels.csv"),
                       ("folders", tmp_path / "folders")):
        result, _ = evaluate.evaluate_path(default.get_config(), trained_workdir, str(path),
                                           tmp_path / name)
        preds = pd.read_csv(tmp_path / name / "predictions.csv")
        if name != "pixels":  # ids are file names: back to row order
            preds = preds.assign(row=preds["id"].str[1:].astype(int)).sort_values("row")
        outputs[name] = (result, preds.filter(like="prob_").to_numpy())
    pixels_result, pixels_probs = outputs["pixels"]
    assert pixels_result["images"] == 60
    for name in ("labels_csv", "folders"):
        result, probs = outputs[name]
        np.testing.assert_allclose(probs, pixels_probs, atol=1e-6)
        assert result["accuracy"] == pixels_result["accuracy"]
        assert result["confusion_matrix"] == pixels_result["confusion_matrix"]


@pytest.mark.parametrize("layout, message", [
    ("pixels", r"bad.csv, line 3, column 'label': label '12' is not a class of the model "
               r"\(expected one of 0, 1, 2"),
    ("labels_csv", r"labels.csv, line 2, column 'label': label 'seven' is not a class"),
    ("folders", r"folders/cat: 'cat' is not a class of the model"),
])
def test_evaluate_refuses_labels_the_model_does_not_know(trained_workdir, digits_dir, tmp_path,
                                                         layout, message):
    labels, digits = labelled_rows(digits_dir, 2)
    if layout == "pixels":
        rows = pd.read_csv(digits_dir / "train.csv", nrows=2)
        rows.loc[1, "label"] = 12
        rows.to_csv(tmp_path / "bad.csv", index=False)
        path = tmp_path / "bad.csv"
    elif layout == "labels_csv":
        Image.fromarray(digits[0]).save(tmp_path / "a.png")
        (tmp_path / "labels.csv").write_text("id,label\na,seven\n")
        path = tmp_path / "labels.csv"
    else:
        for name in ("3", "cat"):
            (tmp_path / "folders" / name).mkdir(parents=True)
            Image.fromarray(digits[0]).save(tmp_path / "folders" / name / "a.png")
        path = tmp_path / "folders"
    with pytest.raises(UserError, match=message):
        evaluate.evaluate_path(default.get_config(), trained_workdir, str(path),
                               tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_evaluate_command_line_fails_in_one_line(trained_workdir, digits_dir, tmp_path):
    rows = pd.read_csv(digits_dir / "train.csv", nrows=3)
    rows.loc[2, "label"] = 10
    rows.to_csv(tmp_path / "bad.csv", index=False)
    before = snapshot(trained_workdir)
    proc = run_main(f"--workdir={trained_workdir}", "--mode=evaluate",
                    f"--input={tmp_path / 'bad.csv'}")
    assert_clean_failure(proc, "bad.csv, line 4, column 'label': label '10' is not a class")
    assert snapshot(trained_workdir) == before


def test_predict_a_single_image_file(trained_workdir, digits_dir, tmp_path):
    """Test row 7 as a PNG: the class and probability the CSV prediction gave it."""
    test = pd.read_csv(digits_dir / "test.csv", nrows=7).to_numpy(np.uint8)
    Image.fromarray(test[6].reshape(28, 28)).save(tmp_path / "digit.png")
    proc = run_main(f"--workdir={trained_workdir}", "--mode=predict",
                    f"--input={tmp_path / 'digit.png'}", f"--output_dir={tmp_path / 'out'}")
    assert proc.returncode == 0, proc.stderr
    row = pd.read_csv(trained_workdir / "predictions.csv").iloc[6]
    label = int(row["label"])
    assert f"digit: {label} (probability {row[f'prob_{label}']:.4f})" in proc.stdout
    single = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert single["id"].tolist() == ["digit"] and single["label"].tolist() == [label]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_only_and_only_on_process_0(monkeypatch):
    def draw(stream):
        with console.Progress(True, 2, 5, 100, stream=stream) as progress:
            time.sleep(0.15)  # tqdm redraws at most every 0.1 s
            progress.update(40, {"loss": 40 * 0.5, "accuracy": 40 * 0.75})
            time.sleep(0.15)
            progress.update(100, {"loss": 100 * 0.25, "accuracy": 100 * 0.875})
        return stream.getvalue()

    shown = draw(Terminal())
    assert "epoch 2/5" in shown and "40/100" in shown and "100/100" in shown
    assert "loss=0.5000, acc=0.7500" in shown and "loss=0.2500, acc=0.8750" in shown
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", shown)  # elapsed<remaining: the ETA
    assert draw(io.StringIO()) == ""  # not a terminal: the epoch lines say it all
    monkeypatch.setattr(parallel.jax, "process_index", lambda: 1)
    assert not parallel.is_writer() and draw(Terminal()) == ""
    monkeypatch.undo()
    assert jax.process_index() == 0


def test_tensorboardx_is_imported_without_torch(tmp_path):
    """metrics_writer.summary_writer_class keeps tensorboardX from importing torch (2 s
    of a cold start where torch is installed), and `import torch` works after it. A
    stand-in torch package (on the path first) tells whether it was imported."""
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("import os\nopen(os.environ['MARK'], 'w').close()\n"
                                      "Tensor = object\n")
    mark = tmp_path / "imported"
    code = ("import sys\nfrom digitjax import metrics_writer\n"
            "cls = metrics_writer.summary_writer_class()\n"
            "assert cls.__name__ == 'SummaryWriter' and 'torch' not in sys.modules\n"
            "import os; assert not os.path.exists(os.environ['MARK'])\n"
            "import torch\nassert os.path.exists(os.environ['MARK'])\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "MARK": str(mark)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    env["DIGITJAX_TB_WITHOUT_TORCH"] = "0"  # switched off: tensorboardX imports it
    mark.unlink()
    subprocess.run([sys.executable, "-c", "from digitjax import metrics_writer\n"
                    "metrics_writer.summary_writer_class()"], check=True, env=env)
    assert mark.exists()
