"""Image files by path: both layouts, every mode conversion, bad files, the cache,
and the class-name mapping from training through prediction."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from digitjax import data
from digitjax.configs import default
from digitjax.data import images
from digitjax.errors import UserError
from tests.conftest import run_main

SETTINGS = images.DecodeSettings(image_size=8, channels=3, resize="resize",
                                 skip_bad_files=False, workers=2)


def save(path, array, mode=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path, **kw)
    return path


def solid(value, shape=(8, 8, 3)):
    return np.full(shape, value, np.uint8)


def palette(value):
    """An 8x8 palette image whose every pixel is palette entry 3 = (value,)*3."""
    img = Image.fromarray(np.full((8, 8), 3, np.uint8), "P")
    img.putpalette([0, 0, 0] * 3 + [value] * 3 + [0, 0, 0] * 252)
    return img


def make_class_folders(root, n=6):
    """cat/ and dog/ with a grey PNG, an RGBA PNG, a GIF and a CMYK JPEG among them."""
    for i in range(n):
        save(root / "cat" / f"c{i}.png", solid(40 + i, (8, 8)), "L")
        save(root / "dog" / f"d{i}.jpg", solid(200 - i))
    save(root / "cat" / "rgba.png", np.dstack([solid(60), solid(255, (8, 8))]), "RGBA")
    palette(50).save(root / "cat" / "anim.gif")
    Image.fromarray(solid(210)).convert("CMYK").save(root / "dog" / "cmyk.jpeg")
    (root / "dog" / "notes.txt").write_text("not an image, and not an image extension")
    return root


def test_conversions_are_explicit(tmp_path):
    rgba = save(tmp_path / "a.png", np.dstack([solid(10), solid(0, (8, 8))]), "RGBA")
    assert images.decode(rgba, SETTINGS).tolist() == solid(10).tolist()  # alpha dropped
    grey = save(tmp_path / "g.png", solid(77, (8, 8)), "L")
    assert np.all(images.decode(grey, SETTINGS) == 77)  # grey -> RGB repeats the value
    cmyk = tmp_path / "c.jpg"
    Image.fromarray(solid(128)).convert("CMYK").save(cmyk)
    assert np.abs(images.decode(cmyk, SETTINGS).astype(int) - 128).max() <= 2
    gif = tmp_path / "p.gif"
    palette(90).save(gif)
    assert np.all(images.decode(gif, SETTINGS) == 90)  # palette index -> its colour
    wide = tmp_path / "w.png"
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(wide)
    one = images.DecodeSettings(8, 1, "resize", False, 1)
    assert np.all(images.decode(wide, one) == 255)  # 16-bit scaled, not clipped


def test_resize_policies(tmp_path):
    wide = np.zeros((10, 20, 3), np.uint8)
    wide[:, 5:15] = 255  # a white centre square in a black-edged landscape image
    path = save(tmp_path / "wide.png", wide)
    crop = images.decode(path, images.DecodeSettings(10, 3, "center_crop", False, 1))
    stretch = images.decode(path, images.DecodeSettings(10, 3, "resize", False, 1))
    assert crop.shape == stretch.shape == (10, 10, 3)
    assert crop.min() == 255  # only the centre survives the crop
    assert stretch[:, 0].max() == 0  # the edges survive the stretch


def test_class_folders(tmp_path):
    root = make_class_folders(tmp_path / "train")
    paths, labels, classes = images.list_class_folders(root)
    assert classes == ["cat", "dog"]
    assert len(paths) == 15 and labels.count(0) == 8 and labels.count(1) == 7
    assert not any(p.suffix == ".txt" for p in paths)


def test_empty_class_folder(tmp_path):
    root = make_class_folders(tmp_path / "train")
    (root / "emu").mkdir()
    with pytest.raises(UserError, match=r"train/emu: empty class folder"):
        images.list_class_folders(root)
    messages = []
    _, _, classes = images.list_class_folders(root, skip_bad_files=True, log=messages.append)
    assert classes == ["cat", "dog"] and "skipped 1 empty class folders" in messages[0]


def test_one_class_folder_is_refused(tmp_path):
    root = make_class_folders(tmp_path / "train")
    shutil.rmtree(root / "dog")
    with pytest.raises(UserError, match=r"train: expected images of at least 2 classes to "
                                        r"classify, found 1 \('cat'\)"):
        data.load_train(config_for(root, data_format="class_folders"), tmp_path / "cache")
    assert images.list_class_folders(root)[2] == ["cat"]  # evaluating one class is fine


def test_corrupt_file_is_named_or_skipped(tmp_path):
    root = make_class_folders(tmp_path / "train")
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    paths, _, _ = images.list_class_folders(root)
    with pytest.raises(UserError, match=r"cat/broken.png: not a readable image"):
        images.decode_all(paths, SETTINGS, None)
    skip = images.DecodeSettings(8, 3, "resize", True, 2)
    messages = []
    decoded, kept = images.decode_all(paths, skip, None, log=messages.append)
    assert decoded.shape == (15, 8, 8, 3) and kept.sum() == 15 and len(kept) == 16
    assert "skipped 1 unreadable image files" in messages[0] and "broken.png" in messages[0]


def test_cache_hit_and_miss(tmp_path, monkeypatch):
    root = make_class_folders(tmp_path / "train")
    paths, _, _ = images.list_class_folders(root)
    first, _ = images.decode_all(paths, SETTINGS, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(images, "decode", no_decoding)
    again, kept = images.decode_all(paths, SETTINGS, tmp_path / "cache")
    assert isinstance(again, np.memmap) and np.array_equal(again, first) and kept.all()
    monkeypatch.undo()
    other = images.DecodeSettings(6, 1, "resize", False, 2)  # new settings: a miss
    small, _ = images.decode_all(paths, other, tmp_path / "cache")
    assert small.shape == (15, 6, 6, 1)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2


def labels_csv_layout(root):
    for name in ("a1", "a2", "b1", "b2"):
        save(root / "train" / f"{name}.jpg", solid(30 if name[0] == "a" else 220))
    return root


def config_for(root, **fields):
    config = default.get_config()
    config.data_dir = str(root)
    config.image_size, config.channels = 8, 3
    for k, v in fields.items():
        config[k] = v
    return config


def test_labels_csv_with_and_without_extensions(tmp_path):
    root = labels_csv_layout(tmp_path)
    (root / "labels.csv").write_text("id,breed\na1.jpg,beagle\na2,beagle\nb1,akita\nb2.jpg,akita\n")
    ds = data.load_train(config_for(root, data_format="labels_csv", label_column="breed"),
                         tmp_path / "cache")
    assert ds.class_names == ["akita", "beagle"]
    assert ds.labels.tolist() == [1, 1, 0, 0] and ds.ids.tolist() == ["a1", "a2", "b1", "b2"]
    assert ds.images.shape == (4, 8, 8, 3)


@pytest.mark.parametrize("rows, message", [
    ("id,label\na1,x\na2,x\nb1,y\nb2,y\nzz,y\n", r"labels.csv, line 6: no image 'zz'"),
    ("id,label\na1,x\na2,x\nb1,y\n", r"train/b2.jpg: has no label in .*labels.csv"),
    ("name,label\na1,x\n", r"labels.csv: no column 'id' \(set config.id_column"),
    ("id,label\na1,x\na2,\nb1,y\nb2,y\n",
     r"labels.csv, line 3, column 'label': expected a label, got an empty cell"),
    ("id,label\na1,x\na2,x\nb1,y\nb2,y\na1.jpg,y\n",
     r"labels.csv, line 6: image 'a1.jpg' is listed again \(first on line 2\)"),
    ("id,label\na1,x\na2,x\nb1,x\nb2,x\n",
     r"labels.csv: expected images of at least 2 classes to classify, found 1 \('x'\)"),
])
def test_labels_csv_mismatches(tmp_path, rows, message):
    root = labels_csv_layout(tmp_path)
    (root / "labels.csv").write_text(rows)
    with pytest.raises(UserError, match=message):
        data.load_train(config_for(root, data_format="labels_csv"), tmp_path / "cache")


def test_labels_csv_skips_mismatches_when_asked(tmp_path):
    root = labels_csv_layout(tmp_path)
    (root / "labels.csv").write_text("id,label\na1,x\na2,x\nb1,y\nzz,y\n")
    ds = data.load_train(config_for(root, data_format="labels_csv", skip_bad_files=True),
                         tmp_path / "cache")
    assert ds.ids.tolist() == ["a1", "a2", "b1"]


def test_image_size_is_required(tmp_path):
    root = make_class_folders(tmp_path / "train")
    with pytest.raises(UserError, match=r"config.image_size: expected the side"):
        data.load_train(config_for(root, data_format="class_folders", image_size=0), None)


def test_label_mapping_round_trip(tmp_path):
    """Train on cat/dog folders, predict a folder: class names come back as labels."""
    root = make_class_folders(tmp_path / "train", n=24)
    new = tmp_path / "new"
    save(new / "x1.png", solid(45, (8, 8)), "L")
    save(new / "sub" / "x2.jpg", solid(198))
    workdir = tmp_path / "run"
    proc = run_main("--config", "configs/default.py", f"--workdir={workdir}",
                    f"--config.data_dir={root}", "--config.data_format=class_folders",
                    "--config.image_size=8", "--config.channels=3", "--config.num_epochs=3",
                    "--config.batch_size=8", "--config.val_fraction=0.25",
                    "--config.cnn.features=(8,)")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((workdir / "classes.json").read_text()) == ["cat", "dog"]
    proc = run_main("--config", "configs/default.py", f"--workdir={workdir}",
                    "--mode=predict", f"--input={new}")
    assert proc.returncode == 0, proc.stderr
    preds = pd.read_csv(workdir / "predict" / new.name / "predictions.csv")  # the default
    assert list(preds.columns) == ["id", "label", "prob_cat", "prob_dog"]
    assert sorted(preds["id"]) == ["x1", "x2"]  # sorted by path: sub/x2 first
    assert set(preds["label"]) <= {"cat", "dog"}
    assert not (workdir / "submission.csv").exists()  # image data: no competition file
    assert not (workdir / "predict" / new.name / "submission.csv").exists()


def test_end_to_end_on_the_shared_mnist_pngs(shared_data, tmp_path):
    """Class folders of the real digits, written by the shared script (beside the
    data, as its README says; in a temporary folder if that one is read-only)."""
    import subprocess
    import sys

    script = [sys.executable, str(shared_data / "make_mnist_png.py")]
    out = shared_data / "mnist-png"
    if subprocess.run(script, capture_output=True).returncode != 0:
        out = tmp_path / "mnist-png"
        proc = subprocess.run([*script, f"--out={out}"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    workdir = tmp_path / "run"
    proc = run_main("--config", "configs/mnist_png.py", f"--workdir={workdir}",
                    f"--config.data_dir={out / 'train'}", "--config.num_epochs=1",
                    # A narrow CNN, no plots: this test is about the image road.
                    "--config.cnn.features=(8,16)", "--config.cnn.dense=32",
                    "--config.plots=false")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((workdir / "metrics.jsonl").read_text())
    assert record["val_accuracy"] > 0.95 and record["step"] == 37_800 // 128
    preds = pd.read_csv(workdir / "predictions.csv")
    assert len(preds) == 28_000 and sorted(preds["id"]) == list(range(1, 28_001))
    assert preds["label"].between(0, 9).all()
