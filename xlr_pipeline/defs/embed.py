import dagster as dg
import numpy as np
import polars as pl

from xlr_pipeline.core.data.datasets import ImageRecord
from xlr_pipeline.core.data.image_sources import ImageSet
from xlr_pipeline.core.data.shards import parse_shard_key, shard_indices
from xlr_pipeline.core.data.shards import shard_keys as shard_keys_of
from xlr_pipeline.core.data.validation import duplicate_groups, norm_summary, vector_problems
from xlr_pipeline.core.models.embeddings import (
    ProgressCallback,
    ShardUnion,
    embed_with_cache,
    union_of_shards,
    vectors_of,
    with_vectors,
)
from xlr_pipeline.core.models.encoders import ImageEncoder, TextEncoder
from xlr_pipeline.core.models.threads import available_cores, limited_threads
from xlr_pipeline.core.storage.locations import combined_hash, read_parquet, sha256_text, write_parquet_atomic
from xlr_pipeline.defs.lane import AssetDeclaration, Lane
from xlr_pipeline.defs.lineage import (
    VERSION_KEY,
    file_version,
    image_model_config,
    input_name,
    lineage_metadata,
    text_model_config,
)
from xlr_pipeline.defs.metadata import PartitionOutcome, file_data_version, materialize_partitions, progress_logger
from xlr_pipeline.defs.resources import XlrSettings, clear_failures, require_file

IMAGE_EMBEDDING_SHARDS = AssetDeclaration(
    "image_embedding_shards", code_version="2", stage="run", config=image_model_config
)
IMAGE_EMBEDDINGS = AssetDeclaration("image_embeddings", code_version="4", stage="run", config=image_model_config)
TEXT_EMBEDDINGS = AssetDeclaration("text_embeddings", code_version="2", stage="run", config=text_model_config)


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


def build_image_embedding_shards(lane: Lane, images: dg.AssetsDefinition) -> dg.AssetsDefinition:
    key = lane.key(IMAGE_EMBEDDING_SHARDS.name)

    @dg.asset(
        **IMAGE_EMBEDDING_SHARDS.asset_args(lane),
        partitions_def=lane.shards,
        deps=[images],
        kinds={"pytorch", "parquet"},
        check_specs=_vector_check_specs(key, "usable image of the shard"),
        # One run per shard: a backfill's runs embed shards in parallel (as many as the run queue admits).
        backfill_policy=dg.BackfillPolicy.multi_run(1) if lane.shards else None,
    )
    def image_embedding_shards(context: dg.AssetExecutionContext, settings: XlrSettings) -> dg.MaterializeResult:
        """Frozen image-encoder features of one shard of the usable images (stable hash buckets of image ids,
        `image_shards` in dataset.toml). Cached by (image content hash, model id): an image is never encoded twice
        by the same model, whichever shard or process encodes it."""
        settings = lane.settings(settings)  # this dataset's encoders
        outputs = lane.outputs(settings)
        with clear_failures():
            shards = ImageSet.read(require_file(outputs.images_path, f"{lane.name}/images")).split(
                lane.spec.image_shards
            )
            encoder = settings.image_encoder()

        def one_shard(shard: str) -> PartitionOutcome:
            image_set = shards[parse_shard_key(shard)[0]]
            with clear_failures():
                if image_set.usable.is_empty():
                    frame, encoded = _empty_embeddings(encoder), 0
                else:
                    frame, encoded = settings.embed_images(
                        image_set, encoder, progress_logger(context, f"images of shard {shard}")
                    )
            path = outputs.image_embedding_shard_path(shard)
            write_parquet_atomic(frame, path)
            return PartitionOutcome(
                version=file_version(path),
                metadata={
                    "shard": shard,
                    "image_model": encoder.model_id,
                    "dagster/row_count": frame.height,
                    "encoded_now": encoded,
                    "from_cache": frame.height - encoded,
                    "step_threads": settings.step_threads or available_cores(),
                    "decode_workers": settings.decode_workers,
                    "path": dg.MetadataValue.path(str(path)),
                    **lineage_metadata(
                        IMAGE_EMBEDDING_SHARDS.config(settings, lane, shard, {}),
                        {"images": file_version(outputs.images_path)},
                        [path],
                        settings.root,
                    ),
                },
                checks=_vector_check(key, vectors_of(frame), encoder.dim, image_set.usable.height),
            )

        if lane.shards:
            return materialize_partitions(context, one_shard)
        (only,) = lane.shard_keys()
        outcome = one_shard(only)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(outcome.version), metadata=outcome.metadata, check_results=outcome.checks
        )

    return image_embedding_shards


