import dagster as dg
import numpy as np
import polars as pl

from xlr_pipeline.core.embeddings import vectors_of
from xlr_pipeline.core.head import head_fingerprint, head_from_bytes
from xlr_pipeline.core.index import load_index
from xlr_pipeline.core.metrics import (
    DirectionResult,
    evaluate_trained_and_random,
    recall_is_monotone,
)
from xlr_pipeline.core.results import (
    evaluation_records,
    query_ranks_frame,
    query_ranks_path,
    record_evaluation,
)
from xlr_pipeline.core.storage import sha256_file, write_parquet_atomic
from xlr_pipeline.defs.embed import image_embeddings, text_embeddings
from xlr_pipeline.defs.index import image_index
from xlr_pipeline.defs.lineage import file_version, input_name, lineage_metadata
from xlr_pipeline.defs.partitions import language_partitions
from xlr_pipeline.defs.resources import XlrSettings, require_file
from xlr_pipeline.defs.train import projection_head
from xlr_pipeline.defs.versions import ASSET_GROUP, CODE_VERSIONS


def _recall_table(results: dict[str, list[DirectionResult]]) -> dg.MetadataValue:
    lines = ["| head | direction | R@1 | R@5 | R@10 | mean rank | queries |", "|---|---|---|---|---|---|---|"]
    for head_name, directions in results.items():
        for result in directions:
            r = result.recall
            lines.append(
                f"| {head_name} | {result.direction} | {r[1]:.3f} | {r[5]:.3f} | {r[10]:.3f} | "
                f"{result.mean_rank:.1f} | {result.n_queries} |"
            )
    return dg.MetadataValue.md("\n".join(lines))


@dg.asset(
    partitions_def=language_partitions,
    deps=[text_embeddings, image_embeddings, projection_head, image_index],
    group_name=ASSET_GROUP,
    kinds={"duckdb"},
    code_version=CODE_VERSIONS["retrieval_metrics"],
    retry_policy=dg.RetryPolicy(max_retries=2, delay=2, backoff=dg.Backoff.EXPONENTIAL),
    check_specs=[
        dg.AssetCheckSpec("recall_bounds", asset="retrieval_metrics", description="0 <= R@1 <= R@5 <= R@10 <= 1 in both directions"),
        dg.AssetCheckSpec("beats_random_head", asset="retrieval_metrics", description="Trained head beats the random head on mean R@10"),
    ],
)
def retrieval_metrics(context: dg.AssetExecutionContext, settings: XlrSettings) -> dg.MaterializeResult:
    """Recall@1/5/10 on the test split for one language, text→image and image→text, appended to DuckDB.

    Also evaluates a random (untrained, same seed) head with the same normalisation as the baseline
    run `<run_id>:random-head`, so every table shows what training added. The run id is the Dagster
    run id that trained the head.
    """
    language = context.partition_key
    head, provenance = head_from_bytes(require_file(settings.head_path, "projection_head").read_bytes())
    ids = pl.read_parquet(require_file(settings.index_ids_path, "image_index"))
    if ids["head_run_id"][0] != provenance["run_id"]:
        raise dg.Failure("image_index was built from an older projection head: materialize image_index first")
    text_path = require_file(settings.text_embeddings_path(language), f"text_embeddings[{language}]")
    texts = pl.read_parquet(text_path).filter(pl.col("split") == "test")
    if texts["model_id"][0] != provenance["text_model"]:
        raise dg.Failure(
            f"text_embeddings[{language}] use {texts['model_id'][0]} but the head was trained on "
            f"{provenance['text_model']}: rematerialize the stale assets"
        )
    images = pl.read_parquet(require_file(settings.image_embeddings_path, "image_embeddings"))
    indexed = ids.select("image_id").join(images, on="image_id", how="left", maintain_order="left")
    position = {image_id: i for i, image_id in enumerate(ids["image_id"].to_list())}
    text_labels = np.array([position.get(image_id, -1) for image_id in texts["image_id"].to_list()])
    results = evaluate_trained_and_random(head, vectors_of(indexed), vectors_of(texts), text_labels, load_index(settings.index_path))

    run_id = provenance["run_id"]
    captions_hash = sha256_file(require_file(settings.captions_path(language), f"captions[{language}]"))
    captions = pl.read_parquet(settings.captions_path(language)).select("caption_id", "caption")
    queries = texts.select("caption_id", "image_id").join(captions, on="caption_id", how="left", maintain_order="left")
    ranks = query_ranks_frame(run_id, provenance["dataset"], language, results["trained"], queries, ids["image_id"].to_list())
    # Written before the DuckDB transaction, so the `query_ranks` view never points at a missing file.
    write_parquet_atomic(ranks, query_ranks_path(settings.results_db, provenance["dataset"], run_id, language, captions_hash))
    runs, recall_rows, rank_rows = evaluation_records(
        provenance, head.config.as_dict(), CODE_VERSIONS, language, captions_hash, context.run.run_id, results
    )
    added = record_evaluation(settings.results_db, runs, recall_rows, rank_rows)

    trained_r10 = np.mean([r.recall[10] for r in results["trained"]])
    random_r10 = np.mean([r.recall[10] for r in results["random"]])
    return dg.MaterializeResult(
        metadata={
            "run_id": run_id,
            "language": language,
            "results_db": dg.MetadataValue.path(str(settings.results_db)),
            "rows_added": added,
            "recall": _recall_table(results),
            **{f"{r.direction}/R@{k}": v for r in results["trained"] for k, v in r.recall.items()},
            **lineage_metadata(
                {},
                {
                    input_name("text_embeddings", language): file_version(text_path),
                    "image_embeddings": file_version(settings.image_embeddings_path),
                    "projection_head": head_fingerprint(head),
                    "image_index": file_version(settings.index_path),
                },
            ),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="recall_bounds",
                passed=all(recall_is_monotone(r.recall) for rs in results.values() for r in rs),
            ),
            dg.AssetCheckResult(
                check_name="beats_random_head",
                passed=bool(trained_r10 > random_r10),
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"trained_mean_R@10": float(trained_r10), "random_mean_R@10": float(random_r10)},
            ),
        ],
    )
