"""The one thin adapter over Feast: apply, offline table, materialize, retrieval, push.

Feast is imported lazily inside methods (``import feast`` costs ≈ 7 s), so importing this module
is cheap. The objects themselves are declared in ``feature_repo/definitions.py``; the names come
from ``features.schema``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import string
import struct
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features import schema
from features.columns import FeatureColumns, decode_packed, empty_column
from features.deadlines import with_deadlines

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore, FeatureView
    from feast.repo_config import RepoConfig

#: The offline feature table, relative to the Feast repo folder (Feast resolves the FileSource
#: path against the repo folder too). ``feature_repo/definitions.py`` imports it from here.
FEATURE_TABLE_PATH = "data/customer_features.parquet"

#: Used for ``${NBA_REDIS_URL}`` in ``feature_store.redis.yaml`` when neither the caller nor the
#: environment sets it (matches ``nba.settings.Settings.redis_url``).
DEFAULT_REDIS_URL = "127.0.0.1:6379"

#: Columns of the offline table, in the order written.
TABLE_COLUMNS: tuple[str, ...] = (schema.ENTITY, schema.EVENT_TIMESTAMP, *schema.STORED)
#: Columns of a push.
PUSH_COLUMNS: tuple[str, ...] = (schema.ENTITY, schema.EVENT_TIMESTAMP, *schema.REALTIME)

_TIMESTAMP_FEATURES = frozenset(n for n, kind in schema.STORED.items() if kind == "timestamp")
#: From this many distinct customers, ``_SqliteRows.read_columns`` reads two halves in parallel.
_PARALLEL_READ_KEYS = 2000
#: Values this long or longer do not fit ``_SqliteRows.read_columns``'s two-digit base-64 header.
_PACKED_MAX_LENGTH = 63 * 64 + 63
#: Start of a full materialization: everything in the table up to ``end``.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Temporary join column of ``FeastAdapter.historical``.
_JOIN_TIME = "__nba_join_time"
#: Deadline of a SQLite online-store call waiting for a lock (sqlite3's busy timeout). In WAL
#: mode a reader never waits for the writer; this bounds the rare waits left (a journal-mode
#: switch, recovery after a crash) instead of sqlite3's silent 5 s default.
SQLITE_BUSY_TIMEOUT_S = 2.0


def use_wal(path: str | Path, timeout: float = SQLITE_BUSY_TIMEOUT_S) -> None:
    """Put the SQLite database at ``path`` in WAL journal mode (kept in the file from then on).

    In SQLite's default rollback-journal mode a writer locks readers out while it commits
    (and whenever its page cache spills): ``nba features`` materializing stalled the service's
    reads for 3-5.5 s and failed some with "database is locked". In WAL mode readers read the
    last committed snapshot while the writer appends to the ``-wal`` file: they never wait for
    it (``benchmarks/materialize_load.py`` measures both). The mode is a property of the file,
    so every connection (Feast's own and ``_SqliteRows``'s) gets it. WAL needs every process
    on one host (shared memory): true of the embedded profile.
    """
    import sqlite3

    with contextlib.closing(sqlite3.connect(path, timeout=timeout)) as db:
        mode = str(db.execute("PRAGMA journal_mode=WAL").fetchone()[0])
    if mode.lower() != "wal":
        raise RuntimeError(f"SQLite online store {path}: journal mode is {mode}, not wal")


def _check_columns(frame: pd.DataFrame, expected: tuple[str, ...], what: str) -> None:
    """Raise ``ValueError`` unless ``frame`` has exactly the ``expected`` columns (any order)."""
    missing = [c for c in expected if c not in frame.columns]
    extra = [c for c in frame.columns if c not in expected]
    if missing or extra:
        raise ValueError(f"{what}: missing columns {missing}, unexpected columns {extra}")


def _utc(moment: datetime) -> datetime:
    """``moment`` as tz-aware UTC; a naive datetime is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _utc_series(values: pd.Series) -> pd.Series:
    """Timestamps as ``datetime64[ns, UTC]`` (naive values are taken to be UTC)."""
    return pd.to_datetime(values, utc=True).dt.as_unit("ns")


def _to_utc_timestamp(value: object) -> pd.Timestamp | None:
    """A stored timestamp as read back from Feast, as a tz-aware UTC Timestamp or None."""
    if value is None:
        return None
    stamp = pd.Timestamp(value)
    if stamp is pd.NaT:
        return None
    return stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)


@contextlib.contextmanager
def _importable_repo(repo: Path) -> Iterator[None]:
    """Let Feast's ``parse_repo`` import the repo's modules, then undo every trace of it.

    ``parse_repo`` names modules by their path relative to the working directory and imports them
    with ``importlib``: the working directory must be the repo and the repo must be on
    ``sys.path``. Both are restored afterwards, and the imported declaration modules are dropped
    from ``sys.modules`` so that applying another copy of the repo re-imports its own files.
    Not thread-safe (the working directory is process-wide): apply is an administrative step.
    """
    before_modules = set(sys.modules)
    before_cwd = Path.cwd()
    before_bytecode = sys.dont_write_bytecode
    sys.path.insert(0, str(repo))
    os.chdir(repo)
    # Like the CLI: no __pycache__ inside the repo folder.
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = before_bytecode
        os.chdir(before_cwd)
        with contextlib.suppress(ValueError):
            sys.path.remove(str(repo))
        for name in set(sys.modules) - before_modules:
            module_file = getattr(sys.modules[name], "__file__", None)
            if module_file and Path(module_file).resolve().is_relative_to(repo):
                del sys.modules[name]
        importlib.invalidate_caches()