def _empty_embeddings(encoder: ImageEncoder) -> pl.DataFrame:
    """A shard that holds no usable image (possible with many shards and few images)."""
    frame = pl.DataFrame(schema={"image_id": pl.String, "split": pl.String, "content_hash": pl.String})
    return with_vectors(frame, np.zeros((0, encoder.dim), dtype=np.float32)).with_columns(
        pl.lit(encoder.model_id).alias("model_id")
    )


def build_image_embeddings(lane: Lane, shards: dg.AssetsDefinition) -> dg.AssetsDefinition:
    key = lane.key(IMAGE_EMBEDDINGS.name)

    @dg.asset(
        **IMAGE_EMBEDDINGS.asset_args(lane),
        deps=[shards],
        kinds={"parquet"},
        check_specs=[
            *_vector_check_specs(key, "listed image"),
            dg.AssetCheckSpec(
                "distinct_images", asset=key, description="No two listed ids are byte-identical files (warn)"
            ),
        ],
    )
    def image_embeddings(context: dg.AssetExecutionContext, settings: XlrSettings) -> dg.MaterializeResult:
        """Every usable image's vector, in the `images` asset's order: the union of all image shards. What every
        downstream asset reads (one file, whatever the shard count)."""
        settings = lane.settings(settings)  # this dataset's encoders
        spec = lane.spec
        outputs = lane.outputs(settings)
        path = outputs.image_embeddings_path
        shard_keys = lane.shard_keys()
        with clear_failures():
            image_set = ImageSet.read(require_file(outputs.images_path, f"{lane.name}/images"))
            records, hashes = image_set.records(), image_set.hashes()
            shard_paths = {shard: outputs.image_embedding_shard_path(shard) for shard in shard_keys}
            for shard, shard_path in shard_paths.items():
                require_file(shard_path, f"{lane.name}/image_embedding_shards[{shard}]")
            wanted = image_set.usable.select("image_id", pl.col("sha256").alias("expected_hash"))
            frame = union_of_shards(wanted, list(shard_paths.values()), settings.image_model, IMAGE_SHARDS)
        vectors = vectors_of(frame)
        write_parquet_atomic(frame, path)
        model_id = frame["model_id"][0]
        return dg.MaterializeResult(
            data_version=file_data_version(path),
            metadata={
                "dataset": spec.name,
                "image_model": model_id,
                "dim": vectors.shape[1],
                "dagster/row_count": frame.height,
                "shards": len(shard_keys),
                "unusable_images_skipped": image_set.unusable.height,
                "images_hash": combined_hash(hashes),
                "path": dg.MetadataValue.path(str(path)),
                **lineage_metadata(
                    IMAGE_EMBEDDINGS.config(settings, lane, None, {}),
                    {
                        input_name("image_embedding_shards", shard if lane.shards else None): file_version(p)
                        for shard, p in shard_paths.items()
                    },
                    [path],
                    settings.root,
                ),
            },
            check_results=[
                *_vector_check(key, vectors, vectors.shape[1], len(records)),
                _distinct_images_check(records, hashes),
            ],
        )

    return image_embeddings


IMAGE_SHARDS = ShardUnion("image", "usable images", "materialize image_embedding_shards again")
CAPTION_SHARDS = ShardUnion("caption", "needed captions", "run text_embeddings again")


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


def _needed_captions(lane: Lane, settings: XlrSettings, language: str) -> pl.DataFrame:
    """What is encoded: test-split captions of every language, plus train-split captions of the training language."""
    path = require_file(lane.outputs(settings).captions_path(language), f"{lane.name}/captions[{language}]")
    frame = read_parquet(path)
    return frame.filter((pl.col("split") == "test") | (language == lane.train_language))


