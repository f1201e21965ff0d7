"""TFDS source: prepared TensorFlow Datasets, read without TensorFlow.

A dataset prepared in the `array_record` format (`tfds build --file_format=array_record`)
is opened with TFDS's random-access data source (`builder.as_data_source`, what
`tfds.data_source` returns) in raw-bytes mode; the records are tf.Example protos,
parsed here with the proto module TFDS ships, and only the image, label and id
features are decoded (Image features with Pillow, Tensor features by TFDS's own
numpy decoder). That is 2x faster than TFDS's generic per-example decoding
(the 42,000 PNG digits in 1.8 s against 3.7 s, experiments/results/tfds.md).

A split whose decoded uint8 images fit in `config.tfds_in_memory_mb` is decoded
once into one array, as the other sources hold theirs. A bigger one becomes
`LazyImages`: the rows asked for are read and decoded on each access, so the
loop's `data.images[idx]` reads only this process's rows of each batch and the
data order stays `sampling.epoch_batches(seed, epoch)`, exactly as in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from PIL import Image, UnidentifiedImageError

from digitjax import files
from digitjax.data import images as image_files
from digitjax.errors import UserError

ARRAY_RECORD = "array_record"
CHUNK = 2048  # records read and decoded at a time when a whole split is read
_CACHE_VERSION = 1


def _tfds():
    """tensorflow_datasets, imported late: only this source needs it."""
    import tensorflow_datasets as tfds

    return tfds


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a prepared TFDS dataset, opened for random access by row."""

    name: str  # "digit_recognizer:1.0.0"
    spec: str  # the split string, e.g. "train[:90%]"
    builder_dir: str  # the folder holding dataset_info.json and the shards
    records: Any  # raw-bytes data source: len() and __getitems__(list[int]) -> list[bytes]
    image_key: str
    label_key: str  # "" when the dataset has no label feature
    id_key: str  # feature copied to the outputs as ids; "" gives TFDS ids
    shape: tuple[int, int, int]  # H, W, C of the decoded images
    class_names: list[str]
    decode_image: Callable  # the image's proto feature -> (H, W, C) uint8
    shard_names: list[str]  # per file instruction: the shard's file name
    shard_rows: np.ndarray  # per file instruction: (first row of the split, skip, take)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def source(self) -> str:
        return f"TFDS {self.name} '{self.spec}' ({self.builder_dir})"

    @property
    def nbytes(self) -> int:
        """Size of the whole split decoded to uint8."""
        return len(self) * int(np.prod(self.shape))

    def features(self, rows: np.ndarray) -> list:
        """The parsed tf.Example feature maps of `rows` (indices into the split)."""
        from tensorflow_datasets.proto import tf_example_pb2

        try:
            records = self.records.__getitems__([int(r) for r in rows])
        except (RuntimeError, OSError) as e:
            hint = ("; array_record opens local files only (google/array_record#120): mount "
                    "the bucket, e.g. with gcsfuse, and point config.tfds_data_dir at the mount"
                    if self.builder_dir.startswith("gs://") else "")
            raise UserError(f"{self.builder_dir}: cannot read its records "
                            f"({str(e).strip().splitlines()[0]}){hint}") from None
        return [tf_example_pb2.Example.FromString(r).features.feature for r in records]

    def images(self, rows: np.ndarray) -> np.ndarray:
        """uint8 (len(rows), H, W, C): the images of `rows`, decoded now."""
        out = np.empty((len(rows), *self.shape), np.uint8)
        for lo in range(0, len(rows), CHUNK):
            chunk = rows[lo:lo + CHUNK]
            for i, (row, feats) in enumerate(zip(chunk, self.features(chunk), strict=True)):
                out[lo + i] = self._image(feats, row)
        return out

    def read_all(self, with_images: bool) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """(images or None, labels, ids) of every row, in chunks of CHUNK records.
        Labels are -1 where a record has none (and all -1 without a label feature)."""
        n = len(self)
        decoded = np.empty((n, *self.shape), np.uint8) if with_images else None
        labels = np.full(n, -1, np.int64)
        ids = [] if self.id_key else None
        for lo in range(0, n, CHUNK):
            rows = np.arange(lo, min(n, lo + CHUNK))
            for row, feats in zip(rows, self.features(rows), strict=True):
                if with_images:
                    decoded[row] = self._image(feats, row)
                if self.label_key:
                    labels[row] = self._scalar(feats, self.label_key, row)
                if ids is not None:
                    ids.append(self._id(feats, row))
        return decoded, labels, np.asarray(ids) if ids is not None else self.tfds_ids()

    def tfds_ids(self) -> np.ndarray:
        """TFDS's id of every row, as `read_config.add_tfds_id` names it:
        '<shard file>__<index in the shard>'."""
        out = []
        for name, (_, skip, take) in zip(self.shard_names, self.shard_rows, strict=True):
            out += [f"{name}__{i}" for i in range(skip, skip + take)]
        return np.asarray(out)

    def record_name(self, row: int) -> str:
        """Where row `row` lives, for messages: '<builder_dir>/<shard>, record <i>'."""
        k = int(np.searchsorted(self.shard_rows[:, 0], row, side="right")) - 1
        first, skip, _ = self.shard_rows[k]
        return f"{self.builder_dir}/{self.shard_names[k]}, record {skip + row - first}"

    def _feature(self, feats, key: str, row: int):
        if key not in feats:
            raise UserError(f"{self.record_name(row)}: has no feature '{key}'")
        return feats[key]

    def _image(self, feats, row: int) -> np.ndarray:
        try:
            return self.decode_image(self._feature(feats, self.image_key, row))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise UserError(f"{self.record_name(row)}, feature '{self.image_key}': not a "
                            f"readable image ({e})") from None

    def _scalar(self, feats, key: str, row: int) -> int:
        values = self._feature(feats, key, row).int64_list.value
        if len(values) != 1:
            raise UserError(f"{self.record_name(row)}, feature '{key}': expected one integer, "
                            f"got {len(values)}")
        return int(values[0])

    def _id(self, feats, row: int):
        feature = self._feature(feats, self.id_key, row)
        kind = feature.WhichOneof("kind")
        values = getattr(feature, kind).value if kind else []
        if len(values) != 1:
            raise UserError(f"{self.record_name(row)}, feature '{self.id_key}': expected one "
                            f"value per record for config.id_column, got {len(values)}")
        value = values[0]
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class LazyImages:
    """The images of a TFDS split, decoded from its records on each access.

    Array-like where the loop needs it: `shape`, `dtype`, `len()`, and indexing
    by an integer, a slice or an integer array, which returns a uint8 ndarray.
    Only the rows asked for are read: each process reads its own rows of a batch.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, split: Split, rows: np.ndarray | None = None):
        self.split = split
        self.rows = rows  # this view's rows of the split; None = all of them

    def __len__(self) -> int:
        return len(self.split) if self.rows is None else len(self.rows)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), *self.split.shape)

    def __repr__(self) -> str:
        return f"LazyImages({self.split.source}, shape={self.shape})"

    def _rows(self, index) -> np.ndarray:
        n = len(self)
        if isinstance(index, slice):
            rows = np.arange(*index.indices(n))
        else:
            rows = np.asarray(index)
            if rows.dtype == bool:
                rows = np.flatnonzero(rows)
            if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
                raise IndexError(f"LazyImages: index with an int, a slice or a 1-D integer "
                                 f"array, not {index!r}")
            rows = np.where(rows < 0, rows + n, rows)
            if rows.size and (rows.min() < 0 or rows.max() >= n):
                raise IndexError(f"LazyImages: row out of range for {n} images")
        return rows if self.rows is None else self.rows[rows]

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, int | np.integer):
            return self[np.array([index])][0]
        return self.split.images(self._rows(index))

    def take(self, indices, axis: int = 0) -> LazyImages:
        """A lazy view of rows `indices` (ndarray.take's signature, axis 0 only)."""
        if axis != 0:
            raise ValueError("LazyImages.take: only axis 0")
        return LazyImages(self.split, self._rows(np.asarray(indices)))


def _data_dir(config: ml_collections.ConfigDict):
    from etils import epath

    name = config.tfds_data_dir or str(_tfds().core.constants.DATA_DIR)
    root = epath.Path(name)
    try:
        found = root.is_dir()
    except Exception as e:  # noqa: BLE001 - a gs:// backend missing or refusing
        raise UserError(f"config.tfds_data_dir: cannot read '{name}' ({e})") from None
    if not found:
        raise UserError(f"config.tfds_data_dir: no such folder '{name}' (expected the folder "
                        "holding prepared TFDS datasets, <data_dir>/<name>/<version>/)")
    return root, name


def builder_dir(config: ml_collections.ConfigDict) -> tuple[Any, str]:
    """(folder of dataset_info.json, "name:version") named by config.tfds_name: the
    latest prepared version unless the name ends in ':version'."""
    if not config.tfds_name:
        raise UserError("config.tfds_name: expected the name of a prepared TFDS dataset "
                        "(a folder of config.tfds_data_dir), e.g. 'mnist'")
    root, root_name = _data_dir(config)
    name, _, version = config.tfds_name.partition(":")
    folder = root / name
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and (
            any(p.glob("*/dataset_info.json")) or any(p.glob("*/*/dataset_info.json"))))
        raise UserError(
            f"config.tfds_name: no dataset '{name}' in {root_name} (found: "
            f"{', '.join(found) or 'none'}; prepare one with `tfds build {name} "
            f"--data_dir={root_name} --file_format={ARRAY_RECORD}`)")
    is_valid = _tfds().core.Version.is_valid
    versions = sorted((p for p in folder.iterdir() if is_valid(p.name)
                       and (p / "dataset_info.json").exists()),
                      key=lambda p: _tfds().core.Version(p.name))
    if not versions:
        configs = sorted(p.name for p in folder.iterdir() if p.is_dir())
        hint = (f"it has configs {', '.join(configs)}: name one as '{name}/<config>'"
                if configs else f"prepare it with `tfds build {name} --file_format={ARRAY_RECORD}`")
        raise UserError(f"{folder}: no prepared version (no <version>/dataset_info.json; {hint})")
    if version:
        chosen = [p for p in versions if p.name == version]
        if not chosen:
            raise UserError(f"config.tfds_name: {name} has no prepared version '{version}' in "
                            f"{root_name} (versions: {', '.join(p.name for p in versions)})")
        return chosen[0], f"{name}:{version}"
    return versions[-1], f"{name}:{versions[-1].name}"


