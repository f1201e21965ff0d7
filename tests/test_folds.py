"""Issue 16: k-fold out-of-fold estimates, bagging, the new model families, and the
ensemble fitted on out-of-fold predictions."""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pandas as pd
import pytest

from digitjax import ensemble, scores
from digitjax.config_checks import check_config
from digitjax.configs import default
from digitjax.data import sampling
from digitjax.errors import UserError
from digitjax.models import create_model
from tests.conftest import run_main

LABELS = np.repeat(np.arange(10), [53, 47, 50, 50, 51, 49, 50, 50, 52, 48])


def folds_config(k: int, fold: int = 0, **fields):
    config = default.get_config()
    config.num_folds, config.fold = k, fold
    config.update(fields)
    return config


def test_folds_partition_every_row_once_keeping_class_shares():
    held = [sampling.train_val_rows(LABELS, folds_config(5, f))[1] for f in range(5)]
    assert np.array_equal(np.sort(np.concatenate(held)), np.arange(len(LABELS)))
    for f, rows in enumerate(held):
        train, _ = sampling.train_val_rows(LABELS, folds_config(5, f))
        assert len(np.intersect1d(train, rows)) == 0 and len(train) + len(rows) == len(LABELS)
        counts = np.bincount(LABELS[rows], minlength=10)
        assert np.all(np.abs(counts - np.bincount(LABELS) / 5) < 1)  # each class's share
        assert abs(len(rows) - len(LABELS) / 5) <= 10  # within one image per class
    again = sampling.train_val_rows(LABELS, folds_config(5, 2))[1]
    other = sampling.train_val_rows(LABELS, folds_config(5, 2, split_seed=1))[1]
    assert np.array_equal(again, held[2]) and not np.array_equal(other, held[2])


def test_bags_are_drawn_by_seed_from_the_training_rows():
    train, val = sampling.train_val_rows(LABELS, folds_config(4, 1))
    bag0 = sampling.train_val_rows(LABELS, folds_config(4, 1, bag_fraction=0.9))[0]
    bag1 = sampling.train_val_rows(LABELS, folds_config(4, 1, bag_fraction=0.9, seed=1))[0]
    assert len(bag0) == round(0.9 * len(train)) and np.all(np.isin(bag0, train))
    assert not np.array_equal(bag0, bag1)
    assert np.array_equal(bag0, sampling.train_val_rows(
        LABELS, folds_config(4, 1, bag_fraction=0.9))[0])
    assert np.array_equal(val, sampling.train_val_rows(
        LABELS, folds_config(4, 1, bag_fraction=0.9, seed=1))[1])  # bags leave val alone


@pytest.mark.parametrize("fields, message", [
    ({"num_folds": 1}, "config.num_folds: expected 0 (off) or >= 2, got 1"),
    ({"num_folds": 5, "fold": 5}, "config.fold: expected 0..4 (config.num_folds - 1), got 5"),
    ({"fold": 2}, "config.fold: expected 0..0"),
    ({"bag_fraction": 0.0}, "config.bag_fraction: expected a number in (0, 1], got 0.0"),
    ({"predict_checkpoint": "first"}, "config.predict_checkpoint: expected 'best' or 'last'"),
])
def test_bad_fold_settings_are_refused_naming_the_field(fields, message):
    config = default.get_config()
    config.update(fields)
    with pytest.raises(UserError) as e:
        check_config(config)
    assert str(e.value).startswith(message)


@pytest.mark.parametrize("kernel, features, side", [
    (3, (8, 8, 8, 8, 8, 8, 8, 8, 8, 8), 8), (5, (8, 8, 8, 8, 8), 8), (7, (8, 8, 8, 8), 4)])
def test_kernel_cnn_shrinks_the_image_by_its_kernel_without_pooling(kernel, features, side):
    config = default.get_config()
    config.model = "kernel_cnn"
    config.kernel_cnn.kernel_size, config.kernel_cnn.features = kernel, features
    model = create_model(config, 10)
    variables = model.init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))
    kernels = [v["kernel"].shape for k, v in variables["params"].items() if k.startswith("Conv")]
    assert kernels[0] == (kernel, kernel, 1, 8) and len(kernels) == len(features)
    assert variables["params"]["Dense_0"]["kernel"].shape == (side * side * 8, 10)
    assert model.apply(variables, np.zeros((3, 28, 28, 1), np.float32)).shape == (3, 10)


