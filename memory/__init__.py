"""The customer memory: the one durable record of what the service learned about a customer.

Ground floor, beside ``features``: serving, the feature rebuild, training and outcomes all read
it, and it imports nothing of theirs.

* ``memory.store`` – the database (SQLite file embedded, PostgreSQL in production) and its
  tables, behind SQLAlchemy Core.
* ``memory.ledger`` – the event ledger: every accepted event is committed here, idempotently by
  ``event_id``, before it is acknowledged; the open cases (by id), consent and loyalty miles are
  folded in the same transaction, so two workers never fold from one stale state.
* ``memory.rebuild`` – the ledger as raw-contract rows, merged into a raw export by ``nba
  features`` so that a rebuild never forgets an event and never counts one twice.
"""
