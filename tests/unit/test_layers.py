"""The layers' dependencies point one way: features, memory <- training <- serving <- nba (CLI).

Nothing imports serving or the CLI but the CLI; monitoring measures and may read features and
training; the Feast declarations read only features. Settings are read at the entry points
(nba) and passed down, so no library package imports ``nba.settings``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGES = ("features", "memory", "training", "serving", "monitoring", "nba", "feature_repo")
ALLOWED: dict[str, set[str]] = {
    "features": set(),
    # The customer memory is ground floor beside features: everyone may read it.
    "memory": {"features"},
    "feature_repo": {"features"},
    "training": {"features", "memory"},
    "monitoring": {"features", "training", "memory"},
    "serving": {"features", "training", "memory"},
    "nba": {"features", "training", "serving", "monitoring", "memory"},
}


def imported_packages(package: str) -> dict[str, list[str]]:
    """``{imported project package: [files importing it]}`` for one package's modules."""
    found: dict[str, list[str]] = {}
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                top = name.split(".")[0]
                if top in PACKAGES and top != package:
                    found.setdefault(top, []).append(str(path.relative_to(REPO_ROOT)))
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_dependencies_point_one_way(package: str) -> None:
    wrong = {k: v for k, v in imported_packages(package).items() if k not in ALLOWED[package]}
    assert not wrong, f"{package} imports {wrong}"


def test_the_checker_sees_imports(tmp_path: Path) -> None:
    assert "features" in imported_packages("training")
