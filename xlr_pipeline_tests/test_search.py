"""Search with a lane's head and index: `xlr search`, the HTTP API (in process and a real uvicorn), and the page in
a real browser; answers agree with the evaluation's ranks, bad input is a clear 4xx/exit 2, and a retrained head is
served on the next query."""

import io
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from xlr_pipeline.cli import main
from xlr_pipeline.core.search.limits import MAX_QUERY_CHARS, MAX_UPLOAD_BYTES
from xlr_pipeline.core.training.head import head_from_bytes
from xlr_pipeline.defs.train import HeadTrainingConfig
from xlr_pipeline.runner import run_pipeline
from xlr_pipeline.web.app import create_app
from xlr_pipeline_tests.conftest import DATASET, make_emoji_subset, outputs_for, settings_for
from xlr_pipeline_tests.ui_session import CHROMIUM, _stop_group, chromium_page, free_port, poll, screenshot

UNBUILT = "emoji_unbuilt"  # a second dataset in the data dir, never materialized


@pytest.fixture(scope="module")
def searchable(tmp_path_factory, subset_data_dir):
    """The subset's chain and tags materialized (a module-long instance, so a later test can retrain the head)."""
    data_dir = tmp_path_factory.mktemp("search") / "data"
    shutil.copytree(subset_data_dir / DATASET, data_dir / DATASET)
    make_emoji_subset(data_dir, n_train=4, n_test=4, name=UNBUILT)
    with dg.instance_for_test() as instance:
        pipeline = _pipeline(data_dir)
        stages = pipeline.stage_assets("run") | {"tags"}
        run_pipeline(instance, pipeline, [DATASET], {}, stages=stages, log=lambda _: None)
        yield data_dir, instance


def _pipeline(data_dir):
    from xlr_pipeline.defs.pipeline import build_pipeline

    return build_pipeline(settings_for(data_dir))


def _run_id(data_dir: Path) -> str:
    return head_from_bytes(outputs_for(data_dir).head_path.read_bytes())[1]["run_id"]


def _query_ranks(data_dir: Path, language: str) -> pl.DataFrame:
    (path,) = (data_dir / "ranks" / DATASET / _run_id(data_dir)).glob(f"{language}-*.parquet")
    return pl.read_parquet(path).filter(pl.col("direction") == "text_to_image")


