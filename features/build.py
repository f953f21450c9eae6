"""Point-in-time customer features from validated raw tables.

``build_features(raw, points)`` computes, for every query point (customer, t), the stored
features of ``features.schema.STORED`` using only records strictly before t. The same function
builds the offline feature table (points at each logged decision plus a snapshot at ``as_of``),
the training set and ad-hoc backtests; it never reads the clock.

How it stays fast on ~10M raw events: every event table becomes a *timeline* sorted by one
int64 key ``customer_code * span + time_ms``. A query (customer, t) is then a ``searchsorted``
into that key; windowed counts and sums are differences of positions and prefix sums, and "the
last event before t" is the position just before. Times are floored to milliseconds; flooring
can only drop an event that happened within the same millisecond before t, never admit one at or
after t, so it cannot leak the future.

When each record becomes known (the point-in-time rules):

* bookings at ``booked_at`` (all statuses: the final status is only known later);
* a flown leg at ``scheduled_at + delay_minutes`` (the delay is known once it has happened), a
  cancelled leg at ``scheduled_at``; miles are credited when the leg is flown;
* a service case at ``opened_at`` (with its topic and sentiment), its closing at ``closed_at``;
  the brand's compensation at ``closed_at``, or at ``opened_at`` for a case still open;
* web and email events at ``ts``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from features import schema
from features.contract import RawData
from features.timeline import KEY_LIMIT, MS_PER_DAY, NS_PER_MS, Clock, Timeline, take, to_ms
from features.traveller import leg_trips, offer_history, return_trips, traveller_type

_EMPTY_DTYPES = {
    "int": "int64",
    "float": "float64",
    "bool": "bool",
    "timestamp": "datetime64[ns, UTC]",
    "string": "object",
}


def _timestamps(t_ms: np.ndarray, idx: np.ndarray) -> pd.Series:
    """Event times picked by ``idx`` as tz-aware UTC timestamps (NaT where idx is -1)."""
    ns = np.full(len(idx), np.iinfo(np.int64).min, dtype=np.int64)
    ok = idx >= 0
    ns[ok] = t_ms[idx[ok]] * NS_PER_MS
    return pd.Series(pd.to_datetime(ns, utc=True))


def next_milestone(miles: np.ndarray) -> np.ndarray:
    """The next lifetime-mile milestone strictly above ``miles`` (100k, then each million)."""
    miles = np.asarray(miles, dtype=np.int64)
    step = schema.MILESTONE_STEP
    return np.where(
        miles < schema.FIRST_MILESTONE, schema.FIRST_MILESTONE, (miles // step + 1) * step
    )


def milestone_reached(miles: np.ndarray) -> np.ndarray:
    """The highest milestone at or below ``miles`` (0 when none)."""
    miles = np.asarray(miles, dtype=np.int64)
    step = schema.MILESTONE_STEP
    return np.where(
        miles >= step, (miles // step) * step, np.where(miles >= schema.FIRST_MILESTONE, 100_000, 0)
    )


def _codes(ids: pd.Series, index: pd.Index, table: str) -> np.ndarray:
    codes = index.get_indexer(ids)
    if (codes < 0).any():
        unknown = pd.Series(ids)[codes < 0].head(3).tolist()
        raise ValueError(f"{table}: customer_id not in customers, e.g. {unknown}")
    return codes.astype(np.int64)


def build_features(
    raw: RawData,
    points: pd.DataFrame,
    *,
    base_currency: str | None = None,
    fx_rates: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Features as of each point, from records strictly before it.

    Args:
        raw: validated raw tables (``features.contract.load_raw``).
        points: ``customer_id`` and ``event_timestamp`` (tz-aware UTC) per row; every customer
            must be in ``raw.customers``.
        base_currency: currency of the monetary features (default: the bookings' only one).
        fx_rates: units of ``base_currency`` per unit of each other currency.

    Returns:
        A frame with ``customer_id``, ``event_timestamp`` and every column of
        ``schema.STORED``, one row per point, in the points' order.
    """
    customers = raw.customers
    if len(points) == 0:
        empty = {name: pd.Series(dtype=_EMPTY_DTYPES[kind]) for name, kind in schema.STORED.items()}
        return pd.DataFrame(
            {
                schema.ENTITY: pd.Series(dtype=object),
                schema.EVENT_TIMESTAMP: pd.Series(dtype="datetime64[ns, UTC]"),
                **empty,
            }
        )
    index = pd.Index(customers["customer_id"])
    q_codes = _codes(points[schema.ENTITY], index, "points")
    q_ms = to_ms(points[schema.EVENT_TIMESTAMP])

    flights = raw.flights
    f_codes = _codes(flights["customer_id"], index, "flights")
    f_delay = flights["delay_minutes"].to_numpy(np.int64)
    f_cancel = flights["cancelled"].to_numpy(bool)
    # A leg is "experienced" when it departs (late); a cancellation when it was due.
    f_ms = to_ms(flights["scheduled_at"]) + np.where(f_cancel, 0, f_delay) * 60_000

    cases = raw.service_cases
    c_codes = _codes(cases["customer_id"], index, "service_cases")
    c_open_ms = to_ms(cases["opened_at"])
    c_closed = cases["closed_at"].notna().to_numpy()
    c_close_ms = np.where(c_closed, to_ms(cases["closed_at"].fillna(cases["opened_at"])), 0)

    bookings, web, email = raw.bookings, raw.web_events, raw.email_events
    b_codes = _codes(bookings["customer_id"], index, "bookings")
    b_ms = to_ms(bookings["booked_at"])
    known_web = web["customer_id"].notna().to_numpy()
    w_codes = _codes(web["customer_id"][known_web], index, "web_events")
    w_ms = to_ms(web["ts"][known_web])
    w_type = web["event_type"].to_numpy(object)[known_web]
    e_codes = _codes(email["customer_id"], index, "email_events")
    e_ms = to_ms(email["ts"])
    e_type = email["event_type"].to_numpy(object)

    actions = raw.actions
    a_codes = _codes(actions["customer_id"], index, "actions")
    a_ms = to_ms(actions["decided_at"])

    all_ms = [q_ms, f_ms, c_open_ms, c_close_ms[c_closed], b_ms, w_ms, e_ms, a_ms]
    lo = min(int(a.min()) for a in all_ms if len(a)) - 366 * MS_PER_DAY
    hi = max(int(a.max()) for a in all_ms if len(a)) + 1
    span = hi - lo + 1
    if span * max(len(index), 1) >= KEY_LIMIT:
        raise ValueError(
            f"{len(index)} customers over {span / MS_PER_DAY:.0f} days exceed the key range; "
            "build features in customer batches"
        )
    clock = Clock(t0=lo, span=span)
    out: dict[str, object] = {
        schema.ENTITY: points[schema.ENTITY].to_numpy(object),
        schema.EVENT_TIMESTAMP: pd.Series(pd.DatetimeIndex(points[schema.EVENT_TIMESTAMP])),
    }

    # Bookings: recency, frequency, monetary.
    fare = bookings["fare"].to_numpy(np.float64) * _fx(
        bookings["currency"], base_currency, fx_rates
    )
    booked = Timeline(clock, b_codes, b_ms)
    for w in schema.BOOKING_WINDOWS:
        out[f"bookings_{w}d"] = booked.count_in(q_codes, q_ms, w)
        out[f"revenue_{w}d"] = np.round(booked.sum_in(fare, q_codes, q_ms, w), 2)
    out["last_booking_at"] = _timestamps(booked.t_ms, booked.last_before(q_codes, q_ms))

    # What kind of traveller (features.traveller): cabin, lead time, weekdays, trips, fare.
    departs_ms = to_ms(bookings["departs_at"])
    same_booking = leg_trips(
        flights["booking_id"].to_numpy(object), f_codes, to_ms(flights["scheduled_at"]), f_ms
    )
    back = return_trips(
        b_codes,
        bookings["origin"].to_numpy(object),
        bookings["destination"].to_numpy(object),
        departs_ms,
        b_ms,
        schema.RETURN_WITHIN_DAYS,
    )
    trips = (
        np.concatenate([same_booking[0], back[0]]),
        np.concatenate([same_booking[1], back[1]]),
        np.concatenate([same_booking[2], back[2]]),
    )
    out.update(
        traveller_type(
            clock,
            {
                "codes": b_codes,
                "booked_ms": b_ms,
                "departs_ms": departs_ms,
                "cabin": bookings["cabin"].to_numpy(object),
                "fare": fare,
            },
            trips,
            q_codes,
            q_ms,
        )
    )

    # The customer's own offers and responses, each outcome once it was observed.
    outcomes = raw.outcomes
    out.update(
        offer_history(
            clock,
            a_codes,
            a_ms,
            actions["action"].to_numpy(object),
            pd.Index(outcomes["decision_id"]).get_indexer(actions["decision_id"]),
            outcomes["converted"].to_numpy(bool),
            outcomes["revenue"].to_numpy(np.float64),
            q_codes,
            q_ms,
        )
    )

    # Clickstream.
    for kind, plural in (("search", "searches"), ("abandon", "abandons")):
        sel = w_type == kind
        line = Timeline(clock, w_codes[sel], w_ms[sel])
        for w in schema.WEB_WINDOWS:
            out[f"{plural}_{w}d"] = line.count_in(q_codes, q_ms, w)

    # Email engagement over the window; rates are NaN without sends.
    ew = schema.EMAIL_WINDOW
    counts = {
        kind: Timeline(clock, e_codes[e_type == kind], e_ms[e_type == kind]).count_in(
            q_codes, q_ms, ew
        )
        for kind in ("sent", "open", "click")
    }
    sent = counts["sent"]
    out[f"emails_sent_{ew}d"] = sent
    with np.errstate(divide="ignore", invalid="ignore"):
        # Opens inside the window can belong to sends just before it: cap the rate at 1.
        out[f"email_open_rate_{ew}d"] = np.where(
            sent > 0, np.minimum(counts["open"] / sent, 1.0), np.nan
        )
        out[f"email_click_rate_{ew}d"] = np.where(
            sent > 0, np.minimum(counts["click"] / sent, 1.0), np.nan
        )
    unsub = e_type == "unsubscribe"
    out["unsubscribed"] = (
        Timeline(clock, e_codes[unsub], e_ms[unsub]).count_in(q_codes, q_ms, None) > 0
    )

    # Loyalty miles and milestones.
    prior = customers["prior_miles"].to_numpy(np.int64)
    miles = flights["miles_earned"].to_numpy(np.int64)
    earned = miles > 0
    flown = Timeline(clock, f_codes[earned], f_ms[earned])
    flown_miles = flown.sorted(miles[earned])
    lifetime = prior[q_codes] + flown.sum_in(miles[earned], q_codes, q_ms, None).astype(np.int64)
    out["lifetime_miles"] = lifetime
    out["miles_to_next_milestone"] = next_milestone(lifetime) - lifetime
    # Lifetime miles before and after each flown leg, in timeline order (blocks are contiguous).
    fl_codes = flown.keys // clock.span
    cum = np.cumsum(flown_miles)
    block_first = np.ones(len(fl_codes), dtype=bool)
    block_first[1:] = fl_codes[1:] != fl_codes[:-1]
    block_offset = np.maximum.accumulate(np.where(block_first, cum - flown_miles, 0))
    after = prior[fl_codes] + cum - block_offset
    before = after - flown_miles
    crossed = after >= next_milestone(before)
    crossings = Timeline(clock, fl_codes[crossed], flown.t_ms[crossed])
    last_cross = crossings.last_before(q_codes, q_ms)
    out["last_milestone_at"] = _timestamps(crossings.t_ms, last_cross)
    out["last_milestone_miles"] = take(
        crossings.sorted(milestone_reached(after[crossed])), last_cross, 0
    ).astype(np.int64)

    # Service cases: open count, the oldest open case, last sentiment.
    opened = Timeline(clock, c_codes, c_open_ms)
    closed = Timeline(clock, c_codes[c_closed], c_close_ms[c_closed])
    out["open_case_count"] = opened.count_in(q_codes, q_ms, None) - closed.count_in(
        q_codes, q_ms, None
    )
    oldest = _oldest_open(opened, c_closed, c_close_ms, q_codes, q_ms)
    out["oldest_open_case_at"] = _timestamps(opened.t_ms, oldest)
    out["oldest_open_case_id"] = take(
        opened.sorted(cases["case_id"].to_numpy(object)), oldest, None
    )
    last_case = opened.last_before(q_codes, q_ms)
    out["last_case_sentiment"] = take(
        opened.sorted(cases["sentiment"].to_numpy(np.float64)), last_case, np.nan
    ).astype(np.float64)

    # Negative experiences: severe delay, cancellation, complaint.
    severe = (f_delay >= schema.SEVERE_DELAY_MINUTES) & ~f_cancel
    topic = cases["topic"].to_numpy(object)
    sentiment = cases["sentiment"].to_numpy(np.float64)
    complaint = np.isin(topic, list(schema.COMPLAINT_TOPICS)) | (np.nan_to_num(sentiment) < 0)
    n_codes = np.concatenate([f_codes[severe], f_codes[f_cancel], c_codes[complaint]])
    n_ms = np.concatenate([f_ms[severe], f_ms[f_cancel], c_open_ms[complaint]])
    n_kind = np.array(
        ["delay"] * int(severe.sum())
        + ["cancellation"] * int(f_cancel.sum())
        + ["complaint"] * int(complaint.sum()),
        dtype=object,
    )
    n_delay = np.concatenate(
        [f_delay[severe], np.zeros(int(f_cancel.sum() + complaint.sum()), np.int64)]
    )
    negatives = Timeline(clock, n_codes, n_ms)
    last_neg = negatives.last_before(q_codes, q_ms)
    out["last_negative_at"] = _timestamps(negatives.t_ms, last_neg)
    out["last_negative_kind"] = take(negatives.sorted(n_kind), last_neg, None)
    out["last_negative_delay_minutes"] = take(negatives.sorted(n_delay), last_neg, 0).astype(
        np.int64
    )
    legs = Timeline(clock, f_codes, f_ms)
    out[f"worst_delay_{schema.DELAY_WINDOW}d"] = _window_max(
        legs, np.where(f_cancel, 0, f_delay), q_codes, q_ms, schema.DELAY_WINDOW
    )

    # Compensation: when the case closed, or when it was opened for a case still open.
    comp = cases["compensated"].to_numpy(bool)
    comp_ms = np.where(c_closed, c_close_ms, c_open_ms)
    compensations = Timeline(clock, c_codes[comp], comp_ms[comp])
    out["last_compensated_at"] = _timestamps(
        compensations.t_ms, compensations.last_before(q_codes, q_ms)
    )

    out["created_at"] = pd.Series(
        pd.DatetimeIndex(customers["created_at"]).take(q_codes), dtype="datetime64[ns, UTC]"
    )
    out["marketing_opt_in"] = customers["marketing_opt_in"].to_numpy(bool)[q_codes]

    frame = pd.DataFrame(out)
    return frame[[schema.ENTITY, schema.EVENT_TIMESTAMP, *schema.STORED]]


