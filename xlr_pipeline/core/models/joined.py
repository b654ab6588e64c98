"""Joined encoders: several encoders of one modality as one, their vectors side by side.

A score ensemble over encoder pairs (`core/training/head.py`'s `EnsembleHead`) reads every member's features from
one joined vector: model id `a+b` is model a's vector followed by model b's. So the chain's embedding assets, the
image index, the metrics and the search service handle an ensemble's encoders as they handle one encoder. Each
part keeps its own embedding cache (`JoinedEmbeddingCache`): vectors are shared with the grid, which embeds each
encoder alone, and a part's vector is the same bits whichever way it was computed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
from PIL import Image

from xlr_pipeline.core.models.embeddings import EmbeddingCache, vectors_of, with_vectors

JOIN = "+"


def joined_model_id(model_ids: Sequence[str]) -> str:
    """One id for `model_ids` side by side (a single id is itself)."""
    if not model_ids or any(not part or JOIN in part for part in model_ids):
        raise ValueError(f"cannot join model ids {list(model_ids)}: each must be non-empty and without {JOIN!r}")
    return JOIN.join(model_ids)


def model_parts(model_id: str) -> list[str]:
    """The encoders of a (possibly joined) model id, in vector order."""
    return model_id.split(JOIN)


def part_slices(dims: Sequence[int]) -> list[tuple[int, int]]:
    """Each part's columns `[start, stop)` in a joined vector."""
    ends = np.cumsum([0, *dims]).tolist()
    return list(zip(ends[:-1], ends[1:]))


class _Joined:
    """Encoders of one modality as one: the joined id, the summed width and the parts' engines."""

    def __init__(self, parts: Sequence):
        self.parts = list(parts)
        self.model_id = joined_model_id([part.model_id for part in self.parts])
        self.dim = sum(part.dim for part in self.parts)
        self.backend = JOIN.join(part.backend for part in self.parts)


class JoinedImageEncoder(_Joined):
    """Image encoders as one: `prepare` prepares the image for every part, vectors are the parts' side by side."""

    def prepare(self, image: Image.Image) -> tuple:
        return tuple(part.prepare(image) for part in self.parts)

    def encode_prepared(self, prepared: list) -> np.ndarray:
        return np.concatenate(
            [part.encode_prepared([item[i] for item in prepared]) for i, part in enumerate(self.parts)], axis=1
        )

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        return self.encode_prepared([self.prepare(image) for image in images])


class JoinedTextEncoder(_Joined):
    """Text encoders as one: vectors are the parts' side by side."""

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.concatenate([np.asarray(part.encode(texts), dtype=np.float32) for part in self.parts], axis=1)


class JoinedEmbeddingCache:
    """The parts' own caches as one: a joined vector is cached when every part's is; storing one stores each part."""

    def __init__(self, parts: Sequence[EmbeddingCache], dims: Sequence[int]):
        if len(parts) != len(dims):
            raise ValueError("a joined cache needs one dimension per part")
        self.parts = list(parts)
        self.slices = part_slices(dims)

    def lookup(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        found = [part.lookup(hashes) for part in self.parts]
        common = set(found[0]).intersection(*found[1:])
        return {digest: np.concatenate([part[digest] for part in found]) for digest in hashes if digest in common}

    def add(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        for part, (start, stop) in zip(self.parts, self.slices):
            part.add(hashes, vectors[:, start:stop])


def first_part(frame: pl.DataFrame, model_id: str, dim: int) -> pl.DataFrame:
    """An embedding table of joined vectors cut to its first part (`model_id`, `dim` values): the same bits as that
    model's own table. A table of `model_id` itself is returned as it is."""
    joined = frame["model_id"][0] if frame.height else model_id
    if joined == model_id:
        return frame
    if model_parts(joined)[0] != model_id:
        raise ValueError(f"the vectors are {joined!r}, whose first part is not {model_id!r}")
    return with_vectors(frame, vectors_of(frame)[:, :dim]).with_columns(pl.lit(model_id).alias("model_id"))
