"""COCO as an image source: the downloader against a real local HTTP server, local layouts, the English
training split, and the whole xtd10 lane on fixture images standing in for some XTD10 ids."""

from __future__ import annotations

import json
import shutil

import dagster as dg
import duckdb
import polars as pl
import pytest

from xlr_pipeline.core.data.coco import CocoImage, coco_train_captions, scan_local_coco, select_train_images
from xlr_pipeline.core.data.download import DownloadItem, DownloadPolicy, Manifest, download_all
from xlr_pipeline.core.data.image_sources import check_image
from xlr_pipeline.core.data.readers import CaptionFileError
from xlr_pipeline.core.storage.locations import sha256_bytes
from xlr_pipeline.defs.train import HeadTrainingConfig
from xlr_pipeline_tests.coco_server import CocoServer, captions_zip, fixture_jpeg
from xlr_pipeline_tests.conftest import SHIPPED, pipeline_for

pytestmark = pytest.mark.slow  # runs the XTD10 lane against a local HTTP server

FAST = DownloadPolicy(workers=3, retries=2, backoff_s=0.01, timeout_s=10)
XTD10_IDS = [
    line.removesuffix(".jpg") for line in (SHIPPED / "xtd10" / "XTD10" / "test_image_names.txt").read_text().split()
]


def _items(server: CocoServer, root, names, check=None):
    return [DownloadItem(name, f"{server.url}/train2014/{name}", root / "train2014" / name, check) for name in names]


def test_downloader_survives_slow_missing_failing_and_truncated_responses(tmp_path):
    behaviours = {
        "ok.jpg": "",
        "slow.jpg": "slow",
        "gone.jpg": "missing",
        "flaky.jpg": "flaky",
        "cut.jpg": "truncated",
        "down.jpg": "broken",
    }
    bodies = {name: fixture_jpeg(seed, size=160) for seed, name in enumerate(behaviours)}
    files = {f"/train2014/{name}": body for name, body in bodies.items()}
    with CocoServer(files, {f"/train2014/{n}": b for n, b in behaviours.items()}) as server:
        log: list[str] = []
        report = download_all(
            _items(server, tmp_path, list(behaviours), check_image), Manifest(tmp_path), FAST, log.append
        )
        assert sorted(report.fetched) == ["cut.jpg", "flaky.jpg", "ok.jpg", "slow.jpg"]
        assert set(report.failed) == {"gone.jpg", "down.jpg"}
        assert "HTTP 404" in report.failed["gone.jpg"] and "HTTP 500" in report.failed["down.jpg"]
        assert server.requests["/train2014/gone.jpg"] == 1  # a 404 is final: no retries
        assert server.requests["/train2014/down.jpg"] == 3  # one try + two retries
        assert any(entry.startswith("/train2014/cut.jpg bytes=") for entry in server.ranges)  # resumed, not restarted
        manifest = json.loads((tmp_path / "manifest.json").read_text())
        for name in report.fetched:
            assert (tmp_path / "train2014" / name).read_bytes() == bodies[name]
            assert manifest[f"train2014/{name}"] == {
                "size": len(bodies[name]),
                "sha256": sha256_bytes(bodies[name]),
                "url": f"{server.url}/train2014/{name}",
            }
        assert not list(tmp_path.rglob("*.part")) or {p.name for p in tmp_path.rglob("*.part")} <= {"down.jpg.part"}
        assert any("gave up on gone.jpg" in line for line in log) and any("downloads done" in line for line in log)

        before = sum(server.requests.values())
        again = download_all(
            _items(server, tmp_path, sorted(report.fetched), check_image), Manifest(tmp_path), FAST, log.append
        )
        assert sorted(again.already_there) == sorted(report.fetched) and sum(server.requests.values()) == before


def test_interrupted_download_resumes_with_a_range_request(tmp_path):
    body = fixture_jpeg(7, size=200)
    with CocoServer({"/train2014/a.jpg": body}) as server:
        (tmp_path / "train2014").mkdir()
        (tmp_path / "train2014" / "a.jpg.part").write_bytes(body[:1000])  # what an interrupted run left
        report = download_all(
            _items(server, tmp_path, ["a.jpg"], check_image), Manifest(tmp_path), FAST, lambda _: None
        )
    assert report.fetched == ["a.jpg"] and report.bytes_fetched == len(body) - 1000
    assert server.ranges == ["/train2014/a.jpg bytes=1000-"]
    assert (tmp_path / "train2014" / "a.jpg").read_bytes() == body


def test_a_download_that_does_not_decode_is_never_put_in_place(tmp_path):
    with CocoServer({"/train2014/bad.jpg": b"<html>rate limited</html>"}) as server:
        report = download_all(
            _items(server, tmp_path, ["bad.jpg"], check_image), Manifest(tmp_path), FAST, lambda _: None
        )
    assert "unusable" in report.failed["bad.jpg"] and not (tmp_path / "train2014" / "bad.jpg").exists()


