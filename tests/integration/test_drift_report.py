"""The HTML report of nba drift with the real Evidently engine: a header naming the window, the
model and the reference, the sample warning of a small window, integer counts, no "nan", and no
panel for a column that is constant on both sides (the control's uplift)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from features.decision_log import DECISION_SCHEMA, write_part
from monitoring.drift import EXIT_TOO_FEW, DriftConfig, run_drift
from tests.integration.test_workspace_install import NOISE
from tests.unit.test_drift import nba, reference_frame, window_frame

pytestmark = pytest.mark.integration

META = {
    "window_start": "2026-11-01T00:00:00+00:00",
    "window_end": "2026-11-08T00:00:00+00:00",
    "reference": "nba-uplift/3",
    "reference_run": "abc123def4567890",
    "environment": "test",
}


def test_report_header_and_panels(tmp_path: Path) -> None:
    from monitoring.evidently_report import EvidentlyDrift

    ref, cur = reference_frame(1425), window_frame(3)
    for frame in (ref, cur):
        frame[["uplift_none", "value_none"]] = 0.0  # the control's: always 0
    cur["model_version"] = "3"
    result = run_drift(ref, cur, EvidentlyDrift(), DriftConfig(), META)
    assert result.exit_code == EXIT_TOO_FEW
    html_file = tmp_path / "report.html"
    result.run.save_html(html_file, result.summary)
    html = html_file.read_text()

    # The header: window, model served, reference, counts as integers, the verdict.
    assert "nba drift: decision log 2026-11-01 00:00 UTC to 2026-11-08 00:00 UTC" in html
    assert "version 3 (3 decisions)" in html
    assert "nba-uplift/3 (training run abc123def456)" in html
    assert '"1,425"' in html and "1425.0" not in html
    assert "NOT JUDGED: too few decisions" in html
    assert "Too few decisions to judge drift: 3 decisions in the window" in html
    assert "would have alerted: " in html
    # Evidently's drift panels, but none for the constant control columns, nor the float
    # counters and the reference's unknown ("nan") block rates.
    assert "Drift in column 'uplift_promo'" in html
    assert "Drift in column 'uplift_none'" not in html
    assert "Drift in column 'value_none'" not in html
    assert "reference: nan" not in html
    assert "Row count in dataset" not in html
    # ...which stay in the snapshot for the workspace dashboard.
    metrics = json.loads(result.run.snapshot.json())["metrics"]
    kinds = {m["config"]["type"].rsplit(":", 1)[-1] for m in metrics}
    assert {"RowCount", "CategoryCount", "MeanValue", "ValueDrift"} <= kinds


def test_the_command_on_a_small_window_exits_7_and_writes_why(tmp_path: Path) -> None:
    now = pd.Timestamp.now(tz="UTC")
    rows = window_frame(n=20).assign(decided_at=now - pd.Timedelta(hours=1))
    rows = rows.assign(decision_id=[f"d{i}" for i in range(20)], customer_id="C1")
    records = rows[[c for c in rows.columns if c in DECISION_SCHEMA.names]].to_dict("records")
    write_part(tmp_path / "log", records, DECISION_SCHEMA, "decided_at", 0)
    reference_frame().to_parquet(tmp_path / "ref.parquet")
    env = {"NBA_DRIFT_REPORT_DIR": str(tmp_path / "reports"), "NBA_DRIFT_MIN_ROWS": "50"}
    args = ["drift", "--log-dir", "log", "--reference", "ref.parquet", "--no-mlflow",
            "--no-workspace"]  # fmt: skip
    result = nba(*args, cwd=tmp_path, env=env)

    assert result.returncode == EXIT_TOO_FEW, result.stderr
    assert "NOT JUDGED: 20 decisions" in result.stdout
    # Quiet: only the command's own lines (Evidently's and MLflow's go to logs/nba.log).
    own = "\n".join(line for line in (result.stdout + result.stderr).splitlines()
                    if not line.lstrip().startswith("warning: too few decisions"))  # fmt: skip
    assert not NOISE.findall(own), own
    assert "too few decisions to judge drift: 20 decisions in the window, at least 50" in (
        " ".join(result.stdout.split())
    )
    summary = json.loads(next((tmp_path / "reports").glob("drift-*.json")).read_text())
    assert summary["status"] == "too_few_decisions" and summary["alerts"] == []
    assert summary["thresholds"]["min_rows"] == 50
    assert "20 decisions in the window" in summary["sample_warning"]
    html = Path(summary["report"]).read_text()
    assert "NOT JUDGED: too few decisions" in html and "ref.parquet" in html
