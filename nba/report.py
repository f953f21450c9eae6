"""The tables and lines the commands print for their results (``nba.cli``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table

from nba import output

if TYPE_CHECKING:
    import pandas as pd

    from nba.settings import Settings

#: The contract's actions, in display order.
ACTION_NAMES = ("promo", "apology_credit", "recognition", "none")


def fmt(value: float | None, digits: int = 2, pct: bool = False) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:.1%}" if pct else f"{value:.{digits}f}"


def print_evaluation(result: Any) -> None:
    ev = result.evaluation
    out = output.out
    uplift = Table(title=f"uplift ranking on randomized held-out decisions ({result.test_rows:,})")
    for col in ("action", "rows", "Qini", "AUUC", "uplift@30%"):
        uplift.add_column(col, justify="right" if col != "action" else "left")
    for action, row in ev.uplift_table.iterrows():
        uplift.add_row(str(action), f"{int(row['rows']):,}", f"{row['qini']:.3f}",
                       f"{row['auuc']:.3f}", f"{row['uplift_at_30']:.3f}")  # fmt: skip
    out.print(uplift)
    table = Table(title="policy value per decision (net, currency units), held-out decisions")
    cols = ["policy", "IPW", "SNIPW", "DR", "DR s.e."]
    has_truth = "true" in ev.policy_table.columns
    if has_truth:
        cols.append("true")
    for col in cols:
        table.add_column(col, justify="right" if col != "policy" else "left")
    for name, row in ev.policy_table.iterrows():
        cells = [str(name), f"{row['ipw']:.2f}", f"{row['snipw']:.2f}", f"{row['dr']:.2f}",
                 f"{row['dr_se']:.2f}"]  # fmt: skip
        if has_truth:
            cells.append(f"{row['true']:.2f}")
        table.add_row(*cells)
    out.print(table)
    if has_truth:
        share = ev.metrics["oracle_share_captured"]
        out.print(f"share of the oracle's incremental value captured (true): {share:.1%}")
    mix = ", ".join(f"{a} {ev.metrics[f'share_chosen_{a}']:.0%}" for a in ACTION_NAMES)
    out.print(f"selected policy's action mix: {mix}")
    if result.selection is not None:
        print_selection(result.selection, result.served)
    gate = result.gate
    verdict = "[green]promoted to champion[/]" if gate.promoted else "[yellow]not promoted[/]"
    out.print(f"nba-uplift version {result.version}: {verdict} ({gate.reason})")


def print_selection(selection: Any, served: Any) -> None:
    """The cross-fitted comparison of the candidate policies, the choice and why."""
    out = output.out
    table = Table(
        title="policy selection: cross-fitted doubly-robust value per decision on the training "
        "decisions, gains paired, 95% lower bounds (lb)"
    )
    cols = ["policy", "value", "s.e.", "gain vs none", "lb", "gain vs rules", "lb "]
    for col in cols:
        table.add_column(col, justify="right" if col != "policy" else "left")
    for name, row in selection.table.iterrows():
        mark = " [bold]<[/]" if name == selection.selected else ""
        table.add_row(f"{name}{mark}", fmt(row["value"]), fmt(row["se"]),
                      fmt(row["gain_vs_none"]), fmt(row["lb_vs_none"]),
                      fmt(row.get("gain_vs_rules")), fmt(row.get("lb_vs_rules")))  # fmt: skip
    out.print(table)
    out.print(f"selected: {selection.reason}")
    if served is not None:
        for line in served.describe()[1:]:
            out.print(f"  {line}", markup=False, highlight=False)


def print_drift(summary: dict[str, Any]) -> None:
    out = output.wide()
    feats = summary["features"]
    status = {"drift": "[red]DRIFT[/]", "too_few_decisions": "[yellow]NOT JUDGED[/]"}.get(
        summary["status"], "[green]ok[/]"
    )
    out.print(
        f"{status}: {summary['window_rows']:,} decisions from {summary['window_start']} to "
        f"{summary['window_end']} against {summary['reference']} "
        f"({summary['reference_rows']:,} reference rows); "
        f"{feats['drifted']} of {feats['compared']} features drifted ({feats['share']:.0%})"
    )
    for alert in summary["alerts"]:
        out.print(f"  [red]![/] {alert}")
    if summary.get("sample_warning"):
        out.print(f"[yellow]warning:[/] {summary['sample_warning']}")
        for alert in summary.get("suppressed_alerts", []):
            out.print(f"  [yellow]would have alerted:[/] {alert}")
    table = Table(title=f"drifted features and predictions ({summary['thresholds']['method']})")
    for col in ("column", "score", "mean ref", "mean now", "missing ref", "missing now", "note"):
        table.add_column(col, justify="left" if col in ("column", "note") else "right")
    rows = [r for g in ("features", "predictions") for r in summary[g]["columns"] if r["drifted"]]
    for r in rows[:15]:
        table.add_row(r["column"], fmt(r["score"], 3), fmt(r["mean_reference"]),
                      fmt(r["mean_current"]), fmt(r["missing_reference"], pct=True),
                      fmt(r["missing_current"], pct=True), r["note"])  # fmt: skip
    if rows:
        out.print(table)
    mix = Table(title="action mix (preferred: the model's choice before guardrails)")
    for col in ("action", "reference", "preferred now", "shift", "logged now", "blocked now"):
        mix.add_column(col, justify="left" if col == "action" else "right")
    blocked = summary["guardrails"]["blocked_share"]
    for r in summary["actions"]:
        shift = "-" if r["shift"] is None else f"{r['shift']:+.1%}"
        mix.add_row(
            r["action"],
            fmt(r["reference_share"], pct=True),
            fmt(r["preferred_share"], pct=True),
            shift,
            fmt(r["logged_share"], pct=True),
            fmt(blocked.get(r["action"]), pct=True),
        )
    out.print(mix)
    out.print(f"degraded decisions: {summary['degraded']['share']:.1%}")


def print_summary(settings: Settings, table: pd.DataFrame, snapshot: pd.Timestamp) -> None:
    from features import schema

    latest = table[table[schema.EVENT_TIMESTAMP] == snapshot]
    summary = Table(title=f"online features as of {snapshot.isoformat()}")
    summary.add_column("signal")
    summary.add_column("customers", justify="right")
    summary.add_row("with an open service case", f"{int((latest.open_case_count > 0).sum()):,}")
    summary.add_row("unsubscribed from email", f"{int(latest.unsubscribed.sum()):,}")
    summary.add_row(
        "past 1,000,000 lifetime miles", f"{int((latest.lifetime_miles >= 1e6).sum()):,}"
    )
    summary.add_row("booked in the last 30 days", f"{int((latest.bookings_30d > 0).sum()):,}")
    output.out.print(summary)
    output.err.print(
        f"feature repo: {settings.feature_repo} (online store: {settings.online_store})"
    )
