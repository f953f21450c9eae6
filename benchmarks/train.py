"""Training benchmark: fit the uplift model and evaluate it on ~1M logged decisions.

Simulates a world large enough for ~1M decisions, builds the features at each decision with
``features.build.build_features`` (not Feast: this measures training alone), assembles and
time-splits them as ``nba train`` does, then times each training stage with the settings
``nba train`` uses and prints one table. Target: training + evaluation of 1M decisions x ~40
features in <= 180 s on 2 cores.

    python benchmarks/train.py [--customers 100000] [--decisions-per-year 12.2]
        [--features 40] [--methods s t dr] [--cache /tmp/nba-train-bench.pkl]
        [--set max_bin=63 --set early_stopping=True ...]
        [--engine dask [--dask-scheduler tcp://...]]

Each method's total is the training and evaluation part of ``nba train``: fit + the DR reward
model + evaluate (not the Feast retrieval, the drift reference or the MLflow logging).
Wall seconds are the target's measure; CPU seconds (this process, all threads) are printed
beside them because the machine may be shared: CPU / wall near 2 means the stage had both
cores (with ``--engine dask`` the fit's CPU is this process's only, not the workers').
``--set key=value`` overrides an estimator parameter (int, float, None, True, False or
a string), e.g. to measure a speed knob's effect on time and quality.

The project had 30 model features, now 48 (issue 17 added the traveller type and the offer
history), so ``--features 40`` (the default) no longer pads; it appended uninformative noise
columns up to 40 so that the time was measured at the target's width (``--features 0``: the
project's own features only). ``--cache`` keeps the assembled, split data between runs (simulating
1M decisions takes ~70 s) for experiments with ``--set``.
"""

from __future__ import annotations

import os

# LightGBM's OpenMP threads spin at 100% of a core between parallel regions unless told not to;
# on these VMs that made 2-thread training 15x slower (docs: stack-facts). Must be set before
# libgomp loads, i.e. before lightgbm is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):
    # Run as `python benchmarks/train.py`: put the project root first (this folder holds a
    # `features.py` that would shadow the `features` package).
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import functools
import inspect
import pickle
import resource
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from features.build import build_features
from nba.simulate import SimulationConfig, simulate
from training.dataset import TrainingSet, assemble, entity_frame, time_split
from training.evaluate import Evaluation, evaluate, fit_reward_model
from training.uplift import MultiActionUplift
from training.value import ActionCosts

console = Console()

TARGET_SECONDS = 180.0
#: `nba train` options that are estimator parameters under the same name.
_CLI_PARAMS = (
    "method",
    "n_estimators",
    "learning_rate",
    "num_leaves",
    "min_child_samples",
    "early_stopping",
)


def nba_train_defaults() -> dict[str, Any]:
    """The estimator parameters `nba train` uses by default, read off the command's options so
    that the benchmark follows them (the command also passes ``n_jobs=-1``)."""
    from nba.cli import train

    options = inspect.signature(train).parameters
    params = {name: options[name].default for name in _CLI_PARAMS}
    return {**params, "random_state": options["seed"].default, "n_jobs": -1}


TEST_SHARE = 0.2


