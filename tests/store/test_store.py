"""The store on SQLite and PostgreSQL: upserts, cursors committed with their records, reconciliation."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, inspect, text

from engagement.mapping import load_mapping
from engagement.records import SourceRecord
from engagement.unify import Snapshot, unify
from sandbox.generator import generate_world
from store import CursorUpdate, SeenScope, StagingLostError, Store
from store.store import engagement_digest
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


def stage(store: Store, seen: SeenScope, ids: list[str]) -> int:
    store.apply_batch([], seen=seen, seen_ids=ids)
    return len(ids)


def issue(i: int, project: str = "P") -> SourceRecord:
    return SourceRecord("jira", "issues", str(10_000 + i), T0, {"project": project}, partition=project)


def test_reconcile_marks_what_the_read_did_not_stage(store: Store) -> None:
    store.apply_batch([rec(1), rec(2), rec(3), rec(4, deleted=True), rec(5, stream="accounts")])
    seen = SeenScope.new("salesforce", "contacts")
    staged = stage(store, seen, [rec(1).id]) + stage(store, seen, [rec(3).id, rec(9).id])
    marked = store.reconcile(seen, staged=staged, cursors=[CursorUpdate("salesforce", "contacts", "", "c1")])
    # Only the live, unstaged record of this stream: not the one already deleted, not another stream's.
    assert marked == 1
    assert store.record_ids("salesforce", "contacts") == {rec(1).id, rec(3).id}
    assert store.record_ids("salesforce", "accounts") == {rec(5).id}
    gone = store.record_by_id("salesforce", "contacts", rec(2).id)
    assert gone is not None and gone.deleted
    assert store.get_cursor("salesforce", "contacts") == "c1"
    assert store.staged_count() == 0  # the read's staging goes with its reconcile
    # It comes back: an upsert revives it.
    result = store.apply_batch([rec(2)])
    assert result.updated == 1 and rec(2).id in store.record_ids("salesforce", "contacts")


def test_staged_ids_match_exactly_whatever_they_hold(store: Store) -> None:
    odd = ["it's", 'a "quote"', "back\\slash", "北京/会議", "%_", " padded ", "007", "7", "a" * 255]
    store.apply_batch([SourceRecord("salesforce", "contacts", i, T0, {}) for i in [*odd, "gone", "Gone"]])
    seen = SeenScope.new("salesforce", "contacts")
    assert store.reconcile(seen, staged=stage(store, seen, odd)) == 2
    assert store.record_ids("salesforce", "contacts") == set(odd)


def test_reconcile_with_nothing_staged_marks_the_whole_stream(store: Store) -> None:
    store.apply_batch([rec(1), rec(2)])
    assert store.reconcile(SeenScope.new("salesforce", "contacts"), staged=0) == 2
    assert store.record_ids("salesforce", "contacts") == set()


def test_reconcile_is_scoped_to_a_partition(store: Store) -> None:
    def event(i: int, calendar: str) -> SourceRecord:
        return SourceRecord("google_calendar", "events", f"{calendar}/e{i}", T0, {}, partition=calendar)

    store.apply_batch([event(1, "cal-a"), event(2, "cal-a"), event(1, "cal-b"), event(2, "cal-b")])
    seen = SeenScope.new("google_calendar", "events", "cal-a")
    assert store.reconcile(seen, staged=stage(store, seen, ["cal-a/e1"])) == 1
    assert store.record_ids("google_calendar", "events") == {"cal-a/e1", "cal-b/e1", "cal-b/e2"}
    # Ids staged for one calendar never count for another.
    other = SeenScope.new("google_calendar", "events", "cal-b")
    stage(store, SeenScope("google_calendar", "events", "cal-a", other.run), ["cal-b/e2"])
    assert store.reconcile(other, staged=stage(store, other, ["cal-b/e1"])) == 1
    assert store.record_ids("google_calendar", "events") == {"cal-a/e1", "cal-b/e1"}


def test_a_stream_wide_reconcile_spans_every_partition(store: Store) -> None:
    store.apply_batch([issue(1, "P"), issue(2, "P"), issue(3, "Q"), issue(4, "Q")])
    seen = SeenScope.new("jira", "issues")
    assert store.reconcile(seen, staged=stage(store, seen, [issue(1).id, issue(4).id])) == 2
    assert store.record_ids("jira", "issues") == {issue(1).id, issue(4).id}


def test_what_a_crashed_run_staged_never_counts_and_is_cleared(store: Store) -> None:
    store.apply_batch([rec(1), rec(2), rec(3)])
    crashed = SeenScope.new("salesforce", "contacts")
    stage(store, crashed, [rec(1).id, rec(2).id, rec(3).id])  # then the process died: no reconcile
    assert store.record_ids("salesforce", "contacts") == {rec(1).id, rec(2).id, rec(3).id}

    again = SeenScope.new("salesforce", "contacts")
    staged = stage(store, again, [rec(1).id])
    assert store.reconcile(again, staged=staged) == 2  # the leftovers are not this run's
    assert store.record_ids("salesforce", "contacts") == {rec(1).id}
    assert store.staged_count() == 3

    later = SeenScope.new("salesforce", "contacts")
    assert store.clear_seen(later) == 3
    assert store.staged_count() == 0


def test_clearing_leftovers_touches_only_that_stream_and_partition(store: Store) -> None:
    stage(store, SeenScope.new("google_calendar", "events", "cal-a"), ["cal-a/e1"])
    stage(store, SeenScope.new("google_calendar", "events", "cal-b"), ["cal-b/e1"])
    stage(store, SeenScope.new("salesforce", "contacts"), ["x"])
    assert store.clear_seen(SeenScope.new("google_calendar", "events", "cal-a")) == 1
    assert store.staged_count() == 2


def test_reconcile_refuses_when_its_staging_was_cleared(store: Store) -> None:
    store.apply_batch([rec(1), rec(2)])
    cursor = CursorUpdate("salesforce", "contacts", "", "after")
    mine = SeenScope.new("salesforce", "contacts")
    staged = stage(store, mine, [rec(1).id, rec(2).id])
    store.clear_seen(SeenScope.new("salesforce", "contacts"))  # another pull of the unit starts
    with pytest.raises(StagingLostError):
        store.reconcile(mine, staged=staged, cursors=[cursor])
    assert store.record_ids("salesforce", "contacts") == {rec(1).id, rec(2).id}
    assert store.get_cursor("salesforce", "contacts") is None


def test_ids_are_staged_with_their_page_or_not_at_all(store: Store) -> None:
    seen = SeenScope.new("salesforce", "contacts")

    def explode(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO CURSORS"):
            raise RuntimeError("crash between records and cursor")

    event.listen(store.engine, "before_cursor_execute", explode)
    try:
        with pytest.raises(RuntimeError, match="crash"):
            store.apply_batch(
                [rec(1)], CursorUpdate("salesforce", "contacts", "", "c"), seen=seen, seen_ids=[rec(1).id]
            )
    finally:
        event.remove(store.engine, "before_cursor_execute", explode)
    assert store.staged_count() == 0 and store.record_ids("salesforce", "contacts") == set()
    with pytest.raises(ValueError, match="SeenScope"):
        store.apply_batch([], seen_ids=["x"])


def test_reconcile_removes_the_lookup_keys_of_what_it_marks(store: Store) -> None:
    # More than one chunk of marked ids (BATCH_LOOKUP = 500), across two projects.
    issues = [issue(i, "P" if i % 2 else "Q") for i in range(1300)]
    store.apply_batch(issues)
    kept = {r.id for r in issues[::3]}
    seen = SeenScope.new("jira", "issues")
    assert store.reconcile(seen, staged=stage(store, seen, sorted(kept))) == len(issues) - len(kept)
    assert store.record_ids("jira", "issues") == kept
    assert {record_id for record_id, _ in store.iter_keys("jira", "issues", ("",))} == kept
    assert {r.id for r in store.records_by_keys("jira", "issues", ["p:P", "p:Q"])} == kept


def test_reconcile_queries_use_indexes(tmp_path: Path) -> None:
    """On SQLite (no statistics): the anti-join probes the staging index by its whole key and walks
    the records of the stream or partition by index, so a reconcile of 500k ids is not quadratic."""
    store = Store(f"sqlite:///{tmp_path / 'plans.sqlite'}")
    store.create_all()
    store.apply_batch([issue(1), issue(2), rec(1), rec(2)])
    store.apply_batch([SourceRecord("google_calendar", "events", "c/e1", T0, {}, partition="c")])
    statements: list[tuple[str, object]] = []

    def capture(conn: object, cursor: object, statement: str, parameters: object, *args: object) -> None:
        if "seen_ids" in statement and not statement.startswith("INSERT"):
            statements.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", capture)
    for seen in (
        SeenScope.new("jira", "issues"),
        SeenScope.new("google_calendar", "events", "c"),
        SeenScope.new("salesforce", "accounts"),  # not keyed: the plain UPDATE
    ):
        store.reconcile(seen, staged=stage(store, seen, ["x"]))
    event.remove(store.engine, "before_cursor_execute", capture)
    plans: dict[str, list[str]] = {}
    with store.engine.connect() as conn:
        for statement, parameters in statements:
            plans[statement] = [row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)]
    store.dispose()
    anti_joins = [plan for statement, plan in plans.items() if "NOT (EXISTS" in statement]
    assert len(anti_joins) == 3  # the keyed streams' chunk query (2) and the plain UPDATE
    probe = (
        "SEARCH seen_ids USING COVERING INDEX ix_seen_ids (source=? AND stream=? AND partition=? AND run=? AND id=?)"
    )
    for plan in anti_joins:
        assert probe in plan
    for plan in plans.values():
        assert not [line for line in plan if line.startswith("SCAN")], plan
    assert any(
        "ix_records_partition_id (source=? AND stream=? AND partition=? AND id>?)" in line
        for p in plans.values()
        for line in p
    )


def test_the_anti_join_probes_the_staging_index_however_many_ids(store: Store) -> None:
    """What keeps a 500k-id reconcile linear on both backends: each record is checked by one seek
    into the staging index, never by scanning the run's staged rows (PostgreSQL picked that when it
    had no statistics of the staging table: minutes for 500k ids)."""
    issues = [issue(i, f"P{i % 7}") for i in range(3000)]
    store.apply_batch(issues)
    seen = SeenScope.new("jira", "issues")
    statements: list[tuple[str, object]] = []

    def capture(conn: object, cursor: object, statement: str, parameters: object, *args: object) -> None:
        if "NOT (EXISTS" in statement:
            statements.append((statement, parameters))

    staged = sum(
        stage(store, seen, [r.id for r in issues[n : n + 500] if r.id[-1] != "7"]) for n in range(0, 3000, 500)
    )
    event.listen(store.engine, "before_cursor_execute", capture)
    try:
        assert store.reconcile(seen, staged=staged) == 300
    finally:
        event.remove(store.engine, "before_cursor_execute", capture)
    # Planned again with the staging table as the reconcile left it (its statistics included).
    explain = "EXPLAIN QUERY PLAN " if store.dialect == "sqlite" else "EXPLAIN "
    with store.engine.connect() as conn:
        plans = ["\n".join(str(row[-1]) for row in conn.exec_driver_sql(explain + s, p)) for s, p in statements]
    assert plans
    for plan in plans:
        if store.dialect == "sqlite":
            assert "ix_seen_ids (source=? AND stream=? AND partition=? AND run=? AND id=?)" in plan, plan
        else:
            seeks = "ix_seen_ids" in plan and "(id = (records.id)::text)" in plan
            assert seeks or "Hash Anti Join" in plan or "Merge Anti Join" in plan, plan


def test_create_all_brings_an_older_store_up_to_date(store: Store) -> None:
    store.apply_batch([rec(1), rec(2)])
    with store.engine.begin() as conn:  # what a store of the previous version has
        conn.execute(text("DROP TABLE seen_ids"))
        conn.execute(text("DROP INDEX ix_records_partition_id"))
        conn.execute(text("CREATE INDEX ix_records_partition ON records (source, stream, partition)"))
    store.create_all()
    indexes = {i["name"] for i in inspect(store.engine).get_indexes("records")}
    assert "ix_records_partition_id" in indexes and "ix_records_partition" not in indexes
    seen = SeenScope.new("salesforce", "contacts")
    assert store.reconcile(seen, staged=stage(store, seen, [rec(1).id])) == 1


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


def test_an_engagement_is_rewritten_exactly_when_a_field_changes(store: Store) -> None:
    """The engagement digest (orjson's form of the dataclass) sees a change anywhere in the model,
    however deep, and nothing else: an equal engagement built again is not rewritten."""
    now = datetime(2026, 11, 22, 9, tzinfo=UTC)
    records = world_records(generate_world("small", 2, now))
    mapping = load_mapping("mappings/default.yaml")
    view = unify(Snapshot.from_records(records), mapping, now)
    store.save_view(view, now)
    again = unify(Snapshot.from_records(list(reversed(records))), mapping, now)
    assert again.engagements == view.engagements and again.engagements[0] is not view.engagements[0]
    assert {engagement_digest(e) for e in again.engagements} == {engagement_digest(e) for e in view.engagements}
    before = {e["summary"]["id"]: e for e in store.load_engagements()}
    first = next(e for e in view.engagements if e.health.reasons)
    reasons = first.health.reasons
    deep = replace(first.health, reasons=(*reasons[:-1], replace(reasons[-1], text=reasons[-1].text + "!")))
    edited = [
        replace(first, health=deep),  # a reason's text, three levels down
        replace(first, progress=replace(first.progress, by_category={**first.progress.by_category, "new": -1})),
        replace(first, close_date=None if first.close_date else now.date()),
    ]
    for changed in edited:
        assert engagement_digest(changed) != engagement_digest(first)
        store.save_engagements([changed], now)
        assert {e["summary"]["id"]: e for e in store.load_engagements()}[first.id] != before[first.id]
        store.save_engagements([first], now)
        assert {e["summary"]["id"]: e for e in store.load_engagements()}[first.id] == before[first.id]


def test_records_by_keys_reads_many_keys_each_record_once(store: Store) -> None:
    """Thousands of keys in one read (one parameter), records with several matching keys once."""
    rows = [
        SourceRecord("salesforce", "contacts", f"003{i:015d}", T0, {"email": f"p{i}@x.example", "account": f"a{i % 7}"})
        for i in range(3000)
    ]
    store.apply_batch(rows)
    keys = [f"e:p{i}@x.example" for i in range(3000)] + [f"a:a{i}" for i in range(0, 7, 2)]  # most match twice
    found = [r.id for r in store.records_by_keys("salesforce", "contacts", [*keys, "e:nobody@x.example"])]
    assert sorted(found) == sorted(r.id for r in rows) and len(found) == len(set(found))
    assert list(store.records_by_keys("salesforce", "contacts", [])) == []
    store.apply_batch([replace(rows[0], deleted=True)])
    assert rows[0].id not in {r.id for r in store.records_by_keys("salesforce", "contacts", keys)}
    assert {r.id: r for r in store.records_by_keys("salesforce", "contacts", keys)}[rows[1].id] == rows[1]


def test_runs_are_recorded(store: Store) -> None:
    run = store.start_run(full=True)
    store.finish_run(run, "completed", {"pulled": 3})
    last = store.last_runs(1)[0]
    assert last["status"] == "completed" and last["stats"] == {"pulled": 3} and last["full"] is True
