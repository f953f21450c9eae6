"""The outbox on PostgreSQL (the production profile's memory): the unit tests' cases against a
database of this test's own (dropped after)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from memory.outbox import Outbox
from memory.store import Database
from tests.unit import test_triggered as cases

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_outbox(postgres_address: tuple[str, int]) -> Iterator[Outbox]:
    host, port = postgres_address
    name = f"nba_outbox_{uuid.uuid4().hex[:10]}"
    db = Database(f"postgresql+psycopg2://postgres@{host}:{port}/{name}", timeout=5.0)
    yield Outbox(db)
    db.dispose()
    admin = sa.create_engine(f"postgresql+psycopg2://postgres@{host}:{port}/postgres",
                             isolation_level="AUTOCOMMIT")  # fmt: skip
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.mark.parametrize(
    "case",
    [
        cases.test_outbox_holds_one_item_per_trigger_customer_event,
        cases.test_cursor_paging_is_ordered_and_complete,
        cases.test_waiting_lists_the_budget_queue_by_expected_value,
        cases.test_a_named_lease_has_one_owner_until_it_ends,
        cases.test_a_wave_beyond_the_budget_waits_by_value_and_is_paced,
        cases.test_a_delayed_trigger_decides_when_due,
    ],
    ids=lambda f: f.__name__.removeprefix("test_"),
)
def test_outbox_on_postgresql(pg_outbox: Outbox, case: Callable[[Outbox], None]) -> None:
    case(pg_outbox)
