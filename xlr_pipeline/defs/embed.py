import dagster as dg
import polars as pl

from xlr_pipeline.core.embeddings import ProgressCallback, embed_with_cache, vectors_of, with_vectors
from xlr_pipeline.core.encoders import ImageEncoder, load_image, load_image_encoder, load_text_encoder
from xlr_pipeline.core.image_sources import ImageSet
from xlr_pipeline.core.storage import combined_hash, sha256_text, write_parquet_atomic
from xlr_pipeline.core.datasets import ImageRecord
from xlr_pipeline.core.validation import duplicate_groups, norm_summary, vector_problems
from xlr_pipeline.defs.lane import Lane
from xlr_pipeline.defs.lineage import CURRENT_CONFIG, file_version, input_name, lineage_metadata
from xlr_pipeline.defs.metadata import PartitionOutcome, file_data_version, materialize_partitions, progress_logger
from xlr_pipeline.defs.resources import XlrSettings, clear_failures, require_file
from xlr_pipeline.defs.versions import CODE_VERSIONS


def _vector_check(asset: dg.AssetKey, vectors, dim: int, expected_rows: int) -> list[dg.AssetCheckResult]:
    problems = vector_problems(vectors, dim)
    return [
        dg.AssetCheckResult(
            asset_key=asset,
            check_name="vectors_valid",
            passed=not problems,
            metadata={"problems": "; ".join(problems) or "none", "dim": dim, **norm_summary(vectors)},
        ),
        dg.AssetCheckResult(
            asset_key=asset,
            check_name="row_count_matches_source",
            passed=len(vectors) == expected_rows,
            metadata={"rows": len(vectors), "expected": expected_rows},
        ),
    ]


def _vector_check_specs(asset: dg.AssetKey, source: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec("vectors_valid", asset=asset, description="Encoder dimension, finite values, non-zero norms"),
        dg.AssetCheckSpec("row_count_matches_source", asset=asset, description=f"One vector per {source}"),
    ]


def embed_images(
    settings: XlrSettings, image_set: ImageSet, encoder: ImageEncoder, progress: ProgressCallback | None = None
) -> tuple[pl.DataFrame, int]:
    """Every usable listed image's vector (`image_id`, `split`, `content_hash`, `vector`, `model_id`), through the
    embedding cache; also how many were encoded now."""
    records, paths, hashes = image_set.records(), image_set.paths(settings.root), image_set.hashes()
    vectors, encoded = embed_with_cache(
        [paths[record.image_id] for record in records],
        hashes,
        lambda batch: encoder.encode([load_image(path) for path in batch]),
        settings.embedding_cache(encoder.model_id),
        settings.image_batch_size,
        progress,
    )
    frame = pl.DataFrame({"image_id": [r.image_id for r in records], "split": [r.split for r in records], "content_hash": hashes})
    return with_vectors(frame, vectors).with_columns(pl.lit(encoder.model_id).alias("model_id")), encoded


def build_image_embeddings(lane: Lane, images: dg.AssetsDefinition) -> dg.AssetsDefinition:
    key = lane.key("image_embeddings")

    @dg.asset(
        key=key,
        deps=[images],
        group_name=lane.group,
        kinds={"pytorch", "parquet"},
        code_version=CODE_VERSIONS["image_embeddings"],
        check_specs=[
            *_vector_check_specs(key, "listed image"),
            dg.AssetCheckSpec("distinct_images", asset=key, description="No two listed ids are byte-identical files (warn)"),
        ],
    )
    def image_embeddings(context: dg.AssetExecutionContext, settings: XlrSettings) -> dg.MaterializeResult:
        """Frozen image-encoder features of every usable image of the `images` asset (train and test).

        Cached by (image content hash, model id): an image is never encoded twice by the same model.
        """
        spec = lane.spec
        outputs = lane.outputs(settings)
        path = outputs.image_embeddings_path
        with clear_failures():
            image_set = ImageSet.read(require_file(outputs.images_path, f"{lane.name}/images"))
            records, hashes = image_set.records(), image_set.hashes()
            encoder = load_image_encoder(settings.image_model)
            frame, encoded = embed_images(settings, image_set, encoder, progress_logger(context, "images"))
        vectors = vectors_of(frame)
        write_parquet_atomic(frame, path)
        return dg.MaterializeResult(
            data_version=file_data_version(path),
            metadata={
                "dataset": spec.name,
                "image_model": encoder.model_id,
                "dim": encoder.dim,
                "dagster/row_count": frame.height,
                "unusable_images_skipped": image_set.unusable.height,
                "encoded_now": encoded,
                "from_cache": frame.height - encoded,
                "images_hash": combined_hash(hashes),
                "path": dg.MetadataValue.path(str(path)),
                **lineage_metadata(
                    CURRENT_CONFIG["image_embeddings"](settings, lane, None, {}),
                    {"images": file_version(outputs.images_path)},
                    [path],
                    settings.root,
                ),
            },
            check_results=[
                *_vector_check(key, vectors, encoder.dim, len(records)),
                _distinct_images_check(records, hashes),
            ],
        )

    return image_embeddings


