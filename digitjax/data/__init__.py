"""Data sources -> one `Dataset` type: uint8 NHWC images, integer labels, ids, class names.

`load_train` reads the labelled data named by the config; `load_inputs` reads images
to predict, and `load_labelled` labelled images to evaluate, with the geometry (and for
`load_labelled` the classes) the model was trained on; a CSV's pixel columns are matched
by name to the training file's. Images are one uint8 array (in RAM or memory-mapped), or
for a TFDS split too big for memory `tfds_source.LazyImages`, which decodes the rows it
is indexed with.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import ml_collections
import numpy as np
import pandas as pd

from digitjax import console, transforms
from digitjax.data import embedded, images, pixels, tfds_source
from digitjax.errors import UserError

DATA_FORMATS = ("pixels", "class_folders", "labels_csv", "tfds")


@dataclasses.dataclass(frozen=True)
class Dataset:
    images: np.ndarray | tfds_source.LazyImages  # (N, H, W, C) uint8
    labels: np.ndarray | None  # (N,) int32 class ids (-1: none); None when unlabelled
    ids: np.ndarray  # (N,) the id of each row in outputs
    class_names: list[str]  # label id -> name
    source: str  # where it came from, for messages
    writes_submission: bool = True  # a Kaggle pixel CSV: predictions also go to submission.csv
    columns: tuple[str, ...] | None = None  # a pixel CSV's names of the H*W*C values, in order

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


def describe(data: Dataset, train_idx: np.ndarray, val_idx: np.ndarray) -> dict:
    """What a run trains on (run_info.json, the report): source, sizes, classes and the
    number of images of each."""
    return {"source": data.source, "images": len(data.images),
            "image_shape": list(data.image_shape), "train": len(train_idx),
            "validation": len(val_idx), "classes": list(data.class_names),
            "class_counts": np.bincount(data.labels, minlength=len(data.class_names)).tolist()}


def load_train(config: ml_collections.ConfigDict, cache_dir: str | os.PathLike) -> Dataset:
    """The labelled training data of `config.data_dir` or config.tfds_name (or the
    embedded digits)."""
    if config.data_format not in DATA_FORMATS:
        raise UserError(f"config.data_format: expected one of {DATA_FORMATS}, "
                        f"got '{config.data_format}'")
    if config.data_format == "tfds":
        return tfds_source.load_train(config, cache_dir)
    if not config.data_dir:
        return embedded.digits(train=True)
    if config.data_format != "pixels":
        return _load_image_files(config, cache_dir)
    path = _data_file(config, config.train_file, "config.train_file")
    table = pixels.read_pixel_csv(path, config.label_column, config.id_column, cache_dir)
    if table.labels is None:
        raise UserError(
            f"{path}: no label column '{config.label_column}' "
            "(set config.label_column to the name of the label column)"
        )
    return _from_table(table, config, shape=None, labelled=True)


def load_test(config: ml_collections.ConfigDict, shape, cache_dir,
              columns: list[str] | None = None) -> Dataset | None:
    """The test split to predict after training, or None when the config names none:
    unlabelled, except a TFDS split that has labels (its accuracy is reported).
    `columns`: as for `load_inputs`."""
    if config.data_format == "tfds" and config.tfds_test_split:
        return tfds_source.load_test(config, shape, cache_dir)
    if not config.data_dir:
        return None if config.data_format == "tfds" else embedded.digits(train=False)
    if config.data_format in ("pixels", "tfds"):  # tfds: a pixel CSV to submit on
        test = Path(config.data_dir) / config.test_file if config.test_file else None
    else:
        test = Path(config.data_dir) / config.test_dir if config.test_dir else None
    if test is None or not test.exists():
        return None
    return load_inputs(test, config, shape, cache_dir, columns)


def check_test(config: ml_collections.ConfigDict, shape, cache_dir,
               columns: list[str] | None = None) -> None:
    """Reads the test split before training, so that a bad test file stops the run
    before the epochs instead of after them; its parse or decode is cached for the
    prediction at the end. A TFDS test split was opened by `load_train` already."""
    if not (config.data_format == "tfds" and config.tfds_test_split):
        load_test(config, shape, cache_dir, columns)


def load_inputs(path, config: ml_collections.ConfigDict, shape, cache_dir=None,
                columns: list[str] | None = None) -> Dataset:
    """Images to predict at `path`: a folder of image files, one image file or a pixel
    CSV, made to the trained input `shape`. A CSV's pixel columns are put in the order
    of `columns` (the training file's names) by name; without names (a workdir trained
    before they were recorded) they are taken by position."""
    path = Path(path)
    if path.is_dir():
        found = images.list_unlabelled(path)
        decoded, kept = images.decode_all(found, _decode_settings(config, shape), cache_dir)
        return Dataset(images=decoded, labels=None, ids=_stems(found, kept), class_names=[],
                       source=str(path), writes_submission=False)
    if images.is_image(path):
        if not path.is_file():
            raise UserError(f"{path}: no such file (expected an image, a folder of images "
                            "or a pixel CSV)")
        decoded = images.decode(path, _decode_settings(config, shape))
        return Dataset(images=decoded[None], labels=None, ids=np.array([path.stem]),
                       class_names=[], source=str(path), writes_submission=False)
    table = pixels.read_pixel_csv(path, config.label_column, config.id_column, cache_dir)
    return _from_table(table, config, shape=tuple(shape), labelled=False, columns=columns)


def load_labelled(path, config: ml_collections.ConfigDict, shape,
                  class_names: list[str], pixel_columns: list[str] | None = None) -> Dataset:
    """Labelled images to evaluate at `path`, made to the trained input `shape`, their
    labels mapped by name onto the model's `class_names`: a folder of class folders,
    a labels CSV (id, label; images in `config.image_dir` beside it, else beside it)
    or a pixel CSV with a label column. A label that is not a class of the model is
    refused with its file and line."""
    path = Path(path)
    index = {str(c): i for i, c in enumerate(class_names)}
    expected = ", ".join(map(str, class_names[:12])) + (", ..." if len(class_names) > 12 else "")
    settings = _decode_settings(config, shape)
    if path.is_dir():
        paths, labels, names = images.list_class_folders(path, config.skip_bad_files)
        unknown = [n for n in names if n not in index]
        if unknown:
            raise UserError(f"{path / unknown[0]}: '{unknown[0]}' is not a class of the model "
                            f"(expected class folders named {expected})")
        decoded, kept = images.decode_all(paths, settings, None)
        mapped = np.array([index[n] for n in names], np.int32)[np.asarray(labels, int)[kept]]
        return Dataset(decoded, mapped, _stems(paths, kept), list(class_names),
                       f"{path} (class folders)", writes_submission=False)
    if not path.is_file():
        raise UserError(f"{path}: no such file or folder (expected class folders, a labels "
                        "CSV or a pixel CSV with labels)")
    if images.is_image(path):
        raise UserError(f"{path}: one image has no label (expected class folders, a labels "
                        "CSV or a pixel CSV with labels)")
    id_column = config.id_column or "id"
    columns = _csv_columns(path)
    if id_column in columns and config.label_column in columns and \
            len(columns) < int(np.prod(shape)):  # a labels CSV: far fewer columns than pixels
        image_dir = path.parent / config.image_dir
        image_dir = image_dir if image_dir.is_dir() else path.parent
        paths, labels, names, _ = images.list_labels_csv(
            path, image_dir, id_column, config.label_column, config.skip_bad_files)
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        _check_labels(path, table[config.label_column].tolist(), index, config, expected)
        decoded, kept = images.decode_all(paths, settings, None)
        mapped = np.array([index[n] for n in names], np.int32)[np.asarray(labels, int)[kept]]
        return Dataset(decoded, mapped, _stems(paths, kept), list(class_names),
                       f"{path} + {image_dir}", writes_submission=False)
    table = pixels.read_pixel_csv(path, config.label_column, config.id_column, None)
    if table.labels is None:
        raise UserError(f"{path}: no label column '{config.label_column}' (evaluation needs "
                        "labels; set config.label_column)")
    _check_labels(path, [str(v) for v in table.labels], index, config, expected)
    data = _from_table(table, config, shape=tuple(shape), labelled=False,
                       columns=pixel_columns)
    mapped = np.array([index[str(v)] for v in table.labels], np.int32)
    return dataclasses.replace(data, labels=mapped, class_names=list(class_names))


def _csv_columns(path: Path) -> list[str]:
    """The header of a CSV ([] when it has none that pandas can read)."""
    try:
        return [str(c).strip() for c in pd.read_csv(path, nrows=0).columns]
    except (ValueError, UnicodeDecodeError, OSError, EOFError):
        return []


def _check_labels(path: Path, labels: list[str], index: dict, config, expected: str) -> None:
    for row, label in enumerate(labels):
        if label not in index:
            raise UserError(f"{path}, line {row + 2}, column '{config.label_column}': label "
                            f"'{label}' is not a class of the model (expected one of "
                            f"{expected})")


def _stems(paths: list[Path], kept: np.ndarray) -> np.ndarray:
    """The ids of image files: names without extension, of the files that decoded."""
    return np.array([p.stem for p, k in zip(paths, kept, strict=True) if k])


def _decode_settings(config, shape=None) -> images.DecodeSettings:
    if shape is not None:
        size, channels = shape[0], shape[2]
    else:
        size, channels = config.image_size, config.channels or 3
        if size <= 0:
            raise UserError("config.image_size: expected the side (pixels) to decode image "
                            f"files to, got {size}")
        if channels not in (1, 3):
            raise UserError(f"config.channels: expected 1 or 3, got {channels}")
    if config.resize not in images.RESIZE_POLICIES:
        raise UserError(f"config.resize: expected one of {images.RESIZE_POLICIES}, "
                        f"got '{config.resize}'")
    return images.DecodeSettings(size, channels, config.resize, config.skip_bad_files,
                                 config.decode_workers)


def _load_image_files(config, cache_dir) -> Dataset:
    root = Path(config.data_dir)
    settings = _decode_settings(config)
    if config.data_format == "class_folders":
        paths, labels, classes = images.list_class_folders(root, config.skip_bad_files)
        images.need_two_classes(classes, root)
        source = f"{root} (class folders)"
    else:
        paths, labels, classes, skipped = images.list_labels_csv(
            root / config.labels_file, root / config.image_dir, config.id_column or "id",
            config.label_column, config.skip_bad_files)
        images.need_two_classes(classes, root / config.labels_file)
        if skipped:
            console.log(f"skipped {skipped} unmatched rows/files (config.skip_bad_files)")
        source = f"{root / config.labels_file} + {root / config.image_dir}"
    decoded, kept = images.decode_all(paths, settings, cache_dir)
    return Dataset(
        images=decoded,
        labels=np.asarray(labels, np.int32)[kept],
        ids=_stems(paths, kept),
        class_names=classes,
        source=source,
        writes_submission=False,
    )


def _data_file(config, name: str, field: str) -> Path:
    folder = Path(config.data_dir)
    if not folder.is_dir():
        raise UserError(f"config.data_dir: no such folder '{folder}'")
    path = folder / name
    if not path.is_file():
        raise UserError(f"{path}: no such file (set {field}, or config.data_dir)")
    return path


def _from_table(table: pixels.PixelTable, config, shape, labelled: bool,
                columns: list[str] | None = None) -> Dataset:
    num_pixels = table.pixels.shape[1]
    flat = table.pixels
    if shape is None:
        shape = transforms.infer_image_shape(
            num_pixels, config.image_size, config.channels, source=table.path
        )
    elif columns:
        flat = _by_name(table, list(columns), shape)
    elif np.prod(shape) != num_pixels:
        raise UserError(
            f"{table.path}: has {num_pixels} pixel columns, but the model was trained on "
            f"{shape[0]}x{shape[1]}x{shape[2]} = {int(np.prod(shape))} pixels per image"
        )
    labels = None
    if labelled:
        bad = np.flatnonzero(table.labels >= config.num_classes)
        if bad.size:
            row = int(bad[0])
            raise UserError(
                f"{table.path}, line {row + 2}, column '{config.label_column}': expected a "
                f"label in 0..{config.num_classes - 1} (config.num_classes), "
                f"got {table.labels[row]}"
            )
        labels = table.labels.astype(np.int32)
    ids = table.ids if table.ids is not None else np.arange(1, len(table.pixels) + 1)
    return Dataset(
        images=transforms.reshape_images(flat, shape),
        labels=labels,
        ids=ids,
        class_names=[str(i) for i in range(config.num_classes)],
        source=table.path,
        columns=tuple(columns) if columns else table.columns,
    )


def _by_name(table: pixels.PixelTable, columns: list[str], shape) -> np.ndarray:
    """`table.pixels` with its columns in the order of the training file's `columns`;
    a missing or an extra column is refused with its name."""
    if list(table.columns) == columns:
        return table.pixels
    position = {name: i for i, name in enumerate(table.columns)}
    trained = set(columns)
    missing = [c for c in columns if c not in position]
    extra = [c for c in table.columns if c not in trained]
    if not missing and not extra:
        return table.pixels[:, [position[c] for c in columns]]
    if len(table.columns) != len(columns):
        what = (f"has {len(table.columns)} pixel columns, but the model was trained on "
                f"{shape[0]}x{shape[1]}x{shape[2]} = {len(columns)} pixels per image")
    else:
        what = "its pixel columns are not those of the training file"
    found = ([f"missing {_names(missing)}"] if missing else []) + (
        [f"not in the training file: {_names(extra)}"] if extra else [])
    raise UserError(f"{table.path}: {what} ({'; '.join(found)}; pixel columns are matched "
                    "by name, and config.label_column / config.id_column are left out)")


def _names(names: list[str], show: int = 5) -> str:
    quoted = ", ".join(f"'{n}'" for n in names[:show])
    return quoted if len(names) <= show else f"{quoted}, ... ({len(names)} columns)"
