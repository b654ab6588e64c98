"""Readers of image lists and caption files, one function per format behind two small registries.

A new format is one function and one entry. Every reader returns rows that remember where they came from
(`line`: the 1-based line of a text file, or the 1-based row/record number of a Parquet or JSON file), so
validation errors and quarantine rows can name the file and line.

Image-list formats: ``lines`` (one file name per line; id = name without extension), ``csv`` and
``parquet`` (an image-id column, optional ``file_name`` and ``split`` columns), ``coco_json`` (the
``images`` table of a COCO annotation file; id = file name without extension).
Caption formats: ``lines`` (line i captions image i of the image list, XTD10's layout), ``tsv``, ``csv`` and
``parquet`` (named image-id, caption and optional keywords columns), ``coco_json`` (``annotations`` of a
COCO captions file, mapped to images through its ``images`` table).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import polars as pl

CaptionFormat = Literal["lines", "tsv", "csv", "parquet", "coco_json"]
ImageListFormat = Literal["lines", "csv", "parquet", "coco_json"]
CAPTION_FORMATS: tuple[str, ...] = get_args(CaptionFormat)
IMAGE_LIST_FORMATS: tuple[str, ...] = get_args(ImageListFormat)
IMAGE_LIST_FORMAT_BY_SUFFIX = {".txt": "lines", ".csv": "csv", ".parquet": "parquet", ".json": "coco_json"}


class DatasetError(ValueError):
    """A dataset declaration or file that cannot be used; the message names the file (and line)."""


class ImagesNotAvailable(DatasetError):
    """A dataset whose images are neither on disk nor allowed to download: it waits, it is not broken."""


class CaptionFileError(DatasetError):
    def __init__(self, path: Path, message: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


@dataclass(frozen=True)
class Columns:
    """Column names of tabular caption files and image lists (from `dataset.toml`)."""

    image_id: str = "image_id"
    caption: str = "caption"
    keywords: str = "keywords"


@dataclass(frozen=True)
class ListedImage:
    line: int
    image_id: str
    file_name: str
    split: str | None  # None: the dataset's default split


@dataclass(frozen=True)
class ImageList:
    """The dataset's image list in order: what a `lines` caption file is aligned to."""

    path: Path
    image_ids: list[str]


@dataclass(frozen=True)
class CaptionRow:
    line: int
    image_id: str
    caption: str
    keywords: str = ""


@dataclass(frozen=True)
class RejectedRow:
    line: int
    reason: str
    raw: str


def read_text_strict(path: Path) -> str:
    """Decode UTF-8 (BOM allowed); a bad byte raises naming the file and line."""
    data = path.read_bytes()
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise CaptionFileError(path, "is UTF-16 (it starts with a UTF-16 byte-order mark); re-save it as UTF-8", 1)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise CaptionFileError(
            path, f"not valid UTF-8 (byte {data[error.start]:#04x} at offset {error.start}); re-save it as UTF-8", line
        ) from error


def _read_parquet(path: Path, columns: list[str], optional: list[str]) -> pl.DataFrame:
    try:
        frame = pl.read_parquet(path)
    except Exception as error:  # polars raises several types for a file that is not Parquet
        raise CaptionFileError(path, f"not a readable Parquet file ({error})") from error
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise CaptionFileError(path, f"missing columns {missing}; it has {frame.columns}")
    kept = columns + [column for column in optional if column in frame.columns]
    return frame.select(pl.col(column).cast(pl.String) for column in kept)


def _read_coco(path: Path) -> dict:
    try:
        document = json.loads(read_text_strict(path))
    except json.JSONDecodeError as error:
        raise CaptionFileError(path, f"not valid JSON: {error.msg}", error.lineno) from error
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise CaptionFileError(path, "expected a COCO annotation file: an object with an 'images' list")
    return document


def _coco_image_names(path: Path, document: dict) -> dict[str, str]:
    """COCO image id (as text) → file name, from the file's `images` table."""
    names = {}
    for number, image in enumerate(document["images"], start=1):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise CaptionFileError(path, f"images[{number - 1}] needs 'id' and 'file_name'", number)
        names[str(image["id"])] = str(image["file_name"])
    return names


