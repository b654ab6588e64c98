from collections.abc import Mapping

import dagster as dg
import numpy as np
import polars as pl

from xlr_pipeline.core.models.embeddings import vectors_of
from xlr_pipeline.core.reporting.plots import recall_bars
from xlr_pipeline.core.reporting.report import recall_by_language, to_markdown
from xlr_pipeline.core.reporting.results import gallery_hash, query_ranks_frame, query_ranks_path, record_evaluation
from xlr_pipeline.core.scoring.evaluation import RANDOM, TRAINED, RunProvenance, TestQueries, evaluate_run
from xlr_pipeline.core.scoring.metrics import DirectionResult, recall_is_monotone
from xlr_pipeline.core.storage.locations import read_parquet, sha256_file, write_parquet_atomic
from xlr_pipeline.defs.lane import AssetDeclaration, Lane
from xlr_pipeline.defs.lineage import file_version, input_name, lineage_metadata, warehouse_rows_metadata
from xlr_pipeline.defs.metadata import PartitionOutcome, materialize_partitions, png_metadata, sql_hint
from xlr_pipeline.defs.resources import XlrSettings, clear_failures, require_file

RETRIEVAL_METRICS = AssetDeclaration("retrieval_metrics", code_version="3", stage="run")


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


def build_retrieval_metrics(
    lane: Lane,
    code_versions: Mapping[str, str],
    text_embeddings: dg.AssetsDefinition,
    image_embeddings: dg.AssetsDefinition,
    projection_head: dg.AssetsDefinition,
    image_index: dg.AssetsDefinition,
) -> dg.AssetsDefinition:
    key = lane.key(RETRIEVAL_METRICS.name)

    @dg.asset(
        **RETRIEVAL_METRICS.asset_args(lane),
        partitions_def=lane.partitions,
        deps=[text_embeddings, image_embeddings, projection_head, image_index],
        kinds={"duckdb"},
        # A head retrained from the launchpad carries its index and metrics along (the automation sensor).
        automation_condition=dg.AutomationCondition.eager(),
        backfill_policy=dg.BackfillPolicy.single_run(),
        retry_policy=dg.RetryPolicy(max_retries=2, delay=2, backoff=dg.Backoff.EXPONENTIAL),
        check_specs=[
            dg.AssetCheckSpec(
                "recall_bounds", asset=key, description="0 <= R@1 <= R@5 <= R@10 <= 1 in both directions"
            ),
            dg.AssetCheckSpec(
                "beats_random_head", asset=key, description="Trained head beats the random head on mean R@10"
            ),
        ],
    )
    def retrieval_metrics(context: dg.AssetExecutionContext, settings: XlrSettings) -> dg.MaterializeResult:
        """Recall@1/5/10 on the test split for each language of the run, text→image and image→text, appended to DuckDB.

        Also evaluates a random (untrained, same seed) head with the same normalisation as the baseline
        run `<run_id>:random-head`, so every table shows what training added. The run id is the Dagster
        run id that trained the head.
        """
        from xlr_pipeline.core.training.head import head_fingerprint, head_from_bytes

        outputs = lane.outputs(settings)
        head, saved = head_from_bytes(require_file(outputs.head_path, f"{lane.name}/projection_head").read_bytes())
        provenance = RunProvenance.from_dict(saved)
        ids = read_parquet(require_file(outputs.index_ids_path, f"{lane.name}/image_index"))
        if ids["head_run_id"][0] != provenance.run_id:
            raise dg.Failure(
                f"{lane.name}/image_index was built from an older projection head: materialize it first",
                allow_retries=False,
            )
        images = read_parquet(require_file(outputs.image_embeddings_path, f"{lane.name}/image_embeddings"))
        indexed = ids.select("image_id").join(images, on="image_id", how="left", maintain_order="left")
        position = {image_id: i for i, image_id in enumerate(ids["image_id"].to_list())}

        languages = context.partition_keys
        texts, tests = {}, {}
        for language in languages:
            text_path = require_file(outputs.text_embeddings_path(language), f"{lane.name}/text_embeddings[{language}]")
            texts[language] = read_parquet(text_path).filter(pl.col("split") == "test")
            if texts[language]["model_id"][0] != provenance.text_model:
                raise dg.Failure(
                    f"{lane.name}/text_embeddings[{language}] use {texts[language]['model_id'][0]} but the head was "
                    f"trained on {provenance.text_model}: rematerialize the stale assets",
                    allow_retries=False,
                )
            captions_path = require_file(outputs.captions_path(language), f"{lane.name}/captions[{language}]")
            tests[language] = TestQueries(
                vectors_of(texts[language]),
                np.array([position.get(i, -1) for i in texts[language]["image_id"].to_list()]),
                sha256_file(captions_path),
            )
        gallery = gallery_hash(ids["image_id"].to_list(), ids["content_hash"].to_list())
        evaluation = evaluate_run(
            head,
            provenance,
            vectors_of(indexed),
            tests,
            code_versions,
            context.run.run_id,
            gallery,
        )
        ranks_paths = {}
        for language in languages:
            captions = read_parquet(outputs.captions_path(language)).select("caption_id", "caption")
            queries = (
                texts[language]
                .select("caption_id", "image_id")
                .join(captions, on="caption_id", how="left", maintain_order="left")
            )
            ranks = query_ranks_frame(
                provenance.run_id,
                lane.name,
                language,
                evaluation.results[language][TRAINED],
                queries,
                ids["image_id"].to_list(),
            )
            # Written before the DuckDB transaction, so the `query_ranks` view never points at a missing file.
            ranks_paths[language] = query_ranks_path(
                settings.ranks_root, lane.name, provenance.run_id, language, tests[language].captions_hash, gallery
            )
            write_parquet_atomic(ranks, ranks_paths[language])
        with clear_failures():
            added = record_evaluation(
                settings.results_db, evaluation.runs, evaluation.recall, evaluation.ranks, settings.ranks_root
            )
            by_language = recall_by_language(settings.results_db, provenance.run_id)
        # On every partition of this run: the head's whole picture so far, not just this run's languages.
        across_languages = {
            "recall_by_language": png_metadata(
                recall_bars(by_language, f"{lane.name} head {provenance.run_id[:8]}"), "R@1/5/10 per language"
            ),
            "languages_table": dg.MetadataValue.md(to_markdown(by_language)),
            "rows_added": added,
            "results_db": dg.MetadataValue.path(str(settings.results_db)),
            "sql": sql_hint(
                f"SELECT language, direction, k, recall FROM recall_latest WHERE dataset = '{lane.name}' "
                f"AND run_id = '{provenance.run_id}' ORDER BY language, direction, k"
            ),
        }

        def one_language(language: str) -> PartitionOutcome:
            results = evaluation.results[language]
            trained_r10 = np.mean([r.recall[10] for r in results[TRAINED]])
            random_r10 = np.mean([r.recall[10] for r in results[RANDOM]]) if RANDOM in results else None
            return PartitionOutcome(
                metadata={
                    "run_id": provenance.run_id,
                    "dataset": lane.name,
                    "language": language,
                    "recall": _recall_table(results),
                    **{f"{r.direction}/R@{k}": round(v, 3) for r in results[TRAINED] for k, v in r.recall.items()},
                    **warehouse_rows_metadata(
                        settings.results_db,
                        settings.root,
                        run_id=provenance.run_id,
                        dataset=lane.name,
                        language=language,
                        captions_hash=tests[language].captions_hash,
                        gallery_hash=gallery,
                    ),
                    "query_ranks": dg.MetadataValue.path(str(ranks_paths[language])),
                    **lineage_metadata(
                        {},
                        {
                            input_name("text_embeddings", language): file_version(
                                outputs.text_embeddings_path(language)
                            ),
                            "image_embeddings": file_version(outputs.image_embeddings_path),
                            "projection_head": head_fingerprint(head),
                            "image_index": file_version(outputs.index_path),
                        },
                        [ranks_paths[language]],
                        settings.root,
                    ),
                },
                checks=[
                    dg.AssetCheckResult(
                        check_name="recall_bounds",
                        passed=all(recall_is_monotone(r.recall) for rs in results.values() for r in rs),
                    ),
                    _beats_random_check(trained_r10, random_r10),
                ],
            )

        return materialize_partitions(context, one_language, across_languages)

    return retrieval_metrics


def _beats_random_check(trained_r10: float, random_r10: float | None) -> dg.AssetCheckResult:
    if random_r10 is None:  # an identity head has no parameters, hence no random twin
        return dg.AssetCheckResult(
            check_name="beats_random_head",
            passed=True,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "trained_mean_R@10": round(float(trained_r10), 3),
                "note": "identity head: nothing trained to compare",
            },
        )
    return dg.AssetCheckResult(
        check_name="beats_random_head",
        passed=bool(trained_r10 > random_r10),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"trained_mean_R@10": round(float(trained_r10), 3), "random_mean_R@10": round(float(random_r10), 3)},
    )
