"""``nba drift`` end to end: window, reference, report, JSON summary, MLflow run, workspace.

The steps are plain functions over the adapters (``training.tracking.Tracker`` for MLflow,
``monitoring.evidently_report`` for Evidently), called by the command with its settings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from monitoring.drift import (
    DriftConfig,
    DriftEngine,
    DriftResult,
    NoReferenceError,
    check_reference,
    check_window,
    metrics_of,
    run_drift,
)
from monitoring.window import read_window
from training.reference import REFERENCE_ARTIFACT

_DURATION = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str) -> timedelta:
    """``7d``, ``24h``, ``2w``, ``90m`` as a duration (``ValueError`` otherwise)."""
    match = _DURATION.match(value)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"--since: {value!r} is not a duration such as 7d, 24h, 2w or 90m")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@dataclass
class Reference:
    """A reference frame and where it came from."""

    frame: pd.DataFrame
    source: str
    run_id: str = ""


def reference_from_file(path: Path) -> Reference:
    """A reference saved as Parquet (``training.reference`` columns)."""
    if not path.is_file():
        raise NoReferenceError(f"--reference: {path} is not a file")
    try:
        frame = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a non-Parquet file
        raise NoReferenceError(f"--reference: {path} is not a Parquet file ({error})") from error
    check_reference(frame, f"--reference {path}")
    return Reference(frame, str(path))


def reference_from_model(tracker: Any, model: int | str) -> Reference:
    """The reference logged with the training run of a model version or alias."""
    from training.tracking import ModelNotAvailableError

    try:
        frame, info = tracker.load_parquet(REFERENCE_ARTIFACT, model)
    except ModelNotAvailableError as error:
        raise NoReferenceError(f"no drift reference: {error}") from error
    source = f"{tracker.model_name}/{info.version}"
    check_reference(frame, f"the reference of {source}")
    return Reference(frame, source, info.run_id)


@dataclass
class JobResult:
    """What a drift run produced."""

    result: DriftResult
    html: Path
    summary_file: Path
    mlflow_run_id: str | None
    snapshot_id: str | None

    @property
    def summary(self) -> dict[str, Any]:
        """The JSON summary."""
        return self.result.summary

    @property
    def exit_code(self) -> int:
        """0, ``EXIT_DRIFT`` past thresholds, ``EXIT_TOO_FEW`` below the minimum sample."""
        return self.result.exit_code


def run_job(
    *,
    folder: Path,
    start: pd.Timestamp,
    end: pd.Timestamp,
    reference: Callable[[], Reference],
    config: DriftConfig,
    out_dir: Path,
    engine: DriftEngine,
    tracker: Any = None,
    workspace: tuple[Path, str] | None = None,
    environment: str = "",
    stage: Callable[[str], None] = lambda _label: None,
) -> JobResult:
    """Read the window, compare it with the reference, write the report and the summary, log
    them to MLflow (``tracker``, optional) and add a snapshot to the workspace (optional).

    Bad input raises before anything is written: ``EmptyWindowError``, ``MissingColumnsError``
    (window) and ``NoReferenceError``, in that order.
    """
    where = f" [{start.isoformat()}, {end.isoformat()}) of {folder}"
    stage(f"reading the decision log{where}")
    window, present = read_window(folder, start, end)
    check_window(window, present, where)
    stage("loading the reference")
    ref = reference()
    meta = {
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
        "log_dir": str(folder),
        "reference": ref.source,
        "reference_run": ref.run_id,
        "environment": environment,
    }
    stage(f"comparing {len(window):,} decisions with {len(ref.frame):,} reference rows")
    result = run_drift(ref.frame, window, engine, config, meta)

    stage(f"writing the report to {out_dir}")
    stamp = f"{start:%Y%m%dT%H%M%S}-{end:%Y%m%dT%H%M%S}"
    html = out_dir / f"drift-{stamp}.html"
    summary_file = out_dir / f"drift-{stamp}.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {**result.summary, "report": str(html)}
    result.run.save_html(html, summary)
    summary_file.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    result.summary["report"] = str(html)

    run_id = None
    if tracker is not None:
        stage(f"logging to MLflow (experiment {tracker.experiment})")
        with tracker.start_run(run_name=f"drift-{stamp}") as run_id:
            tracker.set_tags({**{k: v for k, v in meta.items() if v}, "drift.status":
                              summary["status"]})  # fmt: skip
            tracker.log_params(summary["thresholds"])
            tracker.log_metrics(metrics_of(summary))
            tracker.log_artifact(summary_file, "drift")
            tracker.log_artifact(html, "drift")
    snapshot_id = None
    if workspace is not None:
        from monitoring.evidently_report import add_to_workspace

        folder_ws, project = workspace
        stage(f"adding a snapshot to the Evidently workspace {folder_ws} (project {project})")
        about = "nba drift: the decision log against the champion's training data"
        snapshot_id = add_to_workspace(folder_ws, project, result.run, description=about)
    return JobResult(result, html, summary_file, run_id, snapshot_id)
