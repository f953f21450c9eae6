"""The event ledger (memory.ledger) and its place in the rebuild (memory.rebuild), on SQLite.

Idempotence by ``event_id``, cases by id (whatever order their opening and closing arrive in),
no lost update under concurrent appends, and the rebuild: ``merge`` neither doubles a fact the
raw export holds nor forgets one it lacks, and ``reset_after_rebuild`` + ``refold`` keep every
event that arrived after the rebuild's fold mark.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from memory.fold import empty_state
from memory.ledger import Memory
from memory.rebuild import merge
from memory.store import Database, sqlite_url
from tests.factories import tiny_raw

T = datetime(2024, 4, 2, 10, tzinfo=UTC)


def open_memory(path: Path, timeout: float = 10.0) -> Memory:
    """A memory on a fresh SQLite file."""
    return Memory(Database(sqlite_url(path), timeout=timeout))


@pytest.fixture
def memory(tmp_path: Path) -> Memory:
    """A memory on a SQLite file of this test's own."""
    return open_memory(tmp_path / "memory.db")


def event(customer: str, kind: str, ts: datetime, **fields: Any) -> dict[str, Any]:
    """An event as ``/events`` hands it to the ledger."""
    return {"customer_id": customer, "type": kind, "ts": ts, **fields}


# -- idempotence ----------------------------------------------------------------------------


def test_a_retried_event_id_is_a_duplicate_and_changes_nothing(memory: Memory) -> None:
    first = memory.append(event("C1", "flight_flown", T, event_id="e-1", miles_earned=1_200))
    assert not first.duplicate and first.applied and first.state is not None
    assert first.state["lifetime_miles"] == 1_200
    # The retry (even carrying other fields) inserts nothing and folds nothing.
    again = memory.append(event("C1", "flight_flown", T, event_id="e-1", miles_earned=9_999))
    assert again.duplicate and not again.applied and again.state is None
    assert again.note == "event_id already applied"
    stored = memory.state("C1")
    assert stored is not None and stored["lifetime_miles"] == 1_200
    assert list(memory.events()["event_id"]) == ["e-1"]
    assert memory.high_water() == first.seq


def test_the_first_event_folds_over_the_online_row(memory: Memory) -> None:
    base = {**empty_state(), "lifetime_miles": 40_000, "marketing_opt_in": True}
    calls: list[str] = []

    def read() -> dict[str, Any]:
        calls.append("read")
        return base

    applied = memory.append(event("C1", "flight_flown", T, miles_earned=500), read)
    assert applied.state is not None and applied.state["lifetime_miles"] == 40_500
    # Later events fold over the memory's own state, not over the (older) online row.
    applied = memory.append(event("C1", "flight_flown", T, miles_earned=500), lambda: base)
    assert applied.state is not None and applied.state["lifetime_miles"] == 41_000


def test_an_event_without_an_aware_time_or_of_an_unknown_type_is_refused(memory: Memory) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        memory.append(event("C1", "booking", datetime(2024, 4, 2)))
    with pytest.raises(ValueError, match="unknown event type"):
        memory.append(event("C1", "lunch", T))
    assert memory.high_water() == 0


# -- cases by id ----------------------------------------------------------------------------


def test_cases_are_opened_and_closed_by_id(memory: Memory) -> None:
    memory.append(event("A", "case_opened", T, case_id="K1", topic="refund"))
    memory.append(event("A", "case_opened", T + timedelta(hours=1), case_id="K2", topic="seat"))
    closed = memory.append(event("A", "case_closed", T + timedelta(hours=2), case_id="K1"))
    assert closed.applied and closed.note is None and closed.state is not None
    # Closing the oldest leaves the other open, now the oldest.
    assert closed.state["open_case_count"] == 1
    assert closed.state["oldest_open_case_id"] == "K2"
    assert closed.state["oldest_open_case_at"] == pd.Timestamp(T + timedelta(hours=1))
    assert memory.open_cases("A") == ["K2"]

    refused = {
        "already closed": memory.append(
            event("A", "case_closed", T + timedelta(hours=3), case_id="K1")
        ),
        "unknown case": memory.append(event("A", "case_closed", T, case_id="K9")),
        "another customer's": memory.append(event("B", "case_closed", T, case_id="K2")),
    }
    for words, answer in refused.items():
        assert not answer.applied and not answer.duplicate, words
        assert answer.note is not None and words in answer.note, (words, answer.note)
    # None of them touched A's open case.
    assert memory.open_cases("A") == ["K2"]
    state = memory.state("A")
    assert state is not None and state["open_case_count"] == 1
    assert memory.open_cases("B") == []
    # The refusals are in the ledger, marked not applied, with their note.
    ledger = memory.events().set_index("event_id")
    assert not ledger.loc[refused["unknown case"].event_id, "applied"]