def test_inception_cnn_concatenates_its_branches():
    config = default.get_config()
    config.model = "inception_cnn"
    config.inception_cnn.features, config.inception_cnn.blocks_per_stage = (16, 32), 1
    model = create_model(config, 10)
    variables = model.init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))
    assert variables["params"]["Dense_0"]["kernel"].shape == (32, 10)
    assert model.apply(variables, np.zeros((2, 28, 28, 1), np.float32)).shape == (2, 10)


def test_wilson_interval_equals_scipys():
    from scipy import stats

    for k, n in [(0, 10), (1, 10), (9, 10), (10, 10), (4183, 4200), (41832, 42000), (7, 13)]:
        for confidence in (0.95, 0.9, 0.99):
            ci = stats.binomtest(k, n).proportion_ci(confidence, method="wilson")
            low, high = scores.interval(k / n, n, confidence)
            assert abs(low - ci.low) < 1e-15 and abs(high - ci.high) < 1e-15, (k, n, confidence)
    low, high = scores.interval(0.996, 42_000)
    assert low < 0.996 < high and 0.0005 < high - 0.996 < 0.0007  # about +-0.06 pp
    low, high = scores.interval(0.996, 4_200)
    assert 0.0015 < 0.996 - low < 0.0025  # about +-0.19 pp, as the issue says


def fold_run(folder, fold: int, k: int, rows, probs, labels, test_probs):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"num_folds": k, "fold": fold}))
    np.save(folder / "val_rows.npy", np.asarray(rows))
    np.save(folder / "val_probs.npy", np.asarray(probs, np.float32))
    np.save(folder / "val_labels.npy", np.asarray(labels))
    np.save(folder / "test_probs.npy", np.asarray(test_probs, np.float32))
    pd.DataFrame({"id": [1, 2], "label": ["0", "0"]}).to_csv(folder / "predictions.csv",
                                                             index=False)
    (folder / "submission.csv").write_text("ImageId,Label\n1,0\n2,0\n")
    (folder / "classes.json").write_text(json.dumps(["0", "1"]))


def one_hot(predicted, confidence=0.9):
    return [[confidence, 1 - confidence] if p == 0 else [1 - confidence, confidence]
            for p in predicted]


