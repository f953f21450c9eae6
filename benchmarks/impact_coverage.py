"""Impact coverage benchmark: does ``nba impact``'s 95% interval cover the true value?

Known truth comes from the simulator: one world (``nba.simulate``, 30,000 customers) gives, for
each of its decisions, the true conversion probability, expected revenue and unsubscribe
probability of every action (its ``truth`` table, the causal model of ``docs/simulator.md``).
Simulating 100 worlds would take long, so each replication draws *decision-level* data from that
truth directly, as the service and ``nba outcomes`` would produce it:

* the decisions are ``--decisions`` rows drawn from the world's decisions (with their
  customers, so that a customer's decisions stay correlated);
* the deployed policy knows the true values up to noise (``--noise`` currency units of error
  per action: a good but imperfect model) and picks the best positive one (promo only for
  reachable customers); the global control group is drawn afresh by ``serving.holdout`` with a
  new salt per replication (5%), and gets ``none`` unless the policy chose the apology credit
  (service actions allowed, the default);
* outcomes: conversion from the chosen action's true probability, at the customer's fare
  (the simulator's lognormal spread); unsubscribes likewise; and, because ``nba outcomes``
  counts every booking of the horizon, background bookings unrelated to the decision
  (Poisson, twice the customer's base conversion rate). The pre-period value (the CUPED
  covariate) is drawn from the same background and base rate.

The estimand is the true incremental net value per decision (value of the policy's action minus
value of the control group's action, averaged over the decisions; costs of the raw contract).
``monitoring.impact.difference`` estimates it from each replication; coverage is the share of
replications whose interval contains it. A second world where the actions change nothing and
cost nothing (a policy that does nothing useful) must give intervals around 0.

    python benchmarks/impact_coverage.py [--replications 100] [--decisions 100000]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):
    # Run as `python benchmarks/impact_coverage.py`: put the project root first.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from features.contract import ACTIONS
from monitoring.impact import difference, net_value
from nba.simulate import SimulationConfig, simulate
from serving.holdout import Holdout
from training.value import ActionCosts, action_cost

console = Console()
END = pd.Timestamp("2026-11-01T00:00:00Z")
#: Background bookings in a horizon: Poisson with this many times the base conversion rate.
BACKGROUND = 2.0


@dataclass
class Truth:
    """Per decision of the world: true values per action, and the customer's draws."""

    customer: np.ndarray
    p_convert: np.ndarray  # (n, 4) in ACTIONS order
    p_unsub: np.ndarray
    fare: np.ndarray  # the customer's typical fare
    base: np.ndarray  # conversion probability with no action

    def value(self, costs: ActionCosts) -> np.ndarray:
        """True expected net value of each action, ``(n, 4)``, background bookings included: a
        promo's discount is paid on every booking of the horizon, also those that would have
        happened anyway (``nba outcomes`` counts them all), so they are part of its cost."""
        revenue = (self.p_convert + BACKGROUND * self.base[:, None]) * self.fare[:, None]
        out = np.empty_like(revenue)
        for j, action in enumerate(ACTIONS):
            out[:, j] = (
                revenue[:, j]
                - action_cost(action, revenue[:, j], costs)
                - costs.unsubscribe * self.p_unsub[:, j]
            )
        return out

    def without_effects(self) -> Truth:
        """The same decisions in a world where every action does what ``none`` does."""
        none = ACTIONS.index("none")
        same = np.repeat(self.p_convert[:, [none]], len(ACTIONS), axis=1)
        unsub = np.repeat(self.p_unsub[:, [none]], len(ACTIONS), axis=1)
        return Truth(self.customer, same, unsub, self.fare, self.base)


def world_truth(customers: int, seed: int) -> Truth:
    world = simulate(SimulationConfig(end=END, customers=customers, days=400, seed=seed))
    assert world.truth is not None
    truth = world.truth.set_index("decision_id").loc[world.actions["decision_id"]]
    p = np.column_stack([truth[f"p_convert_{a}"] for a in ACTIONS])
    u = np.column_stack([truth[f"p_unsubscribe_{a}"] for a in ACTIONS])
    none = ACTIONS.index("none")
    fare = truth["revenue_none"].to_numpy() / p[:, none]
    return Truth(world.actions["customer_id"].to_numpy(object), p, u, fare, p[:, none])


