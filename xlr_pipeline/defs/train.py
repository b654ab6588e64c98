import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field, model_validator

from xlr_pipeline.core.models.embeddings import vectors_of
from xlr_pipeline.core.reporting.plots import loss_curve
from xlr_pipeline.core.scoring.evaluation import RunProvenance
from xlr_pipeline.core.storage.locations import (
    read_parquet,
    sha256_file,
    write_parquet_atomic,
    write_with_atomic,
)
from xlr_pipeline.core.training.choices import Architecture, NegativeMining, Objective
from xlr_pipeline.core.training.configs import HeadConfig
from xlr_pipeline.defs.lane import Lane
from xlr_pipeline.defs.lineage import (
    CURRENT_CONFIG,
    file_version,
    input_name,
    lineage_metadata,
)
from xlr_pipeline.defs.metadata import png_metadata
from xlr_pipeline.defs.resources import XlrSettings, require_file
from xlr_pipeline.defs.versions import CODE_VERSIONS

_DEFAULT = HeadConfig()


class HeadTrainingConfig(dg.Config):
    """Hyperparameters of the projection head (shown in the launchpad)."""

    architecture: Architecture = Field(
        _DEFAULT.architecture,
        description="One linear layer per modality, a 2-layer MLP, or identity (no head: an aligned CLIP-family pair as it is)",
    )
    embed_dim: int = Field(_DEFAULT.embed_dim, description="Dimension of the shared space")
    hidden_dim: int = Field(_DEFAULT.hidden_dim, description="Hidden width of the MLP branches")
    objective: Objective = Field(
        _DEFAULT.objective,
        description="'hinge': plain triplet hinge; 'patr': the paper's positive-aware triplet ranking; 'm3': patr + text "
        "repulsion (the paper's m3); 'm3_pull': patr + extra positive pull (control); 'infonce': symmetric CLIP-style",
    )
    margin: float | None = Field(
        _DEFAULT.margin,
        description="hinge: margin on cosine similarity (unset: 0.1); patr/m3/m3_pull: η on cosine distance (unset: 1.0)",
    )
    negatives: NegativeMining = Field(
        _DEFAULT.negatives, description="Average all violating in-batch negatives, or only the hardest"
    )
    text_margin: float = Field(
        _DEFAULT.text_margin, description="m3: β2, distance margin of the caption-vs-other-captions term"
    )
    text_weight: float = Field(_DEFAULT.text_weight, description="m3/m3_pull: α3, weight of the extra term (0 = patr)")
    temperature: float = Field(_DEFAULT.temperature, description="infonce: softmax temperature")
    epochs: int = Field(_DEFAULT.epochs, description="Passes over the training-language pairs")
    steps: int | None = Field(
        _DEFAULT.steps, description="Fixed number of optimiser steps instead of epochs (unset: epochs)"
    )
    batch_size: int = Field(_DEFAULT.batch_size, description="Pairs per batch (in-batch negatives come from here)")
    learning_rate: float = Field(_DEFAULT.learning_rate, description="AdamW learning rate")
    weight_decay: float = Field(_DEFAULT.weight_decay, description="AdamW weight decay")
    seed: int = Field(_DEFAULT.seed, description="Seeds initialisation and batch order")

    @model_validator(mode="after")
    def _in_range(self) -> "HeadTrainingConfig":
        self.head_config()  # a value outside HEAD_RANGES is refused when the run config is read, before any step
        return self

    def head_config(self) -> HeadConfig:
        return HeadConfig(**self.model_dump())

    def given(self) -> dict:
        """The values set in the run config or on the command line: what overrides the dataset's `[defaults]`
        (a field left out of the launchpad's config takes the dataset's default)."""
        return self.model_dump(include=self.model_fields_set)


def training_pairs(images: pl.DataFrame, texts: pl.DataFrame) -> pl.DataFrame:
    """Train-split captions joined to their image's features; one row per caption."""
    return texts.filter(pl.col("split") == "train").join(
        images.filter(pl.col("split") == "train").select("image_id", pl.col("vector").alias("image_vector")),
        on="image_id",
        how="inner",
    )


