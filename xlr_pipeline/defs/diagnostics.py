"""Per dataset: why the default configuration misses a target (learning curve; text alignment against transfer)."""

import json

import dagster as dg
import polars as pl
from pydantic import Field, field_validator

from xlr_pipeline.core.models.threads import available_cores
from xlr_pipeline.core.storage.locations import read_parquet, sha256_file, write_parquet_atomic, write_with_atomic
from xlr_pipeline.defs.experiments import chain_frames
from xlr_pipeline.defs.lane import AssetDeclaration, Lane
from xlr_pipeline.defs.lineage import file_version, input_name, lineage_metadata
from xlr_pipeline.defs.metadata import markdown_preview
from xlr_pipeline.defs.resources import XlrSettings, require_file
from xlr_pipeline.defs.train import keyword_vectors


def _default_system(settings: XlrSettings, lane: Lane, partition: str | None, head_config: dict) -> dict:
    """What the diagnostics train: the dataset's default head on its default encoders (`[defaults]`; an
    ensemble's first member)."""
    settings = lane.grid_settings(settings)
    return {
        "dataset": lane.name,
        "train_language": lane.train_language,
        "text_model": settings.text_model,
        "image_model": settings.image_model,
        "head": lane.head_config({}).as_dict(),
        "augmentation": lane.augmentation(None),
    }


TARGET_DIAGNOSTICS = AssetDeclaration("target_diagnostics", code_version="2", stage="grid", config=_default_system)


class DiagnosticsConfig(dg.Config):
    fractions: list[float] = Field(
        [0.125, 0.25, 0.5, 1.0],
        description="Nested fractions of the training images for the learning curve (each in (0, 1]; 1.0 included)",
    )
    seeds: list[int] = Field([0, 1, 2], description="Head seeds at every fraction")
    train_language_r1_target: float = Field(
        0.15, ge=0, le=1, description="Training-language text→image R@1 the default should reach"
    )
    transfer_target: float = Field(
        0.85, ge=0, le=1, description="Zero-shot mean R@10 / training-language R@10 the default should reach"
    )

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, fractions: list[float]) -> list[float]:
        if len(set(fractions)) < 2 or 1.0 not in fractions or any(not 0 < f <= 1 for f in fractions):
            raise ValueError(f"name at least two distinct fractions in (0, 1], 1.0 among them; got {fractions}")
        return sorted(set(fractions))

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"name at least one seed, each once; got {seeds}")
        return seeds


