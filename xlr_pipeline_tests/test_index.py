"""The image index: exact below its threshold, HNSW above, with recall against exact measured."""

import faiss
import numpy as np
import pytest

from xlr_pipeline.core.index import IndexPlan, build_index, load_index, recall_against_exact, save_index


def _unit(rng, n, d=32):
    vectors = rng.normal(size=(n, d)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_exact_up_to_the_threshold_then_hnsw_with_its_recall_measured(tmp_path):
    rng = np.random.default_rng(0)
    vectors, queries = _unit(rng, 3000), _unit(rng, 200)
    exact = build_index(vectors, IndexPlan(exact_up_to=3000))
    assert isinstance(exact, faiss.IndexFlatIP) and recall_against_exact(exact, vectors, queries) == 1.0
    approximate = build_index(vectors, IndexPlan(exact_up_to=2999, hnsw_neighbours=16, ef_search=64))
    assert isinstance(approximate, faiss.IndexHNSWFlat) and approximate.ntotal == 3000
    recall = recall_against_exact(approximate, vectors, queries)
    assert 0.9 <= recall <= 1.0
    poor = build_index(vectors, IndexPlan(exact_up_to=1, hnsw_neighbours=4, ef_construction=4, ef_search=1))
    assert recall_against_exact(poor, vectors, queries) < recall  # the measurement sees a worse graph
    save_index(approximate, tmp_path / "index.faiss")
    reloaded = load_index(tmp_path / "index.faiss")
    assert reloaded.hnsw.efSearch == 64 and recall_against_exact(reloaded, vectors, queries) == recall
    with pytest.raises(ValueError, match="must be >= 1"):
        IndexPlan(ef_search=0)
