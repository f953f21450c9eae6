"""The customer memory's database: tables and connections, behind SQLAlchemy Core.

Embedded profile: one SQLite file in the workspace (``data/memory.db``), in WAL mode so the
service's readers never wait for a writer. Production: PostgreSQL, because the memory must
survive what the online store does not: this machine's Redis keeps nothing on disk (stack
facts), and even a persistent Redis acknowledges a write before its AOF reaches the disk
unless every write is fsynced. A committed PostgreSQL transaction is on disk when ``COMMIT``
returns, and PostgreSQL already runs for the Feast registry and MLflow.

Every statement has a deadline: SQLite waits at most ``timeout`` seconds for a lock, a
PostgreSQL connection at most ``timeout`` to connect and each statement at most ``timeout`` to
run (``statement_timeout``); past it the caller gets an exception and answers 503, never hangs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pandas as pd
import sqlalchemy as sa

#: Timestamps are stored as integer microseconds since the Unix epoch (UTC): exact, ordered and
#: the same on both databases.
_BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

METADATA: Final = sa.MetaData()

#: Every accepted event, in arrival order (``seq``); ``event_id`` makes a retry a no-op.
LEDGER: Final = sa.Table(
    "ledger",
    METADATA,
    sa.Column("seq", _BIG, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(128), nullable=False, unique=True),
    sa.Column("customer_id", sa.String(128), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.Column("received_at", sa.BigInteger, nullable=False),
    sa.Column("payload", sa.Text, nullable=True),
    sa.Column("applied", sa.Boolean, nullable=False),
    sa.Column("note", sa.Text, nullable=True),
    sa.Index("ledger_customer_ts", "customer_id", "ts"),
)

#: Service cases by id: loaded from the raw export by ``nba features``, then opened and closed
#: by events. ``opened_at`` is null for a closing seen before its opening (kept, so that the
#: opening arriving later is folded as already closed: event-time order, not arrival order).
CASES: Final = sa.Table(
    "cases",
    METADATA,
    sa.Column("case_id", sa.String(128), primary_key=True),
    sa.Column("customer_id", sa.String(128), nullable=False, index=True),
    sa.Column("opened_at", sa.BigInteger, nullable=True),
    sa.Column("closed_at", sa.BigInteger, nullable=True),
    sa.Column("topic", sa.String(32), nullable=True),
    sa.Column("sentiment", sa.Float, nullable=True),
    sa.Column("compensated", sa.Boolean, nullable=False, default=False),
)

#: A customer's folded state (``memory.fold``) once an event touched it since the last rebuild;
#: ``seq`` is the last ledger entry folded in.
STATE: Final = sa.Table(
    "state",
    METADATA,
    sa.Column("customer_id", sa.String(128), primary_key=True),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("seq", _BIG, nullable=False),
)

#: Passengers by flight (flight number and UTC date of departure), for ``/events/flight``.
MANIFEST: Final = sa.Table(
    "manifest",
    METADATA,
    sa.Column("flight_number", sa.String(16), primary_key=True),
    sa.Column("flight_date", sa.String(10), primary_key=True),
    sa.Column("customer_id", sa.String(128), primary_key=True),
    sa.Column("scheduled_at", sa.BigInteger, nullable=False),
)

#: One-shot claims: an apology credit for one negative experience (``key``) is given once,
#: whatever worker, host or channel decides it.
CLAIMS: Final = sa.Table(
    "claims",
    METADATA,
    sa.Column("customer_id", sa.String(128), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("decision_id", sa.String(128), nullable=False),
    sa.Column("at", sa.BigInteger, nullable=False),
)

#: Bookkeeping: the ledger position the last rebuild folded (``rebuilt_seq``).
META: Final = sa.Table(
    "meta",
    METADATA,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


def micros(moment: datetime | Any) -> int:
    """Integer microseconds since the epoch of a timezone-aware time (pandas or datetime).

    Exact (no float), and a plain ``datetime`` skips pandas: the contact history calls this on
    every decision (≈ 0.4 µs here against ≈ 1.6 µs through ``pd.Timestamp``).
    """
    if not isinstance(moment, datetime):
        moment = pd.Timestamp(moment)
    if moment.tzinfo is None:
        raise ValueError(f"time {moment!r} must be timezone-aware")
    return int((moment - _EPOCH) // _MICROSECOND)


def from_micros(value: int | None) -> datetime | None:
    """The UTC time of ``micros``'s integer (None stays None)."""
    if value is None:
        return None
    return datetime.fromtimestamp(value / 1_000_000, tz=UTC)


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file."""
    return f"sqlite:///{path}"


def _ensure_postgres_database(url: sa.URL, timeout: float) -> None:
    """Create the URL's database when it does not exist (a fresh server, first start)."""
    admin = sa.create_engine(
        url.set(database="postgres"),
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": max(1, int(timeout))},
    )
    try:
        with admin.connect() as connection:
            exists = connection.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": url.database}
            ).first()
            if exists is None:
                with contextlib.suppress(sa.exc.ProgrammingError):  # created meanwhile
                    connection.execute(sa.text(f'CREATE DATABASE "{url.database}"'))
    finally:
        admin.dispose()


