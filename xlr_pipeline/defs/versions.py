"""Code version of each asset: bump one when its logic changes so Dagster marks it (and downstream) stale.

Stored with every run row, so each number in the results DuckDB says which code produced it.
"""

CODE_VERSIONS = {
    "captions": "1",
    "image_embeddings": "1",
    "text_embeddings": "1",
    "projection_head": "1",
    "image_index": "1",
    "retrieval_metrics": "1",
    "text_augmentations": "1",
    "experiment_grid": "1",
    "grid_report": "1",
}

# One group: the chain is six assets, and the UI collapses graphs that span several groups.
ASSET_GROUP = "cross_lingual_retrieval"
# Experiments (the objective × augmentation × seed grid and its report) run on demand: `xlr grid`.
EXPERIMENT_GROUP = "experiments"
