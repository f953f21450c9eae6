"""``nba benchmark hillstrom``: our estimator and the policy methods beside the peers.

Registered on ``nba.cli.app`` by ``register`` (as ``nba.cli_stream`` is: ``nba.cli`` passes its
error type and helpers, since ``python -m nba.cli`` runs that module as ``__main__``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from nba import output, report

console = output.err
#: ``nba.cli``'s error type (``register``).
_CLI: dict[str, Any] = {}


def register(app: typer.Typer, quiet: Any, error: type[Exception]) -> None:
    """Add ``benchmark hillstrom`` to ``app`` (``nba.cli`` calls it)."""
    _CLI.update(error=error)
    bench = typer.Typer(help="Benchmarks on public data.", no_args_is_help=True,
                        rich_markup_mode=None)  # fmt: skip
    bench.command("hillstrom")(quiet(benchmark_hillstrom))
    app.add_typer(bench, name="benchmark")


def CliError(message: str) -> Exception:
    """``nba.cli.CliError(message)``: one message, exit code 2."""
    error: type[Exception] = _CLI["error"]
    return error(message)


def benchmark_hillstrom(
    data: Annotated[Path, typer.Option("--data", help="The Hillstrom MineThatData CSV.")],
    seeds: Annotated[
        str, typer.Option(help="Comma-separated split seeds; the first is the headline split.")
    ] = "42,0,1,2,3",
    peers: Annotated[
        bool, typer.Option(help="Also run scikit-uplift and causalml (the `bench` extra).")
    ] = True,
    policy: Annotated[
        bool,
        typer.Option(
            help="Also run the policy-learning methods (DR-learner and policy tree on AIPW "
            "scores, the confidence filter)."
        ),
    ] = True,
) -> None:
    """Our estimator beside scikit-uplift and causalml on Hillstrom (visit, 70/30 split)."""
    from training.hillstrom_policy import run as run_hillstrom

    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError as exc:
        raise CliError(f"--seeds: {seeds!r} is not a comma-separated list of integers") from exc
    if not data.is_file():
        raise CliError(f"--data: {data} is not a file")
    with console.status("[bold]Hillstrom benchmark[/]…", spinner="dots") as status:
        started = time.perf_counter()
        table = run_hillstrom(
            data,
            seeds=seed_list,
            peers=peers,
            policy=policy,
            progress=lambda label: status.update(
                f"[bold]Hillstrom[/] {time.perf_counter() - started:.0f} s: {label}"
            ),
        )
    out = Table(
        title=f"Hillstrom (visit): seed {seed_list[0]} split, and mean ± sd over seeds {seed_list}"
    )
    for col in ("learner", "Qini W", "Qini M", "IPW 3-arm", "Qini W mean ± sd", "Qini M mean",
                "IPW mean", "IPW SE", "s/fit", "note"):  # fmt: skip
        out.add_column(col)
    for _, row in table.iterrows():
        spread = row.get("qini_womens_std")
        qini_w = report.fmt(row.get("qini_womens_mean"), 3)
        out.add_row(
            str(row["learner"]),
            report.fmt(row.get("qini_womens"), 3),
            report.fmt(row.get("qini_mens"), 3),
            report.fmt(row.get("ipw_value_3arm"), 4),
            qini_w if qini_w == "-" else f"{qini_w} ± {report.fmt(spread, 3)}",
            report.fmt(row.get("qini_mens_mean"), 3),
            report.fmt(row.get("ipw_value_3arm_mean"), 4),
            report.fmt(row.get("ipw_se_mean"), 4),
            report.fmt(row.get("seconds"), 1),
            str(row.get("error") or ""),
        )
    output.wide().print(out)
