"""The measuring commands: ``nba outcomes`` and ``nba impact`` close the loop and prove the value
(contract cli.md 1.1); ``nba drift`` watches the decision log against the training data.

Registered on ``nba.cli.app`` by ``register``, which ``nba.cli`` calls at its end with its
error type and helpers (passed, not imported: ``python -m nba.cli`` runs that module as
``__main__``, and an import of ``nba.cli`` from here would build a second app). Kept apart so
that the CLI module stays readable.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.table import Table

from nba import output, report
from nba.settings import Settings, load_settings

console = output.err
#: ``nba.cli``'s error type and time parser (``register``).
_CLI: dict[str, Any] = {}


def register(app: typer.Typer, quiet: Any, error: type[Exception], parse_time: Any) -> None:
    """Add ``outcomes``, ``impact`` and ``drift`` to ``app`` (``nba.cli`` calls it)."""
    _CLI.update(error=error, parse_time=parse_time)
    app.command()(quiet(outcomes))
    app.command()(quiet(impact))
    app.command()(quiet(drift))


def CliError(message: str) -> Exception:
    """``nba.cli.CliError(message)``: one message, exit code 2."""
    error: type[Exception] = _CLI["error"]
    return error(message)


def _parse_time(value: str | None, option: str) -> pd.Timestamp:
    stamp: pd.Timestamp = _CLI["parse_time"](value, option)
    return stamp


def _duration(value: str, option: str) -> timedelta:
    from monitoring.job import parse_since

    try:
        return parse_since(value)
    except ValueError:
        raise CliError(f"{option}: {value!r} is not a duration such as 30d, 4w or 720h") from None


def _raw_folder(raw: Path | None, settings: Settings) -> Path:
    folder = raw if raw is not None else settings.workspace / "data" / "raw"
    if not folder.is_dir():
        raise CliError(f"--raw: {folder} is not a folder of raw tables")
    return folder


def _raw_format(folder: Path) -> str:
    return "csv" if (folder / "actions.csv").exists() else "parquet"


def _observe(folder: Path, log_dir: Path, horizon: timedelta, settings: Settings,
             start: pd.Timestamp | None = None, end: pd.Timestamp | None = None,
             ) -> tuple[Any, Any]:  # fmt: skip
    """(the raw tables, ``monitoring.outcomes.Observed``) of the log's decisions."""
    from features.contract import load_raw
    from features.decision_log import read_decisions
    from monitoring.outcomes import observe

    world = load_raw(folder)
    decisions = read_decisions(log_dir, start, end)
    if not len(decisions):
        raise CliError(f"--log-dir: no decisions in {log_dir} in the window")
    observed = observe(decisions, world.customers, world.bookings, world.email_events,
                       horizon=horizon, fx_rates=settings.fx_rates)  # fmt: skip
    return world, observed


def outcomes(
    raw: Annotated[Path, typer.Option("--raw", help="Folder of raw tables (the contract).")],
    log_dir: Annotated[
        Path | None, typer.Option("--log-dir", help="Decision log folder [NBA_DECISION_LOG_DIR].")
    ] = None,
    horizon: Annotated[
        str | None,
        typer.Option(help="Outcome window after each decision [NBA_IMPACT_HORIZON_DAYS, 30d]."),
    ] = None,
) -> None:
    """Turn the service's decision log and the later raw bookings and emails into actions and
    outcomes rows, added to --raw's actions and outcomes tables (a retrain learns from them).

    Only decisions whose horizon has passed by the raw data's latest booking or email count;
    running it again adds only the decisions not yet there.
    """
    from features.contract import validate, write_raw
    from monitoring.outcomes import as_raw, merge_raw

    settings = load_settings()
    window = _duration(horizon or f"{settings.impact_horizon_days}d", "--horizon")
    folder = _raw_folder(raw, settings)
    with output.Stages("outcomes", total=3) as stage:
        stage(f"reading {folder} and the decision log")
        world, observed = _observe(folder, log_dir or settings.decision_log_dir, window, settings)
        stage("joining bookings and emails within the horizon")
        actions, outcome_rows = as_raw(observed.frame)
        merged_actions, added = merge_raw(world.actions, actions)
        merged_outcomes, _ = merge_raw(world.outcomes, outcome_rows)
        updated = dataclasses.replace(world, actions=merged_actions, outcomes=merged_outcomes)
        validate(updated, source=str(folder))
        stage(f"writing actions and outcomes to {folder}")
        fmt = _raw_format(folder)
        write_raw(updated, folder, fmt=fmt)  # type: ignore[arg-type]
    frame = observed.frame
    output.out.print(
        f"{added:,} decisions with outcomes added to {folder} (actions, outcomes); "
        f"{len(frame) - added:,} already there; {observed.pending:,} wait for their horizon "
        f"to pass (raw data ends {observed.as_of:%Y-%m-%d %H:%M} UTC)"
    )
    if len(frame):
        output.out.print(
            f"converted {frame['converted'].mean():.1%}, revenue {frame['revenue'].sum():,.0f}, "
            f"unsubscribed {frame['unsubscribed'].mean():.2%}"
        )
    if observed.unknown_customers:
        console.print(f"{observed.unknown_customers:,} decisions for customers not in the raw "
                      "customers table were left out (new visitors)")  # fmt: skip


