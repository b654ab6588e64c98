from typing import Literal

import dagster as dg
import polars as pl
from pydantic import Field

from xlr_pipeline.core.models.embeddings import vectors_of
from xlr_pipeline.core.scoring.hubness import gallery_offsets, offset_gallery, offset_queries
from xlr_pipeline.core.scoring.index import IndexPlan, build_index, recall_against_exact, save_index
from xlr_pipeline.core.search.limits import DEFAULT_PORT
from xlr_pipeline.core.storage.locations import read_parquet, write_parquet_atomic
from xlr_pipeline.defs.lane import AssetDeclaration, Lane
from xlr_pipeline.defs.lineage import file_version, lineage_metadata
from xlr_pipeline.defs.metadata import file_data_version
from xlr_pipeline.defs.resources import XlrSettings, require_file

RECALL_QUERIES = 1_000


IMAGE_INDEX = AssetDeclaration("image_index", code_version="1", stage="run")


def search_hint(dataset: str, language: str) -> str:
    """How to query the index just built: a command to copy, and the page `xlr serve` opens."""
    return (
        f'`xlr search "a smiling face" --dataset {dataset} --lang {language}` · or `xlr serve`, then '
        f"http://127.0.0.1:{DEFAULT_PORT}/?dataset={dataset}&lang={language}"
    )


class ImageIndexConfig(dg.Config):
    exact_up_to: int = Field(
        IndexPlan().exact_up_to, ge=1, description="Exact (flat) search up to this many images; approximate past it"
    )
    approximate: Literal["ivf", "hnsw"] = Field(
        IndexPlan().approximate, description="Past exact_up_to: FAISS IVF or HNSW"
    )
    ivf_lists: int = Field(IndexPlan().ivf_lists, ge=0, description="IVF cells (0: 4·√n)")
    ivf_probe: int = Field(
        IndexPlan().ivf_probe, ge=1, description="IVF cells searched per query: higher is slower and closer to exact"
    )
    hnsw_neighbours: int = Field(IndexPlan().hnsw_neighbours, ge=2, le=256, description="HNSW graph degree M")
    ef_construction: int = Field(IndexPlan().ef_construction, ge=1)
    ef_search: int = Field(
        IndexPlan().ef_search, ge=1, description="HNSW search breadth: higher is slower and closer to exact"
    )

    def plan(self) -> IndexPlan:
        return IndexPlan(**self.model_dump())


def build_image_index(
    lane: Lane, projection_head: dg.AssetsDefinition, image_embeddings: dg.AssetsDefinition
) -> dg.AssetsDefinition:
    key = lane.key(IMAGE_INDEX.name)

    @dg.asset(
        **IMAGE_INDEX.asset_args(lane),
        deps=[projection_head, image_embeddings],
        kinds={"faiss"},
        # A head retrained from the launchpad carries its index and metrics along (the automation sensor).
        automation_condition=dg.AutomationCondition.eager(),
        check_specs=[dg.AssetCheckSpec("indexes_every_test_image", asset=key)],
    )
    def image_index(
        context: dg.AssetExecutionContext, config: ImageIndexConfig, settings: XlrSettings
    ) -> dg.MaterializeResult:
        """FAISS cosine (inner-product) index over the projected test-split images: exact up to `exact_up_to`
        images, HNSW past it, with its recall@10 against exact search measured on up to 1,000 projected
        train-split images as queries (`recall_at_10_vs_exact`). A head trained with hubness reduction adds each
        image's offset as one more dimension (`core/scoring/hubness.py`), so the index ranks as the metrics do."""
        import faiss

        from xlr_pipeline.core.training.head import head_fingerprint, head_from_bytes, project

        outputs = lane.outputs(settings)
        head, provenance = head_from_bytes(require_file(outputs.head_path, f"{lane.name}/projection_head").read_bytes())
        images = read_parquet(require_file(outputs.image_embeddings_path, f"{lane.name}/image_embeddings"))
        test = images.filter(pl.col("split") == "test")
        if test.is_empty():
            raise dg.Failure(f"dataset {lane.name!r} has no test-split images to index")
        projected = project(head, vectors_of(test), "image")
        hubness = head.hubness_reduction()
        if hubness is not None:  # each image's hubness offset as one more dimension (queries get a 1 there)
            bank = project(head, hubness.bank, "text")
            projected = offset_gallery(projected, gallery_offsets(hubness.method, hubness.parameter, bank, projected))
        index = build_index(projected, config.plan())
        others = images.filter(pl.col("split") != "test").head(RECALL_QUERIES)
        if others.height:
            queries = project(head, vectors_of(others), "image")
            queries = queries if hubness is None else offset_queries(queries)
        else:
            queries = projected[:RECALL_QUERIES]
        recall = 1.0 if isinstance(index, faiss.IndexFlat) else recall_against_exact(index, projected, queries)
        save_index(index, outputs.index_path)
        ids = test.select("image_id", "content_hash").with_columns(pl.lit(provenance["run_id"]).alias("head_run_id"))
        write_parquet_atomic(ids, outputs.index_ids_path)
        return dg.MaterializeResult(
            data_version=file_data_version(outputs.index_path),
            metadata={
                "run_id": provenance["run_id"],
                "indexed_images": index.ntotal,
                "dim": index.d,
                "index_type": type(index).__name__,
                "hubness": "none" if hubness is None else f"{hubness.method} ({hubness.parameter:g})",
                "recall_at_10_vs_exact": recall,
                "index_plan": config.model_dump(),
                "path": dg.MetadataValue.path(str(outputs.index_path)),
                "try_it": dg.MetadataValue.md(search_hint(lane.name, lane.train_language)),
                **lineage_metadata(
                    {},
                    {
                        "projection_head": head_fingerprint(head),
                        "image_embeddings": file_version(outputs.image_embeddings_path),
                    },
                    [outputs.index_path, outputs.index_ids_path],
                    settings.root,
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

    return image_index
