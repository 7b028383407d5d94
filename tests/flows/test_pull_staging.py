"""``pull_unit`` and the staging of ids a reconciling read saw, on SQLite and PostgreSQL, driven by a
scripted connector: which batches count, partition scope, and a run that dies mid-read."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from connectors.base import WorkUnit
from connectors.incremental import Batch
from engagement.records import SourceRecord, iso
from flows.engine import RECONCILED_SUFFIX, StreamStats, pull_unit
from store import Store

UPPER = datetime(2026, 11, 2, 9, tzinfo=UTC)
T0 = UPPER - timedelta(days=1)


def contact(i: int, deleted: bool = False) -> SourceRecord:
    return SourceRecord("salesforce", "contacts", f"c{i}", T0 + timedelta(minutes=i), {"i": i}, deleted)


def event(i: int, calendar: str) -> SourceRecord:
    return SourceRecord("google_calendar", "events", f"{calendar}/e{i}", T0, {}, partition=calendar)


class ReadFailedError(RuntimeError):
    pass


@dataclass
class Scripted:
    """A connector that hands over the batches it is given, and dies after ``fail_after`` of them."""

    source: str
    batches: list[Batch]
    fail_after: int | None = None
    reads: list[tuple[str | None, bool]] = field(default_factory=list)

    def work_units(self) -> list[WorkUnit]:
        return []

    def read(
        self, unit: WorkUnit, cursor: str | None, *, upper: datetime, full: bool, reconcile: bool
    ) -> Iterator[Batch]:
        self.reads.append((cursor, reconcile))
        for n, batch in enumerate(self.batches):
            if n == self.fail_after:
                raise ReadFailedError("the API went away")
            yield batch

    def close(self) -> None: ...


def pull(store: Store, connector: Scripted, unit: WorkUnit, *, reconcile: bool = True) -> StreamStats:
    stats = StreamStats(connector.source, unit.stream)
    pull_unit(connector, store, unit, upper=UPPER, full=False, reconcile=reconcile, stats=stats)
    return stats


def cursor_of(i: int) -> str:
    return iso(contact(i).updated_at) or ""


def full_read(ids: list[int], page: int = 2) -> list[Batch]:
    """A full read as the Salesforce connector makes it: pages of records that count, then the close."""
    pages = [ids[i : i + page] for i in range(0, len(ids), page)]
    batches = [
        Batch("contacts", "", [contact(i) for i in p], cursor=cursor_of(p[-1]), records_seen=True) for p in pages
    ]
    return [*batches, Batch("contacts", "", [], cursor=iso(UPPER), final=True, reconcile=True)]


def test_a_full_read_marks_what_it_did_not_see_and_moves_both_cursors(store: Store) -> None:
    store.apply_batch([contact(i) for i in range(1, 8)])
    stats = pull(store, Scripted("salesforce", full_read([1, 2, 4, 6, 7])), WorkUnit("contacts"))
    assert stats.reconciled_deleted == 2
    assert store.record_ids("salesforce", "contacts") == {"c1", "c2", "c4", "c6", "c7"}
    assert store.get_cursor("salesforce", "contacts") == iso(UPPER)
    assert store.get_cursor("salesforce", "contacts" + RECONCILED_SUFFIX) == iso(UPPER)
    assert store.staged_count() == 0


def test_a_read_that_dies_midway_marks_nothing_and_a_rerun_continues(store: Store) -> None:
    store.apply_batch([contact(i) for i in range(1, 8)])
    dying = Scripted("salesforce", full_read([1, 2, 4, 6, 7]), fail_after=2)  # two pages stored, then gone
    with pytest.raises(ReadFailedError):
        pull(store, dying, WorkUnit("contacts"))
    assert store.record_ids("salesforce", "contacts") == {f"c{i}" for i in range(1, 8)}  # nothing marked
    assert store.get_cursor("salesforce", "contacts") == cursor_of(6)  # the last stored page's
    assert store.get_cursor("salesforce", "contacts" + RECONCILED_SUFFIX) is None  # still due
    assert store.staged_count() == 4  # what the dead read staged: c1, c2, c4, c6

    rerun = Scripted("salesforce", full_read([6]))  # had the leftovers counted, c1, c2, c4 would survive
    stats = pull(store, rerun, WorkUnit("contacts"))
    assert rerun.reads == [(cursor_of(6), True)]
    assert stats.reconciled_deleted == 6
    assert store.record_ids("salesforce", "contacts") == {"c6"}
    assert store.staged_count() == 0  # the leftovers were cleared when the re-run started staging


def test_an_id_listing_counts_and_changed_records_count_only_when_flagged(store: Store) -> None:
    store.apply_batch([contact(i) for i in range(1, 6)])
    changed = [contact(5, deleted=False), contact(6), contact(3, deleted=True)]
    listing = [["c1"], ["c2", "c4"]]  # c5 and c6 changed, then went before the listing (or lag)

    def read(records_seen: bool) -> list[Batch]:
        return [
            Batch("contacts", "", changed, cursor=cursor_of(6), records_seen=records_seen),
            *(Batch("contacts", "", [], seen_ids=ids) for ids in listing),
            Batch("contacts", "", [], cursor=iso(UPPER), final=True, reconcile=True),
        ]

    # Salesforce: what exists comes from the listing alone.
    assert pull(store, Scripted("salesforce", read(False)), WorkUnit("contacts")).reconciled_deleted == 2
    assert store.record_ids("salesforce", "contacts") == {"c1", "c2", "c4"}
    # Jira: the live records the read saw count too (search lag); a deleted one never does.
    store.apply_batch([contact(i) for i in range(1, 6)])
    assert pull(store, Scripted("salesforce", read(True)), WorkUnit("contacts")).reconciled_deleted == 0
    assert store.record_ids("salesforce", "contacts") == {"c1", "c2", "c4", "c5", "c6"}


def test_an_incremental_read_without_reconcile_stages_nothing(store: Store) -> None:
    store.apply_batch([contact(i) for i in range(1, 4)])
    batches = [
        Batch("contacts", "", [contact(4)], cursor=cursor_of(4)),
        Batch("contacts", "", [], cursor=iso(UPPER), final=True),
    ]
    stats = pull(store, Scripted("salesforce", batches), WorkUnit("contacts"), reconcile=False)
    assert stats.reconciled_deleted == 0 and store.staged_count() == 0
    assert store.record_ids("salesforce", "contacts") == {"c1", "c2", "c3", "c4"}
    assert store.get_cursor("salesforce", "contacts" + RECONCILED_SUFFIX) is None


def test_a_calendar_reconciles_its_own_partition(store: Store) -> None:
    store.apply_batch([event(i, cal) for cal in ("a@x", "b@x") for i in range(1, 4)])
    batches = [
        Batch("events", "a@x", [event(1, "a@x")], records_seen=True),
        Batch("events", "a@x", [event(2, "a@x")], cursor="token", final=True, records_seen=True, reconcile=True),
    ]
    stats = pull(store, Scripted("google_calendar", batches), WorkUnit("events", "a@x"))
    assert stats.reconciled_deleted == 1
    assert store.record_ids("google_calendar", "events", "a@x") == {"a@x/e1", "a@x/e2"}
    assert store.record_ids("google_calendar", "events", "b@x") == {f"b@x/e{i}" for i in range(1, 4)}
    assert store.get_cursor("google_calendar", "events", "a@x") == "token"


def test_a_batch_of_another_unit_is_refused(store: Store) -> None:
    stray = [Batch("events", "b@x", [event(1, "b@x")], records_seen=True)]
    with pytest.raises(ValueError, match="b@x"):
        pull(store, Scripted("google_calendar", stray), WorkUnit("events", "a@x"))
    assert store.staged_count() == 0