class Clock:
    """Wall and CPU seconds (this process, all threads) per stage."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}

    def __call__(self, label: str, fn: Callable[[], Any]) -> tuple[Any, float]:
        """Run ``fn``; returns its result and wall seconds, keeps CPU seconds under ``label``.

        CPU seconds are shown beside wall seconds because other work on the machine slows the
        wall clock: CPU / wall close to the core count means the stage had the cores to itself.
        """
        with console.status(f"{label}…"):
            start, cpu_start = time.perf_counter(), time.process_time()
            result = fn()
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        self.cpu[label] = cpu
        console.print(f"[green]✓[/] {label} ({elapsed:.1f} s wall, {cpu:.1f} s CPU)")
        return result, elapsed


_timed = Clock()


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_gb() -> float:
    """Peak RSS since the last reset (VmHWM), else since the process started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _make_data(args: argparse.Namespace) -> tuple[TrainingSet, TrainingSet, list[list[str]]]:
    """Simulate, build features at the decisions, assemble and split (or load the cache)."""
    rows: list[list[str]] = []
    cache = Path(args.cache) if args.cache else None
    key = (args.customers, args.decisions_per_year, args.seed)
    if cache is not None and cache.exists():
        with cache.open("rb") as fh:
            cached_key, train, test = pickle.load(fh)
        if cached_key == key:
            console.print(f"loaded {len(train) + len(test):,} decisions from {cache}")
            rows.append(["data (cached)", "", f"{len(train) + len(test):,}", str(cache)])
            return train, test, rows
        console.print(f"[yellow]{cache} holds another world {cached_key}: rebuilding[/]")
    end = pd.Timestamp("2026-11-01", tz="UTC")
    cfg = SimulationConfig(
        end=end,
        customers=args.customers,
        decisions_per_year=args.decisions_per_year,
        seed=args.seed,
    )
    world, t_sim = _timed(f"simulate {args.customers:,} customers", lambda: simulate(cfg))
    rows.append(["simulate", f"{t_sim:.1f}", f"{len(world.actions):,} decisions", "not timed"])
    stored, t_feat = _timed(
        f"build features at {len(world.actions):,} decisions",
        lambda: build_features(world, entity_frame(world)),
    )
    rows.append(["build features", f"{t_feat:.1f}", f"{len(stored):,}", "not timed"])

    def prepare() -> tuple[TrainingSet, TrainingSet]:
        return time_split(assemble(world, stored), TEST_SHARE)

    (train, test), t_asm = _timed("assemble + time split", prepare)
    rows.append(["assemble + split", f"{t_asm:.1f}", f"{len(train) + len(test):,}", "not timed"])
    if cache is not None:
        with cache.open("wb") as out:
            pickle.dump((key, train, test), out, protocol=pickle.HIGHEST_PROTOCOL)
    return train, test, rows


def _pad(data: TrainingSet, width: int, seed: int) -> TrainingSet:
    """Append uninformative N(0, 1) columns until ``data.X`` has ``width`` columns."""
    extra = width - data.X.shape[1]
    if extra <= 0:
        return data
    rng = np.random.default_rng(seed)
    noise = pd.DataFrame(
        rng.standard_normal((len(data), extra)),
        columns=[f"noise_{i:02d}" for i in range(extra)],
        index=data.X.index,
    )
    return TrainingSet(
        X=pd.concat([data.X, noise], axis=1),
        decisions=data.decisions,
        outcomes=data.outcomes,
        features=data.features,
        truth=data.truth,
    )


