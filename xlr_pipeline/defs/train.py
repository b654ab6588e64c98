from typing import Literal, get_args

import dagster as dg
import polars as pl
from pydantic import Field, model_validator

from xlr_pipeline.core.models.embedding_frames import training_pairs, with_keyword_pairs
from xlr_pipeline.core.models.embeddings import vectors_of, with_vectors
from xlr_pipeline.core.models.joined import model_parts, part_slices
from xlr_pipeline.core.models.threads import limited_threads
from xlr_pipeline.core.reporting.plots import loss_curve
from xlr_pipeline.core.scoring.ensemble import member_weights
from xlr_pipeline.core.scoring.evaluation import RunProvenance
from xlr_pipeline.core.storage.locations import (
    read_parquet,
    sha256_file,
    write_parquet_atomic,
    write_with_atomic,
)
from xlr_pipeline.core.training.augment import keyword_texts
from xlr_pipeline.core.training.choices import Architecture, ChainAugmentation, Hubness, NegativeMining, Objective
from xlr_pipeline.core.training.configs import HeadConfig
from xlr_pipeline.core.training.defaults import DefaultsError
from xlr_pipeline.defs.lane import AssetDeclaration, Lane
from xlr_pipeline.defs.lineage import (
    file_version,
    input_name,
    lineage_metadata,
)
from xlr_pipeline.defs.metadata import png_metadata
from xlr_pipeline.defs.resources import XlrSettings, require_file

_DEFAULT = HeadConfig()
UNSET = "unset: the dataset's dataset.toml [defaults], else"
# Dagster's config has no optional choice, so a choice field offers "default": the dataset's, else the project's.
DATASET_DEFAULT = "default"
ArchitectureChoice = Literal[(DATASET_DEFAULT, *get_args(Architecture))]
ObjectiveChoice = Literal[(DATASET_DEFAULT, *get_args(Objective))]
NegativesChoice = Literal[(DATASET_DEFAULT, *get_args(NegativeMining))]
HubnessChoice = Literal[(DATASET_DEFAULT, *get_args(Hubness))]
AugmentationChoice = Literal[(DATASET_DEFAULT, *get_args(ChainAugmentation))]


def _head_config(settings: XlrSettings, lane: Lane, partition: str | None, head_config: dict) -> dict:
    given = dict(head_config)
    augmentation = lane.augmentation(given.pop("augmentation", None))
    # recorded only when used, so heads trained before these options existed stay fresh
    extra = {} if augmentation == "none" else {"augmentation": augmentation}
    if settings.trains_ensemble(lane.spec):
        defaults = lane.spec.defaults
        extra["ensemble"] = [
            {"text_model": text, "image_model": image, **member.as_dict()}
            for (text, image), member in zip(defaults.encoder_pairs(), defaults.member_configs(given))
        ]
        extra["ensemble_share"] = defaults.ensemble_share
    return {"train_language": lane.train_language, **lane.head_config(given).as_dict(), **extra}


PROJECTION_HEAD = AssetDeclaration("projection_head", code_version="2", stage="run", config=_head_config)


