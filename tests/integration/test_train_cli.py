"""`nba train` and `nba models` through the real commands, Feast store and MLflow registry:
the first model needs --force; worse parameters do not take champion, better ones do, a
candidate that does not beat the baselines beyond noise does not, and the policy selection
says what it chose and why."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

END = "2026-11-01T00:00:00Z"
GOOD = ["--n-estimators", "150"]
#: Worse parameters: a model whose trees cannot split (every leaf needs more rows than there
#: are) has no effects to act on: it does nothing, which the good model beats.
POOR = ["--n-estimators", "5", "--min-child-samples", "1000000"]


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nba.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **env},
        timeout=600,
    )


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory,
    feature_repo_copier: Callable[[Path, str], Path],
) -> dict[str, str]:
    root = tmp_path_factory.mktemp("train")
    repo = feature_repo_copier(root / "repo", "nba")
    env = {
        "NBA_FEATURE_REPO": str(repo),
        "NBA_MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "NBA_MLFLOW_ARTIFACT_LOCATION": str(root / "artifacts"),
        "RAW": str(root / "raw"),
    }
    sim = run("simulate", "--out", env["RAW"], "--customers", "6000", "--seed", "3",
              "--end", END, env=env)  # fmt: skip
    assert sim.returncode == 0, sim.stderr
    feats = run("features", "--raw", env["RAW"], "--as-of", END, env=env)
    assert feats.returncode == 0, feats.stderr
    return env


def test_models_before_training_is_a_clear_error(env: dict[str, str]) -> None:
    result = run("models", env=env)
    assert result.returncode == 2 and "nba train" in result.stderr
    assert "Traceback" not in result.stderr


def test_score_without_a_champion_is_a_clear_error(env: dict[str, str], tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text("customer_id,decided_at\nC0000001,2026-10-01T00:00:00Z\n")
    result = run("score", "--actions", str(rows), "--out", str(tmp_path / "out.csv"), env=env)
    assert result.returncode == 2 and "nba train --force" in result.stderr
    assert "Traceback" not in result.stderr


def test_gate_keeps_the_better_model(env: dict[str, str]) -> None:
    # The champion comparison alone: the baseline check (below) is off for these four, and the
    # uplift model is the only candidate, so that its parameters decide.
    only_uplift = {**env, "NBA_TRAIN_CANDIDATES": '["s-learner"]'}
    versus_champion = {**only_uplift, "NBA_GATE_BASELINES": "false"}
    first = run("train", "--raw", env["RAW"], *POOR, env=versus_champion)
    assert first.returncode == 0, first.stderr
    out = " ".join(first.stdout.split())
    assert "version 1: not promoted" in out and "--force" in out
    assert "policy value per decision" in out and "oracle" in out

    forced = run("train", "--raw", env["RAW"], *POOR, "--force", env=versus_champion)
    assert forced.returncode == 0, forced.stderr
    assert "version 2: promoted to champion" in forced.stdout

    better = run("train", "--raw", env["RAW"], *GOOD, env=versus_champion)
    assert better.returncode == 0, better.stderr
    assert "version 3: promoted to champion" in better.stdout

    worse = run("train", "--raw", env["RAW"], *POOR, env=versus_champion)
    assert worse.returncode == 0, worse.stderr
    assert "version 4: not promoted" in worse.stdout

    # With the baseline check (the default), the poor parameters do not beat doing nothing or
    # the rule policy beyond noise on the cross-fitted training decisions, so the champion
    # stays and the one line says why.
    judged = run("train", "--raw", env["RAW"], *POOR, env=only_uplift)
    assert judged.returncode == 0, judged.stderr
    said = " ".join(judged.stdout.split())
    assert "policy selection" in said and re.search(r"selected: (rules|none) stays", said)
    assert "version 5: not promoted" in said
    assert "beyond noise" in said and "95% lower bound" in said and "champion v3 kept" in said

    listing = run("models", env=env)
    assert listing.returncode == 0, listing.stderr
    rows = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in listing.stdout.splitlines()
        if line.startswith("│") and line.split("│")[1].strip().isdigit()
    ]
    assert [row[0] for row in rows] == ["5", "4", "3", "2", "1"]  # newest first
    assert [row[0] for row in rows if row[2] == "champion"] == ["3"]


def test_score_with_the_champion(env: dict[str, str], tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text(
        "customer_id,decided_at,decision_id\n"
        "C0000001,2026-10-01T00:00:00Z,x1\n"
        "C0000002,2026-10-02T08:30:00+02:00,x2\n"
        "NEW-VISITOR,2026-10-03T00:00:00Z,x3\n"
    )
    out = tmp_path / "decisions.parquet"
    result = run("score", "--actions", str(rows), "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    import pandas as pd

    decisions = pd.read_parquet(out)
    assert decisions.decision_id.tolist() == ["x1", "x2", "x3"]
    assert set(decisions.action) <= {"promo", "apology_credit", "recognition", "none"}
    new_visitor = decisions.iloc[2]
    assert not new_visitor.features_found and not new_visitor.eligible_promo


def test_train_on_dask(env: dict[str, str], tmp_path: Path) -> None:
    """NBA_TRAIN_ENGINE=dask without a scheduler: `nba train` fits on a LocalCluster it starts
    and stops, and reports as usual (its own registry: the gate test counts versions)."""
    dask_env = {
        **env,
        "NBA_TRAIN_ENGINE": "dask",
        "NBA_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "NBA_MLFLOW_ARTIFACT_LOCATION": str(tmp_path / "artifacts"),
    }
    # Few trees: this checks the wiring; quality against the local engine is test_dask_training's.
    result = run("train", "--raw", env["RAW"], "--n-estimators", "30", "--force", env=dask_env)
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "version 1: promoted to champion" in out and "oracle" in out
    # The workers' LightGBM chatter (ports, ranks) does not reach the user's terminal.
    assert "[LightGBM]" not in result.stdout + result.stderr
