"""The ledger in the rebuild: ``nba features`` builds from the raw export *and* the ledger.

``merge`` turns the ledger's applied events into rows of the raw contract and adds them to a
validated raw export, so the feature table (online and offline, point in time) holds every
acknowledged event. A fact the export already holds is not added twice:

* ``case_opened``: a ``service_cases`` row (channel ``chat`` unless given); already there when
  its ``case_id`` is.
* ``case_closed``: ``closed_at`` (and ``compensated``) of that case, unless already closed.
* ``compensation_granted``: ``compensated`` on its case; without a case, a compensated case
  ``comp-<event_id>`` opened and closed at ``ts``.
* ``flight_disrupted`` / ``flight_flown``: a ``flights`` row (the delay or cancellation; the
  miles). Already there when the customer has a leg of that flight (``flight_number`` and UTC
  date, or ``booking_id`` and date): a disruption then gives that leg its worst delay and the
  cancellation.
* ``booking``: a ``bookings`` row (fare 0 unless given); already there when its ``booking_id``
  is.
* ``unsubscribe``: an ``email_events`` unsubscribe, unless the customer unsubscribed that day.
* ``consent_changed``: ``customers.marketing_opt_in`` (the latest wins); a re-consent also
  drops the customer's earlier unsubscribes.

Events of customers the export does not know stay in the memory (their state is pushed after
the rebuild) but add no rows: every raw row must name a known customer.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from features.contract import RawData

_TOPICS = {"delay", "cancellation", "baggage", "refund", "seat", "service", "other"}
_CASE_CHANNELS = {"email", "phone", "chat", "social"}


def _day(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, utc=True).dt.strftime("%Y-%m-%d")


def _leg_keys(frame: pd.DataFrame) -> pd.Series:
    number = frame.get("flight_number", pd.Series(None, index=frame.index, dtype=object))
    return (
        frame["customer_id"].astype(str)
        + "|"
        + number.fillna("").astype(str)
        + "|"
        + _day(frame["scheduled_at"])
    )


def _booking_keys(frame: pd.DataFrame) -> pd.Series:
    return (
        frame["customer_id"].astype(str)
        + "|"
        + frame["booking_id"].astype(str)
        + "|"
        + _day(frame["scheduled_at"])
    )


def _typed_like(rows: list[dict[str, Any]], like: pd.DataFrame) -> pd.DataFrame:
    """``rows`` as a frame with ``like``'s columns and dtypes."""
    frame = pd.DataFrame(rows, columns=like.columns)
    for column in like.columns:
        dtype = like[column].dtype
        if isinstance(dtype, pd.DatetimeTZDtype):
            frame[column] = pd.to_datetime(frame[column], utc=True).astype(dtype)
        else:
            # A null in a non-nullable dtype: keep the column as it is.
            with contextlib.suppress(TypeError, ValueError):
                frame[column] = frame[column].astype(dtype)
    return frame


