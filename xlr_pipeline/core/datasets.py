"""Datasets: a small declared thing (`dataset.toml`) = images + one caption file per language + a split.

Two caption formats are read:
- ``lines``: line i of the file captions image i of the image list (XTD10's layout);
- ``tsv``: a header with ``image_id`` and ``caption`` (extra columns such as ``keywords`` are kept).
Validation problems either stop ingestion with a `CaptionFileError` naming the file and line (the file
cannot be trusted as a whole) or become quarantine rows naming the file and line (one bad row).
"""

from __future__ import annotations

import csv
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from xlr_pipeline.core.languages import UnknownLanguageError, normalize_language

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SPLITS = ("train", "test", "val")

CAPTION_SCHEMA = {
    "caption_id": pl.String,
    "image_id": pl.String,
    "caption": pl.String,
    "keywords": pl.String,
    "split": pl.String,
    "source_line": pl.Int64,
}
QUARANTINE_SCHEMA = {"source_file": pl.String, "source_line": pl.Int64, "reason": pl.String, "raw": pl.String}


class DatasetError(ValueError):
    """A dataset declaration or file that cannot be used; the message names the file (and line)."""


class CaptionFileError(DatasetError):
    def __init__(self, path: Path, message: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


@dataclass(frozen=True)
class ImageRecord:
    image_id: str
    file_name: str
    split: str


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    root: Path
    images: str
    image_list: str
    captions: str
    caption_format: str
    default_split: str = "test"
    train_language: str = "en"
    description: str = ""

    @classmethod
    def load(cls, root: Path) -> "DatasetSpec":
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
        if raw["caption_format"] not in ("lines", "tsv"):
            raise DatasetError(f"{spec_file}: caption_format must be 'lines' or 'tsv', not {raw['caption_format']!r}")
        if "{lang}" not in raw["captions"]:
            raise DatasetError(f"{spec_file}: the captions pattern must contain {{lang}}")
        known = {name for name in cls.__dataclass_fields__ if name != "root"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise DatasetError(f"{spec_file}: unknown keys {unknown}; known keys are {sorted(known)}")
        raw["train_language"] = normalize_language(raw.get("train_language", "en"), str(spec_file))
        return cls(root=root, **raw)

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
            "^" + re.escape(self.captions).replace(re.escape("{lang}"), "(?P<lang>[^/]+?)").replace(r"\*", "[^/]*") + "$"
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
        text = read_text_strict(path)
        if path.suffix == ".csv":
            rows = list(csv.DictReader(text.splitlines()))
            if not rows or "image_id" not in rows[0]:
                raise DatasetError(f"{path}: expected a CSV header with an image_id column")
            records = [
                ImageRecord(row["image_id"], row.get("file_name") or "", row.get("split") or self.default_split)
                for row in rows
            ]
        else:
            names = [line.strip() for line in text.splitlines() if line.strip()]
            records = [ImageRecord(Path(name).stem, name, self.default_split) for name in names]
        seen: dict[str, int] = {}
        for line, record in enumerate(records, start=2 if path.suffix == ".csv" else 1):
            if record.image_id in seen:
                raise DatasetError(f"{path}:{line}: image id {record.image_id!r} repeats line {seen[record.image_id]}")
            if record.split not in SPLITS:
                raise DatasetError(f"{path}:{line}: split {record.split!r} is not one of {SPLITS}")
            seen[record.image_id] = line
        if not records:
            raise DatasetError(f"{path}: the image list is empty")
        return records

    def image_paths(self, records: list[ImageRecord]) -> dict[str, Path]:
        """image id → file; raises naming the first missing files and how to get them."""
        if not self.images_dir.is_dir():
            raise DatasetError(
                f"{self.images_dir}: images folder not found for dataset {self.name!r}; "
                f"put the images named in {self.image_list_path.name} there"
            )
        by_stem: dict[str, Path] = {}
        for path in self.images_dir.iterdir():
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                by_stem.setdefault(path.stem, path)
        found: dict[str, Path] = {}
        missing: list[str] = []
        for record in records:
            named = self.images_dir / record.file_name if record.file_name else None
            path = named if named is not None and named.is_file() else by_stem.get(record.image_id)
            if path is None:
                missing.append(record.image_id)
            else:
                found[record.image_id] = path
        if missing:
            raise DatasetError(
                f"{self.images_dir}: {len(missing)} of {len(records)} images listed in {self.image_list_path} "
                f"are missing, e.g. {missing[:3]}"
            )
        return found


def read_text_strict(path: Path) -> str:
    """Decode UTF-8 (BOM allowed); a bad byte raises naming the file and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise CaptionFileError(
            path, f"not valid UTF-8 (byte {data[error.start]:#04x} at offset {error.start}); re-save it as UTF-8", line
        ) from error


def read_captions(
    spec: DatasetSpec, language: str, path: Path, records: list[ImageRecord]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read, validate and normalise one caption file → (captions, quarantine)."""
    text = read_text_strict(path)
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise CaptionFileError(path, "the caption file is empty")
    split_of = {record.image_id: record.split for record in records}
    rows: list[dict] = []
    quarantine: list[dict] = []

    def reject(line: int, reason: str, raw: str) -> None:
        quarantine.append({"source_file": str(path), "source_line": line, "reason": reason, "raw": raw})

    if spec.caption_format == "lines":
        if len(lines) != len(records):
            raise CaptionFileError(
                path, f"has {len(lines)} lines but the image list {spec.image_list_path} has {len(records)} images"
            )
        pairs = [(number, record.image_id, line, "") for number, (record, line) in enumerate(zip(records, lines), 1)]
    else:
        header = lines[0].split("\t")
        if "image_id" not in header or "caption" not in header:
            raise CaptionFileError(path, f"expected a tab-separated header with image_id and caption, got {header}", 1)
        id_col, caption_col = header.index("image_id"), header.index("caption")
        keyword_col = header.index("keywords") if "keywords" in header else None
        pairs = []
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != len(header):
                reject(number, f"expected {len(header)} tab-separated fields, found {len(fields)}", line)
                continue
            keywords = fields[keyword_col] if keyword_col is not None else ""
            pairs.append((number, fields[id_col].strip(), fields[caption_col], keywords))

    first_seen: dict[tuple[str, str], int] = {}
    for number, image_id, raw_caption, keywords in pairs:
        caption = " ".join(raw_caption.split())
        if image_id not in split_of:
            reject(number, f"unknown image id {image_id!r} (not in {spec.image_list_path.name})", raw_caption)
        elif not caption:
            reject(number, "empty caption", raw_caption)
        elif (image_id, caption) in first_seen:
            reject(number, f"duplicate of line {first_seen[(image_id, caption)]}", raw_caption)
        else:
            first_seen[(image_id, caption)] = number
            rows.append(
                {
                    "caption_id": f"{language}:{number}",
                    "image_id": image_id,
                    "caption": caption,
                    "keywords": " ".join(keywords.split()),
                    "split": split_of[image_id],
                    "source_line": number,
                }
            )
    if not rows:
        raise CaptionFileError(path, f"no valid caption rows ({len(quarantine)} quarantined)")
    return pl.DataFrame(rows, schema=CAPTION_SCHEMA), pl.DataFrame(quarantine, schema=QUARANTINE_SCHEMA)