def test_invalid_download_policy_is_refused():
    with pytest.raises(ValueError, match="workers ≥ 1"):
        DownloadPolicy(workers=0)


def test_local_coco_layouts_are_all_found(tmp_path):
    (tmp_path / "split" / "train2014").mkdir(parents=True)
    (tmp_path / "split" / "val2014").mkdir()
    (tmp_path / "split" / "train2014" / "COCO_train2014_000000061844.jpg").write_bytes(b"x")
    (tmp_path / "split" / "val2014" / "COCO_val2014_000000127068.jpg").write_bytes(b"x")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "COCO_val2014_000000127068.jpg").write_bytes(b"x")
    (tmp_path / "c2017" / "val2017").mkdir(parents=True)
    (tmp_path / "c2017" / "val2017" / "000000127068.jpg").write_bytes(b"x")
    (tmp_path / "c2017" / "val2017" / "notes.txt").write_bytes(b"x")
    assert set(scan_local_coco(tmp_path / "split")) == {61844, 127068}
    assert set(scan_local_coco(tmp_path / "flat")) == {127068}
    assert scan_local_coco(tmp_path / "c2017") == {127068: tmp_path / "c2017" / "val2017" / "000000127068.jpg"}


def test_coco_ids_map_to_urls_and_layout(tmp_path):
    image = CocoImage.parse("COCO_val2014_000000127068")
    assert (
        image.url("http://images.cocodataset.org/")
        == "http://images.cocodataset.org/val2014/COCO_val2014_000000127068.jpg"
    )
    assert image.download_path(tmp_path) == tmp_path / "val2014" / "COCO_val2014_000000127068.jpg"
    with pytest.raises(ValueError, match="not a COCO 2014 image id"):
        CocoImage.parse("1f600")


def test_training_images_exclude_the_test_images_and_grow_by_extension():
    candidates = [f"COCO_train2014_{n:012d}" for n in range(200)]
    excluded = set(candidates[:50])
    small, large = select_train_images(candidates, excluded, 20), select_train_images(candidates, excluded, 60)
    assert len(small) == 20 and len(large) == 60 and set(small) <= set(large) and not excluded & set(large)
    assert select_train_images(list(reversed(candidates)), excluded, 20) == small  # file order does not matter
    assert len(select_train_images(candidates, excluded, 1000)) == 150


def coco_captions_document(train_numbers: list[int]) -> dict:
    images = [{"id": n, "file_name": f"COCO_train2014_{n:012d}.jpg"} for n in train_numbers]
    images.append({"id": 127068, "file_name": "COCO_val2014_000000127068.jpg"})
    annotations = [
        {"id": 10 * n + k, "image_id": n, "caption": f"  Photo {n} number {k}\n"}
        for n in train_numbers
        for k in range(2)
    ]
    annotations += [
        {"id": 1, "image_id": 127068, "caption": "a val image"},
        {"id": 2, "image_id": 99, "caption": "unknown"},
        {"id": 3, "image_id": train_numbers[0], "caption": "   "},
    ]
    return {"images": images, "annotations": annotations}


def test_coco_training_captions_keep_only_train2014_and_name_rejected_annotations(tmp_path):
    path = tmp_path / "captions_train2014.json"
    path.write_text(json.dumps(coco_captions_document([5, 6])))
    captions, rejected = coco_train_captions(path)
    assert captions["caption"].to_list() == [
        "Photo 5 number 0",
        "Photo 5 number 1",
        "Photo 6 number 0",
        "Photo 6 number 1",
    ]
    assert set(captions["image_id"]) == {"COCO_train2014_000000000005", "COCO_train2014_000000000006"}
    reasons = dict(zip(rejected["source_line"], rejected["reason"]))
    assert reasons[5] == "COCO_val2014_000000127068 is not a train2014 image"
    assert "image_id 99" in reasons[6] and reasons[7] == "empty caption"
    path.write_text('{"images": [}')
    with pytest.raises(CaptionFileError, match="captions_train2014.json:1"):
        coco_train_captions(path)