class Database:
    """The memory's engine: SQLite or PostgreSQL by URL, tables created on first use.

    Args:
        url: a SQLAlchemy URL, ``sqlite:///path`` or ``postgresql+psycopg2://...``.
        timeout: the deadline, in seconds, of a lock wait, a connection and a statement.
    """

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        self.url = sa.make_url(url)
        self.timeout = timeout
        self.dialect = self.url.get_backend_name()
        if self.dialect == "sqlite":
            path = self.url.database or ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine = sa.create_engine(
                self.url,
                connect_args={"timeout": timeout, "check_same_thread": False},
                # One connection per thread; SQLite serializes writers with its own lock.
                poolclass=sa.pool.QueuePool if path and path != ":memory:" else sa.pool.StaticPool,
            )
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            # pysqlite's own transaction handling would defer BEGIN; a writer must take the
            # write lock at BEGIN (IMMEDIATE) so that its read-then-write cannot interleave.
            sa.event.listen(self.engine, "begin", _sqlite_begin)
        elif self.dialect == "postgresql":
            _ensure_postgres_database(self.url, timeout)
            millis = int(timeout * 1000)
            self.engine = sa.create_engine(
                self.url,
                pool_pre_ping=True,
                pool_timeout=timeout,
                connect_args={
                    "connect_timeout": max(1, int(timeout)),
                    "options": f"-c statement_timeout={millis} -c lock_timeout={millis}",
                },
            )
        else:
            raise ValueError(f"memory URL {url!r}: expected sqlite:/// or postgresql://")
        self._created = False
        self._lock = threading.Lock()

    def create(self) -> None:
        """Create the tables (idempotent)."""
        with self._lock:
            if not self._created:
                METADATA.create_all(self.engine)
                self._created = True

    @contextlib.contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        """A write transaction: committed on exit, rolled back on an exception."""
        self.create()
        with self.engine.begin() as connection:
            yield connection

    @contextlib.contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """A read-only connection (its snapshot is the last committed state)."""
        self.create()
        with self.engine.connect() as connection:
            yield connection.execution_options(nba_read=True)

    def insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT (with ``on_conflict_do_nothing`` / ``on_conflict_do_update``)."""
        from sqlalchemy.dialects import postgresql, sqlite

        if self.dialect == "sqlite":
            return sqlite.insert(table)
        return postgresql.insert(table)

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    connection.isolation_level = None  # we issue BEGIN ourselves (see _sqlite_begin)
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # synchronous=FULL in WAL mode: a commit is on disk when it returns (NORMAL may lose the
    # last commits on a power loss, and an acknowledged event must survive that).
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _sqlite_begin(connection: sa.Connection) -> None:
    # Readers take no lock at all in WAL mode: a deferred BEGIN.
    read = connection.get_execution_options().get("nba_read", False)
    connection.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")