def _check_file_format(folder) -> None:
    info = json.loads((folder / "dataset_info.json").read_text())
    formats = [info.get("fileFormat") or "tfrecord", *info.get("alternativeFileFormats", [])]
    if ARRAY_RECORD not in formats:
        raise UserError(
            f"{folder}: stored as {formats[0]}, which only TensorFlow reads; convert it once "
            f"where TensorFlow is installed (`tfds convert_format --dataset_version_dir={folder} "
            f"--out_file_format={ARRAY_RECORD}`) or rebuild it with `tfds build "
            f"--file_format={ARRAY_RECORD}`")


def _keys(config, info, features) -> tuple[str, str]:
    image_key, label_key = config.tfds_image_key, config.tfds_label_key
    supervised = info.supervised_keys
    if (not image_key or not label_key) and supervised:
        if (len(supervised) != 2 or not all(isinstance(k, str) for k in supervised)):
            raise UserError(f"{info.full_name}: supervised_keys {supervised} are not (image, "
                            "label) feature names; set config.tfds_image_key and "
                            "config.tfds_label_key")
        image_key, label_key = image_key or supervised[0], label_key or supervised[1]
    names = ", ".join(sorted(features))
    if not image_key or not label_key:
        raise UserError(f"{info.full_name}: no supervised_keys; set config.tfds_image_key and "
                        f"config.tfds_label_key (features: {names})")
    for key, field in ((image_key, "tfds_image_key"), (label_key, "tfds_label_key"),
                       (config.id_column, "id_column")):
        if key and key not in features:
            raise UserError(f"config.{field}: {info.full_name} has no feature '{key}' "
                            f"(features: {names})")
    return image_key, label_key


