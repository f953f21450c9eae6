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
from typing import Annotated, Any

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

#: The contract's actions, in display order.
ACTION_NAMES = ("promo", "apology_credit", "recognition", "none")

#: Environment switches that turn off the usage telemetry of MLflow, Feast, BentoML, Evidently.
TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "FEAST_USAGE": "False",
    "BENTOML_DO_NOT_TRACK": "True",
    "DO_NOT_TRACK": "1",
}


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
    scenario: Annotated[
        str | None,
        typer.Option(help="A shift in the last days: disruption_wave or price_shock."),
    ] = None,
    scenario_days: Annotated[
        int, typer.Option(min=1, help="Length of the shift in days (with --scenario).")
    ] = 7,
) -> None:
    """Write a simulated world in the raw data contract, window ending now."""
    from features.contract import write_raw
    from nba.simulate import SCENARIOS, SimulationConfig
    from nba.simulate import simulate as run_simulation

    if fmt not in ("parquet", "csv"):
        raise CliError(f"--format: {fmt!r} is not one of parquet, csv")
    if scenario is not None and scenario not in SCENARIOS:
        raise CliError(f"--scenario: {scenario!r} is not one of {', '.join(SCENARIOS)}")
    config = SimulationConfig(end=_parse_time(end, "--end"), customers=customers, days=days,
                              seed=seed, scenario=scenario,
                              scenario_days=scenario_days)  # fmt: skip
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

    settings = load_settings()
    snapshot = _parse_time(as_of, "--as-of")
    if not raw.is_dir():
        raise CliError(f"--raw: {raw} is not a folder")
    adapter = settings.feast_adapter()
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


@app.command()
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
    """Train and evaluate on DIR's decisions, log to MLflow, register, gate the champion."""
    from features.contract import load_raw
    from training.pipeline import run_training
    from training.tracking import Tracker

    settings = load_settings()
    if method not in ("s", "t", "dr"):
        raise CliError(f"--method: {method!r} is not one of s, t, dr")
    if not raw.is_dir():
        raise CliError(f"--raw: {raw} is not a folder")
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
    with Stages("training", total=5) as stage:
        stage(f"validating {raw}")
        world = load_raw(raw)
        result = run_training(
            world,
            adapter.historical,
            tracker,
            params,
            costs=settings.action_costs(),
            force=force,
            stage=stage,
            source=str(raw),
        )
    _print_evaluation(result)


def _print_evaluation(result: Any) -> None:
    ev = result.evaluation
    out = Console()
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
    out.print(f"learned policy's action mix: {mix}")
    gate = result.gate
    verdict = "[green]promoted to champion[/]" if gate.promoted else "[yellow]not promoted[/]"
    out.print(f"nba-uplift version {result.version}: {verdict} ({gate.reason})")


@app.command()
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
            _fmt(m.get("value_dr_learned")),
            _fmt(m.get("value_true_learned")),
            _fmt(m.get("oracle_share_captured"), pct=True),
            _fmt(m.get("qini_promo"), digits=3),
            v.tags.get("gate.reason", "-"),
        )
    _wide().print(table)


def _wide() -> Console:
    """A console wide enough for our tables whatever the terminal (CI logs have no width)."""
    return Console(width=max(Console().width, 160))


