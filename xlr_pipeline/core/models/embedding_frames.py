"""Frames of vectors: how a dataset's images become one (through the embedding cache) and how captions pair
with their images for training."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from xlr_pipeline.core.data.image_sources import ImageSet
from xlr_pipeline.core.models.embeddings import EmbeddingCache, ProgressCallback, embed_with_cache, with_vectors
from xlr_pipeline.core.models.encoders import ImageEncoder, load_image
from xlr_pipeline.core.models.threads import limited_threads


def embed_images(
    image_set: ImageSet,
    encoder: ImageEncoder,
    cache: EmbeddingCache,
    root: Path,
    batch_size: int,
    decode_workers: int,
    threads: int,
    progress: ProgressCallback | None = None,
) -> tuple[pl.DataFrame, int]:
    """Every usable listed image's vector (`image_id`, `split`, `content_hash`, `vector`, `model_id`), through the
    embedding cache; also how many were encoded now. Images decode ahead on `decode_workers` threads; the encoder
    uses `threads`."""
    records, paths, hashes = image_set.records(), image_set.paths(root), image_set.hashes()
    with limited_threads(threads):
        vectors, encoded = embed_with_cache(
            [paths[record.image_id] for record in records],
            hashes,
            encoder.encode_prepared,
            cache,
            batch_size,
            progress,
            decode=lambda path: encoder.prepare(load_image(path)),
            decode_workers=decode_workers,
        )
    frame = pl.DataFrame(
        {"image_id": [r.image_id for r in records], "split": [r.split for r in records], "content_hash": hashes}
    )
    return with_vectors(frame, vectors).with_columns(pl.lit(encoder.model_id).alias("model_id")), encoded


def training_pairs(images: pl.DataFrame, texts: pl.DataFrame) -> pl.DataFrame:
    """Train-split captions joined to their image's features; one row per caption."""
    return texts.filter(pl.col("split") == "train").join(
        images.filter(pl.col("split") == "train").select("image_id", pl.col("vector").alias("image_vector")),
        on="image_id",
        how="inner",
    )


def with_keyword_pairs(pairs: pl.DataFrame, keywords: pl.DataFrame) -> pl.DataFrame:
    """`pairs` followed by one more pair per keyword text (`caption_id`, `vector`) of a caption in `pairs`, with
    that caption's image (the grid's `keywords` augmentation: the same rows in the same order)."""
    extra = keywords.select("caption_id", "vector").join(
        pairs.select("caption_id", "image_id", "image_vector"), on="caption_id", how="inner", maintain_order="left"
    )
    columns = ["caption_id", "image_id", "vector", "image_vector"]
    return pl.concat([pairs.select(columns), extra.select(columns)])