def test_an_opening_of_a_case_already_opened_is_refused(memory: Memory) -> None:
    memory.append(event("A", "case_opened", T, case_id="K1", topic="refund"))
    again = memory.append(event("A", "case_opened", T + timedelta(hours=1), case_id="K1"))
    assert not again.applied and again.note is not None and "already opened" in again.note
    state = memory.state("A")
    assert state is not None and state["oldest_open_case_at"] == pd.Timestamp(T)


@pytest.mark.parametrize("gap", [timedelta(minutes=5), timedelta(0)])
def test_a_closing_that_arrives_before_its_opening_folds_as_closed(
    memory: Memory, gap: timedelta
) -> None:
    early = memory.append(event("A", "case_closed", T + gap, case_id="K1"))
    assert not early.applied  # nothing open yet...
    opened = memory.append(event("A", "case_opened", T, case_id="K1", topic="baggage"))
    assert opened.applied and opened.state is not None
    # ... but the opening now finds it closed: event time, not arrival order.
    assert opened.state["open_case_count"] == 0
    assert opened.state["oldest_open_case_id"] is None
    assert memory.open_cases("A") == []
    # The complaint is still a negative experience at its own time.
    assert opened.state["last_negative_at"] == pd.Timestamp(T)


# -- concurrency ----------------------------------------------------------------------------


def test_concurrent_appends_lose_no_update(tmp_path: Path) -> None:
    threads, per_thread = 8, 50
    path = tmp_path / "memory.db"
    open_memory(path).db.create()
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def worker(k: int) -> None:
        mine = open_memory(path)  # one engine per worker, as separate processes would have
        start.wait()
        try:
            for i in range(per_thread):
                miles = k * per_thread + i + 1
                mine.append(
                    event(
                        "C1",
                        "flight_flown",
                        T + timedelta(minutes=i),
                        event_id=f"f-{k}-{i}",
                        miles_earned=miles,
                    )
                )
                # Half the workers also open and close cases of their own.
                if k % 2 == 0 and i % 10 == 0:
                    mine.append(event("C1", "case_opened", T, case_id=f"K-{k}-{i}"))
                    if i % 20 == 0:
                        mine.append(event("C1", "case_closed", T, case_id=f"K-{k}-{i}"))
        except BaseException as error:  # reported by the main thread
            errors.append(error)
        finally:
            mine.db.dispose()

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert not errors, errors
    memory = open_memory(path)
    total = threads * per_thread
    state = memory.state("C1")
    assert state is not None
    assert state["lifetime_miles"] == total * (total + 1) // 2
    flown = memory.events()
    assert (flown["type"] == "flight_flown").sum() == total
    opened = {f"K-{k}-{i}" for k in range(0, threads, 2) for i in range(0, per_thread, 10)}
    still_open = {case for case in opened if int(case.rsplit("-", 1)[1]) % 20 != 0}
    assert set(memory.open_cases("C1")) == still_open
    assert state["open_case_count"] == len(still_open)


# -- the rebuild ----------------------------------------------------------------------------

#: The day after tiny_raw's last facts, and a snapshot after every generated event.
AFTER = pd.Timestamp("2024-04-02T00:00:00Z")
SNAPSHOT = AFTER + pd.Timedelta(days=10)
CUSTOMERS = ("C1", "C2", "C3", "C4")
#: Legs tiny_raw already holds, by booking: (customer, booking_id, scheduled day).
EXPORT_LEGS = {("C1", "B1", "2024-04-01"), ("C2", "B2", "2024-03-20"), ("C4", "B4", "2024-03-25")}