def _csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(first line of the record, fields) per CSV record; a quoted field may span lines."""
    reader = csv.reader(io.StringIO(read_text_strict(path)))
    rows, start = [], 1
    try:
        for fields in reader:
            rows.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as error:
        raise CaptionFileError(path, f"not valid CSV: {error}", start) from error
    return rows


# --- image lists -------------------------------------------------------------------------------------


def _image_list_lines(path: Path, columns: Columns) -> list[ListedImage]:
    lines = read_text_strict(path).rstrip().splitlines()
    blank = next((number for number, name in enumerate(lines, start=1) if not name.strip()), None)
    if blank is not None:  # line-aligned caption files would silently pair the wrong images after it
        raise DatasetError(f"{path}:{blank}: blank line inside the image list; one file name per line")
    return [
        ListedImage(number, Path(name.strip()).stem, name.strip(), None) for number, name in enumerate(lines, start=1)
    ]


def _listed(number: int, row: dict, columns: Columns) -> ListedImage:
    return ListedImage(
        number, (row.get(columns.image_id) or "").strip(), row.get("file_name") or "", row.get("split") or None
    )


def _image_list_csv(path: Path, columns: Columns) -> list[ListedImage]:
    rows = _csv_rows(path)
    if not rows or columns.image_id not in rows[0][1]:
        raise DatasetError(f"{path}: expected a CSV header with an {columns.image_id} column")
    header = rows[0][1]
    return [_listed(number, dict(zip(header, fields)), columns) for number, fields in rows[1:] if any(fields)]


def _image_list_parquet(path: Path, columns: Columns) -> list[ListedImage]:
    frame = _read_parquet(path, [columns.image_id], ["file_name", "split"])
    return [_listed(number, row, columns) for number, row in enumerate(frame.iter_rows(named=True), start=1)]


def _image_list_coco(path: Path, columns: Columns) -> list[ListedImage]:
    names = _coco_image_names(path, _read_coco(path))
    return [ListedImage(number, Path(name).stem, name, None) for number, name in enumerate(names.values(), start=1)]


IMAGE_LIST_READERS: dict[str, Callable[[Path, Columns], list[ListedImage]]] = {
    "lines": _image_list_lines,
    "csv": _image_list_csv,
    "parquet": _image_list_parquet,
    "coco_json": _image_list_coco,
}


# --- caption files -----------------------------------------------------------------------------------
# Each reader gets the dataset's image list (only `lines` needs it: line i captions image i).


def _captions_lines(path: Path, columns: Columns, images: ImageList) -> tuple[list[CaptionRow], list[RejectedRow]]:
    lines = read_text_strict(path).splitlines()
    if len(lines) != len(images.image_ids):
        raise CaptionFileError(
            path, f"has {len(lines)} lines but the image list {images.path} has {len(images.image_ids)} images"
        )
    return [
        CaptionRow(number, image_id, line) for number, (image_id, line) in enumerate(zip(images.image_ids, lines), 1)
    ], []


def _delimited(
    path: Path, columns: Columns, rows: list[tuple[int, list[str]]], what: str
) -> tuple[list[CaptionRow], list[RejectedRow]]:
    """Rows of a delimited file (header first) → caption rows; a row with the wrong field count is rejected."""
    header_line, header = rows[0]
    if columns.image_id not in header or columns.caption not in header:
        raise CaptionFileError(
            path, f"expected a {what} header with {columns.image_id} and {columns.caption}, got {header}", header_line
        )
    id_col, caption_col = header.index(columns.image_id), header.index(columns.caption)
    keyword_col = header.index(columns.keywords) if columns.keywords in header else None
    kept, rejected = [], []
    last = max((number for number, fields in rows if any(field.strip() for field in fields)), default=0)
    for number, fields in rows[1:]:
        if not any(field.strip() for field in fields):
            if number < last:  # blank lines at the very end are only trailing newlines
                rejected.append(RejectedRow(number, "blank line", ""))
            continue
        if len(fields) != len(header):
            rejected.append(
                RejectedRow(number, f"expected {len(header)} {what} fields, found {len(fields)}", "\t".join(fields))
            )
            continue
        keywords = fields[keyword_col] if keyword_col is not None else ""
        kept.append(CaptionRow(number, fields[id_col].strip(), fields[caption_col], keywords))
    return kept, rejected


def _captions_tsv(path: Path, columns: Columns, images: ImageList) -> tuple[list[CaptionRow], list[RejectedRow]]:
    lines = read_text_strict(path).splitlines()
    return _delimited(
        path, columns, [(number, line.split("\t")) for number, line in enumerate(lines, 1)], "tab-separated"
    )


def _captions_csv(path: Path, columns: Columns, images: ImageList) -> tuple[list[CaptionRow], list[RejectedRow]]:
    return _delimited(path, columns, _csv_rows(path), "comma-separated")


def _captions_parquet(path: Path, columns: Columns, images: ImageList) -> tuple[list[CaptionRow], list[RejectedRow]]:
    frame = _read_parquet(path, [columns.image_id, columns.caption], [columns.keywords])
    return [
        CaptionRow(
            number, (row[columns.image_id] or "").strip(), row[columns.caption] or "", row.get(columns.keywords) or ""
        )
        for number, row in enumerate(frame.iter_rows(named=True), start=1)
    ], []


def read_coco_captions(path: Path, columns: Columns, images: ImageList) -> tuple[list[CaptionRow], list[RejectedRow]]:
    document = _read_coco(path)
    names = _coco_image_names(path, document)
    annotations = document.get("annotations")
    if not isinstance(annotations, list):
        raise CaptionFileError(path, "expected a COCO captions file: an object with an 'annotations' list")
    kept, rejected = [], []
    for number, annotation in enumerate(annotations, start=1):
        raw = json.dumps(annotation, ensure_ascii=False)
        if (
            not isinstance(annotation, dict)
            or "image_id" not in annotation
            or not isinstance(annotation.get("caption"), str)
        ):
            rejected.append(RejectedRow(number, "annotation needs 'image_id' and a text 'caption'", raw))
        elif str(annotation["image_id"]) not in names:
            rejected.append(
                RejectedRow(number, f"image_id {annotation['image_id']!r} is not in the file's images table", raw)
            )
        else:
            kept.append(CaptionRow(number, Path(names[str(annotation["image_id"])]).stem, annotation["caption"]))
    return kept, rejected


CAPTION_READERS: dict[str, Callable[[Path, Columns, ImageList], tuple[list[CaptionRow], list[RejectedRow]]]] = {
    "lines": _captions_lines,
    "tsv": _captions_tsv,
    "csv": _captions_csv,
    "parquet": _captions_parquet,
    "coco_json": read_coco_captions,
}
