import dagster as dg
import polars as pl

from xlr_pipeline.core.embeddings import vectors_of
from xlr_pipeline.core.head import head_fingerprint, head_from_bytes, project
from xlr_pipeline.core.index import save_index
from xlr_pipeline.core.metrics import flat_ip_index
from xlr_pipeline.core.storage import write_parquet_atomic
from xlr_pipeline.defs.embed import image_embeddings
from xlr_pipeline.defs.lineage import file_version, lineage_metadata
from xlr_pipeline.defs.metadata import file_data_version
from xlr_pipeline.defs.resources import XlrSettings, require_file
from xlr_pipeline.defs.train import projection_head
from xlr_pipeline.defs.versions import ASSET_GROUP, CODE_VERSIONS


@dg.asset(
    deps=[projection_head, image_embeddings],
    group_name=ASSET_GROUP,
    kinds={"faiss"},
    code_version=CODE_VERSIONS["image_index"],
    check_specs=[dg.AssetCheckSpec("indexes_every_test_image", asset="image_index")],
)
def image_index(context: dg.AssetExecutionContext, settings: XlrSettings) -> dg.MaterializeResult:
    """Exact cosine (inner-product) FAISS index over the projected test-split images."""
    head, provenance = head_from_bytes(require_file(settings.head_path, "projection_head").read_bytes())
    images = pl.read_parquet(require_file(settings.image_embeddings_path, "image_embeddings"))
    test = images.filter(pl.col("split") == "test")
    if test.is_empty():
        raise dg.Failure(f"dataset {settings.dataset!r} has no test-split images to index")
    index = flat_ip_index(project(head, vectors_of(test), "image"))
    save_index(index, settings.index_path)
    ids = test.select("image_id", "content_hash").with_columns(pl.lit(provenance["run_id"]).alias("head_run_id"))
    write_parquet_atomic(ids, settings.index_ids_path)
    return dg.MaterializeResult(
        data_version=file_data_version(settings.index_path),
        metadata={
            "run_id": provenance["run_id"],
            "indexed_images": index.ntotal,
            "dim": index.d,
            "index_type": type(index).__name__,
            "path": dg.MetadataValue.path(str(settings.index_path)),
            **lineage_metadata(
                {},
                {"projection_head": head_fingerprint(head), "image_embeddings": file_version(settings.image_embeddings_path)},
            ),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="indexes_every_test_image",
                passed=index.ntotal == test.height,
                metadata={"indexed": index.ntotal, "test_images": test.height},
            )
        ],
    )
