"""The one adapter over Evidently (0.7): the drift report, its scores, and the workspace.

``import evidently`` costs seconds, so it happens inside the methods. The report holds:

* ``DataDriftPreset`` over the model features: the dataset drift verdict and the per-feature
  table, which Evidently sorts by drift score, highest first. With a distance method (higher is
  more drift, one threshold for all) that puts the drifted features first;
* ``ValueDrift`` of each prediction (``uplift_<a>``, ``value_<a>``), with its distributions;
* ``CategoryCount`` of each action in ``preferred_action`` (the model's unconstrained choice;
  on the reference, the learned policy's) and in ``action`` (on the window, the logged choice
  after guardrails; on the reference, the same learned choice), ``MeanValue`` of ``degraded``
  and of each ``blocked_<a>`` (window only), and ``RowCount``.

Each snapshot can be added to a local workspace (one project per environment) whose dashboard
shows these figures over time: ``evidently ui --workspace DIR``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import pandas as pd

from features.contract import ACTIONS
from monitoring.drift import BLOCKED_COLUMNS, DriftConfig

#: Tag on every snapshot, so that dashboard panels select ours.
SNAPSHOT_TAG: Final = "nba-drift"


@dataclass
class EvidentlyRun:
    """One evaluated report: per-column scores and the snapshot behind them."""

    snapshot: Any = field(repr=False)
    scores: dict[str, float]

    def save_html(self, path: Path) -> None:
        """Write the self-contained HTML report (opens in any browser, no server)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.snapshot.save_html(str(path))

    def as_dict(self) -> dict[str, Any]:
        """The snapshot's metrics as JSON-safe data."""
        return json.loads(self.snapshot.json())


class EvidentlyDrift:
    """``monitoring.drift.DriftEngine`` on Evidently's ``Report``."""

    def run(
        self,
        reference: pd.DataFrame,
        current: pd.DataFrame,
        features: Sequence[str],
        predictions: Sequence[str],
        config: DriftConfig,
        meta: Mapping[str, str],
    ) -> EvidentlyRun:
        """Run the report on the (sampled) frames; see the module docstring."""
        from evidently import DataDefinition, Dataset, Report
        from evidently.metrics import CategoryCount, MeanValue, RowCount, ValueDrift
        from evidently.presets import DataDriftPreset

        numerical = [*features, *predictions, "degraded", *BLOCKED_COLUMNS]
        definition = DataDefinition(
            numerical_columns=numerical, categorical_columns=["action", "preferred_action"]
        )
        columns = [*numerical, "action", "preferred_action"]
        drift = {"method": config.method, "threshold": config.column_threshold}
        metrics: list[Any] = []
        if features:
            metrics.append(
                DataDriftPreset(columns=list(features), drift_share=config.feature_share, **drift)
            )
        # Predictions as single ValueDrift metrics (a distribution plot each): a second preset
        # would add a second DriftedColumnsCount the dashboard could not tell from the first.
        metrics += [ValueDrift(column=c, **drift) for c in predictions]
        metrics += [CategoryCount(column="preferred_action", category=a) for a in ACTIONS]
        metrics += [CategoryCount(column="action", category=a) for a in ACTIONS]
        metrics += [MeanValue(column="degraded"), *[MeanValue(column=c) for c in BLOCKED_COLUMNS]]
        metrics.append(RowCount())
        report = Report(metrics, metadata=dict(meta), tags=[SNAPSHOT_TAG])
        with warnings.catch_warnings():
            # Block rates are unknown on the reference (all NaN): Evidently warns on 0/0.
            warnings.simplefilter("ignore", RuntimeWarning)
            snapshot = report.run(
                Dataset.from_pandas(current[columns], data_definition=definition),
                Dataset.from_pandas(reference[columns], data_definition=definition),
                timestamp=_timestamp(meta),
            )
        return EvidentlyRun(snapshot, _scores(json.loads(snapshot.json())))


def _timestamp(meta: Mapping[str, str]) -> datetime | None:
    """The window's end as the snapshot time (the dashboard's x axis), naive UTC."""
    end = meta.get("window_end")
    if not end:
        return None
    return pd.Timestamp(end).tz_convert("UTC").tz_localize(None).to_pydatetime()


def _scores(result: Mapping[str, Any]) -> dict[str, float]:
    """``{column: drift score}`` from the snapshot's ``ValueDrift`` metrics."""
    scores = {}
    for metric in result.get("metrics", []):
        config = metric.get("config", {})
        if config.get("type", "").endswith(":ValueDrift") and metric.get("value") is not None:
            scores[config["column"]] = float(metric["value"])
    return scores


# ------------------------------------------------------------------------ workspace


def add_to_workspace(
    workspace: Path, project_name: str, run: EvidentlyRun, description: str = ""
) -> str:
    """Add the run's snapshot to the project ``project_name`` of a local workspace (created
    with its dashboard if missing); returns the snapshot id."""
    from evidently.ui.workspace import Workspace

    workspace.mkdir(parents=True, exist_ok=True)
    ws = Workspace(str(workspace))
    found = [p for p in ws.list_projects() if p.name == project_name]
    if found:
        project = found[0]
    else:
        project = ws.create_project(project_name, description=description or None)
        _add_dashboard(project)
    ref = ws.add_run(project.id, run.snapshot, include_data=False)
    return str(ref.id)


def _add_dashboard(project: Any) -> None:
    """Panels of the key figures over time: drifted share, action mix, degraded, blocks."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import counter_panel, line_plot_panel, text_panel

    def metric(name: str, legend: str, **labels: str) -> PanelMetric:
        return PanelMetric(
            legend=legend, metric=f"evidently:metric_v2:{name}", metric_labels=labels,
            tags=[SNAPSHOT_TAG],
        )  # fmt: skip

    dash = project.dashboard
    dash.add_panel(text_panel(title="nba: decision log against the champion's training data"))
    dash.add_panel(
        counter_panel(
            title="Share of drifted features (last run)",
            values=[metric("DriftedColumnsCount", "share", value_type="share")],
            size="half",
        )
    )
    dash.add_panel(
        counter_panel(
            title="Decisions in the last window",
            values=[metric("RowCount", "decisions")],
            size="half",
        )
    )
    dash.add_panel(
        line_plot_panel(
            title="Drifted features (share) and degraded decisions (share)",
            values=[
                metric("DriftedColumnsCount", "drifted feature share", value_type="share"),
                metric("MeanValue", "degraded share", column="degraded"),
            ],
        )
    )
    dash.add_panel(
        line_plot_panel(
            title="Model's preferred action (share of decisions)",
            values=[
                metric(
                    "CategoryCount",
                    a,
                    column="preferred_action",
                    categories=f"['{a}']",
                    value_type="share",
                )
                for a in ACTIONS
            ],
            size="half",
        )
    )
    dash.add_panel(
        line_plot_panel(
            title="Logged action after guardrails (share of decisions)",
            values=[
                metric(
                    "CategoryCount", a, column="action", categories=f"['{a}']", value_type="share"
                )
                for a in ACTIONS
            ],
            size="half",
        )
    )
    dash.add_panel(
        line_plot_panel(
            title="Guardrail block rate per action",
            values=[metric("MeanValue", a, column=f"blocked_{a}") for a in ACTIONS],
        )
    )
