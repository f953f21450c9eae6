"""Deadlines on the stores of a Feast config, with the libraries' own options.

The service must never wait on a store without a deadline (``serving.deadline``). Feast builds
its clients from the ``feature_store*.yaml``: ``with_deadlines`` adds the timeouts to the parsed
file for the service (``features.store.FeastAdapter.with_timeout``), while the CLI keeps the
clients' defaults for its long materializations.
"""

from __future__ import annotations

import math
from typing import Any

#: Feast's connection string when a Redis online store names none.
FEAST_DEFAULT_REDIS = "localhost:6379"


def _connection_options(connection_string: str) -> set[str]:
    """The option names (``key=value`` parts) of a Feast Redis connection string."""
    return {part.split("=", 1)[0].strip() for part in connection_string.split(",") if "=" in part}


def with_deadlines(raw: dict[str, Any], seconds: float) -> dict[str, Any]:
    """A parsed ``feature_store*.yaml`` with deadlines on its stores (``with_timeout``).

    Only the library's own options are set, and none the file (or ``NBA_REDIS_URL``) already
    sets: the Redis online store's ``socket_timeout`` and ``socket_connect_timeout`` (Feast
    passes the connection string's options to ``redis.Redis``); a PostgreSQL SQL registry's
    libpq ``connect_timeout`` (whole seconds, at least 2) and the thread cache mode.
    """
    out = dict(raw)
    online = out.get("online_store")
    if isinstance(online, dict) and str(online.get("type", "")).lower().endswith("redis"):
        online = dict(online)
        text = str(online.get("connection_string", FEAST_DEFAULT_REDIS))
        given = _connection_options(text)
        for option in ("socket_timeout", "socket_connect_timeout"):
            if option not in given:
                text += f",{option}={seconds:g}"
        online["connection_string"] = text
        out["online_store"] = online
    registry = out.get("registry")
    if (
        isinstance(registry, dict)
        and registry.get("registry_type") == "sql"
        and str(registry.get("path", "")).startswith("postgresql")
    ):
        registry = dict(registry)
        registry.setdefault("cache_mode", "thread")
        engine = dict(registry.get("sqlalchemy_config_kwargs") or {})
        connect_args = dict(engine.get("connect_args") or {})
        connect_args.setdefault("connect_timeout", max(2, math.ceil(seconds)))
        engine["connect_args"] = connect_args
        registry["sqlalchemy_config_kwargs"] = engine
        out["registry"] = registry
    return out
