"""nba drift on a simulated disruption wave: drift on the affected features in the wave's week,
none on them in an unshifted control week; end to end through the command, MLflow and the
Evidently workspace.

The world runs 600 days because it starts empty: its 30- to 365-day windows fill up over the
first year, so the reference is taken from the training decisions of the last 180 days (the
steady state), as a production model is trained on recent data.
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
from features.contract import RawData
from features.decision_log import DECISION_SCHEMA, write_part
from monitoring.drift import EXIT_DRIFT, EXIT_OK, DriftConfig
from monitoring.evidently_report import EvidentlyDrift
from monitoring.job import Reference, run_job
from nba.replay import replay, visit_points
from nba.simulate import SimulationConfig, simulate
from serving.guardrails import load_rules
from tests.conftest import REPO_ROOT as PROJECT_ROOT
from training.dataset import assemble, entity_frame
from training.reference import REFERENCE_ARTIFACT, build_reference
from training.tracking import Tracker
from training.uplift import MultiActionUplift

pytestmark = pytest.mark.integration

END = pd.Timestamp("2026-11-01T00:00:00Z")
WAVE = (END - pd.Timedelta(days=7), END)
CONTROL = (END - pd.Timedelta(days=21), END - pd.Timedelta(days=14))
#: What a disruption wave moves (docs/simulator.md), and what stays put in the control week.
AFFECTED = ("f_worst_delay_30d", "f_open_case_count", "f_last_negative_delay_minutes")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    world: RawData = simulate(
        SimulationConfig(end=END, customers=2_000, days=600, seed=3, scenario="disruption_wave")
    )
    data = assemble(world, build_features(world, entity_frame(world)))
    model = MultiActionUplift(method="t", n_estimators=15, min_child_samples=20).fit(
        data.X, data.decisions["action"], data.decisions["propensity"], data.outcomes
    )
    steady = (data.decisions["decided_at"] >= END - pd.Timedelta(days=180)).to_numpy()
    reference = build_reference(data.X[steady].reset_index(drop=True), model)
    rules = load_rules(PROJECT_ROOT / "serving" / "guardrails.yaml")
    log = tmp_path_factory.mktemp("drift") / "log"
    for seq, (name, (start, end)) in enumerate({"wave": WAVE, "control": CONTROL}.items()):
        points = visit_points(world, start, end, intensity=8, seed=seq)
        rows = replay(world, points, model, rules, model_version="nba-uplift/1", id_prefix=name)
        write_part(log, rows.to_dict("records"), DECISION_SCHEMA, "decided_at", seq)
    return {"log": log, "reference": reference, "model": model, "X": data.X}


def drifted(summary: dict[str, Any]) -> dict[str, bool]:
    return {c["column"]: c["drifted"] for c in summary["features"]["columns"]}


def test_control_week_shows_no_drift_on_the_wave_features(setup: dict[str, Any]) -> None:
    job = run_job(
        folder=setup["log"],
        start=CONTROL[0],
        end=CONTROL[1],
        reference=lambda: Reference(setup["reference"], "test"),
        config=DriftConfig(),
        out_dir=setup["log"].parent / "control",
        engine=EvidentlyDrift(),
    )
    flags = drifted(job.summary)
    assert not any(flags[c] for c in AFFECTED), job.summary["features"]["columns"]
    assert job.exit_code == EXIT_OK, job.summary["alerts"]
    assert job.summary["window_rows"] > 1_000
    saved = json.loads(job.summary_file.read_text())
    assert saved["status"] == "ok" and Path(saved["report"]).is_file()


def test_wave_week_drifts_end_to_end(setup: dict[str, Any], tmp_path: Path) -> None:
    # The reference reaches the command as nba train logs it: with the champion's run.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, artifact_location=str(tmp_path / "artifacts"))
    with tracker.start_run():
        tracker.log_parquet(setup["reference"], REFERENCE_ARTIFACT)
        version = tracker.register(tracker.log_model(setup["model"], setup["X"].head(5)), {})
        tracker.gate(version, 0.0, None, force=True)
    env = {
        "NBA_MLFLOW_TRACKING_URI": uri,
        "NBA_MLFLOW_ARTIFACT_LOCATION": str(tmp_path / "artifacts"),
        "NBA_DRIFT_REPORT_DIR": str(tmp_path / "reports"),
        "NBA_EVIDENTLY_WORKSPACE": str(tmp_path / "ws"),
        "NBA_ENVIRONMENT": "test",
    }
    result = subprocess.run(
        [sys.executable, "-m", "nba.cli", "drift", "--log-dir", str(setup["log"]),
         "--start", WAVE[0].isoformat(), "--end", WAVE[1].isoformat()],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=300,
    )  # fmt: skip
    assert result.returncode == EXIT_DRIFT, result.stderr
    assert "features drifted" in result.stdout and "Traceback" not in result.stderr

    (summary_file,) = (tmp_path / "reports").glob("drift-*.json")
    summary = json.loads(summary_file.read_text())
    flags = drifted(summary)
    assert all(flags[c] for c in AFFECTED), summary["features"]["columns"]
    assert summary["reference"] == "nba-uplift/1" and summary["environment"] == "test"
    html = Path(summary["report"]).read_text()
    assert "Dataset Drift" in html or "DatasetDrift" in html

    # Logged as a run of the monitoring experiment, with the summary and the report.
    mlflow = tracker._mlflow()
    runs = mlflow.search_runs(experiment_names=["nba-monitoring"], output_format="list")
    assert len(runs) == 1 and runs[0].data.tags["drift.status"] == "drift"
    assert runs[0].data.metrics["drifted_feature_share"] == summary["features"]["share"]
    names = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(runs[0].info.run_id, "drift")}
    assert {f"drift/{summary_file.name}", f"drift/{Path(summary['report']).name}"} <= names

    # One project for the environment, one snapshot in it, with the dashboard's panels.
    projects = list((tmp_path / "ws").glob("*/metadata.json"))
    assert len(projects) == 1 and json.loads(projects[0].read_text())["name"] == "nba test"
    assert len(list(projects[0].parent.glob("snapshots/*.json"))) == 1
    dashboard = json.loads((projects[0].parent / "dashboard.json").read_text())
    assert "DriftedColumnsCount" in json.dumps(dashboard)