class FeastAdapter:
    """Feast operations on one feature repo folder and one of its ``feature_store*.yaml`` files.

    The ``FeatureStore`` is built on first use and kept (building one costs ≈ 1.5 s).
    """

    def __init__(
        self,
        repo: Path,
        yaml_file: Path,
        redis_url: str | None = None,
        registry_url: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """``repo``: the Feast repo folder; ``yaml_file``: its config (relative: to ``repo``).

        ``redis_url`` fills ``${NBA_REDIS_URL}`` in the yaml; otherwise the environment variable,
        otherwise ``DEFAULT_REDIS_URL``. ``registry_url`` likewise fills ``${NBA_REGISTRY_URL}``
        (the SQL registry of ``feature_store.production.yaml``). The process environment is not
        modified. ``timeout``: the service's deadline on every store call, in seconds (see
        ``with_timeout``); None leaves the clients' defaults (the CLI's long materializations).
        """
        self.repo = Path(repo).resolve()
        yaml_path = Path(yaml_file)
        self.yaml_file = yaml_path if yaml_path.is_absolute() else self.repo / yaml_path
        self._redis_url = redis_url
        self._registry_url = registry_url
        self.timeout = timeout
        self._store: FeatureStore | None = None

    def with_timeout(self, seconds: float) -> FeastAdapter:
        """A new adapter on the same repo whose store calls have a deadline of ``seconds``.

        For the service (``serving.runtime``): Feast's Redis client gets its own socket and
        connect timeouts (``socket_timeout``, ``socket_connect_timeout`` in the connection
        string, unless the string sets them), the direct SQLite reader a busy timeout of
        ``seconds``, and a PostgreSQL registry a connect timeout (libpq's minimum is 2 s) and
        ``cache_mode: thread``: Feast then refreshes the cached registry in its own background
        thread, never inside a request (in ``sync`` mode an ``/events`` push refreshes it
        inline every ``cache_ttl_seconds``, and would wait on a hung PostgreSQL).
        """
        return FeastAdapter(self.repo, self.yaml_file, self._redis_url, self._registry_url,
                            timeout=seconds)  # fmt: skip

    @property
    def table_path(self) -> Path:
        """The offline feature table (the FileSource of both views)."""
        return self.repo / FEATURE_TABLE_PATH

    def config(self) -> RepoConfig:
        """The repo config, with environment variables expanded as ``feast`` does.

        Feast's own loader uses ``os.path.expandvars``; this one also supplies a default for
        ``NBA_REDIS_URL`` so that the Redis profile works with nothing exported.
        """
        import yaml
        from feast.repo_config import RepoConfig

        variables = {"NBA_REDIS_URL": DEFAULT_REDIS_URL, **os.environ}
        if self._redis_url is not None:
            variables["NBA_REDIS_URL"] = self._redis_url
        if self._registry_url is not None:
            variables["NBA_REGISTRY_URL"] = self._registry_url
        text = string.Template(self.yaml_file.read_text()).safe_substitute(variables)
        raw = yaml.safe_load(text)
        if self.timeout is not None:
            raw = with_deadlines(raw, self.timeout)
        config = RepoConfig(**raw)
        # Relative paths (registry, SQLite file, FileSource) resolve against repo_path.
        config.repo_path = self.repo
        return config

    @property
    def store(self) -> FeatureStore:
        """The ``feast.FeatureStore`` (built once)."""
        if self._store is None:
            from feast import FeatureStore

            self._store = FeatureStore(repo_path=str(self.repo), config=self.config())
        return self._store

    def apply(self) -> None:
        """Register the declarations of the repo folder: the programmatic ``feast apply``.

        Creates or updates the registry and the online store tables, and deletes registered
        objects that are no longer declared (as the CLI does).
        """
        from feast.project import Project
        from feast.repo_operations import apply_total_with_repo_instance, parse_repo

        store = self.store
        with _importable_repo(self.repo):
            contents = parse_repo(self.repo)
        # The project is named in the yaml, not declared: tests apply copies under other names.
        if not contents.projects:
            contents.projects.append(Project(name=store.project))
        apply_total_with_repo_instance(
            store,
            store.project,
            store.registry,
            contents,
            skip_source_validation=False,
        )
        self._online_wal()

    def _online_wal(self) -> None:
        """WAL mode for a SQLite online store (``use_wal``); other stores are left alone."""
        config = self.store.config
        if not str(config.online_store.type).lower().endswith(("sqlite", "sqliteonlinestore")):
            return
        from feast.infra.online_stores.sqlite import SqliteOnlineStore

        path = Path(SqliteOnlineStore._get_db_path(config))
        path.parent.mkdir(parents=True, exist_ok=True)
        use_wal(path)

    def write_offline(self, table: pd.DataFrame) -> Path:
        """Replace the offline feature table with ``table`` atomically; return its path.

        ``table`` must have exactly the columns ``customer_id``, ``event_timestamp`` and every
        ``schema.STORED`` feature. The file is written next to the target and renamed over it,
        so a concurrent reader (materialize, historical retrieval) never sees half a file.
        """
        _check_columns(table, TABLE_COLUMNS, "feature table")
        target = self.table_path
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            table.loc[:, list(TABLE_COLUMNS)].to_parquet(temp, index=False)
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        return target

    def materialize(self, end: datetime, start: datetime | None = None) -> None:
        """Load the latest row per customer with ``start <= event_timestamp <= end`` online.

        ``start`` defaults to the epoch (the whole table). Naive datetimes are taken as UTC.
        On SQLite this overwrites pushed values even when they are newer than the table rows,
        and never blocks readers: the store is in WAL mode (``use_wal``; set here too for a
        store applied before WAL was introduced).
        """
        self._online_wal()
        self.store.materialize(
            start_date=_utc(start) if start is not None else _EPOCH, end_date=_utc(end)
        )

    def historical(self, entity_df: pd.DataFrame) -> pd.DataFrame:
        """Point-in-time join of every stored feature onto ``entity_df``.

        ``entity_df`` has ``customer_id`` and ``event_timestamp`` (naive means UTC) and may carry
        other columns (labels, ...). Each row gets the latest table row of its customer at or
        before its ``event_timestamp`` (within the views' TTL), never a later one; a row without
        one gets missing values. Returns ``entity_df``'s rows in its order, its columns followed
        by the ``schema.STORED`` features.
        """
        missing = [c for c in (schema.ENTITY, schema.EVENT_TIMESTAMP) if c not in entity_df]
        clashing = [c for c in schema.STORED if c in entity_df]
        if missing or clashing:
            raise ValueError(
                f"entity_df: missing columns {missing}, columns named like features {clashing}"
            )
        if entity_df.empty:
            return entity_df.assign(**{name: pd.Series(dtype=object) for name in schema.STORED})
        when = _utc_series(entity_df[schema.EVENT_TIMESTAMP])
        keys = pd.DataFrame(
            {schema.ENTITY: entity_df[schema.ENTITY].to_numpy(), _JOIN_TIME: when.to_numpy()}
        ).drop_duplicates(ignore_index=True)
        service = self.store.get_feature_service(schema.FEATURE_SERVICE)
        joined = self.store.get_historical_features(
            entity_df=keys.rename(columns={_JOIN_TIME: schema.EVENT_TIMESTAMP}), features=service
        ).to_df()
        joined[_JOIN_TIME] = _utc_series(joined.pop(schema.EVENT_TIMESTAMP))
        # Feast's file offline store returns rows in its own order, collapses duplicate
        # (customer, time) pairs and silently DROPS an entity row whose customer only has rows
        # later than its time: join its answer back onto the caller's rows instead.
        joined = joined.drop_duplicates([schema.ENTITY, _JOIN_TIME])
        out = entity_df.assign(**{_JOIN_TIME: when.to_numpy()}).merge(
            joined.loc[:, [schema.ENTITY, _JOIN_TIME, *schema.STORED]],
            on=[schema.ENTITY, _JOIN_TIME],
            how="left",
            validate="many_to_one",
        )
        out.index = entity_df.index
        return out.loc[:, [*entity_df.columns, *schema.STORED]]

    def online_reader(self) -> OnlineReader:
        """A reader through the SDK's ``get_online_features`` (see ``OnlineReader``)."""
        return OnlineReader(self.store)

    def direct_reader(self) -> DirectOnlineReader:
        """The request path's reader: the online store's own ``online_read`` per view, without
        the SDK's response building (see ``DirectOnlineReader``)."""
        return DirectOnlineReader(self.store, timeout=self.timeout)

    def push(self, rows: pd.DataFrame) -> None:
        """Write real-time rows straight to the online store through the PushSource.

        ``rows`` has ``customer_id``, ``event_timestamp`` and every ``schema.REALTIME`` column.
        The next online read sees them. On SQLite a row older than the stored one still
        overwrites it (Redis keeps the newer one): push in event order.
        """
        from feast.data_source import PushMode

        _check_columns(rows, PUSH_COLUMNS, "push rows")
        self.store.push(schema.PUSH_SOURCE, rows.loc[:, list(PUSH_COLUMNS)], to=PushMode.ONLINE)


class OnlineReader:
    """Reads the stored features of customers from the online store.

    The FeatureService is looked up once here: looking it up per request costs ≈ 4 ms.
    """

    def __init__(self, store: FeatureStore, service: str = schema.FEATURE_SERVICE) -> None:
        """Bind to ``store`` and fetch the FeatureService ``service`` once."""
        self._store = store
        self._service: FeatureService = store.get_feature_service(service)

    def read(self, customer_id: str) -> dict[str, object]:
        """{feature name -> value} of every ``schema.STORED`` feature of one customer.

        Unknown customers get ``None`` values. Timestamps are tz-aware UTC ``pd.Timestamp``
        (or ``None``). This is the request path: ≈ 0.5 ms on SQLite (see
        ``benchmarks/online_read.py``), mostly inside Feast.
        """
        columns = self._store.get_online_features(
            features=self._service, entity_rows=[{schema.ENTITY: customer_id}]
        ).to_dict()
        # Feast's key order is arbitrary: index by feature name.
        out: dict[str, object] = {}
        for name in schema.STORED:
            value = columns[name][0]
            out[name] = _to_utc_timestamp(value) if name in _TIMESTAMP_FEATURES else value
        return out

    def read_many(self, customer_ids: Iterable[str]) -> list[dict[str, object]]:
        """``read`` for several customers in one online-store call, in the order given."""
        rows = [{schema.ENTITY: customer_id} for customer_id in customer_ids]
        if not rows:
            return []
        columns = self._store.get_online_features(
            features=self._service, entity_rows=rows
        ).to_dict()
        out: list[dict[str, object]] = [{} for _ in rows]
        for name in schema.STORED:
            values = columns[name]
            if name in _TIMESTAMP_FEATURES:
                values = [_to_utc_timestamp(v) for v in values]
            for record, value in zip(out, values, strict=True):
                record[name] = value
        return out


class DirectOnlineReader:
    """Reads stored features through the online store's ``online_read`` for each view.

    ``FeatureStore.get_online_features`` spends most of its ≈ 0.5 ms building entity frames and
    a response proto and converting it (``to_dict``); the data itself comes from one
    ``online_read(config, view, entity_keys)`` call per view, which is the online store's
    public interface (SQLite and Redis alike). This reader makes those calls itself, converts
    the values with Feast's own ``feast_value_type_to_python_type`` and applies the views' TTL
    as the SDK does, so it returns what ``OnlineReader`` returns (an integration test compares
    them) at a fraction of the cost. It also returns the realtime view's event timestamp, which
    ``/events`` needs to push a state that never goes back in time.
    """

    def __init__(self, store: FeatureStore, timeout: float | None = None) -> None:
        """Resolve the two views and the online store once; ``timeout``: the SQLite reads'
        busy timeout in seconds (None: sqlite3's 5 s; Redis's deadline is its client's)."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import feast_value_type_to_python_type

        self._config = store.config
        self._online = store._get_provider().online_store
        self._views = [
            (store.get_feature_view(schema.PROFILE_VIEW), tuple(schema.PROFILE)),
            (store.get_feature_view(schema.REALTIME_VIEW), tuple(schema.REALTIME)),
        ]
        self._entity_key = EntityKey
        self._value = Value
        self._to_python = feast_value_type_to_python_type
        is_sqlite = (
            str(self._config.online_store.type).lower().endswith(("sqlite", "sqliteonlinestore"))
        )
        is_redis = (
            str(self._config.online_store.type).lower().endswith(("redis", "redisonlinestore"))
        )
        self._sqlite: _SqliteRows | _RedisRows | None = None
        if is_sqlite:
            self._sqlite = _SqliteRows(store, self._views, timeout)
        elif is_redis:
            self._sqlite = _RedisRows(store, self._views)

    def _key(self, customer_id: str) -> Any:
        return self._entity_key(
            join_keys=[schema.ENTITY], entity_values=[self._value(string_val=customer_id)]
        )

    def read_with_timestamps(
        self, customer_ids: list[str], now: datetime | None = None
    ) -> list[tuple[dict[str, object], datetime | None]]:
        """Per customer: {feature -> value} of every ``schema.STORED`` feature (None where the
        store has nothing) and the realtime view's event timestamp (None when absent)."""
        now = now or datetime.now(UTC)
        keys = [self._key(c) for c in customer_ids]
        out: list[tuple[dict[str, object], datetime | None]] = [({}, None) for _ in customer_ids]
        for view_index, (view, names) in enumerate(self._views):
            rows = self._online.online_read(self._config, view, keys, list(names))
            # The SDK drops values older than the view's TTL (measured from now); so do we.
            oldest = now - view.ttl if view.ttl and view.ttl.total_seconds() > 0 else None
            for (record, _), (ts, values) in zip(out, rows, strict=True):
                fresh = values is not None and (oldest is None or ts is None or ts >= oldest)
                for name in names:
                    value = None
                    if fresh and name in values:  # type: ignore[operator]
                        value = self._to_python(values[name])  # type: ignore[index]
                    if name in _TIMESTAMP_FEATURES:
                        value = _to_utc_timestamp(value)
                    record[name] = value
            if view_index == 1:
                out = [(record, ts if values is not None else None)
                       for (record, _), (ts, values) in zip(out, rows, strict=True)]  # fmt: skip
        return out

    def read(self, customer_id: str) -> dict[str, object]:
        """``OnlineReader.read``'s result for one customer."""
        if self._sqlite is not None:
            return self._sqlite.read_many([customer_id])[0]
        return self.read_with_timestamps([customer_id])[0][0]

    def read_many(self, customer_ids: Iterable[str]) -> list[dict[str, object]]:
        """``OnlineReader.read_many``'s result, in the order given."""
        ids = list(customer_ids)
        if not ids:
            return []
        if self._sqlite is not None:
            return self._sqlite.read_many(ids)
        return [record for record, _ in self.read_with_timestamps(ids)]

    @property
    def store_rows(self) -> object:
        """The store-specific reader (``_SqliteRows`` or ``_RedisRows``), None for others."""
        return self._sqlite

    def read_columns(self, customer_ids: Sequence[str]) -> FeatureColumns:
        """``read_many``'s values as columns (``features.columns``): the batch path's read."""
        if isinstance(self._sqlite, _SqliteRows):
            try:
                return self._sqlite.read_columns(customer_ids)
            except ValueError:  # a value the packed read cannot carry: read row by row
                pass
        return FeatureColumns.from_records(self.read_many(customer_ids))


def _epoch(stamp: object) -> float:
    """An online-store ``event_ts`` (epoch seconds, or a datetime text in older stores)."""
    if isinstance(stamp, int | float):
        return float(stamp)
    return _utc(datetime.fromisoformat(str(stamp))).timestamp()


#: Converted stored values by their serialized ``Value`` bytes (``_SqliteRows._convert``); the
#: values are immutable (numbers, strings, timestamps), so every reader of the process shares
#: them. Bounded: at ``_CONVERTED_MAX`` entries (a few MB) it starts again from empty.
_CONVERTED: dict[bytes, object] = {}
_CONVERTED_MAX = 50_000


def _key_prefix(slow_key: Callable[[str], bytes], suffix: bytes = b"") -> bytes | None:
    """The bytes Feast's ``slow_key`` puts before a customer id's length and UTF-8 bytes.

    A single string entity serializes (version 3) as a fixed header naming the join key, then
    the value's length (4 bytes, little-endian) and bytes, then ``suffix`` (Redis keys end with
    the project's name). Building a key from the header takes 0.3 µs instead of 9 µs through
    protobuf, which matters for 10,000 keys and on every request. Checked against Feast here on
    two probes; any other layout (a future version) returns None and keeps the slow path.
    """
    probes = ("C1", "ÿ-customer-0042")
    first = slow_key(probes[0])
    tail = struct.pack("<I", len(probes[0].encode())) + probes[0].encode() + suffix
    if not first.endswith(tail):
        return None
    prefix = first[: -len(tail)]
    encoded = probes[1].encode()
    if slow_key(probes[1]) != prefix + struct.pack("<I", len(encoded)) + encoded + suffix:
        return None
    return prefix


class _SqliteRows:
    """The SQLite online store's rows read with one prepared query per view.

    Feast's SQLite ``online_read`` converts every row's ``event_ts`` to a ``datetime`` (one row
    per entity and feature) and goes through its generic value conversion; on the request
    path that was most of the read. This reads the same table (Feast's own table id and entity
    key serialization), parses each ``Value`` proto and converts the scalar kinds this schema
    uses the way ``feast_value_type_to_python_type`` does, anything else through that function.
    ``DirectOnlineReader`` uses it for SQLite only; a test compares it with the SDK's reads.
    """

    def __init__(
        self,
        store: FeatureStore,
        views: list[tuple[FeatureView, tuple[str, ...]]],
        timeout: float | None = None,
    ) -> None:
        import sqlite3
        import threading

        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.infra.online_stores.sqlite import SqliteOnlineStore, _table_id
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import NULL_TIMESTAMP_INT_VALUE, feast_value_type_to_python_type

        config = store.config
        path = SqliteOnlineStore._get_db_path(config)
        versioning = getattr(config.registry, "enable_online_feature_view_versioning", False)
        self._tables = [
            (_table_id(config.project, view, versioning), names, view.ttl) for view, names in views
        ]
        self._path = path
        # A busy timeout is the read's deadline (the service passes its store deadline; WAL mode
        # keeps materialization from holding readers, sqlite3's default would wait 5 s).
        self._timeout = SQLITE_BUSY_TIMEOUT_S if timeout is None else timeout
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=self._timeout)
        self._lock = threading.Lock()
        self._db2: Any = None
        self._lock2: Any = None
        self._pool: Any = None
        self._version = config.entity_key_serialization_version
        self._serialize = serialize_entity_key
        self._entity_key = EntityKey
        self._value = Value
        self._null_ts = NULL_TIMESTAMP_INT_VALUE
        self._generic = feast_value_type_to_python_type
        self._prefix = self._key_prefix()
        try:
            self._max_params = self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        except AttributeError:  # Python < 3.11: SQLite's historical default
            self._max_params = 999
        self._pivots = [self._pivot_sql(table, names) for table, names, _ in self._tables]

    def _slow_key(self, customer_id: str) -> bytes:
        key = self._entity_key(
            join_keys=[schema.ENTITY], entity_values=[self._value(string_val=customer_id)]
        )
        return self._serialize(key, entity_key_serialization_version=self._version)

    def _key_prefix(self) -> bytes | None:
        """The bytes Feast puts before a customer id's length and UTF-8 bytes (``_key_prefix``
        of the module), or None."""
        return _key_prefix(self._slow_key)

    def _key(self, customer_id: str) -> bytes:
        if self._prefix is None:
            return self._slow_key(customer_id)
        encoded = customer_id.encode()
        return self._prefix + struct.pack("<I", len(encoded)) + encoded

    @staticmethod
    def _pivot_sql(table: str, names: tuple[str, ...]) -> str:
        """The statement of ``read_columns`` for one view (``{marks}``: the keys).

        It returns one row per customer: a header of three bytes per stored value (the
        feature's position in ``names`` plus one, then the value's length in base 64, each
        digit plus one, so every byte is one ASCII character) and the values laid end to end
        in the same order (both aggregates see the rows in one order), and the longest value's
        length. So Python handles one tuple per customer instead of one per feature, and numpy
        decodes the rest. Only rows fresher than the ``?`` cut-off count; ``event_ts`` is an
        integer (epoch seconds) in the stores Feast writes now, and a text timestamp of an
        older store is converted in SQL. A feature the view has beyond ``names`` gets position
        127 and is skipped. (Listing the names in the WHERE clause instead doubled the time.)
        """
        position = " ".join(
            "WHEN '{}' THEN {}".format(name.replace("'", "''"), i + 1)
            for i, name in enumerate(names)
        )
        stamp = (
            "CASE WHEN typeof(event_ts) IN ('integer', 'real') THEN event_ts "
            "ELSE CAST(strftime('%s', event_ts) AS INTEGER) END"
        )
        header = (
            f"char(CASE feature_name {position} ELSE 127 END, "
            "(length(value) >> 6) + 1, (length(value) & 63) + 1)"
        )
        return (
            f"SELECT entity_key, CAST(group_concat({header}, '') AS BLOB), "
            "CAST(group_concat(value, '') AS BLOB), max(length(value)) "
            f'FROM "{table}" WHERE entity_key IN ({{marks}}) AND {stamp} >= ? GROUP BY entity_key'
        )

    def _packed_rows(
        self, connection: int, keys: list[bytes], cutoffs: list[int]
    ) -> list[list[tuple[bytes, bytes, bytes, int]]]:
        """``_pivot_sql``'s rows of every view for ``keys``, on connection 0 or 1."""
        if connection == 0:
            db, lock = self._db, self._lock
        else:
            db, lock = self._second()
        chunk_size = max(1, min(self._max_params - 1, 10_000))
        out: list[list[tuple[bytes, bytes, bytes, int]]] = []
        with lock:
            for sql, oldest in zip(self._pivots, cutoffs, strict=True):
                rows: list[tuple[bytes, bytes, bytes, int]] = []
                for start in range(0, len(keys), chunk_size):
                    chunk = keys[start : start + chunk_size]
                    statement = sql.format(marks=",".join("?" * len(chunk)))
                    rows += db.execute(statement, [*chunk, oldest])
                out.append(rows)
        return out

    def _second(self) -> tuple[Any, Any]:
        """A second connection (and its lock) for the other half of a large read."""
        if self._db2 is None:
            import sqlite3
            import threading

            self._db2 = sqlite3.connect(self._path, check_same_thread=False, timeout=self._timeout)
            self._lock2 = threading.Lock()
        return self._db2, self._lock2

    def _helper(self) -> Any:
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="online-read")
        return self._pool

    def read_columns(
        self, customer_ids: Sequence[str], now: datetime | None = None
    ) -> FeatureColumns:
        """Stored features of ``customer_ids`` (in that order, repeats allowed) as columns.

        The same values as ``read_many`` (a test compares them), read with one statement per
        view (``_pivot_sql``) and decoded a column at a time (``features.columns``).

        Raises:
            ValueError: when a value is too long for the packed header (8 KB and more) or the
                packed rows do not add up; ``DirectOnlineReader`` then reads row by row.
        """
        unique = list(dict.fromkeys(customer_ids))
        keys = [self._key(c) for c in unique]
        position = {key: i for i, key in enumerate(keys)}
        now = now or datetime.now(UTC)
        n = len(unique)
        values: dict[str, np.ndarray] = {}
        present: dict[str, np.ndarray] = {}
        cutoffs = [
            # Values older than the view's TTL read as missing, as in the SDK.
            int((now - ttl).timestamp()) if ttl and ttl.total_seconds() > 0 else -(2**62)
            for _, _, ttl in self._tables
        ]
        if n >= _PARALLEL_READ_KEYS:
            # SQLite releases the GIL while it steps: two connections read two halves at once.
            half = n // 2
            other = self._helper().submit(self._packed_rows, 1, keys[half:], cutoffs)
            mine = self._packed_rows(0, keys[:half], cutoffs)
            per_view = [a + b for a, b in zip(mine, other.result(), strict=True)]
        else:
            per_view = self._packed_rows(0, keys, cutoffs)
        for (_, names, _), rows in zip(self._tables, per_view, strict=True):
            if rows and max(row[3] or 0 for row in rows) >= _PACKED_MAX_LENGTH:
                raise ValueError(f"a value of {names} is too long for the packed read")
            header = np.frombuffer(b"".join([row[1] for row in rows]), dtype=np.uint8)
            header = header.reshape(-1, 3).astype(np.int64)
            payload = b"".join([row[2] for row in rows])
            feature = header[:, 0] - 1
            size = (header[:, 1] - 1) * 64 + header[:, 2] - 1
            counts = np.fromiter((len(row[1]) // 3 for row in rows), np.int64, count=len(rows))
            if int(size.sum()) != len(payload) or int(counts.sum()) != len(header):
                raise ValueError(f"the packed rows of {names} do not add up")
            owner = np.repeat(
                np.fromiter((position[row[0]] for row in rows), np.int64, count=len(rows)), counts
            )
            starts = np.cumsum(size) - size
            for j, name in enumerate(names):
                kind = schema.STORED[name]
                column, mask = empty_column(n, kind)
                chosen = np.flatnonzero(feature == j)
                got, found = decode_packed(payload, starts[chosen], size[chosen], kind,
                                           self._fallback)  # fmt: skip
                column[owner[chosen]] = got
                mask[owner[chosen]] = found
                values[name], present[name] = column, mask
        out = FeatureColumns(n, values, present)
        if n != len(customer_ids):
            index = {c: i for i, c in enumerate(unique)}
            out = out.take(np.fromiter((index[c] for c in customer_ids), dtype=np.int64))
        return out

    def _fallback(self, blob: bytes) -> object:
        return self._convert(blob)

    def _convert(self, blob: bytes) -> object:
        # Most stored values repeat across customers (counts, flags, dates, categories: 81 % of
        # 155,000 values of 5,000 customers here): their conversion is remembered by the
        # serialized bytes, and one request's 33 values cost ≈ 25 µs instead of ≈ 80.
        try:
            return _CONVERTED[blob]
        except KeyError:
            pass
        value = self._value.FromString(blob)
        kind = value.WhichOneof("val")
        if kind is None:
            out: object = None
        elif kind == "unix_timestamp_val":
            seconds = value.unix_timestamp_val
            out = None if seconds == self._null_ts else pd.Timestamp(seconds, unit="s", tz=UTC)
        elif kind in ("int64_val", "int32_val", "bool_val", "string_val"):
            out = getattr(value, kind)
        elif kind in ("double_val", "float_val"):
            return getattr(value, kind)  # amounts are mostly unique: not remembered
        else:
            return self._generic(value)
        if len(_CONVERTED) >= _CONVERTED_MAX:
            _CONVERTED.clear()  # bounded: frequent values come back at once
        _CONVERTED[blob] = out
        return out

    def read_many(
        self, customer_ids: list[str], now: datetime | None = None
    ) -> list[dict[str, object]]:
        """Stored features of ``customer_ids`` (None where absent), one query per 450 keys."""
        unique = list(dict.fromkeys(customer_ids))
        if len(unique) != len(customer_ids):  # a customer listed twice gets the same values
            once = dict(zip(unique, self.read_many(unique, now), strict=True))
            return [dict(once[c]) for c in customer_ids]
        keys = [self._key(c) for c in customer_ids]
        position = {key: i for i, key in enumerate(keys)}
        out: list[dict[str, object]] = [dict.fromkeys(schema.STORED) for _ in keys]
        now = now or datetime.now(UTC)
        # Per view (by its position in the query): wanted names and the TTL cut-off.
        limits = [
            (set(names), (now - ttl).timestamp() if ttl and ttl.total_seconds() > 0 else None)
            for _, names, ttl in self._tables
        ]
        with self._lock:
            # Both views in one statement (one round trip through sqlite3 per chunk); chunks
            # keep the bound parameters under SQLite's limit of 999.
            for start in range(0, len(keys), 450):
                chunk = keys[start : start + 450]
                marks = ",".join("?" * len(chunk))
                sql = " UNION ALL ".join(
                    f'SELECT {i}, entity_key, feature_name, value, event_ts FROM "{table}" '
                    f"WHERE entity_key IN ({marks})"
                    for i, (table, _, _) in enumerate(self._tables)
                )
                rows = self._db.execute(sql, chunk * len(self._tables)).fetchall()
                for view, key, name, blob, event_ts in rows:
                    wanted, oldest = limits[view]
                    # Values older than the view's TTL read as missing, as in the SDK.
                    if name in wanted and (oldest is None or _epoch(event_ts) >= oldest):
                        out[position[key]][name] = self._convert(blob)
        return out


class _RedisRows:
    """The Redis online store's hash of a customer read with one ``HMGET`` for both views.

    Feast keeps every view of an entity in one Redis hash (key: the serialized entity key and
    the project; fields: murmur3 hashes of ``view:feature`` and ``_ts:view``), and its
    ``online_read`` issues one pipeline per view. This asks for both views' fields in one
    command (one pipeline for many customers), with Feast's own key and field functions, and
    converts values like ``_SqliteRows``. A test compares it with the SDK on the real Redis.

    ``key``, ``fields``, ``client`` and ``record`` let a caller put the ``HMGET`` of one customer
    in a pipeline with other commands (``serving.redisreads``: a decision's features, promo
    count and budget in one round trip).
    """

    def __init__(
        self, store: FeatureStore, views: list[tuple[FeatureView, tuple[str, ...]]]
    ) -> None:
        from feast.infra.online_stores.redis import _versioned_fv_name
        from google.protobuf.timestamp_pb2 import Timestamp

        self._config = store.config
        self._online = store._get_provider().online_store
        self._layout: list[tuple[tuple[str, ...], timedelta | None]] = []
        fields: list[bytes] = []
        for view, names in views:
            wanted, hset_keys = self._online._generate_hset_keys_for_features(  # type: ignore[attr-defined]
                view, list(names), fv_name_override=_versioned_fv_name(view, self._config)
            )
            # Feast returns the requested names followed by the view's timestamp field.
            self._layout.append((tuple(wanted[: len(names)]), view.ttl))
            fields.extend(hset_keys)
        self._fields = fields
        self._timestamp = Timestamp
        self._sqlite_like = _SqliteRows.__new__(_SqliteRows)  # for its value conversion
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import NULL_TIMESTAMP_INT_VALUE, feast_value_type_to_python_type

        self._sqlite_like._value = Value
        self._sqlite_like._null_ts = NULL_TIMESTAMP_INT_VALUE
        self._sqlite_like._generic = feast_value_type_to_python_type
        self._client = self._online._get_client(self._config.online_store)  # type: ignore[attr-defined]
        # redis-py's default retries three times with exponential backoff: with Redis down one
        # read took 4-13 s and stalled the worker. One immediate retry on a connection error (a
        # pooled connection Redis closed is replaced), then the error: the decision is
        # degraded at once. Never on a timeout: that would double the deadline (the socket
        # timeouts come from ``with_deadlines``). The client is Feast's own, so /events
        # pushes fail fast the same way (503).
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.retry import Retry

        if hasattr(self._client, "set_retry"):
            self._client.set_retry(Retry(NoBackoff(), 1, (RedisConnectionError,)))
        self._suffix = self._config.project.encode()
        self._prefix = _key_prefix(lambda c: self._slow_keys([c])[0], self._suffix)

    @property
    def client(self) -> Any:
        """Feast's ``redis.Redis`` client of the online store (its connection pool)."""
        return self._client

    @property
    def fields(self) -> list[bytes]:
        """The hash fields of one customer's ``HMGET``: both views' features and timestamps."""
        return self._fields

    def key(self, customer_id: str) -> bytes:
        """The Redis key of ``customer_id``'s hash."""
        return self._keys([customer_id])[0]

    def _keys(self, customer_ids: list[str]) -> list[bytes]:
        prefix, suffix = self._prefix, self._suffix
        if prefix is None:
            return self._slow_keys(customer_ids)
        out = []
        for customer_id in customer_ids:
            encoded = customer_id.encode()
            out.append(prefix + struct.pack("<I", len(encoded)) + encoded + suffix)
        return out

    def _slow_keys(self, customer_ids: list[str]) -> list[bytes]:
        """Feast's own keys (serialized entity key + project), through protobuf."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        entity_keys = [
            EntityKey(join_keys=[schema.ENTITY], entity_values=[Value(string_val=c)])
            for c in customer_ids
        ]
        return self._online._generate_redis_keys_for_entities(self._config, entity_keys)  # type: ignore[attr-defined]

    def read_many(
        self, customer_ids: list[str], now: datetime | None = None
    ) -> list[dict[str, object]]:
        """Stored features of ``customer_ids`` (None where absent), one round trip."""
        keys = self._keys(customer_ids)
        if len(keys) == 1:
            replies = [self._client.hmget(keys[0], self._fields)]
        else:
            with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(key, self._fields)
                replies = pipe.execute()
        now = now or datetime.now(UTC)
        return [self.record(reply, now) for reply in replies]

    def record(self, reply: list[bytes | None], now: datetime | None = None) -> dict[str, object]:
        """One customer's stored features from the reply to an ``HMGET`` of ``fields``."""
        now = now or datetime.now(UTC)
        convert = self._sqlite_like._convert
        record: dict[str, object] = dict.fromkeys(schema.STORED)
        start = 0
        for names, ttl in self._layout:
            values = reply[start : start + len(names)]
            stamp = reply[start + len(names)]
            start += len(names) + 1
            if stamp is None:
                continue  # the view has nothing for this customer
            ts = self._timestamp.FromString(stamp)
            seconds = ts.seconds + ts.nanos / 1e9
            if ttl and ttl.total_seconds() > 0 and seconds < (now - ttl).timestamp():
                continue  # older than the view's TTL: missing, as in the SDK
            for name, blob in zip(names, values, strict=True):
                if blob:
                    record[name] = convert(blob)
        return record
