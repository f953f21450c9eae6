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

The HTML report is Evidently's rendering of the drift widgets only, under a header built from
the run's summary: the window, the model served in it, the reference, the status (with the
sample warning of a small window), the alerts, the action mix and the guardrail figures, with
counts as integers and "-" where a figure is absent. The count, mean and row-count metrics stay
in the snapshot (the workspace dashboard plots them) but are not drawn: Evidently prints counts
as floats ("1425.0") and the reference's unknown block rates as "nan".

Each snapshot can be added to a local workspace (one project per environment) whose dashboard
shows these figures over time: ``evidently ui --workspace DIR``.
"""

from __future__ import annotations

import json
import math
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
#: Tag of ``nba impact``'s snapshots (their own panels, beside the drift ones).
IMPACT_TAG: Final = "nba-impact"
#: Title of the first impact panel: present means the project already has them.
IMPACT_TITLE: Final = "nba impact: incremental net value per decision against the control group"


@dataclass
class EvidentlyRun:
    """One evaluated report: per-column scores and the snapshot behind them."""

    snapshot: Any = field(repr=False)
    scores: dict[str, float]
    #: Fingerprints of the metrics kept for the dashboard but not drawn in the HTML report.
    undrawn: frozenset[str] = frozenset()

    def save_html(self, path: Path, summary: Mapping[str, Any]) -> None:
        """Write the self-contained HTML report (opens in any browser, no server): the header
        of ``summary`` (``monitoring.drift.summarize``), then Evidently's drift widgets."""
        from evidently.core.metric_types import render_widgets
        from evidently.legacy.renderers.html_widgets import group_widget

        drawn = [
            w
            for w in self.snapshot.to_snapshot_model().widgets
            if not set(w.linked_metrics or ()) & self.undrawn
        ]
        html = render_widgets([group_widget(title="", widgets=[*header(summary), *drawn])])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(html, encoding="utf-8")

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
        figures: list[Any] = [
            *[CategoryCount(column="preferred_action", category=a) for a in ACTIONS],
            *[CategoryCount(column="action", category=a) for a in ACTIONS],
            MeanValue(column="degraded"),
            *[MeanValue(column=c) for c in BLOCKED_COLUMNS],
            RowCount(),
        ]
        metrics += figures
        report = Report(metrics, metadata=dict(meta), tags=[SNAPSHOT_TAG])
        with warnings.catch_warnings():
            # Block rates are unknown on the reference (all NaN): Evidently warns on 0/0.
            warnings.simplefilter("ignore", RuntimeWarning)
            snapshot = report.run(
                Dataset.from_pandas(current[columns], data_definition=definition),
                Dataset.from_pandas(reference[columns], data_definition=definition),
                timestamp=_timestamp(meta),
            )
        undrawn = frozenset(m.get_fingerprint() for m in figures)
        return EvidentlyRun(snapshot, _scores(json.loads(snapshot.json())), undrawn)


# --------------------------------------------------------------------------- header


def _text(value: Any, pct: bool = False) -> str:
    """A figure for the header: integers as integers, shares as percentages, "-" if absent."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if pct:
        return f"{value:.1%}"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return f"{int(value):,}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _sentence(text: str) -> str:
    """``text`` with its first letter upper case (``str.capitalize`` lowers the rest)."""
    return text[:1].upper() + text[1:]


def _when(value: Any) -> str:
    """An ISO timestamp as ``YYYY-MM-DD HH:MM UTC`` ("-" if absent)."""
    if not value:
        return "-"
    return f"{pd.Timestamp(value).tz_convert('UTC'):%Y-%m-%d %H:%M} UTC"


def header(summary: Mapping[str, Any]) -> list[Any]:
    """Evidently widgets naming the run (window, model, reference, status) and the figures
    that are not drift scores (action mix, guardrails, degraded share)."""
    from evidently.legacy.renderers.html_widgets import (
        CounterData,
        WidgetSize,
        counter,
        header_text,
        table_data,
        text_widget,
    )

    served = summary.get("model_versions") or {}
    model = ", ".join(f"version {v} ({_text(n)} decisions)" for v, n in served.items()) or "-"
    reference = summary.get("reference") or "-"
    if summary.get("reference_run"):
        reference += f" (training run {str(summary['reference_run'])[:12]})"
    status = {
        "ok": "no drift past the thresholds",
        "drift": "DRIFT",
        "too_few_decisions": "NOT JUDGED: too few decisions",
    }
    widgets = [
        header_text(
            label=f"nba drift: decision log {_when(summary.get('window_start'))} to "
            f"{_when(summary.get('window_end'))}"
        ),
        counter(
            counters=[
                CounterData("window start", _when(summary.get("window_start"))),
                CounterData("window end", _when(summary.get("window_end"))),
                CounterData("decisions in the window", _text(summary.get("window_rows"))),
                CounterData("reference rows", _text(summary.get("reference_rows"))),
            ]
        ),
        counter(
            counters=[
                CounterData("model served in the window", model),
                CounterData("reference (training data of)", reference),
                CounterData("status", status.get(summary.get("status", ""), "-")),
            ]
        ),
    ]
    lines = []
    if summary.get("sample_warning"):
        lines.append(
            f"**{_sentence(summary['sample_warning'])}.** Evidently's own verdicts "
            "below are computed on the same few rows."
        )
        lines += [f"- would have alerted: {a}" for a in summary.get("suppressed_alerts", [])]
    lines += [f"- **alert**: {a}" for a in summary.get("alerts", [])]
    if lines:
        widgets.append(text_widget(title="Verdict", text="\n".join(lines)))
    blocked = (summary.get("guardrails") or {}).get("blocked_share", {})
    mix = [
        [
            row["action"],
            _text(row["reference_share"], pct=True),
            _text(row["preferred_share"], pct=True),
            "-" if row["shift"] is None else f"{row['shift']:+.1%}",
            _text(row["logged_share"], pct=True),
            _text(blocked.get(row["action"]), pct=True),
        ]
        for row in summary.get("actions", [])
    ]
    widgets.append(
        table_data(
            title="Action mix: the model's preferred action (before guardrails) against the "
            "reference's learned policy; logged = after guardrails and exploration",
            column_names=[
                "action",
                "reference",
                "preferred now",
                "shift",
                "logged now",
                "blocked now",
            ],
            data=mix,
            size=WidgetSize.HALF,
        )
    )
    rules = (summary.get("guardrails") or {}).get("rule_blocks", {})
    degraded = summary.get("degraded") or {}
    other = [
        ["degraded decisions", _text(degraded.get("share"), pct=True)],
        *[[f"degraded: {k}", _text(v)] for k, v in (degraded.get("reasons") or {}).items()],
        ["explored decisions", _text(summary.get("explored_share"), pct=True)],
        ["customers with features", _text(summary.get("features_found_share"), pct=True)],
        *[[f"decisions blocked by {rule}", _text(n)] for rule, n in rules.items()],
    ]
    widgets.append(
        table_data(
            title="Window figures",
            column_names=["figure", "value"],
            data=other,
            size=WidgetSize.HALF,
        )
    )
    skipped = [
        r["column"]
        for group in ("features", "predictions")
        for r in (summary.get(group) or {}).get("columns", [])
        if r["score"] is None and not r["drifted"]
    ]
    if skipped:
        widgets.append(
            text_widget(
                title="Not compared",
                text="One constant value on both sides, or no values on either side (not "
                f"plotted): {', '.join(skipped)}.",
            )
        )
    return widgets


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
    with its dashboard if missing; the impact panels are added once an impact run arrives);
    returns the snapshot id."""
    from evidently.ui.workspace import Workspace

    workspace.mkdir(parents=True, exist_ok=True)
    ws = Workspace(str(workspace))
    found = [p for p in ws.list_projects() if p.name == project_name]
    if found:
        project = found[0]
    else:
        project = ws.create_project(project_name, description=description or None)
        _add_dashboard(project)
    if run.undrawn == IMPACT_RUN and IMPACT_TITLE not in [
        p.title for p in project.dashboard.model().panels
    ]:
        _add_impact_panels(project)
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


