"""Image-file sources: class folders, a labels CSV beside an image folder, and a
folder of unlabelled images to predict.

Files are decoded once with Pillow, in parallel, to `image_size` x `image_size` x
`channels` uint8, and cached as a memory-mappable .npy keyed by the file list
(paths, sizes, mtimes) and the decode settings: later epochs and later runs
never decode again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from digitjax import files
from digitjax.errors import UserError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
RESIZE_POLICIES = ("resize", "center_crop")
_CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    image_size: int  # output height = width
    channels: int  # 1 grayscale, 3 RGB
    resize: str  # "resize" (stretch) or "center_crop" (shorter side, then centre crop)
    skip_bad_files: bool  # skip unreadable files (counted) instead of failing
    workers: int  # decoding threads


def is_image(path: Path) -> bool:
    return path.suffix.lower() in EXTENSIONS and not path.name.startswith(".")


def list_class_folders(root: Path, skip_bad_files: bool = False,
                       log=print) -> tuple[list[Path], list[int], list[str]]:
    """Files of root/<class>/*: class names sorted give the label ids. Files with
    other extensions are ignored (as Keras does)."""
    if not root.is_dir():
        raise UserError(f"config.data_dir: no such folder '{root}'")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{root}: no class folders (expected {root}/<class>/<image files>)")
    found = {c: sorted(p for p in (root / c).iterdir() if p.is_file() and is_image(p))
             for c in classes}
    empty = [c for c in classes if not found[c]]
    if empty and not skip_bad_files:
        raise UserError(f"{root / empty[0]}: empty class folder (expected image files "
                        f"{', '.join(EXTENSIONS)}; or set config.skip_bad_files=True)")
    if empty:
        log(f"skipped {len(empty)} empty class folders (config.skip_bad_files): {empty}")
    classes = [c for c in classes if found[c]]
    paths, labels = [], []
    for label, name in enumerate(classes):
        paths += found[name]
        labels += [label] * len(found[name])
    return paths, labels, classes


def list_labels_csv(labels_file: Path, image_dir: Path, id_column: str, label_column: str,
                    skip_bad_files: bool) -> tuple[list[Path], list[int], list[str], int]:
    """(paths, labels, class names, skipped) from a CSV of id/filename and label.

    Ids may carry their extension or not; labels may be strings. Class names are
    the sorted distinct labels (numerically when all are integers).
    """
    if not labels_file.is_file():
        raise UserError(f"{labels_file}: no such file (set config.labels_file)")
    if not image_dir.is_dir():
        raise UserError(f"config.image_dir: no such folder '{image_dir}'")
    try:
        table = pd.read_csv(labels_file, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{labels_file}: not a readable CSV ({str(e).strip()})") from None
    for column, field in ((id_column, "id_column"), (label_column, "label_column")):
        if column not in table.columns:
            raise UserError(f"{labels_file}: no column '{column}' (set config.{field}; "
                            f"columns are {', '.join(table.columns)})")
    on_disk = {p.name: p for p in image_dir.iterdir() if p.is_file() and is_image(p)}
    by_stem = {p.stem: p for p in on_disk.values()}
    paths, names, skipped, used = [], [], 0, {}
    for row, (ident, label) in enumerate(zip(table[id_column], table[label_column],
                                             strict=True)):
        if not label.strip():
            raise UserError(f"{labels_file}, line {row + 2}, column '{label_column}': "
                            "expected a label, got an empty cell")
        path = on_disk.get(ident) or by_stem.get(ident)
        if path is None:
            if skip_bad_files:
                skipped += 1
                continue
            raise UserError(f"{labels_file}, line {row + 2}: no image '{ident}' in {image_dir} "
                            "(or set config.skip_bad_files=True)")
        if path.name in used:
            raise UserError(f"{labels_file}, line {row + 2}: image '{ident}' is listed again "
                            f"(first on line {used[path.name]}); expected one label per image")
        paths.append(path)
        names.append(label)
        used[path.name] = row + 2
    unlabelled = sorted(set(on_disk) - used.keys())
    if unlabelled and not skip_bad_files:
        raise UserError(f"{image_dir / unlabelled[0]}: has no label in {labels_file} "
                        f"({len(unlabelled)} such files; or set config.skip_bad_files=True)")
    skipped += len(unlabelled)
    classes = sorted(set(names), key=lambda c: (0, int(c), "") if c.isdigit() else (1, 0, c))
    index = {c: i for i, c in enumerate(classes)}
    return paths, [index[n] for n in names], classes, skipped


def need_two_classes(classes: list[str], where: Path) -> None:
    """Training needs two classes at least (evaluating images of one class is fine)."""
    if len(classes) < 2:
        raise UserError(f"{where}: expected images of at least 2 classes to classify, found "
                        f"{len(classes)} ({', '.join(map(repr, classes))})")


def list_unlabelled(folder: Path) -> list[Path]:
    """Every image file under `folder` (recursively), sorted."""
    found = sorted(p for p in folder.rglob("*") if p.is_file() and is_image(p))
    if not found:
        raise UserError(f"{folder}: no image files (expected {', '.join(EXTENSIONS)})")
    return found


def decode(path: Path, settings: DecodeSettings) -> np.ndarray:
    """One file -> (size, size, channels) uint8. Raises UserError naming the file."""
    try:
        with Image.open(path) as img:
            img.seek(0)  # first frame of a GIF/TIFF
            img = ImageOps.exif_transpose(img)  # photos stored sideways
            img = convert_mode(img, settings.channels)
            img = fit(img, settings.image_size, settings.resize)
            array = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{path}: not a readable image ({e})") from None
    return array.reshape(settings.image_size, settings.image_size, settings.channels)


def convert_mode(img: Image.Image, channels: int) -> Image.Image:
    """Any mode -> "L" or "RGB", explicitly: palette and alpha images via RGBA then
    dropping alpha (as Keras does), CMYK via Pillow's conversion, 16/32-bit
    grayscale scaled down rather than clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or wide.max() > 255 else 255.0
        img = Image.fromarray(np.clip(wide / top * 255.0, 0, 255).astype(np.uint8), "L")
    elif img.mode in ("P", "PA", "LA", "RGBA", "La", "RGBa"):
        img = img.convert("RGBA").convert("RGB")
    elif img.mode not in ("L", "RGB"):  # CMYK, YCbCr, 1, F, ...
        img = img.convert("RGB")
    return img.convert("L" if channels == 1 else "RGB")


def fit(img: Image.Image, size: int, policy: str) -> Image.Image:
    if img.size == (size, size):
        return img
    if policy == "center_crop":  # shorter side to `size`, then the centre
        w, h = img.size
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                         Image.Resampling.BILINEAR)
        left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
        return img.crop((left, top, left + size, top + size))
    return img.resize((size, size), Image.Resampling.BILINEAR)


def decode_all(paths: list[Path], settings: DecodeSettings, cache_dir: Path | None,
               log=print) -> tuple[np.ndarray, np.ndarray]:
    """(images, kept) for `paths`: uint8 (N_kept, H, W, C) and a boolean mask of the
    files that decoded. Uses the cache when it has this file list and settings."""
    cache = _cache_paths(paths, settings, cache_dir) if cache_dir else None
    if cache is not None and cache[0].is_file() and cache[1].is_file():
        kept = np.asarray(json.loads(cache[1].read_text())["kept"], bool)
        return np.load(cache[0], mmap_mode="r"), kept

    def one(path: Path):
        try:
            return decode(path, settings)
        except UserError:
            if settings.skip_bad_files:
                return None
            raise

    with ThreadPoolExecutor(max_workers=max(1, settings.workers)) as pool:
        decoded = list(pool.map(one, paths, chunksize=64))
    kept = np.array([d is not None for d in decoded], bool)
    if not kept.all():
        bad = [str(p) for p, k in zip(paths, kept, strict=True) if not k]
        log(f"skipped {len(bad)} unreadable image files (config.skip_bad_files): "
            f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    shape = (settings.image_size, settings.image_size, settings.channels)
    images = np.stack([d for d in decoded if d is not None]) if kept.any() \
        else np.zeros((0, *shape), np.uint8)
    if cache is not None:
        files.write_npy(cache[0], images)
        files.write_json(cache[1], {"kept": kept.tolist(), "count": len(paths)})
    return images, kept


def _cache_paths(paths: list[Path], settings: DecodeSettings, cache_dir: Path):
    digest = hashlib.sha256(repr((_CACHE_VERSION, dataclasses.astuple(settings)[:4])).encode())
    for p in paths:
        st = os.stat(p)
        digest.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    key = digest.hexdigest()[:20]
    return Path(cache_dir) / f"images.{key}.npy", Path(cache_dir) / f"images.{key}.json"
