"""The ``nba`` command line (``../shared/contracts/cli.md``).

Each subcommand builds the settings, does its work with a progress display, and on bad input
exits non-zero with one clear message and no traceback (``NBA_DEBUG=1`` shows the traceback).
Heavy libraries are imported inside the commands so that ``nba --help`` is instant.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import pandas as pd
import typer
from rich.table import Table

from nba import output, report
from nba.report import ACTION_NAMES
from nba.settings import Settings, load_settings

app = typer.Typer(
    name="nba",
    help="Next-best-action for travel brands: simulate, build features, train, serve, monitor.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: no <bool>/<str> metavars on flags, defaults shown.
    rich_markup_mode=None,
)
#: Stage lines and messages (stderr); results go to ``output.out`` (stdout). See nba.output.
console = output.err


@app.callback()
def _main(
    workspace: Annotated[
        Path | None,
        typer.Option(
            "--workspace",
            "-w",
            help="The workspace to work on [NBA_HOME; default: the nearest folder holding "
            "nba.yaml from the current one upwards, else the current folder].",
        ),
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Show the libraries' own output (Feast, MLflow, warnings) instead of sending "
            "it to the workspace's logs/nba.log.",
        ),
    ] = False,
) -> None:
    """Next-best-action for travel brands: simulate, build features, train, serve, monitor."""
    from nba import workspace as workspaces

    if workspace is not None:
        if not workspace.is_dir():
            raise CliError(f"--workspace: {workspace} is not a folder (create one: nba init DIR)")
        # Exported, not only passed down: `nba serve`'s workers and every subprocess see it.
        os.environ["NBA_HOME"] = str(workspace.resolve())
    # Quiet by default: a daily cron job prints its stages and a summary, not Feast's diffs.
    # The capture starts inside the command (``_quiet``), after its options were parsed, so
    # that --help and usage errors still reach the terminal.
    _RUN.update(log=workspaces.locate() / "logs" / "nba.log", verbose=verbose)


#: The log file and verbosity of this invocation (set by the callback, used by ``_quiet``).
_RUN: dict[str, Any] = {"log": Path("logs") / "nba.log", "verbose": False}
F = TypeVar("F", bound=Callable[..., Any])


def _quiet(command: F) -> F:
    """Run ``command`` with the libraries' output sent to the log (``nba.output.capture``)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        restore = output.capture(_RUN["log"], verbose=_RUN["verbose"])
        try:
            return command(*args, **kwargs)
        finally:
            restore()

    return cast(F, run)


def _prepare(settings: Settings) -> Settings:
    """Create the parts of the workspace that it lacks, once the command's input is valid.

    A folder without ``nba.yaml`` (the current one, when no workspace is found above it) gets
    the workspace layout on first use, so a command never writes next to the installed code.
    """
    from nba import workspace

    if (settings.workspace / workspace.MARKER).is_file():
        return settings  # a workspace already: its files are where its nba.yaml says
    workspace.materialize(settings.workspace)
    console.print(f"initialized an nba workspace in {settings.workspace} (as nba init does)")
    return load_settings()


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="The folder to create the workspace in.")],
    force: Annotated[
        bool, typer.Option("--force", help="Rewrite the template files of an existing one.")
    ] = False,
) -> None:
    """Create a workspace: settings, guardrails and triggers files, Feast repo, folders."""
    from nba import workspace

    try:
        written = workspace.init(directory, force=force)
    except workspace.WorkspaceError as error:
        raise CliError(str(error)) from None
    root = directory.resolve()
    console.print(f"nba workspace ready in {root} ({len(written)} files and folders written)")
    output.out.print(
        f"next:\n  cd {root}\n  nba simulate --out data/raw\n  nba features --raw data/raw\n"
        "  nba train --raw data/raw --force\n  NBA_API_KEYS=change-me nba serve"
    )


#: Environment switches that turn off the usage telemetry of MLflow, Feast, BentoML, Evidently.
TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "FEAST_USAGE": "False",
    "BENTOML_DO_NOT_TRACK": "True",
    "DO_NOT_TRACK": "1",
}


