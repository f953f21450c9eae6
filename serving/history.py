"""Promo history for the frequency cap: which customers got a promo, and when.

The ``promo_frequency_cap`` guardrail reads ``promos_7d``, the promos decided for the customer in
the last 7 days. Several service workers (and replicas on one host) must see each other's
promos at once, or a customer who searches twice could get two promos from two workers: the
history is a small SQLite table in WAL mode shared by every worker through one file (readers
never block the writer). A promo is recorded synchronously when it is chosen, before the
response leaves, so the next request sees it whichever worker answers. The production profile
(Redis) would use a shared sorted set; one file is enough on one host.

If the history cannot be read, ``count`` returns None: the guardrail treats a missing value as
"fires" (fail closed), so no promo goes out rather than too many.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

logger = logging.getLogger(__name__)


class PromoHistory(Protocol):
    """Where chosen promos are recorded and counted."""

    def count(self, customer_id: str, now: datetime, days: float = 7.0) -> int | None:
        """Promos for ``customer_id`` in ``(now - days, now]``; None when unreadable."""
        ...

    def add(self, customer_id: str, at: datetime) -> None:
        """Record a promo decided for ``customer_id`` at ``at``."""
        ...


class MemoryPromoHistory:
    """A per-process history (tests, offline use)."""

    def __init__(self) -> None:
        self._times: dict[str, list[datetime]] = {}
        self._lock = threading.Lock()

    def count(self, customer_id: str, now: datetime, days: float = 7.0) -> int | None:
        start = now - timedelta(days=days)
        with self._lock:
            return sum(start < t <= now for t in self._times.get(customer_id, ()))

    def add(self, customer_id: str, at: datetime) -> None:
        with self._lock:
            self._times.setdefault(customer_id, []).append(at)


class SqlitePromoHistory:
    """The history in one SQLite file shared by every worker on the host.

    Rows older than ``keep_days`` are pruned now and then; times are stored as epoch
    microseconds (UTC) so that comparisons are integer comparisons.
    """

    def __init__(self, path: Path, keep_days: float = 8.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.keep_days = keep_days
        self._lock = threading.Lock()
        self._adds = 0
        # One connection per process (workers are processes), used under a lock: sqlite3
        # connections are not safe to share between threads without one.
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=2.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: durable across a process crash, not an OS crash; a lost promo record can only
        # allow one extra promo after a power cut.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS promos (customer_id TEXT NOT NULL, at_us INTEGER NOT NULL)"
        )
        self._db.execute(
            "CREATE INDEX IF NOT EXISTS promos_by_customer ON promos (customer_id, at_us)"
        )
        self._db.commit()

    @staticmethod
    def _us(moment: datetime) -> int:
        return int(moment.timestamp() * 1_000_000)

    def count(self, customer_id: str, now: datetime, days: float = 7.0) -> int | None:
        try:
            with self._lock:
                (n,) = self._db.execute(
                    "SELECT COUNT(*) FROM promos"
                    " WHERE customer_id = ? AND at_us > ? AND at_us <= ?",
                    (customer_id, self._us(now - timedelta(days=days)), self._us(now)),
                ).fetchone()
            return int(n)
        except sqlite3.Error as error:
            logger.warning("promo history unreadable (%s): promos blocked", error)
            return None

    def add(self, customer_id: str, at: datetime) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO promos (customer_id, at_us) VALUES (?, ?)", (customer_id, self._us(at))
            )
            self._db.commit()
            self._adds += 1
            if self._adds % 10_000 == 0:
                cutoff = self._us(at - timedelta(days=self.keep_days))
                self._db.execute("DELETE FROM promos WHERE at_us < ?", (cutoff,))
                self._db.commit()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()
