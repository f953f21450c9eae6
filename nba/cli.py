"""The ``nba`` command line (``../shared/contracts/cli.md``).

Each subcommand builds the settings, does its work with a progress display, and on bad input
exits non-zero with one clear message and no traceback (``NBA_DEBUG=1`` shows the traceback).
Heavy libraries are imported inside the commands so that ``nba --help`` is instant.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from nba.settings import Settings, load_settings

app = typer.Typer(
    name="nba",
    help="Next-best-action for travel brands: simulate, build features, train, serve, monitor.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


class CliError(Exception):
    """Bad input or a failed precondition: reported as one message, exit code 2."""


class Stages:
    """A progress bar over the named stages of a command, with each stage's duration.

    Stages are short and few, so the bar advances per stage; a stage that has finer progress of
    its own (Feast's materialization) prints it beneath.
    """

    def __init__(self, title: str, total: int) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._title = title
        self._total = total
        self._task: TaskID | None = None
        self._started = time.perf_counter()
        self._label: str | None = None

    def __enter__(self) -> Stages:
        self._progress.start()
        self._task = self._progress.add_task(self._title, total=self._total)
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self._finish_current()
        self._progress.stop()

    def _finish_current(self) -> None:
        if self._label is not None and self._task is not None:
            elapsed = time.perf_counter() - self._started
            self._progress.console.print(f"[green]✓[/] {self._label} [dim]({elapsed:.1f} s)[/]")
            self._progress.advance(self._task)
        self._label = None

    def __call__(self, label: str) -> None:
        """Start the next stage (and close the previous one)."""
        self._finish_current()
        self._label = label
        self._started = time.perf_counter()
        if self._task is not None:
            self._progress.update(self._task, description=f"{self._title}: {label}")

    def done(self, label: str) -> None:
        """Close the current stage under a final label (e.g. with a count learned meanwhile)."""
        self._label = label
        self._finish_current()


def _parse_time(value: str | None, option: str) -> pd.Timestamp:
    """A tz-aware UTC timestamp from an ISO 8601 option, or now (floored to the second)."""
    if value is None:
        return pd.Timestamp.now(tz="UTC").floor("s")
    try:
        stamp = pd.Timestamp(value)
    except ValueError as exc:
        raise CliError(f"{option}: {value!r} is not an ISO 8601 timestamp") from exc
    if stamp.tzinfo is None:
        raise CliError(f"{option}: {value!r} needs a UTC offset or Z, e.g. 2026-11-23T12:00:00Z")
    return stamp.tz_convert("UTC")


@app.command()
def simulate(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the raw tables to.")],
    customers: Annotated[int, typer.Option(min=1, help="Number of customers.")] = 10_000,
    days: Annotated[int, typer.Option(min=31, help="Length of the window in days.")] = 365,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same world.")] = 0,
    end: Annotated[
        str | None, typer.Option(help="End of the window (ISO 8601 with offset); default now.")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="File format of the tables: parquet or csv.")
    ] = "parquet",
) -> None:
    """Write a simulated world in the raw data contract, window ending now."""
    from features.contract import write_raw
    from nba.simulate import SimulationConfig
    from nba.simulate import simulate as run_simulation

    if fmt not in ("parquet", "csv"):
        raise CliError(f"--format: {fmt!r} is not one of parquet, csv")
    config = SimulationConfig(end=_parse_time(end, "--end"), customers=customers, days=days,
                              seed=seed)  # fmt: skip
    started = time.perf_counter()
    with Stages("simulating", total=8) as stage:
        world = run_simulation(config, on_step=stage)
        stage(f"writing {fmt} tables to {out}")
        write_raw(world, out, fmt=fmt)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    table = Table(title=f"simulated world in {out} ({elapsed:.1f} s)")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, frame in world.tables().items():
        table.add_row(name, f"{len(frame):,}")
    Console().print(table)


@app.command()
def features(
    raw: Annotated[Path, typer.Option("--raw", help="Folder of raw tables (the contract).")],
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Snapshot time for the online store (ISO 8601); now."),
    ] = None,
) -> None:
    """Validate DIR, build the feature tables, `feast apply`, materialize the online store."""
    from features.build import build_feature_table
    from features.contract import load_raw
    from features.store import FeastAdapter

    settings = load_settings()
    snapshot = _parse_time(as_of, "--as-of")
    if not raw.is_dir():
        raise CliError(f"--raw: {raw} is not a folder")
    adapter = FeastAdapter(settings.feature_repo, settings.feature_store_yaml)
    with Stages("features", total=5) as stage:
        stage(f"validating {raw}")
        world = load_raw(raw)
        stage(f"building features from {world.n_rows():,} raw rows")
        table = build_feature_table(
            world,
            snapshot,
            base_currency=settings.base_currency,
            fx_rates=settings.fx_rates,
        )
        stage(f"writing the offline feature table ({len(table):,} rows)")
        adapter.write_offline(table)
        stage("feast apply")
        adapter.apply()
        stage(f"materializing {table['customer_id'].nunique():,} customers to the online store")
        adapter.materialize(end=snapshot)
    _print_summary(settings, table, snapshot)


def _print_summary(settings: Settings, table: pd.DataFrame, snapshot: pd.Timestamp) -> None:
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
    Console().print(summary)
    console.print(f"feature repo: {settings.feature_repo} (online store: {settings.online_store})")


def main() -> None:
    """Console entry point: run the app, turning bad input into one message and exit code 2.

    Usage errors (unknown or missing options, out-of-range values) are reported by Typer
    itself; errors raised by the work (invalid raw data, bad values) are caught here.
    """
    from features.contract import ContractError

    try:
        app()
    except (CliError, ContractError, ValueError, FileNotFoundError, PermissionError) as exc:
        if os.environ.get("NBA_DEBUG"):
            raise
        # The message quotes offending values from the data: print them verbatim (no markup).
        console.print("[red]error:[/] ", end="")
        console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
