"""Code version of each asset: bump one when its logic changes so Dagster marks it (and downstream) stale.

Stored with every run row, so each number in the results DuckDB says which code produced it.
"""

CODE_VERSIONS = {
    "images": "2",
    "captions": "3",
    "image_embedding_shards": "1",
    "image_embeddings": "3",
    "text_embeddings": "1",
    "projection_head": "1",
    "image_index": "1",
    "retrieval_metrics": "2",
    "text_augmentations": "3",
    "text_encoder_finetuning": "1",
    "experiment_grid": "7",
    "grid_report": "5",
    "tags": "1",
    "tagging_report": "3",
    "text_alignment": "1",
}