@st.composite
def ledger_events(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Events of tiny_raw's customers: new facts, and facts the export already holds."""
    events: list[dict[str, Any]] = []
    for n in range(draw(st.integers(1, 14))):
        customer = draw(st.sampled_from(CUSTOMERS))
        ts = AFTER + pd.Timedelta(minutes=draw(st.integers(0, 8 * 24 * 60)))
        kind = draw(
            st.sampled_from(
                [
                    "case_opened",
                    "case_closed",
                    "booking",
                    "flight_flown",
                    "unsubscribe",
                    "export_leg",
                    "export_booking",
                ]
            )
        )
        fields: dict[str, Any] = {}
        if kind in ("case_opened", "case_closed"):
            fields["case_id"] = draw(st.sampled_from(["S1", "S2", "N1", "N2"]))
            fields["topic"] = "refund"
        elif kind == "booking":
            fields["booking_id"] = draw(st.sampled_from(["NB1", "NB2"]))
        elif kind == "export_booking":  # a booking the export holds
            kind, fields["booking_id"] = "booking", draw(st.sampled_from(["B1", "B2", "B3"]))
        elif kind == "flight_flown":
            fields.update(flight_number=draw(st.sampled_from(["XY1", "XY2"])), miles_earned=700)
        elif kind == "export_leg":  # the flight of a leg the export holds
            customer, booking, day = draw(st.sampled_from(sorted(EXPORT_LEGS)))
            kind = "flight_flown"
            fields.update(
                booking_id=booking, scheduled_at=pd.Timestamp(f"{day}T12:00:00Z"), miles_earned=999
            )
        events.append(event(customer, kind, ts.to_pydatetime(), event_id=f"ev-{n}", **fields))
    return events


@given(ledger_events())
@settings(
    max_examples=40,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_merge_never_doubles_a_fact_and_never_forgets_one(
    tmp_path_factory: pytest.TempPathFactory, events: list[dict[str, Any]]
) -> None:
    from features.contract import ContractError, validate

    memory = open_memory(tmp_path_factory.mktemp("merge") / "memory.db")
    raw = tiny_raw()
    # The first `nba features`: the memory learns the export's cases.
    memory.reset_after_rebuild(raw.service_cases, raw.flights, raw.customers["customer_id"], 0)
    for item in events:
        memory.append(item)
    ledger = memory.events()
    merged = merge(raw, ledger)
    # Still a valid export, but for the legs of flown events without a booking on record (the
    # feature build does not join flights to bookings).
    try:
        validate(merged, now=SNAPSHOT.to_pydatetime())
    except ContractError as error:
        broken = {(v.table, v.column, v.rule) for v in error.violations}
        assert broken == {("flights", "booking_id", "in bookings.booking_id")}, str(error)
    applied = ledger[ledger["applied"]]

    # Cases: one row per id; every applied opening is there, closed iff a closing was applied.
    cases = merged.service_cases
    assert cases["case_id"].is_unique
    opened = {
        p["case_id"]
        for p, k in zip(applied["payload"], applied["type"], strict=True)
        if k == "case_opened"
    }
    assert opened | {"S1", "S2"} == set(cases["case_id"])
    # A closing by the case's own customer closes it, whichever arrived first (one the ledger
    # could not apply on arrival too: the export, or a later opening, holds the case).
    owner = {"S1": "C2", "S2": "C4"}
    owner.update(
        {
            p["case_id"]: c
            for c, p, k in zip(
                applied["customer_id"], applied["payload"], applied["type"], strict=True
            )
            if k == "case_opened"
        }
    )
    closed_now = {
        p["case_id"]
        for c, p, k in zip(ledger["customer_id"], ledger["payload"], ledger["type"], strict=True)
        if k == "case_closed" and owner.get(p["case_id"]) == c
    }
    for row in cases.itertuples():
        assert pd.notna(row.closed_at) == (row.case_id in closed_now or row.case_id == "S2")
        assert pd.isna(row.closed_at) or row.closed_at >= row.opened_at

    # Bookings: one row per id; the export's kept as they were.
    bookings = merged.bookings
    assert bookings["booking_id"].is_unique
    booked = {
        p["booking_id"]
        for p, k in zip(applied["payload"], applied["type"], strict=True)
        if k == "booking"
    }
    assert set(bookings["booking_id"]) == booked | set(raw.bookings["booking_id"])
    assert bookings.iloc[: len(raw.bookings)].equals(raw.bookings)

    # Flights: an export leg is never added again; each new (customer, number, day) once.
    flights = merged.flights
    legs = list(
        zip(
            flights["customer_id"],
            flights["booking_id"],
            flights["scheduled_at"].dt.strftime("%Y-%m-%d"),
            strict=True,
        )
    )
    for leg in EXPORT_LEGS:
        assert legs.count(leg) == 1
    expected_keys = {
        (c, p["flight_number"], ts.strftime("%Y-%m-%d"))
        for c, p, k, ts in zip(
            applied["customer_id"], applied["payload"], applied["type"], applied["ts"], strict=True
        )
        if k == "flight_flown" and p.get("flight_number")
    }
    # (The export has no flight_number column: the new legs are counted, one per key.)
    added = flights.iloc[len(raw.flights) :]
    assert len(added) == len(expected_keys)
    assert sorted(
        zip(added["customer_id"], added["scheduled_at"].dt.strftime("%Y-%m-%d"), strict=True)
    ) == sorted((c, d) for c, _, d in expected_keys)
    # The miles of the export's legs are the export's: the event is the same flight.
    assert flights.iloc[: len(raw.flights)]["miles_earned"].tolist() == (
        raw.flights["miles_earned"].tolist()
    )

    # Unsubscribes: one per customer and day, every day with an event unsubscribe there.
    email = merged.email_events
    unsub = email[email["event_type"] == "unsubscribe"]
    days = list(zip(unsub["customer_id"], unsub["ts"].dt.strftime("%Y-%m-%d"), strict=True))
    assert len(days) == len(set(days))
    wanted = {
        (c, ts.strftime("%Y-%m-%d"))
        for c, k, ts in zip(applied["customer_id"], applied["type"], applied["ts"], strict=True)
        if k == "unsubscribe"
    }
    assert wanted <= set(days)
    memory.db.dispose()


def test_reset_and_refold_keep_the_events_after_the_fold_mark(memory: Memory) -> None:
    raw = tiny_raw()
    memory.append(event("C1", "flight_flown", AFTER, miles_earned=1_000))
    memory.append(event("C3", "booking", AFTER, booking_id="NB1"))
    mark = memory.high_water()
    merged = merge(raw, memory.events(until_seq=mark))
    # Events arrive while the rebuild runs (after the mark).
    memory.append(event("C1", "flight_flown", AFTER + pd.Timedelta(hours=1), miles_earned=250))
    memory.append(event("C1", "case_opened", AFTER + pd.Timedelta(hours=1), case_id="N1"))
    memory.append(event("C2", "case_closed", AFTER + pd.Timedelta(hours=2), case_id="S1"))
    memory.append(event("GUEST", "unsubscribe", AFTER))  # a customer the export lacks

    remaining = memory.reset_after_rebuild(
        merged.service_cases, merged.flights, merged.customers["customer_id"], mark
    )
    assert remaining == ["C1", "C2", "GUEST"]
    assert memory.state("C3") is None  # served as rebuilt now
    assert memory.rebuilt_seq() == mark
    # The case opened and the case closed during the rebuild are still so.
    assert memory.open_cases("C1") == ["N1"]
    assert memory.open_cases("C2") == []
    # Refolding over the rebuilt row (which holds the first 1,000 miles) adds only the later.
    rebuilt = {**empty_state(), "lifetime_miles": 120_000 + 3_450 + 1_000}
    state = memory.refold("C1", rebuilt, mark)
    assert state["lifetime_miles"] == 120_000 + 3_450 + 1_250
    assert state["open_case_count"] == 1 and state["oldest_open_case_id"] == "N1"
    c2 = memory.refold(
        "C2", {**empty_state(), "open_case_count": 1, "oldest_open_case_id": "S1"}, mark
    )
    assert c2["open_case_count"] == 0
    guest = memory.state("GUEST")
    assert guest is not None and guest["unsubscribed"] is True


def test_a_closing_seen_before_its_opening_survives_the_rebuild(memory: Memory) -> None:
    raw = tiny_raw()
    for gap in (pd.Timedelta(0), pd.Timedelta(minutes=5)):
        case_id = f"N-{gap.seconds}"
        memory.append(event("C1", "case_closed", AFTER + gap, case_id=case_id))
        memory.append(event("C1", "case_opened", AFTER, case_id=case_id, topic="refund"))
    # A closing of a case the export holds, arriving before anything else of it.
    memory.append(event("C2", "case_closed", AFTER, case_id="S1"))
    assert memory.open_cases("C1") == [] and memory.open_cases("C2") == []
    mark = memory.high_water()
    merged = merge(raw, memory.events(until_seq=mark))
    cases = merged.service_cases.set_index("case_id")
    assert cases.loc[["N-0", "N-300", "S1"], "closed_at"].notna().all()
    assert (cases["closed_at"].dropna() >= cases["opened_at"][cases["closed_at"].notna()]).all()
    memory.reset_after_rebuild(
        merged.service_cases, merged.flights, merged.customers["customer_id"], mark
    )
    assert memory.open_cases("C1") == [] and memory.open_cases("C2") == []


def test_a_closing_by_another_customer_does_not_block_the_owners_opening(memory: Memory) -> None:
    stray = memory.append(event("B", "case_closed", T, case_id="K1"))
    assert not stray.applied
    opened = memory.append(event("A", "case_opened", T, case_id="K1", topic="refund"))
    assert opened.applied, opened.note
    assert memory.open_cases("A") == ["K1"] and memory.open_cases("B") == []
    assert opened.state is not None and opened.state["open_case_count"] == 1
    # A stray closing first, then the owner's own closing, then the opening: closed.
    memory.append(event("B", "case_closed", T, case_id="K2"))
    assert not memory.append(event("A", "case_closed", T, case_id="K2")).applied
    late = memory.append(event("A", "case_opened", T - timedelta(minutes=1), case_id="K2"))
    assert late.applied and memory.open_cases("A") == ["K1"]
    # The rebuild agrees: B's closing closes nothing there either.
    mark = memory.high_water()
    raw = tiny_raw()
    moved = [
        event("C1", "case_closed", AFTER, case_id="N1"),
        event("C2", "case_closed", AFTER, case_id="N1"),
        event("C2", "case_opened", AFTER - pd.Timedelta(hours=1), case_id="N1", topic="seat"),
    ]
    for item in moved:
        memory.append(item)
    merged = merge(raw, memory.events()).service_cases.set_index("case_id")
    assert merged.loc["N1", "customer_id"] == "C2" and pd.notna(merged.loc["N1", "closed_at"])
    assert memory.high_water() == mark + len(moved)


def test_cases_opened_at_the_same_time_are_ordered_by_id(tmp_path: Path) -> None:
    answers = []
    for k, order in enumerate((["K2", "K1", "K3"], ["K3", "K1", "K2"])):
        memory = open_memory(tmp_path / f"m{k}.db")
        for case_id in order:
            last = memory.append(event("A", "case_opened", T, case_id=case_id))
        assert last.state is not None
        answers.append((last.state["oldest_open_case_id"], memory.open_cases("A")))
    assert answers == [("K1", ["K1", "K2", "K3"])] * 2


def test_the_fold_mark_stops_before_the_first_event_at_or_after_the_snapshot(
    memory: Memory,
) -> None:
    snapshot = pd.Timestamp(T)
    assert memory.fold_mark(snapshot) == 0
    before = memory.append(event("C1", "booking", T - timedelta(seconds=1)))
    assert memory.fold_mark(snapshot) == before.seq
    # Stamped at the snapshot (the build counts what happened before it) or ahead of it.
    at = memory.append(event("C1", "booking", T))
    memory.append(event("C1", "booking", T - timedelta(hours=1)))
    assert memory.fold_mark(snapshot) == before.seq
    assert at.seq is not None and memory.fold_mark(snapshot + pd.Timedelta(hours=1)) == (
        memory.high_water()
    )