def impact(
    since: Annotated[
        str | None,
        typer.Option(
            help="Decisions of this long (30d, 4w) up to the last one whose horizon "
            "has passed (default 30d)."
        ),
    ] = None,
    start: Annotated[
        str | None, typer.Option(help="Window start (ISO 8601 with offset), with --end.")
    ] = None,
    end: Annotated[str | None, typer.Option(help="Window end (ISO 8601 with offset).")] = None,
    raw: Annotated[
        Path | None, typer.Option("--raw", help="Folder of raw tables [data/raw].")
    ] = None,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Write the JSON summary to this file.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Report folder [NBA_IMPACT_REPORT_DIR].")
    ] = None,
    log_dir: Annotated[
        Path | None, typer.Option("--log-dir", help="Decision log folder [NBA_DECISION_LOG_DIR].")
    ] = None,
    horizon: Annotated[
        str | None, typer.Option(help="Outcome window [NBA_IMPACT_HORIZON_DAYS, 30d].")
    ] = None,
    mlflow: Annotated[
        bool, typer.Option("--mlflow/--no-mlflow", help="Log the run to MLflow.")
    ] = True,
    workspace: Annotated[
        bool,
        typer.Option("--workspace/--no-workspace", help="Snapshot to the Evidently workspace."),
    ] = True,
) -> None:
    """Incremental net value of the deployed decisions against the global control group.

    Per decision and in total with a 95% interval, per action, per week and by recent
    contacts: an HTML report and a JSON summary in --out, an MLflow run, and panels on the
    Evidently workspace's dashboard beside drift.
    """
    from monitoring.impact import measure
    from monitoring.impact_report import write
    from monitoring.outcomes import FATIGUE_DAYS, data_end

    settings = load_settings()
    window = _duration(horizon or f"{settings.impact_horizon_days}d", "--horizon")
    if since is not None and (start is not None or end is not None):
        raise CliError("--since: use either --since or --start/--end, not both")
    if (start is None) != (end is None):
        raise CliError("--start and --end go together (or use --since)")
    folder = _raw_folder(raw, settings)
    lo = hi = None
    if start is not None:
        lo, hi = _parse_time(start, "--start"), _parse_time(end, "--end")
        if lo >= hi:
            raise CliError(f"--start: {lo.isoformat()} is not before --end {hi.isoformat()}")
    length = _duration(since or "30d", "--since")
    with output.Stages("impact", total=5 - (not mlflow) - (not workspace)) as stage:
        stage(f"joining the decision log with {folder}")
        # From 30 days before the window: the fatigue count looks back that far.
        since_lo = None if lo is None else lo - timedelta(days=FATIGUE_DAYS)
        world, observed = _observe(folder, log_dir or settings.decision_log_dir, window,
                                   settings, since_lo, hi)  # fmt: skip
        if hi is None:
            ends = data_end(world.bookings, world.email_events)
            hi = (ends - window) if ends is not None else pd.Timestamp.now(tz="UTC")
            lo = hi - length
        assert lo is not None
        frame = observed.frame
        frame = frame[(frame["decided_at"] >= lo) & (frame["decided_at"] < hi)]
        stage(f"measuring {len(frame):,} decisions against the control group")
        result = measure(frame, settings.action_costs(), start=lo.isoformat(),
                         end=hi.isoformat(), horizon_days=window.days)  # fmt: skip
        summary = result.summary()
        summary["pending_decisions"] = observed.pending
        folder_out = out or settings.impact_report_dir
        folder_out.mkdir(parents=True, exist_ok=True)
        stamp = f"{hi:%Y%m%dT%H%M%S}"
        currencies = sorted(set(world.bookings["currency"].astype(str)))
        stage(f"writing the report to {folder_out}")
        html = write(result, folder_out / f"impact-{stamp}.html",
                     currencies[0] if len(currencies) == 1 else "")  # fmt: skip
        summary_file = folder_out / f"impact-{stamp}.json"
        summary_file.write_text(json.dumps(summary, indent=2))
        if json_file is not None:
            json_file.parent.mkdir(parents=True, exist_ok=True)
            json_file.write_text(json.dumps(summary, indent=2))
        if mlflow:
            stage(f"logging to MLflow (experiment {settings.drift_experiment})")
            _log_run(settings, summary, stamp, [html, summary_file])
        if workspace:
            from monitoring.evidently_report import add_to_workspace, impact_run

            project = f"nba {settings.environment}"
            stage(f"adding a snapshot to the Evidently workspace {settings.evidently_workspace} "
                  f"(project {project})")  # fmt: skip
            add_to_workspace(settings.evidently_workspace, project, impact_run(summary),
                             description="nba decisions: drift and impact")  # fmt: skip
    _print(summary, html)


