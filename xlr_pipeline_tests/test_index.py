"""The image index: exact below its threshold, IVF or HNSW above, with recall against exact measured."""

import faiss
import numpy as np
import pytest

from xlr_pipeline.core.scoring.index import IndexPlan, build_index, load_index, recall_against_exact, save_index


def _unit(rng, n, d=32):
    vectors = rng.normal(size=(n, d)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_exact_up_to_the_threshold_then_hnsw_with_its_recall_measured(tmp_path):
    rng = np.random.default_rng(0)
    vectors, queries = _unit(rng, 3000), _unit(rng, 200)
    exact = build_index(vectors, IndexPlan(exact_up_to=3000))
    assert isinstance(exact, faiss.IndexFlatIP) and recall_against_exact(exact, vectors, queries) == 1.0
    approximate = build_index(
        vectors, IndexPlan(exact_up_to=2999, approximate="hnsw", hnsw_neighbours=16, ef_search=64)
    )
    assert isinstance(approximate, faiss.IndexHNSWFlat) and approximate.ntotal == 3000
    recall = recall_against_exact(approximate, vectors, queries)
    assert 0.9 <= recall <= 1.0
    poor = build_index(
        vectors, IndexPlan(exact_up_to=1, approximate="hnsw", hnsw_neighbours=4, ef_construction=4, ef_search=1)
    )
    assert recall_against_exact(poor, vectors, queries) < recall  # the measurement sees a worse graph
    save_index(approximate, tmp_path / "index.faiss")
    reloaded = load_index(tmp_path / "index.faiss")
    assert reloaded.hnsw.efSearch == 64 and recall_against_exact(reloaded, vectors, queries) == recall
    with pytest.raises(ValueError, match="must be >= 1"):
        IndexPlan(ef_search=0)


def test_past_the_threshold_an_inverted_file_by_default_whose_recall_grows_with_the_cells_searched(tmp_path):
    rng = np.random.default_rng(1)
    centres = _unit(rng, 50)
    vectors = centres[rng.integers(0, 50, 5000)] + 0.3 * _unit(rng, 5000)  # clustered, as embeddings are
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:200] + 0.05 * _unit(rng, 200)
    index = build_index(vectors, IndexPlan(exact_up_to=4999))
    assert isinstance(index, faiss.IndexIVFFlat) and index.nlist == round(4 * np.sqrt(5000)) and index.nprobe == 32
    recalls = [
        recall_against_exact(build_index(vectors, IndexPlan(exact_up_to=1, ivf_probe=p)), vectors, queries)
        for p in (1, 8, 64)
    ]
    assert recalls[0] < recalls[1] < recalls[2] and recalls[2] >= 0.95
    save_index(index, tmp_path / "ivf.faiss")
    reloaded = load_index(tmp_path / "ivf.faiss")
    assert reloaded.nprobe == 32 and recall_against_exact(reloaded, vectors, queries) == recall_against_exact(
        index, vectors, queries
    )
    with pytest.raises(ValueError, match="approximate must be 'ivf' or 'hnsw'"):
        IndexPlan(approximate="lsh")