def _class_names(config, info, feature, key: str) -> list[str]:
    tfds = _tfds()
    if isinstance(feature, tfds.features.ClassLabel):
        return list(feature.names)
    if (isinstance(feature, tfds.features.Tensor) and feature.shape == ()
            and np.issubdtype(feature.np_dtype, np.integer)):
        return [str(i) for i in range(config.num_classes)]
    raise UserError(f"config.tfds_label_key: feature '{key}' of {info.full_name} is "
                    f"{type(feature).__name__}{feature.shape}; expected a ClassLabel or a "
                    "scalar integer Tensor")


def _image_decoder(config, info, feature, key: str,
                   shape: tuple[int, int, int] | None) -> tuple[Callable, tuple[int, int, int]]:
    """(decode: proto feature -> (H, W, C) uint8, (H, W, C)). The shape is `shape` when
    given (prediction: the trained input), else the feature's, or config.image_size x
    config.image_size x config.channels when they are set."""
    tfds = _tfds()
    is_image = isinstance(feature, tfds.features.Image)
    is_tensor = (isinstance(feature, tfds.features.Tensor) and feature.np_dtype == np.uint8
                 and len(feature.shape) in (2, 3))
    if not (is_image and feature.np_dtype == np.uint8) and not is_tensor:
        raise UserError(f"config.tfds_image_key: feature '{key}' of {info.full_name} is "
                        f"{type(feature).__name__}{feature.shape} {feature.np_dtype}; expected "
                        "an Image or a uint8 Tensor (H, W[, C])")
    stored = tuple(feature.shape) if len(feature.shape) == 3 else (*feature.shape, 1)
    if shape is None:
        size, channels = config.image_size, config.channels or stored[2] or 3
        if channels not in (1, 3):
            raise UserError(f"config.channels: expected 1 or 3 (feature '{key}' of "
                            f"{info.full_name} has {stored[2]}), got {channels}")
        if not size and None in stored[:2]:
            raise UserError(f"config.image_size: feature '{key}' of {info.full_name} has images "
                            f"of varied size {stored}; set the side to decode them to")
        shape = (size, size, channels) if size else (stored[0], stored[1], channels)
    if config.resize not in image_files.RESIZE_POLICIES:
        raise UserError(f"config.resize: expected one of {image_files.RESIZE_POLICIES}, "
                        f"got '{config.resize}'")
    shape = tuple(int(s) for s in shape)
    mode = "L" if shape[2] == 1 else "RGB"

    def fit(img: Image.Image) -> np.ndarray:
        if img.mode != mode:
            img = image_files.convert_mode(img, shape[2])
        if img.size != (shape[1], shape[0]):
            if shape[0] != shape[1]:
                raise ValueError(f"size {img.size[0]}x{img.size[1]}, expected "
                                 f"{shape[1]}x{shape[0]}")
            img = image_files.fit(img, shape[0], config.resize)
        return np.asarray(img, np.uint8).reshape(shape)

    if is_image:
        def decode(proto) -> np.ndarray:
            with Image.open(io.BytesIO(proto.bytes_list.value[0])) as img:
                return fit(img)
        return decode, shape

    def decode_tensor(proto) -> np.ndarray:
        kind = proto.WhichOneof("kind")
        if kind == "bytes_list":  # Tensor(encoding='bytes' or 'zlib')
            value = proto.bytes_list.value[0]
        else:
            value = np.fromiter(getattr(proto, kind).value, np.int64)
        array = np.asarray(feature.decode_example_np(value)).astype(np.uint8, copy=False)
        array = array.reshape(array.shape if array.ndim == 3 else (*array.shape, 1))
        if array.shape == shape:
            return array
        return fit(Image.fromarray(array[..., 0] if array.shape[2] == 1 else array))

    return decode_tensor, shape