def build_target_diagnostics(
    lane: Lane,
    captions: dg.AssetsDefinition,
    image_embeddings: dg.AssetsDefinition,
    text_embeddings: dg.AssetsDefinition,
) -> dg.AssetsDefinition:
    train_captions = dg.AssetDep(
        captions, partition_mapping=dg.SpecificPartitionsPartitionMapping([lane.train_language])
    )

    @dg.asset(
        **TARGET_DIAGNOSTICS.asset_args(lane),
        deps=[image_embeddings, text_embeddings, train_captions],  # the captions: their keywords
        kinds={"pytorch"},
    )
    def target_diagnostics(
        context: dg.AssetExecutionContext, config: DiagnosticsConfig, settings: XlrSettings
    ) -> dg.MaterializeResult:
        """Why the default configuration (`[defaults]`, what `xlr run` trains) meets or misses its targets: a
        learning curve of the training-language R@1 over nested subsets of the training images (same step
        budget), and each language's text alignment with the training language against its transfer ratio
        (Spearman). Rows to `target_diagnostics.parquet`, the report to `reports/<dataset>/diagnostics.md`."""
        from xlr_pipeline.core.experiments.diagnostics import diagnose, diagnostics_report  # torch: only to run

        members = len(lane.spec.defaults.ensemble) + 1 if settings.trains_ensemble(lane.spec) else 1
        settings = lane.grid_settings(settings)  # this dataset's encoders (an ensemble's first member's)
        outputs = lane.outputs(settings)
        train_language = lane.train_language
        languages = sorted(context.instance.get_dynamic_partitions(lane.partitions.name))
        images, captions = chain_frames(settings, lane, outputs, languages)
        head, augmentation = lane.head_config({}), lane.augmentation(None)
        captions_path = require_file(outputs.captions_path(train_language), f"{lane.name}/captions[{train_language}]")
        keywords = (
            keyword_vectors(read_parquet(captions_path), lane, settings, settings.text_model)
            if augmentation == "keywords"
            else None
        )
        context.log.info(f"{len(config.fractions)} fractions × {len(config.seeds)} seeds of {head} ({augmentation})")
        diagnostics = diagnose(
            images, captions, train_language, head, config.fractions, config.seeds, keywords, available_cores()
        )
        run_id = context.run.run_id
        provenance = {
            "run_id": run_id,
            "dataset": lane.name,
            "text_model": settings.text_model,
            "image_model": settings.image_model,
            "head_config": json.dumps(head.as_dict(), sort_keys=True),
            "augmentation": augmentation,
            "code_version": TARGET_DIAGNOSTICS.code_version,
            "images_hash": sha256_file(outputs.image_embeddings_path),
        }
        captions_hashes = pl.DataFrame(
            {"language": languages, "captions_hash": [sha256_file(outputs.captions_path(lang)) for lang in languages]}
        )
        curve = diagnostics.curve.join(captions_hashes, on="language").with_columns(
            **{key: pl.lit(value) for key, value in provenance.items()}
        )
        alignment = diagnostics.alignment.join(captions_hashes, on="language").with_columns(
            pl.lit(diagnostics.rank_correlation, pl.Float64).alias("rank_correlation"),
            pl.lit(diagnostics.rank_correlation_p, pl.Float64).alias("rank_correlation_p"),
            **{key: pl.lit(value) for key, value in provenance.items()},
        )
        write_parquet_atomic(curve, outputs.root / "learning_curve.parquet")
        write_parquet_atomic(alignment, outputs.root / "alignment_transfer.parquet")
        system = (
            f"{head.objective} ({head.architecture}, augmentation {augmentation}, hubness {head.hubness}) on "
            f"{settings.text_model} + {settings.image_model}"
            + (f" (the first of the default score ensemble's {members} members)" if members > 1 else "")
        )
        markdown = diagnostics_report(
            diagnostics,
            lane.name,
            train_language,
            system,
            run_id,
            config.train_language_r1_target,
            config.transfer_target,
        )
        report = lane.reports_dir(settings) / "diagnostics.md"
        write_with_atomic(report, lambda target: target.write_text(markdown, "utf-8"))
        written = [outputs.root / "learning_curve.parquet", outputs.root / "alignment_transfer.parquet", report]
        return dg.MaterializeResult(
            data_version=dg.DataVersion(file_version(report)),
            metadata={
                "report": dg.MetadataValue.md(markdown),
                "slope_per_doubling": diagnostics.slope_per_doubling,
                **(
                    {"rank_correlation": rho, "rank_correlation_p": diagnostics.rank_correlation_p}
                    if (rho := diagnostics.rank_correlation) is not None
                    else {}
                ),
                "alignment": markdown_preview(diagnostics.alignment, rows=len(languages)),
                "path": dg.MetadataValue.path(str(report)),
                "diagnostics_config": config.model_dump(),
                **lineage_metadata(
                    TARGET_DIAGNOSTICS.config(settings, lane, None, {}),
                    {
                        "image_embeddings": file_version(outputs.image_embeddings_path),
                        input_name("captions", train_language): file_version(captions_path),
                        **{
                            input_name("text_embeddings", lang): file_version(outputs.text_embeddings_path(lang))
                            for lang in languages
                        },
                    },
                    written,
                    settings.root,
                ),
            },
        )

    return target_diagnostics