def _oldest_open(
    opened: Timeline,
    c_closed: np.ndarray,
    c_close_ms: np.ndarray,
    q_codes: np.ndarray,
    q_ms: np.ndarray,
) -> np.ndarray:
    """Timeline index of the earliest case opened before t and not closed before t, or -1."""
    is_closed = opened.sorted(c_closed)
    close_ms = opened.sorted(c_close_ms)
    cur = opened.block_start(q_codes)
    end = opened.position(q_codes, q_ms)
    result = np.full(len(q_codes), -1, dtype=np.int64)
    active = np.flatnonzero(cur < end)
    # Walk each customer's cases in opening order; customers have few cases, so this loop runs
    # at most (largest number of cases of one customer) times, each step vectorized.
    while len(active):
        i = cur[active]
        still_open = ~is_closed[i] | (close_ms[i] >= q_ms[active])
        result[active[still_open]] = i[still_open]
        nxt = active[~still_open]
        cur[nxt] += 1
        active = nxt[cur[nxt] < end[nxt]]
    return result


def _window_max(
    line: Timeline, values: np.ndarray, q_codes: np.ndarray, q_ms: np.ndarray, days: int
) -> np.ndarray:
    """Max of ``values`` over the customer's events in ``[t - days, t)`` (0 when none)."""
    vals = line.sorted(values)
    start = line.position(q_codes, q_ms - days * MS_PER_DAY)
    end = line.position(q_codes, q_ms)
    best = np.zeros(len(q_codes), dtype=np.int64)
    cur = start.copy()
    active = np.flatnonzero(cur < end)
    # Few legs per customer per window: the loop runs (most legs in one window) times.
    while len(active):
        np.maximum.at(best, active, vals[cur[active]])
        cur[active] += 1
        active = active[cur[active] < end[active]]
    return best


