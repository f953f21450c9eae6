"""Apology-budget counters shared by service workers: one SQLite file per host, or Redis.

``serving.policy.DailyBudget`` paces the day's apology credits; it keeps its count in a
``BudgetCounter``. In process, every worker would pace its own ``NBA_APOLOGY_BUDGET_PER_DAY``
and ``nba serve``'s two workers could grant twice the day's budget. These counters hold one
count per UTC day where every worker sees it, and grant a credit with one atomic statement
that checks the limit and counts in the same step, so concurrent workers never overspend:

* ``SqliteBudgetCounter``: a table in the promo history's file (``NBA_PROMO_HISTORY_PATH``),
  shared by the workers of one host (``NBA_PROMO_STORE=sqlite``, the embedded default);
* ``RedisBudgetCounter``: one key per UTC day, shared by every host (``NBA_PROMO_STORE=redis``,
  the production profile); it expires two days after the day's last credit.

Both raise on a store error; ``DailyBudget`` turns that into "no credit" (fail closed).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final

from serving.deadline import Breaker

#: Days of SQLite rows kept (older days are deleted when a new day starts).
KEEP_DAYS: Final = 7
#: Lifetime of a day's Redis key after its last credit: the day itself plus a margin for
#: clocks a little apart across hosts.
REDIS_TTL_SECONDS: Final = 2 * 86_400

# Grant one credit if the day's count is below the limit, in one atomic step (Redis runs a
# script without interleaving other commands): no other worker can take the same last credit,
# and a refused request changes nothing (an INCR-then-DECR would briefly show an inflated count
# to readers and deny credits that were due).
_TAKE_SCRIPT: Final = """
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
if spent >= tonumber(ARGV[1]) then
    return 0
end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


class SqliteBudgetCounter:
    """The day's count in a SQLite file shared by the workers of one host (WAL mode).

    One row per UTC day (``day`` as ``YYYY-MM-DD``). A credit is one upsert that inserts the
    day at 1 or adds one only while the count is below the limit; SQLite runs each statement
    under the database's write lock, so the check and the increment cannot interleave with
    another worker's. The connection is in autocommit mode: every statement is its own
    transaction and nothing is left open between requests.
    """

    def __init__(self, path: Path, timeout: float = 2.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._pruned: date | None = None
        # One connection per process used under a lock (sqlite3 connections are not safe to
        # share between threads without one); ``timeout`` waits for another worker's write.
        self._db = sqlite3.connect(
            path, check_same_thread=False, timeout=timeout, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: durable across a process crash; an OS crash can lose the last credits'
        # count, i.e. allow that many extra credits that day.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS apology_budget"
            " (day TEXT PRIMARY KEY, spent INTEGER NOT NULL) WITHOUT ROWID"
        )

    def spent(self, day: date) -> int:
        """Credits granted on ``day``."""
        with self._lock:
            row = self._db.execute(
                "SELECT spent FROM apology_budget WHERE day = ?", (day.isoformat(),)
            ).fetchone()
        return 0 if row is None else int(row[0])

    def take(self, day: date, limit: int) -> bool:
        """Grant one credit on ``day`` if fewer than ``limit`` were granted that day."""
        key = day.isoformat()
        with self._lock:
            # The SELECT's WHERE both refuses a first credit when the limit is 0 and lets
            # SQLite parse ON CONFLICT after a SELECT; changes() is 0 when the count is at the
            # limit (the DO UPDATE's WHERE is false) and 1 when a credit was counted.
            cursor = self._db.execute(
                "INSERT INTO apology_budget (day, spent) SELECT ?, 1 WHERE ? > 0"
                " ON CONFLICT (day) DO UPDATE SET spent = spent + 1 WHERE spent < ?",
                (key, limit, limit),
            )
            granted = cursor.rowcount == 1
            if self._pruned != day:
                self._pruned = day
                cutoff = (day - timedelta(days=KEEP_DAYS)).isoformat()
                self._db.execute("DELETE FROM apology_budget WHERE day < ?", (cutoff,))
        return granted

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()


class RedisBudgetCounter:
    """The day's count in Redis, shared by every worker of every host.

    Key ``<prefix><YYYY-MM-DD>`` (the prefix names the environment, as the promo keys do); a
    read is one ``GET``, a credit one script call (``_TAKE_SCRIPT``: check, ``INCR``,
    ``EXPIRE``, atomically). With a ``breaker`` (``serving.deadline``), calls fail at once for
    a while after one missed its deadline (``DailyBudget`` then grants no credit).
    """

    def __init__(
        self, client: Any, prefix: str = "nba:apology:", breaker: Breaker | None = None
    ) -> None:
        self._redis = client
        self.prefix = prefix
        self._take = client.register_script(_TAKE_SCRIPT)
        self._breaker = breaker

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args) if self._breaker is None else self._breaker.call(fn, *args)

    @property
    def client(self) -> Any:
        """The ``redis.Redis`` client (its connection pool)."""
        return self._redis

    def key(self, day: date) -> str:
        """The Redis key of ``day``'s count."""
        return self.prefix + day.isoformat()

    def spent(self, day: date) -> int:
        """Credits granted on ``day``."""
        value = self._call(self._redis.get, self.key(day))
        return 0 if value is None else int(value)

    def take(self, day: date, limit: int) -> bool:
        """Grant one credit on ``day`` if fewer than ``limit`` were granted that day."""
        return bool(self._call(self._take, [self.key(day)], [limit, REDIS_TTL_SECONDS]))

    def take_command(self, day: date, limit: int, cached: bool = True) -> tuple[str | int, ...]:
        """``take`` as one command for a caller's own connection: ``EVALSHA`` of the script,
        or ``EVAL`` with its text when ``cached`` is False (after a ``NOSCRIPT`` reply: Redis
        restarted or flushed its scripts). Reply: 1 if the credit was granted, else 0."""
        if cached:
            return ("EVALSHA", self._take.sha, 1, self.key(day), limit, REDIS_TTL_SECONDS)
        return ("EVAL", _TAKE_SCRIPT, 1, self.key(day), limit, REDIS_TTL_SECONDS)

    def close(self) -> None:
        """Release the connection pool."""
        self._redis.close()