# --------------------------------------------------------------------------- impact

#: ``EvidentlyRun.undrawn`` of an impact run (it has no drift widgets to hide).
IMPACT_RUN: Final = frozenset({"impact"})


def impact_run(summary: Mapping[str, Any]) -> EvidentlyRun:
    """An Evidently snapshot of ``nba impact``'s figures, for the workspace dashboard.

    The figures are already estimated (``monitoring.impact``): the snapshot holds them as a
    one-row dataset (``impact_per_decision``, its interval bounds, ``impact_<action>``) and one
    ``MeanValue`` each, the form the dashboard plots over time (x: the window's end).
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import MeanValue

    overall = summary["incremental_net_value_per_decision"]
    row: dict[str, float] = {
        "impact_per_decision": overall["estimate"],
        "impact_ci_low": overall["ci95"][0],
        "impact_ci_high": overall["ci95"][1],
        "decisions": float(summary["decisions"]),
        "holdout_decisions": float(summary["holdout_decisions"]),
    }
    for action, block in summary["by_action"].items():
        row[f"impact_{action}"] = block["incremental_net_value_per_decision"]["estimate"]
    row = {k: float("nan") if v is None else float(v) for k, v in row.items()}
    frame = pd.DataFrame([row])
    meta = {"window_start": summary["window"]["start"], "window_end": summary["window"]["end"]}
    report = Report([MeanValue(column=c) for c in row], metadata=meta, tags=[IMPACT_TAG])
    dataset = Dataset.from_pandas(
        frame, data_definition=DataDefinition(numerical_columns=list(row))
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = report.run(dataset, None, timestamp=_timestamp(meta))
    return EvidentlyRun(snapshot, {}, IMPACT_RUN)


def _add_impact_panels(project: Any) -> None:
    """Impact over time beside the drift panels: per decision with its interval, per action."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import counter_panel, line_plot_panel, text_panel

    def metric(column: str, legend: str) -> PanelMetric:
        return PanelMetric(legend=legend, metric="evidently:metric_v2:MeanValue",
                           metric_labels={"column": column}, tags=[IMPACT_TAG])  # fmt: skip

    dash = project.dashboard
    dash.add_panel(text_panel(title=IMPACT_TITLE))
    dash.add_panel(
        counter_panel(
            title="Incremental net value per decision (last window)",
            values=[metric("impact_per_decision", "per decision")],
            size="half",
        )
    )
    dash.add_panel(
        counter_panel(
            title="Decisions in the control group (last window)",
            values=[metric("holdout_decisions", "control group")],
            size="half",
        )
    )
    dash.add_panel(
        line_plot_panel(
            title="Incremental net value per decision, with its 95% interval",
            values=[
                metric("impact_per_decision", "estimate"),
                metric("impact_ci_low", "95% low"),
                metric("impact_ci_high", "95% high"),
            ],
        )
    )
    dash.add_panel(
        line_plot_panel(
            title="Incremental net value per decision, by action",
            values=[metric(f"impact_{a}", a) for a in ACTIONS if a != "none"],
        )
    )
