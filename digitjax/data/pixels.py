"""Pixel-table source: Kaggle-style CSVs with one image per row.

`label,pixel0,...,pixel783` (train) or `pixel0,...` (test), optionally an id
column, plain or `.csv.gz`. Well-formed files take a vectorised numpy parser
(42,000 x 785 in well under a second); anything it cannot read goes through
pandas, whose only job is to find the first bad cell and name it. Every column
needs a unique, non-empty name in the header: pixel columns are matched by name
between the training file and the files predicted.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from digitjax import files
from digitjax.errors import UserError

_CACHE_VERSION = 2  # 2: the pixel column names are cached too
_NEWLINE, _CR, _ZERO = 10, 13, 48
_CHUNK_BYTES = 4 << 20
# Byte classes for the fast parser: 0 digit, 1 comma, 2 newline, 3 anything else.
_DIGIT_KIND, _NEWLINE_KIND, _OTHER = 0, 2, 3
_BYTE_KIND = np.full(256, _OTHER, np.uint8)
_BYTE_KIND[ord("0") : ord("9") + 1] = _DIGIT_KIND
_BYTE_KIND[ord(",")] = 1
_BYTE_KIND[_NEWLINE] = _NEWLINE_KIND


@dataclasses.dataclass(frozen=True)
class PixelTable:
    pixels: np.ndarray  # (N, P) uint8, pixel columns in file order
    labels: np.ndarray | None  # (N,) int64; None when the file has no label column
    ids: np.ndarray | None  # (N,) values of the id column; None when there is none
    path: str
    columns: tuple[str, ...] = ()  # the header names of the P pixel columns, in file order


def read_pixel_csv(
    path: str | os.PathLike,
    label_column: str = "label",
    id_column: str = "",
    cache_dir: str | os.PathLike | None = None,
) -> PixelTable:
    """Reads a pixel CSV; with `cache_dir`, a second call loads a saved uint8 copy.

    Every column other than the label and id columns is a pixel column, in order.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file (expected a pixel CSV such as train.csv)")
    cache = _cache_path(path, label_column, id_column, cache_dir) if cache_dir else None
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            return PixelTable(
                pixels=z["pixels"],
                labels=z["labels"] if z["has_labels"] else None,
                ids=z["ids"] if z["has_ids"] else None,
                path=str(path),
                columns=tuple(z["columns"].tolist()),
            )
    table = _parse(path, label_column, id_column)
    if cache is not None:
        _write_cache(cache, table)
    return table


def _cache_path(path: Path, label_column: str, id_column: str, cache_dir) -> Path:
    st = path.stat()
    key = repr((_CACHE_VERSION, str(path.resolve()), st.st_size, st.st_mtime_ns,
                label_column, id_column))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{path.name}.{digest}.npz"


def _write_cache(cache: Path, table: PixelTable) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                pixels=table.pixels,
                labels=table.labels if table.labels is not None else np.zeros(0, np.int64),
                ids=table.ids if table.ids is not None else np.zeros(0, np.int64),
                has_labels=table.labels is not None,
                has_ids=table.ids is not None,
                columns=np.array(table.columns, dtype=str),
            )

    files.atomic_write(cache, write)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot be read ({e})") from None


def _parse(path: Path, label_column: str, id_column: str) -> PixelTable:
    data = _read_bytes(path)
    if not data[:4096].strip() and not data.strip():
        raise UserError(f"{path}: the file is empty (expected a header line and pixel rows)")
    header_end = data.find(b"\n")
    header_end = len(data) if header_end < 0 else header_end
    try:
        header = data[:header_end].decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        raise UserError(f"{path}: line 1 is not a text header (is this a CSV file?)") from None
    columns = [c.strip().strip('"') for c in header.split(",")]
    _check_header(path, columns)
    end = len(data)
    while end > header_end and data[end - 1] in b"\r\n \t":  # trailing blank lines
        end -= 1
    body = np.frombuffer(data, np.uint8)[header_end + 1 : end]
    if not body.size or not data[header_end + 1 : header_end + 4097].strip():
        raise UserError(f"{path}: has a header but no data rows")

    special = [c for c in (label_column, id_column) if c and c in columns]
    pixel_idx = [i for i, c in enumerate(columns) if c not in special]
    if not pixel_idx:
        raise UserError(f"{path}: no pixel columns (header: {header[:80]})")

    special_idx = [columns.index(c) for c in special]
    parsed = _parse_in_chunks(body, len(columns), pixel_idx, special_idx)
    if parsed is None:
        return _parse_slow(path, data[:end], columns, pixel_idx, label_column, id_column)
    pixels, specials, too_big = parsed
    if too_big is not None:
        row, col, value = too_big
        raise UserError(f"{path}, line {row + 2}, column '{columns[pixel_idx[col]]}': "
                        f"expected a pixel value 0-255, got '{value}'")
    get = {c: specials[:, i] for i, c in enumerate(special)}
    return PixelTable(
        pixels=pixels,
        labels=get.get(label_column),
        ids=get.get(id_column) if id_column else None,
        path=str(path),
        columns=tuple(columns[i] for i in pixel_idx),
    )


def _check_header(path: Path, columns: list[str]) -> None:
    """Every column a unique, non-empty name: columns are found and matched by name."""
    seen: dict[str, int] = {}
    for i, name in enumerate(columns):
        where = f"{path}, line 1, column {i + 1}"
        if not name:
            hint = (" (a trailing comma?)" if i == len(columns) - 1 and i else
                    " (an index written by pandas' to_csv? write with index=False)" if i == 0
                    else "")
            raise UserError(f"{where}: empty column name{hint}; expected a name for every "
                            "column")
        if name in seen:
            hint = " (is the header line missing?)" if name.isdigit() else ""
            raise UserError(f"{where}: column name '{name}' repeats column {seen[name] + 1}; "
                            f"expected unique names{hint}")
        seen[name] = i


