"""Hubness reduction: the offsets are the papers' formulas, ranking with them equals ranking by the rescored
similarity, and a hub that every bank query likes stops winning queries it does not match."""

import numpy as np
import pytest

from xlr_pipeline.core.scoring.hubness import HubnessReduction, gallery_offsets, offset_gallery, offset_queries
from xlr_pipeline.core.scoring.metrics import evaluate_retrieval


def _unit(rng, n, d=16):
    vectors = rng.normal(size=(n, d))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_offsets_are_the_csls_and_inverted_softmax_formulas():
    rng = np.random.default_rng(0)
    bank, gallery, queries = _unit(rng, 50), _unit(rng, 12), _unit(rng, 7)
    similarity = bank @ gallery.T
    csls = gallery_offsets("csls", 5, bank, gallery)
    np.testing.assert_allclose(csls, np.sort(similarity, axis=0)[-5:].mean(axis=0) / 2)
    # CSLS(q, g) = 2 cos(q, g) − r(q) − r(g): per query, the same order as cos(q, g) − r(g)/2
    query_radius = np.sort(queries @ gallery.T, axis=1)[:, -5:].mean(axis=1, keepdims=True)
    full = 2 * (queries @ gallery.T) - query_radius - 2 * csls
    np.testing.assert_array_equal(np.argsort(-full, axis=1), np.argsort(-(queries @ gallery.T - csls), axis=1))
    # QB-Norm's inverted softmax: exp(β s(q, g)) / Σ_b exp(β s(b, g)), ranked per query
    beta = 20.0
    inverted = np.exp(beta * (queries @ gallery.T)) / np.exp(beta * similarity).sum(axis=0)
    offsets = gallery_offsets("qb_norm", beta, bank, gallery)
    np.testing.assert_array_equal(np.argsort(-inverted, axis=1), np.argsort(-(queries @ gallery.T - offsets), axis=1))
    wide_gallery, wide_queries = offset_gallery(gallery, offsets), offset_queries(queries)
    np.testing.assert_allclose(wide_queries @ wide_gallery.T, queries @ gallery.T - offsets, atol=1e-5)


def test_a_hub_stops_taking_queries_it_does_not_match():
    rng = np.random.default_rng(1)
    gallery = _unit(rng, 20, 32)
    hub = gallery[0]  # every query and every bank caption leans towards image 0

    def leaning(images: np.ndarray) -> np.ndarray:
        vectors = 0.7 * images + 0.7 * hub + 0.4 * _unit(rng, len(images), 32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    queries, bank = leaning(gallery[1:]), leaning(gallery[rng.integers(1, 20, 300)])
    labels, gallery_labels = np.arange(1, 20), np.arange(20)
    plain = evaluate_retrieval(gallery, gallery_labels, queries, labels)[0]
    assert plain.recall[1] < 0.5  # the hub takes most queries
    for method, parameter in (("csls", 10), ("qb_norm", 20)):
        offsets = gallery_offsets(method, parameter, bank, gallery)
        reduced = evaluate_retrieval(gallery, gallery_labels, queries, labels, image_offsets=offsets)[0]
        assert offsets.argmax() == 0 and reduced.recall[1] >= plain.recall[1] + 0.3, method


def test_an_unknown_method_or_an_empty_bank_is_refused():
    with pytest.raises(ValueError, match="unknown hubness reduction 'dsl'"):
        HubnessReduction("dsl", 1.0, np.ones((2, 2)))
    with pytest.raises(ValueError, match="non-empty query bank"):
        HubnessReduction("csls", 10, np.zeros((0, 4)))


def test_a_head_trained_with_hubness_reduction_carries_its_query_bank_through_saving_and_evaluation():
    from xlr_pipeline.core.scoring.evaluation import RANDOM, TRAINED, RunProvenance, TestQueries, evaluate_run
    from xlr_pipeline.core.training.configs import HeadConfig
    from xlr_pipeline.core.training.head import head_from_bytes, head_to_bytes, train_head

    rng = np.random.default_rng(2)
    images = rng.normal(size=(40, 12)).astype(np.float32)
    text = (images[:, :10] + 0.3 * rng.normal(size=(40, 10))).astype(np.float32)
    plain = HeadConfig(embed_dim=8, steps=30, batch_size=16)
    reduced = HeadConfig(embed_dim=8, steps=30, batch_size=16, hubness="csls", hubness_parameter=5)
    heads = {config.hubness: train_head(text, images, np.arange(40), config).head for config in (plain, reduced)}
    assert heads["none"].hubness_reduction() is None
    saved, _ = head_from_bytes(head_to_bytes(heads["csls"], {}))
    bank = saved.hubness_reduction().bank
    np.testing.assert_array_equal(bank, text)  # the training captions, raw: projected when ranking
    provenance = RunProvenance("r", "d", "i", "t", "en", "h", "h", "r")
    queries = {"en": TestQueries(text[:20], np.arange(20), "c")}
    evaluations = {
        name: evaluate_run(head, provenance, images[:20], queries, {"retrieval_metrics": "1"}, "r", "g")
        for name, head in (("plain", heads["none"]), ("csls", saved))
    }
    plain_state, saved_state = heads["none"].state_dict(), saved.state_dict()
    assert set(saved_state) - set(plain_state) == {"query_bank"}
    assert all(np.array_equal(plain_state[name], saved_state[name]) for name in plain_state)  # the same training
    csls_ranks = evaluations["csls"].results["en"][TRAINED][0].ranks
    assert not np.array_equal(evaluations["plain"].results["en"][TRAINED][0].ranks, csls_ranks)
    assert RANDOM in evaluations["csls"].results["en"]  # the random twin is rescored against the same bank
