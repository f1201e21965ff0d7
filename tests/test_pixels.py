import gzip
import os

import numpy as np
import pytest
from ml_collections import ConfigDict

from digitjax import data
from digitjax.configs import default
from digitjax.data.pixels import read_pixel_csv
from digitjax.errors import UserError

HEADER = "label," + ",".join(f"pixel{i}" for i in range(4)) + "\n"


def write(tmp_path, text, name="train.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_labels_and_pixels_in_order(tmp_path):
    path = write(tmp_path, HEADER + "3,0,1,2,255\n7,10,20,30,40\n")
    table = read_pixel_csv(path)
    assert table.labels.tolist() == [3, 7]
    assert table.pixels.dtype == np.uint8
    assert table.pixels.tolist() == [[0, 1, 2, 255], [10, 20, 30, 40]]
    assert table.ids is None


def test_label_column_found_by_name_anywhere(tmp_path):
    path = write(tmp_path, "pixel0,digit,pixel1\r\n5,2,6\r\n7,9,8\r\n\n")  # CRLF, blank end
    table = read_pixel_csv(path, label_column="digit")
    assert table.labels.tolist() == [2, 9] and table.pixels.tolist() == [[5, 6], [7, 8]]


def test_id_column_numeric_and_text(tmp_path):
    table = read_pixel_csv(write(tmp_path, "id,pixel0\n1001,4\n1002,5\n"), id_column="id")
    assert table.ids.tolist() == [1001, 1002] and table.pixels.ravel().tolist() == [4, 5]
    table = read_pixel_csv(write(tmp_path, "id,pixel0\nab,4\ncd,5\n", "t.csv"), id_column="id")
    assert table.ids.tolist() == ["ab", "cd"] and table.pixels.ravel().tolist() == [4, 5]


def test_reads_gzip(tmp_path):
    path = tmp_path / "train.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write(HEADER + "1,9,8,7,6\n")
    assert read_pixel_csv(path).pixels.tolist() == [[9, 8, 7, 6]]


def test_matches_a_plain_reader_on_real_rows(digits_dir):
    table = read_pixel_csv(digits_dir / "train.csv")
    rows = np.loadtxt(digits_dir / "train.csv", delimiter=",", skiprows=1, dtype=np.int64)
    assert np.array_equal(table.labels, rows[:, 0])
    assert np.array_equal(table.pixels, rows[:, 1:])
    assert table.pixels.shape == (640, 784)


def test_cache_hit_and_invalidation(tmp_path):
    path = write(tmp_path, HEADER + "1,1,2,3,4\n")
    cache = tmp_path / "cache"
    read_pixel_csv(path, cache_dir=cache)
    (entry,) = cache.iterdir()
    stamp = entry.stat().st_mtime_ns
    assert read_pixel_csv(path, cache_dir=cache).pixels.tolist() == [[1, 2, 3, 4]]
    assert entry.stat().st_mtime_ns == stamp  # a hit reads the cache, writes nothing
    path.write_text(HEADER + "2,5,6,7,8\n")
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    assert read_pixel_csv(path, cache_dir=cache).pixels.tolist() == [[5, 6, 7, 8]]
    assert len(list(cache.iterdir())) == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("", r"train.csv: the file is empty"),
        (HEADER, r"train.csv: has a header but no data rows"),
        (HEADER + "1,2,3,x,4\n", r"train.csv, line 2, column 'pixel2': expected a pixel value "
                                 r"0-255, got 'x'"),
        (HEADER + "1,2,3,4,5\n1,2,256,4,5\n", r"line 3, column 'pixel1': .* got '256'"),
        (HEADER + "1,2,3,-1,5\n", r"line 2, column 'pixel2': .* got '-1'"),
        (HEADER + "1,2,3,0.5,5\n", r"line 2, column 'pixel2': .* got '0.5'"),
        (HEADER + "1,2,3,,5\n", r"line 2, column 'pixel2': .* got an empty cell"),
        (HEADER + "1,2,3,4\n", r"train.csv, line 2: expected 5 comma-separated values .*got 4"),
        (HEADER + "1,2,3,4,5\n1,2,3,4,5,6\n", r"line 3: expected 5 comma-separated .*got 6"),
        (HEADER + "a,2,3,4,5\n", r"line 2, column 'label': expected a non-negative integer label"),
    ],
)
def test_bad_files_name_the_place(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        read_pixel_csv(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"nope.csv: no such file"):
        read_pixel_csv(tmp_path / "nope.csv")


def config_for(folder) -> ConfigDict:
    config = default.get_config()
    config.data_dir = str(folder)
    return config


def test_load_train_shapes_and_ids(digits_dir, tmp_path):
    ds = data.load_train(config_for(digits_dir), tmp_path)
    assert ds.images.shape == (640, 28, 28, 1) and ds.labels.dtype == np.int32
    assert ds.class_names == [str(i) for i in range(10)]
    test = data.load_test(config_for(digits_dir), ds.image_shape, tmp_path)
    assert test.images.shape == (50, 28, 28, 1) and test.ids.tolist() == list(range(1, 51))


def test_missing_label_column(tmp_path):
    write(tmp_path, "pixel0,pixel1,pixel2,pixel3\n1,2,3,4\n")
    with pytest.raises(UserError, match=r"train.csv: no label column 'label'"):
        data.load_train(config_for(tmp_path), tmp_path / "cache")


def test_label_outside_the_classes(tmp_path):
    write(tmp_path, HEADER + "1,0,0,0,0\n10,0,0,0,0\n")
    with pytest.raises(UserError, match=r"line 3, column 'label': expected a label in 0..9"):
        data.load_train(config_for(tmp_path), tmp_path / "cache")


def test_wrong_number_of_pixel_columns(tmp_path):
    write(tmp_path, "label," + ",".join(f"p{i}" for i in range(5)) + "\n1,0,0,0,0,0\n")
    with pytest.raises(UserError, match=r"cannot infer the image shape from 5 pixel columns"):
        data.load_train(config_for(tmp_path), tmp_path / "cache")
    write(tmp_path, "pixel0,pixel1,pixel2\n1,2,3\n", "test.csv")
    with pytest.raises(UserError, match=r"test.csv: has 3 pixel columns, but the model was "
                                        r"trained on 2x2x1 = 4"):
        data.load_test(config_for(tmp_path), (2, 2, 1), None)


def test_missing_data_dir_and_file(tmp_path):
    with pytest.raises(UserError, match=r"config.data_dir: no such folder"):
        data.load_train(config_for(tmp_path / "absent"), tmp_path)
    with pytest.raises(UserError, match=r"train.csv: no such file"):
        data.load_train(config_for(tmp_path), tmp_path)


def test_embedded_digits_without_data_dir(tmp_path):
    ds = data.load_train(default.get_config(), tmp_path)
    assert ds.images.shape == (4000, 28, 28, 1)
    assert np.bincount(ds.labels).tolist() == [400] * 10
    test = data.load_test(default.get_config(), ds.image_shape, tmp_path)
    assert test.images.shape == (1000, 28, 28, 1) and test.labels is None
