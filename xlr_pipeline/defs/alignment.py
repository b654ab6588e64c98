"""Per dataset: the text-alignment diagnostic (each language's captions against the pivot language's)."""

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field, field_validator

from xlr_pipeline.core.data.datasets import read_captions
from xlr_pipeline.core.models.encoders import OFFLINE_MODELS, TEXT_LOADERS, EncoderError, ModelRef
from xlr_pipeline.core.reporting.report import to_markdown
from xlr_pipeline.core.reporting.results import append_tables
from xlr_pipeline.core.scoring.alignment import CaptionVectors, text_alignment
from xlr_pipeline.core.storage.locations import sha256_file, write_parquet_atomic, write_with_atomic
from xlr_pipeline.defs.lane import AssetDeclaration, Lane
from xlr_pipeline.defs.lineage import lineage_metadata
from xlr_pipeline.defs.metadata import sql_hint
from xlr_pipeline.defs.resources import XlrSettings, clear_failures

TEXT_ALIGNMENT = AssetDeclaration("text_alignment", code_version="1", stage="alignment")


class TextAlignmentConfig(dg.Config):
    text_models: list[str] = Field(
        list(OFFLINE_MODELS["text"]),
        description="Text encoder ids to diagnose (default: every text encoder that loads offline, the English-only control included)",
    )

    @field_validator("text_models")
    @classmethod
    def _known_schemes(cls, models: list[str]) -> list[str]:
        if not models:
            raise ValueError("name at least one text model")
        for model_id in models:
            try:
                scheme = ModelRef.parse(model_id).scheme
            except EncoderError as error:
                raise ValueError(str(error)) from None
            if scheme not in TEXT_LOADERS:
                raise ValueError(f"{model_id!r}: unknown text model scheme {scheme!r}; known: {sorted(TEXT_LOADERS)}")
        return models


def alignment_frame(
    results, run_id: str, dataset: str, text_model: str, pivot: str, hashes: dict[str, str]
) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "run_id": run_id,
                "dataset": dataset,
                "text_model": text_model,
                "language": result.language,
                "pivot_language": pivot,
                "direction": result.direction,
                "centred": result.centred,
                "k": k,
                "recall": recall,
                "n_queries": result.n_queries,
                "captions_hash": hashes[result.language],
                "code_version": TEXT_ALIGNMENT.code_version,
                "dagster_run_id": run_id,
            }
            for result in results
            for k, recall in result.recall.items()
        ]
    )


def alignment_report(rows: pl.DataFrame, dataset: str, pivot: str, run_id: str) -> str:
    """Markdown: per text model, a language × (direction, raw/centred, k) table of recall."""
    lines = [
        f"# Text alignment with {pivot!r} on {dataset}",
        "",
        f"Run `{run_id}` (`xlr alignment --dataset {dataset}`; rows in the `text_alignment` table of results.duckdb).",
        f"Each language's test captions retrieve the {pivot} captions of the same images (`to_pivot`) and back",
        "(`from_pivot`); Recall@k = hit@k. `centred`: each language's mean vector removed before the cosine.",
        "",
    ]
    for model_id in rows["text_model"].unique(maintain_order=True).to_list():
        table = (
            rows.filter(pl.col("text_model") == model_id)
            .with_columns(
                (
                    pl.col("direction")
                    + pl.when(pl.col("centred")).then(pl.lit(" centred")).otherwise(pl.lit(" raw"))
                    + pl.lit(" R@")
                    + pl.col("k").cast(pl.String)
                ).alias("column"),
                pl.col("recall").round(3),
            )
            .pivot(on="column", index=["language", "n_queries"], values="recall")
            .sort("language")
        )
        means = (
            rows.filter(pl.col("text_model") == model_id)
            .group_by("direction", "centred", "k")
            .agg(pl.col("recall").mean())
        )
        mean_r1 = {(d, c): v for d, c, k, v in means.iter_rows() if k == 1}
        lines += [
            f"## `{model_id}`",
            "",
            f"Mean R@1 to {pivot}: raw {mean_r1[('to_pivot', False)]:.3f}, centred {mean_r1[('to_pivot', True)]:.3f}; "
            f"from {pivot}: raw {mean_r1[('from_pivot', False)]:.3f}, centred {mean_r1[('from_pivot', True)]:.3f}.",
            "",
            to_markdown(table),
            "",
        ]
    return "\n".join(lines)


def build_text_alignment(lane: Lane) -> dg.AssetsDefinition:
    @dg.asset(**TEXT_ALIGNMENT.asset_args(lane), kinds={"duckdb"})
    def text_alignment_diagnostic(
        context: dg.AssetExecutionContext, config: TextAlignmentConfig, settings: XlrSettings
    ) -> dg.MaterializeResult:
        """How well each frozen text encoder aligns every language with the training language: test captions
        of one language retrieve the training-language captions of the same images (and back), R@1/5/10, raw
        and with per-language centring. Reads the caption files only (no image needed: runs on XTD10 offline).
        Rows go to the `text_alignment` table, never mixed with image retrieval.
        """
        spec, pivot = lane.spec, lane.train_language
        outputs = lane.outputs(settings)
        with clear_failures():
            records = spec.image_records()
            files = spec.caption_files()
            captions = {}
            for language, path in files.items():
                frame, _ = read_captions(spec, language, path, records)
                captions[language] = frame.filter(pl.col("split") == "test")
        hashes = {language: sha256_file(path) for language, path in files.items()}
        frames = []
        for model_id in config.text_models:
            with clear_failures():
                encode = settings.cached_text_encoder(model_id)
            context.log.info(f"embedding {sum(f.height for f in captions.values())} captions with {model_id}")
            vectors = {
                language: CaptionVectors(encode(frame["caption"].to_list()), np.asarray(frame["image_id"].to_list()))
                for language, frame in captions.items()
            }
            frames.append(
                alignment_frame(text_alignment(vectors, pivot), context.run.run_id, lane.name, model_id, pivot, hashes)
            )
        rows = pl.concat(frames)
        path = outputs.root / "text_alignment.parquet"
        write_parquet_atomic(rows, path)
        report = lane.reports_dir(settings) / "text_alignment.md"
        write_with_atomic(
            report, lambda tmp: tmp.write_text(alignment_report(rows, lane.name, pivot, context.run.run_id), "utf-8")
        )
        with clear_failures():
            added = append_tables(settings.results_db, [("text_alignment", rows, "evaluated_at")])
        summary = (
            rows.filter((pl.col("k") == 1) & (pl.col("direction") == "to_pivot"))
            .with_columns(
                pl.col("recall").round(3),
                pl.when(pl.col("centred")).then(pl.lit("centred")).otherwise(pl.lit("raw")).alias("variant"),
            )
            .pivot(on=["text_model", "variant"], index="language", values="recall")
            .sort("language")
        )
        return dg.MaterializeResult(
            metadata={
                "dataset": lane.name,
                "pivot_language": pivot,
                "text_models": config.text_models,
                "R@1 to the pivot (raw, centred)": dg.MetadataValue.md(to_markdown(summary)),
                "rows_added": added["text_alignment"],
                "report": dg.MetadataValue.path(str(report)),
                "sql": sql_hint(
                    f"SELECT text_model, language, direction, centred, k, recall FROM text_alignment "
                    f"WHERE run_id = '{context.run.run_id}' ORDER BY ALL"
                ),
                **lineage_metadata(
                    {"dataset": lane.name, "text_models": config.text_models, "captions_sha256": hashes},
                    {},
                    [path, report],
                    settings.root,
                ),
            }
        )

    return text_alignment_diagnostic