def _distinct_images_check(records: list[ImageRecord], hashes: list[str]) -> dg.AssetCheckResult:
    """Byte-identical images under different ids are reported (across train/test they leak the test set)."""
    groups = duplicate_groups([r.image_id for r in records], hashes)
    split_of = {r.image_id: r.split for r in records}
    across = [group for group in groups if len({split_of[i] for i in group}) > 1]
    return dg.AssetCheckResult(
        check_name="distinct_images",
        passed=not groups,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "duplicate_groups": len(groups),
            "groups_across_splits": len(across),
            "examples": "; ".join(" = ".join(group) for group in (across or groups)[:5]) or "none",
        },
    )


def build_text_embeddings(lane: Lane, captions: dg.AssetsDefinition) -> dg.AssetsDefinition:
    key = lane.key("text_embeddings")

    @dg.asset(
        key=key,
        partitions_def=lane.partitions,
        deps=[captions],
        group_name=lane.group,
        kinds={"pytorch", "parquet"},
        code_version=CODE_VERSIONS["text_embeddings"],
        backfill_policy=dg.BackfillPolicy.single_run(),
        check_specs=_vector_check_specs(key, "needed caption"),
    )
    def text_embeddings(context: dg.AssetExecutionContext, settings: XlrSettings) -> dg.MaterializeResult:
        """Frozen multilingual text-encoder vectors of each language's captions.

        Only what is used is encoded: test-split captions of every language, plus train-split captions of
        the dataset's training language. Cached by (caption hash, model id).
        """
        outputs = lane.outputs(settings)
        with clear_failures():
            encoder = load_text_encoder(settings.text_model)

        def one_language(language: str) -> PartitionOutcome:
            with clear_failures():
                frame = pl.read_parquet(require_file(outputs.captions_path(language), f"{lane.name}/captions[{language}]"))
                needed = frame.filter((pl.col("split") == "test") | (language == lane.train_language))
                texts = needed["caption"].to_list()
                hashes = [sha256_text(text) for text in texts]
                vectors, encoded = embed_with_cache(
                    texts,
                    hashes,
                    encoder.encode,
                    settings.embedding_cache(encoder.model_id),
                    settings.text_batch_size,
                    progress_logger(context, f"{language} captions"),
                )
            out = with_vectors(
                needed.select("caption_id", "image_id", "split").with_columns(pl.Series("content_hash", hashes)), vectors
            ).with_columns(pl.lit(encoder.model_id).alias("model_id"))
            path = outputs.text_embeddings_path(language)
            write_parquet_atomic(out, path)
            return PartitionOutcome(
                version=file_version(path),
                metadata={
                    "language": language,
                    "text_model": encoder.model_id,
                    "dim": encoder.dim,
                    "dagster/row_count": out.height,
                    "encoded_now": encoded,
                    "from_cache": out.height - encoded,
                    "path": dg.MetadataValue.path(str(path)),
                    **lineage_metadata(
                        CURRENT_CONFIG["text_embeddings"](settings, lane, language, {}),
                        {input_name("captions", language): file_version(outputs.captions_path(language))},
                        [path],
                        settings.root,
                    ),
                },
                checks=_vector_check(key, vectors, encoder.dim, needed.height),
            )

        return materialize_partitions(context, one_language)

    return text_embeddings