def open_split(config: ml_collections.ConfigDict, spec: str, field: str,
               shape: tuple[int, int, int] | None = None) -> Split:
    """Opens split `spec` (named by config.`field`) of config.tfds_name for random
    access. Every problem is one UserError line; nothing is read but the metadata."""
    folder, name = builder_dir(config)
    _check_file_format(folder)
    tfds = _tfds()
    builder = tfds.builder_from_directory(str(folder))
    info = builder.info
    splits = ", ".join(f"{s} ({info.splits[s].num_examples})" for s in info.splits)
    try:
        selected = info.splits[spec]
        if selected.num_examples > 0:
            records = builder.as_data_source(
                split=spec, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES,
                file_format=ARRAY_RECORD)
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"config.{field}: '{spec}' is not a split of {name} ({reason}; "
                        f"splits: {splits})") from None
    if selected.num_examples <= 0:
        raise UserError(f"config.{field}: '{spec}' selects no examples of {name} "
                        f"(splits: {splits})")
    instructions = selected.file_instructions
    features = info.features
    image_key, label_key = _keys(config, info, features)
    decode_image, shape = _image_decoder(config, info, features[image_key], image_key, shape)
    firsts = np.cumsum([0] + [i.take for i in instructions])[:-1]
    return Split(
        name=name, spec=spec, builder_dir=str(folder), records=records,
        image_key=image_key, label_key=label_key, id_key=config.id_column,
        shape=shape, class_names=_class_names(config, info, features[label_key], label_key),
        decode_image=decode_image,
        shard_names=[i.basename() for i in instructions],
        shard_rows=np.array([(f, i.skip, i.take) for f, i in zip(firsts, instructions,
                                                                   strict=True)], np.int64),
    )