def _xtd10_fixture(tmp_path, n_downloadable: int, n_local: int):
    """A data dir with the shipped xtd10 captions; a COCO server holding fixture images for some XTD10 ids
    (train2014 and val2014 ones) and a captions archive; a local 2017-style COCO folder holding others."""
    data_dir = tmp_path / "data"
    shutil.copytree(SHIPPED / "xtd10", data_dir / "xtd10")
    served = XTD10_IDS[790 : 790 + n_downloadable]  # both sides of line 800: train2014 and val2014 files
    local = XTD10_IDS[:n_local]
    train_numbers = list(range(1, 31)) + [CocoImage.parse(XTD10_IDS[0]).number]  # one XTD10 image among them
    files = {f"/{CocoImage.parse(i).split}/{i}.jpg": fixture_jpeg(k) for k, i in enumerate(served)}
    files |= {f"/train2014/COCO_train2014_{n:012d}.jpg": fixture_jpeg(1000 + n) for n in train_numbers}
    files["/annotations/annotations_trainval2014.zip"] = captions_zip(coco_captions_document(train_numbers))
    coco_dir = tmp_path / "coco2017"
    (coco_dir / "val2017").mkdir(parents=True)
    for k, image_id in enumerate(local):
        (coco_dir / "val2017" / f"{CocoImage.parse(image_id).number:012d}.jpg").write_bytes(fixture_jpeg(5000 + k))
    behaviours = {
        f"/{CocoImage.parse(served[0]).split}/{served[0]}.jpg": "flaky",
        f"/{CocoImage.parse(served[1]).split}/{served[1]}.jpg": "truncated",
        f"/{CocoImage.parse(served[2]).split}/{served[2]}.jpg": "slow",
    }
    return data_dir, coco_dir, CocoServer(files, behaviours), served, local


def _materialize(pipeline, instance, asset, partition=None, run_config=None):
    return dg.materialize(
        pipeline.assets(),
        selection=[pipeline.lane("xtd10").key(asset)],
        partition_key=partition,
        instance=instance,
        run_config=run_config,
    )


def test_xtd10_lane_runs_end_to_end_on_the_images_it_can_get(tmp_path):
    data_dir, coco_dir, server, served, local = _xtd10_fixture(tmp_path, n_downloadable=24, n_local=8)
    languages = ["en", "de", "ja"]
    with server, dg.instance_for_test() as instance:
        pipeline = pipeline_for(
            data_dir,
            coco_dir=str(coco_dir),
            coco_download=True,
            coco_image_url=server.url,
            coco_annotations_url=f"{server.url}/annotations/annotations_trainval2014.zip",
            coco_train_images=25,
            download_backoff_s=0.01,
        )
        instance.add_dynamic_partitions("xtd10_languages", languages)
        images = _materialize(pipeline, instance, "images")
        metadata = images.asset_materializations_for_node("xtd10__images")[0].metadata
        assert metadata["usable"].value == 24 + 8 + 25 and metadata["missing"].value == 1000 - 32
        assert metadata["coco_train_images_chosen"].value == 25 and metadata["coco_train_captions"].value == 50
        assert metadata["coco_train_captions_rejected"].value == 3 and metadata["downloaded"].value == 24 + 25
        image_set = pl.read_parquet(pipeline.settings.outputs("xtd10").images_path)
        train_ids = set(image_set.filter(pl.col("split") == "train")["image_id"])
        assert not train_ids & set(XTD10_IDS)  # the XTD10 image among COCO's training captions is never trained on
        usable_test = set(image_set.filter((pl.col("split") == "test") & (pl.col("status") == "ok"))["image_id"])
        assert usable_test == set(served) | set(local)
        assert server.requests["/annotations/annotations_trainval2014.zip"] == 1

        for language in languages:
            _materialize(pipeline, instance, "captions", language)
        _materialize(pipeline, instance, "image_embedding_shards")
        _materialize(pipeline, instance, "image_embeddings")
        for language in languages:
            _materialize(pipeline, instance, "text_embeddings", language)
        head = dg.RunConfig(ops={"xtd10__projection_head": HeadTrainingConfig(epochs=5, seed=0)})
        _materialize(pipeline, instance, "projection_head", run_config=head)
        _materialize(pipeline, instance, "image_index")
        for language in languages:
            result = _materialize(pipeline, instance, "retrieval_metrics", language)
            assert result.success
        english = pl.read_parquet(pipeline.settings.outputs("xtd10").captions_path("en"))
        assert english.filter(pl.col("split") == "train").height == 50
        assert english.filter(pl.col("split") == "test").height == 32
        german = pl.read_parquet(pipeline.settings.outputs("xtd10").captions_path("de"))
        assert set(german["image_id"]) == usable_test
        with duckdb.connect(str(pipeline.settings.results_db), read_only=True) as connection:
            evaluated = connection.execute(
                "SELECT language, min(n_queries), max(n_queries) FROM recall WHERE dataset = 'xtd10' "
                "AND direction = 'text_to_image' GROUP BY language ORDER BY language"
            ).fetchall()
        assert evaluated == [(language, 32, 32) for language in sorted(languages)]  # exactly the images it could get

        requests_before = sum(server.requests.values())
        _materialize(pipeline, instance, "images")  # everything fetched is reused; only the missing are retried
        assert sum(server.requests.values()) - requests_before == 1000 - 32
