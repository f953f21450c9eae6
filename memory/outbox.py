"""The outbox of triggered decisions, and the firings waiting to be decided.

Ground floor beside the ledger (same database, ``memory.store``), because the service writes it
and consumers, ``nba`` and monitoring may read it.

* ``firings``: a trigger fired for a customer on an event (``serving.triggered``); the row
  waits here until it is decided: due at ``due_at`` (a trigger's ``delay``), or parked when the
  apology budget refused it (``waiting = 'budget'``, with its expected value, decided again as
  the budget's pacing allows, best value first). ``lease_until`` lets one worker of many
  decide a row at a time; an expired lease (a crashed worker) frees the row again.
* ``outbox``: every triggered decision that is not ``none``, exactly once per
  (trigger, customer, event): the unique key refuses a second one, whatever worker, retry or
  restart produced it. ``seq`` orders it and is the consumers' cursor.
* ``outbox_leases``: named leases (``relay``) so that one worker of many publishes to the
  Redis stream and the webhook.

Every call goes through ``memory.store.Database`` (a deadline on every statement) and raises
when the database does not answer: the caller then writes no outbox item rather than a wrong
one, and the firing stays for a later attempt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa

from memory.store import _BIG, METADATA, Database, from_micros, micros

#: Why a firing waits: its delay, or the apology budget.
DUE: Final = "due"
BUDGET: Final = "budget"

FIRINGS: Final = sa.Table(
    "firings",
    METADATA,
    sa.Column("trigger", sa.String(64), primary_key=True),
    sa.Column("customer_id", sa.String(128), primary_key=True),
    sa.Column("event_id", sa.String(200), primary_key=True),
    sa.Column("fired_at", sa.BigInteger, nullable=False),
    sa.Column("due_at", sa.BigInteger, nullable=False),
    sa.Column("waiting", sa.String(16), nullable=False),
    sa.Column("expected_value", sa.Float, nullable=True),
    sa.Column("lease_until", sa.BigInteger, nullable=False, default=0),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Index("firings_due", "waiting", "due_at"),
)

OUTBOX: Final = sa.Table(
    "outbox",
    METADATA,
    sa.Column("seq", _BIG, primary_key=True, autoincrement=True),
    sa.Column("outbox_id", sa.String(40), nullable=False, unique=True),
    sa.Column("trigger", sa.String(64), nullable=False),
    sa.Column("customer_id", sa.String(128), nullable=False),
    sa.Column("event_id", sa.String(200), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("decision", sa.Text, nullable=False),
    sa.Column("service_action", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    # Delivery bookkeeping of the relay (stream, webhook): 0 = not yet.
    sa.Column("streamed", sa.Boolean, nullable=False, default=False),
    sa.Column("posted", sa.Boolean, nullable=False, default=False),
    sa.UniqueConstraint("trigger", "customer_id", "event_id", name="outbox_once"),
)

LEASES: Final = sa.Table(
    "outbox_leases",
    METADATA,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("until", sa.BigInteger, nullable=False),
)

#: Most items of one ``GET /outbox`` page.
MAX_PAGE: Final = 1000


@dataclass(frozen=True)
class Firing:
    """A trigger that fired for one customer on one event, to be decided at ``due_at``."""

    trigger: str
    customer_id: str
    event_id: str
    due_at: datetime
    waiting: str = DUE
    expected_value: float | None = None
    attempts: int = 0

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.trigger, self.customer_id, self.event_id)


def outbox_id(trigger: str, customer_id: str, event_id: str) -> str:
    """The item's id: derived from its unique key, so a consumer may use it to deduplicate."""
    digest = hashlib.sha256(f"{trigger}\x1f{customer_id}\x1f{event_id}".encode()).hexdigest()
    return f"o-{digest[:32]}"


def _firing(row: Any) -> Firing:
    due = from_micros(row.due_at)
    assert due is not None
    return Firing(row.trigger, row.customer_id, row.event_id, due, row.waiting,
                  row.expected_value, int(row.attempts))  # fmt: skip


