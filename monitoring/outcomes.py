"""Outcomes of logged decisions: the decision log joined with the bookings and emails that followed.

The service logs what it decided (``features.decision_log``); what happened next arrives later in
the brand's raw tables. ``observe`` joins the two into one row per decision whose horizon has
passed, with the raw contract's ``outcomes`` columns (``converted``: a booking within the
horizon; ``revenue``: the fares of those bookings; ``unsubscribed``: an opt-out within it), plus
what ``monitoring.impact`` needs beside them: ``pre_revenue`` (the customer's fares in the same
length of time *before* the decision, the variance-reducing covariate) and ``contacts_30d``
(decisions of the 30 days before whose intended action was not ``none``: fatigue).

"Passed" is judged against the raw data, not the wall clock: a decision counts once its horizon
ends at or before ``as_of`` (by default the latest booking or email record of the raw tables), so
an export that lags by a day never makes recent decisions look unconverted.

Every window is ``(decided_at, decided_at + horizon]``: a booking made in the same second as the
decision did not follow from it. Bookings of every status count (the contract's "booked").

Pure pandas/numpy over frames: the CLI reads and writes the files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd

from features.decision_log import ACTION_COLUMNS

#: Raw ``outcomes`` columns, in contract order.
OUTCOME_COLUMNS = ("decision_id", "converted", "revenue", "unsubscribed")
#: Look-back of the fatigue count (``contacts_30d``).
FATIGUE_DAYS = 30


@dataclass(frozen=True)
class Observed:
    """``observe``'s result."""

    #: One row per decision with a passed horizon: the log's columns, then ``converted``,
    #: ``revenue``, ``unsubscribed``, ``pre_revenue``, ``contacts_30d``.
    frame: pd.DataFrame
    #: Decisions left out because their horizon ends after ``as_of``.
    pending: int
    #: Decisions left out because their customer is not in the raw ``customers`` table.
    unknown_customers: int
    #: The end of the raw data the horizons were judged against.
    as_of: pd.Timestamp


def data_end(bookings: pd.DataFrame, email_events: pd.DataFrame) -> pd.Timestamp | None:
    """The latest booking or email record (the raw data's end), or None when both are empty."""
    stamps = [s.max() for s in (bookings["booked_at"], email_events["ts"]) if len(s)]
    return pd.Timestamp(max(stamps)).tz_convert("UTC") if stamps else None


def _window_sums(
    decisions: pd.DataFrame,
    events: pd.DataFrame,
    time_column: str,
    value: np.ndarray,
    lo: timedelta,
    hi: timedelta,
) -> tuple[np.ndarray, np.ndarray]:
    """Per decision, (count, sum of ``value``) of the customer's events with time in
    ``(decided_at + lo, decided_at + hi]``; decisions in ``decisions``' order."""
    n = len(decisions)
    if n == 0 or len(events) == 0:
        return np.zeros(n, dtype=np.int64), np.zeros(n)
    left = pd.DataFrame(
        {
            "row": np.arange(n),
            "customer_id": decisions["customer_id"].to_numpy(object),
            "t": decisions["decided_at"].to_numpy("datetime64[ns]"),
        }
    )
    right = pd.DataFrame(
        {
            "customer_id": events["customer_id"].to_numpy(object),
            "e": pd.to_datetime(events[time_column], utc=True).to_numpy("datetime64[ns]"),
            "v": value,
        }
    )
    # A customer has a handful of bookings and decisions a year: the pairwise join is small.
    pairs = left.merge(right, on="customer_id", how="inner")
    keep = (pairs["e"] > pairs["t"] + lo) & (pairs["e"] <= pairs["t"] + hi)
    pairs = pairs[keep.to_numpy()]
    counts = np.bincount(pairs["row"].to_numpy(), minlength=n)
    sums = np.bincount(pairs["row"].to_numpy(), weights=pairs["v"].to_numpy(), minlength=n)
    return counts.astype(np.int64), sums


def fares_in_base(bookings: pd.DataFrame, fx_rates: dict[str, float] | None = None) -> np.ndarray:
    """Booking fares in one currency: ``fx_rates`` gives units of base currency per unit.

    Raises ``ValueError`` when the bookings hold several currencies and a rate is missing (a
    sum of dollars and euros is no revenue).
    """
    fares = bookings["fare"].to_numpy(np.float64)
    currencies = bookings["currency"].astype(str)
    found = sorted(set(currencies.unique()))
    if len(found) <= 1:
        return fares
    rates = dict(fx_rates or {})
    base = [c for c in found if c not in rates]
    if len(base) > 1:
        raise ValueError(
            f"bookings are in {', '.join(found)}: give NBA_FX_RATES for all but one of them"
        )
    for currency in base:
        rates[currency] = 1.0
    return fares * currencies.map(rates).to_numpy(np.float64)