def test_members_are_scored_out_of_fold_and_weighted(tmp_path):
    """Member a is right on every row, b on half: a's out-of-fold accuracy is 1, b's 0.5,
    and the fitted weights put (nearly) everything on a, in every cross-fit too."""
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    folds = [np.array([0, 3, 4, 7]), np.array([1, 2, 5, 6])]  # rows held out by each fold
    b_predicts = np.array([0, 0, 0, 0, 1, 1, 1, 1])  # right on rows 0, 2, 5, 7
    for f, rows in enumerate(folds):
        fold_run(tmp_path / "a" / f"fold{f}", f, 2, rows, one_hot(labels[rows]), labels[rows],
                 [[0.8, 0.2], [0.3, 0.7]])
        fold_run(tmp_path / "b" / f"fold{f}", f, 2, rows, one_hot(b_predicts[rows], 0.6),
                 labels[rows], [[0.4, 0.6], [0.6, 0.4]])
    report = ensemble.from_members([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    results = {r["name"]: r["oof_accuracy"] for r in report["results"]}
    assert results["a"] == 1.0 and results["b"] == 0.5 and report["oof_rows"] == 8
    assert results["fitted weights (cross-fitted)"] == 1.0
    assert report["errors_shared"] == [[0, 0], [0, 4]] and report["errors_of_all"] == 0
    # the ensembles are a's rows exactly: no discordant row, nothing to test
    assert all(r["p_vs_best"] == 1.0 for r in report["results"][2:])

    assert report["weights"][0] > 0.99
    probs = np.load(tmp_path / "out" / "test_probs.npy")
    w = report["weights"]
    np.testing.assert_allclose(probs, w[0] * np.array([[0.8, 0.2], [0.3, 0.7]])
                               + w[1] * np.array([[0.4, 0.6], [0.6, 0.4]]), rtol=1e-5)
    sub = pd.read_csv(tmp_path / "out" / "submission.csv")
    assert sub["Label"].tolist() == [0, 1]


def test_a_member_archive_stands_in_for_its_folder(tmp_path):
    """--archive_dir writes each member as one .npz; the ensemble of the archives scores,
    weights and predicts as the ensemble of the folders (float16 probabilities: to
    rounding), and a file that is not an archive is refused by name."""
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    folds = [np.array([0, 3, 4, 7]), np.array([1, 2, 5, 6])]
    b_predicts = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    for f, rows in enumerate(folds):
        fold_run(tmp_path / "a" / f"fold{f}", f, 2, rows, one_hot(labels[rows], 0.7),
                 labels[rows], [[0.8, 0.2], [0.3, 0.7]])
        fold_run(tmp_path / "b" / f"fold{f}", f, 2, rows, one_hot(b_predicts[rows], 0.6),
                 labels[rows], [[0.4, 0.6], [0.6, 0.4]])
    folders = ensemble.from_members([tmp_path / "a", tmp_path / "b"], tmp_path / "out",
                                    tmp_path / "archive")
    archives = ensemble.from_members([tmp_path / "archive" / "a.npz",
                                      tmp_path / "archive" / "b.npz"], tmp_path / "out2")
    assert [r["name"] for r in archives["results"]] == [r["name"] for r in folders["results"]]
    assert ([(r["oof_accuracy"], r.get("test_from")) for r in archives["results"]]
            == [(r["oof_accuracy"], r.get("test_from")) for r in folders["results"]])
    np.testing.assert_allclose(archives["weights"], folders["weights"], atol=1e-3)
    np.testing.assert_allclose(np.load(tmp_path / "out2" / "test_probs.npy"),
                               np.load(tmp_path / "out" / "test_probs.npy"), atol=1e-3)
    assert ((tmp_path / "out2" / "submission.csv").read_text()
            == (tmp_path / "out" / "submission.csv").read_text())
    member = ensemble.load_member(tmp_path / "archive" / "a.npz")
    assert member.config == {"num_folds": 2, "fold": 0} and member.fold.tolist() == [
        0, 1, 1, 0, 0, 1, 1, 0]
    # a folder and an archive in one call
    mixed = ensemble.from_members([tmp_path / "a", tmp_path / "archive" / "b.npz"],
                                  tmp_path / "out3")
    assert mixed["results"] == folders["results"]


def test_an_archive_keeps_string_ids_and_the_curve_and_refuses_broken_files(tmp_path):
    """Image-folder test sets have file names as ids (pandas object arrays, which numpy
    would pickle); the per-epoch curve survives; a broken, missing, inconsistent or
    clashing archive is one error line naming the file."""
    labels = np.array([0, 1, 0, 1])
    for f, rows in enumerate([np.array([0, 1]), np.array([2, 3])]):
        w = tmp_path / "m" / f"fold{f}"
        fold_run(w, f, 2, rows, one_hot(labels[rows]), labels[rows], [[0.8, 0.2], [0.3, 0.7]])
        pd.DataFrame({"id": ["x/1.png", "x/2.png"], "label": ["0", "1"]}).to_csv(
            w / "predictions.csv", index=False)
        (w / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_accuracy": 0.5}) + "\n")
    ensemble.from_members([tmp_path / "m"], tmp_path / "out", tmp_path / "archive")
    m = ensemble.load_member(tmp_path / "archive" / "m.npz")
    assert m.test_ids.tolist() == ["x/1.png", "x/2.png"] and m.by_epoch == [0.5]
    assert m.test_from == "fold*" and m.submission

    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="bad.npz: not a member archive written by"):
        ensemble.load_member(tmp_path / "bad.npz")
    with pytest.raises(UserError, match="gone.npz: missing"):
        ensemble.load_member(tmp_path / "gone.npz")
    z = dict(np.load(tmp_path / "archive" / "m.npz"))
    np.savez(tmp_path / "short.npz", **{**z, "fold": z["fold"][:3]})
    with pytest.raises(UserError, match="short.npz: its arrays disagree in shape"):
        ensemble.load_member(tmp_path / "short.npz")
    np.savez(tmp_path / "nometa.npz", **{**z, "meta": np.asarray("[]")})
    with pytest.raises(UserError, match="nometa.npz: not a member archive"):
        ensemble.load_member(tmp_path / "nometa.npz")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "m.npz").write_bytes((tmp_path / "archive" / "m.npz").read_bytes())
    with pytest.raises(UserError, match="share a name"):
        ensemble.from_members([tmp_path / "m", tmp_path / "other" / "m.npz"], tmp_path / "o2",
                              tmp_path / "archive2")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="--archive_dir: .*afile is a file"):
        ensemble.from_members([tmp_path / "m"], tmp_path / "o3", tmp_path / "afile")
    proc = subprocess.run([sys.executable, "-m", "digitjax.ensemble",
                           f"--members={tmp_path / 'bad.npz'}", f"--output_dir={tmp_path / 'o4'}"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")
    assert "bad.npz: not a member archive" in proc.stderr and "Traceback" not in proc.stderr


def test_archived_folds_give_the_weights_and_full_runs_the_test_prediction(tmp_path):
    """A member folder holding its fold runs' archive (folds.npz) and a full run: out of
    fold from the archive, test probabilities from the full run; a full run of another
    recipe (epochs, the model's settings) or of other test rows is refused by name."""
    labels = np.array([0, 1, 0, 1])
    for f, rows in enumerate([np.array([0, 1]), np.array([2, 3])]):
        fold_run(tmp_path / "m" / f"fold{f}", f, 2, rows, one_hot(labels[rows]), labels[rows],
                 [[0.8, 0.2], [0.3, 0.7]])
        config = {"num_folds": 2, "fold": f, "model": "cnn", "num_epochs": 3, "seed": 0,
                  "cnn": {"dense": 8}, "val_fraction": 0.1}
        (tmp_path / "m" / f"fold{f}" / "config.json").write_text(json.dumps(config))
    ensemble.from_members([tmp_path / "m"], tmp_path / "out", tmp_path / "archive")
    member = tmp_path / "runs" / "m"
    member.mkdir(parents=True)
    shutil.copyfile(tmp_path / "archive" / "m.npz", member / ensemble.FOLDS_ARCHIVE)
    alone = ensemble.load_member(member)  # no full run yet: the archive's test prediction
    assert alone.test_from == "fold*" and alone.name == "m"
    np.testing.assert_allclose(alone.test_probs, [[0.8, 0.2], [0.3, 0.7]])
    # the full run: another seed, no validation split, the folds' recipe
    fold_run(member / "full0", 0, 0, [], np.zeros((0, 2)), [], [[0.1, 0.9], [0.6, 0.4]])
    full_config = {**config, "num_folds": 0, "seed": 5, "val_fraction": 0.0}
    (member / "full0" / "config.json").write_text(json.dumps(full_config))
    report = ensemble.from_members([member], tmp_path / "out2")
    assert report["results"][0]["test_from"] == "full*"
    assert report["results"][0]["oof_accuracy"] == 1.0
    np.testing.assert_allclose(np.load(tmp_path / "out2" / "test_probs.npy"),
                               [[0.1, 0.9], [0.6, 0.4]])
    assert pd.read_csv(tmp_path / "out2" / "submission.csv")["Label"].tolist() == [1, 0]

    (member / "full0" / "config.json").write_text(json.dumps(
        {**full_config, "num_epochs": 5, "cnn": {"dense": 16}}))
    with pytest.raises(UserError, match=r"full0: trained another recipe than the folds in "
                       r".*folds.npz \(cnn.dense 8 -> 16; num_epochs 3 -> 5\)"):
        ensemble.load_member(member)
    # an archive from before a field existed holds the value that trained it
    (member / "full0" / "config.json").write_text(json.dumps(
        {**full_config, "dtype": "float32", "augment": {"elastic_alpha": 0.0}}))
    assert ensemble.load_member(member).test_from == "full*"
    (member / "full0" / "config.json").write_text(json.dumps({**full_config, "dtype": "bfloat16"}))
    with pytest.raises(UserError, match=r"\(dtype 'float32' -> 'bfloat16'\)"):
        ensemble.load_member(member)
    (member / "full0" / "config.json").write_text(json.dumps(full_config))
    (member / "full.log").write_text("a file is not a run")
    pd.DataFrame({"id": [1, 3], "label": ["1", "0"]}).to_csv(member / "full0" / "predictions.csv",
                                                             index=False)
    with pytest.raises(UserError, match="full0: predicted other test rows or classes"):
        ensemble.load_member(member)
    (member / ensemble.FOLDS_ARCHIVE).unlink()
    with pytest.raises(UserError, match="no fold\\*/ runs .* or put their archive there as "
                       "folds.npz"):
        ensemble.load_member(member)


def test_the_out_of_fold_curve_sums_each_epochs_correct_digits_over_the_folds(tmp_path):
    """Fold 0 (4 rows) gets 2 then 4 right, fold 1 (4 rows) 3 then 3: 5/8 then 7/8."""
    for f, accuracies in enumerate([(0.5, 1.0), (0.75, 0.75)]):
        w = tmp_path / "m" / f"fold{f}"
        fold_run(w, f, 2, [f, f + 2, f + 4, f + 6], one_hot([0] * 4), [0] * 4, [[1, 0]] * 2)
        (w / "metrics.jsonl").write_text("".join(
            json.dumps({"epoch": e, "val_accuracy": a}) + "\n"
            for e, a in enumerate(accuracies, 1)))
    assert ensemble.by_epoch(tmp_path / "m") == [5 / 8, 7 / 8]


def test_out_of_fold_refuses_folds_that_do_not_partition_the_rows(tmp_path):
    labels = np.array([0, 1, 0, 1])
    fold_run(tmp_path / "m" / "fold0", 0, 2, [0, 1], one_hot([0, 1]), [0, 1], [[1, 0], [0, 1]])
    with pytest.raises(UserError, match="num_folds is 2, but it holds 1 fold runs"):
        ensemble.out_of_fold(tmp_path / "m")
    fold_run(tmp_path / "m" / "fold1", 1, 2, [1, 3], one_hot([1, 1]), labels[[1, 3]],
             [[1, 0], [0, 1]])
    with pytest.raises(UserError, match="do not cover the training rows once each"):
        ensemble.out_of_fold(tmp_path / "m")
    with pytest.raises(UserError, match="no fold\\*/ runs"):
        ensemble.out_of_fold(tmp_path / "empty")


def test_fold_predictions_take_the_first_folds_of_a_partition_and_refuse_mixed_ones(tmp_path):
    """A screening run holds fold 0 of 2: read as such, refused as an out-of-fold member;
    a fold of another partition or a fold twice is refused; `first` reads fold0/ alone
    while later folds train."""
    fold_run(tmp_path / "m" / "fold0", 0, 2, [0, 2], one_hot([0, 1]), [0, 1], [[1, 0]] * 2)
    k, parts = ensemble.fold_predictions(tmp_path / "m")
    assert k == 2 and [(f, r.tolist(), y.tolist()) for f, r, _, y in parts] == [(0, [0, 2],
                                                                                  [0, 1])]
    with pytest.raises(UserError, match="num_folds is 2, but it holds 1 fold runs"):
        ensemble.out_of_fold(tmp_path / "m")
    fold_run(tmp_path / "m" / "fold1", 1, 3, [1, 3], one_hot([0, 1]), [0, 1], [[1, 0]] * 2)
    with pytest.raises(UserError, match=r"not folds of one partition \(num_folds \[2, 3\]"):
        ensemble.fold_predictions(tmp_path / "m")
    (tmp_path / "m" / "fold2").mkdir()  # still training: no predictions yet
    assert [f for f, *_ in ensemble.fold_predictions(tmp_path / "m", first=1)[1]] == [0]
    fold_run(tmp_path / "d" / "fold0", 0, 2, [0, 2], one_hot([0, 1]), [0, 1], [[1, 0]] * 2)
    fold_run(tmp_path / "d" / "fold0b", 0, 2, [0, 2], one_hot([0, 1]), [0, 1], [[1, 0]] * 2)
    with pytest.raises(UserError, match=r"folds \[0, 0\]"):
        ensemble.fold_predictions(tmp_path / "d")


def test_two_folds_end_to_end_predict_every_row_with_the_last_checkpoint(digits_dir, tmp_path):
    """The seed model on 640 digits, 2 folds of 2 epochs each through the CLI: the two
    runs' validation rows are all 640 rows once, scored by their last epoch's checkpoint
    (the accuracy equals that epoch's metrics.jsonl line), and the ensemble CLI
    scores them out of fold."""
    member = tmp_path / "seed"
    for fold in range(2):
        proc = run_main("--config", "configs/seed.py", f"--workdir={member / f'fold{fold}'}",
                        f"--config.data_dir={digits_dir}", "--config.num_epochs=2",
                        "--config.num_folds=2", f"--config.fold={fold}",
                        "--config.predict_checkpoint=last", "--config.plots=false",
                        f"--config.compilation_cache_dir={tmp_path / 'xla'}")
        assert proc.returncode == 0, proc.stderr
        assert "last checkpoint (epoch 2): validation accuracy" in proc.stdout
        last = json.loads((member / f"fold{fold}" / "metrics.jsonl").read_text()
                          .splitlines()[-1])
        summary = json.loads((member / f"fold{fold}" / "summary.json").read_text())
        assert summary["val_accuracy"] == pytest.approx(last["val_accuracy"], abs=1e-6)
        assert abs(summary["val_count"] - 320) <= 5  # half of each class, within 1 image
    probs, labels, fold = ensemble.out_of_fold(member)
    train = pd.read_csv(digits_dir / "train.csv")
    assert np.array_equal(labels, train["label"].to_numpy())
    assert np.bincount(fold).tolist() == [json.loads((member / f"fold{f}" / "summary.json")
                                                     .read_text())["val_count"] for f in (0, 1)]
    proc = subprocess.run(
        [sys.executable, "-m", "digitjax.ensemble", f"--members={member}",
         f"--output_dir={tmp_path / 'out'}", f"--archive_dir={tmp_path / 'archive'}"],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    archived = ensemble.load_member(tmp_path / "archive" / "seed.npz")
    assert np.array_equal(archived.labels, labels) and archived.probs.shape == (640, 10)
    assert archived.config["num_epochs"] == 2 and archived.test_probs.shape == (50, 10)
    assert "out-of-fold" in proc.stdout and " on 640" in proc.stdout
    # the curve's last epoch is the last checkpoint's out-of-fold accuracy, exactly
    report = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert report["results"][0]["oof_by_epoch"][-1] == report["results"][0]["oof_accuracy"]
    assert len(report["results"][0]["oof_by_epoch"]) == 2 and "by epoch: 1:" in proc.stdout
    assert len(pd.read_csv(tmp_path / "out" / "submission.csv")) == 50


def test_the_ensemble_never_writes_into_a_member(tmp_path):
    rows = [np.array([0, 1]), np.array([2, 3])]
    for f in range(2):
        fold_run(tmp_path / "a" / f"fold{f}", f, 2, rows[f], one_hot([0, 1]), [0, 1],
                 [[0.8, 0.2], [0.3, 0.7]])
    before = (tmp_path / "a" / "fold0" / "test_probs.npy").read_bytes()
    with pytest.raises(UserError, match="is inside .*/a, whose files it would overwrite"):
        ensemble.from_members([tmp_path / "a"], tmp_path / "a" / "fold0")
    assert (tmp_path / "a" / "fold0" / "test_probs.npy").read_bytes() == before
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        ensemble.from_members([tmp_path / "a"], tmp_path / "a-file")


@pytest.mark.parametrize("args, message", [
    (["--members=m", "--workdirs=a,b"], "error: --members and --workdirs: expected one of them"),
    ([], "error: expected --members=FOLDER,... (k-fold members) or --workdirs="),
])
def test_the_ensemble_command_refuses_ambiguous_flags(args, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "digitjax.ensemble", *args],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().startswith(message)
    assert "Traceback" not in proc.stderr and not any(tmp_path.iterdir())


def test_a_model_too_deep_for_the_images_is_refused_in_one_line():
    from digitjax.config_checks import check_model

    config = default.get_config()
    config.model, config.kernel_cnn.kernel_size = "kernel_cnn", 5  # 10 layers of 5x5
    with pytest.raises(UserError) as e:
        check_model(config, (28, 28, 1), 10)
    assert str(e.value) == ("config.kernel_cnn: cannot build this model on 28x28x1 images (10 "
                            "unpadded 5x5 layers need images of at least 41 pixels a side; use "
                            "fewer features (layers) or a smaller kernel_size)")
    config.kernel_cnn.features = (8, 8, 8, 8, 8)
    check_model(config, (28, 28, 1), 10)


def test_mcnemar_sees_a_paired_difference_the_intervals_cannot():
    """60 rows gained and 20 lost of 42,000: +0.095 pp, inside either accuracy's
    +-0.08 pp interval, yet p < 1e-5 paired."""
    other = np.ones(42_000, bool)
    other[:300] = False
    right = other.copy()
    right[:60], right[300:320] = True, False
    assert ensemble.paired_p(right, other) < 1e-5
    assert ensemble.paired_p(other, other) == 1.0


def test_a_finished_run_says_it_is_not_retrained(trained_workdir, digits_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_workdir, run)  # the shared workdir stays as other tests left it
    proc = run_main("--config", "configs/seed.py", f"--workdir={run}",
                    f"--config.data_dir={digits_dir}", "--config.num_epochs=1",
                    "--config.val_fraction=0.2", "--config.plots=false",
                    f"--config.compilation_cache_dir={trained_workdir.parent / 'xla_cache'}")
    assert proc.returncode == 0, proc.stderr
    assert f"{run}: already trained for 1 epochs (nothing retrained)" in proc.stdout
    assert "epoch   1/1 |" not in proc.stdout
