"""Feast declarations for the customer feature store (``feast apply`` imports this module).

Declarations only: no I/O and no other work at import time. The field lists are built from
``features.schema`` (the single source of truth), so a column added there appears here on the
next ``feast apply``.

Paths are relative: Feast resolves a relative ``FileSource`` path (and the registry and SQLite
paths in ``feature_store*.yaml``) against ``RepoConfig.repo_path``, i.e. this folder, whatever the
working directory. That also keeps a copy of this folder (tests) self-contained.
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Bool, FeastType, Float64, Int64, String, UnixTimestamp

from features import schema
from features.store import FEATURE_TABLE_PATH

#: features.schema type names -> Feast types.
_FEAST_TYPES: dict[str, FeastType] = {
    "int": Int64,
    "float": Float64,
    "bool": Bool,
    "string": String,
    "timestamp": UnixTimestamp,
}

#: Every table row is a full snapshot of a customer's state, and a quiet customer (no event for
#: years) must still be served its latest row: online reads return None for values older than
#: the TTL (measured from now), and point-in-time joins look back at most this far. Ten years is
#: "forever" for this data; ttl=0 would also mean forever, but Feast warns that it makes
#: point-in-time joins scan the whole history.
_TTL = timedelta(days=3650)


def _fields(columns: dict[str, schema.FeatureType]) -> list[Field]:
    """Feast fields for ``columns`` (name -> schema type), in schema order."""
    return [Field(name=name, dtype=_FEAST_TYPES[kind]) for name, kind in columns.items()]


customer = Entity(
    name="customer",
    join_keys=[schema.ENTITY],
    value_type=ValueType.STRING,
    description="A customer of the travel brand.",
)

customer_features_source = FileSource(
    name="customer_features_source",
    # Relative to the repo folder (see the module docstring); written by features.store.
    path=FEATURE_TABLE_PATH,
    timestamp_field=schema.EVENT_TIMESTAMP,
    description="The feature table written by `nba features` (all STORED columns).",
)

customer_profile = FeatureView(
    name=schema.PROFILE_VIEW,
    entities=[customer],
    ttl=_TTL,
    schema=_fields(schema.PROFILE),
    source=customer_features_source,
    online=True,
    description="Window aggregates and slowly moving state; refreshed by materialization.",
)

customer_events_push = PushSource(
    name=schema.PUSH_SOURCE,
    # Materialization and historical retrieval read the same feature table; pushes go straight
    # to the online store.
    batch_source=customer_features_source,
    description="Real-time state changes reported by /events.",
)

customer_realtime = FeatureView(
    name=schema.REALTIME_VIEW,
    entities=[customer],
    ttl=_TTL,
    schema=_fields(schema.REALTIME),
    source=customer_events_push,
    online=True,
    description="Event-driven state; materialized like the profile and updated at once by pushes.",
)

nba_customer_v1 = FeatureService(
    name=schema.FEATURE_SERVICE,
    features=[customer_profile, customer_realtime],
    description="Every stored customer feature read by the next-best-action model, version 1.",
    # A new model contract gets a new service (nba_customer_v2) rather than a change to this one,
    # so that a deployed model keeps reading exactly the features it was trained on.
    tags={"version": "1"},
)
