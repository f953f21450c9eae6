"""Decision-quality benchmark: oracle share of each method on each world preset.

For every preset of ``nba.worlds.PRESETS``: simulate a world (``nba.simulate``), build the
features at each decision with ``features.build.build_features`` (as ``nba train`` gets them
from Feast, point in time), assemble and time-split them as ``nba train`` does, select a policy
on the training decisions with cross-fitted DR values (``training.selection.select``, logged
data only), then fit every method on all training decisions and score it on the held-out latest
20% against the simulator's ``truth``:

    oracle share = (V(policy) - V(none)) / (V(oracle) - V(none))

over the actions the contract allows (no promo to a customer who opted out or unsubscribed:
every policy's promos there become ``none``, and the oracle's too).

1 is the oracle, 0 doing nothing. ``rules`` is the shipped rule policy ``serving/rules.yaml``
as written, ``hybrid`` that file judged by the data with confident learned overrides
(``training.priors``). In a world where nothing has an effect
the oracle is ``none`` and the share is undefined; the table then shows the true value per
decision against ``none`` (``Δ$``, 0 at best). ``selected`` is the policy selection chose (its
name in the last column).

    python benchmarks/quality.py [--customers 6000] [--seed 0] [--worlds default transfer ...]
        [--confident-only]
"""

from __future__ import annotations

import os

# LightGBM's OpenMP threads spin unless told not to (docs: stack-facts); set before import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):
    # `python benchmarks/quality.py`: this folder's features.py would shadow the package.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import math
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from features.build import build_features
from features.contract import ACTIONS
from features.rule_policy import load_rule_policy
from nba.simulate import SimulationConfig, simulate
from nba.worlds import PRESETS
from training import metrics
from training.dataset import assemble, entity_frame, time_split
from training.policy_learning import promo_allowed
from training.selection import CANDIDATES, DEFAULT_CANDIDATES, default_learners, select
from training.served import choose_names
from training.value import ActionCosts, true_value

console = Console(width=220)
END = pd.Timestamp("2026-11-01T00:00:00Z")


def run_world(
    name: str, customers: int, seed: int, costs: ActionCosts, confident_only: bool = False
) -> dict[str, object]:
    """Simulate, select, fit and score every method on one preset; one result row."""
    started = time.perf_counter()
    world = simulate(SimulationConfig(end=END, customers=customers, seed=seed, world=name))
    data = assemble(world, build_features(world, entity_frame(world)))
    train, test = time_split(data, 0.2)
    learners = default_learners(costs, seed, load_rule_policy(), candidates=CANDIDATES)
    # Every method is fitted and scored; the selection compares the default candidates only,
    # as ``nba train`` does (each one tested costs the others power).
    considered = {n: learn for n, learn in learners.items()
                  if n in ("none", "rules", *DEFAULT_CANDIDATES) or confident_only}  # fmt: skip
    selection = select(train, considered, costs, k=3, seed=seed, confident_only=confident_only)
    assert test.truth is not None
    truth = true_value(test.truth, ACTIONS, costs)
    # The contract forbids promos to customers who opted out or unsubscribed: there a promo is
    # doing nothing, for the oracle too (the simulator's truth would credit the forbidden one).
    blocked = ~promo_allowed(test.features)
    truth[blocked, ACTIONS.index("promo")] = truth[blocked, ACTIONS.index("none")]
    v_none = metrics.true_policy_value(np.full(len(test), "none", dtype=object), truth, ACTIONS)
    v_oracle = metrics.true_policy_value(metrics.oracle_policy(truth, ACTIONS), truth, ACTIONS)
    row: dict[str, object] = {"world": name, "decisions": len(data)}
    for method, learn in learners.items():
        chosen = choose_names(learn(train, selection.scores), test.X, test.features)
        value = metrics.true_policy_value(chosen, truth, ACTIONS)
        if v_oracle - v_none > 1e-9:
            row[method] = metrics.captured_share(value, v_none, v_oracle)
        else:
            row[method] = value - v_none  # Δ$ per decision: the no-effect world
        if method == selection.selected:
            row["selected"] = row[method]
    row["choice"] = selection.selected
    row["effects"] = v_oracle - v_none > 1e-9
    row["seconds"] = time.perf_counter() - started
    console.print(f"[green]✓[/] {name}: {selection.reason} ({row['seconds']:.0f} s)")
    console.print(selection.table.round(3).to_string())
    return row


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worlds", nargs="*", default=list(PRESETS))
    parser.add_argument(
        "--confident-only",
        action="store_true",
        help="select only among candidates that act only when confident",
    )
    args = parser.parse_args(argv)
    costs = ActionCosts()
    rows = [
        run_world(w, args.customers, args.seed, costs, args.confident_only) for w in args.worlds
    ]
    methods = [*default_learners(costs, rule_policy=load_rule_policy(), candidates=CANDIDATES),
               "selected"]  # fmt: skip

    table = Table(title=f"oracle share on held-out decisions ({args.customers:,} customers, "
                  f"seed {args.seed}; no-effect world: Δ$ per decision vs none)")  # fmt: skip
    table.add_column("world")
    table.add_column("decisions", justify="right")
    for m in methods:
        table.add_column(m, justify="right")
    table.add_column("choice")
    for row in rows:
        unit = "" if row["effects"] else " $"
        cells = [f"{float(row[m]):.2f}{unit}" for m in methods]  # type: ignore[arg-type]
        table.add_row(str(row["world"]), f"{row['decisions']:,}", *cells, str(row["choice"]))
    effect_rows = [r for r in rows if r["effects"]]
    if effect_rows:
        means = [np.mean([float(r[m]) for r in effect_rows]) for m in methods]  # type: ignore[arg-type]
        table.add_row("mean (worlds with effects)", "", *[f"{v:.2f}" for v in means], "")
    console.print(table)
    if any(math.isnan(float(r["selected"])) for r in rows):  # type: ignore[arg-type]
        console.print("[yellow]a selected value is NaN[/]")


if __name__ == "__main__":
    main()
