"""Due items read page by page: each once, batch by batch, so a push holds a page and not the outbox,
and the targets' batches stay full across pages."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from accord.settings import AccordSettings
from connectors.base import WriteRequest, WriteResult
from engagement.mapping import load_mapping
from flows.push_engine import PlanSummary, Skipped, apply_target, chunks
from store import OutboxItem, Store
from store.outbox import batch_of, holder

MAPPING = load_mapping(Path("mappings/default.yaml"))


def _events(n: int, calendars: int) -> list[OutboxItem]:
    """Calendar reminders spread over ``calendars`` calendars, interleaved in planned order."""
    return [
        OutboxItem(
            f"acc-e{i % 5}-checkin_due-{i:04d}-cal",
            "google_calendar",
            "calendar_event",
            f"e{i % 5}",
            "checkin_due: why",
            {"calendar_id": f"owner{i % calendars}@agency.example", "n": i},
        )
        for i in range(n)
    ]


def test_pages_give_every_due_item_once_batch_by_batch(store: Store) -> None:
    items = _events(47, calendars=4)
    store.outbox.enqueue(items)
    paged = list(store.outbox.iter_due("google_calendar", page=5))
    assert sorted(i.key for i in paged) == sorted(i.key for i in items)
    assert [i.key for i in paged] == [i.key for i in store.outbox.due("google_calendar")]
    batches = [batch_of(i.kind, i.payload) for i in paged]
    runs = [b for n, b in enumerate(batches) if n == 0 or batches[n - 1] != b]
    assert len(runs) == len(set(batches)) == 4  # each calendar's items come together


def test_pages_skip_held_items_and_later_plans(store: Store) -> None:
    store.outbox.enqueue(_events(12, calendars=2))
    cut = store.outbox.items()[-1].planned_at or ""
    with holder() as me:
        held = store.outbox.claim(store.outbox.due("google_calendar")[:3], by=me)
        rest = list(store.outbox.iter_due("google_calendar", page=2))
        assert {i.key for i in rest} == {i.key for i in store.outbox.items()} - {i.key for i in held}
    assert len(list(store.outbox.iter_due(page=2))) == 12  # the holder has ended: all due again
    assert len(list(store.outbox.iter_due(planned_before=cut + "~"))) == 12
    assert list(store.outbox.iter_due(planned_before=cut)) == []  # planned at ``cut``, not before


def test_chunks_fill_each_batch_across_pages() -> None:
    items = sorted(_events(130, calendars=3), key=lambda i: (batch_of(i.kind, i.payload), i.key))
    got = list(chunks(iter(items), 20))
    assert sorted(i.key for c in got for i in c) == sorted(i.key for i in items)
    per_batch = Counter(batch_of(c[0].kind, c[0].payload) for c in got)
    for batch, n in per_batch.items():
        size = sum(1 for i in items if batch_of(i.kind, i.payload) == batch)
        assert n == -(-size // 20)  # only a batch's last chunk is short
    assert all(len({batch_of(i.kind, i.payload) for i in c}) == 1 for c in got)


class CountingWriter:
    target = "google_calendar"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def write(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        self.calls.append([r.key for r in requests])
        return [WriteResult(r.key, True, "created") for r in requests]

    def close(self) -> None:
        pass


def test_apply_reads_pages_and_still_makes_full_batches(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import store.outbox as outbox_module

    monkeypatch.setattr(outbox_module, "DUE_PAGE", 7)
    items = _events(230, calendars=3)
    store.outbox.enqueue(items)
    writer = CountingWriter()
    settings = AccordSettings(database_url=store.url, sandbox_control=None)
    report = apply_target("google_calendar", store, settings, MAPPING, lambda *_: writer)
    size = MAPPING.push.google_calendar.batch_size
    per_calendar = Counter(i.payload["calendar_id"] for i in items)
    assert report.delivered == 230 and report.batches == sum(-(-n // size) for n in per_calendar.values())
    assert sorted(k for call in writer.calls for k in call) == sorted(i.key for i in items)


def test_a_store_from_before_batches_gets_them(store: Store) -> None:
    items = _events(9, calendars=3)
    store.outbox.enqueue(items)
    with store.engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_outbox_due"))
        conn.execute(text("ALTER TABLE outbox DROP COLUMN batch"))
    store.create_all()
    with store.engine.connect() as conn:
        filled = dict(conn.execute(text("SELECT key, batch FROM outbox")).fetchall())
    assert filled == {i.key: batch_of(i.kind, i.payload) for i in items}


def test_a_summary_keeps_counts_and_the_first_rows_only() -> None:
    summary = PlanSummary(datetime(2026, 11, 23, tzinfo=UTC), limit=10)
    items = _events(40, calendars=4)
    for n in range(0, 40, 8):
        summary.add(items[n : n + 8], [Skipped(f"e{n}", "status update", "no change")] * 3)
    retry = OutboxItem("status-e1-x-sf", "salesforce", "opportunity_status", "e1", "status update", {}, attempts=2)
    summary.add_retry(retry)
    assert (summary.planned, summary.retries, summary.left_alone, summary.total) == (40, 1, 15, 41)
    assert len(summary.actions) == 10 and len(summary.skipped) == 10
    assert summary.by_target() == {"google_calendar": 40, "salesforce": 1}
    assert summary.writes[("google_calendar", "calendar_event", "owner1@agency.example")] == 10
    document = summary.to_json()
    assert document["actions_total"] == 41 and document["left_alone_total"] == 15
