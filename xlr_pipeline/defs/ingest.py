import dagster as dg
import polars as pl

from xlr_pipeline.core.data.datasets import CAPTION_SCHEMA, read_captions
from xlr_pipeline.core.data.image_sources import ImageSet
from xlr_pipeline.core.storage.locations import read_parquet, sha256_file, write_parquet_atomic
from xlr_pipeline.defs.lane import AssetDeclaration, Lane
from xlr_pipeline.defs.lineage import file_version, lineage_metadata
from xlr_pipeline.defs.metadata import PartitionOutcome, markdown_preview, materialize_partitions
from xlr_pipeline.defs.resources import XlrSettings, clear_failures, require_file


def _captions_config(settings: XlrSettings, lane: Lane, partition: str | None, head_config: dict) -> dict:
    """The caption file and the image list, whose split column every caption row carries."""
    spec = lane.spec
    return {
        "dataset": spec.name,
        "source_sha256": sha256_file(spec.caption_file(partition)),
        "image_list_sha256": sha256_file(spec.image_list_path),
    }


CAPTIONS = AssetDeclaration("captions", code_version="3", stage="run", config=_captions_config)


def build_captions(lane: Lane, images: dg.AssetsDefinition) -> dg.AssetsDefinition:
    key = lane.key(CAPTIONS.name)
    # A COCO-sourced dataset's captions read the `images` asset: its English training captions come from there,
    # and captions of images that could not be had are left out. Other datasets' captions read only their files
    # (queries of a missing image simply have no correct item), so a backfill runs them beside the images.
    reads_images = lane.spec.coco_sourced

    @dg.asset(
        **CAPTIONS.asset_args(lane),
        partitions_def=lane.partitions,
        deps=[images] if reads_images else [],
        kinds={"polars", "parquet"},
        backfill_policy=dg.BackfillPolicy.single_run(),
        check_specs=[
            dg.AssetCheckSpec("no_quarantined_rows", asset=key, description="Every row of the caption file was usable"),
            dg.AssetCheckSpec(
                "every_test_image_captioned", asset=key, description="Each test image has a caption in this language"
            ),
        ],
    )
    def captions(context: dg.AssetExecutionContext, settings: XlrSettings) -> dg.MaterializeResult:
        """Each language's caption file, validated and normalised (whitespace, ISO 639-1 code, split).

        A file that cannot be trusted (empty, undecodable, wrong line count) fails with its file and line;
        single bad rows (unknown image id, empty or duplicate caption) go to a quarantine table that names
        the file and line, and the rest is kept. For a COCO-sourced dataset (XTD10), captions of images the
        `images` asset could not get are left out (counted) and the training language also gets the English
        COCO captions of the training images.
        """
        outputs = lane.outputs(settings)
        usable = None
        if reads_images:
            with clear_failures():
                usable = ImageSet.read(require_file(outputs.images_path, f"{lane.name}/images")).usable_ids()

        def one_language(language: str) -> PartitionOutcome:
            with clear_failures():
                source = lane.spec.caption_file(language)
                records = lane.spec.image_records()
                frame, quarantine = read_captions(lane.spec, language, source, records)
            of_unusable_images = 0
            if usable is not None:
                if language == lane.train_language and outputs.train_captions_path.is_file():
                    frame = pl.concat([frame, coco_caption_rows(read_parquet(outputs.train_captions_path), language)])
                of_unusable_images = frame.filter(~pl.col("image_id").is_in(usable)).height
                frame = frame.filter(pl.col("image_id").is_in(usable))
            write_parquet_atomic(frame, outputs.captions_path(language))
            write_parquet_atomic(quarantine, outputs.quarantine_path(language))

            test_ids = {
                record.image_id
                for record in records
                if record.split == "test" and (usable is None or record.image_id in usable)
            }
            uncaptioned = sorted(test_ids - set(frame.filter(pl.col("split") == "test")["image_id"]))
            return PartitionOutcome(
                version=file_version(outputs.captions_path(language)),
                metadata={
                    "dataset": lane.name,
                    "language": language,
                    "source_file": str(source),
                    "source_sha256": sha256_file(source),
                    "dagster/row_count": frame.height,
                    "train_rows": frame.filter(pl.col("split") == "train").height,
                    "test_rows": frame.filter(pl.col("split") == "test").height,
                    "quarantined_rows": quarantine.height,
                    "captions_of_unusable_images": of_unusable_images,
                    "path": dg.MetadataValue.path(str(outputs.captions_path(language))),
                    "preview": markdown_preview(frame.select("image_id", "caption", "split")),
                    **lineage_metadata(
                        CAPTIONS.config(settings, lane, language, {}),
                        {"images": file_version(outputs.images_path)} if reads_images else {},
                        [outputs.captions_path(language), outputs.quarantine_path(language)],
                        settings.root,
                    ),
                },
                checks=[
                    dg.AssetCheckResult(
                        check_name="no_quarantined_rows",
                        passed=quarantine.is_empty(),
                        severity=dg.AssetCheckSeverity.WARN,
                        metadata={"quarantined": quarantine.height, "first": markdown_preview(quarantine)},
                    ),
                    dg.AssetCheckResult(
                        check_name="every_test_image_captioned",
                        passed=not uncaptioned,
                        severity=dg.AssetCheckSeverity.WARN,
                        metadata={"uncaptioned_test_images": len(uncaptioned), "examples": ", ".join(uncaptioned[:5])},
                    ),
                ],
            )

        return materialize_partitions(context, one_language)

    return captions


def coco_caption_rows(train_captions: pl.DataFrame, language: str) -> pl.DataFrame:
    """COCO training captions as caption rows (`<lang>:coco:<annotation number>`; source_line = that number)."""
    return train_captions.select(
        (pl.lit(f"{language}:coco:") + pl.col("source_line").cast(pl.String)).alias("caption_id"),
        "image_id",
        "caption",
        pl.lit("").alias("keywords"),
        pl.lit("train").alias("split"),
        "source_line",
    ).cast(CAPTION_SCHEMA)