class CliError(Exception):
    """Bad input or a failed precondition: reported as one message, exit code 2."""


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
@_quiet
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
    scenario: Annotated[
        str | None,
        typer.Option(help="A shift in the last days: disruption_wave or price_shock."),
    ] = None,
    scenario_days: Annotated[
        int, typer.Option(min=1, help="Length of the shift in days (with --scenario).")
    ] = 7,
    preset: Annotated[
        str,
        typer.Option(
            "--world", help="Causal structure, a preset of nba.worlds (docs/simulator.md)."
        ),
    ] = "default",
) -> None:
    """Write a simulated world in the raw data contract, window ending now."""
    from features.contract import write_raw
    from nba.simulate import SCENARIOS, SimulationConfig
    from nba.simulate import simulate as run_simulation
    from nba.worlds import PRESETS

    if preset not in PRESETS:
        raise CliError(f"--world: {preset!r} is not one of {', '.join(PRESETS)}")

    if fmt not in ("parquet", "csv"):
        raise CliError(f"--format: {fmt!r} is not one of parquet, csv")
    if scenario is not None and scenario not in SCENARIOS:
        raise CliError(f"--scenario: {scenario!r} is not one of {', '.join(SCENARIOS)}")
    config = SimulationConfig(end=_parse_time(end, "--end"), customers=customers, days=days,
                              seed=seed, scenario=scenario,
                              scenario_days=scenario_days, world=preset)  # fmt: skip
    started = time.perf_counter()
    with output.Stages("simulating", total=8) as stage:
        world = run_simulation(config, on_step=stage)
        stage(f"writing {fmt} tables to {out}")
        write_raw(world, out, fmt=fmt)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    table = Table(title=f"simulated world in {out} ({elapsed:.1f} s)")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, frame in world.tables().items():
        table.add_row(name, f"{len(frame):,}")
    output.out.print(table)


@app.command()
@_quiet
def features(
    raw: Annotated[Path, typer.Option("--raw", help="Folder of raw tables (the contract).")],
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Snapshot time of the online store, ISO 8601; default: now."),
    ] = None,
) -> None:
    """Validate the raw tables of --raw, build the feature tables, apply the Feast
    declarations and materialize the online store."""
    from features.build import build_feature_table
    from features.contract import load_raw
    from memory.rebuild import merge
    from serving.runtime import refold_after_rebuild

    settings = load_settings()
    snapshot = _parse_time(as_of, "--as-of")
    if not raw.is_dir():
        raise CliError(f"--raw: {raw} is not a folder")
    settings = _prepare(settings)
    adapter = settings.feast_adapter()
    memory = settings.memory()
    with output.Stages("features", total=7) as stage:
        stage(f"validating {raw}")
        # Events after the snapshot (beyond the contract's tolerance) are refused, not dropped.
        world = load_raw(raw, now=snapshot)
        # The ledger up to now goes into the rebuild: it never forgets an acknowledged event.
        # Those from the first one stamped at or after the snapshot on are not in the build
        # (it counts what happened before its snapshot): they are folded again afterwards.
        folded = memory.fold_mark(snapshot)
        events = memory.events(until_seq=folded)
        stage(f"folding {len(events):,} ledger events into the raw tables")
        world = merge(world, events)
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
        stage("re-applying the events that arrived during the rebuild")
        refold_after_rebuild(memory, adapter, world, folded)
    report.print_summary(settings, table, snapshot)


