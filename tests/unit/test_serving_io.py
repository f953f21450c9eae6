"""Request parsing (contract error bodies), the log writer (nothing lost), explanations."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from features import decision_log
from serving import explain
from serving.api import ApiError, DecideBatchRequest, DecideRequest, Event, parse
from serving.logwriter import LogWriter

T0 = datetime(2026, 11, 23, 23, 59, 59, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"", 400, "body"),
        (b"{not json", 400, "body"),
        (b"{}", 422, "customer_id"),
        (b'{"customer_id": 12}', 422, "customer_id"),
        (b'{"customer_id": "C1", "candidates": ["promo", "upgrade"]}', 422, "candidates.1"),
        (b'{"customer_id": "C1", "context": {"channel": "fax"}}', 422, "context.channel"),
        (b'{"customer_id": "C1", "explain": "maybe"}', 422, "explain"),
        (b'{"customer_id": "C1", "threshold": 3}', 422, "threshold"),
    ],
)
def test_malformed_requests_name_the_field(body: bytes, status: int, field: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse(DecideRequest, body)
    assert caught.value.status == status
    assert caught.value.body["detail"]["field"] == field
    assert field in caught.value.body["error"] or status == 400


def test_valid_requests_parse() -> None:
    request = parse(DecideRequest, b'{"customer_id": "C1", "context": {"channel": "app", "x": 1}}')
    assert request.context is not None and request.context.channel == "app"
    batch = b'{"requests": [' + b",".join([b'{"customer_id": "C"}'] * 3) + b"]}"
    assert len(parse(DecideBatchRequest, batch).requests) == 3
    event = parse(
        Event, b'{"customer_id": "C", "type": "booking", "ts": "2026-11-01T00:00:00+02:00"}'
    )
    assert event.ts.utcoffset() == timedelta(hours=2)
    with pytest.raises(ApiError, match="ts"):
        parse(Event, b'{"customer_id": "C", "type": "booking", "ts": "2026-11-01T00:00:00"}')
    with pytest.raises(ApiError, match="type"):
        parse(Event, b'{"customer_id": "C", "type": "lunch", "ts": "2026-11-01T00:00:00Z"}')


def test_log_writer_loses_nothing_across_threads_and_days(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path, decision_log.DECISION_SCHEMA, "decided_at", flush_seconds=0.01,
                       max_rows=37)  # fmt: skip

    def produce(offset: int) -> None:
        for i in range(500):
            at = T0 + timedelta(seconds=i % 3)
            writer.append({"decision_id": f"d{offset}-{i}", "customer_id": "C",
                           "decided_at": at, "action": "none"})  # fmt: skip

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    frame = decision_log.read_decisions(tmp_path)
    assert len(frame) == 2000 and frame["decision_id"].is_unique
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_journal", "date=2026-11-23",
                                                          "date=2026-11-24"]  # fmt: skip
    assert not list((tmp_path / "_journal").iterdir())  # every segment became parts
    with pytest.raises(RuntimeError, match="closed"):
        writer.append({"decision_id": "late"})


def test_log_writer_retries_a_failed_write(tmp_path: Path) -> None:
    blocker = tmp_path / "date=2026-11-23"
    blocker.write_text("a file where the day's folder should be")
    writer = LogWriter(tmp_path, decision_log.DECISION_SCHEMA, "decided_at", flush_seconds=0.01)
    writer.append({"decision_id": "d1", "customer_id": "C", "decided_at": T0, "action": "none"})
    threading.Event().wait(0.1)
    assert writer.written == 0
    assert len(list((tmp_path / "_journal").iterdir())) == 1  # kept in the journal meanwhile
    blocker.unlink()  # the disk problem goes away: the same row is written at the next flush
    writer.close()
    assert decision_log.read_decisions(tmp_path)["decision_id"].tolist() == ["d1"]


def test_facts_read_like_sentences() -> None:
    row = {"open_case_count": 1, "oldest_open_case_id": "C-77", "oldest_open_case_age_days": 2.4,
           "days_since_last_negative": 3.1, "last_negative_kind": "delay",
           "last_negative_delay_minutes": 190, "compensated_since_last_negative": True,
           "days_since_last_milestone": 1.2, "last_milestone_miles": 1_000_000}  # fmt: skip
    assert explain.facts(row) == [
        "case C-77 open since 2 days",
        "flight delayed 190 min 3 days ago",
        "already compensated for the delay",
        "crossed 1,000,000 miles yesterday",
    ]


def test_log_writer_writes_one_part_per_interval_not_per_row(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path, decision_log.DECISION_SCHEMA, "decided_at", flush_seconds=30)
    for i in range(300):
        writer.append({"decision_id": f"d{i}", "customer_id": "C", "decided_at": T0,
                       "action": "none"})  # fmt: skip
        if i % 50 == 0:
            threading.Event().wait(0.01)  # rows trickle in, as requests do
    writer.close()
    parts = list(tmp_path.glob("date=*/part-*.parquet"))
    assert len(parts) == 1 and len(decision_log.read_decisions(tmp_path)) == 300
