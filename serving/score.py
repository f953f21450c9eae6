"""Offline decisions (``nba score``): the live policy applied to given (customer, time) rows.

Point-in-time features in, the same value model, guardrails and arbitration as the service out,
vectorized over the whole file. No I/O here: the command reads and writes the files.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features.build import count_in_window
from features.conditions import CHANNELS
from features.derive import derive_features
from serving.advice import advises
from serving.advice import many as advice_many
from serving.decider import Decider, Request
from serving.guardrails import RuleSet
from serving.history import COUNTS, MARKETING
from serving.holdout import Holdout
from serving.policy import ACTIONS, arbitrate_batch, evaluate_batch
from training.value import ActionCosts, expected_value

#: Offline there is no live budget to pace: the apology budget never binds in a backtest.
UNLIMITED_BUDGET = 10**9


def read_requests(frame: pd.DataFrame, *, live: bool = False) -> pd.DataFrame:
    """Check and normalise the rows to score: ``customer_id``, ``decided_at`` (tz-aware; not
    with ``live``), and an optional ``decision_id`` (made up as ``s-<row>`` when absent) and
    ``channel``."""
    needed = ("customer_id",) if live else ("customer_id", "decided_at")
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"actions file: missing columns {missing} (need {', '.join(needed)})")
    out = frame.copy()
    if out["customer_id"].isna().any():
        rows = (np.flatnonzero(out["customer_id"].isna().to_numpy()) + 1)[:5].tolist()
        raise ValueError(f"actions file: customer_id is empty on rows {rows}")
    out["customer_id"] = out["customer_id"].astype(str)
    if "channel" in out.columns:
        bad = ~out["channel"].isin(list(CHANNELS))
        if bad.any():
            rows = (np.flatnonzero(bad.to_numpy()) + 1)[:5].tolist()
            raise ValueError(f"actions file: channel must be one of {', '.join(CHANNELS)}; rows "
                             f"{rows} are not")  # fmt: skip
    if live:
        return out
    raw = out["decided_at"]
    if pd.api.types.is_datetime64_any_dtype(raw):
        if getattr(raw.dt, "tz", None) is None:
            raise ValueError("actions file: decided_at needs a UTC offset or Z (timezone-aware)")
        stamps = raw.dt.tz_convert("UTC")
    else:
        text = raw.astype(str).str.strip()
        # Offsets may differ from row to row (Z, +02:00): each must be present.
        naive = ~text.str.contains(r"(?:Z|[+-]\d{2}:?\d{2})$", regex=True)
        stamps = pd.to_datetime(text, errors="coerce", format="ISO8601", utc=True)
        bad = stamps.isna() | naive
        if bad.any():
            rows = (np.flatnonzero(bad.to_numpy()) + 1)[:5].tolist()
            raise ValueError(
                f"actions file: decided_at must be an ISO 8601 timestamp with a UTC offset or Z; "
                f"rows {rows} are not"
            )
    out["decided_at"] = stamps.astype("datetime64[ns, UTC]")
    if "decision_id" not in out.columns:
        out["decision_id"] = [f"s-{i}" for i in range(len(out))]
    return out


def contact_counts_offline(requests: pd.DataFrame, history: pd.DataFrame | None) -> pd.DataFrame:
    """The contact counts (``serving.history.COUNTS``) before each request, from a decision
    log (the raw ``actions`` table, with its ``channel``); all 0 without one."""
    n = len(requests)
    if history is None or len(history) == 0:
        return pd.DataFrame({name: np.zeros(n, dtype=np.int64) for name in COUNTS})
    given = history[history["action"] != "none"]
    who, when = requests["customer_id"], requests["decided_at"]

    def counted(rows: pd.DataFrame, days: int, keys: pd.Series | None = None) -> np.ndarray:
        ids = rows["customer_id"] if keys is None else keys
        asked = who if keys is None else who + "|" + channel
        return count_in_window(ids, rows["decided_at"], asked, when, days)

    channel = (requests["channel"].astype(str) if "channel" in requests
               else pd.Series("web", index=requests.index))  # fmt: skip
    marketing = given[given["action"].isin(list(MARKETING))]
    marketing_keys = marketing["customer_id"] + "|" + marketing["channel"].astype(str)
    return pd.DataFrame(
        {
            "promos_7d": counted(given[given["action"] == "promo"], 7),
            "contacts_7d": counted(marketing, 7),
            "contacts_7d_channel": counted(marketing, 7, marketing_keys),
            "recognitions_30d": counted(given[given["action"] == "recognition"], 30),
            "apology_credits_30d": counted(given[given["action"] == "apology_credit"], 30),
        }
    )


def score(
    model: Any,
    rules: RuleSet,
    requests: pd.DataFrame,
    stored: pd.DataFrame,
    *,
    history: pd.DataFrame | None = None,
    costs: ActionCosts | None = None,
    holdout: Holdout | None = None,
) -> pd.DataFrame:
    """Per-action uplift and expected value, guardrails, and the chosen action per request.

    ``stored`` holds the ``schema.STORED`` features of each request row (point in time). A row
    without features (an unknown customer) is decided on defaults with guardrails applied,
    which fail closed. With ``holdout``, members of the global control group are decided as the
    service decides them (``serving.holdout``): ``holdout`` True, the withheld actions blocked,
    and ``intended_action`` the action they would have got (everyone else: the action).
    """
    costs = costs or ActionCosts()
    features = derive_features(stored.reset_index(drop=True), requests["decided_at"])
    X = features[list(model.feature_names_)].astype(np.float64)
    effects = model.predict_effects(X)
    ev = expected_value(effects, model.actions_, costs)
    values = np.zeros((len(X), len(ACTIONS)))
    uplift = np.zeros((len(X), len(ACTIONS)))
    for j, action in enumerate(model.actions_):
        values[:, ACTIONS.index(action)] = ev[:, j]
        uplift[:, ACTIONS.index(action)] = effects["converted"][:, j]

    context = features.assign(
        channel=requests["channel"].to_numpy(object) if "channel" in requests else None,
        apology_budget_left=UNLIMITED_BUDGET,
        **{k: v.to_numpy() for k, v in contact_counts_offline(requests, history).items()},
    )
    # The selected policy's own rule of choice (``serving.advice``), as in the service.
    lower = np.full(values.shape, np.nan)
    advice = None
    if advises(model):
        advice = model.advise(X.to_numpy(np.float64), context, values)
        values = advice.values.copy()
        values[:, ACTIONS.index("none")] = 0.0
        lower = advice.lower
    mask, blocked_by = evaluate_batch(rules, context)
    prefer = advice_many(advice, np.arange(len(values)), mask, blocked_by)
    chosen, propensity = arbitrate_batch(values, mask, prefer=prefer)
    intended = chosen.copy()
    member = np.zeros(len(requests), dtype=bool)
    if holdout is not None:
        member = holdout.members(requests["customer_id"].astype(str))
        if member.any():
            held_mask = mask[member] | holdout.withheld_mask()
            chosen[member], propensity[member] = arbitrate_batch(
                values[member], held_mask, prefer=None if prefer is None else prefer[member]
            )
            mask[member] = held_mask
            for i in np.flatnonzero(member).tolist():
                blocked_by[i] = [
                    (*rules, "holdout") if a in holdout.withheld else rules
                    for a, rules in zip(ACTIONS, blocked_by[i], strict=True)
                ]

    out = pd.DataFrame(
        {
            "decision_id": requests["decision_id"].to_numpy(object),
            "customer_id": requests["customer_id"].to_numpy(object),
            "decided_at": requests["decided_at"].to_numpy(),
            "action": chosen,
            "propensity": propensity,
            "holdout": member,
            "intended_action": intended,
        }
    )
    for j, action in enumerate(ACTIONS):
        out[f"uplift_{action}"] = uplift[:, j]
        out[f"value_{action}"] = values[:, j]
        out[f"value_lower_{action}"] = lower[:, j]
        out[f"eligible_{action}"] = ~mask[:, j]
        out[f"blocked_by_{action}"] = [";".join(rows[j]) for rows in blocked_by]
    out["features_found"] = stored["marketing_opt_in"].notna().to_numpy()
    return out


def score_live(decider: Decider, requests: pd.DataFrame, channel: str = "email") -> pd.DataFrame:
    """Outbound decisions *now* (a campaign): the service's own ``Decider.decide_batch``, so
    the same online state, ledger-fed features, contact history, budget and decision log as
    ``/decide``; every action chosen is recorded as a contact, as the service would.

    ``requests`` has ``customer_id`` and optional ``channel`` (default ``channel``) and
    ``decision_id`` columns (the decisions get the service's own ids; an input id is kept
    as ``request_id``). Same columns as ``score`` (``decided_at`` is the decision time).
    """
    channels = (requests["channel"].astype(str) if "channel" in requests
                else pd.Series(channel, index=requests.index))  # fmt: skip
    made = [Request(c, {"channel": ch}) for c, ch in zip(requests["customer_id"], channels,
                                                           strict=True)]  # fmt: skip
    decided_at = pd.Timestamp.now(tz="UTC")
    answers = decider.decide_batch(made)
    out = pd.DataFrame(
        {
            "decision_id": [a["decision_id"] for a in answers],
            "customer_id": [a["customer_id"] for a in answers],
            "decided_at": decided_at,
            "action": [a["action"] for a in answers],
            "channel": channels.to_numpy(object),
        }
    )
    if "decision_id" in requests:
        out["request_id"] = requests["decision_id"].to_numpy(object)
    for action in ACTIONS:
        entries = [next((r for r in a["ranking"] if r["action"] == action), None) for a in answers]
        out[f"uplift_{action}"] = [np.nan if e is None else e["uplift"] for e in entries]
        out[f"value_{action}"] = [np.nan if e is None else e["expected_value"] for e in entries]
        out[f"value_lower_{action}"] = [
            np.nan if e is None or e.get("value_lower") is None else e["value_lower"]
            for e in entries
        ]
        out[f"eligible_{action}"] = [bool(e and e["eligible"]) for e in entries]
        out[f"blocked_by_{action}"] = [";".join(e["blocked_by"]) if e else "" for e in entries]
    out["features_found"] = [bool(a.get("known_customer", True)) for a in answers]
    out["degraded"] = [bool(a["degraded"]) for a in answers]
    return out
