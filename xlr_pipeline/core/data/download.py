"""Polite, resumable, verified HTTP downloads of many files (COCO images, the captions archive).

- bounded concurrency (a thread pool of `workers`), a User-Agent, retries with exponential backoff on
  timeouts, dropped connections, truncated bodies, 429 and 5xx (honouring `Retry-After`); 4xx is final;
- resume: bytes arrive in `<file>.part`; a retry or a later run asks for the rest with an HTTP Range;
- verification: the body length must match `Content-Length`, an optional check (e.g. the image decodes)
  must pass, and then the file is renamed into place (a reader never sees half a file);
- a manifest (`manifest.json` in the download root: relative path → size, sha256, url) written atomically;
  a file already in the manifest with its recorded size is not fetched again;
- a progress log line every `log_every` files.

A file that still fails after the retries is reported with its reason; it never aborts the others.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from xlr_pipeline.core.storage.locations import atomic_path, sha256_file

USER_AGENT = "xlr_pipeline (https://github.com/xlr-pipeline; research benchmark downloader)"
FINAL_STATUS = frozenset({400, 401, 403, 404, 410, 451})
MAX_RETRY_AFTER_S = 60.0


class DownloadError(RuntimeError):
    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class DownloadPolicy:
    workers: int = 4
    retries: int = 4
    backoff_s: float = 1.0
    timeout_s: float = 60.0
    log_every: int = 100

    def __post_init__(self) -> None:
        if self.workers < 1 or self.retries < 0 or self.backoff_s < 0 or self.timeout_s <= 0:
            raise ValueError(f"invalid download policy {self}: workers ≥ 1, retries ≥ 0, backoff ≥ 0, timeout > 0")


@dataclass(frozen=True)
class DownloadItem:
    key: str  # what the caller calls it (an image id)
    url: str
    target: Path
    check: Callable[[Path], None] | None = None  # raises ValueError when the downloaded file is unusable


@dataclass
class DownloadReport:
    fetched: list[str] = field(default_factory=list)
    already_there: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # key → last reason
    retries: int = 0
    bytes_fetched: int = 0


class Manifest:
    """Size and sha256 of every completed file under `root`, shared by threads, saved atomically."""

    def __init__(self, root: Path):
        self.root = root
        self.path = root / "manifest.json"
        self._lock = threading.Lock()
        try:
            self.entries: dict[str, dict] = json.loads(self.path.read_text("utf-8")) if self.path.is_file() else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.entries = {}  # a damaged manifest only costs re-verification, never a wrong file

    def relative(self, target: Path) -> str:
        return target.relative_to(self.root).as_posix() if target.is_relative_to(self.root) else str(target)

    def complete(self, target: Path) -> bool:
        entry = self.entries.get(self.relative(target))
        return entry is not None and target.is_file() and target.stat().st_size == entry["size"]

    def record(self, target: Path, url: str) -> dict:
        entry = {"size": target.stat().st_size, "sha256": sha256_file(target), "url": url}
        with self._lock:
            self.entries[self.relative(target)] = entry
        return entry

    def save(self) -> None:
        with self._lock, atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(self.entries, indent=0, sort_keys=True), "utf-8")


def _fetch_once(item: DownloadItem, policy: DownloadPolicy) -> int:
    """One attempt: continue `<target>.part` from where it stopped; returns the bytes received now."""
    part = item.target.with_name(item.target.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(item.url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=policy.timeout_s) as response:
            if response.status == 200 and offset:  # the server ignored the Range: start over
                offset = 0
            expected = response.headers.get("Content-Length")
            received = 0
            with open(part, "ab" if offset else "wb") as sink:
                while block := response.read1(1 << 16):  # read1: what arrived before a drop is kept for resuming
                    sink.write(block)
                    received += len(block)
    except urllib.error.HTTPError as error:
        if error.code == 416:  # the part is longer than the file: it cannot be trusted
            part.unlink(missing_ok=True)
            raise DownloadError("HTTP 416 on resume; starting over", retryable=True) from None
        retry_after = error.headers.get("Retry-After") if error.headers else None
        if retry_after and retry_after.isdigit():
            time.sleep(min(float(retry_after), MAX_RETRY_AFTER_S))
        raise DownloadError(f"HTTP {error.code} {error.reason}", retryable=error.code not in FINAL_STATUS) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or error
        raise DownloadError(f"{type(error).__name__}: {reason}", retryable=True) from None
    if expected is not None and received != int(expected):
        raise DownloadError(f"truncated: {received} of {expected} bytes", retryable=True)
    if item.check is not None:
        try:
            item.check(part)
        except ValueError as error:
            part.unlink()
            raise DownloadError(f"downloaded file unusable: {error}", retryable=True) from None
    with atomic_path(item.target) as tmp:
        part.replace(tmp)
    return received


def download_all(
    items: Sequence[DownloadItem],
    manifest: Manifest,
    policy: DownloadPolicy = DownloadPolicy(),
    log: Callable[[str], None] = print,
) -> DownloadReport:
    """Fetch every item not already complete; failures are collected, not raised."""
    report = DownloadReport()
    complete = {item.key for item in items if manifest.complete(item.target)}
    todo = [item for item in items if item.key not in complete]
    report.already_there = [item.key for item in items if item.key in complete]
    lock = threading.Lock()
    started = time.monotonic()

    def run(item: DownloadItem) -> None:
        reason = ""
        for attempt in range(policy.retries + 1):
            if attempt:
                with lock:
                    report.retries += 1
                time.sleep(policy.backoff_s * 2 ** (attempt - 1))
            try:
                received = _fetch_once(item, policy)
            except DownloadError as error:
                reason = str(error)
                if error.retryable:
                    continue
                break
            manifest.record(item.target, item.url)
            with lock:
                report.fetched.append(item.key)
                report.bytes_fetched += received
                done = len(report.fetched) + len(report.failed)
            if done % policy.log_every == 0:
                rate = report.bytes_fetched / max(time.monotonic() - started, 1e-9) / 1e6
                log(f"downloaded {done}/{len(todo)} files ({rate:.1f} MB/s, {report.retries} retries)")
                manifest.save()
            return
        with lock:
            report.failed[item.key] = f"{item.url}: {reason}"
        log(f"gave up on {item.key}: {item.url}: {reason}")

    if todo:
        log(f"downloading {len(todo)} files with {policy.workers} workers ({len(report.already_there)} already there)")
        with ThreadPoolExecutor(max_workers=policy.workers, thread_name_prefix="download") as pool:
            list(pool.map(run, todo))
        manifest.save()
        log(
            f"downloads done: {len(report.fetched)} fetched, {len(report.failed)} failed, {report.retries} retries, "
            f"{report.bytes_fetched / 1e6:.1f} MB in {time.monotonic() - started:.1f} s"
        )
    return report
