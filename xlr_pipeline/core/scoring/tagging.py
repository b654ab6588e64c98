"""Zero-shot multilingual image tagging with the retrieval model, and the translate-the-English-tags baseline.

The paper (Aggarwal, Tambi & Kale, arXiv 2109.07622) uses the English-trained retrieval model for tagging in
any language: a language's tag vocabulary is embedded by the same frozen multilingual text encoder and
projected by the same head, and an image's tags are the vocabulary entries nearest to the projected image.
The alternative it argues against tags in English and translates each tag word by word; here the word
translations are induced without parallel data (mutual nearest neighbours of the frozen encoder between the
English and the target vocabulary's words, as the code-switcher does), so both systems see the same
vocabularies and nothing else.

Metrics per image (ground truth: the image's tags in that language, compared case-insensitively):
precision@k = |top-k ∩ truth| / k, recall@k = |top-k ∩ truth| / |truth|, and average precision over the
whole ranked list, AP = (1/|truth|) Σ_{r: item r is correct} precision@r; mAP is its mean over images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from xlr_pipeline.core.experiments.stats import hierarchical_ci, holm_adjusted, p_value, paired_test
from xlr_pipeline.core.scoring.index import flat_ip_index
from xlr_pipeline.core.training.augment import WORD, Lexicon, code_switch, mutual_nearest_translations

if TYPE_CHECKING:  # torch and FAISS load where tags are ranked
    import faiss

    from xlr_pipeline.core.training.head import ProjectionHead

TAG_SEPARATOR = "|"
METHOD = "zero_shot_head"
BASELINE = "english_then_translate"
TAGGING_KS = (1, 5, 10)
# A tagging difference smaller than this (in the metric's units) counts as no difference, where TOST shows it.
EQUIVALENCE_MARGIN = 0.02


def normalise_tag(tag: str) -> str:
    """What two tags must share to be the same tag: case-folded, whitespace collapsed."""
    return " ".join(tag.casefold().split())


def split_tags(keywords: str) -> list[str]:
    return [" ".join(tag.split()) for tag in keywords.split(TAG_SEPARATOR) if tag.strip()]


def vocabulary_from_keywords(keywords: Sequence[str]) -> list[str]:
    """Every distinct tag (first spelling kept) of a language's keyword lists, sorted for a stable order."""
    seen: dict[str, str] = {}
    for entry in keywords:
        for tag in split_tags(entry):
            seen.setdefault(normalise_tag(tag), tag)
    return sorted(seen.values(), key=normalise_tag)


def ground_truth(captions: pl.DataFrame) -> dict[str, set[str]]:
    """Test image id → its normalised tags in this language (images without tags are left out)."""
    truth: dict[str, set[str]] = {}
    for image_id, keywords in captions.filter(pl.col("split") == "test").select("image_id", "keywords").iter_rows():
        tags = {normalise_tag(tag) for tag in split_tags(keywords or "")}
        if tags:
            truth.setdefault(image_id, set()).update(tags)
    return truth


@dataclass(frozen=True)
class Ranking:
    """For each image (row), vocabulary indices best first and their cosine scores."""

    indices: np.ndarray
    scores: np.ndarray


def rank_tags(
    head: ProjectionHead, image_features: np.ndarray, tag_features: np.ndarray, top: int | None = None
) -> Ranking:
    """Vocabulary entries nearest to each projected image in the shared space (exact inner product, FAISS)."""
    from xlr_pipeline.core.training.head import project

    index: faiss.Index = flat_ip_index(project(head, tag_features, "text"))
    scores, indices = index.search(project(head, image_features, "image"), min(top or index.ntotal, index.ntotal))
    return Ranking(indices, scores)


def induce_tag_lexicon(
    english_vocabulary: Sequence[str], target_vocabulary: Sequence[str], language: str, encode
) -> Lexicon:
    """English word → target word, mutual nearest neighbours of the frozen encoder between the words of the
    two vocabularies (monolingual lists, never aligned pairs)."""
    source = sorted({word for tag in english_vocabulary for word in WORD.findall(tag.casefold())})
    target = sorted({word for tag in target_vocabulary for word in WORD.findall(tag.casefold())})
    pairs = mutual_nearest_translations(source, encode(source), target, encode(target))
    return Lexicon({english: {language: foreign} for english, foreign in pairs.items()})


def translate_tags(english_tags: Sequence[str], lexicon: Lexicon, language: str) -> list[str]:
    """Each English tag translated word by word (untranslatable words stay as they are), normalised."""
    always = np.random.default_rng(0)  # switch_ratio 1: every translatable word is translated
    return [normalise_tag(code_switch(tag, lexicon, language, 1.0, always)[0]) for tag in english_tags]


