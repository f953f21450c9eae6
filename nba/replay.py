"""Decision-log rows for a simulated world without the HTTP service (drift tests, benchmarks).

``visit_points`` draws the moments customers come to the brand in a window, by the simulator's
own process (``nba.simulate``: background visits, returns after a disruption and after a
milestone), scaled by ``intensity`` so that a short window holds enough decisions while the mix
of visit kinds stays that of the training decisions. ``replay`` decides at those moments as the
service would (point-in-time features, the model, guardrails, arbitration; ``serving.score``)
and returns rows in the decision log's layout (``features.decision_log.DECISION_SCHEMA``), to be
written with ``write_part``. The live service adds exploration, latency and degraded answers;
replayed rows have none of them. With a ``serving.holdout.Holdout``, the global control group is
decided as the service decides it (``policy = holdout``, ``intended_action``).

``act_out`` draws what the replayed decisions caused, from the simulator's causal model (the
customers' latent traits are redrawn from the world's configuration: same seed, same draws):
conversion bookings and unsubscribes added to the world, so that ``nba outcomes`` and
``nba impact`` find them in the raw tables. Replayed decisions do not see each other's
consequences (features are those of the world before them).

``python -m nba.replay`` runs both for ``make demo``: a decision log of the weeks before the
last outcome horizon, with their consequences written into the raw folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features import schema
from features.build import build_features
from features.contract import ACTIONS, RawData
from features.decision_log import DECISION_SCHEMA, FEATURE_PREFIX
from features.derive import derive_columns, derive_features
from nba.decisions import _conversion_bookings, _decision_unsubscribes, cust_traits
from nba.simcore import DAY_NS
from nba.simulate import SimulationConfig, _customers
from nba.worlds import causal_model
from serving.guardrails import RuleSet
from serving.holdout import Holdout, policy_label
from serving.score import score
from training.value import ActionCosts


def visit_points(
    world: RawData,
    start: pd.Timestamp,
    end: pd.Timestamp,
    *,
    intensity: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """``customer_id, decided_at`` of visits in ``[start, end)``, ``intensity`` times as many as
    the simulator's decision process would draw there (same kinds of visit in the same mix)."""
    rng = np.random.default_rng(seed)
    start_ns, end_ns = pd.Timestamp(start).value, pd.Timestamp(end).value
    per_year = SimulationConfig.decisions_per_year * intensity
    customers = world.customers
    created = customers["created_at"].to_numpy("datetime64[ns]").astype(np.int64)
    active = np.maximum(created, start_ns)
    years = np.maximum(end_ns - active, 0) / (365 * DAY_NS)
    counts = rng.poisson(per_year * years)
    owner = np.repeat(np.arange(len(customers)), counts)
    t = active[owner] + (rng.random(len(owner)) * (end_ns - active[owner])).astype(np.int64)

    # Returns after a disruption (0.7 per disrupted leg, 6 days on average) and after a
    # milestone crossing (0.8, 4 days): as in nba.decisions._decision_times.
    flights = world.flights
    f_owner = pd.Index(customers["customer_id"]).get_indexer(flights["customer_id"])
    f_ns = flights["scheduled_at"].to_numpy("datetime64[ns]").astype(np.int64)
    bad = ((flights["delay_minutes"] >= 120) | flights["cancelled"]).to_numpy()
    miles = flights["miles_earned"].to_numpy(np.int64)
    total = customers["prior_miles"].to_numpy(np.int64)[f_owner] + (
        flights.assign(m=miles).groupby("customer_id", sort=False)["m"].cumsum().to_numpy()
    )
    before = total - miles
    crossed = ((before < 100_000) & (total >= 100_000)) | (total // 1_000_000 > before // 1_000_000)
    owners, times = [owner], [t]
    for rows, rate, mean_days in ((bad, 0.7, 6.0), (crossed, 0.8, 4.0)):
        n = rng.poisson(rate * intensity, int(rows.sum()))
        src = np.repeat(np.flatnonzero(rows), n)
        owners.append(f_owner[src])
        times.append(f_ns[src] + (rng.exponential(mean_days, len(src)) * DAY_NS).astype(np.int64))
    owner, t = np.concatenate(owners), np.concatenate(times)
    keep = (t >= start_ns) & (t < end_ns)
    order = np.argsort(t[keep], kind="stable")
    return pd.DataFrame(
        {
            "customer_id": customers["customer_id"].to_numpy(object)[owner[keep][order]],
            "decided_at": pd.to_datetime(t[keep][order], utc=True).floor("s"),
        }
    )


def replay(
    world: RawData,
    points: pd.DataFrame,
    model: Any,
    rules: RuleSet,
    *,
    costs: ActionCosts | None = None,
    model_version: str = "replay",
    id_prefix: str = "r",
    holdout: Holdout | None = None,
) -> pd.DataFrame:
    """Decision-log rows (every ``DECISION_SCHEMA`` column) for ``points`` of ``world``."""
    requests = points.reset_index(drop=True).assign(
        decision_id=[f"{id_prefix}-{i}" for i in range(len(points))], channel="web"
    )
    entity = pd.DataFrame(
        {schema.ENTITY: requests["customer_id"], schema.EVENT_TIMESTAMP: requests["decided_at"]}
    )
    stored = build_features(world, entity)
    scored = score(model, rules, requests, stored, costs=costs, holdout=holdout)
    derived = derive_features(stored.reset_index(drop=True), requests["decided_at"])
    policies = [policy_label(m, False, model_version) for m in scored["holdout"].tolist()]
    out = scored.drop(columns=["holdout"]).assign(
        policy=policies,
        channel="web",
        model_version=model_version,
        degraded=False,
        degraded_reason=None,
        explored=False,
        candidates=";".join(ACTIONS),
        context=None,
        latency_ms=np.nan,
    )
    for name in schema.MODEL_FEATURES:
        out[FEATURE_PREFIX + name] = derived[name].astype(np.float64).to_numpy()
    return out[list(DECISION_SCHEMA.names)]


def act_out(
    world: RawData, config: SimulationConfig, rows: pd.DataFrame, *, seed: int = 0
) -> tuple[RawData, pd.DataFrame]:
    """``world`` with the bookings and unsubscribes the decisions ``rows`` caused, and the
    truth of every decision (``p_convert_<a>``, ``revenue_<a>``, ``p_unsubscribe_<a>``).

    ``config`` must be the one ``world`` was simulated with (its customers' latent traits are
    drawn again from it); outcomes follow the simulator's causal model (``docs/simulator.md``).
    """
    rng = np.random.default_rng(config.seed)
    end_ns = pd.Timestamp(config.end).tz_convert("UTC").floor("s").value
    cust = _customers(config, rng, end_ns - config.days * DAY_NS)
    owner = pd.Index(cust.ids).get_indexer(rows["customer_id"])
    if (owner < 0).any():
        raise ValueError("act_out: decisions for customers the world does not have")
    decided = pd.to_datetime(rows["decided_at"], utc=True)
    feats = build_features(
        world,
        pd.DataFrame(
            {
                schema.ENTITY: rows["customer_id"].to_numpy(),
                schema.EVENT_TIMESTAMP: decided.to_numpy(),
            }
        ),
    )
    derived = derive_columns({c: feats[c] for c in feats.columns}, decided.to_numpy())
    truth = causal_model(cust_traits(cust, owner), feats, derived)
    draw = np.random.default_rng(seed)
    column = pd.Index(ACTIONS).get_indexer(rows["action"])
    n = np.arange(len(rows))
    p_conv = np.column_stack([truth[f"p_convert_{a}"] for a in ACTIONS])[n, column]
    p_unsub = np.column_stack([truth[f"p_unsubscribe_{a}"] for a in ACTIONS])[n, column]
    converted = draw.random(len(rows)) < p_conv
    fare = cust.typical_fare[owner] * draw.lognormal(-0.045, 0.3, len(rows))
    revenue = np.where(converted, np.round(fare, 2), 0.0)
    unsubscribed = draw.random(len(rows)) < p_unsub
    t_ns = decided.to_numpy("datetime64[ns]").astype(np.int64)
    bookings = _conversion_bookings(draw, cust, owner, t_ns, converted, revenue, world.bookings)
    email = _decision_unsubscribes(draw, cust, owner, t_ns, unsubscribed, world.email_events)
    truth.insert(0, "decision_id", rows["decision_id"].to_numpy(object))
    return dataclasses.replace(world, bookings=bookings, email_events=email), truth


def main(argv: list[str] | None = None) -> None:
    """``make demo``'s replay: decisions of the champion, with the control group, in the weeks
    before the last outcome horizon of a simulated world, and their consequences."""
    from features.contract import load_raw, write_raw
    from features.decision_log import write_part
    from nba.settings import load_settings
    from serving.guardrails import load_rules
    from training.tracking import Tracker

    parser = argparse.ArgumentParser(prog="python -m nba.replay", description=main.__doc__)
    parser.add_argument("--raw", required=True, help="the simulated world's raw folder")
    parser.add_argument("--customers", type=int, required=True, help="as given to nba simulate")
    parser.add_argument("--seed", type=int, required=True, help="as given to nba simulate")
    parser.add_argument("--end", required=True, help="as given to nba simulate (ISO 8601)")
    parser.add_argument("--days", type=int, default=365, help="as given to nba simulate")
    parser.add_argument("--weeks", type=int, default=8, help="weeks of decisions to replay")
    parser.add_argument("--intensity", type=float, default=1.0, help="visits, x the simulator's")
    parser.add_argument("--log-dir", help="the replay's own decision log, replaced on each run "
                        "[logs/replay in the workspace]")  # fmt: skip
    args = parser.parse_args(argv)
    settings = load_settings()
    # Its own folder, not the service's log: a rerun (a new world with the same customer ids)
    # replaces it rather than mixing two worlds' decisions.
    log_dir = Path(args.log_dir) if args.log_dir else settings.workspace / "logs" / "replay"
    if log_dir.is_dir():
        shutil.rmtree(log_dir)
    config = SimulationConfig(end=pd.Timestamp(args.end), customers=args.customers,
                              days=args.days, seed=args.seed)  # fmt: skip
    world = load_raw(args.raw)
    end = pd.Timestamp(args.end).tz_convert("UTC") - pd.Timedelta(days=config.outcome_days)
    start = end - pd.Timedelta(weeks=args.weeks)
    tracker = Tracker(settings.mlflow_tracking_uri,
                      artifact_location=settings.mlflow_artifact_location,
                      experiment=settings.mlflow_experiment)  # fmt: skip
    model = tracker.load()
    points = visit_points(world, start, end, intensity=args.intensity, seed=args.seed)
    rows = replay(world, points, model, load_rules(settings.guardrails),
                  costs=settings.action_costs(), model_version="replay",
                  holdout=settings.holdout())  # fmt: skip
    write_part(log_dir, rows.to_dict("records"), DECISION_SCHEMA, "decided_at", 0)
    world, _ = act_out(world, config, rows, seed=args.seed)
    write_raw(world, args.raw)
    held = int((rows["policy"] == "holdout").sum())
    print(f"replayed {len(rows):,} decisions ({held:,} in the control group) from "
          f"{start:%Y-%m-%d} to {end:%Y-%m-%d} into {log_dir}; their "
          f"bookings and unsubscribes added to {args.raw}")  # fmt: skip


if __name__ == "__main__":
    main()
