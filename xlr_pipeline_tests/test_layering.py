"""The import graph's layering: `core/` is plain science (no Dagster, nothing from the wiring above it), its
package `__init__` files are empty, and the light entry points stay free of torch."""

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "xlr_pipeline" / "core"
UPWARD = (
    "xlr_pipeline.defs",
    "xlr_pipeline.runner",
    "xlr_pipeline.staleness",
    "xlr_pipeline.cli",
    "xlr_pipeline.definitions",
)


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_imports_neither_dagster_nor_the_wiring_above_it():
    offenders = {
        f"{path.relative_to(CORE)}: {name}"
        for path in CORE.rglob("*.py")
        for name in imported_modules(path)
        if name.split(".")[0] in ("dagster", "dagster_webserver") or name.startswith(UPWARD)
    }
    assert not offenders


def test_core_is_in_sub_packages_with_empty_init_files():
    assert [path.name for path in CORE.glob("*.py")] == ["__init__.py"]
    packages = [path for path in CORE.iterdir() if path.is_dir() and path.name != "__pycache__"]
    assert len(packages) >= 5
    assert all((package / "__init__.py").read_text() == "" for package in packages)
