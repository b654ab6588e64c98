"""SALT-style augmentation: deterministic, encoder-induced, and blind to every test caption."""

import numpy as np
import polars as pl
import pytest

from xlr_pipeline.core.training.augment import (
    Lexicon,
    code_switch,
    code_switched_copies,
    english_words,
    mixup,
    mutual_nearest_translations,
    nearest_other_words,
)

pytestmark = pytest.mark.slow  # runs the augmentation asset


def test_mutual_nearest_neighbours_only():
    source = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, -1.0]])
    target = np.array([[1.0, 0.05], [0.05, 1.0], [-1.0, -0.9]])
    pairs = mutual_nearest_translations(["cat", "kitten", "dog", "none"], source, ["katze", "hund", "nichts"], target)
    assert pairs["dog"] == "hund" and pairs["none"] == "nichts"
    assert sum(value == "katze" for value in pairs.values()) == 1  # one of cat/kitten, never both


def test_code_switching_is_seeded_and_keeps_unknown_words():
    lexicon = Lexicon({"red": {"de": "rot", "ja": "赤"}, "apple": {"de": "Apfel", "ja": "りんご"}})
    first = code_switched_copies(["red apple", "green pear", "Red Apple!"], lexicon, switch_ratio=1.0, seed=3)
    assert first == code_switched_copies(["red apple", "green pear", "Red Apple!"], lexicon, switch_ratio=1.0, seed=3)
    assert [copy.index for copy in first] == [0, 2]  # "green pear" has nothing to switch
    for copy in first:
        assert copy.switched in {"rot Apfel", "赤 りんご", "rot Apfel!", "赤 りんご!"} and copy.language in {"de", "ja"}
    assert code_switch("red apple", lexicon, "de", 0.0, np.random.default_rng(0)) == ("red apple",) * 3


def test_the_english_controls_delete_or_substitute_exactly_the_switched_words():
    lexicon = Lexicon({"red": {"de": "rot"}, "apple": {"de": "Apfel"}}, substitutes={"red": "crimson", "apple": "pear"})
    rng = np.random.default_rng(1)
    triples = {code_switch("a red apple, and a red pear", lexicon, "de", 0.5, rng) for _ in range(40)}
    assert ("a rot apple, and a red pear", "a apple, and a red pear", "a crimson apple, and a red pear") in triples
    assert ("a red Apfel, and a rot pear", "a red, and a pear", "a red pear, and a crimson pear") in triples
    for switched, deleted, substituted in triples:
        assert len(deleted.split()) == 7 - sum(word in {"rot", "Apfel"} for word in switched.replace(",", "").split())
        assert len(substituted.split()) == 7  # one English word for each switched one, in the same place
    # nothing left after deleting: the deletion control is the unchanged caption
    assert code_switch("red apple", lexicon, "de", 1.0, rng) == ("rot Apfel", "red apple", "crimson pear")


def test_english_substitutes_are_each_words_nearest_other_word_and_survive_storage():
    pool = ["cat", "kitten", "car", "truck"]
    vectors = np.array([[1.0, 0.1, 0], [0.9, 0.2, 0], [0, 1.0, 0.1], [0.1, 0.9, 0.2]])
    substitutes = nearest_other_words(["cat", "car"], pool, vectors)
    assert substitutes == {"cat": "kitten", "car": "truck"}
    lexicon = Lexicon({"cat": {"de": "Katze"}}, substitutes)
    assert Lexicon.from_frame(lexicon.to_frame()) == lexicon and lexicon.languages == ["de"]
    assert english_words(["A red-apple, 2 apples"]) == ["apple", "apples", "red"]


def test_mixup_stays_on_the_segment_and_unit_length():
    rng = np.random.default_rng(0)
    a, b = np.eye(4, dtype=np.float32)[:2], np.eye(4, dtype=np.float32)[2:]
    mixed = mixup(a, b, alpha=0.4, rng=rng)
    assert np.allclose(np.linalg.norm(mixed, axis=1), 1.0)
    assert np.allclose(mixed[:, [1, 3]][0], 0) and np.allclose(mixed[:, [0, 2]][1], 0)


def test_augmentation_asset_never_reads_test_or_foreign_captions(tmp_path, subset_data_dir, instance):
    """Poison every test caption and every non-English caption; none of it may surface in the augmentation."""
    import shutil

    import dagster as dg

    from xlr_pipeline.defs.experiments import AugmentationConfig
    from xlr_pipeline_tests.conftest import DATASET, op_name, outputs_for, pipeline_for

    data_dir = tmp_path / "data"
    shutil.copytree(subset_data_dir / DATASET, data_dir / DATASET)
    split = dict(pl.read_csv(data_dir / DATASET / "split.csv").select("image_id", "split").iter_rows())
    for path in (data_dir / DATASET / "captions").glob("*.tsv"):
        lines = path.read_text("utf-8").splitlines()
        poisoned = [lines[0]] + [
            f"{f[0]}\tPOISON{path.stem} {f[1]}\t{f[2]}" if path.stem != "en" or split[f[0]] == "test" else line
            for line in lines[1:]
            for f in [line.split("\t")]
        ]
        path.write_text("\n".join(poisoned) + "\n", "utf-8")
    pipeline = pipeline_for(data_dir)
    lane = pipeline.lane(DATASET)
    instance.add_dynamic_partitions(lane.partitions.name, ["en"])
    assets = pipeline.assets()
    assert dg.materialize(assets, selection=[lane.key("captions")], partition_key="en", instance=instance).success
    config = dg.RunConfig(
        ops={
            op_name("text_augmentations"): AugmentationConfig(
                languages=["de", "ja"], words_per_language=300, seeds=[0, 1]
            )
        }
    )
    result = dg.materialize(assets, selection=[lane.key("text_augmentations")], instance=instance, run_config=config)
    assert result.success
    out = pl.read_parquet(outputs_for(data_dir).code_switched_path)
    assert out.height > 10 and set(out["language"]) <= {"de", "ja"}
    assert not out["caption"].str.contains("POISON").any() and not out["original"].str.contains("POISON").any()
    assert not out["english_control"].str.contains("POISON").any()
    assert not out["substitute_control"].str.contains("POISON").any()
    assert (out["substitute_control"] != out["original"]).mean() > 0.9  # the switched words were replaced
    assert set(out["seed"]) == {0, 1}  # one set of copies per seed, drawn independently
    by_seed = [frame.sort("caption_id")["caption"].to_list() for _, frame in out.group_by("seed")]
    assert by_seed[0] != by_seed[1]
    assert set(out["image_id"]).issubset({image_id for image_id, side in split.items() if side == "train"})
