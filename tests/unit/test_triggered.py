"""Triggers: which fire (pure), the outbox (exactly once, cursor paging), the apology budget's
queue (expected-value order, paced), service actions, delays, the relay and its sinks."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from features import decision_log
from memory.fold import Effects
from memory.outbox import Firing, Outbox, outbox_id
from memory.store import Database, sqlite_url
from serving.api import ApiError, parse
from serving.outbox import FlightEvent, passenger_event_id
from serving.triggered import Triggered, evaluate
from serving.triggers import load_triggers, parse_triggers
from serving.webhook import WebhookSink
from tests.conftest import FakeClock
from tests.unit.test_apologies import _disrupted
from tests.unit.test_decide_batch import _decider
from tests.unit.test_decider import NOW

TRIGGERS = load_triggers()


def _names(fired: Sequence[Any]) -> list[str]:
    return [t.name for t in fired]


# --- evaluate: pure ----------------------------------------------------------------------------


def test_milestone_fires_on_the_crossing_whatever_the_event() -> None:
    flown = {"customer_id": "C1", "type": "flight_flown", "miles_earned": 5000}
    assert _names(evaluate(TRIGGERS, flown, Effects(milestone_crossed=1_000_000))) == ["milestone"]
    assert evaluate(TRIGGERS, flown, Effects()) == []


def test_disruption_fires_only_when_severe() -> None:
    event = {"customer_id": "C1", "type": "flight_disrupted", "delay_minutes": 30}
    assert evaluate(TRIGGERS, event, Effects(severe_disruption=False)) == []
    cancelled = {**event, "cancelled": True}
    assert _names(evaluate(TRIGGERS, cancelled, Effects(severe_disruption=True))) == ["disruption"]
    # Another type never fires the disruption trigger, severe or not.
    assert evaluate(TRIGGERS, {**event, "type": "booking"}, Effects(severe_disruption=True)) == []


def test_when_matches_event_fields_and_a_bool_only_equals_a_bool() -> None:
    triggers = parse_triggers({"version": 1, "triggers": [
        {"name": "long", "event": "flight_disrupted", "when": {"delay_minutes": 1},
         "candidates": ["apology_credit"], "channel": "app"},
        {"name": "flag", "event": "flight_disrupted", "when": {"cancelled": True},
         "candidates": ["apology_credit"], "channel": "app"},
    ]})  # fmt: skip
    base = {"customer_id": "C1", "type": "flight_disrupted"}
    assert _names(evaluate(triggers, {**base, "cancelled": True}, Effects())) == ["flag"]
    assert _names(evaluate(triggers, {**base, "delay_minutes": 1}, Effects())) == ["long"]
    assert evaluate(triggers, {**base, "cancelled": 1}, Effects()) == []  # 1 is not True


# --- the outbox ------------------------------------------------------------------------------


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(Database(sqlite_url(tmp_path / "memory.db")))


def _firing(customer: str, event: str = "ev-1", trigger: str = "disruption") -> Firing:
    return Firing(trigger, customer, event, NOW)


def test_outbox_holds_one_item_per_trigger_customer_event(outbox: Outbox) -> None:
    assert outbox.fire([_firing("C1")], NOW) == 1
    assert outbox.fire([_firing("C1")], NOW) == 0  # fired twice: one firing
    first = outbox.append(_firing("C1"), "email", {"action": "apology_credit"}, NOW)
    assert first is not None and first["outbox_id"] == outbox_id("disruption", "C1", "ev-1")
    assert outbox.append(_firing("C1"), "email", {"action": "apology_credit"}, NOW) is None
    # A retried event after the item was written fires nothing.
    assert outbox.fire([_firing("C1")], NOW) == 0
    assert outbox.waiting() == []
    # Another event, trigger or customer is another item.
    for other in (_firing("C1", "ev-2"), _firing("C2"), _firing("C1", trigger="milestone")):
        assert outbox.append(other, "email", {"action": "recognition"}, NOW) is not None
    items, _ = outbox.page()
    assert len(items) == 4 and len({i["outbox_id"] for i in items}) == 4


def test_cursor_paging_is_ordered_and_complete(outbox: Outbox) -> None:
    for k in range(7):
        outbox.append(_firing(f"C{k}"), "email", {"action": "apology_credit", "k": k}, NOW)
    seen, cursor = [], 0
    while True:
        items, cursor_next = outbox.page(cursor, 3)
        if not items:
            assert cursor_next == cursor  # nothing new: the same cursor
            break
        seen += [i["decision"]["k"] for i in items]
        assert cursor_next == items[-1]["seq"]
        cursor = cursor_next
    assert seen == list(range(7))
    item = outbox.page(0, 1)[0][0]
    assert set(item) >= {"outbox_id", "trigger", "event_id", "channel", "decision", "created_at"}
    assert item["created_at"].endswith("Z")


def test_waiting_lists_the_budget_queue_by_expected_value(outbox: Outbox) -> None:
    firings = [_firing(c) for c in ("C1", "C2", "C3", "C4")]
    outbox.fire(firings, NOW)
    for firing, value in zip(firings, (1.0, 9.0, None, 5.0), strict=True):
        if value is not None:
            outbox.park(firing, value, NOW)
    listed = outbox.waiting()
    assert [(i["customer_id"], i["waiting_for"]) for i in listed] == [
        ("C2", "budget"), ("C4", "budget"), ("C1", "budget"), ("C3", "due")]  # fmt: skip
    taken = outbox.lease_waiting(NOW, 30, 2)
    assert [f.customer_id for f in taken] == ["C2", "C4"]
    # Leased: another worker does not take them again until the lease ends.
    assert [f.customer_id for f in outbox.lease_waiting(NOW, 30, 5)] == ["C1"]
    later = NOW + timedelta(seconds=31)
    assert [f.customer_id for f in outbox.lease_waiting(later, 30, 5)] == ["C2", "C4", "C1"]


def test_a_named_lease_has_one_owner_until_it_ends(outbox: Outbox) -> None:
    assert outbox.hold("relay", "a", NOW, 10)
    assert not outbox.hold("relay", "b", NOW, 10)
    assert outbox.hold("relay", "a", NOW, 10)  # renewed
    assert outbox.hold("relay", "b", NOW + timedelta(seconds=11), 10)


# --- deciding -------------------------------------------------------------------------------


def _disrupted_with(bookings: int) -> dict[str, Any]:
    return {**_disrupted(), "bookings_30d": bookings}


def _stored(customers: Sequence[str], event: str = "ops-1") -> list[tuple[dict, str, Effects]]:
    return [
        ({"customer_id": c, "type": "flight_disrupted", "cancelled": True}, f"{event}:{c}",
         Effects(severe_disruption=True))
        for c in customers
    ]  # fmt: skip


def test_a_wave_beyond_the_budget_waits_by_value_and_is_paced(outbox: Outbox) -> None:
    # More bookings, less apology value (FeatureModel): C5 is worth most, C1 least.
    rows = {f"C{k}": _disrupted_with(5 - k) for k in range(1, 6)}
    log: list[Mapping[str, Any]] = []
    decider = _decider(rows, {"apology_credit": 0.9}, 2, log)
    triggered = Triggered(TRIGGERS, decider, outbox, log=log.append, clock=lambda: NOW)
    assert triggered.fire(_stored(list(rows))) == 5
    results = {o.firing.customer_id: o.result for o in triggered.run_once()}
    assert list(results.values()).count("outbox") == 2
    assert list(results.values()).count("budget") == 3
    waiting = outbox.waiting()
    assert [w["customer_id"] for w in waiting] == sorted(
        (c for c, r in results.items() if r == "budget"),
        key=lambda c: -next(w["expected_value"] for w in waiting if w["customer_id"] == c),
    )
    values = [w["expected_value"] for w in waiting]
    assert values == sorted(values, reverse=True) and all(v > 0 for v in values)
    # A retried flight event fires nothing new: neither for the served nor for the waiting.
    assert triggered.fire(_stored(list(rows))) == 0
    assert triggered.run_once() == []  # no room in the budget: nobody decided, nobody dropped
    # The pace grants one more credit: the best-valued waiting customer gets it.
    decider.budget.per_day = decider.budget.burst = 3
    [outcome] = triggered.run_once()
    assert outcome.result == "outbox" and outcome.firing.customer_id == waiting[0]["customer_id"]
    assert [w["customer_id"] for w in outbox.waiting()] == [w["customer_id"] for w in waiting[1:]]
    items, _ = outbox.page()
    assert len(items) == 3 and {i["decision"]["action"] for i in items} == {"apology_credit"}
    assert all(i["channel"] == "email" and i["trigger"] == "disruption" for i in items)
    # The decision log knows these decisions were triggered.
    contexts = [json.loads(r["context"]) for r in log]
    assert all(
        c["trigger"] == "disruption" and c["event_id"].startswith("ops-1:") for c in contexts
    )


def test_a_milestone_is_a_service_message_even_when_the_model_expects_no_value(
    outbox: Outbox,
) -> None:
    row = {**_disrupted(), "last_negative_at": None, "last_negative_kind": None,
           "last_milestone_at": pd.Timestamp(NOW - timedelta(hours=1)),
           "last_milestone_miles": 1_000_000}  # fmt: skip
    log: list[Mapping[str, Any]] = []
    decider = _decider({"C1": row}, {"recognition": 0.0}, 5, log)
    triggered = Triggered(TRIGGERS, decider, outbox, log=log.append, clock=lambda: NOW)
    stored = [({"customer_id": "C1", "type": "flight_flown", "miles_earned": 900}, "fl-1",
               Effects(milestone_crossed=1_000_000))]  # fmt: skip
    triggered.fire(stored)
    [outcome] = triggered.run_once()
    assert outcome.result == "outbox"
    [item] = outbox.page()[0]
    assert item["service_action"] is True and item["decision"]["action"] == "recognition"
    assert any(r.startswith("service message") for r in item["decision"]["reasons"])
    model_row, service_row = log
    assert model_row["action"] == "none"  # the model's decision, as it was made
    assert service_row["action"] == "recognition" and service_row["policy"] == "service_action"
    assert json.loads(service_row["context"])["service_action_of"] == model_row["decision_id"]
    pa.Table.from_pylist([service_row], schema=decision_log.DECISION_SCHEMA)  # fits the log


def test_no_recognition_right_after_an_uncompensated_cancellation(outbox: Outbox) -> None:
    row = {**_disrupted(), "last_milestone_at": pd.Timestamp(NOW - timedelta(hours=1)),
           "last_milestone_miles": 1_000_000}  # fmt: skip
    decider = _decider({"C1": row}, {"recognition": 0.5}, 5, [])
    triggered = Triggered(TRIGGERS, decider, outbox, clock=lambda: NOW)
    triggered.fire([({"customer_id": "C1", "type": "flight_flown"}, "fl-1",
                     Effects(milestone_crossed=1_000_000))])  # fmt: skip
    [outcome] = triggered.run_once()
    assert outcome.result == "none" and outbox.page()[0] == []
    recognition = next(r for r in outcome.decision["ranking"] if r["action"] == "recognition")
    assert recognition["blocked_by"] == ["no_recognition_after_uncompensated_disruption"]


def test_a_delayed_trigger_decides_when_due(outbox: Outbox) -> None:
    triggers = parse_triggers({"version": 1, "triggers": [
        {"name": "later", "event": "flight_disrupted", "when": {"severe": True},
         "candidates": ["apology_credit"], "channel": "app", "delay": "15m"}]})  # fmt: skip
    clock = FakeClock(NOW)
    decider = _decider({"C1": _disrupted()}, {"apology_credit": 0.9}, 5, [])
    triggered = Triggered(triggers, decider, outbox, clock=clock)
    triggered.fire(_stored(["C1"]))
    assert triggered.run_once() == []
    assert outbox.waiting()[0]["waiting_for"] == "due"
    clock.now = NOW + timedelta(minutes=15)
    [outcome] = triggered.run_once()
    assert outcome.result == "outbox" and outbox.page()[0][0]["channel"] == "app"


def test_a_degraded_decision_is_tried_again_not_dropped(outbox: Outbox) -> None:
    decider = _decider({"C1": _disrupted()}, {"apology_credit": 0.9}, 5, [])

    def down(customer_id: str) -> Mapping[str, Any]:
        raise ConnectionError("store down")

    healthy = decider._read
    decider._read = down
    clock = FakeClock(NOW)
    triggered = Triggered(TRIGGERS, decider, outbox, clock=clock)
    triggered.fire(_stored(["C1"]))
    [outcome] = triggered.run_once()
    assert outcome.result == "retry" and outbox.page()[0] == []
    assert [w["customer_id"] for w in outbox.waiting()] == ["C1"]
    decider._read = healthy
    clock.now = NOW + timedelta(seconds=5)
    [outcome] = triggered.run_once()
    assert outcome.result == "outbox"


# --- relay and sinks --------------------------------------------------------------------------


class Collect:
    column = "posted"

    def __init__(self, refuse_from: int | None = None) -> None:
        self.got: list[str] = []
        self.refuse_from = refuse_from

    def send(self, items: Sequence[Mapping[str, Any]]) -> list[int]:
        done = []
        for item in items:
            if self.refuse_from is not None and len(self.got) >= self.refuse_from:
                break
            self.got.append(item["customer_id"])
            done.append(int(item["seq"]))
        return done


def test_the_relay_delivers_in_order_once_and_resumes_after_a_refusal(outbox: Outbox) -> None:
    for k in range(5):
        outbox.append(_firing(f"C{k}"), "email", {"action": "apology_credit"}, NOW)
    sink = Collect(refuse_from=2)
    decider = _decider({}, {}, 0, [])
    triggered = Triggered(TRIGGERS, decider, outbox, sinks=[sink], clock=lambda: NOW)
    assert triggered.relay_once() == 2
    sink.refuse_from = None
    assert triggered.relay_once() == 3
    assert triggered.relay_once() == 0
    assert sink.got == [f"C{k}" for k in range(5)]


def test_webhook_retries_with_backoff_and_sends_the_idempotency_key() -> None:
    calls: list[tuple[str, dict]] = []
    answers = iter([503, OSError("refused"), 200])

    def post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
        calls.append((json.loads(body)["outbox_id"], dict(headers)))
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    slept: list[float] = []
    sink = WebhookSink("http://hook", post=post, sleep=slept.append, attempts=5)
    assert sink.send([{"outbox_id": "o-1", "seq": 7}]) == [7]
    assert slept == [0.5, 1.0]
    assert all(h["Idempotency-Key"] == "o-1" for _, h in calls) and len(calls) == 3


def test_webhook_gives_up_for_the_round_and_keeps_the_order() -> None:
    slept: list[float] = []
    sink = WebhookSink("http://hook", post=lambda *a: 500, sleep=slept.append, attempts=3,
                       backoff=1.0, max_backoff=1.5)  # fmt: skip
    assert sink.send([{"outbox_id": "o-1", "seq": 1}, {"outbox_id": "o-2", "seq": 2}]) == []
    assert slept == [1.0, 1.5]  # bounded: doubled, then capped
    refused = WebhookSink("http://hook", post=lambda *a: 400, sleep=slept.append)
    assert refused.send([{"outbox_id": "o-1", "seq": 1}]) == [1]  # refused for good: not retried


# --- /events/flight validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"flight_number": "aa45"}, "flight_number"),
        ({"cancelled": None}, "delay_minutes"),
        ({"type": "booking"}, "type"),
        ({"scheduled_at": "2026-12-04T18:30:00"}, "scheduled_at"),
        ({"delay_minutes": -5}, "delay_minutes"),
        ({"extra": 1}, "extra"),
    ],
)
def test_flight_event_validation_names_the_field(patch: dict[str, Any], field: str) -> None:
    body = {"flight_number": "AA45", "scheduled_at": "2026-12-04T18:30:00Z",
            "type": "flight_disrupted", "ts": "2026-12-04T19:10:00Z", "cancelled": True,
            "event_id": "ops-7781"}  # fmt: skip
    parse(FlightEvent, json.dumps(body).encode())
    broken = {k: v for k, v in {**body, **patch}.items() if v is not None}
    with pytest.raises(ApiError) as error:
        parse(FlightEvent, json.dumps(broken).encode())
    assert error.value.status == 422 and error.value.body["detail"]["field"] == field


def test_passenger_event_ids_are_stable_and_fit_the_ledger() -> None:
    assert passenger_event_id("ops-7781", "C1") == "ops-7781:C1"
    long = passenger_event_id("x" * 128, "C" * 128)
    assert len(long) <= 128 and long == passenger_event_id("x" * 128, "C" * 128)
    assert long != passenger_event_id("x" * 128, "C" * 127 + "D")


def test_a_flights_batch_append_equals_one_append_per_passenger(tmp_path: Path) -> None:
    from memory.ledger import Memory

    one = Memory(Database(sqlite_url(tmp_path / "one.db")))
    many = Memory(Database(sqlite_url(tmp_path / "many.db")))
    base = {**_disrupted(), "last_negative_at": None, "last_negative_kind": None}
    events = [
        {"customer_id": f"C{k}", "type": "flight_disrupted", "ts": NOW, "cancelled": True,
         "flight_number": "AA45", "event_id": f"ops-1:C{k}"}
        for k in range(5)
    ]  # fmt: skip
    # A state already in the memory for one of them (an earlier event), none for the others.
    for memory in (one, many):
        memory.append({"customer_id": "C2", "type": "booking", "ts": NOW, "event_id": "b"})
    singles = [one.append(e, lambda: base) for e in events]
    batch = many.append_many(events, [base] * len(events))
    for a, b in zip(singles, batch, strict=True):
        assert (a.event_id, a.duplicate, a.applied, a.effects) == (
            b.event_id, b.duplicate, b.applied, b.effects)  # fmt: skip
        assert one.state(a.customer_id) == many.state(b.customer_id)
    assert all(b.effects.severe_disruption for b in batch)
    again = many.append_many(events, [base] * len(events))
    assert all(a.duplicate for a in again)
    assert len(many.events()) == len(one.events())


def test_a_service_apology_takes_the_claim_and_the_budget(outbox: Outbox) -> None:
    from tests.unit.test_apologies import SharedClaims

    triggers = parse_triggers({"version": 1, "triggers": [
        {"name": "sorry", "event": "flight_disrupted", "when": {"severe": True},
         "candidates": ["apology_credit"], "channel": "email",
         "service_action": True}]})  # fmt: skip
    rows = {"C1": _disrupted(), "C2": _disrupted()}
    decider = _decider(rows, {"apology_credit": 0.0}, 1, [])  # worth nothing to the model
    claims = SharedClaims()
    decider.apologies = claims
    triggered = Triggered(triggers, decider, outbox, clock=lambda: NOW, read=rows.__getitem__)
    triggered.fire(_stored(["C1", "C2"]))
    outcomes = {o.firing.customer_id: o.result for o in triggered.run_once()}
    # One credit in the budget: C1 gets it as a service message; C2 waits for the budget.
    assert outcomes == {"C1": "outbox", "C2": "budget"}
    assert claims.granted_keys == [("C1", "apology:" + str(_disrupted()["last_negative_at"]))]
    assert decider.budget.remaining() == 0
    [item] = outbox.page()[0]
    assert item["service_action"] and item["decision"]["action"] == "apology_credit"


def test_pushes_deferred_makes_one_push_at_the_end_for_this_thread_only() -> None:
    import threading

    from memory.fold import empty_state
    from serving.runtime import Runtime

    pushed: list[list[str]] = []

    class Adapter:
        def push(self, frame: pd.DataFrame) -> None:
            pushed.append(sorted(frame["customer_id"]))

    runtime = Runtime(None, Adapter(), None, None, None)  # type: ignore[arg-type]
    state = empty_state()
    with runtime.pushes_deferred():
        runtime.push_state("C1", state, None)
        runtime.push_state("C2", state, pd.Timestamp(NOW))
        runtime.push_state("C1", state, None)
        other = threading.Thread(target=runtime.push_state, args=("C3", state, None))
        other.start()
        other.join()
        assert pushed == [["C3"]]  # another thread pushes at once
    assert pushed == [["C3"], ["C1", "C2"]]
