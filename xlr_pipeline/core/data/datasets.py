"""Datasets: a small declared thing (`dataset.toml`) = images + one caption file per language + a split.

Every folder with a `dataset.toml` directly under a data root (or a root that is itself such a folder) is
a dataset; its `name` is used everywhere (asset key prefix, outputs folder, DuckDB `dataset` column,
report path). Files are read by the format readers of `core/data/readers.py`. Validation problems either stop
ingestion with a `CaptionFileError` naming the file and line (the file cannot be trusted as a whole) or
become quarantine rows naming the file and line (one bad row).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import polars as pl

from xlr_pipeline.core.data.languages import UnknownLanguageError, normalize_language
from xlr_pipeline.core.data.readers import (
    CAPTION_FORMATS,
    CAPTION_READERS,
    IMAGE_LIST_FORMAT_BY_SUFFIX,
    IMAGE_LIST_FORMATS,
    IMAGE_LIST_READERS,
    CaptionFileError,
    Columns,
    DatasetError,
    ImageList,
    read_text_strict,
)
from xlr_pipeline.core.data.shards import MAX_SHARDS
from xlr_pipeline.core.training.defaults import DefaultsError, LaneDefaults

__all__ = [
    "CaptionFileError",
    "DatasetError",
    "DatasetSpec",
    "ImageRecord",
    "discover_datasets",
    "read_captions",
    "read_text_strict",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SPLITS = ("train", "test", "val")
IMAGE_SOURCES = ("", "coco2014")
# Longer captions are kept cut to this length and listed in the quarantine table (reason "truncated …").
MAX_CAPTION_CHARS = 1000
# A dataset name becomes an asset key prefix, a partition-set name and a folder name.
DATASET_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")

CAPTION_SCHEMA = {
    "caption_id": pl.String,
    "image_id": pl.String,
    "caption": pl.String,
    "keywords": pl.String,
    "split": pl.String,
    "source_line": pl.Int64,
}
QUARANTINE_SCHEMA = {"source_file": pl.String, "source_line": pl.Int64, "reason": pl.String, "raw": pl.String}


@dataclass(frozen=True)
class ImageRecord:
    image_id: str
    file_name: str
    split: str


def leaves_folder(relative: str) -> bool:
    """Whether a path a dataset declares escapes the folder it is relative to: absolute, or `..` past its top."""
    path = PurePosixPath(relative.replace("\\", "/"))
    if path.is_absolute() or PureWindowsPath(relative).drive:
        return True
    depth = 0
    for part in path.parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return True
    return False


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    root: Path
    images: str
    image_list: str
    captions: str
    caption_format: str
    image_list_format: str = ""  # empty: from the image list's extension
    image_id_column: str = "image_id"
    caption_column: str = "caption"
    keywords_column: str = "keywords"
    tags: str = ""  # optional tag vocabulary files, one tag per line, e.g. "tags/{lang}.txt"
    default_split: str = "test"
    train_language: str = "en"
    description: str = ""
    # "coco2014": the listed images are COCO 2014 files, found in a local COCO folder or downloaded.
    image_source: str = ""
    # With image_source = "coco2014": this many train2014 images (never a listed one) and their English
    # captions from captions_train2014.json join the training split; settings can change the number.
    coco_train_images: int = 0
    # Image embeddings are computed in this many shards (stable hash buckets of image ids), each its own
    # partition: a backfill or `xlr run --workers N` embeds them in parallel.
    image_shards: int = 1
    # Each language's captions are embedded in this many shards (stable hash buckets of caption ids), each its
    # own step of the language's run: an executor with several workers (multiprocess, Dask, Kubernetes) runs
    # them in parallel.
    caption_shards: int = 1
    # `[defaults]`: the encoders and head `xlr run` trains unless told otherwise, and the grid run that chose them.
    defaults: LaneDefaults = LaneDefaults()

    @classmethod
    def load(cls, root: Path) -> DatasetSpec:
        spec_file = root / "dataset.toml"
        if not spec_file.is_file():
            raise DatasetError(f"{spec_file}: no dataset declaration (dataset.toml) in {root}")
        try:
            raw = tomllib.loads(spec_file.read_text("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise DatasetError(f"{spec_file}: {error}") from error
        required = ("name", "images", "image_list", "captions", "caption_format")
        missing = [key for key in required if key not in raw]
        if missing:
            raise DatasetError(f"{spec_file}: missing keys {missing}")
        known = {name for name in cls.__dataclass_fields__ if name != "root"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise DatasetError(f"{spec_file}: unknown keys {unknown}; known keys are {sorted(known)}")
        if not isinstance(raw["name"], str) or not DATASET_NAME.match(raw["name"]):
            raise DatasetError(
                f"{spec_file}: name {raw['name']!r} must be lowercase letters, digits and underscores, "
                "starting with a letter (it names the asset group, outputs folder and DuckDB rows)"
            )
        if raw["caption_format"] not in CAPTION_FORMATS:
            raise DatasetError(
                f"{spec_file}: caption_format must be one of {list(CAPTION_FORMATS)}, not {raw['caption_format']!r}"
            )
        for key in ("images", "image_list", "captions", "tags"):
            if isinstance(raw.get(key), str) and leaves_folder(raw[key]):
                raise DatasetError(
                    f"{spec_file}: {key} = {raw[key]!r} leaves the dataset folder; give a path inside {root} "
                    "(put the files there, or a symlink to them)"
                )
        if "{lang}" not in raw["captions"]:
            raise DatasetError(f"{spec_file}: the captions pattern must contain {{lang}}")
        if raw.get("tags") and "{lang}" not in raw["tags"]:
            raise DatasetError(f"{spec_file}: the tags pattern must contain {{lang}}")
        list_format = raw.get("image_list_format") or IMAGE_LIST_FORMAT_BY_SUFFIX.get(
            Path(raw["image_list"]).suffix.lower()
        )
        if list_format not in IMAGE_LIST_FORMATS:
            raise DatasetError(
                f"{spec_file}: image_list_format must be one of {list(IMAGE_LIST_FORMATS)} "
                f"(or inferred from .txt/.csv/.parquet/.json), not {list_format!r}"
            )
        raw["image_list_format"] = list_format
        if raw.get("default_split", "test") not in SPLITS:
            raise DatasetError(f"{spec_file}: default_split must be one of {SPLITS}")
        raw["train_language"] = normalize_language(raw.get("train_language", "en"), str(spec_file))
        if raw.get("image_source", "") not in IMAGE_SOURCES:
            raise DatasetError(f"{spec_file}: image_source must be one of {IMAGE_SOURCES}, not {raw['image_source']!r}")
        train_images = raw.get("coco_train_images", 0)
        if not isinstance(train_images, int) or train_images < 0:
            raise DatasetError(f"{spec_file}: coco_train_images must be a whole number ≥ 0, not {train_images!r}")
        if train_images and raw.get("image_source") != "coco2014":
            raise DatasetError(f'{spec_file}: coco_train_images needs image_source = "coco2014"')
        for field in ("image_shards", "caption_shards"):
            shards = raw.get(field, 1)
            if not isinstance(shards, int) or isinstance(shards, bool) or not 1 <= shards <= MAX_SHARDS:
                raise DatasetError(
                    f"{spec_file}: {field} must be a whole number from 1 to {MAX_SHARDS}, not {shards!r}"
                )
        if not isinstance(raw.get("defaults", {}), dict):
            raise DatasetError(f"{spec_file}: defaults must be a table ([defaults])")
        try:
            raw["defaults"] = LaneDefaults.from_table(raw.get("defaults", {}))
        except DefaultsError as error:
            raise DatasetError(f"{spec_file}: {error}") from None
        return cls(root=root, **raw)

    @property
    def coco_sourced(self) -> bool:
        return self.image_source == "coco2014"

    def tag_file(self, language: str) -> Path | None:
        """The declared tag vocabulary file of a language, if the dataset declares tag files and it exists."""
        path = self.root / self.tags.replace("{lang}", language) if self.tags else None
        return path if path is not None and path.is_file() else None

    @property
    def columns(self) -> Columns:
        return Columns(self.image_id_column, self.caption_column, self.keywords_column)

    @property
    def images_dir(self) -> Path:
        return self.root / self.images

    @property
    def image_list_path(self) -> Path:
        return self.root / self.image_list

    def caption_files(self) -> dict[str, Path]:
        """Language (ISO 639-1) → caption file, discovered from the `captions` pattern."""
        files, problems = self.scan_caption_files()
        if problems:
            raise DatasetError("; ".join(problems))
        return files

    def scan_caption_files(self) -> tuple[dict[str, Path], list[str]]:
        """Like `caption_files` but returns the problems (unknown codes, two files for one language)."""
        pattern = re.compile(
            "^"
            + re.escape(self.captions).replace(re.escape("{lang}"), "(?P<lang>[^/]+?)").replace(r"\*", "[^/]*")
            + "$"
        )
        files: dict[str, Path] = {}
        problems: list[str] = []
        for path in sorted(self.root.glob(self.captions.replace("{lang}", "*"))):
            match = pattern.match(path.relative_to(self.root).as_posix())
            if not match or not path.is_file():
                continue
            try:
                language = normalize_language(match["lang"], str(path))
            except UnknownLanguageError as error:
                problems.append(str(error))
                continue
            if language in files:
                problems.append(f"{path}: language {language!r} already comes from {files[language]}")
                continue
            files[language] = path
        return files, problems

    def caption_file(self, language: str) -> Path:
        files = self.caption_files()
        if language not in files:
            raise DatasetError(
                f"dataset {self.name!r} has no caption file for language {language!r} "
                f"(pattern {self.root / self.captions}); found: {sorted(files)}"
            )
        return files[language]

    def image_records(self) -> list[ImageRecord]:
        path = self.image_list_path
        if not path.is_file():
            raise DatasetError(f"{path}: image list not found")
        listed = IMAGE_LIST_READERS[self.image_list_format](path, self.columns)
        seen: dict[str, int] = {}
        records = []
        for item in listed:
            split = item.split or self.default_split
            if not item.image_id:
                raise DatasetError(f"{path}:{item.line}: empty image id")
            if item.image_id in seen:
                raise DatasetError(f"{path}:{item.line}: image id {item.image_id!r} repeats line {seen[item.image_id]}")
            if split not in SPLITS:
                raise DatasetError(f"{path}:{item.line}: split {split!r} is not one of {SPLITS}")
            if item.file_name and leaves_folder(item.file_name):
                raise DatasetError(
                    f"{path}:{item.line}: file name {item.file_name!r} leaves the images folder; list files inside it"
                )
            seen[item.image_id] = item.line
            records.append(ImageRecord(item.image_id, item.file_name, split))
        if not records:
            raise DatasetError(f"{path}: the image list is empty")
        return records


def read_captions(
    spec: DatasetSpec, language: str, path: Path, records: list[ImageRecord]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read (with the dataset's caption reader), validate and normalise one caption file → (captions, quarantine)."""
    if spec.caption_format != "parquet" and not read_text_strict(path).strip():
        raise CaptionFileError(path, "the caption file is empty")
    image_list = ImageList(spec.image_list_path, [record.image_id for record in records])
    rows, rejected = CAPTION_READERS[spec.caption_format](path, spec.columns, image_list)
    split_of = {record.image_id: record.split for record in records}
    quarantine = [
        {"source_file": str(path), "source_line": row.line, "reason": row.reason, "raw": row.raw} for row in rejected
    ]

    def reject(line: int, reason: str, raw: str) -> None:
        quarantine.append({"source_file": str(path), "source_line": line, "reason": reason, "raw": raw})

    kept: list[dict] = []
    first_seen: dict[tuple[str, str], int] = {}
    for row in rows:
        caption = " ".join(row.caption.split())
        if row.image_id not in split_of:
            reject(row.line, f"unknown image id {row.image_id!r} (not in {spec.image_list_path.name})", row.caption)
        elif not caption:
            reject(row.line, "empty caption", row.caption)
        elif "\x00" in caption:  # a binary file read as text, or a broken export: never a word of a caption
            reject(row.line, "contains a NUL character", row.caption.replace("\x00", "\\0"))
        elif (row.image_id, caption) in first_seen:
            reject(row.line, f"duplicate of line {first_seen[(row.image_id, caption)]}", row.caption)
        else:
            if len(caption) > MAX_CAPTION_CHARS:
                reject(
                    row.line,
                    f"kept, truncated from {len(caption)} to {MAX_CAPTION_CHARS} characters",
                    row.caption[:200],
                )
                caption = caption[:MAX_CAPTION_CHARS]
            first_seen[(row.image_id, caption)] = row.line
            kept.append(
                {
                    "caption_id": f"{language}:{row.line}",
                    "image_id": row.image_id,
                    "caption": caption,
                    "keywords": " ".join(row.keywords.split()),
                    "split": split_of[row.image_id],
                    "source_line": row.line,
                }
            )
    if not kept:
        raise CaptionFileError(path, f"no valid caption rows ({len(quarantine)} quarantined)")
    quarantine.sort(key=lambda entry: entry["source_line"])
    return pl.DataFrame(kept, schema=CAPTION_SCHEMA), pl.DataFrame(quarantine, schema=QUARANTINE_SCHEMA)


def discover_datasets(roots: Iterable[Path], broken: dict[str, str] | None = None) -> list[DatasetSpec]:
    """Every dataset under the roots: a root's direct sub-folders with a `dataset.toml`, or the root itself.

    A broken declaration raises a `DatasetError` naming its file, unless `broken` is given: then its message is
    recorded there (by declaration file) and the other datasets are still found. Two datasets with one name
    always raise, naming both files.
    """
    specs: dict[str, DatasetSpec] = {}
    for root in roots:
        root = Path(root).expanduser().resolve()
        folders = [root] if (root / "dataset.toml").is_file() else sorted(p.parent for p in root.glob("*/dataset.toml"))
        for folder in folders:
            try:
                spec = DatasetSpec.load(folder)
            except DatasetError as error:
                if broken is None:
                    raise
                broken[str(folder / "dataset.toml")] = str(error)
                continue
            if spec.name in specs and specs[spec.name].root != spec.root:
                raise DatasetError(
                    f"{folder / 'dataset.toml'}: dataset name {spec.name!r} is already used by "
                    f"{specs[spec.name].root / 'dataset.toml'}; dataset names must be unique"
                )
            specs[spec.name] = spec
    return [specs[name] for name in sorted(specs)]