@dataclass(frozen=True)
class ImageScores:
    """Per-image metrics, aligned with `image_ids`."""

    image_ids: list[str]
    precision: dict[int, np.ndarray]
    recall: dict[int, np.ndarray]
    average_precision: np.ndarray


def score_rankings(
    ranked: Sequence[Sequence[str]], truths: Sequence[set[str]], ks: Sequence[int] = TAGGING_KS
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], np.ndarray]:
    """precision@k, recall@k and AP of each ranked list (normalised tags) against its truth set."""
    precision = {k: np.zeros(len(ranked)) for k in ks}
    recall = {k: np.zeros(len(ranked)) for k in ks}
    average_precision = np.zeros(len(ranked))
    for row, (tags, truth) in enumerate(zip(ranked, truths)):
        hits = np.array([tag in truth for tag in tags], dtype=float)
        cumulative = np.cumsum(hits)
        for k in ks:
            found = cumulative[min(k, len(hits)) - 1] if len(hits) else 0.0
            precision[k][row] = found / k
            recall[k][row] = found / len(truth)
        ranks = np.flatnonzero(hits) + 1
        average_precision[row] = float((cumulative[ranks - 1] / ranks).sum() / len(truth)) if len(ranks) else 0.0
    return precision, recall, average_precision


def evaluate_tags(
    ranked: dict[str, Sequence[str]], truth: dict[str, set[str]], ks: Sequence[int] = TAGGING_KS
) -> ImageScores:
    """Metrics of ranked tag lists (image id → normalised tags, best first) for every image with a truth."""
    image_ids = sorted(truth)
    precision, recall, average_precision = score_rankings(
        [ranked[i] for i in image_ids], [truth[i] for i in image_ids], ks
    )
    return ImageScores(image_ids, precision, recall, average_precision)


