"""A dataset's image set: which listed images are usable, where they are, their size and sha256.

Images are looked up in the dataset's own images folder, then (for COCO-sourced datasets such as XTD10) in a
local COCO folder in any usual layout, then in xlr's download folder; what is still missing is downloaded when
allowed. Every image is decoded once (cached by path, size and modification time in the previous image set).
An image that is missing or does not decode is a row with its status and reason — excluded downstream and
counted, never a crash of the run.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import polars as pl

from xlr_pipeline.core.data.coco import (
    LOCAL_LAYOUT_FOLDERS,
    TRAIN_CAPTIONS_MEMBER,
    CocoError,
    CocoImage,
    coco_train_captions,
    extract_member,
    scan_local_coco,
    select_train_images,
)
from xlr_pipeline.core.data.datasets import IMAGE_EXTENSIONS, DatasetSpec, ImageRecord
from xlr_pipeline.core.data.download import DownloadItem, DownloadPolicy, DownloadReport, Manifest, download_all
from xlr_pipeline.core.data.shards import shard_indices
from xlr_pipeline.core.models.encoders import ImageFileError, load_image
from xlr_pipeline.core.storage.locations import Location, combined_hash, read_parquet, sha256_file

IMAGE_SET_SCHEMA = {
    "image_id": pl.String,
    "file_name": pl.String,
    "split": pl.String,
    "path": pl.String,
    "bytes": pl.Int64,
    "mtime_ns": pl.Int64,
    "sha256": pl.String,
    "status": pl.String,  # ok | missing | undecodable
    "detail": pl.String,  # where it came from, or why it is unusable
}


@dataclass(frozen=True)
class CocoSource:
    """Where COCO 2014 images are found or fetched from."""

    local_dir: Path | None
    download_root: Path
    image_url: str
    download: bool
    policy: DownloadPolicy

    def folders(self) -> list[Path]:
        return [folder for folder in (self.local_dir, self.download_root) if folder is not None]


def check_image(path: Path) -> None:
    """Raises ValueError (`ImageFileError`) unless the file decodes completely."""
    load_image(path)


def _by_stem(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    if folder.is_dir():
        with os.scandir(folder) as entries:
            for entry in entries:
                if Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS and entry.is_file():
                    found.setdefault(Path(entry.name).stem, Path(entry.path))
    return found


def locate_images(records: list[ImageRecord], images_dir: Path, coco: CocoSource | None) -> dict[str, tuple[Path, str]]:
    """image id → (file, where it was found) for every listed image that is on disk."""
    own = _by_stem(images_dir)
    coco_files: dict[int, Path] = {}
    if coco is not None:
        for folder in coco.folders():
            for number, path in scan_local_coco(folder).items():
                coco_files.setdefault(number, path)
    found: dict[str, tuple[Path, str]] = {}
    for record in records:
        named = images_dir / record.file_name if record.file_name else None
        if named is not None and named.is_file():
            found[record.image_id] = (named, "dataset folder")
        elif record.image_id in own:
            found[record.image_id] = (own[record.image_id], "dataset folder")
        elif coco is not None and CocoImage.is_coco(record.image_id):
            path = coco_files.get(CocoImage.parse(record.image_id).number)
            if path is not None:
                found[record.image_id] = (path, "COCO folder")
    return found


def download_coco_images(
    image_ids: Iterable[str], coco: CocoSource, log: Callable[[str], None]
) -> tuple[dict[str, tuple[Path, str]], DownloadReport]:
    images = [CocoImage.parse(image_id) for image_id in image_ids]
    items = [
        DownloadItem(image.image_id, image.url(coco.image_url), image.download_path(coco.download_root), check_image)
        for image in images
    ]
    report = download_all(items, Manifest(coco.download_root), coco.policy, log)
    got = set(report.fetched) | set(report.already_there)
    return {item.key: (item.target, "downloaded") for item in items if item.key in got}, report


def stored_path(path: Path, data_dir: Path) -> str:
    """A file under the data dir is recorded relative to it, so a moved or copied data dir stays valid."""
    return path.relative_to(data_dir).as_posix() if path.is_relative_to(data_dir) else str(path)


def build_image_set(
    records: list[ImageRecord],
    located: dict[str, tuple[Path, str]],
    missing_reasons: dict[str, str],
    previous: pl.DataFrame | None,
    data_dir: Path,
) -> pl.DataFrame:
    """One row per listed image; hashes and decode results of unchanged files are taken from `previous`."""
    known = {}
    if previous is not None:
        for row in previous.filter(pl.col("status") != "missing").iter_rows(named=True):
            known[(row["path"], row["bytes"], row["mtime_ns"])] = row
    rows = []
    for record in records:
        row = {"image_id": record.image_id, "file_name": record.file_name, "split": record.split}
        if record.image_id not in located:
            rows.append(
                {
                    **row,
                    "path": None,
                    "bytes": None,
                    "mtime_ns": None,
                    "sha256": None,
                    "status": "missing",
                    "detail": missing_reasons.get(record.image_id, "not found"),
                }
            )
            continue
        path, origin = located[record.image_id]
        stat = path.stat()
        cached = known.get((stored_path(path, data_dir), stat.st_size, stat.st_mtime_ns))
        if cached is not None:
            rows.append(
                {**row, **{key: cached[key] for key in ("path", "bytes", "mtime_ns", "sha256", "status", "detail")}}
            )
            continue
        try:
            check_image(path)
            status, detail = "ok", origin
        except ImageFileError as error:
            status, detail = "undecodable", str(error)
        rows.append(
            {
                **row,
                "path": stored_path(path, data_dir),
                "bytes": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "sha256": sha256_file(path),
                "status": status,
                "detail": detail,
            }
        )
    return pl.DataFrame(rows, schema=IMAGE_SET_SCHEMA)


class ContentHashes:
    """SHA-256 of files, remembered by (path, size, modification time) in one SQLite file: a file is read again
    only when it changed, and a copied folder (new times, same bytes) costs one pass and then matches."""

    def __init__(self, path: Path):
        self.path = path

    def of(self, files: list[tuple[Path, os.stat_result]]) -> list[str]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path, timeout=120, isolation_level=None)) as connection:
            connection.execute(
                "CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT)"
            )
            known = {
                row[0]: row[1:]
                for row in connection.execute("SELECT path, size, mtime_ns, sha256 FROM hashes").fetchall()
            }
            digests, fresh = [], []
            for path, stat in files:
                size, mtime_ns, digest = known.get(str(path), (None, None, None))
                if (size, mtime_ns) != (stat.st_size, stat.st_mtime_ns):
                    digest = sha256_file(path)
                    fresh.append((str(path), stat.st_size, stat.st_mtime_ns, digest))
                digests.append(digest)
            if fresh:
                connection.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?)", fresh)
        return digests


def folders_fingerprint(folders: Iterable[Path], data_dir: Path, hashes: ContentHashes) -> str:
    """Names (relative to the data dir) and contents of the image files in the folders: a copied or moved data
    folder matches, a changed file does not."""
    files = []
    for folder in folders:
        for sub in (folder, *(folder / name for name in LOCAL_LAYOUT_FOLDERS)):
            if not sub.is_dir():
                continue
            with os.scandir(sub) as entries:
                for entry in entries:
                    if Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS and entry.is_file():
                        files.append((Path(entry.path), entry.stat()))
    digests = hashes.of(files)
    return combined_hash(
        sorted(f"{stored_path(path, data_dir)}:{digest}" for (path, _), digest in zip(files, digests, strict=True))
    )


@dataclass(frozen=True)
class ImageSet:
    """The `images` asset's table, as downstream assets read it."""

    frame: pl.DataFrame

    @classmethod
    def read(cls, path: Location) -> ImageSet:
        return cls(read_parquet(path))

    @property
    def usable(self) -> pl.DataFrame:
        return self.frame.filter(pl.col("status") == "ok")

    @property
    def unusable(self) -> pl.DataFrame:
        return self.frame.filter(pl.col("status") != "ok")

    def records(self) -> list[ImageRecord]:
        return [ImageRecord(i, f, s) for i, f, s in self.usable.select("image_id", "file_name", "split").iter_rows()]

    def paths(self, data_dir: Path) -> dict[str, Path]:
        return {image_id: data_dir / path for image_id, path in self.usable.select("image_id", "path").iter_rows()}

    def hashes(self) -> list[str]:
        return self.usable["sha256"].to_list()

    def usable_ids(self) -> set[str]:
        return set(self.usable["image_id"].to_list())

    def split(self, count: int) -> list[ImageSet]:
        """The listed images of each of `count` shards (`core/data/shards.py`), in this table's order."""
        if count == 1:
            return [self]
        shard = pl.Series("_shard", shard_indices(self.frame["image_id"].to_list(), count), dtype=pl.Int64)
        parts = self.frame.with_columns(shard).partition_by(
            "_shard", as_dict=True, include_key=False, maintain_order=True
        )
        return [ImageSet(parts.get((index,), self.frame.clear())) for index in range(count)]