def _fx(
    currency: pd.Series, base_currency: str | None, fx_rates: Mapping[str, float] | None
) -> np.ndarray:
    """Multiplier from each booking's currency to the base currency.

    With no ``base_currency`` the data's only currency is the base; several currencies then need
    ``fx_rates`` (units of base per unit of currency), and a currency without a rate is an error
    rather than a silently wrong monetary feature.
    """
    codes = pd.unique(currency)
    if base_currency is None:
        if len(codes) > 1 and not fx_rates:
            raise ValueError(
                f"bookings hold several currencies ({', '.join(sorted(codes))}): set a base "
                "currency and fx rates (NBA_BASE_CURRENCY, NBA_FX_RATES)"
            )
        base_currency = codes[0] if len(codes) else "USD"
    rates = {base_currency: 1.0, **(fx_rates or {})}
    missing = sorted(set(codes) - set(rates))
    if missing:
        raise ValueError(
            f"bookings: no exchange rate from {', '.join(missing)} to {base_currency} "
            "(set NBA_FX_RATES, e.g. '{\"EUR\": 1.08}')"
        )
    return currency.map(rates).to_numpy(np.float64)


def feature_points(raw: RawData, as_of: pd.Timestamp) -> pd.DataFrame:
    """The points of the offline feature table: each logged decision, and every customer at
    ``as_of`` (the snapshot that is materialized to the online store).

    Decision points let Feast's point-in-time join hand training the exact features as of each
    decision; the snapshot serves live requests.
    """
    as_of = pd.Timestamp(as_of)
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware (UTC)")
    decisions = raw.actions[["customer_id", "decided_at"]].rename(
        columns={"decided_at": schema.EVENT_TIMESTAMP}
    )
    decisions = decisions[decisions[schema.EVENT_TIMESTAMP] <= as_of]
    snapshot = pd.DataFrame(
        {
            schema.ENTITY: raw.customers["customer_id"].to_numpy(object),
            schema.EVENT_TIMESTAMP: pd.Series(
                [as_of.tz_convert("UTC")] * len(raw.customers), dtype="datetime64[ns, UTC]"
            ),
        }
    )
    points = pd.concat([decisions, snapshot], ignore_index=True)
    points[schema.EVENT_TIMESTAMP] = points[schema.EVENT_TIMESTAMP].astype("datetime64[ns, UTC]")
    return points.drop_duplicates([schema.ENTITY, schema.EVENT_TIMESTAMP], ignore_index=True)


