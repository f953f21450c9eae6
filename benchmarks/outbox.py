"""A cancelled flight's passengers to their last outbox item: the time of a disruption wave.

Needs a workspace with materialized features and a champion (``nba init``, ``simulate``,
``features``, ``train --force``); run it there (or with ``--workspace``):

    python benchmarks/outbox.py [--passengers 300] [--rounds 3] [--budget N]

Each round puts ``--passengers`` customers of the feature table on a new flight number in the
memory's manifest (today, UTC), starts a service worker's runtime in this process
(``Runtime.start``: the same model, stores, guardrails, triggers and scheduler thread as
``nba serve``), and times ``POST /events/flight``'s work (``serving.outbox.handle_flight``: one
ledger transaction, one push) and then the scheduler until no firing of the wave is due. The
table gives, per round: the acknowledgement's work, the time from the flight event to the last
outbox item written and to the whole wave decided, and what became of the wave (in the outbox,
waiting for the budget, ``none``). ``--budget`` large enough (e.g. 100000) puts the whole wave
in the outbox: the worst case for the last item (a credit costs a claim, a budget count and a
``compensation_granted`` event pushed to the online store).
HTTP adds ≈ 1 ms to the acknowledgement (stack-facts); it is left out.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passengers", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--budget", type=int, default=None, help="apology credits a day (default: the settings')"
    )
    parser.add_argument("--workspace", type=Path, default=None)
    args = parser.parse_args()

    import pandas as pd
    import sqlalchemy as sa

    from features import schema
    from memory.outbox import FIRINGS, OUTBOX
    from nba.champion import export_champion
    from nba.settings import load_settings
    from serving.config import ServiceSettings
    from serving.outbox import FlightEvent, handle_flight
    from serving.runtime import Runtime

    overrides = {"home": args.workspace} if args.workspace else {}
    settings = load_settings(**overrides)
    if args.budget is not None:
        settings = settings.model_copy(update={"apology_budget_per_day": args.budget})
    if settings.model_path is None:
        settings = settings.model_copy(update={"model_path": export_champion(settings).folder})
    table = pd.read_parquet(settings.feast_adapter().table_path, columns=[schema.ENTITY])
    customers = table[schema.ENTITY].drop_duplicates().tolist()
    runtime = Runtime.start(ServiceSettings.of(settings))
    assert runtime.memory is not None and runtime.triggered is not None, runtime.problems
    db = runtime.memory.db
    rows = []
    try:
        for k in range(args.rounds):
            number = f"BM{uuid.uuid4().int % 90000 + 10000}"
            scheduled = pd.Timestamp(datetime.now(UTC)).floor("min") - pd.Timedelta(hours=1)
            wave = customers[k * args.passengers : (k + 1) * args.passengers]
            with db.begin() as tx:
                runtime.memory.add_passengers(tx, [(number, c, scheduled) for c in wave])
            body = FlightEvent(flight_number=number, scheduled_at=scheduled.to_pydatetime(),
                               type="flight_disrupted", cancelled=True, event_id=f"bench-{number}",
                               ts=datetime.now(UTC) - timedelta(seconds=1))  # fmt: skip
            started = time.perf_counter()
            ack = handle_flight(runtime, body)
            acked = time.perf_counter() - started
            prefix = f"bench-{number}:%"
            while True:
                with db.read() as connection:
                    due = connection.execute(
                        sa.select(sa.func.count()).where(
                            FIRINGS.c.event_id.like(prefix), FIRINGS.c.waiting == "due"
                        )
                    ).scalar()
                if not due:
                    break
                time.sleep(0.005)
            with db.read() as connection:
                last, items = connection.execute(
                    sa.select(sa.func.max(OUTBOX.c.created_at), sa.func.count()).where(
                        OUTBOX.c.event_id.like(prefix)
                    )
                ).one()
                waiting = connection.execute(
                    sa.select(sa.func.count()).where(FIRINGS.c.event_id.like(prefix))
                ).scalar()
            ended = time.perf_counter()
            wall_start = datetime.now(UTC) - timedelta(seconds=ended - started)
            to_last = (last / 1e6 - wall_start.timestamp()) if last else float("nan")
            rows.append((k + 1, ack["affected"], acked * 1000, to_last * 1000,
                         (ended - started) * 1000, items, waiting,
                         ack["affected"] - items - waiting))  # fmt: skip
    finally:
        runtime.close()
    print("| round | passengers | /events/flight work ms | to last outbox item ms "
          "| whole wave decided ms | in outbox | waiting (budget) | none |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print("| {} | {} | {:.0f} | {:.0f} | {:.0f} | {} | {} | {} |".format(*row))


if __name__ == "__main__":
    main()