def _xlr(data_dir: Path, capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["search", *argv, "--data-dir", str(data_dir)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_every_test_caption_ranks_its_image_where_the_evaluation_does(searchable):
    data_dir, _ = searchable
    service = settings_for(data_dir).search_service()
    for language in ("en", "de", "ja"):
        ranks = _query_ranks(data_dir, language)
        for caption, image_id, rank in ranks.select("caption", "image_id", "rank").iter_rows():
            answer = service.search(caption, DATASET, language, k=100)
            assert [hit.image_id for hit in answer.images].index(image_id) + 1 == rank, (language, caption)
        assert answer.index_type == "IndexFlatIP" and len(answer.images) == 40  # exact: the whole gallery ranked


def test_cli_german_query_finds_the_image_the_evaluation_ranks_first(searchable, capsys):
    data_dir, _ = searchable
    first = _query_ranks(data_dir, "de").filter(pl.col("rank") == 1).row(0, named=True)
    code, out, _ = _xlr(data_dir, capsys, first["caption"], "--dataset", DATASET, "--lang", "de", "--json")
    answer = json.loads(out)
    assert code == 0 and answer["images"][0]["image_id"] == first["image_id"]
    assert answer["head_run_id"] == _run_id(data_dir) and answer["images"][0]["caption"]  # shown in German
    code, out, _ = _xlr(data_dir, capsys, first["caption"], "--dataset", DATASET, "--lang", "de", "--top", "3")
    assert code == 0 and len(out.strip().splitlines()) == 4 and first["image_id"] in out.splitlines()[1]

    image = data_dir / DATASET / "images" / f"{first['image_id']}.png"
    code, out, _ = _xlr(data_dir, capsys, "--image", str(image), "--dataset", DATASET, "--lang", "ja", "--json")
    similar = json.loads(out)
    assert code == 0 and similar["images"][0]["image_id"] == first["image_id"] and similar["images"][0]["score"] > 0.999
    assert len(similar["captions"]) == 5 and len(similar["tags"]) == 10  # the ja tag vocabulary of the tags asset


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["", "--dataset", DATASET], "the query is empty"),
        (["x" * (MAX_QUERY_CHARS + 1), "--dataset", DATASET], f"the limit is {MAX_QUERY_CHARS}"),
        (["Katze", "--dataset", "nope"], "no dataset named 'nope'"),
        (["Katze", "--dataset", DATASET, "--lang", "xx"], "unknown language code 'xx'"),
        (["Katze", "--dataset", DATASET, "--lang", "fr"], "has no captions in 'fr'"),
        (["Katze", "--dataset", UNBUILT], f"run `xlr run --dataset {UNBUILT}` first"),
        (["--image", "missing.png", "--dataset", DATASET], "missing.png: no such image file"),
        (["--dataset", DATASET], "give a query text or --image PATH"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_code_2(searchable, capsys, argv, message):
    code, out, err = _xlr(searchable[0], capsys, *argv)
    assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_k_out_of_range_and_a_file_that_is_not_an_image(searchable, capsys, tmp_path):
    data_dir, _ = searchable
    with pytest.raises(SystemExit) as exited:
        main(["search", "Katze", "--top", "101", "--data-dir", str(data_dir)])
    assert exited.value.code == 2 and "between 1 and 100" in capsys.readouterr().err
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    code, _, err = _xlr(data_dir, capsys, "--image", str(text), "--dataset", DATASET)
    assert code == 2 and f"{text}: not a readable image (unknown image format)" in err


def _png(size=(64, 64), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(searchable):
    return TestClient(create_app(settings_for(searchable[0]).search_service(), DATASET))


def test_api_search_similar_datasets_and_images(searchable, client):
    data_dir, _ = searchable
    listing = client.get("/api/datasets").json()
    by_name = {d["name"]: d for d in listing["datasets"]}
    assert (
        listing["default"] == DATASET
        and by_name[DATASET]["ready"]
        and by_name[DATASET]["languages"] == ["de", "en", "ja"]
    )
    assert not by_name[UNBUILT]["ready"] and "xlr run --dataset" in by_name[UNBUILT]["reason"]
    first = _query_ranks(data_dir, "ja").filter(pl.col("rank") == 1).row(0, named=True)
    answer = client.get("/api/search", params={"q": first["caption"], "lang": "ja", "k": 5}).json()
    assert answer["images"][0]["image_id"] == first["image_id"] and len(answer["images"]) == 5
    assert set(answer["timings_ms"]) == {"encode", "search"}
    shipped = (data_dir / DATASET / "images" / f"{first['image_id']}.png").read_bytes()
    image = client.get(f"/api/image/{DATASET}/{first['image_id']}")
    assert image.status_code == 200 and image.content == shipped
    similar = client.post(
        "/api/similar", files={"file": ("q.png", shipped, "image/png")}, data={"dataset": DATASET, "lang": "de", "k": 3}
    )
    body = similar.json()
    assert (
        similar.status_code == 200
        and body["images"][0]["image_id"] == first["image_id"]
        and body["tags"]
        and body["captions"]
    )
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/api/search", "/api/similar", "/api/datasets"}


def test_api_bad_input_is_a_4xx_that_names_the_problem(client):
    bomb = _png((13_000, 13_000), "1")  # ~20 KB on disk, 169 M pixels decoded
    cases = [
        (client.get("/api/search", params={"q": "  "}), 400, "the query is empty"),
        (client.get("/api/search", params={"q": "x" * (MAX_QUERY_CHARS + 1)}), 400, f"the limit is {MAX_QUERY_CHARS}"),
        (client.get("/api/search"), 400, "q: Field required"),
        (client.get("/api/search", params={"q": "Katze", "k": 0}), 400, "k must be between 1 and 100"),
        (client.get("/api/search", params={"q": "Katze", "k": "many"}), 400, "k: Input should be a valid integer"),
        (client.get("/api/search", params={"q": "Katze", "dataset": "nope"}), 404, "no dataset named 'nope'"),
        (client.get("/api/search", params={"q": "Katze", "lang": "fr"}), 404, "has no captions in 'fr'"),
        (
            client.get("/api/search", params={"q": "Katze", "dataset": UNBUILT}),
            409,
            f"run `xlr run --dataset {UNBUILT}` first",
        ),
        (
            client.post("/api/similar", files={"file": ("a.txt", b"hello", "text/plain")}),
            415,
            "a.txt: not a readable image",
        ),
        (
            client.post("/api/similar", files={"file": ("big.png", b"\0" * (MAX_UPLOAD_BYTES + 1), "image/png")}),
            413,
            "big.png: over",
        ),
        (
            client.post("/api/similar", files={"file": ("bomb.png", bomb, "image/png")}),
            413,
            "13000×13000 = 169,000,000 pixels",
        ),
        (client.post("/api/similar"), 400, "file: Field required"),
        (client.get(f"/api/image/{DATASET}/not-an-image"), 404, "lists no image 'not-an-image'"),
        (client.get(f"/api/image/{DATASET}/..%2F..%2F..%2Fetc%2Fpasswd"), 404, "Not Found"),
    ]
    for response, status, message in cases:
        assert response.status_code == status and message in response.json()["error"], (status, response.text)
    assert len(bomb) < 100_000


def _serve(data_dir: Path, log: Path):
    port = free_port()
    environment = {**os.environ, "XLR_DATA_DIR": str(data_dir)}
    process = subprocess.Popen(
        [sys.executable, "-m", "xlr_pipeline.cli", "serve", "--port", str(port), "--dataset", DATASET],
        env=environment,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    poll(lambda: urllib.request.urlopen(f"{url}/api/datasets", timeout=30).status, lambda s: s == 200, 90, "xlr serve")
    return process, url


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (installed by .ci/run)")
def test_the_page_in_a_browser_finds_images_for_a_japanese_query_and_tags_an_upload(searchable, tmp_path):
    data_dir, _ = searchable
    screenshots = Path(os.environ.get("XLR_SCREENSHOT_DIR") or tmp_path / "screenshots")
    process, url = _serve(data_dir, tmp_path / "serve.log")
    try:
        with chromium_page(tmp_path) as page:
            page.goto(f"{url}/?dataset={DATASET}&lang=ja", wait_until="networkidle")
            page.fill("#query", "笑顔")
            page.press("#query", "Enter")
            page.wait_for_selector("#results figure img")
            page.wait_for_function(
                "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            assert page.locator("#results figure").count() == 20
            assert "head run" in page.inner_text("#status")
            screenshot(page, screenshots / "search_page.png")
            page.set_input_files("#upload", str(data_dir / DATASET / "images" / "1f600.png"))
            page.wait_for_selector("#tags li")
            assert page.locator("#tags li").count() == 10 and page.locator("#captions li").count() == 5
            page.fill("#query", " ")
            page.fill("#query", "x" * (MAX_QUERY_CHARS + 1))
            page.press("#query", "Enter")
            page.wait_for_selector("#status.error")
            assert f"the limit is {MAX_QUERY_CHARS}" in page.inner_text("#status")
    finally:
        _stop_group(process, grace_s=10)


@pytest.mark.slow
def test_a_real_server_answers_from_the_retrained_head_on_the_next_query(searchable, tmp_path):
    data_dir, instance = searchable
    process, url = _serve(data_dir, tmp_path / "serve.log")
    try:
        before = _get(f"{url}/api/search?q=Katze&lang=de&dataset={DATASET}")
        assert before["head_run_id"] == _run_id(data_dir)
        run_pipeline(
            instance,
            _pipeline(data_dir),
            [DATASET],
            {"projection_head": HeadTrainingConfig(seed=7)},
            include_stale=True,
            log=lambda _: None,
        )
        after = _get(f"{url}/api/search?q=Katze&lang=de&dataset={DATASET}")
        assert after["head_run_id"] == _run_id(data_dir) != before["head_run_id"]
        assert [h["image_id"] for h in after["images"]] != [h["image_id"] for h in before["images"]] or not np.allclose(
            [h["score"] for h in after["images"]], [h["score"] for h in before["images"]]
        )
    finally:
        _stop_group(process, grace_s=10)


def test_a_head_with_hubness_reduction_ranks_the_same_in_search_and_evaluation(searchable):
    """Retrained with QB-Norm: the index carries each image's offset, and search still ranks every test caption's
    image where the evaluation (which rescored against the same query bank) does."""
    data_dir, instance = searchable
    config = HeadTrainingConfig(hubness="qb_norm", hubness_parameter=20.0)
    run_pipeline(instance, _pipeline(data_dir), [DATASET], {"projection_head": config}, include_stale=True, log=print)
    head, _ = head_from_bytes(outputs_for(data_dir).head_path.read_bytes())
    reduction = head.hubness_reduction()
    assert reduction is not None and reduction.method == "qb_norm" and len(reduction.bank) > 0
    service = settings_for(data_dir).search_service()
    ranks = _query_ranks(data_dir, "de")
    for caption, image_id, rank in ranks.select("caption", "image_id", "rank").iter_rows():
        answer = service.search(caption, DATASET, "de", k=100)
        assert [hit.image_id for hit in answer.images].index(image_id) + 1 == rank, caption
