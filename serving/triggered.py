"""Triggered decisions: events that decide for a customer without a ``/decide`` call.

``evaluate`` is the pure part: (trigger rules, event, its effects) -> the triggers that fire.
``Triggered`` is the worker's part:

1. ``fire``: after ``/events`` (or ``/events/flight``) stored events in the ledger, the
   firings are recorded durably in the memory's ``firings`` table (``memory.outbox``), due at
   the event's arrival plus the trigger's ``delay``, and the scheduler thread is woken;
2. the scheduler thread takes due firings under a lease (so several workers never decide one
   twice) and decides each with ``Decider.decide``, the trigger's candidates and channel: the
   same guardrails, contact policy, apology budget, arbitration and decision log as
   ``/decide``; the request's context names the trigger and the event (the decision log's
   ``context`` column then says the row was triggered);
3. a decision that is not ``none`` goes to the outbox, exactly once per (trigger, customer,
   event) (the outbox's unique key); ``none`` because the apology budget's pace refused the
   credit parks the firing in the budget's queue with its expected value; any other ``none``
   retires it; a degraded decision (a store down) is tried again later, never dropped;
4. the budget's queue is decided again, best expected value first, as many at a time as the
   pace allows (``DailyBudget.remaining``); one worker at a time owns the queue (a lease), so
   the order holds across workers.

A trigger with ``service_action: true`` sends its action whenever it is eligible: when the
decision came back ``none`` although a candidate was eligible (the model expected no positive
value), the eligible candidate of highest expected value is given instead, taking what a
``/decide`` would take for it (an apology credit from the budget and its one-shot claim, a promo
in the frequency history). The answer then has a new ``decision_id``, the reason "service
message: ...", and the outbox item ``"service_action": true``; the decision log gets a row
for it with ``policy = "service_action"`` (the model's ``none`` row stays, as decided).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

from memory.fold import Effects
from memory.ledger import Applied
from memory.outbox import BUDGET, Firing, Outbox
from serving.decider import BUDGET_RULE, Decider, Request, apology_key
from serving.triggers import Trigger

logger = logging.getLogger(__name__)

#: The pseudo-event of a loyalty milestone crossed (``memory.fold.Effects.milestone_crossed``).
MILESTONE: Final = "milestone_crossed"
#: How long a worker holds a firing it is deciding (seconds): a crashed worker's firings are
#: taken again after this.
LEASE_SECONDS: Final = 30.0
#: Most firings decided in one round of the scheduler.
ROUND: Final = 500
#: The online-store pushes of this many triggered decisions are made at once (see
#: ``Triggered.batch_pushes``): a customer's compensation reaches the online store at most
#: that many decisions (≈ 1-2 s) late; the one-shot claims never wait for it.
PUSH_EVERY: Final = 50
#: A firing whose decision was degraded is tried again after this many seconds, doubling per
#: attempt up to ``MAX_RETRY_SECONDS``.
RETRY_SECONDS: Final = 2.0
MAX_RETRY_SECONDS: Final = 300.0


def evaluate(
    triggers: Sequence[Trigger], event: Mapping[str, Any], effects: Effects
) -> list[Trigger]:
    """The triggers that fire on ``event`` (an ``/events`` body) given what it changed.

    ``milestone_crossed`` fires when ``effects.milestone_crossed`` is set, whatever the event's
    type; other triggers fire on their event type. ``when`` is matched against the event's
    fields plus ``severe`` (``effects.severe_disruption``) and ``milestone`` (the miles of the
    milestone crossed, or None); every key must be equal (a bool only equals a bool).
    """
    facts = {**event, "severe": effects.severe_disruption, "milestone": effects.milestone_crossed}
    fired = []
    for trigger in triggers:
        if trigger.event == MILESTONE:
            if effects.milestone_crossed is None:
                continue
        elif trigger.event != event.get("type"):
            continue
        if all(_same(facts.get(key), value) for key, value in trigger.when.items()):
            fired.append(trigger)
    return fired


def _same(have: Any, want: Any) -> bool:
    # True == 1 in Python; a rule "when: {severe: 1}" must not match a boolean by accident.
    if isinstance(have, bool) or isinstance(want, bool):
        return isinstance(have, bool) and isinstance(want, bool) and have == want
    return have is not None and have == want


class Sink(Protocol):
    """A consumer the relay publishes outbox items to (``serving.webhook``)."""

    #: The outbox column that records delivery (``streamed``, ``posted``).
    column: str

    def send(self, items: Sequence[Mapping[str, Any]]) -> list[int]:
        """Deliver items in order; the ``seq`` of those delivered (a prefix of ``items``)."""
        ...


@dataclass
class Outcome:
    """What became of one firing (for tests and the benchmark)."""

    firing: Firing
    result: str  # "outbox", "duplicate", "budget", "none", "retry"
    decision: Mapping[str, Any] | None = None
    #: The apology credit's expected value of a firing that waits for the budget.
    value: float | None = None


class Triggered:
    """Fires triggers, decides firings and keeps the outbox; see the module docstring.

    Args:
        triggers: the validated trigger rules (``serving.triggers.load_triggers``).
        decider: the worker's decider (its ``decide`` is the one of ``/decide``).
        outbox: the memory's outbox and firings (``memory.outbox.Outbox``).
        log: the decision log's sink (a service-action row is appended there).
        sinks: where the relay publishes items (Redis stream, webhook); may be empty.
        clock: the current time (tz-aware).
        poll_seconds: how often the scheduler looks for due firings and budget room when not
            woken by an event.
        read: one customer's stored features (the apology claim's key of a service action
            that is an apology credit); None: such a service action is not given.
        batch_pushes: a context in which the online-store pushes of the decisions (a credit's
            ``compensation_granted`` fact) are made once at its end
            (``Runtime.pushes_deferred``); one per ``PUSH_EVERY`` decisions.
    """

    def __init__(
        self,
        triggers: Sequence[Trigger],
        decider: Decider,
        outbox: Outbox,
        log: Callable[[Mapping[str, Any]], None] | None = None,
        sinks: Sequence[Sink] = (),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        poll_seconds: float = 1.0,
        read: Callable[[str], Mapping[str, Any]] | None = None,
        batch_pushes: Callable[[], contextlib.AbstractContextManager[None]] | None = None,
    ) -> None:
        self.triggers = tuple(triggers)
        self.by_name = {t.name: t for t in self.triggers}
        self.decider = decider
        self.outbox = outbox
        self._log = log
        self.sinks = tuple(sinks)
        self._clock = clock
        self.poll_seconds = poll_seconds
        self._read = read
        self._batch_pushes = batch_pushes or contextlib.nullcontext
        self.owner = f"w-{uuid.uuid4().hex[:12]}"
        self._wake = threading.Event()
        self._relay_wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._round = threading.Lock()

    # -- firing ---------------------------------------------------------------------------------

    def firings(
        self, stored: Iterable[tuple[Mapping[str, Any], str, Effects]], now: datetime
    ) -> list[Firing]:
        """The firings of stored events: (event body, its event id, its effects) each."""
        out = []
        for event, event_id, effects in stored:
            for trigger in evaluate(self.triggers, event, effects):
                out.append(Firing(trigger.name, str(event["customer_id"]), event_id,
                                  now + trigger.delay))  # fmt: skip
        return out

    def fire(self, stored: Iterable[tuple[Mapping[str, Any], str, Effects]]) -> int:
        """Record the firings of stored events durably and wake the scheduler.

        Raises when the memory cannot record them (the caller logs it: the event itself is
        stored; see ``serving.runtime.Runtime.handle_event``).
        """
        now = self._clock()
        firings = self.firings(stored, now)
        if not firings:
            return 0
        new = self.outbox.fire(firings, now)
        self._wake.set()
        return new

    def after_events(self, stored: Iterable[tuple[Mapping[str, Any], Applied]]) -> int:
        """``fire`` for events just stored in the ledger (duplicates and events that changed
        nothing fire nothing). A failure is logged, not raised: the events are stored and
        acknowledged, and a retry of them would be a duplicate anyway."""
        fresh = [(event, a.event_id, a.effects) for event, a in stored
                 if a.applied and not a.duplicate]  # fmt: skip
        try:
            return self.fire(fresh)
        except Exception as error:
            logger.error("triggers of %d stored event(s) NOT recorded (%s: %s): event ids %s",
                         len(fresh), type(error).__name__, error,
                         [e for _, e, _ in fresh][:20])  # fmt: skip
            return 0

    # -- deciding ---------------------------------------------------------------------------

    def run_once(self) -> list[Outcome]:
        """One round: decide the due firings, then the budget's queue as the pace allows."""
        with self._round:
            now = self._clock()
            outcomes = self._decide_all(self.outbox.lease_due(now, LEASE_SECONDS, ROUND))
            outcomes += self._drain_budget()
        if any(o.result == "outbox" for o in outcomes):
            self._relay_wake.set()
        return outcomes

    def _drain_budget(self) -> list[Outcome]:
        """Decide budget-waiting firings, best value first, as many as credits are left now."""
        outcomes: list[Outcome] = []
        now = self._clock()
        if not self.outbox.counts().get(BUDGET):
            return outcomes
        if not self.outbox.hold("pacer", self.owner, now, max(3 * self.poll_seconds, 5.0)):
            return outcomes  # another worker owns the queue (and its order)
        for _ in range(ROUND):
            left = self.decider.budget.remaining()  # 0 when unreadable: fails closed
            if left <= 0:
                break
            batch = self.outbox.lease_waiting(self._clock(), LEASE_SECONDS, min(left, ROUND))
            if not batch:
                break
            done = self._decide_all(batch)
            outcomes += done
            if all(o.result == "budget" for o in done):
                break  # another caller took the room meanwhile: wait for the pace
        return outcomes

    def _decide_all(self, firings: Sequence[Firing]) -> list[Outcome]:
        """Decide firings; the ``budget`` and ``none`` ones are written together at the end
        (an outbox item is written at once: it is what must not be lost or doubled)."""
        outcomes: list[Outcome] = []
        for start in range(0, len(firings), PUSH_EVERY):
            try:
                with self._batch_pushes():
                    outcomes += [self._decide(f) for f in firings[start : start + PUSH_EVERY]]
            except Exception as error:  # the facts are in the ledger; claims hold the credits
                logger.warning("online store not updated after %d triggered decision(s) (%s)",
                               PUSH_EVERY, type(error).__name__)  # fmt: skip
        parked = [(o.firing, o.value) for o in outcomes if o.result == "budget"]
        resolved = [o.firing for o in outcomes if o.result == "none"]
        try:
            self.outbox.settle(parked, resolved)
        except Exception as error:  # leased: decided again when the lease ends
            logger.warning("%d decided firing(s) not settled (%s): decided again in %.0f s",
                           len(parked) + len(resolved), type(error).__name__,
                           LEASE_SECONDS)  # fmt: skip
        return outcomes

    def _decide(self, firing: Firing) -> Outcome:
        trigger = self.by_name.get(firing.trigger)
        if trigger is None:  # the trigger was removed from the file since it fired
            logger.warning("firing of unknown trigger %r dropped (customer %s, event %s)",
                           firing.trigger, firing.customer_id, firing.event_id)  # fmt: skip
            return Outcome(firing, "none")
        request = Request(
            firing.customer_id,
            {"channel": trigger.channel, "trigger": trigger.name, "event_id": firing.event_id},
            trigger.candidates,
            explain=True,
        )
        try:
            answer = self.decider.decide(request)
            service = False
            if answer["degraded"]:
                raise RuntimeError("degraded decision")
            if answer["action"] == "none" and trigger.service_action:
                served = self._service_action(trigger, request, answer)
                if served is not None:
                    answer, service = served, True
            if answer["action"] != "none":
                item = self.outbox.append(firing, trigger.channel, answer, self._clock(), service)
                return Outcome(firing, "outbox" if item is not None else "duplicate", answer)
            waits, value = _budget_wait(answer, trigger)
            if waits:
                return Outcome(firing, "budget", answer, value)
            return Outcome(firing, "none", answer)
        except Exception as error:
            # A store down: nothing is written; the firing is tried again later (never dropped).
            delay = min(RETRY_SECONDS * 2 ** max(firing.attempts, 0), MAX_RETRY_SECONDS)
            logger.warning("trigger %s for %s not decided (%s): again in %.0f s", firing.trigger,
                           firing.customer_id, type(error).__name__, delay)  # fmt: skip
            # If even that fails, the lease ends by itself and the firing is taken again then.
            with contextlib.suppress(Exception):
                self.outbox.retry_at(firing, self._clock() + timedelta(seconds=delay))
            return Outcome(firing, "retry")

    def _service_action(
        self, trigger: Trigger, request: Request, answer: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """The eligible candidate of highest expected value, given as a service message (and
        what it takes: a credit and its claim, a promo in the history); None when there is none
        or what it takes is refused."""
        eligible = [r for r in answer["ranking"] if r["action"] != "none" and r["eligible"]]
        if not eligible:
            return None
        best = max(eligible, key=lambda r: _value(r["expected_value"]))
        action, now = best["action"], self._clock()
        decider = self.decider
        if action == "apology_credit" and not self._take_apology(request.customer_id, now):
            return None
        # Every action given is a contact, as in Decider: raises, not given (retried).
        decider.history.add(request.customer_id, now, action, request.channel)
        value = best["expected_value"]
        reason = (
            f"service message: trigger {trigger.name} sends {action} whenever it is eligible"
            + (f" (expected value {value:.2f})" if value is not None else "")
        )
        served = {**answer, "decision_id": f"d-{uuid.uuid4().hex}", "action": action,
                  "reasons": [*answer["reasons"], reason]}  # fmt: skip
        self._log_service(request, served, answer["decision_id"], now)
        return served

    def _take_apology(self, customer_id: str, now: datetime) -> bool:
        """An apology credit outside the model's choice: the experience's claim, then the
        budget (the claim is given back when the budget refuses)."""
        apologies = self.decider.apologies
        key = None
        if apologies is not None:
            if self._read is None:
                return False
            key = apology_key(self._read(customer_id))  # the experience it answers
            if not apologies.claim(customer_id, key, now):
                return False
        if not self.decider.budget.take():
            if apologies is not None and key is not None:
                apologies.release(customer_id, key)
            return False
        if apologies is not None and key is not None:
            apologies.granted(customer_id, key, now)
        return True

    def _log_service(self, request: Request, answer: Mapping[str, Any], original: str,
                     now: datetime) -> None:  # fmt: skip
        if self._log is None:
            return
        record: dict[str, Any] = {
            "decision_id": answer["decision_id"],
            "customer_id": request.customer_id,
            "decided_at": now,
            "action": answer["action"],
            # A control-group customer keeps policy holdout (a service action is allowed to
            # them by NBA_HOLDOUT_SERVICE): nba impact still counts them as control.
            "policy": "holdout" if answer.get("holdout") else "service_action",
            "propensity": 1.0,
            "channel": request.channel,
            "model_version": answer["model_version"],
            "degraded": False,
            "degraded_reason": None,
            "explored": False,
            "candidates": ";".join(request.candidates),
            "context": json.dumps({**request.context, "service_action_of": original}),
            "features_found": answer.get("known_customer", True),
            "latency_ms": 0.0,
        }
        for ranked in answer["ranking"]:
            a = ranked["action"]
            record[f"uplift_{a}"] = ranked["uplift"]
            record[f"value_{a}"] = ranked["expected_value"]
            record[f"eligible_{a}"] = ranked["eligible"]
            record[f"blocked_by_{a}"] = ";".join(ranked["blocked_by"])
        self._log(record)

    # -- threads ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler thread (and the relay's when there are sinks)."""
        self._stop.clear()
        loops = [("nba-triggers", self._loop)]
        if self.sinks:
            loops.append(("nba-outbox-relay", self._relay_loop))
        for name, target in loops:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads (a firing being decided is finished; the rest wait in the table)."""
        self._stop.set()
        self._wake.set()
        self._relay_wake.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                while len(self.run_once()) >= ROUND and not self._stop.is_set():
                    pass  # a full round: more may be due at once
            except Exception as error:  # the memory down: the next round tries again
                logger.warning("trigger round failed (%s: %s)", type(error).__name__, error)

    def relay_once(self) -> int:
        """Publish undelivered outbox items to every sink, in order; returns items delivered.

        One worker at a time (the ``relay`` lease) so that a stream sees the outbox's order.
        """
        if not self.sinks or not self.outbox.hold("relay", self.owner, self._clock(), 30.0):
            return 0
        total = 0
        for sink in self.sinks:
            while True:
                items = self.outbox.undelivered(sink.column, 100)
                if not items:
                    break
                done = sink.send(items)
                self.outbox.delivered(sink.column, done)
                total += len(done)
                if len(done) < len(items):
                    break  # the sink refused one: keep the order, try again next round
        return total

    def _relay_loop(self) -> None:
        while not self._stop.is_set():
            self._relay_wake.wait(self.poll_seconds)
            self._relay_wake.clear()
            if self._stop.is_set():
                break
            try:
                self.relay_once()
            except Exception as error:
                logger.warning("outbox relay round failed (%s: %s)", type(error).__name__, error)

    def settle(self, timeout: float = 10.0) -> list[Outcome]:
        """Run rounds until no firing is due (tests, the benchmark, ``nba consume``)."""
        outcomes: list[Outcome] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.run_once()
            outcomes += done
            if not any(o.result in ("outbox", "duplicate", "none") for o in done):
                break
        return outcomes


def _value(value: float | None) -> float:
    return -math.inf if value is None else float(value)


def _budget_wait(answer: Mapping[str, Any], trigger: Trigger) -> tuple[bool, float | None]:
    """Whether a ``none`` answer is only the apology budget's pace, and the credit's value.

    Only the budget rule blocks the credit, and the model values it (or the trigger is a
    service action): with room in the budget, the same decision would give it.
    """
    for ranked in answer["ranking"]:
        if ranked["action"] == "apology_credit":
            value = ranked["expected_value"]
            if ranked["blocked_by"] == [BUDGET_RULE] and (
                trigger.service_action or _value(value) > 0.0
            ):
                return True, value
            return False, value
    return False, None