def _labels_cache(split: Split, cache_dir) -> Any:
    """Where the labels and ids of a lazily read split are kept between runs: keyed by
    the dataset's folder, its dataset_info.json and shard sizes, the split and keys."""
    from etils import epath

    folder = epath.Path(split.builder_dir)
    digest = hashlib.sha256(repr((_CACHE_VERSION, split.builder_dir, split.spec,
                                  split.label_key, split.id_key)).encode())
    digest.update((folder / "dataset_info.json").read_bytes())
    for name in sorted(set(split.shard_names)):
        stat = (folder / name).stat()
        digest.update(f"{name}\0{stat.length}\0{stat.mtime}\n".encode())
    name = split.name.replace("/", "_").replace(":", "_")
    return Path(cache_dir) / f"tfds.{name}.{digest.hexdigest()[:16]}.npz"


def labels_and_ids(split: Split, cache_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """Every row's label and id, without decoding any image (cached in `cache_dir`)."""
    cache = _labels_cache(split, cache_dir) if cache_dir else None
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            return z["labels"], z["ids"]
    _, labels, ids = split.read_all(with_images=False)
    if cache is not None:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, labels=labels, ids=ids)

        files.atomic_write(cache, write)
    return labels, ids


def _checked_labels(split: Split, labels: np.ndarray, labelled: bool) -> np.ndarray | None:
    """int32 labels; -1 marks a record without one (TFDS's convention for unlabelled
    test splits). A training split must have every label in range; None when no row
    has a label."""
    n = len(split.class_names)
    bad = np.flatnonzero((labels >= n) | (labels < -1) | ((labels == -1) & labelled))
    if bad.size:
        row = int(bad[0])
        raise UserError(f"{split.record_name(row)}, feature '{split.label_key}': expected a "
                        f"label in 0..{n - 1}, got {labels[row]}")
    if not split.label_key or not (labels >= 0).any():
        return None
    return labels.astype(np.int32)


def to_dataset(split: Split, config: ml_collections.ConfigDict, labelled: bool, cache_dir=None):
    """The split as a `Dataset`: its images in one uint8 array when they fit in
    config.tfds_in_memory_mb, else `LazyImages` read by index."""
    from digitjax.data import Dataset

    if split.nbytes <= config.tfds_in_memory_mb * 2**20:
        decoded, labels, ids = split.read_all(with_images=True)
        where = "decoded in memory"
    else:
        labels, ids = labels_and_ids(split, cache_dir)
        decoded = LazyImages(split)
        where = (f"read by index: {split.nbytes / 2**20:.0f} MB decoded > "
                 f"config.tfds_in_memory_mb={config.tfds_in_memory_mb}")
    return Dataset(images=decoded, labels=_checked_labels(split, labels, labelled), ids=ids,
                   class_names=split.class_names, source=f"{split.source}, {where}",
                   writes_submission=False)


def load_train(config: ml_collections.ConfigDict, cache_dir=None):
    """The labelled split config.tfds_train_split. The test split, if any, is opened
    too, so a wrong split string stops the run before anything is trained."""
    split = open_split(config, config.tfds_train_split, "tfds_train_split")
    if config.tfds_test_split:
        open_split(config, config.tfds_test_split, "tfds_test_split", split.shape)
    return to_dataset(split, config, labelled=True, cache_dir=cache_dir)


def load_test(config: ml_collections.ConfigDict, shape: Sequence[int], cache_dir=None):
    """The split config.tfds_test_split, decoded to the trained input `shape`; its
    labels (when it has them) are kept, to report accuracy."""
    split = open_split(config, config.tfds_test_split, "tfds_test_split", tuple(shape))
    return to_dataset(split, config, labelled=False, cache_dir=cache_dir)
