"""Decision-log rows for a simulated world without the HTTP service (drift tests, benchmarks).

``visit_points`` draws the moments customers come to the brand in a window, by the simulator's
own process (``nba.simulate``: background visits, returns after a disruption and after a
milestone), scaled by ``intensity`` so that a short window holds enough decisions while the mix
of visit kinds stays that of the training decisions. ``replay`` decides at those moments as the
service would (point-in-time features, the model, guardrails, arbitration; ``serving.score``)
and returns rows in the decision log's layout (``features.decision_log.DECISION_SCHEMA``), to be
written with ``write_part``. The live service adds exploration, latency and degraded answers;
replayed rows have none of them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features import schema
from features.build import build_features
from features.contract import ACTIONS, RawData
from features.decision_log import DECISION_SCHEMA, FEATURE_PREFIX
from features.derive import derive_features
from nba.simulate import DAY_NS, SimulationConfig
from serving.guardrails import RuleSet
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
) -> pd.DataFrame:
    """Decision-log rows (every ``DECISION_SCHEMA`` column) for ``points`` of ``world``."""
    requests = points.reset_index(drop=True).assign(
        decision_id=[f"{id_prefix}-{i}" for i in range(len(points))], channel="web"
    )
    entity = pd.DataFrame(
        {schema.ENTITY: requests["customer_id"], schema.EVENT_TIMESTAMP: requests["decided_at"]}
    )
    stored = build_features(world, entity)
    scored = score(model, rules, requests, stored, costs=costs)
    derived = derive_features(stored.reset_index(drop=True), requests["decided_at"])
    out = scored.assign(
        policy=model_version,
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
