"""The store on SQLite and PostgreSQL: upserts, cursors committed with their records, reconciliation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event

from engagement.mapping import load_mapping
from engagement.records import SourceRecord
from engagement.unify import Snapshot, unify
from sandbox.generator import generate_world
from store import CursorUpdate, Store
from tests.engagement.world_records import world_records

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def rec(i: int, name: str = "x", deleted: bool = False, stream: str = "contacts") -> SourceRecord:
    return SourceRecord("salesforce", stream, f"003{i:015d}", T0 + timedelta(seconds=i), {"name": name}, deleted)


def test_upsert_counts_inserts_updates_unchanged_and_deletes(store: Store) -> None:
    first = store.apply_batch([rec(1), rec(2), rec(3)])
    assert (first.inserted, first.updated, first.unchanged) == (3, 0, 0)
    second = store.apply_batch([rec(1), rec(2, "changed"), rec(3, deleted=True), rec(4)])
    assert (second.inserted, second.updated, second.unchanged, second.deleted) == (1, 1, 1, 1)
    assert store.record_ids("salesforce", "contacts") == {rec(1).id, rec(2).id, rec(4).id}
    stored = {r.id: r for r in store.iter_records("salesforce", "contacts", include_deleted=True)}
    assert stored[rec(2).id].data == {"name": "changed"}
    assert stored[rec(3).id].deleted
    assert stored[rec(1).id].updated_at == rec(1).updated_at


def test_last_version_within_a_batch_wins(store: Store) -> None:
    store.apply_batch([rec(1, "a"), rec(1, "b")])
    assert [r.data for r in store.iter_records()] == [{"name": "b"}]


def test_values_survive_intact(store: Store) -> None:
    hostile = 'Robert\'); DROP TABLE records;-- "quoted" 北京 \\ %_ <b>x</b> ' + "long " * 500
    store.apply_batch([rec(1, hostile)])
    assert next(store.iter_records()).data["name"] == hostile


def test_cursor_moves_with_its_records_or_not_at_all(store: Store) -> None:
    cursor = CursorUpdate("salesforce", "contacts", "", "2026-11-01T12:00:00.000Z")
    store.apply_batch([rec(1)], cursor)
    assert store.get_cursor("salesforce", "contacts") == "2026-11-01T12:00:00.000Z"

    # Make the next write fail inside the transaction, after the records were written.
    def explode(conn, cursor_, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]  # SQLAlchemy event signature
        if "INSERT INTO cursors" in statement:
            raise RuntimeError("crash between records and cursor")

    event.listen(store.engine, "before_cursor_execute", explode)
    try:
        with pytest.raises(RuntimeError, match="crash"):
            store.apply_batch([rec(2)], CursorUpdate("salesforce", "contacts", "", "2026-11-02T00:00:00.000Z"))
    finally:
        event.remove(store.engine, "before_cursor_execute", explode)
    # Neither the record nor the cursor moved: a re-run reads the same window again.
    assert store.get_cursor("salesforce", "contacts") == "2026-11-01T12:00:00.000Z"
    assert store.record_ids("salesforce", "contacts") == {rec(1).id}


def test_reconcile_marks_missing_records_deleted(store: Store) -> None:
    store.apply_batch([rec(1), rec(2), rec(3)])
    marked = store.reconcile(
        "salesforce",
        "contacts",
        {rec(1).id, rec(3).id},
        cursor=CursorUpdate("salesforce", "contacts", "", "c1"),
    )
    assert marked == 1
    assert store.record_ids("salesforce", "contacts") == {rec(1).id, rec(3).id}
    assert store.get_cursor("salesforce", "contacts") == "c1"
    # It comes back: an upsert revives it.
    result = store.apply_batch([rec(2)])
    assert result.updated == 1 and rec(2).id in store.record_ids("salesforce", "contacts")


def test_reconcile_is_scoped_to_a_partition(store: Store) -> None:
    a = SourceRecord("google_calendar", "events", "e1", T0, {}, partition="cal-a")
    b = SourceRecord("google_calendar", "events", "e2", T0, {}, partition="cal-b")
    store.apply_batch([a, b])
    assert store.reconcile("google_calendar", "events", set(), partition="cal-a") == 1
    assert store.record_ids("google_calendar", "events") == {"e2"}


def test_engagements_saved_with_health_changes(store: Store) -> None:
    now = datetime(2026, 11, 22, 9, tzinfo=UTC)
    world = generate_world("small", 2, now)
    mapping = load_mapping("mappings/default.yaml")
    records = world_records(world)
    store.apply_batch(records)
    view = unify(Snapshot.from_records(store.iter_records()), mapping, now)
    assert view == unify(Snapshot.from_records(records), mapping, now)  # the store round-trips exactly
    changes = store.save_view(view, now)
    assert len(changes) == len(view.engagements) and all(c.previous is None for c in changes)
    assert store.save_view(view, now) == []  # nothing changed, nothing written
    assert sum(store.health_counts().values()) == len(view.engagements)
    assert [e["summary"]["id"] for e in store.load_engagements()] == sorted(e.id for e in view.engagements)
    later = unify(Snapshot.from_records(store.iter_records()), mapping, now + timedelta(days=60))
    transitions = store.save_view(later, now + timedelta(days=60))
    assert transitions and all(c.previous != c.current for c in transitions)


def test_runs_are_recorded(store: Store) -> None:
    run = store.start_run(full=True)
    store.finish_run(run, "completed", {"pulled": 3})
    last = store.last_runs(1)[0]
    assert last["status"] == "completed" and last["stats"] == {"pulled": 3} and last["full"] is True
