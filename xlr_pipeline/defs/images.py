import dagster as dg
import polars as pl

from xlr_pipeline.core.data.datasets import DatasetError
from xlr_pipeline.core.data.image_sources import ContentHashes, folders_fingerprint, locate_images, resolve_images
from xlr_pipeline.core.data.readers import ImagesNotAvailable
from xlr_pipeline.core.storage.locations import read_parquet, sha256_file, write_parquet_atomic
from xlr_pipeline.defs.lane import AssetDeclaration, Lane
from xlr_pipeline.defs.lineage import lineage_metadata
from xlr_pipeline.defs.metadata import PROGRESS, file_data_version, markdown_preview
from xlr_pipeline.defs.resources import XlrSettings, clear_failures


def _images_config(settings: XlrSettings, lane: Lane, partition: str | None, head_config: dict) -> dict:
    """The image list, where images are looked for (by names, sizes and times of the files there) and the
    COCO options. A COCO-sourced dataset with no test image on disk and downloads off cannot run: an error."""
    spec = lane.spec
    coco = settings.coco_source(spec)
    folders = settings.image_folders(spec)
    config = {
        "dataset": spec.name,
        "image_list_sha256": sha256_file(spec.image_list_path),
        "files": folders_fingerprint(
            folders, settings.root, ContentHashes(settings.root / "cache" / "file_hashes.sqlite")
        ),
    }
    if coco is not None:
        config |= {
            "coco_train_images": settings.train_image_count(spec.coco_train_images),
            "coco_download": coco.download,
        }
        if not coco.download:
            tests = [record for record in spec.image_records() if record.split == "test"]
            if not locate_images(tests, spec.images_dir, coco):
                raise ImagesNotAvailable(
                    f"no {spec.name} test image in {', '.join(map(str, folders))}: "
                    f"`xlr run --dataset {spec.name} --download`, or point --coco-dir (XLR_COCO_DIR) at a COCO folder"
                )
    elif not spec.images_dir.is_dir():
        raise DatasetError(f"{spec.images_dir}: images folder not found for dataset {spec.name!r}")
    return config


IMAGES = AssetDeclaration("images", code_version="2", stage="run", config=_images_config)


def build_images(lane: Lane) -> dg.AssetsDefinition:
    key = lane.key(IMAGES.name)

    @dg.asset(
        **IMAGES.asset_args(lane),
        kinds={"parquet"},
        check_specs=[
            dg.AssetCheckSpec("all_images_usable", asset=key, description="Every listed image is on disk and decodes")
        ],
    )
    def images(context: dg.AssetExecutionContext, settings: XlrSettings) -> dg.MaterializeResult:
        """The dataset's images: found in its folder (COCO-sourced datasets also in a local COCO folder in any
        usual layout), downloaded when allowed, size + sha256 + decode check per file.

        COCO-sourced datasets (XTD10) add English COCO train2014 images and their captions for training,
        never one of the test images. An image file that is there but cannot be decoded stops the lane, naming it; a
        listed image that is not found (e.g. a COCO file not downloaded) is a row naming it and why, downstream
        assets use the usable ones and the count is reported here.
        """
        outputs = lane.outputs(settings)

        def log(message: str) -> None:
            context.log.info(message)
            PROGRESS.info(f"{lane.name} images: {message}")

        previous = read_parquet(outputs.images_path) if outputs.images_path.is_file() else None
        with clear_failures():
            resolved = resolve_images(
                lane.spec,
                settings.coco_source(lane.spec),
                settings.train_image_count(lane.spec.coco_train_images),
                settings.coco_annotations_url,
                previous,
                settings.root,
                log,
            )
            frame = resolved.image_set
            broken = frame.filter(pl.col("status") == "undecodable")
            if broken.height:  # a file that is there but cannot be read is never silently left out
                raise DatasetError(
                    f"{lane.name}: {broken.height} listed image(s) cannot be decoded — "
                    + "; ".join(broken["detail"].head(3).to_list())
                    + ": replace them or remove them from the image list"
                )
            usable_test = frame.filter((pl.col("status") == "ok") & (pl.col("split") == "test")).height
            if not usable_test:
                raise DatasetError(
                    f"{lane.name}: none of the {frame.filter(pl.col('split') == 'test').height} test images is usable "
                    f"(looked in {', '.join(map(str, settings.image_folders(lane.spec)))}); "
                    f"first: {frame.filter(pl.col('status') != 'ok').head(3).select('image_id', 'detail').rows()}"
                )
        written = [outputs.images_path]
        write_parquet_atomic(frame, outputs.images_path)
        if resolved.train_captions is not None:
            write_parquet_atomic(resolved.train_captions, outputs.train_captions_path)
            write_parquet_atomic(resolved.rejected_train_captions, outputs.train_captions_rejected_path)
            written += [outputs.train_captions_path, outputs.train_captions_rejected_path]
        unusable = frame.filter(pl.col("status") != "ok")
        counts = frame.group_by("split", "status").len().sort("split", "status")
        metadata = {
            "dataset": lane.name,
            "listed": frame.height,
            "usable": frame.height - unusable.height,
            "missing": frame.filter(pl.col("status") == "missing").height,
            "undecodable": frame.filter(pl.col("status") == "undecodable").height,
            "by_split_and_status": markdown_preview(counts, rows=20),
            "dagster/row_count": frame.height,
            "path": dg.MetadataValue.path(str(outputs.images_path)),
        }
        if resolved.train_captions is not None:
            chosen = frame.filter(pl.col("split") == "train").height
            metadata |= {
                "coco_train_images_requested": resolved.requested_train_images,
                "coco_train_images_chosen": chosen,
                "coco_train_captions": resolved.train_captions.height,
                "coco_train_captions_rejected": resolved.rejected_train_captions.height,
            }
        if resolved.downloads is not None:
            metadata |= {
                "downloaded": len(resolved.downloads.fetched),
                "download_failures": len(resolved.downloads.failed),
                "download_retries": resolved.downloads.retries,
                "downloaded_mb": round(resolved.downloads.bytes_fetched / 1e6, 1),
            }
        metadata |= lineage_metadata(IMAGES.config(settings, lane, None, {}), {}, written, settings.root)
        return dg.MaterializeResult(
            data_version=file_data_version(outputs.images_path),
            metadata=metadata,
            check_results=[
                dg.AssetCheckResult(
                    check_name="all_images_usable",
                    passed=unusable.is_empty(),
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={
                        "unusable": unusable.height,
                        "first": markdown_preview(unusable.select("image_id", "split", "status", "detail"), rows=10),
                    },
                )
            ],
        )

    return images
