"""A workspace's embedded MLflow store keeps working after the workspace is moved or copied.

MLflow records absolute artifact locations in its database: the experiment's
``artifact_location``, each run's ``artifact_uri``, each model version's ``source`` and storage
location, each logged model's location. A workspace copied elsewhere would therefore read (and
write) the artifacts of the old folder, or fail once it is deleted.

``reroot`` keeps a marker file, ``.nba-root``, beside the embedded store's database naming the
folder the store was last used in. When a command opens the store from another folder, every
text value of the database that starts with the old folder (as a path or a ``file://`` URI) is
rewritten to start with the new one, in one transaction, and the marker is updated. It touches
only values under the store's own folder (``models/`` of the workspace): an artifact location
set elsewhere on purpose is left alone. MLflow has no API to move an experiment's artifact
location, hence the SQL over its tables (generic: every text column, prefix match only).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Final

#: The marker file beside the database.
MARKER: Final = ".nba-root"
_SQLITE: Final = "sqlite:///"
#: SQLite declared types that hold text.
_TEXT_TYPES: Final = ("CHAR", "CLOB", "TEXT")


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (None for other stores)."""
    if not tracking_uri.startswith(_SQLITE):
        return None
    path = tracking_uri[len(_SQLITE) :].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def _prefixes(old: Path, new: Path) -> list[tuple[str, str]]:
    # Both spellings MLflow uses: file:///a/b and /a/b; with the separator, so that /a/bc is
    # not taken for a child of /a/b.
    return [(old.as_uri() + "/", new.as_uri() + "/"), (f"{old}/", f"{new}/")]


def rewrite_prefixes(database: Path, old: Path, new: Path) -> int:
    """Rewrite every text value of ``database`` under ``old`` to lie under ``new``; rows changed."""
    changed = 0
    with sqlite3.connect(database, timeout=30) as conn:
        conn.execute("BEGIN IMMEDIATE")  # one writer: two processes never interleave rewrites
        tables = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )]  # fmt: skip
        for table in tables:
            columns = [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')
                       if any(kind in str(row[2]).upper() for kind in _TEXT_TYPES)]  # fmt: skip
            for column in columns:
                for before, after in _prefixes(old, new):
                    cursor = conn.execute(
                        f'UPDATE "{table}" SET "{column}" = ? || substr("{column}", ?) '
                        f'WHERE substr("{column}", 1, ?) = ?',
                        (after, len(before) + 1, len(before), before),
                    )
                    changed += cursor.rowcount
    return changed


def reroot(tracking_uri: str) -> int:
    """Re-root the embedded store of ``tracking_uri`` if its folder moved; rows rewritten.

    No-op for a tracking server or a store used where it was created. The first use writes the
    marker.
    """
    database = sqlite_path(tracking_uri)
    if database is None:
        return 0
    folder = database.parent.resolve()
    marker = folder / MARKER
    recorded = marker.read_text().strip() if marker.is_file() else None
    if recorded == str(folder):
        return 0
    changed = 0
    if recorded and database.is_file():
        changed = rewrite_prefixes(database, Path(recorded), folder)
    folder.mkdir(parents=True, exist_ok=True)
    scratch = marker.with_name(f"{MARKER}.{os.getpid()}.tmp")
    scratch.write_text(f"{folder}\n")
    scratch.replace(marker)
    return changed
