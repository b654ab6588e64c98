"""Shared fixtures: small real datasets cut from the shipped emoji_cldr benchmark, temporary Dagster instances."""

from __future__ import annotations

import csv
import os
import shutil
import sys
from pathlib import Path

import dagster as dg
import pytest

from xlr_pipeline.core.models.inference import EncoderRuntime
from xlr_pipeline.core.storage.outputs import DatasetOutputs
from xlr_pipeline.defs.pipeline import Pipeline, build_pipeline
from xlr_pipeline.defs.resources import DEFAULT_DATA_DIR, XlrSettings

SHIPPED = DEFAULT_DATA_DIR
SUBSET_LANGUAGES = ("en", "de", "ja")
DATASET = "emoji_small"  # the name the subset declares: its lane, outputs folder and DuckDB rows


def make_emoji_subset(
    target: Path,
    n_train: int,
    n_test: int,
    languages=SUBSET_LANGUAGES,
    name: str = DATASET,
    first: int = 0,
    n_val: int = 0,
    with_defaults: bool = False,
) -> Path:
    """Copy a deterministic slice of data/emoji_cldr (images, split, captions) into `target`/`name`,
    declared under that name; `first` skips that many train, validation and test images of the shipped split.
    Its `[defaults]` table is dropped unless `with_defaults` (the project's defaults: the fast encoders)."""
    source = SHIPPED / "emoji_cldr"
    dataset = target / name
    (dataset / "images").mkdir(parents=True)
    (dataset / "captions").mkdir()
    with open(source / "split.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    chosen = [
        row
        for split, count in (("train", n_train), ("val", n_val), ("test", n_test))
        for row in [r for r in rows if r["split"] == split][first : first + count]
    ]
    keep = {r["image_id"] for r in chosen}
    with open(dataset / "split.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(chosen)
    for image_id in keep:
        shutil.copyfile(source / "images" / f"{image_id}.png", dataset / "images" / f"{image_id}.png")
    for language in languages:
        lines = (source / "captions" / f"{language}.tsv").read_text("utf-8").splitlines()
        kept = [lines[0]] + [line for line in lines[1:] if line.split("\t", 1)[0] in keep]
        (dataset / "captions" / f"{language}.tsv").write_text("\n".join(kept) + "\n", "utf-8")
    declaration = (source / "dataset.toml").read_text("utf-8").replace('name = "emoji_cldr"', f'name = "{name}"')
    if (
        not with_defaults
    ):  # the project's own defaults (fast encoders, the hinge head) unless a test wants the shipped ones
        declaration = declaration.split("\n[defaults]")[0] + "\n"
    (dataset / "dataset.toml").write_text(declaration, "utf-8")
    return dataset


# Settings of caches that the whole test run shares (in-process settings and `xlr` subprocesses alike, through
# their variables): an encoder is exported once per run, and an image or caption embedded once per run and model,
# not once per test's data dir. A test of a cache itself gives its own (`settings_for(..., embedding_cache_dir=…)`,
# or the variable set to "" for a subprocess: the data dir's own cache).
SHARED_CACHES = {"export_dir": "XLR_EXPORT_DIR", "embedding_cache_dir": "XLR_EMBEDDING_CACHE_DIR"}


@pytest.fixture(scope="session", autouse=True)
def shared_caches(tmp_path_factory, worker_id) -> None:
    """Both caches in one folder of this run, shared by its xdist workers (SQLite caches take concurrent writers;
    an export is written atomically)."""
    run_folder = tmp_path_factory.getbasetemp()
    if worker_id != "master":  # each worker's basetemp is a child of the run's
        run_folder = run_folder.parent
    for name, variable in SHARED_CACHES.items():
        folder = run_folder / f"shared_{name}"
        folder.mkdir(exist_ok=True)
        os.environ[variable] = str(folder)


@pytest.fixture(scope="session", autouse=True)
def one_core_per_worker(worker_id) -> None:
    """Each xdist worker (and every process it starts) on a core of its own when there are enough: every step sizes
    its thread pools from the cores it may use (`available_cores`), so two workers on two cores no longer run four
    torch threads between them (oversubscribed OpenMP pools spin against each other on a busy machine)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if worker_id != "master" and 1 < workers <= len(cores):
        index = int(worker_id.removeprefix("gw"))
        share = len(cores) // workers
        os.sched_setaffinity(0, cores[index * share : (index + 1) * share])
        torch = sys.modules.get("torch")  # imported while collecting: its pool was sized before the affinity
        if torch:
            torch.set_num_threads(share)


@pytest.fixture(scope="session")
def subset_data_dir(tmp_path_factory) -> Path:
    """A data dir holding a 190-image (120 train, 30 validation, 40 test), 3-language emoji dataset (shared,
    read-only by convention)."""
    root = tmp_path_factory.mktemp("data")
    make_emoji_subset(root, n_train=120, n_test=40, n_val=30)
    return root


@pytest.fixture
def fresh_data_dir(tmp_path, subset_data_dir) -> Path:
    """A private copy of the subset data dir that a test may change (bad files, new languages)."""
    target = tmp_path / "data"
    shutil.copytree(subset_data_dir / "emoji_small", target / "emoji_small")
    return target


def settings_for(data_dir: Path, **overrides) -> XlrSettings:
    shared = {name: os.environ.get(variable, "") for name, variable in SHARED_CACHES.items()}
    return XlrSettings(data_dir=str(data_dir), **(shared | overrides))


def shared_runtime() -> EncoderRuntime:
    """The encoder runtime the settings give, so with this run's shared export cache: a test that loads an encoder
    itself never writes exports into the project's data/cache (an export of a test's temporary weights is never
    reused)."""
    return settings_for(SHIPPED).encoder_runtime


def pipeline_for(data_dir: Path, **overrides) -> Pipeline:
    """The code location over `data_dir`: a lane per dataset in it."""
    return build_pipeline(settings_for(data_dir, **overrides))


def outputs_for(data_dir: Path, dataset: str = DATASET) -> DatasetOutputs:
    return settings_for(data_dir).outputs(dataset)


def op_name(asset: str, dataset: str = DATASET) -> str:
    """The op of a lane's asset, as run config and results name it."""
    return f"{dataset}__{asset}"


def location_job(name: str, key: dg.AssetKey) -> dg.JobDefinition:
    """The code location as `dagster` loads it (XLR_* variables), with a job of one asset: what an executor's
    worker processes reconstruct by the module and name of a test's function that returns it."""
    from xlr_pipeline.definitions import defs

    return dg.Definitions.merge(
        defs(), dg.Definitions(jobs=[dg.define_asset_job(name, selection=[key])])
    ).resolve_job_def(name)


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `--dist loadgroup`, tests spread over the xdist workers one by one (two long tests of one file no longer
    queue on one worker), except a file's tests that share a module-scoped fixture: those stay on one worker, so
    the fixture is built once."""
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        definitions = fixtures.name2fixturedefs.values() if fixtures else ()
        if any(definition.scope in ("module", "class") for chain in definitions for definition in chain):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