def _embed_captions(
    settings: XlrSettings, encoder: TextEncoder, captions: pl.DataFrame, progress: ProgressCallback | None
) -> tuple[pl.DataFrame, int]:
    """(`caption_id`, `image_id`, `split`, `content_hash`, vector, `model_id`) through the embedding cache; also
    how many were encoded now."""
    texts = captions["caption"].to_list()
    hashes = [sha256_text(text) for text in texts]
    if not texts:  # a caption shard may hold none (few captions, many shards)
        vectors, encoded = np.zeros((0, encoder.dim), dtype=np.float32), 0
    else:
        with limited_threads(settings.step_threads):
            vectors, encoded = embed_with_cache(
                texts, hashes, encoder.encode, settings.embedding_cache(encoder), settings.text_batch_size, progress
            )
    frame = captions.select("caption_id", "image_id", "split").with_columns(
        pl.Series("content_hash", hashes, dtype=pl.String)
    )
    frame = with_vectors(frame, vectors)
    return frame.with_columns(pl.lit(encoder.model_id).alias("model_id")), encoded


def _write_text_embeddings(
    lane: Lane,
    settings: XlrSettings,
    key: dg.AssetKey,
    language: str,
    frame: pl.DataFrame,
    encoder: TextEncoder,
    needed: pl.DataFrame,
    extra: dict,
) -> PartitionOutcome:
    """Write one language's table and describe it (metadata, lineage, checks against the encoder and the needed
    captions), however it was computed."""
    outputs = lane.outputs(settings)
    path = outputs.text_embeddings_path(language)
    write_parquet_atomic(frame, path)
    vectors = vectors_of(frame)
    return PartitionOutcome(
        version=file_version(path),
        metadata={
            "language": language,
            "text_model": encoder.model_id,
            "dim": encoder.dim,
            "dagster/row_count": frame.height,
            **extra,
            "path": dg.MetadataValue.path(str(path)),
            **lineage_metadata(
                TEXT_EMBEDDINGS.config(settings, lane, language, {}),
                {input_name("captions", language): file_version(outputs.captions_path(language))},
                [path],
                settings.root,
            ),
        },
        checks=_vector_check(key, vectors, encoder.dim, needed.height),
    )


def build_text_embeddings(lane: Lane, captions: dg.AssetsDefinition) -> dg.AssetsDefinition:
    """One step per language, or — with `caption_shards` > 1 — a language's captions in shards, each its own step."""
    if lane.spec.caption_shards > 1:
        return _build_sharded_text_embeddings(lane, captions)
    key = lane.key(TEXT_EMBEDDINGS.name)

    @dg.asset(
        **TEXT_EMBEDDINGS.asset_args(lane),
        partitions_def=lane.partitions,
        deps=[captions],
        kinds={"pytorch", "parquet"},
        backfill_policy=dg.BackfillPolicy.single_run(),
        check_specs=_vector_check_specs(key, "needed caption"),
    )
    def text_embeddings(context: dg.AssetExecutionContext, settings: XlrSettings) -> dg.MaterializeResult:
        """Frozen multilingual text-encoder vectors of each language's captions.

        Only what is used is encoded: test-split captions of every language, plus train-split captions of
        the dataset's training language. Cached by (caption hash, model id).
        """
        settings = lane.settings(settings)  # this dataset's encoders
        with clear_failures():
            encoder = settings.text_encoder()

        def one_language(language: str) -> PartitionOutcome:
            with clear_failures():
                needed = _needed_captions(lane, settings, language)
                frame, encoded = _embed_captions(
                    settings, encoder, needed, progress_logger(context, f"{language} captions")
                )
            extra = {"encoded_now": encoded, "from_cache": frame.height - encoded}
            return _write_text_embeddings(lane, settings, key, language, frame, encoder, needed, extra)

        return materialize_partitions(context, one_language)

    return text_embeddings


