"""Pixel columns matched by name between the training file and the files predicted,
and a header every column of which has a unique name."""

import json
import re
import shutil

import numpy as np
import pytest

from digitjax import data, predict, workdir
from digitjax.configs import default
from digitjax.data.pixels import read_pixel_csv
from digitjax.errors import UserError
from tests.conftest import run_main
from tests.test_cli import assert_clean_failure, snapshot

HEADER = "label," + ",".join(f"pixel{i}" for i in range(4)) + "\n"


def write(folder, text, name="train.csv"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def test_the_pixel_column_names_are_read_and_cached(tmp_path):
    path = write(tmp_path, "id,pixel1,label,pixel0\n7,1,3,2\n8,4,5,6\n")
    for _ in range(2):  # parsed, then from the cache
        table = read_pixel_csv(path, id_column="id", cache_dir=tmp_path / "cache")
        assert table.columns == ("pixel1", "pixel0")
        assert table.pixels.tolist() == [[1, 2], [4, 6]]
    assert len(list((tmp_path / "cache").iterdir())) == 1


def reorder(text: str, order: list[int]) -> str:
    rows = [line.split(",") for line in text.splitlines()]
    return "".join(",".join(row[i] for i in order) + "\n" for row in rows)


def test_predicted_columns_are_put_in_the_training_order_by_name(tmp_path):
    config = default.get_config()
    text = "pixel0,pixel1,pixel2,pixel3\n1,2,3,4\n5,6,7,8\n"
    trained = ["pixel0", "pixel1", "pixel2", "pixel3"]
    shuffled = write(tmp_path, reorder(text, [2, 0, 3, 1]), "test.csv")
    got = data.load_inputs(shuffled, config, (2, 2, 1), columns=trained)
    assert got.images.reshape(2, 4).tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert got.columns == tuple(trained)
    # no names recorded (a workdir trained before they were): by position, as before
    old = data.load_inputs(shuffled, config, (2, 2, 1), columns=None)
    assert old.images.reshape(2, 4).tolist() == [[3, 1, 4, 2], [7, 5, 8, 6]]


@pytest.mark.parametrize("header, message", [
    ("pixel0,pixel1,pixel3", "test.csv: has 3 pixel columns, but the model was trained on "
                             "2x2x1 = 4 pixels per image (missing 'pixel2'; "),
    ("pixel0,pixel1,pixel2,pixel3,ImageId", "test.csv: has 5 pixel columns, but the model was "
                                            "trained on 2x2x1 = 4 pixels per image (not in the "
                                            "training file: 'ImageId'; "),
    ("pixel0,pixel1,pixel2,p3", "test.csv: its pixel columns are not those of the training "
                                "file (missing 'pixel3'; not in the training file: 'p3'; "),
])
def test_missing_and_extra_columns_are_named(tmp_path, header, message):
    n = header.count(",") + 1
    path = write(tmp_path, header + "\n" + ",".join(["0"] * n) + "\n", "test.csv")
    with pytest.raises(UserError, match=re.escape(message)):
        data.load_inputs(path, default.get_config(), (2, 2, 1),
                         columns=["pixel0", "pixel1", "pixel2", "pixel3"])


@pytest.mark.parametrize("text, message", [
    # a trailing comma on every line: the header's last name is empty
    (HEADER.replace("\n", ",\n") + "1,2,3,4,5,\n",
     "train.csv, line 1, column 6: empty column name (a trailing comma?); expected a name for "
     "every column"),
    # pandas' to_csv with its index: an unnamed first column
    ("," + HEADER + "0,1,2,3,4,5\n", "train.csv, line 1, column 1: empty column name (an index "
                                     "written by pandas' to_csv? write with index=False)"),
    ("label,pixel0,pixel1,pixel0\n1,2,3,4\n", "train.csv, line 1, column 4: column name "
                                              "'pixel0' repeats column 2; expected unique names"),
    ("1,0,0,0,0\n2,0,0,0,0\n", "line 1, column 3: column name '0' repeats column 2; expected "
                               "unique names (is the header line missing?)"),
    (HEADER + "1,2,3,4,5,\n", "train.csv, line 2: expected 5 comma-separated values (as in the "
                              "header), got 6 (a trailing comma?)"),
    (HEADER + "1,2,3,4,5\n\n1,2,3,4,5\n", "train.csv, line 3: expected 5 comma-separated values "
                                         "(as in the header), got 0 (an empty line)"),
    (HEADER + "1,2,3,4,5\n1,2,3\n", "train.csv, line 3: expected 5 comma-separated values (as "
                                    "in the header), got 3"),
    (HEADER + "1,2,3,4,5\n1,2,3,4,5,6,7\n", "train.csv, line 3: expected 5 comma-separated "
                                            "values (as in the header), got 7"),
    (HEADER + "1,2,3,4,5\n1,2,3,4,1e3\n", "train.csv, line 3, column 'pixel3': expected a pixel "
                                          "value 0-255, got '1e3'"),
    (HEADER + "1,2,nan,4,5\n", "train.csv, line 2, column 'pixel1': expected a pixel value "
                               "0-255, got 'nan'"),
    (HEADER + "1,2,3,4,5\n1,2,3,4,1000000000000\n", "train.csv, line 3, column 'pixel3': "
                                                    "expected a pixel value 0-255, got "
                                                    "'1000000000000'"),
])
def test_every_malformed_csv_is_one_line_naming_the_place(tmp_path, text, message):
    with pytest.raises(UserError, match=re.escape(message)):
        read_pixel_csv(write(tmp_path, text))


def test_a_byte_that_is_not_utf8_is_named_with_its_line(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(HEADER.encode() + b"1,2,3,4,5\n1,2,\xff,4,5\n")
    with pytest.raises(UserError, match=re.escape("train.csv, line 3: expected UTF-8 text, "
                                                  "got the byte 0xff")):
        read_pixel_csv(path)


def test_the_slow_reader_takes_spaced_names_and_trailing_blank_lines(tmp_path):
    """Text ids send a file to the pandas reader; it reads the names as the header
    check does (stripped) and stops at the last row."""
    path = write(tmp_path, "id, label, pixel0, pixel1\nab,1,2,3\ncd,4,5,6\n\n\n")
    table = read_pixel_csv(path, id_column="id")
    assert table.columns == ("pixel0", "pixel1") and table.ids.tolist() == ["ab", "cd"]
    assert table.labels.tolist() == [1, 4] and table.pixels.tolist() == [[2, 3], [5, 6]]


def test_the_checkpoint_records_the_training_columns(trained_workdir):
    from digitjax import checkpoint

    meta = checkpoint.latest_meta(trained_workdir)
    assert meta["pixel_columns"] == [f"pixel{i}" for i in range(784)]


def shuffled_test_csv(digits_dir, tmp_path, order=None):
    text = (digits_dir / "test.csv").read_text()
    order = order or list(np.random.default_rng(0).permutation(784))
    return write(tmp_path, reorder(text, order), "shuffled.csv")


def test_reordered_columns_predict_what_the_original_order_predicts(
        trained_workdir, digits_dir, tmp_path):
    path = shuffled_test_csv(digits_dir, tmp_path)
    proc = run_main("--config", "configs/seed.py", f"--workdir={trained_workdir}",
                    "--mode=predict", f"--input={path}", f"--output_dir={tmp_path / 'out'}")
    assert proc.returncode == 0, proc.stderr
    # the training run predicted digits_dir/test.csv in its original order
    for name in ("predictions.csv", "submission.csv", "test_probs.npy"):
        assert (tmp_path / "out" / name).read_bytes() == (trained_workdir / name).read_bytes()


def test_a_workdir_without_column_names_still_predicts_by_position(
        trained_workdir, digits_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(trained_workdir, old)
    records = list(old.glob("checkpoints/*/meta/metadata"))  # orbax's JSON of the record
    assert len(records) == 1  # the one epoch's checkpoint
    for record in records:
        meta = json.loads(record.read_text())
        del meta["pixel_columns"]
        record.write_text(json.dumps(meta))
    config = workdir.saved_config(old, default.get_config())
    predict.predict_path(config, old, str(digits_dir / "test.csv"), tmp_path / "same")
    assert (tmp_path / "same" / "predictions.csv").read_bytes() == \
        (trained_workdir / "predictions.csv").read_bytes()
    # by position: a file with its columns reversed is read as it lies (the images flipped)
    flipped = shuffled_test_csv(digits_dir, tmp_path, list(range(783, -1, -1)))
    predict.predict_path(config, old, str(flipped), tmp_path / "flipped")
    probs = np.load(tmp_path / "flipped" / "test_probs.npy")
    assert not np.allclose(probs, np.load(trained_workdir / "test_probs.npy"), atol=1e-3)


PIXELS = [f"pixel{i}" for i in range(784)]


def csv_text(names, rows=2, trailing=""):
    return "".join(",".join(r) + trailing + "\n" for r in [names] + [["0"] * len(names)] * rows)


@pytest.mark.parametrize("names, fragments", [
    (PIXELS[:100] + PIXELS[101:], ["bad.csv: has 783 pixel columns, but the model was trained "
                                   "on 28x28x1 = 784 pixels per image (missing 'pixel100'"]),
    (PIXELS + ["extra"], ["bad.csv: has 785 pixel columns", "(not in the training file: "
                                                            "'extra'"]),
])
def test_missing_or_extra_columns_fail_cleanly_and_write_nothing(trained_workdir, tmp_path,
                                                                 names, fragments):
    path = write(tmp_path, csv_text(names), "bad.csv")
    before = snapshot(trained_workdir)
    proc = run_main("--config", "configs/seed.py", f"--workdir={trained_workdir}",
                    "--mode=predict", f"--input={path}", f"--output_dir={tmp_path / 'out'}")
    assert_clean_failure(proc, *fragments)
    assert proc.returncode == 2
    assert snapshot(trained_workdir) == before and not (tmp_path / "out").exists()


def test_a_trailing_comma_test_csv_fails_cleanly(trained_workdir, tmp_path):
    path = write(tmp_path, csv_text(PIXELS, trailing=","), "test.csv")
    before = snapshot(trained_workdir)
    proc = run_main("--config", "configs/seed.py", f"--workdir={trained_workdir}",
                    "--mode=predict", f"--input={path}")
    assert_clean_failure(proc, "test.csv, line 1, column 785: empty column name (a trailing "
                               "comma?)")
    assert proc.returncode == 2 and snapshot(trained_workdir) == before


def test_a_trailing_comma_train_csv_fails_cleanly(digits_dir, tmp_path):
    lines = (digits_dir / "train.csv").read_text().splitlines()[:101]
    folder = tmp_path / "data"
    write(folder, "".join(line + ",\n" for line in lines))
    proc = run_main("--config", "configs/seed.py", f"--workdir={tmp_path / 'run'}",
                    f"--config.data_dir={folder}", "--config.num_epochs=1")
    assert_clean_failure(proc, "train.csv, line 1, column 786: empty column name (a trailing "
                               "comma?); expected a name for every column")
    assert proc.returncode == 2 and not (tmp_path / "run").exists()
