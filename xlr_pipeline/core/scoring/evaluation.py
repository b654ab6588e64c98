"""One evaluation for the chain and the grid: a trained head + per-language test vectors → result rows.

`retrieval_metrics` evaluates one language of the chain's head; every `experiment_grid` cell evaluates
its head on every language. Both call `evaluate_run`, which also evaluates the random-head baseline
(same seed and normalisation) when asked, and returns the warehouse rows with the typed provenance.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

from xlr_pipeline.core.reporting.results import RankRecord, RecallRecord, RunRecord
from xlr_pipeline.core.reporting.warehouse import RANDOM_HEAD_SUFFIX
from xlr_pipeline.core.scoring.metrics import DirectionResult, evaluate_head, random_head_like

if TYPE_CHECKING:
    from xlr_pipeline.core.scoring.hubness import HubnessReduction
    from xlr_pipeline.core.training.head import ProjectionHead

TRAINED, RANDOM = "trained", "random"
# The objective recorded for an identity head: the encoders' own shared space, nothing trained.
ALIGNED_ENCODERS = "aligned_encoders"


@dataclass(frozen=True)
class RunProvenance:
    """What a trained head is and what it was trained from: stored in `head.pt` and in every `runs` row."""

    run_id: str  # the Dagster run that trained the head (a grid cell: `<dagster run id>/<cell>`)
    dataset: str
    image_model: str
    text_model: str
    train_language: str
    train_captions_hash: str
    images_hash: str
    dagster_run_id: str
    augmentation: str = "none"
    train_pairs: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: Mapping) -> RunProvenance:
        """Read back from a saved head; heads saved before `dagster_run_id` was recorded used the run id."""
        known = {field.name for field in fields(cls)}
        values = {key: value for key, value in saved.items() if key in known}
        values.setdefault("dagster_run_id", saved["run_id"])
        return cls(**values)


@dataclass(frozen=True)
class TestQueries:
    """One language's test captions: vectors, and the gallery row of each caption's image (-1: not in it)."""

    vectors: np.ndarray
    labels: np.ndarray
    captions_hash: str


@dataclass(frozen=True)
class Evaluation:
    results: dict[str, dict[str, list[DirectionResult]]]  # language → TRAINED/RANDOM → both directions
    runs: list[RunRecord]
    recall: list[RecallRecord]
    ranks: list[RankRecord]


def evaluate_run(
    head: ProjectionHead,
    provenance: RunProvenance,
    gallery: np.ndarray,
    queries: Mapping[str, TestQueries],
    code_versions: Mapping[str, str],
    evaluating_run_id: str,
    gallery_hash: str,
    with_random_baseline: bool = True,
    hubness: HubnessReduction | None = None,
) -> Evaluation:
    """Evaluate `head` (and its random baseline) on every language of `queries` against the image gallery
    (`gallery`: the raw test-image features, `gallery_hash` their identity), with exact ranks; `hubness`:
    text→image scores rescored against its query bank (default: the head's own)."""
    with_random_baseline = with_random_baseline and not head.is_identity  # nothing trained: no random twin
    hubness = hubness or head.hubness_reduction()
    heads = {TRAINED: head, **({RANDOM: random_head_like(head)} if with_random_baseline else {})}
    run_ids = {TRAINED: provenance.run_id, RANDOM: provenance.run_id + RANDOM_HEAD_SUFFIX}
    from xlr_pipeline.core.training.head import head_description

    config = head_description(head)
    run_fields = {
        "dataset": provenance.dataset,
        "image_model": provenance.image_model,
        "text_model": provenance.text_model,
        "train_language": provenance.train_language,
        "augmentation": provenance.augmentation,
        "head_config": config,
        "seed": config["seed"],
        "code_versions": dict(code_versions),
        "train_captions_hash": provenance.train_captions_hash,
        "images_hash": provenance.images_hash,
        "dagster_run_id": provenance.dagster_run_id,
    }
    objective = ALIGNED_ENCODERS if head.is_identity else config["objective"]
    runs = [RunRecord(run_id=run_ids[TRAINED], objective=objective, baseline_of=None, **run_fields)]
    if with_random_baseline:
        runs.append(
            RunRecord(run_id=run_ids[RANDOM], objective="random_init", baseline_of=provenance.run_id, **run_fields)
        )

    results: dict[str, dict[str, list[DirectionResult]]] = {}
    recall: list[RecallRecord] = []
    ranks: list[RankRecord] = []
    for language, test in queries.items():
        results[language] = {
            name: evaluate_head(model, gallery, test.vectors, test.labels, hubness) for name, model in heads.items()
        }
        for name, directions in results[language].items():
            for result in directions:
                shared = {
                    "run_id": run_ids[name],
                    "dataset": provenance.dataset,
                    "language": language,
                    "split": "test",
                    "direction": result.direction,
                    "n_queries": result.n_queries,
                    "captions_hash": test.captions_hash,
                    "gallery_hash": gallery_hash,
                    "dagster_run_id": evaluating_run_id,
                }
                ranks.append(RankRecord(mean_rank=result.mean_rank, median_rank=result.median_rank, **shared))
                recall.extend(
                    RecallRecord(k=k, recall=value, code_version=code_versions["retrieval_metrics"], **shared)
                    for k, value in result.recall.items()
                )
    return Evaluation(results, runs, recall, ranks)