def _build_sharded_text_embeddings(lane: Lane, captions: dg.AssetsDefinition) -> dg.AssetsDefinition:
    """`text_embeddings` as a graph: a language's captions split into `caption_shards` stable hash buckets of
    caption ids, each embedded by its own step (run side by side by the multiprocess, Dask, Celery or Kubernetes
    executor), then their union — the same asset, partitions and table as unsharded, so nothing downstream changes."""
    key = lane.key(TEXT_EMBEDDINGS.name)
    check_specs = _vector_check_specs(key, "needed caption")
    shard_keys = shard_keys_of(lane.spec.caption_shards)
    prefix = f"{lane.name}__text_embeddings"

    @dg.op(name=f"{prefix}_shards", ins={"captions": dg.In(dg.Nothing)}, out=dg.DynamicOut(dg.Nothing))
    def caption_shards():
        for shard in shard_keys:
            yield dg.DynamicOutput(None, mapping_key=shard.replace("-", "_"))  # mapping keys allow no '-'

    @dg.op(name=f"{prefix}_embed_shard", ins={"shard": dg.In(dg.Nothing)}, tags={"kind": "pytorch"})
    def embed_caption_shard(context: dg.OpExecutionContext, settings: XlrSettings) -> None:
        """One shard of one language's needed captions, written to `text_embeddings/shards/<language>/<shard>.parquet`."""
        settings = lane.settings(settings)  # this dataset's encoders
        language, shard = context.partition_key, context.get_mapping_key().replace("_", "-")
        index, count = parse_shard_key(shard)
        with clear_failures():
            needed = _needed_captions(lane, settings, language)
            part = needed.filter(pl.Series(shard_indices(needed["caption_id"].to_list(), count)) == index)
            frame, encoded = _embed_captions(
                settings, settings.text_encoder(), part, progress_logger(context, f"{language} captions, shard {shard}")
            )
        write_parquet_atomic(frame, lane.outputs(settings).text_embedding_shard_path(language, shard))
        context.log.info(f"{language} shard {shard}: {frame.height} captions, {encoded} encoded now")

    @dg.op(
        name=f"{prefix}_union",
        ins={"shards": dg.In(dg.Nothing)},
        out={
            "result": dg.Out(dg.Nothing),
            **{spec.get_python_identifier(): dg.Out(dg.Nothing) for spec in check_specs},
        },
    )
    def union_caption_shards(context: dg.OpExecutionContext, settings: XlrSettings):
        settings = lane.settings(settings)  # this dataset's encoders
        language = context.partition_key
        outputs = lane.outputs(settings)
        with clear_failures():
            needed = _needed_captions(lane, settings, language)
            paths = [
                require_file(outputs.text_embedding_shard_path(language, shard), f"{key.to_user_string()}[{language}]")
                for shard in shard_keys
            ]
            frame = union_of_shards(caption_hashes(needed), paths, settings.text_model, CAPTION_SHARDS)
            encoder = settings.text_encoder()  # its dimension is what the vectors are checked against
        outcome = _write_text_embeddings(
            lane, settings, key, language, frame, encoder, needed, {"shards": len(shard_keys)}
        )
        context.add_output_metadata({**outcome.metadata, VERSION_KEY: outcome.version}, output_name="result")
        yield from outcome.checks
        yield dg.Output(None, output_name="result", data_version=dg.DataVersion(outcome.version))

    @dg.graph_asset(
        **TEXT_EMBEDDINGS.asset_args(lane),
        ins={"captions": dg.AssetIn(key=captions.key, dagster_type=dg.Nothing)},
        partitions_def=lane.partitions,
        kinds={"pytorch", "parquet"},
        backfill_policy=dg.BackfillPolicy.multi_run(1),  # one language per run; its shards are the run's parallel steps
        check_specs=check_specs,
        description=_build_sharded_text_embeddings.__doc__,
    )
    def text_embeddings(captions):
        result, *checks = union_caption_shards(caption_shards(captions).map(embed_caption_shard).collect())
        return {"result": result, **{spec.get_python_identifier(): check for spec, check in zip(check_specs, checks)}}

    return text_embeddings


def caption_hashes(needed: pl.DataFrame) -> pl.DataFrame:
    """The needed captions' ids and the hash each one's vector must have been computed from."""
    return needed.select("caption_id", pl.Series("expected_hash", [sha256_text(text) for text in needed["caption"]]))