class HeadTrainingConfig(dg.Config):
    """Hyperparameters of the projection head (shown in the launchpad). A field left empty takes the dataset's
    `[defaults]`, else the project's default (named in each description)."""

    architecture: ArchitectureChoice = Field(
        DATASET_DEFAULT,
        description="One linear layer per modality, a 2-layer MLP, or identity (no head: an aligned CLIP-family pair "
        f"as it is); {UNSET} {_DEFAULT.architecture}",
    )
    embed_dim: int | None = Field(None, description=f"Dimension of the shared space; {UNSET} {_DEFAULT.embed_dim}")
    hidden_dim: int | None = Field(None, description=f"Hidden width of the MLP branches; {UNSET} {_DEFAULT.hidden_dim}")
    dropout: float | None = Field(None, description=f"Dropout between the MLP's layers; {UNSET} {_DEFAULT.dropout}")
    objective: ObjectiveChoice = Field(
        DATASET_DEFAULT,
        description="'hinge': plain triplet hinge; 'patr': the paper's positive-aware triplet ranking; 'm3': patr + text "
        "repulsion (the paper's m3); 'm3_pull': patr + extra positive pull (control); 'infonce': symmetric CLIP-style; "
        f"{UNSET} {_DEFAULT.objective}",
    )
    margin: float | None = Field(
        None,
        description="hinge: margin on cosine similarity (unset: 0.1); patr/m3/m3_pull: η on cosine distance (unset: 1.0)",
    )
    negatives: NegativesChoice = Field(
        DATASET_DEFAULT,
        description=f"Average all violating in-batch negatives, or only the hardest; {UNSET} {_DEFAULT.negatives}",
    )
    text_margin: float | None = Field(
        None,
        description=f"m3: β2, distance margin of the caption-vs-other-captions term; {UNSET} {_DEFAULT.text_margin}",
    )
    text_weight: float | None = Field(
        None, description=f"m3/m3_pull: α3, weight of the extra term (0 = patr); {UNSET} {_DEFAULT.text_weight}"
    )
    temperature: float | None = Field(None, description=f"infonce: softmax temperature; {UNSET} {_DEFAULT.temperature}")
    epochs: int | None = Field(
        None,
        description=f"Passes over the training-language pairs (given alone, it replaces a default step budget); {UNSET} {_DEFAULT.epochs}",
    )
    steps: int | None = Field(None, description="Fixed number of optimiser steps instead of epochs (unset: epochs)")
    batch_size: int | None = Field(
        None, description=f"Pairs per batch (in-batch negatives come from here); {UNSET} {_DEFAULT.batch_size}"
    )
    learning_rate: float | None = Field(None, description=f"AdamW learning rate; {UNSET} {_DEFAULT.learning_rate}")
    weight_decay: float | None = Field(None, description=f"AdamW weight decay; {UNSET} {_DEFAULT.weight_decay}")
    seed: int | None = Field(None, description=f"Seeds initialisation and batch order; {UNSET} {_DEFAULT.seed}")
    hubness: HubnessChoice = Field(
        DATASET_DEFAULT,
        description="Retrieval-time hubness reduction against the training captions: 'csls' or 'qb_norm' "
        f"(core/scoring/hubness.py); {UNSET} {_DEFAULT.hubness}",
    )
    hubness_parameter: float | None = Field(
        None, description=f"CSLS's k or QB-Norm's β; {UNSET} {_DEFAULT.hubness_parameter:g}"
    )
    augmentation: AugmentationChoice = Field(
        DATASET_DEFAULT,
        description="Extra training pairs: 'keywords' adds each training caption's keywords (a caption file's "
        f"`keywords` column) as one more text of its image; {UNSET} none",
    )

    @model_validator(mode="after")
    def _in_range(self) -> "HeadTrainingConfig":
        HeadConfig(**self.head_given())  # a value outside HEAD_RANGES is refused when the run config is read
        return self

    def given(self) -> dict:
        """The values given (run config, launchpad, command line): what overrides the dataset's `[defaults]`."""
        return {name: value for name, value in self.model_dump().items() if value not in (None, DATASET_DEFAULT)}

    def head_given(self) -> dict:
        """The given values that are the head's hyperparameters (all but the training augmentation)."""
        return {name: value for name, value in self.given().items() if name != "augmentation"}


def keyword_vectors(captions: pl.DataFrame, lane: Lane, settings: XlrSettings, text_model: str) -> pl.DataFrame:
    """Each training caption's keywords as one text (`caption_id`, `image_id`, `text`, `vector`), embedded by the
    pairs' own text encoder: the `keywords` augmentation's extra pairs."""
    keywords = keyword_texts(captions.filter(pl.col("split") == "train"))
    if not keywords.height:
        raise dg.Failure(
            f"{lane.name}: augmentation 'keywords' needs keywords in its {lane.train_language} training captions "
            "(a `keywords` column in the caption file); it has none",
            allow_retries=False,
        )
    encode = lane.settings(settings).cached_text_encoder(text_model)
    return with_vectors(keywords, encode(keywords["text"].to_list()))


