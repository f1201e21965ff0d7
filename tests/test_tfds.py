"""data_format "tfds": prepared TFDS datasets read without TensorFlow.

The shared digit_recognizer (PNG Image features), a dataset the tests write
themselves with TFDS (Tensor features, which TFDS writes without TensorFlow),
the lazy road for splits bigger than memory (bit-identical to the in-memory one,
resume included), and each bad setting as one line, exit 2, nothing written.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds

from digitjax import checkpoint, data, loop, train, transforms
from digitjax.configs import default, seed
from digitjax.data import sampling, tfds_source
from digitjax.errors import UserError
from tests.conftest import REPO, run_main
from tests.test_cli import assert_clean_failure
from tests.test_scale import free_port

CLASSES = ["bar_top", "bar_middle", "bar_bottom"]
SIZE = 8


class TinyBars(tfds.core.GeneratorBasedBuilder):
    """8x8 grey images with a bright bar whose row band is the class; no supervised_keys.
    Splits: train (90), test (30, labelled), unlabelled (12, label -1)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "pixels": tfds.features.Tensor(shape=(SIZE, SIZE, 1), dtype=np.uint8),
                "shape": tfds.features.ClassLabel(names=CLASSES),
                "name": tfds.features.Text(),
            }),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples("train", 90, 0),
                "test": self._generate_examples("test", 30, 1),
                "unlabelled": self._generate_examples("unlabelled", 12, 2)}

    def _generate_examples(self, split, n, seed_):
        rng = np.random.default_rng(seed_)
        for i in range(n):
            label = i % 3
            image = rng.integers(0, 60, (SIZE, SIZE, 1), dtype=np.uint8)
            image[label * 3:label * 3 + 2] = 250
            yield f"{split}{i}", {"pixels": image, "name": f"{split}-{i}",
                                  "shape": -1 if split == "unlabelled" else label}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A TFDS data_dir holding tiny_bars/1.0.0, written by TFDS as array_record."""
    root = tmp_path_factory.mktemp("tfds")
    TinyBars(data_dir=str(root), file_format="array_record").download_and_prepare()
    assert (root / "tiny_bars" / "1.0.0" / "dataset_info.json").is_file()
    return root


def tiny_config(root, **fields):
    config = seed.get_config()
    config.data_format, config.tfds_name, config.tfds_data_dir = "tfds", "tiny_bars", str(root)
    config.tfds_image_key, config.tfds_label_key = "pixels", "shape"
    for k, v in fields.items():
        config[k] = v
    return config


def digits_config(shared_data, **fields):
    config = seed.get_config()
    config.data_format, config.tfds_name = "tfds", "digit_recognizer"
    config.tfds_data_dir = str(shared_data / "tfds")
    for k, v in fields.items():
        config[k] = v
    return config


# --- Reading -------------------------------------------------------------------------


def test_the_shared_digits_read_without_tensorflow(shared_data):
    """A fresh interpreter reads a split and never imports TensorFlow."""
    code = ("import sys\n"
            "from digitjax.configs import default\n"
            "from digitjax.data import load_train\n"
            "c = default.get_config()\n"
            "c.data_format, c.tfds_name = 'tfds', 'digit_recognizer'\n"
            f"c.tfds_data_dir = {str(shared_data / 'tfds')!r}\n"
            "c.tfds_train_split = 'train[:300]'\n"
            "d = load_train(c, None)\n"
            "print(d.images.shape, d.images.dtype, 'tensorflow' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(300,", "28,", "28,", "1)", "uint8", "False"]


def test_the_shared_digits_are_the_csv_pixels(shared_data):
    """Decoded PNGs equal train.csv's rows (the `row` feature maps one to the other),
    and equal what tfds.data_source itself decodes."""
    ds = data.load_train(digits_config(shared_data, tfds_train_split="train[:500]",
                                       id_column="row"), None)
    assert ds.class_names == [str(i) for i in range(10)]
    rows = ds.ids.astype(int)
    table = data.pixels.read_pixel_csv(shared_data / "digit-recognizer" / "train.csv")
    assert np.array_equal(ds.images, table.pixels[rows].reshape(-1, 28, 28, 1))
    assert np.array_equal(ds.labels, table.labels[rows])
    source = tfds.data_source("digit_recognizer", data_dir=str(shared_data / "tfds"),
                              split="train[:500]", download=False)
    theirs = source.__getitems__(list(range(500)))
    assert np.array_equal(ds.images, np.stack([x["image"] for x in theirs]))
    assert ds.labels.tolist() == [x["label"] for x in theirs]


def test_ids_are_tfds_ids_by_default(shared_data):
    ds = data.load_train(digits_config(shared_data, tfds_train_split="train[10:13]"), None)
    assert ds.ids.tolist() == [f"digit_recognizer-train.array_record-00000-of-00001__{i}"
                               for i in (10, 11, 12)]


def test_a_written_dataset_decodes_like_tfds(tiny_dir):
    ds = data.load_train(tiny_config(tiny_dir, id_column="name"), None)
    assert ds.images.shape == (90, SIZE, SIZE, 1) and ds.class_names == CLASSES
    theirs = tfds.data_source("tiny_bars", data_dir=str(tiny_dir), split="train")
    examples = theirs.__getitems__(list(range(90)))
    assert np.array_equal(ds.images, np.stack([x["pixels"] for x in examples]))
    assert ds.labels.tolist() == [x["shape"] for x in examples]
    assert ds.ids.tolist() == [x["name"].decode() for x in examples]
    test = data.load_test(tiny_config(tiny_dir, tfds_test_split="test"), (SIZE, SIZE, 1), None)
    assert test.labels is not None and len(test.labels) == 30
    none = data.load_test(tiny_config(tiny_dir, tfds_test_split="unlabelled"),
                          (SIZE, SIZE, 1), None)
    assert none.labels is None and len(none.images) == 12


def test_images_are_converted_to_the_configured_size_and_channels(tiny_dir):
    ds = data.load_train(tiny_config(tiny_dir, image_size=4, channels=3), None)
    assert ds.images.shape == (90, 4, 4, 3)
    grey = data.load_train(tiny_config(tiny_dir), None).images
    assert np.array_equal(ds.images[..., 0], ds.images[..., 2])  # grey -> RGB repeats
    assert ds.images[0].mean() == pytest.approx(grey[0].mean(), abs=8)  # a resize, not a crop


# --- Bigger than memory: the lazy road ---------------------------------------------------


def test_lazy_images_index_like_the_array(tiny_dir, tmp_path):
    memory = data.load_train(tiny_config(tiny_dir), None)
    lazy = data.load_train(tiny_config(tiny_dir, tfds_in_memory_mb=0), tmp_path)
    assert isinstance(lazy.images, tfds_source.LazyImages) and "read by index" in lazy.source
    assert lazy.images.shape == memory.images.shape and len(lazy.images) == 90
    assert np.array_equal(lazy.labels, memory.labels) and np.array_equal(lazy.ids, memory.ids)
    for index in (np.array([5, 0, 89, 5]), slice(3, 40, 7), 17, -1, np.arange(90) % 2 == 0):
        assert np.array_equal(lazy.images[index], memory.images[index])
    train_idx, val_idx = sampling.stratified_split(lazy.labels, 0.2, 0)
    for batch in sampling.epoch_batches(train_idx, 16, seed=3, epoch=2):  # the loop's reads
        assert np.array_equal(lazy.images[batch], memory.images[batch])
    view = lazy.images.take(val_idx, axis=0)
    assert np.array_equal(view[np.arange(len(val_idx))], memory.images[val_idx])
    # standardize: the same statistics from the streamed lazy pass as from the array
    assert transforms.channel_stats(lazy.images, train_idx, chunk=7) == \
        transforms.channel_stats(memory.images, train_idx)
    assert len(list(tmp_path.glob("tfds.*.npz"))) == 1  # labels and ids kept for the next run


def final_state(workdir):
    template = train.create_train_state(seed.get_config(), jax.random.key(0),
                                        (28, 28, 1), 10, 1)
    return checkpoint.load(workdir, lambda meta: template, "latest")


def test_a_lazy_run_is_bit_identical_to_the_in_memory_run_and_resumes(shared_data, tmp_path,
                                                                     capsys):
    config = digits_config(shared_data, tfds_train_split="train[:640]", num_epochs=2,
                           progress=False)
    config.augment.shift = 0.1  # augmentation keys follow the step: checked too
    memory, lazy = tmp_path / "memory", tmp_path / "lazy"
    loop.train_and_evaluate(config, memory)
    assert "decoded in memory" in capsys.readouterr().out
    config.tfds_in_memory_mb = 0
    loop.train_and_evaluate(config, lazy, stop_after_epoch=1)
    assert "read by index" in capsys.readouterr().out
    assert checkpoint.latest_meta(lazy)["epoch"] == 1
    loop.train_and_evaluate(config, lazy)  # resumes epoch 2
    assert "resumed" in capsys.readouterr().out
    (a, meta_a), (b, meta_b) = final_state(memory), final_state(lazy)
    assert meta_a["epoch"] == meta_b["epoch"] == 2
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        assert np.array_equal(x, y)  # bit for bit: same rows, same order, same steps
    metrics = [[{k: v for k, v in json.loads(line).items()
                 if k not in ("seconds", "images_per_second")}
                for line in (w / "metrics.jsonl").read_text().splitlines()]
               for w in (memory, lazy)]
    assert metrics[0] == metrics[1]


# --- End to end --------------------------------------------------------------------------


def test_main_on_the_shared_digits_writes_predictions_with_tfds_ids(shared_data, tmp_path):
    proc = run_main("--config", "configs/seed.py", f"--workdir={tmp_path}",
                    "--config.data_format=tfds", "--config.tfds_name=digit_recognizer",
                    f"--config.tfds_data_dir={shared_data / 'tfds'}",
                    "--config.tfds_train_split=train[:640]",
                    "--config.tfds_test_split=train[41950:]", "--config.num_epochs=1")
    assert proc.returncode == 0, proc.stderr
    assert "TFDS digit_recognizer:1.0.0 'train[:640]'" in proc.stdout
    preds = pd.read_csv(tmp_path / "predictions.csv")
    assert preds["id"].tolist() == [f"digit_recognizer-train.array_record-00000-of-00001__{i}"
                                    for i in range(41950, 42000)]
    assert not (tmp_path / "submission.csv").exists()  # a Kaggle CSV alone writes one
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["test_count"] == 50 and f"test accuracy {summary['test_accuracy']:.4f} on 50" \
        in proc.stdout


def test_main_on_a_written_dataset_reports_test_accuracy(tiny_dir, tmp_path):
    proc = run_main("--config", "configs/seed.py", f"--workdir={tmp_path}",
                    "--config.data_format=tfds", "--config.tfds_name=tiny_bars",
                    f"--config.tfds_data_dir={tiny_dir}", "--config.tfds_image_key=pixels",
                    "--config.tfds_label_key=shape", "--config.tfds_test_split=test",
                    "--config.id_column=name", "--config.num_epochs=1", "--config.batch_size=16")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "classes.json").read_text()) == CLASSES
    preds = pd.read_csv(tmp_path / "predictions.csv")
    assert sorted(preds["id"]) == sorted(f"test-{i}" for i in range(30))  # TFDS's order
    truth = [CLASSES[int(name.split("-")[1]) % 3] for name in preds["id"]]
    accuracy = float(np.mean(preds["label"].to_numpy() == np.array(truth)))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["test_accuracy"] == pytest.approx(accuracy) and summary["test_count"] == 30
    assert f"test accuracy {accuracy:.4f} on 30 labelled images" in proc.stdout


def test_a_tfds_run_can_submit_on_the_competition_csv(shared_data, digits_dir, tmp_path):
    """config.data_dir + test_file beside a TFDS training split: a pixel CSV to submit on."""
    proc = run_main("--config", "configs/seed.py", f"--workdir={tmp_path}",
                    "--config.data_format=tfds", "--config.tfds_name=digit_recognizer",
                    f"--config.tfds_data_dir={shared_data / 'tfds'}",
                    "--config.tfds_train_split=train[:320]", f"--config.data_dir={digits_dir}",
                    "--config.num_epochs=1")
    assert proc.returncode == 0, proc.stderr
    sub = pd.read_csv(tmp_path / "submission.csv")
    assert sub["ImageId"].tolist() == list(range(1, 51))


# --- One clear line, exit 2, nothing written -----------------------------------------------


def tfrecord_copy(tiny_dir, tmp_path):
    """tiny_bars with its dataset_info.json saying tfrecord, as `tfds build` writes by default."""
    root = tmp_path / "tfrecord"
    shutil.copytree(tiny_dir / "tiny_bars", root / "tiny_bars")
    info_path = root / "tiny_bars" / "1.0.0" / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info))
    return root


@pytest.mark.parametrize("case, fragments", [
    ("tfrecord", ["tiny_bars/1.0.0: stored as tfrecord, which only TensorFlow reads",
                  "tfds convert_format --dataset_version_dir=",
                  "--out_file_format=array_record"]),
    ("missing dataset", ["config.tfds_name: no dataset 'nope' in", "(found: tiny_bars;"]),
    ("wrong split", ["config.tfds_train_split: 'trian[:10]' is not a split of tiny_bars:1.0.0",
                     "Unknown split 'trian'", "splits: train (90), test (30), unlabelled (12)"]),
    ("bad slice", ["config.tfds_train_split: 'train[:x]' is not a split", "Error parsing split"]),
    ("wrong test split", ["config.tfds_test_split: 'tset' is not a split of tiny_bars"]),
    ("missing data_dir", ["config.tfds_data_dir: no such folder", "no_such_dir"]),
    ("no keys", ["tiny_bars/1.0.0: no supervised_keys; set config.tfds_image_key",
                 "features: name, pixels, shape"]),
    ("wrong key", ["config.tfds_label_key: tiny_bars/1.0.0 has no feature 'label'"]),
    ("text as image", ["config.tfds_image_key: feature 'name' of tiny_bars/1.0.0 is Text"]),
])
def test_bad_tfds_settings_fail_in_one_line_and_write_nothing(tiny_dir, tmp_path, case, fragments):
    flags = {"tfds": "tiny_bars", "dir": str(tiny_dir), "split": "train", "test": "",
             "keys": ["--config.tfds_image_key=pixels", "--config.tfds_label_key=shape"]}
    if case == "tfrecord":
        flags["dir"] = str(tfrecord_copy(tiny_dir, tmp_path))
    elif case == "missing dataset":
        flags["tfds"] = "nope"
    elif case == "wrong split":
        flags["split"] = "trian[:10]"
    elif case == "bad slice":
        flags["split"] = "train[:x]"
    elif case == "wrong test split":
        flags["test"] = "tset"
    elif case == "missing data_dir":
        flags["dir"] = str(tmp_path / "no_such_dir")
    elif case == "no keys":
        flags["keys"] = []
    elif case == "wrong key":
        flags["keys"] = ["--config.tfds_image_key=pixels", "--config.tfds_label_key=label"]
    elif case == "text as image":
        flags["keys"] = ["--config.tfds_image_key=name", "--config.tfds_label_key=shape"]
    workdir = tmp_path / "run"
    proc = run_main("--config", "configs/seed.py", f"--workdir={workdir}",
                    "--config.data_format=tfds", f"--config.tfds_name={flags['tfds']}",
                    f"--config.tfds_data_dir={flags['dir']}",
                    f"--config.tfds_train_split={flags['split']}",
                    f"--config.tfds_test_split={flags['test']}", *flags["keys"],
                    "--config.num_epochs=1")
    assert proc.returncode == 2
    assert_clean_failure(proc, *fragments)
    assert not workdir.exists()


def test_a_split_that_selects_nothing_is_refused(tiny_dir):
    with pytest.raises(UserError, match=r"config.tfds_train_split: 'train\[5:5\]' selects no "
                                        r"examples of tiny_bars:1.0.0"):
        data.load_train(tiny_config(tiny_dir, tfds_train_split="train[5:5]"), None)


def test_a_missing_version_is_named(tiny_dir):
    with pytest.raises(UserError, match=r"tiny_bars has no prepared version '9.9.9' .*"
                                        r"\(versions: 1.0.0\)"):
        data.load_train(tiny_config(tiny_dir, tfds_name="tiny_bars:9.9.9"), None)


def test_the_recipe_config_names_the_shared_dataset():
    from digitjax.configs import tfds_digits

    config = tfds_digits.get_config()
    base = default.get_config()
    assert config.data_format == "tfds" and config.tfds_name == "digit_recognizer"
    assert config.model == base.model and config.num_epochs == base.num_epochs


def test_two_processes_read_their_own_rows_lazily_and_match_one(shared_data, tmp_path):
    """Two jax.distributed processes (2 CPU devices each) on the lazy road, each indexing
    `data.images` with its own half of every batch, end with the one-process parameters."""
    flags = ["--config", "configs/seed.py", "--config.data_format=tfds",
             "--config.tfds_name=digit_recognizer",
             f"--config.tfds_data_dir={shared_data / 'tfds'}",
             "--config.tfds_train_split=train[:640]", "--config.tfds_in_memory_mb=0",
             "--config.num_epochs=1", "--config.batch_size=64", "--config.progress=false",
             "--config.cpu_devices=0"]  # XLA_FLAGS' 2 devices per process below
    proc = run_main(*flags, f"--workdir={tmp_path / 'one'}")
    assert proc.returncode == 0, proc.stderr
    port = free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [subprocess.Popen(
        [sys.executable, "-m", "digitjax.main", *flags, f"--workdir={tmp_path / 'two'}",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    (one, _), (two, meta) = final_state(tmp_path / "one"), final_state(tmp_path / "two")
    assert meta["epoch"] == 1
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5)  # all-reduce order only