def replicate(
    truth: Truth, rows: np.ndarray, rep: int, costs: ActionCosts, noise: float
) -> tuple[float, object, object]:
    """One replication: (true value per decision, CUPED estimate, plain estimate)."""
    rng = np.random.default_rng(10_000 + rep)
    n = len(rows)
    customer = truth.customer[rows]
    p = truth.p_convert[rows]
    u = truth.p_unsub[rows]
    fare = truth.fare[rows]
    values = truth.value(costs)[rows]
    gain = values - values[:, [ACTIONS.index("none")]]
    estimated = gain + rng.normal(0.0, noise, gain.shape)
    estimated[:, ACTIONS.index("none")] = 0.0
    estimated[u[:, ACTIONS.index("none")] <= 0.0, ACTIONS.index("promo")] = -np.inf
    chosen = estimated.argmax(axis=1)
    chosen[estimated.max(axis=1) <= 0.0] = ACTIONS.index("none")
    holdout = Holdout(share=0.05, salt=f"rep-{rep}")
    held = holdout.members(customer)
    control = np.where(np.isin(chosen, [ACTIONS.index(a) for a in holdout.withheld]),
                       ACTIONS.index("none"), chosen)  # fmt: skip
    action = np.where(held, control, chosen)
    at = np.arange(n)
    true_per_decision = float((values[at, chosen] - values[at, control]).mean())

    spread = rng.lognormal(-0.045, 0.3, (3, n))
    converted = rng.random(n) < p[at, action]
    background = rng.poisson(BACKGROUND * truth.base[rows]) * fare * spread[1]
    revenue = converted * fare * spread[0] + background
    unsubscribed = rng.random(n) < u[at, action]
    pre = (rng.poisson(3.0 * truth.base[rows]) * fare) * spread[2]
    names = np.asarray(ACTIONS, dtype=object)[action]
    y = net_value(names, revenue, unsubscribed, costs)
    return true_per_decision, difference(y, ~held, customer, pre), difference(y, ~held, customer)


def run(truth: Truth, label: str, replications: int, decisions: int, costs: ActionCosts,
        noise: float) -> dict[str, object]:  # fmt: skip
    rng = np.random.default_rng(7)
    # Decisions drawn by customer, so that each customer's decisions come together.
    customers, first = np.unique(truth.customer, return_inverse=True)
    by_customer = np.argsort(first, kind="stable")
    starts = np.searchsorted(first[by_customer], np.arange(len(customers)))
    sizes = np.diff(np.append(starts, len(first)))
    order = rng.permutation(len(customers))
    take = np.cumsum(sizes[order]) <= decisions
    picked = order[take]
    rows = np.concatenate([by_customer[starts[c] : starts[c] + sizes[c]] for c in picked])
    started = time.perf_counter()
    truths, cuped, plain = [], [], []
    for rep in range(replications):
        t, c, p = replicate(truth, rows, rep, costs, noise)
        truths.append(t)
        cuped.append(c)
        plain.append(p)
    truth_mean = float(np.mean(truths))
    return {
        "world": label,
        "decisions": len(rows),
        "customers": int(take.sum()),
        "truth": truth_mean,
        "covered": sum(e.covers(t) for e, t in zip(cuped, truths, strict=True)),  # type: ignore[attr-defined]
        "covered_plain": sum(e.covers(t) for e, t in zip(plain, truths, strict=True)),  # type: ignore[attr-defined]
        "width": float(np.mean([e.ci_high - e.ci_low for e in cuped])),  # type: ignore[attr-defined]
        "width_plain": float(np.mean([e.ci_high - e.ci_low for e in plain])),  # type: ignore[attr-defined]
        "mean_estimate": float(np.mean([e.estimate for e in cuped])),  # type: ignore[attr-defined]
        "sd_estimate": float(np.std([e.estimate for e in cuped], ddof=1)),  # type: ignore[attr-defined]
        "zero_in": sum(e.covers(0.0) for e in cuped),  # type: ignore[attr-defined]
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replications", type=int, default=100)
    parser.add_argument("--decisions", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=30_000, help="of the simulated world")
    parser.add_argument("--noise", type=float, default=20.0, help="policy's value error")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    costs = ActionCosts()
    t0 = time.perf_counter()
    truth = world_truth(args.customers, args.seed)
    console.print(f"[green]✓[/] world of {args.customers:,} customers: {len(truth.customer):,} "
                  f"decisions with their truth ({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    null_costs = ActionCosts(promo_fare_share=0.0, apology_credit=0.0, recognition=0.0)
    results = [
        run(truth, "simulator's causal model", args.replications, args.decisions, costs,
            args.noise),
        run(truth.without_effects(), "actions do nothing, cost nothing", args.replications,
            args.decisions, null_costs, args.noise),
    ]  # fmt: skip
    table = Table(title=f"95% interval of the incremental net value per decision, "
                  f"{args.replications} replications, 5% control group")  # fmt: skip
    for column in ("world", "decisions", "customers", "true value", "mean estimate (± s.e.)",
                   "covered (CUPED)", "mean width (CUPED)", "covered (plain)",
                   "mean width (plain)", "0 inside", "time"):  # fmt: skip
        table.add_column(column, justify="left" if column == "world" else "right")
    for r in results:
        table.add_row(
            str(r["world"]), f"{r['decisions']:,}", f"{r['customers']:,}", f"{r['truth']:.2f}",
            f"{r['mean_estimate']:.2f} ± {r['sd_estimate'] / args.replications**0.5:.2f}",
            f"{r['covered']}/{args.replications}",
            f"{r['width']:.2f}", f"{r['covered_plain']}/{args.replications}",
            f"{r['width_plain']:.2f}", f"{r['zero_in']}/{args.replications}",
            f"{r['seconds']:.0f} s",
        )  # fmt: skip
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