@app.command()
@_quiet
def train(
    raw: Annotated[Path, typer.Option("--raw", help="Folder of raw tables (the contract).")],
    force: Annotated[
        bool, typer.Option("--force", help="Make this model champion without the gate.")
    ] = False,
    method: Annotated[
        str, typer.Option(help="Meta-learner: s (S-learner), t (T-learner) or dr (doubly robust).")
    ] = "s",
    n_estimators: Annotated[int, typer.Option(min=1, help="Trees per LightGBM model.")] = 300,
    learning_rate: Annotated[float, typer.Option(min=0.0, help="LightGBM learning rate.")] = 0.05,
    num_leaves: Annotated[int, typer.Option(min=2, help="LightGBM leaves per tree.")] = 15,
    min_child_samples: Annotated[
        int, typer.Option(min=1, help="LightGBM minimum rows per leaf.")
    ] = 200,
    early_stopping: Annotated[
        bool,
        typer.Option(
            help="Stop each model when a held-out tenth of its rows stops improving (faster, "
            "much so for t and dr on large logs; off: it lowered s's quality where measured)."
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train and evaluate on the decisions of --raw, log to MLflow, register, gate the
    champion."""
    from features.contract import load_raw
    from features.rule_policy import RulePolicyError, load_rule_policy
    from training.pipeline import run_training
    from training.selection import UnknownCandidate
    from training.tracking import Tracker

    settings = load_settings()
    if method not in ("s", "t", "dr"):
        raise CliError(f"--method: {method!r} is not one of s, t, dr")
    if not raw.is_dir():
        raise CliError(f"--raw: {raw} is not a folder")
    settings = _prepare(settings)
    params = {
        "method": method,
        "n_estimators": n_estimators,
        "learning_rate": learning_rate,
        "num_leaves": num_leaves,
        "min_child_samples": min_child_samples,
        "early_stopping": early_stopping,
        "random_state": seed,
        "n_jobs": -1,
        # NBA_TRAIN_ENGINE / NBA_DASK_SCHEDULER: where the models are fitted (same learners).
        "engine": settings.train_engine,
        "dask_scheduler": settings.dask_scheduler,
    }
    adapter = settings.feast_adapter()
    tracker = Tracker(
        settings.mlflow_tracking_uri,
        artifact_location=settings.mlflow_artifact_location,
        experiment=settings.mlflow_experiment,
    )
    try:
        rule_policy = load_rule_policy(settings.rule_policy)
    except RulePolicyError as error:
        raise CliError(f"the rule policy (NBA_RULE_POLICY): {error}") from None
    with output.Stages("training", total=6) as stage:
        stage(f"validating {raw}")
        world = load_raw(raw)
        try:
            result = run_training(
                world,
                adapter.historical,
                tracker,
                params,
                costs=settings.action_costs(),
                force=force,
                stage=stage,
                source=str(raw),
                gate_baselines=settings.gate_baselines,
                rule_policy=rule_policy,
                candidates=settings.train_candidates,
                confident_only=settings.act_only_when_confident,
            )
        except UnknownCandidate as error:
            raise CliError(f"NBA_TRAIN_CANDIDATES: {error}") from None
    report.print_evaluation(result)


@app.command()
@_quiet
def models() -> None:
    """Registered versions, their metrics, and which one is champion."""
    from training.tracking import Tracker

    settings = load_settings()
    tracker = Tracker(
        settings.mlflow_tracking_uri,
        artifact_location=settings.mlflow_artifact_location,
        experiment=settings.mlflow_experiment,
    )
    versions = tracker.versions()
    if not versions:
        raise CliError("no registered model yet: run `nba train --raw DIR --force` first")
    table = Table(title=f"registered versions of {tracker.model_name}")
    for col in ("version", "created (UTC)", "aliases", "DR value", "true value", "oracle share",
                "Qini promo", "gate"):  # fmt: skip
        table.add_column(col)
    for v in versions:
        m = v.metrics
        table.add_row(
            str(v.version),
            v.created.strftime("%Y-%m-%d %H:%M"),
            ", ".join(v.aliases) or "-",
            report.fmt(m.get("value_dr_learned")),
            report.fmt(m.get("value_true_learned")),
            report.fmt(m.get("oracle_share_captured"), pct=True),
            report.fmt(m.get("qini_promo"), digits=3),
            v.tags.get("gate.reason", "-"),
        )
    output.wide().print(table)


def _read_table(path: Path, what: str) -> pd.DataFrame:
    """A CSV or Parquet file (by extension)."""
    if not path.is_file():
        raise CliError(f"{what}: {path} is not a file")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype={"customer_id": str, "decision_id": str})
    raise CliError(f"{what}: {path} must end in .csv or .parquet")


@app.command()
@_quiet
def score(
    actions: Annotated[
        Path,
        typer.Option(
            "--actions",
            help="Rows customer_id, decided_at[, decision_id, channel]: a backtest at those "
            "times (point in time). Without decided_at: a campaign now, on the live state.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output file (.csv or .parquet).")],
    history: Annotated[
        Path | None,
        typer.Option(help="A decision log (actions table) for the promo frequency cap."),
    ] = None,
) -> None:
    """Offline decisions with point-in-time features, the champion model and the live policy."""
    from serving.guardrails import load_rules
    from serving.score import read_requests
    from serving.score import score as run_score
    from training.dataset import entity_frame_of
    from training.tracking import Tracker

    settings = load_settings()
    if out.suffix not in (".csv", ".parquet"):
        raise CliError(f"--out: {out} must end in .csv or .parquet")
    table = _read_table(actions, "--actions")
    if "decided_at" not in table.columns:  # a campaign now: the live state, as /decide_batch
        _score_live(settings, read_requests(table, live=True), out)
        return
    requests = read_requests(table)
    past = None
    if history is not None:
        past = read_requests(_read_table(history, "--history"))
        if "action" not in past.columns:
            raise CliError("--history: needs an action column (the raw actions table)")
    settings = _prepare(settings)
    rules = load_rules(settings.guardrails)
    tracker = Tracker(
        settings.mlflow_tracking_uri,
        artifact_location=settings.mlflow_artifact_location,
        experiment=settings.mlflow_experiment,
    )
    adapter = settings.feast_adapter()
    with output.Stages("scoring", total=3) as stage:
        stage("loading the champion model")
        model = tracker.load()
        stage(f"retrieving features at {len(requests):,} rows (Feast, point in time)")
        stored = adapter.historical(entity_frame_of(requests))
        stage("deciding")
        result = run_score(
            model,
            rules,
            requests,
            stored,
            history=past,
            costs=settings.action_costs(),
            holdout=settings.holdout(),
        )
    _write_table(result, out)
    mix = result["action"].value_counts(normalize=True)
    shares = ", ".join(f"{a} {mix.get(a, 0.0):.0%}" for a in ACTION_NAMES)
    output.out.print(f"{len(result):,} decisions written to {out}: {shares}")
    unknown = int((~result["features_found"]).sum())
    if unknown:
        console.print(f"{unknown:,} rows had no features (unknown customers): decided on defaults")


def _score_live(settings: Settings, requests: Any, out: Path) -> None:
    """``nba score`` without ``decided_at``: outbound decisions now through the service's own
    runtime (online store, customer memory, contact history, budget, decision log)."""
    from serving.config import ServiceSettings
    from serving.runtime import Runtime
    from serving.score import score_live

    settings = _prepare(settings)
    with output.Stages("scoring now (live state)", total=2) as stage:
        stage("opening the model, the online store and the customer memory")
        runtime = Runtime.start(ServiceSettings.of(settings))
        try:
            if runtime.problems:
                raise CliError("cannot decide now: " + "; ".join(runtime.problems))
            stage(f"deciding for {len(requests):,} customers")
            result = score_live(runtime.decider, requests)
        finally:
            runtime.close()  # the decision log is flushed: these decisions are on record
    _write_table(result, out)
    mix = result["action"].value_counts(normalize=True)
    shares = ", ".join(f"{a} {mix.get(a, 0.0):.0%}" for a in ACTION_NAMES)
    output.out.print(f"{len(result):,} decisions (now, live state) written to {out}: {shares}")


def _write_table(frame: Any, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        frame.to_parquet(out, index=False)
    else:
        frame.to_csv(out, index=False)


@app.command()
@_quiet
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 3000,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default NBA_SERVE_WORKERS).", min=1)
    ] = None,
) -> None:
    """The decision service (BentoML): /decide, /decide_batch, /events, /healthz, /readyz.

    Resolves the champion model once here and exports it to a folder that every worker loads,
    so all workers serve the same version and none imports MLflow. With NBA_MODEL_PATH set,
    that folder is served as is.
    """
    settings = _prepare(load_settings())
    env = dict(os.environ)
    if settings.model_path is None:
        from nba.champion import NoChampionError, export_champion

        try:
            exported = export_champion(settings)
        except NoChampionError as error:
            raise CliError(str(error)) from None
        settings = settings.model_copy(update={"model_path": exported.folder})
        if exported.compiled:
            console.print(f"compiled {exported.compiled} forests for batch decisions")
        console.print(f"serving {exported.label} (champion)")
    from serving.config import ENV_VAR, ServiceSettings

    # The workers get the settings resolved here (serving.config), not a fresh read of theirs.
    env[ENV_VAR] = ServiceSettings.of(settings).model_dump_json()
    if not settings.api_keys:
        console.print("[yellow]warning:[/] NBA_API_KEYS is empty: every keyed endpoint answers 401")
    count = workers or settings.serve_workers
    # BentoML reads per-service overrides from BENTOML_CONFIG_OPTIONS; the service is "nba".
    options = f"services.nba.workers={count}"
    env["BENTOML_CONFIG_OPTIONS"] = " ".join(
        filter(None, [env.get("BENTOML_CONFIG_OPTIONS"), options])
    )
    # ``bentoml serve`` whose arbiter stops accepting first on SIGTERM (``serving.server``);
    # each worker's uvicorn then answers the requests in flight and runs the shutdown hooks;
    # after the grace it cancels what still runs instead of waiting forever (BentoML's default).
    command = [sys.executable, "-m", "serving.server", "serving.service:NBA",
               "--host", host, "--port", str(port),
               "--timeout-graceful-shutdown", str(settings.shutdown_grace_seconds)]  # fmt: skip
    console.print(f"listening on http://{host}:{port} with {count} worker(s)")
    sys.stderr.flush()
    # Replace this process with BentoML's server: SIGTERM from a supervisor then reaches the
    # server itself, which runs the shutdown hooks (log flush) and exits 0.
    os.execve(sys.executable, command, env)


def main() -> None:
    """Console entry point: run the app, turning bad input into one message and exit code 2.

    Usage errors (unknown or missing options, out-of-range values) are reported by Typer
    itself; errors raised by the work (invalid raw data, bad values) are caught here.
    """
    from features.contract import ContractError
    from training.tracking import ModelNotAvailableError

    # No usage telemetry from the libraries: this service runs inside brands' networks.
    for name, value in TELEMETRY_OFF.items():
        os.environ.setdefault(name, value)
    try:
        app()
    except (
        CliError,
        ContractError,
        ModelNotAvailableError,
        ValueError,
        FileNotFoundError,
        PermissionError,
        TimeoutError,  # e.g. another `nba train` holding the champion gate's lock
    ) as exc:
        if os.environ.get("NBA_DEBUG"):
            raise
        # The message quotes offending values from the data: print them verbatim (no markup).
        console.print("[red]error:[/] ", end="")
        console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        # nba drift's input errors carry their own codes (empty window, missing columns, ...).
        sys.exit(getattr(exc, "exit_code", 2))


# ``nba outcomes``, ``nba impact`` and ``nba drift`` (nba/cli_monitoring.py).
from nba import cli_monitoring  # noqa: E402

cli_monitoring.register(app, _quiet, CliError, _parse_time)
# ``nba consume`` (nba/cli_stream.py) and ``nba benchmark hillstrom`` (nba/cli_bench.py).
from nba import cli_bench, cli_stream  # noqa: E402

cli_stream.register(app, _quiet, CliError, _prepare)
cli_bench.register(app, _quiet, CliError)

if __name__ == "__main__":
    main()