def _parse_in_chunks(body: np.ndarray, ncols: int, pixel_idx: list[int], special_idx: list[int]):
    """(uint8 pixels, int64 label/id columns, first pixel > 255 as (row, col, value)
    or None), or None when the fast parser cannot read the body.

    Row-aligned chunks of a few MB, parsed on two threads (numpy releases the GIL),
    each reduced to uint8 before joining: small temporaries stay in cache, and no
    full-size int table is ever built.
    """
    bounds, start = [], 0
    while start < body.size:
        end = min(start + _CHUNK_BYTES, body.size)
        newline = np.flatnonzero(body[end - 1 : end + 65536] == _NEWLINE)
        end = body.size if end == body.size or not newline.size else end + int(newline[0])
        bounds.append((start, end))
        start = end
    contiguous = pixel_idx == list(range(pixel_idx[0], pixel_idx[-1] + 1))
    pixel_cols = slice(pixel_idx[0], pixel_idx[-1] + 1) if contiguous else pixel_idx

    def parse(bound):
        values = _parse_uint_table(body[bound[0] : bound[1]], ncols)
        if values is None:
            return None
        pix = values[:, pixel_cols]
        big = np.argwhere(pix > 255)
        first_big = (int(big[0][0]), int(big[0][1]), int(pix[tuple(big[0])])) if big.size else None
        return pix.astype(np.uint8), values[:, special_idx].astype(np.int64), first_big, len(values)

    with ThreadPoolExecutor(max_workers=2) as pool:
        parts = list(pool.map(parse, bounds))
    if any(p is None for p in parts):
        return None
    too_big, offset = None, 0
    for _, _, big, n in parts:
        if big is not None and too_big is None:
            too_big = (big[0] + offset, big[1], big[2])
        offset += n
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            too_big)


def _parse_uint_table(body: np.ndarray, ncols: int) -> np.ndarray | None:
    """Rows of `ncols` non-negative integers (at most 9 digits) -> int32 (rows, ncols).

    Returns None for anything else: the slow path then finds and names the problem.
    """
    if body[-1] != _NEWLINE:  # only the last chunk lacks it
        body = np.concatenate([body, np.array([_NEWLINE], np.uint8)])
    kind = _BYTE_KIND[body]  # one pass classifies every byte
    if (kind == _OTHER).any():
        if (kind == _OTHER).sum() != (body == _CR).sum():
            return None
        body = body[body != _CR]
        kind = _BYTE_KIND[body]
    seps = np.flatnonzero(kind)
    if seps.size % ncols:
        return None
    lengths = np.diff(seps, prepend=-1) - 1
    if lengths.min() < 1 or lengths.max() > 9:
        return None
    is_newline = kind[seps] == _NEWLINE_KIND
    if not is_newline[ncols - 1 :: ncols].all() or is_newline.sum() != seps.size // ncols:
        return None
    values = body[seps - 1].astype(np.int32) - _ZERO
    for k in range(2, int(lengths.max()) + 1):  # one pass per digit position
        digit = body[seps - k].astype(np.int32) - _ZERO
        values += np.where(lengths >= k, digit, 0) * 10 ** (k - 1)
    return values.reshape(-1, ncols)


def _parse_slow(path, data, columns, pixel_idx, label_column, id_column) -> PixelTable:
    """pandas reader for files the fast path refuses: names the first bad cell, or
    reads the table when only the id column is non-numeric."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path}, line {line}: expected UTF-8 text, got the byte "
                        f"{data[e.start]:#04x}") from None
    reader = csv.reader(io.StringIO(text))
    try:
        for row in reader:
            if len(row) != len(columns):
                hint = (" (a trailing comma?)" if len(row) == len(columns) + 1 and not row[-1]
                        else " (an empty line)" if not row else "")
                raise UserError(f"{path}, line {reader.line_num}: expected {len(columns)} "
                                f"comma-separated values (as in the header), got "
                                f"{len(row)}{hint}")
    except csv.Error as e:
        raise UserError(f"{path}, line {reader.line_num}: malformed CSV ({e})") from None
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, index_col=False)
    except pd.errors.ParserError as e:
        raise UserError(f"{path}: malformed CSV ({str(e).strip()})") from None
    frame.columns = columns  # the names as the header check read them (stripped, unquoted)
    pixel_cols = [columns[i] for i in pixel_idx]
    numeric = {}
    for col in pixel_cols + ([label_column] if label_column in columns else []):
        text = frame[col].str.strip()
        nums = pd.to_numeric(text, errors="coerce")
        bad = nums.isna() | (nums % 1 != 0) | (nums < 0)
        if col != label_column:
            bad |= nums > 255
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            what = "a non-negative integer label" if col == label_column else "a pixel value 0-255"
            raw = text.iloc[row]
            got = f"'{raw}'" if raw else "an empty cell"
            raise UserError(f"{path}, line {row + 2}, column '{col}': expected {what}, got {got}")
        numeric[col] = nums.to_numpy()
    return PixelTable(
        pixels=np.stack([numeric[c] for c in pixel_cols], axis=1).astype(np.uint8),
        labels=numeric[label_column].astype(np.int64) if label_column in numeric else None,
        ids=frame[id_column].to_numpy(dtype=str) if id_column and id_column in columns else None,
        path=str(path),
        columns=tuple(pixel_cols),
    )
