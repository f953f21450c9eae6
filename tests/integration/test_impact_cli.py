"""The loop closed on a small simulated world: a model decides (replayed, with the global control
group), its decisions' consequences are drawn from the simulator's causal model, ``nba outcomes``
turns the log into raw actions and outcomes, a second model trains on them, and ``nba impact``
reports the value against the control group (JSON keys of cli.md 1.1, HTML report, MLflow run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from features.build import build_features
from features.contract import load_raw, write_raw
from features.decision_log import DECISION_SCHEMA, write_part
from nba.replay import act_out, replay, visit_points
from nba.simulate import SimulationConfig, simulate
from serving.guardrails import load_rules
from serving.holdout import Holdout
from tests.conftest import REPO_ROOT
from training.dataset import assemble, entity_frame
from training.uplift import MultiActionUplift

pytestmark = pytest.mark.integration

END = pd.Timestamp("2026-11-01T00:00:00Z")
CONFIG = SimulationConfig(end=END, customers=2_000, days=400, seed=5)
REPLAY = (END - pd.Timedelta(days=31 + 42), END - pd.Timedelta(days=31))


def nba(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nba.cli", *args],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=300,
    )  # fmt: skip


def fit(world: Any) -> MultiActionUplift:
    data = assemble(world, build_features(world, entity_frame(world)))
    return MultiActionUplift(method="t", n_estimators=15, min_child_samples=20).fit(
        data.X, data.decisions["action"], data.decisions["propensity"], data.outcomes
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("impact")
    world = simulate(CONFIG)
    model = fit(world)
    rules = load_rules(REPO_ROOT / "serving" / "guardrails.yaml")
    points = visit_points(world, REPLAY[0], REPLAY[1], intensity=4, seed=1)
    # A large control group so that a small world has enough of it.
    rows = replay(world, points, model, rules, model_version="nba-uplift/1",
                  holdout=Holdout(share=0.3, salt="t"))  # fmt: skip
    log = root / "log"
    write_part(log, rows.to_dict("records"), DECISION_SCHEMA, "decided_at", 0)
    acted, _ = act_out(world, CONFIG, rows, seed=2)
    raw = root / "raw"
    write_raw(acted, raw)
    env = {
        "NBA_DECISION_LOG_DIR": str(log),
        "NBA_MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "NBA_MLFLOW_ARTIFACT_LOCATION": str(root / "artifacts"),
        "NBA_IMPACT_REPORT_DIR": str(root / "reports"),
        "NBA_EVIDENTLY_WORKSPACE": str(root / "evidently"),
        "NBA_ENVIRONMENT": "test",
    }
    return {"root": root, "raw": raw, "log": log, "rows": rows, "env": env, "world": world}


def test_replayed_control_group_is_logged_as_holdout(workspace: dict[str, Any]) -> None:
    rows = workspace["rows"]
    held = rows["policy"] == "holdout"
    assert 0.2 < held.mean() < 0.4
    assert set(rows.loc[held, "action"]) <= {"none", "apology_credit"}
    assert (rows.loc[held, "propensity"] == 1.0).all()
    # The intended action is the policy's choice: the control group would have got marketing.
    assert rows.loc[held, "intended_action"].isin(["promo", "recognition"]).any()
    assert (rows.loc[~held, "intended_action"] == rows.loc[~held, "action"]).all()


def test_outcomes_then_a_second_model_then_impact(workspace: dict[str, Any]) -> None:
    env, raw = workspace["env"], workspace["raw"]
    result = nba("outcomes", "--raw", str(raw), env=env)
    assert result.returncode == 0, result.stderr
    assert "decisions with outcomes added" in result.stdout
    again = load_raw(raw)
    logged = set(workspace["rows"]["decision_id"])
    added = again.actions[again.actions["decision_id"].isin(logged)]
    assert len(added) == len(logged)  # every replayed decision's horizon has passed
    assert set(added["policy"]) == {"nba-uplift/1", "holdout"}
    # (Running it again adds nothing: tests/unit/test_impact.py, test_raw_rows_merge_once.)

    # Closing the loop: a second model learns from the first one's logged decisions.
    data = assemble(again, build_features(again, entity_frame(again)))
    assert data.decisions["decision_id"].isin(logged).sum() == len(logged)
    second = MultiActionUplift(method="t", n_estimators=10, min_child_samples=20).fit(
        data.X, data.decisions["action"], data.decisions["propensity"], data.outcomes
    )
    assert second.predict_effects(data.X.head(3))["converted"].shape[0] == 3

    summary_file = workspace["root"] / "summary.json"
    result = nba("impact", "--raw", str(raw), "--since", "8w", "--json", str(summary_file),
                 env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(summary_file.read_text())
    assert {"decisions", "holdout_decisions", "incremental_net_value_per_decision", "by_action",
            "by_week"} <= set(summary)  # fmt: skip
    overall = summary["incremental_net_value_per_decision"]
    assert overall["ci95"][0] <= overall["estimate"] <= overall["ci95"][1]
    assert summary["decisions"] + summary["holdout_decisions"] == len(logged)
    for block in summary["by_action"].values():
        assert set(block) == {"decisions", "incremental_net_value_per_decision"}
    assert all(set(w) >= {"week", "decisions", "estimate", "ci95"} for w in summary["by_week"])
    (html,) = (workspace["root"] / "reports").glob("impact-*.html")
    assert "Does next-best-action pay?" in html.read_text()
    shot = screenshot(html, workspace["root"] / "impact.png")
    if shot is not None:  # every chart decoded and drawn
        widths, png = shot
        assert len(widths) == 4 and min(widths) > 300 and png.stat().st_size > 50_000
    # The MLflow run and the Evidently dashboard's impact panels.
    import mlflow
    from evidently.ui.workspace import Workspace

    from monitoring.evidently_report import IMPACT_TITLE

    (project,) = Workspace(str(workspace["root"] / "evidently")).list_projects()
    assert IMPACT_TITLE in [p.title for p in project.dashboard.model().panels]
    mlflow.set_tracking_uri(env["NBA_MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["nba-monitoring"])
    assert runs["metrics.impact.per_decision"].iloc[0] == pytest.approx(overall["estimate"])


def screenshot(html: Path, png: Path) -> tuple[list[int], Path] | None:
    """The report in headless Chromium: its images' widths and a PNG of the page (None
    without Chromium)."""
    from tests.cdp import CHROMIUM, Chromium

    if CHROMIUM is None:
        return None
    with Chromium(png.parent / "chromium") as browser:
        page = browser.page()
        page.call("Emulation.setDeviceMetricsOverride", width=1000, height=900,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip
        page.open(html.as_uri())
        widths = page.eval("Array.from(document.images).map(i => i.naturalWidth)")
        return list(widths), page.screenshot(png)


def test_impact_without_a_control_group_says_so(workspace: dict[str, Any], tmp_path: Path
                                                ) -> None:  # fmt: skip
    rows = workspace["rows"]
    treated = rows[rows["policy"] != "holdout"]
    log = tmp_path / "log"
    write_part(log, treated.to_dict("records"), DECISION_SCHEMA, "decided_at", 0)
    env = {**workspace["env"], "NBA_DECISION_LOG_DIR": str(log)}
    result = nba("impact", "--raw", str(workspace["raw"]), "--no-mlflow", env=env)
    assert result.returncode == 2
    assert "control group" in result.stderr and "Traceback" not in result.stderr


def test_bad_input_is_one_message(workspace: dict[str, Any], tmp_path: Path) -> None:
    env = workspace["env"]
    for args, says in (
        (("outcomes", "--raw", str(tmp_path / "absent")), "is not a folder"),
        (("impact", "--raw", str(workspace["raw"]), "--horizon", "3x"), "is not a duration"),
        (
            (
                "impact",
                "--raw",
                str(workspace["raw"]),
                "--since",
                "4w",
                "--start",
                "2026-09-01T00:00:00Z",
            ),
            "either --since or --start",
        ),
        (
            ("impact", "--raw", str(workspace["raw"]), "--start", "2026-09-01T00:00:00Z"),
            "go together",
        ),
    ):
        result = nba(*args, env=env)
        assert result.returncode == 2, (args, result.stderr)
        assert says in result.stderr and "Traceback" not in result.stderr
