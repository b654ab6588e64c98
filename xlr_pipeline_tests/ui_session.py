"""Drive the real Dagster UI: `xlr dev` on 127.0.0.1 and headless Debian Chromium through Playwright.

Shared by the browser test (`test_browser.py`) and `benchmarks/ui_materialize_all.py`. Chromium is the system
package (`/usr/bin/chromium`), started by us and reached over CDP; Playwright never downloads a browser.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps trying to reach Google's hosts (../shared/ENVIRONMENT.md).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
]
VIEWPORT = {"width": 1400, "height": 900}
WIDE_VIEWPORT = {"width": 2000, "height": 1150}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def poll(fetch: Callable[[], Any], ready: Callable[[Any], bool], timeout_s: float, what: str, every_s: float = 1.0):
    """`fetch()` until `ready(answer)`; a server that is not up yet counts as not ready."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = fetch()
            if ready(last):
                return last
        except (OSError, KeyError, TypeError):  # OSError: refused, reset or timed out (URLError is one)
            pass
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; last answer: {last}")


def _stop_group(process: subprocess.Popen, grace_s: float = 20) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass(frozen=True)
class DagsterUI:
    url: str
    process: subprocess.Popen

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", body, {"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        if answer.get("errors"):
            raise AssertionError(f"GraphQL errors: {answer['errors']}")
        return answer["data"]

    def runs(self) -> list[dict]:
        """Every run, newest first: status, start/end (Unix s), the asset names it materializes, its tags."""
        data = self.graphql(
            "{ runsOrError { ... on Runs { results { runId status startTime endTime"
            " assetSelection { path } tags { key value } } } } }"
        )
        return [
            {**run, "assets": sorted(key["path"][-1] for key in run["assetSelection"] or [])}
            for run in data["runsOrError"]["results"]
        ]

    def backfills(self) -> list[dict]:
        data = self.graphql("{ partitionBackfillsOrError { ... on PartitionBackfills { results { id status } } } }")
        return data["partitionBackfillsOrError"]["results"]

    def partitions(self, lane: str) -> list[str]:
        data = self.graphql(
            "query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode { partitionKeys } } }",
            {"key": {"path": [lane, "captions"]}},
        )
        return data["assetNodeOrError"]["partitionKeys"]

    def wait_for_runs(self, done: Callable[[list[dict]], bool], timeout_s: float, what: str) -> list[dict]:
        """Poll until `done(runs)`; fails at once, naming the run, when any run failed."""

        def ready(runs: list[dict]) -> bool:
            failed = [run for run in runs if run["status"] in ("FAILURE", "CANCELED")]
            if failed:
                raise AssertionError(f"run failed while waiting for {what}: {failed[0]}")
            return done(runs)

        return poll(self.runs, ready, timeout_s, what, every_s=2)


@contextmanager
def xlr_dev(data_dir: Path, dagster_home: Path, log_path: Path, lane: str, languages: set[str]) -> Iterator[DagsterUI]:
    """`xlr dev` (webserver + daemon) on a free 127.0.0.1 port with its own DAGSTER_HOME, which xlr itself
    prepares as for a user; ready once the lane's sensor registered `languages`. Stopped on exit, also on
    failure."""
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "XLR_DATA_DIR": str(data_dir)}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "xlr_pipeline.cli", "dev", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        ui = DagsterUI(f"http://127.0.0.1:{port}", process)
        try:
            poll(
                lambda: set(ui.partitions(lane)),
                lambda found: languages <= found,
                180,
                f"the {lane} languages in the UI",
            )
            yield ui
        finally:
            _stop_group(process)


@contextmanager
def chromium_page(artifacts: Path) -> Iterator[Page]:
    """A Playwright page in the system's headless Chromium (connected over CDP). Browser console errors are
    written to `artifacts/browser_console.log`."""
    port = free_port()
    profile = tempfile.mkdtemp(prefix="xlr-chromium-")
    browser_process = subprocess.Popen(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--remote-debugging-port={port}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    console = open(artifacts / "browser_console.log", "w")
    try:
        poll(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=5).status,
            lambda s: s == 200,
            30,
            "Chromium",
        )
        with sync_playwright() as playwright:
            browser = playwright.chromium.connect_over_cdp(f"http://127.0.0.1:{port}")
            context = browser.contexts[0] if browser.contexts else browser.new_context()
            page = context.new_page()
            page.set_viewport_size(VIEWPORT)
            page.set_default_timeout(30_000)
            page.on("console", lambda message: message.type == "error" and console.write(message.text + "\n"))
            try:
                yield page
            finally:
                browser.close()
    finally:
        console.close()
        _stop_group(browser_process, grace_s=5)
        shutil.rmtree(profile, ignore_errors=True)


def open_page(page: Page, url: str) -> None:
    page.goto(url, wait_until="networkidle")
    # A new instance greets the first visit with a newsletter dialog.
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(timeout=3000)
        skip.click()
    except PlaywrightTimeout:
        pass


def group_url(ui: DagsterUI, group: str) -> str:
    return f"{ui.url}/locations/xlr_pipeline/asset-groups/{group}"


def click_materialize_all(page: Page, ui: DagsterUI, group: str) -> float:
    """On the group's lineage page: *Materialize all…* → partitions *All* → *Launch backfill*; the launch time."""
    open_page(page, group_url(ui, group))
    page.get_by_role("button", name="Materialize all…").click()
    dialog = page.locator("[role=dialog]")
    dialog.get_by_role("button", name="All", exact=True).click()
    launched = time.time()
    dialog.get_by_role("button", name="Launch backfill").click()
    dialog.wait_for(state="hidden")
    return launched


def open_launchpad(page: Page, url: str) -> None:
    """An asset's or a group's page → the caret beside *Materialize* (*Materialize all…*) → *Open launchpad*."""
    open_page(page, url)
    page.locator("div:has(> span > button:has-text('Materialize'))").locator(
        "button:has([aria-label=arrow_drop_down])"
    ).first.click()
    page.get_by_text("Open launchpad").click()
    page.locator("[role=dialog] .CodeMirror").first.wait_for()


def set_launchpad_config(page: Page, yaml_text: str) -> None:
    """Replace the launchpad's YAML as a user pasting it would, once the launchpad has loaded."""
    page.locator("[class*=LoadingOverlay]").first.wait_for(state="hidden", timeout=120_000)
    page.locator("[role=dialog] .CodeMirror").first.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(yaml_text)
    time.sleep(1.5)  # the launchpad validates the config on a short debounce


def screenshot(page: Page, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(800)  # let dialogs finish fading in
    page.screenshot(path=str(path))
    return path


def lineage_screenshot(page: Page, ui: DagsterUI, group: str, path: Path) -> Path:
    """The group's graph in a window wide enough for Dagster to draw each node's checks, partitions and kinds."""
    page.set_viewport_size(WIDE_VIEWPORT)
    try:
        open_page(page, group_url(ui, group))
        page.get_by_text("Asset checks").first.wait_for()
        return screenshot(page, path)
    finally:
        page.set_viewport_size(VIEWPORT)