def _item(row: Any) -> dict[str, Any]:
    created = from_micros(row.created_at)
    assert created is not None
    item = {
        "outbox_id": row.outbox_id,
        "seq": int(row.seq),
        "trigger": row.trigger,
        "customer_id": row.customer_id,
        "event_id": row.event_id,
        "channel": row.channel,
        "decision": json.loads(row.decision),
        "created_at": created.isoformat().replace("+00:00", "Z"),
    }
    if row.service_action:
        item["service_action"] = True
    return item


class Outbox:
    """The outbox and the waiting firings on one memory database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def _key(self, table: sa.Table, key: tuple[str, str, str]) -> Any:
        trigger, customer_id, event_id = key
        return sa.and_(table.c.trigger == trigger, table.c.customer_id == customer_id,
                       table.c.event_id == event_id)  # fmt: skip

    # -- firings ------------------------------------------------------------------------------

    def fire(self, firings: Iterable[Firing], now: datetime) -> int:
        """Record firings (one transaction); one already recorded or already in the outbox is
        ignored (a retried event fires nothing twice). Returns how many were new."""
        firings = list(firings)
        rows = [
            {"trigger": f.trigger, "customer_id": f.customer_id, "event_id": f.event_id,
             "fired_at": micros(now), "due_at": micros(f.due_at), "waiting": f.waiting,
             "expected_value": f.expected_value, "lease_until": 0, "attempts": 0}
            for f in firings
        ]  # fmt: skip
        if not rows:
            return 0
        with self.db.begin() as tx:
            keys = [(f.trigger, f.customer_id, f.event_id) for f in firings]
            known = self._existing(tx, OUTBOX, keys) | self._existing(tx, FIRINGS, keys)
            fresh = [r for r, k in zip(rows, keys, strict=True) if k not in known]
            if fresh:  # one statement for a whole flight's passengers
                tx.execute(self.db.insert(FIRINGS).on_conflict_do_nothing(), fresh)
        return len(fresh)

    @staticmethod
    def _existing(tx: sa.Connection, table: sa.Table, keys: Sequence[tuple[str, str, str]]
                  ) -> set[tuple]:  # fmt: skip
        """Which (trigger, customer, event) keys ``table`` (firings or the outbox) already
        holds, read by event id in chunks of 500 (an ``IN`` list's bound parameters)."""
        found: set[tuple] = set()
        events = sorted({k[2] for k in keys})
        for start in range(0, len(events), 500):
            rows = tx.execute(
                sa.select(table.c.trigger, table.c.customer_id, table.c.event_id).where(
                    table.c.event_id.in_(events[start : start + 500])
                )
            ).all()
            found.update((r.trigger, r.customer_id, r.event_id) for r in rows)
        return found

    def lease_due(self, now: datetime, seconds: float, limit: int = 500) -> list[Firing]:
        """Take up to ``limit`` firings due by ``now`` (oldest first) for ``seconds``: no other
        worker takes them meanwhile; an unfinished one is free again when the lease ends."""
        return self._lease(
            sa.and_(FIRINGS.c.waiting == DUE, FIRINGS.c.due_at <= micros(now)),
            [FIRINGS.c.due_at, FIRINGS.c.customer_id],
            now,
            seconds,
            limit,
        )

    def lease_waiting(self, now: datetime, seconds: float, limit: int) -> list[Firing]:
        """Take the ``limit`` budget-waiting firings of highest expected value (ties: the
        earliest fired first)."""
        if limit <= 0:
            return []
        return self._lease(
            FIRINGS.c.waiting == BUDGET,
            [FIRINGS.c.expected_value.desc(), FIRINGS.c.fired_at, FIRINGS.c.customer_id],
            now,
            seconds,
            limit,
        )

    def _lease(self, where: Any, order: list[Any], now: datetime, seconds: float,
               limit: int) -> list[Firing]:  # fmt: skip
        at = micros(now)
        until = at + int(seconds * 1_000_000)
        with self.db.begin() as tx:
            query = (
                sa.select(FIRINGS)
                .where(where, FIRINGS.c.lease_until <= at)
                .order_by(*order)
                .limit(limit)
            )
            if self.db.dialect == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = tx.execute(query).all()
            taken = []
            for row in rows:
                result = tx.execute(
                    FIRINGS.update()
                    .where(
                        self._key(FIRINGS, (row.trigger, row.customer_id, row.event_id)),
                        FIRINGS.c.lease_until <= at,
                    )
                    .values(lease_until=until, attempts=FIRINGS.c.attempts + 1)
                )
                if result.rowcount:
                    taken.append(_firing(row))
        return taken

    def park(self, firing: Firing, expected_value: float | None, now: datetime) -> None:
        """The apology budget refused ``firing``: it waits, ranked by ``expected_value``."""
        with self.db.begin() as tx:
            tx.execute(
                FIRINGS.update()
                .where(self._key(FIRINGS, firing.key))
                .values(waiting=BUDGET, expected_value=expected_value, lease_until=0)
            )

    def settle(
        self, parked: Sequence[tuple[Firing, float | None]], resolved: Sequence[Firing]
    ) -> None:
        """``park`` and ``resolve`` many firings in one transaction (a wave's decisions: one
        commit instead of one per passenger). Idempotent: a crash before it leaves the
        firings leased, decided again when the lease ends."""
        if not parked and not resolved:
            return
        with self.db.begin() as tx:
            for firing, value in parked:
                tx.execute(
                    FIRINGS.update()
                    .where(self._key(FIRINGS, firing.key))
                    .values(waiting=BUDGET, expected_value=value, lease_until=0)
                )
            for firing in resolved:
                tx.execute(FIRINGS.delete().where(self._key(FIRINGS, firing.key)))

    def retry_at(self, firing: Firing, due_at: datetime) -> None:
        """``firing`` could not be decided now (a store down): due again at ``due_at``."""
        with self.db.begin() as tx:
            tx.execute(
                FIRINGS.update()
                .where(self._key(FIRINGS, firing.key))
                .values(due_at=micros(due_at), lease_until=0)
            )

    def resolve(self, firing: Firing) -> None:
        """``firing`` was decided ``none`` (nothing to send): it waits no more."""
        with self.db.begin() as tx:
            tx.execute(FIRINGS.delete().where(self._key(FIRINGS, firing.key)))

    def waiting(self, limit: int = MAX_PAGE) -> list[dict[str, Any]]:
        """Firings not yet decided: the budget's queue first (by expected value), then the
        delayed ones (by due time)."""
        with self.db.read() as connection:
            rows = connection.execute(
                sa.select(FIRINGS)
                .order_by(
                    sa.case((FIRINGS.c.waiting == BUDGET, 0), else_=1),
                    FIRINGS.c.expected_value.desc(),
                    FIRINGS.c.due_at,
                    FIRINGS.c.customer_id,
                )
                .limit(limit)
            ).all()
        out = []
        for row in rows:
            due = from_micros(row.due_at)
            assert due is not None
            out.append({"customer_id": row.customer_id, "trigger": row.trigger,
                        "event_id": row.event_id, "expected_value": row.expected_value,
                        "waiting_for": row.waiting,
                        "due_at": due.isoformat().replace("+00:00", "Z")})  # fmt: skip
        return out

    def counts(self) -> dict[str, int]:
        """Firings waiting, by reason (``due``, ``budget``)."""
        with self.db.read() as connection:
            rows = connection.execute(
                sa.select(FIRINGS.c.waiting, sa.func.count()).group_by(FIRINGS.c.waiting)
            ).all()
        return {str(r[0]): int(r[1]) for r in rows}

    # -- the outbox -----------------------------------------------------------------------------

    def append(
        self,
        firing: Firing,
        channel: str,
        decision: Mapping[str, Any],
        now: datetime,
        service_action: bool = False,
    ) -> dict[str, Any] | None:
        """Put a decided firing in the outbox and retire it, in one transaction.

        Returns the new item, or None when the outbox already holds one for (trigger,
        customer, event): exactly once, whoever decided it.
        """
        identifier = outbox_id(*firing.key)
        values = {"outbox_id": identifier, "trigger": firing.trigger,
                  "customer_id": firing.customer_id, "event_id": firing.event_id,
                  "channel": channel, "decision": json.dumps(dict(decision), default=str),
                  "service_action": service_action, "created_at": micros(now),
                  "streamed": False, "posted": False}  # fmt: skip
        with self.db.begin() as tx:
            if self.db.dialect == "postgresql":
                # Inserts one at a time, so that ``seq`` order is commit order: a consumer that
                # read past a seq never misses a row committed later with a smaller one.
                tx.execute(sa.text("LOCK TABLE outbox IN SHARE ROW EXCLUSIVE MODE"))
            inserted = tx.execute(
                self.db.insert(OUTBOX)
                .values(**values)
                .on_conflict_do_nothing()
                .returning(OUTBOX.c.seq)
            ).first()
            tx.execute(FIRINGS.delete().where(self._key(FIRINGS, firing.key)))
        if inserted is None:
            return None
        return {**{"outbox_id": identifier, "seq": int(inserted[0]), "trigger": firing.trigger,
                   "customer_id": firing.customer_id, "event_id": firing.event_id,
                   "channel": channel, "decision": dict(decision),
                   "created_at": now.isoformat().replace("+00:00", "Z")},
                **({"service_action": True} if service_action else {})}  # fmt: skip

    def page(self, after: int = 0, limit: int = 100) -> tuple[list[dict[str, Any]], int]:
        """Items after the cursor ``after`` (a ``seq``), oldest first, and the next cursor
        (the last item's ``seq``; ``after`` itself when there is nothing new)."""
        limit = max(1, min(int(limit), MAX_PAGE))
        with self.db.read() as connection:
            rows = connection.execute(
                sa.select(OUTBOX).where(OUTBOX.c.seq > after).order_by(OUTBOX.c.seq).limit(limit)
            ).all()
        items = [_item(r) for r in rows]
        return items, (items[-1]["seq"] if items else after)

    def undelivered(self, column: str, limit: int = 100) -> list[dict[str, Any]]:
        """Items not yet ``streamed`` / ``posted``, oldest first (the relay's work)."""
        flag = OUTBOX.c[column]
        with self.db.read() as connection:
            rows = connection.execute(
                sa.select(OUTBOX).where(flag.is_(False)).order_by(OUTBOX.c.seq).limit(limit)
            ).all()
        return [_item(r) for r in rows]

    def delivered(self, column: str, seqs: Sequence[int]) -> None:
        """Mark items ``streamed`` / ``posted``."""
        if not seqs:
            return
        with self.db.begin() as tx:
            tx.execute(OUTBOX.update().where(OUTBOX.c.seq.in_(list(seqs))).values({column: True}))

    # -- leases ----------------------------------------------------------------------------------

    def hold(self, name: str, owner: str, now: datetime, seconds: float) -> bool:
        """Take or renew the named lease for ``owner``; False while another owner holds it."""
        at = micros(now)
        until = at + int(seconds * 1_000_000)
        with self.db.begin() as tx:
            tx.execute(
                self.db.insert(LEASES)
                .values(name=name, owner=owner, until=0)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            result = tx.execute(
                LEASES.update()
                .where(LEASES.c.name == name, sa.or_(LEASES.c.owner == owner, LEASES.c.until <= at))
                .values(owner=owner, until=until)
            )
        return bool(result.rowcount)