def _parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` overrides of estimator parameters: int, float, None, True, False or str."""
    out: dict[str, Any] = {}
    for item in items:
        key, _, raw = item.partition("=")
        value: Any = raw
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                continue
        value = {"None": None, "True": True, "False": False}.get(raw, value)
        out[key.strip()] = value
    return out


def _quality(ev: Evaluation) -> str:
    table = ev.policy_table
    learned = table.loc["learned"]
    text = f"DR {learned['dr']:.3f} ± {learned['dr_se']:.3f}"
    if "true" in table.columns:
        text += f", true {learned['true']:.3f}"
        share = ev.metrics.get("oracle_share_captured", float("nan"))
        text += f", oracle share {share:.3f}"
    return text


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--decisions-per-year", type=float, default=12.2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--features",
        type=int,
        default=40,
        help="pad X with noise columns to this width (0: no padding)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=("s", "t", "dr"),
        default=None,
        help="methods to time (default: nba train's, then the others)",
    )
    parser.add_argument("--cache", default=None, help="pickle of the split data, reused")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        help="estimator parameter override key=value (repeatable)",
    )
    parser.add_argument("--engine", choices=("local", "dask"), default="local")
    parser.add_argument("--dask-scheduler", default=None)
    args = parser.parse_args(argv)  # fmt: skip

    train, test, rows = _make_data(args)
    train, test = _pad(train, args.features, 11), _pad(test, args.features, 12)
    n_rows, n_features = len(train) + len(test), train.X.shape[1]
    defaults = nba_train_defaults()
    methods = args.methods or list(dict.fromkeys([defaults.pop("method"), "s", "t", "dr"]))
    defaults.pop("method", None)
    params = {**defaults, **_parse_sets(args.sets)}
    if args.engine != "local":
        params.update(engine=args.engine, dask_scheduler=args.dask_scheduler)
    costs = ActionCosts()
    console.print(f"{len(train):,} train / {len(test):,} test rows, {n_features} features; "
                  f"params {params}")  # fmt: skip

    load_before = os.getloadavg()[0]
    exact_peak = _reset_peak_rss()
    reward, t_reward = _timed(
        "fit_reward_model",
        lambda: fit_reward_model(train, costs, params["random_state"], n_jobs=params["n_jobs"]),
    )
    stage_rows: list[list[str]] = [
        ["fit_reward_model", f"{t_reward:.1f}", f"{_timed.cpu['fit_reward_model']:.1f}",
         f"{len(train):,}", "shared by the methods"],
    ]  # fmt: skip
    totals: dict[str, tuple[float, float, float]] = {}
    for method in methods:
        _reset_peak_rss()
        model = MultiActionUplift(method=method, **params)

        def fit(model: MultiActionUplift = model) -> MultiActionUplift:
            return model.fit(
                train.X, train.decisions["action"], train.decisions["propensity"], train.outcomes
            )

        fit_label, eval_label = f"fit {method!r}", f"evaluate {method!r}"
        _, t_fit = _timed(fit_label, fit)
        ev, t_eval = _timed(eval_label, functools.partial(evaluate, model, test, reward, costs))
        cpu = _timed.cpu[fit_label] + _timed.cpu[eval_label] + _timed.cpu["fit_reward_model"]
        totals[method] = (t_fit + t_reward + t_eval, cpu, _peak_rss_gb())
        trees = sorted({b.num_trees() for b in _boosters(model)})
        stage_rows.append(
            [
                fit_label,
                f"{t_fit:.1f}",
                f"{_timed.cpu[fit_label]:.1f}",
                f"{len(train):,}",
                f"trees per model {trees[0]}–{trees[-1]}",
            ]
        )
        stage_rows.append([eval_label, f"{t_eval:.1f}", f"{_timed.cpu[eval_label]:.1f}",
                           f"{len(test):,}", _quality(ev)])  # fmt: skip
    load_after = os.getloadavg()[0]

    table = Table(
        title=f"training benchmark: {n_rows:,} decisions x {n_features} features, "
        f"{os.cpu_count()} cores"
    )
    for col in ("stage", "wall s", "CPU s", "rows", "notes"):
        table.add_column(col)
    for row in rows:
        table.add_row(row[0], row[1], "", *row[2:])
    for row in stage_rows:
        table.add_row(*row)
    for method, (total, cpu, peak) in totals.items():
        ok = "yes" if total <= TARGET_SECONDS else "NO"
        table.add_row(
            f"[bold]total {method!r}[/]",
            f"[bold]{total:.1f}[/]",
            f"{cpu:.1f}",
            f"{n_rows:,}",
            f"fit + reward model + evaluate ≤ {TARGET_SECONDS:.0f} s: [bold]{ok}[/]; peak RSS "
            f"{peak:.2f} GB{'' if exact_peak else ' (process)'}",
        )
    console.print(table)
    console.print(f"params: {params}")
    console.print(f"1-min load average: {load_before:.1f} before, {load_after:.1f} after "
                  "(above ~2 on 2 cores, other processes shared the CPU)")  # fmt: skip


def _boosters(model: MultiActionUplift) -> list[Any]:
    """Every distinct booster of a fitted model (the S-learner shares them across actions)."""
    found = {id(b): b for b in [*model.models_.values(), *model.base_models_.values()]}
    return list(found.values())


if __name__ == "__main__":
    main()