def tagging_markdown(
    dataset: str, train_language: str, metrics: pl.DataFrame, tests: pl.DataFrame, seeds: list[int], run_id: str
) -> str:
    """The tagging report: per language and method the headline metrics with CIs, then the paired tests."""

    def cell(row: dict) -> str:
        return f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"

    wanted = [("precision", 1), ("precision", 5), ("recall", 10), ("map", 0)]
    lines = [
        f"# Zero-shot image tagging on {dataset}",
        "",
        f"Head run `{run_id}` (trained on {train_language} only), seeds {seeds}; 95% CIs and paired tests take the image as "
        "the unit and the head's seed as a level (`core/experiments/stats.py`). `zero_shot_head`: the language's own tag vocabulary ranked by the head; "
        "`english_then_translate`: the English tags ranked by the same head, each translated word by word with a "
        "lexicon the frozen encoder induces from the two vocabularies (no parallel data). Matching is exact "
        "after case folding.",
        "",
        "| language | method | tags | P@1 | P@5 | R@10 | mAP |",
        "|---|---|---|---|---|---|---|",
    ]
    for (language, method), group in metrics.sort("language", "method", descending=[False, True]).group_by(
        "language", "method", maintain_order=True
    ):
        by_metric = {(row["metric"], row["k"]): row for row in group.iter_rows(named=True)}
        size = group["vocabulary_size"][0]
        lines.append(f"| {language} | {method} | {size} | " + " | ".join(cell(by_metric[key]) for key in wanted) + " |")
    if tests.height:
        lines += [
            "",
            f"## Paired tests, zero-shot head − baseline (`core/experiments/stats.py`'s paired test: image unit, seeds a level; Holm–Bonferroni over all "
            f"{tests.height} tests of {tests['language'].n_unique()} languages × {tests.height // max(tests['language'].n_unique(), 1)} metrics; "
            f"'equivalent' where a TOST with margin ±{EQUIVALENCE_MARGIN}, Holm-corrected the same way, shows it)",
            "",
            "| language | metric | difference | p | p (Holm) | TOST p (Holm) | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        shown = pl.col("metric").is_in(["map", "precision"]) & pl.col("k").is_in([0, 1, 5])
        for row in tests.filter(shown).sort("language", "metric", "k").iter_rows(named=True):
            name = "mAP" if row["metric"] == "map" else f"P@{row['k']}"
            lines.append(
                f"| {row['language']} | {name} | {row['difference']:+.4f} | {p_value(row['p_value'])} | {p_value(row['p_holm'])} | {p_value(row['p_equivalence_holm'])} | {row['verdict']} |"
            )
        lines += ["", "Every metric and k, with CIs and tests: DuckDB tables `tagging` and `tagging_tests`."]
    return "\n".join(lines) + "\n"


def tag_image_files(
    head: ProjectionHead, image_features: np.ndarray, vocabulary: Sequence[str], tag_features: np.ndarray, top: int
) -> list[list[tuple[str, float]]]:
    """Top tags with scores for each image (features from the head's own image encoder)."""
    ranking = rank_tags(head, image_features, tag_features, top)
    return [
        [(vocabulary[i], float(s)) for i, s in zip(row, scores)] for row, scores in zip(ranking.indices, ranking.scores)
    ]


SIGNIFICANCE = 0.05


def score_language(
    heads: Sequence[ProjectionHead],
    image_ids: Sequence[str],
    image_features: np.ndarray,
    vocabulary: Sequence[str],
    vocabulary_features: np.ndarray,
    truth: dict[str, set[str]],
    english: tuple[Sequence[str], np.ndarray, Sequence[str]] | None = None,
) -> dict[str, list[ImageScores]]:
    """Per-image scores of each head for one language: METHOD ranks the language's own vocabulary; with
    `english` = (English tags, their features, their translations into this language), BASELINE ranks the
    English tags and reads them translated."""
    scores: dict[str, list[ImageScores]] = {METHOD: []}
    for head in heads:
        own = rank_tags(head, image_features, vocabulary_features).indices
        scores[METHOD].append(
            evaluate_tags({i: [normalise_tag(vocabulary[t]) for t in row] for i, row in zip(image_ids, own)}, truth)
        )
        if english is not None:
            _, english_features, translations = english
            ranked = rank_tags(head, image_features, english_features).indices
            translated = {i: list(dict.fromkeys(translations[t] for t in row)) for i, row in zip(image_ids, ranked)}
            scores.setdefault(BASELINE, []).append(evaluate_tags(translated, truth))
    return scores


def _per_seed_tables(scores: list[ImageScores]) -> dict[tuple[str, int], np.ndarray]:
    """(metric, k) → a (seeds, 1, images) table of per-image values (k = 0 for mAP), for `core/experiments/stats.py`:
    the image is the unit and the head's seed a level."""

    def table(rows: list[np.ndarray]) -> np.ndarray:
        return np.stack(rows)[:, None, :]

    out = {("map", 0): table([s.average_precision for s in scores])}
    for k in TAGGING_KS:
        out[("precision", k)] = table([s.precision[k] for s in scores])
        out[("recall", k)] = table([s.recall[k] for s in scores])
    return out


def compare_methods(per_language: dict[str, dict[str, list[ImageScores]]]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(metrics, tests): every method's metrics with 95% CIs (images and seeds resampled), and METHOD − BASELINE
    per language and metric by `paired_test` (image unit, seeds a level), Holm–Bonferroni over all the tests."""
    metric_rows, test_rows = [], []
    for language, by_method in sorted(per_language.items()):
        tables = {method: _per_seed_tables(scores) for method, scores in by_method.items()}
        for method, metrics in tables.items():
            for (metric, k), values in metrics.items():
                estimate = hierarchical_ci(values)
                metric_rows.append(
                    {
                        "language": language,
                        "method": method,
                        "metric": metric,
                        "k": k,
                        "value": estimate.mean,
                        "ci_low": estimate.low,
                        "ci_high": estimate.high,
                        "n_images": values.shape[2],
                    }
                )
        if BASELINE in tables:
            for (metric, k), values in tables[METHOD].items():
                test = paired_test(values, tables[BASELINE][(metric, k)], EQUIVALENCE_MARGIN)
                test_rows.append(
                    {
                        "language": language,
                        "metric": metric,
                        "k": k,
                        "difference": test.difference,
                        "p_value": test.p_value,
                        "p_equivalence": test.p_equivalence,
                    }
                )
    adjusted_equivalence = holm_adjusted([row["p_equivalence"] for row in test_rows])
    for row, adjusted, equivalent in zip(
        test_rows, holm_adjusted([row["p_value"] for row in test_rows]), adjusted_equivalence
    ):
        row["p_holm"] = adjusted
        row["p_equivalence_holm"] = equivalent
        if adjusted < SIGNIFICANCE:
            row["verdict"] = "head better" if row["difference"] > 0 else "baseline better"
        else:
            row["verdict"] = f"equivalent (±{EQUIVALENCE_MARGIN})" if equivalent < SIGNIFICANCE else "inconclusive"
    test_schema = {
        "language": pl.String,
        "metric": pl.String,
        "k": pl.Int64,
        "difference": pl.Float64,
        "p_value": pl.Float64,
        "p_equivalence": pl.Float64,
        "p_holm": pl.Float64,
        "p_equivalence_holm": pl.Float64,
        "verdict": pl.String,
    }
    return pl.DataFrame(metric_rows), pl.DataFrame(test_rows, schema=test_schema)