def train_captions_file(coco: CocoSource, annotations_url: str, log: Callable[[str], None]) -> Path:
    """`captions_train2014.json`: from the local COCO folder, an earlier download, or downloaded now."""
    relative = Path(TRAIN_CAPTIONS_MEMBER)
    candidates = [folder / relative for folder in coco.folders()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if not coco.download:
        raise CocoError(
            f"COCO training captions not found at {' or '.join(map(str, candidates))}; put captions_train2014.json "
            "there, or allow downloads (coco_download / XLR_COCO_DOWNLOAD=1 / xlr run --download)"
        )
    name = Path(urlsplit(annotations_url).path).name or "annotations"
    archive = name.endswith(".zip")
    target = coco.download_root / ("downloads" if archive else "annotations") / (name if archive else relative.name)
    report = download_all(
        [DownloadItem("annotations", annotations_url, target)], Manifest(coco.download_root), coco.policy, log
    )
    if report.failed:
        raise CocoError(f"could not download the COCO captions: {report.failed['annotations']}")
    return extract_member(target, TRAIN_CAPTIONS_MEMBER, coco.download_root / relative) if archive else target


@dataclass(frozen=True)
class ResolvedImages:
    image_set: pl.DataFrame
    train_captions: pl.DataFrame | None  # COCO-sourced datasets: English captions of the chosen train images
    rejected_train_captions: pl.DataFrame | None
    requested_train_images: int
    downloads: DownloadReport | None


def resolve_images(
    spec: DatasetSpec,
    coco: CocoSource | None,
    train_images: int,
    annotations_url: str,
    previous: pl.DataFrame | None,
    data_dir: Path,
    log: Callable[[str], None],
) -> ResolvedImages:
    """The dataset's image set (listed images + COCO training images), downloading what is missing if allowed."""
    records = spec.image_records()
    train_captions = rejected = None
    if coco is not None and train_images:
        captions, rejected = coco_train_captions(train_captions_file(coco, annotations_url, log))
        chosen = select_train_images(
            captions["image_id"].unique().to_list(), {r.image_id for r in records}, train_images
        )
        train_captions = captions.filter(pl.col("image_id").is_in(chosen)).sort("image_id", "source_line")
        records = records + [ImageRecord(image_id, f"{image_id}.jpg", "train") for image_id in chosen]
    located = locate_images(records, spec.images_dir, coco)
    absent = [r.image_id for r in records if r.image_id not in located]
    reasons = {image_id: "not found locally" for image_id in absent}
    report = None
    if coco is not None and absent:
        fetchable = [image_id for image_id in absent if CocoImage.is_coco(image_id)]
        if coco.download:
            got, report = download_coco_images(fetchable, coco, log)
            located.update(got)
            reasons.update(report.failed)
        else:
            reasons.update({image_id: "not found locally; downloads are off (coco_download)" for image_id in fetchable})
    image_set = build_image_set(records, located, reasons, previous, data_dir)
    return ResolvedImages(image_set, train_captions, rejected, train_images, report)