def build_projection_head(
    lane: Lane, image_embeddings: dg.AssetsDefinition, text_embeddings: dg.AssetsDefinition
) -> dg.AssetsDefinition:
    key = lane.key("projection_head")
    train_language = lane.train_language

    @dg.asset(
        key=key,
        deps=[
            image_embeddings,
            dg.AssetDep(text_embeddings, partition_mapping=dg.SpecificPartitionsPartitionMapping([train_language])),
        ],
        group_name=lane.group,
        kinds={"pytorch"},
        code_version=CODE_VERSIONS["projection_head"],
        check_specs=[
            dg.AssetCheckSpec("weights_finite", asset=key, description="No NaN/inf in the trained weights"),
            dg.AssetCheckSpec("loss_decreased", asset=key, description="Final epoch loss below the first"),
        ],
    )
    def projection_head(
        context: dg.AssetExecutionContext, config: HeadTrainingConfig, settings: XlrSettings
    ) -> dg.MaterializeResult:
        """Projection head trained on the dataset's training-language train-split pairs only (zero-shot for
        every other language; `train_language` in dataset.toml, English by default).

        The Dagster run that trains it names the experiment: its run id is the `run_id` of every result row
        (retraining to bit-identical weights keeps the earlier run id).
        """
        from xlr_pipeline.core.training.head import (
            head_fingerprint,
            head_from_bytes,
            head_to_bytes,
            train_head,
            weights_are_finite,
        )

        outputs = lane.outputs(settings)
        images = read_parquet(require_file(outputs.image_embeddings_path, f"{lane.name}/image_embeddings"))
        text_path = require_file(
            outputs.text_embeddings_path(train_language), f"{lane.name}/text_embeddings[{train_language}]"
        )
        texts = read_parquet(text_path)
        pairs = training_pairs(images, texts)
        if pairs.height < 2:
            raise dg.Failure(
                f"only {pairs.height} train-split {train_language} captions match train images in {lane.name}"
            )
        head_config = lane.head_config(config.given())
        context.log.info(f"training on {pairs.height} {train_language} pairs: {head_config}")
        try:
            result = train_head(
                vectors_of(pairs), vectors_of(pairs, "image_vector"), pairs["image_id"].to_numpy(), head_config
            )
        except ValueError as error:
            raise dg.Failure(str(error), allow_retries=False) from None
        # Identical weights (e.g. only test captions changed) stay the same experiment: keep its run id.
        previous = head_from_bytes(outputs.head_path.read_bytes()) if outputs.head_path.is_file() else None
        same_weights = previous is not None and head_fingerprint(previous[0]) == head_fingerprint(result.head)
        run_id = previous[1]["run_id"] if same_weights else context.run.run_id
        provenance = RunProvenance(
            run_id=run_id,
            dataset=lane.name,
            image_model=images["model_id"][0],
            text_model=texts["model_id"][0],
            train_language=train_language,
            train_captions_hash=sha256_file(text_path),
            images_hash=sha256_file(outputs.image_embeddings_path),
            dagster_run_id=run_id,
            train_pairs=pairs.height,
        )
        write_with_atomic(
            outputs.head_path, lambda tmp: tmp.write_bytes(head_to_bytes(result.head, provenance.as_dict()))
        )
        history = pl.DataFrame({"epoch": np.arange(1, len(result.loss_history) + 1), "loss": result.loss_history})
        write_parquet_atomic(history, outputs.loss_history_path)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(head_fingerprint(result.head)),
            metadata={
                **provenance.as_dict(),
                "head_config": head_config.as_dict(),
                **_loss_metadata(result.loss_history, f"{lane.name}: {head_config.objective}"),
                "loss_history": dg.MetadataValue.path(str(outputs.loss_history_path)),
                "path": dg.MetadataValue.path(str(outputs.head_path)),
                **lineage_metadata(
                    CURRENT_CONFIG["projection_head"](settings, lane, None, head_config.as_dict()),
                    {
                        "image_embeddings": file_version(outputs.image_embeddings_path),
                        input_name("text_embeddings", train_language): file_version(text_path),
                    },
                    [outputs.head_path, outputs.loss_history_path],
                    settings.root,
                ),
            },
            check_results=[
                dg.AssetCheckResult(check_name="weights_finite", passed=weights_are_finite(result.head)),
                _loss_check(result.loss_history),
            ],
        )

    return projection_head


def _loss_metadata(history: list[float], title: str) -> dict:
    if not history:
        return {"training": "none: identity head (the encoders' own shared space)"}
    return {
        "first_epoch_loss": round(history[0], 4),
        "final_epoch_loss": round(history[-1], 4),
        "loss_curve": png_metadata(loss_curve(history, title), "loss curve"),
    }


def _loss_check(history: list[float]) -> dg.AssetCheckResult:
    metadata = {"first": history[0], "final": history[-1]} if history else {"note": "identity head: nothing trained"}
    return dg.AssetCheckResult(
        check_name="loss_decreased",
        passed=not history or history[-1] < history[0],
        severity=dg.AssetCheckSeverity.WARN,
        metadata=metadata,
    )
