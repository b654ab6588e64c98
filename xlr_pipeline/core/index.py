"""Persisting FAISS indexes atomically."""

from __future__ import annotations

from pathlib import Path

import faiss

from xlr_pipeline.core.storage import write_with_atomic


def save_index(index: faiss.Index, path: Path) -> None:
    write_with_atomic(path, lambda tmp: faiss.write_index(index, str(tmp)))


def load_index(path: Path) -> faiss.Index:
    return faiss.read_index(str(path))