def build_feature_table(
    raw: RawData,
    as_of: pd.Timestamp,
    *,
    base_currency: str | None = None,
    fx_rates: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """The offline feature table for Feast: features at every logged decision and at ``as_of``.

    Rows are sorted by customer and time, one per (customer, event_timestamp).
    """
    table = build_features(
        raw, feature_points(raw, as_of), base_currency=base_currency, fx_rates=fx_rates
    )
    return table.sort_values([schema.ENTITY, schema.EVENT_TIMESTAMP], ignore_index=True)


def count_in_window(
    event_ids: pd.Series,
    event_times: pd.Series,
    query_ids: pd.Series,
    query_times: pd.Series,
    days: int,
) -> np.ndarray:
    """For each query (id, t): the events of the same id in ``[t - days, t)``.

    Ids are any hashable keys (customer ids); times tz-aware. Used for decision-history
    features such as "promos in the last 7 days".
    """
    keys = pd.Index(pd.unique(pd.concat([pd.Series(event_ids), pd.Series(query_ids)])))
    e_codes = keys.get_indexer(event_ids).astype(np.int64)
    q_codes = keys.get_indexer(query_ids).astype(np.int64)
    e_ms, q_ms = to_ms(event_times), to_ms(query_times)
    if len(q_ms) == 0:
        return np.zeros(0, dtype=np.int64)
    lo = min(int(q_ms.min()), int(e_ms.min()) if len(e_ms) else int(q_ms.min()))
    lo -= (days + 1) * MS_PER_DAY
    hi = max(int(q_ms.max()), int(e_ms.max()) if len(e_ms) else int(q_ms.max())) + 1
    clock = Clock(t0=lo, span=hi - lo + 1)
    if clock.span * max(len(keys), 1) >= KEY_LIMIT:
        raise ValueError("too many ids over too long a period for one window count")
    return Timeline(clock, e_codes, e_ms).count_in(q_codes, q_ms, days)
