"""The target diagnostics: nested subsets, the learning curve's step budget, and alignment against transfer on
embeddings whose languages are planted at known distances from English."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from xlr_pipeline.core.experiments.diagnostics import (
    diagnose,
    diagnostics_report,
    doublings_to,
    nested_image_subsets,
)
from xlr_pipeline.core.training.configs import HeadConfig

DIM = 16


def test_subsets_are_nested_seeded_and_cover_all_images_at_one():
    images = [f"img{i}" for i in range(50)]
    subsets = nested_image_subsets(images, [1.0, 0.1, 0.5])
    assert [len(subsets[f]) for f in (0.1, 0.5, 1.0)] == [5, 25, 50]
    assert subsets[0.1] < subsets[0.5] < subsets[1.0] == set(images)
    assert subsets == nested_image_subsets(list(reversed(images)), [0.1, 0.5, 1.0])  # order of input is irrelevant
    with pytest.raises(ValueError, match=r"fractions must lie in \(0, 1\]"):
        nested_image_subsets(images, [0.0, 1.0])


def _planted(noise_by_language: dict[str, float], n_train: int = 120, n_test: int = 40):
    """Images and captions where every caption is its image's vector through one fixed map, plus noise whose scale
    is the language's: English clean, the others further from it the larger their noise."""
    rng = np.random.default_rng(0)
    image_vectors = rng.normal(size=(n_train + n_test, DIM)).astype(np.float32)
    mapping = rng.normal(size=(DIM, DIM)).astype(np.float32)
    ids = [f"img{i}" for i in range(n_train + n_test)]
    splits = ["train"] * n_train + ["test"] * n_test
    images = pl.DataFrame({"image_id": ids, "split": splits, "vector": list(image_vectors)})
    captions = {}
    for language, noise in noise_by_language.items():
        text = image_vectors @ mapping + noise * rng.normal(size=image_vectors.shape).astype(np.float32)
        text /= np.linalg.norm(text, axis=1, keepdims=True)
        captions[language] = pl.DataFrame({"caption_id": ids, "image_id": ids, "split": splits, "vector": list(text)})
    return images, captions


def test_languages_further_from_english_align_and_transfer_worse_and_the_report_says_so():
    noise = {"en": 0.0, "aa": 1.0, "bb": 2.0, "cc": 3.0, "dd": 4.0, "ee": 6.0, "ff": 8.0}
    images, captions = _planted(noise)
    config = HeadConfig(objective="infonce", epochs=20, batch_size=32, learning_rate=3e-3, embed_dim=DIM)
    diagnostics = diagnose(images, captions, "en", config, [0.25, 1.0], [0, 1])

    curve = diagnostics.curve
    assert curve.height == 2 * 2 * len(noise)  # fractions × seeds × languages
    assert sorted(curve["train_pairs"].unique()) == [30, 120]
    alignment = dict(diagnostics.alignment.select("language", "alignment_r1").iter_rows())
    assert alignment["aa"] > alignment["ff"]
    assert diagnostics.rank_correlation > 0.8 and diagnostics.rank_correlation_p < 0.05
    assert diagnostics.slope_per_doubling > 0  # four times the pairs, better English R@1

    english_r1 = curve.filter((pl.col("language") == "en") & (pl.col("fraction") == 1.0))["r1"].mean()
    reachable = english_r1 + diagnostics.slope_per_doubling  # one more doubling at the fitted slope
    report = diagnostics_report(diagnostics, "planted", "en", "infonce", "RUN", reachable, 1.0)
    assert "the gap lies in the frozen text encoder's alignment" in report
    assert f"misses the target {reachable} by" in report and "about 2.0× the training pairs" in report
    assert "further than the curve can be extrapolated" in diagnostics_report(
        diagnostics, "planted", "en", "infonce", "RUN", english_r1 + 5 * diagnostics.slope_per_doubling, 1.0
    )


def test_fewer_than_three_other_languages_give_no_rank_correlation():
    images, captions = _planted({"en": 0.0, "aa": 0.5, "bb": 1.0})
    config = HeadConfig(objective="infonce", steps=10, batch_size=32, embed_dim=DIM)
    diagnostics = diagnose(images, captions, "en", config, [0.5, 1.0], [0])
    assert diagnostics.rank_correlation is None
    in_workers = diagnose(images, captions, "en", config, [0.5, 1.0], [0], processes=2)
    assert in_workers.curve.equals(diagnostics.curve)  # single-threaded heads: the same numbers in worker processes
    assert "too few languages" in diagnostics_report(diagnostics, "planted", "en", "infonce", "RUN", 0.1, 0.1)


def test_doublings_to_a_target():
    assert doublings_to(0.15, 0.10, 0.02) == pytest.approx(2.5)
    assert doublings_to(0.15, 0.20, 0.02) == 0.0
    assert doublings_to(0.15, 0.10, -0.01) is None


def test_the_curve_of_a_keyword_trained_default_counts_the_keyword_pairs_of_each_subset():
    images, captions = _planted({"en": 0.0, "aa": 0.5, "bb": 1.0})
    english_train = captions["en"].filter(pl.col("split") == "train")
    keywords = english_train.head(40).select("caption_id", "vector")  # the first 40 captions have keywords
    config = HeadConfig(objective="infonce", steps=10, batch_size=32, embed_dim=DIM)
    curve = diagnose(images, captions, "en", config, [0.5, 1.0], [0], keywords).curve
    sizes = dict(curve.filter(pl.col("language") == "en").select("train_images", "train_pairs").iter_rows())
    assert sizes[120] == 120 + 40 and 60 < sizes[60] < 60 + 40  # a subset keeps its own captions' keywords only