def _log_run(settings: Settings, summary: dict[str, Any], stamp: str, files: list[Path]) -> None:
    from training.tracking import Tracker

    tracker = Tracker(settings.mlflow_tracking_uri,
                      artifact_location=settings.mlflow_artifact_location,
                      experiment=settings.drift_experiment)  # fmt: skip
    overall = summary["incremental_net_value_per_decision"]
    metrics = {
        "impact.decisions": summary["decisions"],
        "impact.holdout_decisions": summary["holdout_decisions"],
        "impact.per_decision": overall["estimate"],
        "impact.per_decision_ci_low": overall["ci95"][0],
        "impact.per_decision_ci_high": overall["ci95"][1],
        "impact.total": summary["incremental_net_value_total"]["estimate"],
        **{f"impact.{a}.per_decision": v["incremental_net_value_per_decision"]["estimate"]
           for a, v in summary["by_action"].items()},
    }  # fmt: skip
    with tracker.start_run(run_name=f"impact-{stamp}"):
        tracker.set_tags({"kind": "impact", "window_start": summary["window"]["start"],
                          "window_end": summary["window"]["end"]})  # fmt: skip
        tracker.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        for path in files:
            tracker.log_artifact(path, "impact")


def _print(summary: dict[str, Any], html: Path) -> None:
    overall = summary["incremental_net_value_per_decision"]
    table = Table(title=f"impact: {summary['decisions']:,} decisions against "
                  f"{summary['holdout_decisions']:,} in the control group")  # fmt: skip
    for column in ("", "decisions", "per decision", "95% interval"):
        table.add_column(column, justify="right" if column else "left")

    def interval(block: dict[str, Any]) -> str:
        low, high = block["ci95"]
        return "n/a" if low is None else f"{low:,.2f} to {high:,.2f}"

    def money(value: float | None) -> str:
        return "n/a" if value is None else f"{value:,.2f}"

    table.add_row("all", f"{summary['decisions']:,}", money(overall["estimate"]), interval(overall))
    for action, block in summary["by_action"].items():
        inner = block["incremental_net_value_per_decision"]
        table.add_row(action, f"{block['decisions']:,}", money(inner["estimate"]), interval(inner))
    for week in summary["by_week"]:
        table.add_row(f"week of {week['week']}", f"{week['decisions']:,}", money(week["estimate"]),
                      interval(week))  # fmt: skip
    output.out.print(table)
    total = summary["incremental_net_value_total"]
    output.out.print(f"in total: {money(total['estimate'])} ({interval(total)}); report: {html}")