def superseded_dropped(decisions: pd.DataFrame) -> pd.DataFrame:
    """The decisions without those a trigger's service action replaced.

    A triggered decision that came back ``none`` while its action was eligible is sent as a
    service message: the log then holds the model's ``none`` row and the service row, whose
    ``context`` names the first (``service_action_of``). One decision was carried out, so the
    ``none`` row is dropped (else outcomes and impact would count it twice).
    """
    frame = decisions.copy()
    if "context" not in frame or "policy" not in frame:
        return frame
    served = frame.loc[frame["policy"].isin(["service_action", "holdout"]), "context"].dropna()
    replaced = set()
    for text in served:
        try:
            value = json.loads(text) if isinstance(text, str) else {}
        except ValueError:
            continue
        if isinstance(value, dict) and value.get("service_action_of"):
            replaced.add(str(value["service_action_of"]))
    if not replaced:
        return frame
    return frame[~frame["decision_id"].isin(replaced)].reset_index(drop=True)


def observe(
    decisions: pd.DataFrame,
    customers: pd.DataFrame,
    bookings: pd.DataFrame,
    email_events: pd.DataFrame,
    *,
    horizon: timedelta = timedelta(days=30),
    as_of: pd.Timestamp | None = None,
    fx_rates: dict[str, float] | None = None,
) -> Observed:
    """The decisions of ``decisions`` (decision-log rows) whose horizon has passed, with outcomes.

    Args:
        decisions: decision-log rows (at least the raw ``actions`` columns; ``intended_action``
            when present, else ``action``, counts contacts).
        customers, bookings, email_events: the raw tables (contract columns).
        horizon: length of the outcome window after each decision (the contract's 30 days).
        as_of: the end of the raw data; default ``data_end`` of the bookings and emails.
        fx_rates: see ``fares_in_base``.
    """
    end = as_of if as_of is not None else data_end(bookings, email_events)
    frame = superseded_dropped(decisions)
    frame["decided_at"] = pd.to_datetime(frame["decided_at"], utc=True)
    known = frame["customer_id"].isin(set(customers["customer_id"]))
    unknown = int((~known).sum())
    frame = frame[known.to_numpy()]
    passed = (
        frame["decided_at"] + horizon <= end
        if end is not None
        else pd.Series(False, index=frame.index)
    )
    pending = int((~passed).sum())
    # Contacts are counted over every known decision, pending ones included (they precede).
    everything = frame
    frame = frame[passed.to_numpy()].sort_values("decided_at", kind="stable")
    frame = frame.reset_index(drop=True)

    fares = fares_in_base(bookings, fx_rates)
    zero = timedelta(0)
    n_booked, revenue = _window_sums(frame, bookings, "booked_at", fares, zero, horizon)
    _, pre_revenue = _window_sums(frame, bookings, "booked_at", fares, -horizon, zero)
    unsubscribes = email_events[email_events["event_type"] == "unsubscribe"]
    n_unsub, _ = _window_sums(frame, unsubscribes, "ts", np.ones(len(unsubscribes)), zero, horizon)
    intended = (
        everything["intended_action"].fillna(everything["action"])
        if "intended_action" in everything
        else everything["action"]
    )
    contacts = everything[(intended != "none").to_numpy()]
    n_contacts, _ = _window_sums(
        frame, contacts.rename(columns={"decided_at": "at"}), "at",
        np.ones(len(contacts)), -timedelta(days=FATIGUE_DAYS), -timedelta(microseconds=1),
    )  # fmt: skip
    frame["converted"] = n_booked > 0
    frame["revenue"] = np.round(revenue, 2)
    frame["unsubscribed"] = n_unsub > 0
    frame["pre_revenue"] = np.round(pre_revenue, 2)
    frame["contacts_30d"] = n_contacts
    return Observed(frame, pending, unknown, end if end is not None else pd.NaT)


def as_raw(observed: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The raw contract's ``actions`` and ``outcomes`` rows of observed decisions."""
    actions = observed[list(ACTION_COLUMNS)].reset_index(drop=True)
    # The raw tables' canonical type (the log is in microseconds; a mix would be objects).
    actions["decided_at"] = actions["decided_at"].astype("datetime64[ns, UTC]")
    outcomes = observed[list(OUTCOME_COLUMNS)].reset_index(drop=True)
    return actions, outcomes


def merge_raw(
    existing: pd.DataFrame, new: pd.DataFrame, key: str = "decision_id"
) -> tuple[pd.DataFrame, int]:
    """``existing`` rows plus the ``new`` ones whose ``key`` it lacks (re-running adds nothing;
    a key repeated in ``new`` is added once); returns (merged, rows added)."""
    fresh = new[~new[key].isin(set(existing[key]))].drop_duplicates(key)
    if not len(existing):
        return fresh.reset_index(drop=True), len(fresh)
    merged = pd.concat([existing, fresh[list(existing.columns)]], ignore_index=True)
    return merged, len(fresh)
