"""Where outputs live, atomic writes and content hashes.

Outputs live in a local folder or at any fsspec URL (`s3://bucket/prefix`, `gs://…`, `az://…`, `memory://…`),
handled as `UPath`. A local target is written to a temporary file beside it and renamed; a remote one is
written to a local temporary file and uploaded in one PUT, so readers see the old object or the new one.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import polars as pl

if TYPE_CHECKING:  # upath and fsspec load only when a URL is used: the CLI's quick paths stay quick
    from upath import UPath

# A local folder is a plain Path (everything local stays as it was); a URL is a UPath.
Location: TypeAlias = "Path | UPath"


class StorageError(ValueError):
    """A storage URL that cannot be used; the message says what to install or fix."""


def storage_location(url: str | Path) -> Location:
    """A folder or an fsspec URL as a Location; an unknown protocol or a missing driver fails here, naming it."""
    text = str(url)
    if "://" not in text:
        return Path(text).expanduser().resolve()
    from upath import UPath

    try:
        location = UPath(text)
        _ = location.fs  # imports the protocol's driver (s3fs, gcsfs, adlfs …) now, not in the middle of a run
    except (ImportError, ValueError) as error:
        raise StorageError(f"storage URL {text!r} cannot be used: {error}") from None
    if location.protocol in ("file", "local"):
        return Path(location.path).resolve()
    return location


def is_remote(path: Location) -> bool:
    return not isinstance(path, Path)


def fsspec_url(path: Location) -> str:
    """The URL under which DuckDB sees `path` once its filesystem is registered (`protocol://` + the fs's path)."""
    protocol = path.fs.protocol if isinstance(path.fs.protocol, str) else path.fs.protocol[0]
    return f"{protocol}://{path.path}"


@contextmanager
def atomic_path(target: Location) -> Iterator[Path]:
    """Yield a local temporary path; it replaces `target` only if the block succeeds."""
    if is_remote(target):
        with tempfile.TemporaryDirectory(prefix="xlr-upload-") as folder:
            tmp = Path(folder) / target.name
            yield tmp
            target.fs.put_file(str(tmp), target.path)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; an output is readable like any file the user writes
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """The process's umask, read where Linux shows it (setting it to read it would race other threads' writes)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration):
        return 0o022


def write_parquet_atomic(frame: pl.DataFrame, target: Location) -> None:
    with atomic_path(target) as tmp:
        frame.write_parquet(tmp)


def read_parquet(path: Location, columns: list[str] | None = None) -> pl.DataFrame:
    """A Parquet file from a local folder or from object storage (through the location's fsspec filesystem)."""
    if not is_remote(path):
        return pl.read_parquet(path, columns=columns)
    with path.open("rb") as handle:
        return pl.read_parquet(handle, columns=columns)


def write_with_atomic(target: Location, writer: Callable[[Path], object]) -> None:
    with atomic_path(target) as tmp:
        writer(tmp)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Location) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def combined_hash(parts: Iterable[str]) -> str:
    """Order-sensitive hash of many hashes (e.g. one per file) into one."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()
