"""COCO 2014 as an image source: file names, local folder layouts, the English training captions and their URLs.

XTD10's images are COCO 2014 files (`COCO_train2014_000000061844.jpg`, `COCO_val2014_…`); the paper trains on
English COCO captions. A user may already hold COCO in one of its usual layouts — `train2014/` + `val2014/`,
one flat folder of `COCO_*2014_*.jpg`, or 2017-style `train2017/`/`val2017/` with 12-digit names (2017 re-splits
the same images under the same numeric ids) — or have xlr download exactly the images it needs.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from xlr_pipeline.core.data.readers import CaptionFileError, Columns, ImageList, RejectedRow, read_coco_captions
from xlr_pipeline.core.storage.locations import atomic_path

DEFAULT_IMAGE_URL = "http://images.cocodataset.org"
DEFAULT_ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2014.zip"
TRAIN_CAPTIONS_MEMBER = "annotations/captions_train2014.json"
# Sub-folders searched under a local COCO root (besides the root itself).
LOCAL_LAYOUT_FOLDERS = ("train2014", "val2014", "train2017", "val2017", "images/train2014", "images/val2014")
COCO_NAME = re.compile(r"^(?:COCO_(?P<split>train|val)2014_)?(?P<number>\d{12})\.jpe?g$", re.IGNORECASE)
COCO_2014_ID = re.compile(r"^COCO_(?P<split>train|val)2014_(?P<number>\d{12})$")


class CocoError(ValueError):
    pass


@dataclass(frozen=True)
class CocoImage:
    """A COCO 2014 image by its XTD10/COCO 2014 id (`COCO_train2014_000000061844`)."""

    image_id: str
    split: str  # train2014 | val2014
    number: int

    @classmethod
    def parse(cls, image_id: str) -> CocoImage:
        match = COCO_2014_ID.match(image_id)
        if not match:
            raise CocoError(f"{image_id!r} is not a COCO 2014 image id (like COCO_train2014_000000061844)")
        return cls(image_id, f"{match['split']}2014", int(match["number"]))

    @staticmethod
    def is_coco(image_id: str) -> bool:
        return COCO_2014_ID.match(image_id) is not None

    @property
    def file_name(self) -> str:
        return f"{self.image_id}.jpg"

    def url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/{self.split}/{self.file_name}"

    def download_path(self, coco_root: Path) -> Path:
        """Where a download lands: COCO's own layout, so the folder doubles as a local COCO root."""
        return coco_root / self.split / self.file_name


def scan_local_coco(root: Path) -> dict[int, Path]:
    """COCO numeric image id → file, over the root and its usual sub-folders (2014 and 2017 names)."""
    found: dict[int, Path] = {}
    for folder in (root, *(root / sub for sub in LOCAL_LAYOUT_FOLDERS)):
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            for entry in entries:
                match = COCO_NAME.match(entry.name)
                if match and entry.is_file():
                    found.setdefault(int(match["number"]), Path(entry.path))
    return found


def coco_train_captions(path: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """English captions of a COCO captions file (official `captions_train2014.json` format).

    Returns (captions: image_id, caption with whitespace normalised, source_line = annotation number; rejected:
    source_line, reason, raw). Only train2014 images are kept (a val2014 entry is rejected by number), so test
    images never leak in.
    """
    rows, rejected = read_coco_captions(path, Columns(), ImageList(path, []))
    texts = [" ".join(row.caption.split()) for row in rows]
    rejected += [RejectedRow(row.line, "empty caption", row.caption) for row, text in zip(rows, texts) if not text]
    rows = [(row, text) for row, text in zip(rows, texts) if text]
    frame = pl.DataFrame(
        {
            "image_id": [row.image_id for row, _ in rows],
            "caption": [text for _, text in rows],
            "source_line": [row.line for row, _ in rows],
        },
        schema={"image_id": pl.String, "caption": pl.String, "source_line": pl.Int64},
    )
    wrong_split = frame.filter(~pl.col("image_id").str.starts_with("COCO_train2014_"))
    rejected_frame = pl.DataFrame(
        [{"source_line": row.line, "reason": row.reason, "raw": row.raw} for row in rejected]
        + [
            {"source_line": line, "reason": f"{image_id} is not a train2014 image", "raw": caption}
            for image_id, caption, line in wrong_split.iter_rows()
        ],
        schema={"source_line": pl.Int64, "reason": pl.String, "raw": pl.String},
    )
    if frame.height == wrong_split.height:
        raise CaptionFileError(path, "no captions of train2014 images")
    return frame.filter(pl.col("image_id").str.starts_with("COCO_train2014_")), rejected_frame


def select_train_images(candidates: list[str], excluded: set[str], count: int, seed: int = 0) -> list[str]:
    """`count` training images out of `candidates`, never one of `excluded` (the test images).

    Ranked by a seeded hash of the id: a larger count extends a smaller one (10K ⊂ 20K), and the choice does
    not depend on the order of the captions file.
    """
    allowed = sorted(
        set(candidates) - excluded, key=lambda image_id: hashlib.sha256(f"{seed}:{image_id}".encode()).hexdigest()
    )
    return sorted(allowed[:count])


def extract_member(archive: Path, member: str, target: Path) -> Path:
    """Extract one file of a zip archive atomically (COCO ships its captions inside the annotations zip)."""
    try:
        with zipfile.ZipFile(archive) as bundle, bundle.open(member) as source, atomic_path(target) as tmp:
            with open(tmp, "wb") as sink:
                while block := source.read(1 << 20):
                    sink.write(block)
    except KeyError as error:
        raise CocoError(f"{archive}: no member {member!r} in the archive") from error
    except zipfile.BadZipFile as error:
        raise CocoError(f"{archive}: not a valid zip archive ({error})") from error
    return target