def drift(
    since: Annotated[
        str | None, typer.Option(help="Window ending now: 7d, 24h, 2w, 90m (default 7d).")
    ] = None,
    start: Annotated[
        str | None, typer.Option(help="Window start (ISO 8601 with offset), with --end.")
    ] = None,
    end: Annotated[str | None, typer.Option(help="Window end (ISO 8601); default now.")] = None,
    log_dir: Annotated[
        Path | None, typer.Option("--log-dir", help="Decision log folder [NBA_DECISION_LOG_DIR].")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Report folder [NBA_DRIFT_REPORT_DIR].")
    ] = None,
    model: Annotated[
        str, typer.Option(help="Reference: the training run of this version or alias.")
    ] = "champion",
    reference: Annotated[
        Path | None,
        typer.Option(help="A reference Parquet file instead of the model's (same columns)."),
    ] = None,
    mlflow: Annotated[
        bool, typer.Option("--mlflow/--no-mlflow", help="Log the run to MLflow.")
    ] = True,
    workspace: Annotated[
        bool,
        typer.Option("--workspace/--no-workspace", help="Snapshot to the Evidently workspace."),
    ] = True,
) -> None:
    """Drift report over the decision log against the champion's training data.

    Data drift per feature, prediction drift per action, the action mix,
    guardrail block rates and the degraded share: an Evidently HTML report
    (drifted features first) and a JSON summary in --out, also logged to
    MLflow and added to the Evidently workspace.

    Exit codes: 0 no drift past the thresholds, 3 drift past the thresholds
    (NBA_DRIFT_*), 4 no decisions in the window, 5 the window lacks columns,
    6 no reference, 7 too few decisions to judge (fewer than NBA_DRIFT_MIN_ROWS,
    default 200: the report and summary are written, nothing alerts), 2 other
    bad input.
    """
    from monitoring.evidently_report import EvidentlyDrift
    from monitoring.job import parse_since, reference_from_file, reference_from_model, run_job
    from training.tracking import Tracker

    settings = load_settings()
    if since is not None and (start is not None or end is not None):
        raise CliError("--since: use either --since or --start/--end, not both")
    if start is None and end is not None:
        raise CliError("--end: needs --start (or use --since)")
    if start is not None:
        lo, hi = _parse_time(start, "--start"), _parse_time(end, "--end")
    else:
        hi = _parse_time(None, "--end")
        lo = hi - parse_since(since or "7d")
    if lo >= hi:
        raise CliError(f"--start: {lo.isoformat()} is not before --end {hi.isoformat()}")
    version: int | str = int(model) if model.isdigit() else model

    def tracker(experiment: str) -> Tracker:
        return Tracker(
            settings.mlflow_tracking_uri,
            artifact_location=settings.mlflow_artifact_location,
            experiment=experiment,
        )

    def load_reference() -> Any:
        if reference is not None:
            return reference_from_file(reference)
        return reference_from_model(tracker(settings.mlflow_experiment), version)

    project = f"nba {settings.environment}"
    with output.Stages("drift", total=6 - (not mlflow) - (not workspace)) as stage:
        job = run_job(
            folder=log_dir or settings.decision_log_dir,
            start=lo,
            end=hi,
            reference=load_reference,
            config=settings.drift_config(),
            out_dir=out or settings.drift_report_dir,
            engine=EvidentlyDrift(),
            tracker=tracker(settings.drift_experiment) if mlflow else None,
            workspace=(settings.evidently_workspace, project) if workspace else None,
            environment=settings.environment,
            stage=stage,
        )
    report.print_drift(job.summary)
    console.print(f"report: {job.html}\nsummary: {job.summary_file}")
    if job.snapshot_id:
        console.print(
            f"workspace: {settings.evidently_workspace} (project {project!r}; "
            f"`evidently ui --workspace {settings.evidently_workspace}`)"
        )
    if job.exit_code:
        raise typer.Exit(job.exit_code)