def build_projection_head(
    lane: Lane,
    captions: dg.AssetsDefinition,
    image_embeddings: dg.AssetsDefinition,
    text_embeddings: dg.AssetsDefinition,
) -> dg.AssetsDefinition:
    key = lane.key(PROJECTION_HEAD.name)
    train_language = lane.train_language
    train_partition = dg.SpecificPartitionsPartitionMapping([train_language])

    @dg.asset(
        **PROJECTION_HEAD.asset_args(lane),
        deps=[
            image_embeddings,
            dg.AssetDep(text_embeddings, partition_mapping=train_partition),
            dg.AssetDep(captions, partition_mapping=train_partition),  # their keywords
        ],
        kinds={"pytorch"},
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
            head_description,
            head_fingerprint,
            head_from_bytes,
            head_to_bytes,
            train_ensemble,
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
        augmentation = lane.augmentation(config.given().get("augmentation"))
        head_config = lane.head_config(config.head_given())
        captions_path = require_file(outputs.captions_path(train_language), f"{lane.name}/captions[{train_language}]")
        if augmentation == "keywords":
            keywords = keyword_vectors(read_parquet(captions_path), lane, settings, texts["model_id"][0])
            pairs = with_keyword_pairs(pairs, keywords)
        context.log.info(f"training on {pairs.height} {train_language} pairs ({augmentation}): {head_config}")
        text, image, image_ids = vectors_of(pairs), vectors_of(pairs, "image_vector"), pairs["image_id"].to_numpy()
        members = []
        if settings.trains_ensemble(lane.spec):
            members = ensemble_members(lane.settings(settings), lane, config.given())
            context.log.info(f"an ensemble of {len(members)} heads: {[m.encoders for m in members]}")
        # One torch thread, as the grid's workers train: the weights do not depend on the machine's cores, and the
        # head is the grid's cell (or ensemble) of the same configuration and seed, bit for bit.
        try:
            with limited_threads(1):
                if members:
                    shares = member_weights(len(members), lane.spec.defaults.ensemble_share)
                    head, results = train_ensemble(text, image, image_ids, members, shares)
                else:
                    results = [train_head(text, image, image_ids, head_config)]
                    head = results[0].head
        except ValueError as error:
            raise dg.Failure(str(error), allow_retries=False) from None
        histories = [result.loss_history for result in results]
        # Identical weights (e.g. only test captions changed) stay the same experiment: keep its run id.
        previous = head_from_bytes(outputs.head_path.read_bytes()) if outputs.head_path.is_file() else None
        same_weights = previous is not None and head_fingerprint(previous[0]) == head_fingerprint(head)
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
            augmentation=augmentation,
            train_pairs=pairs.height,
        )
        write_with_atomic(outputs.head_path, lambda tmp: tmp.write_bytes(head_to_bytes(head, provenance.as_dict())))
        history = pl.DataFrame(
            [
                {"member": member, "epoch": epoch, "loss": loss}
                for member, losses in enumerate(histories, start=1)
                for epoch, loss in enumerate(losses, start=1)
            ],
            schema={"member": pl.Int64, "epoch": pl.Int64, "loss": pl.Float64},
        )
        write_parquet_atomic(history, outputs.loss_history_path)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(head_fingerprint(head)),
            metadata={
                **provenance.as_dict(),
                "head_config": head_description(head),
                **_loss_metadata(histories[0], f"{lane.name}: {head_config.objective}"),
                "loss_history": dg.MetadataValue.path(str(outputs.loss_history_path)),
                "path": dg.MetadataValue.path(str(outputs.head_path)),
                **lineage_metadata(
                    PROJECTION_HEAD.config(settings, lane, None, {**config.head_given(), "augmentation": augmentation}),
                    {
                        "image_embeddings": file_version(outputs.image_embeddings_path),
                        input_name("text_embeddings", train_language): file_version(text_path),
                        input_name("captions", train_language): file_version(captions_path),
                    },
                    [outputs.head_path, outputs.loss_history_path],
                    settings.root,
                ),
            },
            check_results=[
                dg.AssetCheckResult(check_name="weights_finite", passed=weights_are_finite(head)),
                _loss_check(histories),
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


def _loss_check(histories: list[list[float]]) -> dg.AssetCheckResult:
    """Every member's final epoch loss below its first (one member: the head)."""
    trained = [history for history in histories if history]
    metadata = (
        {"first": [h[0] for h in trained], "final": [h[-1] for h in trained]}
        if trained
        else {"note": "identity head: nothing trained"}
    )
    return dg.AssetCheckResult(
        check_name="loss_decreased",
        passed=all(history[-1] < history[0] for history in trained),
        severity=dg.AssetCheckSeverity.WARN,
        metadata=metadata,
    )


def ensemble_members(settings: XlrSettings, lane: Lane, given: dict) -> list:
    """The lane's `[defaults]` ensemble as members to train: each member's encoders, their columns in the joined
    vectors `settings` embeds with, and its head values with the options `given` on top."""
    from xlr_pipeline.core.training.head import EnsembleMemberSpec

    defaults = lane.spec.defaults
    try:
        defaults.check_ensemble_options(given)
    except DefaultsError as error:
        raise dg.Failure(f"{lane.name}: {error}", allow_retries=False) from None
    configs = defaults.member_configs(given)
    columns = {}
    for model_id, load in (
        (settings.text_model, settings.text_encoder),
        (settings.image_model, settings.image_encoder),
    ):
        parts = model_parts(model_id)
        columns |= dict(zip(parts, part_slices([load(part).dim for part in parts])))
    return [
        EnsembleMemberSpec((text, image), columns[text], columns[image], member_config)
        for (text, image), member_config in zip(defaults.encoder_pairs(), configs)
    ]