def merge(raw: RawData, events: pd.DataFrame) -> RawData:
    """``raw`` plus the ledger's applied ``events`` (``Memory.events``) as raw rows.

    Events are taken in event-time order (ties: arrival order), so the latest consent fact and
    the last closing win whatever order they arrived in.
    """
    if events.empty:
        return raw
    known = set(raw.customers["customer_id"].astype(str))
    # A closing the ledger could not apply on arrival (its case unknown yet) still closes the
    # case when the export, or a later-arriving opening, holds it: event time, not arrival.
    closings = events["type"] == "case_closed"
    todo = events[(events["applied"] | closings) & events["customer_id"].isin(known)]
    todo = todo.sort_values(["ts", "seq"], kind="stable")
    cases = raw.service_cases.copy()
    flights = raw.flights.copy()
    bookings = raw.bookings.copy()
    email = raw.email_events.copy()
    customers = raw.customers.copy()
    new_cases: list[dict[str, Any]] = []
    new_flights: list[dict[str, Any]] = []
    new_bookings: list[dict[str, Any]] = []
    new_email: list[dict[str, Any]] = []
    case_row = {str(c): i for i, c in enumerate(cases["case_id"])}
    legs = {key: i for i, key in enumerate(_leg_keys(flights))} if len(flights) else {}
    by_booking = {key: i for i, key in enumerate(_booking_keys(flights))} if len(flights) else {}
    booking_ids = set(bookings["booking_id"].astype(str))
    # The latest unsubscribe of each customer and day ("customer|day" -> ts).
    unsubs = email[email["event_type"] == "unsubscribe"]
    unsub_days: dict[str, pd.Timestamp] = (
        unsubs.assign(key=unsubs["customer_id"].astype(str) + "|" + _day(unsubs["ts"]))
        .groupby("key")["ts"]
        .max()
        .to_dict()
    )
    currency = str(bookings["currency"].mode().iloc[0]) if len(bookings) else "USD"
    #: Legs added from events: "customer|flight_number|day" -> index in ``new_flights``.
    new_legs: dict[str, int] = {}
    opt_in_at: dict[str, tuple[pd.Timestamp, bool]] = {}
    reconsent: dict[str, pd.Timestamp] = {}
    #: Closings seen before their case's opening: case id -> (customer, ts, compensated).
    waiting: dict[str, list[tuple[str, pd.Timestamp, bool]]] = {}

    for event in todo.itertuples(index=False):
        p: dict[str, Any] = event.payload
        customer, ts, kind = str(event.customer_id), event.ts, event.type
        if kind == "case_opened":
            case_id = str(p.get("case_id"))
            if case_id in case_row or any(c["case_id"] == case_id for c in new_cases):
                continue
            topic = p.get("topic") if p.get("topic") in _TOPICS else "other"
            channel = p.get("channel") if p.get("channel") in _CASE_CHANNELS else "chat"
            # The first closing by the case's own customer (another's closes nothing).
            early = next((w for w in waiting.pop(case_id, []) if w[0] == customer), None)
            new_cases.append(
                {
                    "case_id": case_id,
                    "customer_id": customer,
                    "opened_at": ts,
                    "closed_at": pd.NaT if early is None else max(early[1], ts),
                    "channel": channel,
                    "topic": topic,
                    "sentiment": p.get("sentiment", np.nan),
                    "compensated": early is not None and early[2],
                }
            )
        elif kind in ("case_closed", "compensation_granted"):
            closing: Any = p.get("case_id")
            mine = [c for c in new_cases if c["case_id"] == str(closing)]
            if kind == "case_closed":
                owner = (
                    mine[0]["customer_id"]
                    if mine
                    else cases.at[case_row[str(closing)], "customer_id"]
                    if str(closing) in case_row
                    else None
                )
                if owner is None:  # its opening comes later in event time
                    waiting.setdefault(str(closing), []).append(
                        (customer, ts, bool(p.get("compensated")))
                    )
                    continue
                # A closing the ledger refused on arrival (see ``todo``) closes the case only
                # when it names the case's customer.
                if not event.applied and str(owner) != customer:
                    continue
            if kind == "compensation_granted" and closing is None:
                new_cases.append(
                    {
                        "case_id": f"comp-{event.event_id}",
                        "customer_id": customer,
                        "opened_at": ts,
                        "closed_at": ts,
                        "channel": "chat",
                        "topic": "other",
                        "sentiment": np.nan,
                        "compensated": True,
                    }
                )
            elif mine:
                if kind == "case_closed" and pd.isna(mine[0]["closed_at"]):
                    mine[0]["closed_at"] = ts
                mine[0]["compensated"] = bool(
                    mine[0]["compensated"] or p.get("compensated") or kind != "case_closed"
                )
            elif str(closing) in case_row:
                i = case_row[str(closing)]
                if kind == "case_closed" and pd.isna(cases.at[i, "closed_at"]):
                    cases.at[i, "closed_at"] = max(ts, cases.at[i, "opened_at"])
                if p.get("compensated") or kind != "case_closed":
                    cases.at[i, "compensated"] = True
        elif kind in ("flight_disrupted", "flight_flown"):
            at = pd.Timestamp(p.get("scheduled_at") or ts)
            number = p.get("flight_number")
            booking = p.get("booking_id")
            day = at.tz_convert("UTC").strftime("%Y-%m-%d")
            cancelled = bool(p.get("cancelled", False))
            delay = int(p.get("delay_minutes") or 0)
            added = new_legs.get(f"{customer}|{number}|{day}") if number else None
            if added is not None:  # a leg an earlier event added: one flight, both facts kept
                leg = new_flights[added]
                if kind == "flight_disrupted":
                    leg["delay_minutes"] = max(int(leg["delay_minutes"]), delay)
                    leg["cancelled"] = bool(leg["cancelled"] or cancelled)
                    if not p.get("scheduled_at") and not leg["cancelled"]:  # see the row below
                        leg["scheduled_at"] = min(
                            leg["scheduled_at"], ts - pd.Timedelta(minutes=leg["delay_minutes"])
                        )
                else:
                    leg["miles_earned"] = max(
                        int(leg["miles_earned"]), int(p.get("miles_earned") or 0)
                    )
                if leg["cancelled"]:
                    leg["miles_earned"] = 0
                continue
            hit = legs.get(f"{customer}|{number}|{day}") if number else None
            if hit is None and booking:
                hit = by_booking.get(f"{customer}|{booking}|{day}")
            if hit is not None:
                if kind == "flight_disrupted":
                    flights.at[hit, "delay_minutes"] = max(
                        int(flights.at[hit, "delay_minutes"]), delay
                    )
                    if cancelled:
                        flights.at[hit, "cancelled"] = True
                        flights.at[hit, "miles_earned"] = 0
                continue
            row = {
                "booking_id": str(booking or f"ev-{event.event_id}"),
                "customer_id": customer,
                # The build counts a delayed leg at scheduled_at + delay (when the delay has
                # happened); a disruption reported at ts without its schedule happened by ts,
                # as the fold counts it: one stamped ts would stay unseen until ts + delay.
                "scheduled_at": at
                if p.get("scheduled_at") or kind != "flight_disrupted" or cancelled
                else at - pd.Timedelta(minutes=delay),
                "delay_minutes": delay if kind == "flight_disrupted" else 0,
                "cancelled": cancelled and kind == "flight_disrupted",
                "miles_earned": int(p.get("miles_earned") or 0) if kind == "flight_flown" else 0,
                "flight_number": number,
                "origin": p.get("origin"),
                "destination": p.get("destination"),
            }
            new_flights.append(row)
            if number:
                new_legs[f"{customer}|{number}|{day}"] = len(new_flights) - 1
        elif kind == "booking":
            booking_id = str(p.get("booking_id") or f"ev-{event.event_id}")
            if booking_id in booking_ids:
                continue
            booking_ids.add(booking_id)
            departs = pd.Timestamp(p.get("departs_at") or ts)
            new_bookings.append(
                {
                    "booking_id": booking_id,
                    "customer_id": customer,
                    "booked_at": ts,
                    "departs_at": max(departs, ts),
                    "origin": p.get("origin") or "ZZZ",
                    "destination": p.get("destination") or "ZZZ",
                    "fare": float(p.get("fare") or 0.0),
                    "currency": p.get("currency") or currency,
                    "cabin": p.get("cabin") or "economy",
                    "channel": "web",
                    "status": "confirmed",
                }
            )
        elif kind == "unsubscribe":
            key = f"{customer}|{ts.strftime('%Y-%m-%d')}"
            stored, lifted = unsub_days.get(key), reconsent.get(customer)
            # The same day's unsubscribe is the same fact, unless a re-consent since lifted it
            # (it is dropped below, and this one must stay).
            if stored is None or (lifted is not None and stored <= lifted < ts):
                unsub_days[key] = ts
                new_email.append(
                    {
                        "customer_id": customer,
                        "ts": ts,
                        "campaign_id": "nba-events",
                        "event_type": "unsubscribe",
                    }
                )
        elif kind == "consent_changed":
            opt_in_at[customer] = (ts, bool(p.get("marketing_opt_in")))  # sorted: the latest
            if p.get("marketing_opt_in"):
                reconsent[customer] = ts

    if new_cases:
        cases = pd.concat([cases, _typed_like(new_cases, cases)], ignore_index=True)
    if new_flights:
        flights = pd.concat([flights, _typed_like(new_flights, flights)], ignore_index=True)
    if new_bookings:
        bookings = pd.concat([bookings, _typed_like(new_bookings, bookings)], ignore_index=True)
    if new_email:
        email = pd.concat([email, _typed_like(new_email, email)], ignore_index=True)
    for customer, (_, opt_in) in opt_in_at.items():
        customers.loc[customers["customer_id"] == customer, "marketing_opt_in"] = opt_in
    for customer, ts in reconsent.items():  # a re-consent lifts the earlier unsubscribes
        drop = (
            (email["customer_id"] == customer)
            & (email["event_type"] == "unsubscribe")
            & (email["ts"] <= ts)
        )
        email = email[~drop].reset_index(drop=True)
    return dataclasses.replace(
        raw,
        customers=customers,
        bookings=bookings,
        flights=flights,
        service_cases=cases,
        email_events=email,
    )