def _fmt(value: float | None, digits: int = 2, pct: bool = False) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:.1%}" if pct else f"{value:.{digits}f}"


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
def score(
    actions: Annotated[
        Path, typer.Option("--actions", help="Rows customer_id, decided_at[, decision_id].")
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
    requests = read_requests(_read_table(actions, "--actions"))
    past = None
    if history is not None:
        past = read_requests(_read_table(history, "--history"))
        if "action" not in past.columns:
            raise CliError("--history: needs an action column (the raw actions table)")
    rules = load_rules(settings.guardrails)
    tracker = Tracker(
        settings.mlflow_tracking_uri,
        artifact_location=settings.mlflow_artifact_location,
        experiment=settings.mlflow_experiment,
    )
    adapter = settings.feast_adapter()
    with Stages("scoring", total=3) as stage:
        stage("loading the champion model")
        model = tracker.load()
        stage(f"retrieving features at {len(requests):,} rows (Feast, point in time)")
        stored = adapter.historical(entity_frame_of(requests))
        stage("deciding")
        result = run_score(
            model, rules, requests, stored, history=past, costs=settings.action_costs()
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        result.to_parquet(out, index=False)
    else:
        result.to_csv(out, index=False)
    mix = result["action"].value_counts(normalize=True)
    shares = ", ".join(f"{a} {mix.get(a, 0.0):.0%}" for a in ACTION_NAMES)
    Console().print(f"{len(result):,} decisions written to {out}: {shares}")
    unknown = int((~result["features_found"]).sum())
    if unknown:
        console.print(f"{unknown:,} rows had no features (unknown customers): decided on defaults")


@app.command()
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
    settings = load_settings()
    env = dict(os.environ)
    if settings.model_path is None:
        from serving.decider import LoadedModel
        from serving.runtime import export_model
        from training.tracking import Tracker

        tracker = Tracker(
            settings.mlflow_tracking_uri,
            artifact_location=settings.mlflow_artifact_location,
            experiment=settings.mlflow_experiment,
        )
        info = tracker.champion()
        if info is None:
            raise CliError("no champion model in the registry: run `nba train --raw DIR --force`")
        model = tracker.load(info.version)
        folder = settings.decision_log_dir.parent / "serving-model"
        export_model(model, f"{tracker.model_name}/{info.version}", folder, info.run_id)
        env["NBA_MODEL_PATH"] = str(folder)
        if settings.compiled_trees:
            # Compile once here: the workers then load the cached code instead of each
            # compiling it (≈ 2.5 s a model).
            from serving.runtime import compile_for_batches

            compiled = compile_for_batches(
                LoadedModel(model, info.version), settings.model_copy(update={"model_path": folder})
            )
            if compiled:
                console.print(f"compiled {compiled} forests for batch decisions")
        console.print(f"serving {tracker.model_name} version {info.version} (champion)")
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


@app.command()
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
    6 no reference, 2 other bad input.
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
    with Stages("drift", total=6 - (not mlflow) - (not workspace)) as stage:
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
    _print_drift(job.summary)
    console.print(f"report: {job.html}\nsummary: {job.summary_file}")
    if job.snapshot_id:
        console.print(
            f"workspace: {settings.evidently_workspace} (project {project!r}; "
            f"`evidently ui --workspace {settings.evidently_workspace}`)"
        )
    if job.exit_code:
        raise typer.Exit(job.exit_code)


def _print_drift(summary: dict[str, Any]) -> None:
    out = _wide()
    feats = summary["features"]
    status = "[red]DRIFT[/]" if summary["alerts"] else "[green]ok[/]"
    out.print(
        f"{status}: {summary['window_rows']:,} decisions from {summary['window_start']} to "
        f"{summary['window_end']} against {summary['reference']} "
        f"({summary['reference_rows']:,} reference rows); "
        f"{feats['drifted']} of {feats['compared']} features drifted ({feats['share']:.0%})"
    )
    for alert in summary["alerts"]:
        out.print(f"  [red]![/] {alert}")
    table = Table(title=f"drifted features and predictions ({summary['thresholds']['method']})")
    for col in ("column", "score", "mean ref", "mean now", "missing ref", "missing now", "note"):
        table.add_column(col, justify="left" if col in ("column", "note") else "right")
    rows = [r for g in ("features", "predictions") for r in summary[g]["columns"] if r["drifted"]]
    for r in rows[:15]:
        table.add_row(r["column"], _fmt(r["score"], 3), _fmt(r["mean_reference"]),
                      _fmt(r["mean_current"]), _fmt(r["missing_reference"], pct=True),
                      _fmt(r["missing_current"], pct=True), r["note"])  # fmt: skip
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
            _fmt(r["reference_share"], pct=True),
            _fmt(r["preferred_share"], pct=True),
            shift,
            _fmt(r["logged_share"], pct=True),
            _fmt(blocked.get(r["action"]), pct=True),
        )
    out.print(mix)
    out.print(f"degraded decisions: {summary['degraded']['share']:.1%}")


benchmark_app = typer.Typer(help="Benchmarks on public data.", no_args_is_help=True)
app.add_typer(benchmark_app, name="benchmark")


@benchmark_app.command("hillstrom")
def benchmark_hillstrom(
    data: Annotated[Path, typer.Option("--data", help="The Hillstrom MineThatData CSV.")],
    seeds: Annotated[
        str, typer.Option(help="Comma-separated split seeds; the first is the headline split.")
    ] = "42,0,1,2,3",
    peers: Annotated[
        bool, typer.Option(help="Also run scikit-uplift and causalml (the `bench` extra).")
    ] = True,
) -> None:
    """Our estimator beside scikit-uplift and causalml on Hillstrom (visit, 70/30 split)."""
    from training.hillstrom import run as run_hillstrom

    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError as exc:
        raise CliError(f"--seeds: {seeds!r} is not a comma-separated list of integers") from exc
    if not data.is_file():
        raise CliError(f"--data: {data} is not a file")
    with console.status("[bold]Hillstrom benchmark[/]…", spinner="dots") as status:
        table = run_hillstrom(
            data, seeds=seed_list, peers=peers, progress=lambda label: status.update(label)
        )
    out = Table(
        title=f"Hillstrom (visit): seed {seed_list[0]} split, and mean over seeds {seed_list}"
    )
    for col in ("learner", "Qini W", "Qini M", "IPW 3-arm", "Qini W mean", "Qini M mean",
                "IPW mean", "s/fit", "note"):  # fmt: skip
        out.add_column(col)
    for _, row in table.iterrows():
        out.add_row(
            str(row["learner"]),
            _fmt(row.get("qini_womens"), 3),
            _fmt(row.get("qini_mens"), 3),
            _fmt(row.get("ipw_value_3arm"), 4),
            _fmt(row.get("qini_womens_mean"), 3),
            _fmt(row.get("qini_mens_mean"), 3),
            _fmt(row.get("ipw_value_3arm_mean"), 4),
            _fmt(row.get("seconds"), 1),
            str(row.get("error") or ""),
        )
    _wide().print(out)


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
    ) as exc:
        if os.environ.get("NBA_DEBUG"):
            raise
        # The message quotes offending values from the data: print them verbatim (no markup).
        console.print("[red]error:[/] ", end="")
        console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        # nba drift's input errors carry their own codes (empty window, missing columns, ...).
        sys.exit(getattr(exc, "exit_code", 2))


if __name__ == "__main__":
    main()
