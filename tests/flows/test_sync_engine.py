"""The whole pull side against the whole sandbox, on SQLite and PostgreSQL.

After a full sync, rounds of random mutations (ties on one timestamp, late commits, deletes,
cancelled and recurring events, a stale sync token) and incremental syncs, the store must hold
exactly what a fresh full sync stores, and unify must give the same engagements.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engagement.mapping import Mapping, load_mapping
from engagement.unify import Snapshot, unify
from flows.engine import run_sync
from sandbox.app import Sandbox, SandboxOptions
from store import Store
from tests.sandbox_settings import settings_for

ROUNDS = int(os.environ.get("ACCORD_TEST_SYNC_ROUNDS", "6"))


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxOptions(size="small", seed=21)) as sb:
        yield sb
        assert sb.emulator_errors() == []


@pytest.fixture(scope="module")
def mapping() -> Mapping:
    return load_mapping("mappings/default.yaml")


def live(store: Store) -> dict[tuple[str, str, str], object]:
    return {(r.source, r.stream, r.id): (r.data, r.partition) for r in store.iter_records()}


def fresh_full(sandbox: Sandbox, mapping: Mapping, directory: Path) -> Store:
    truth = Store(f"sqlite:///{directory / 'truth.sqlite'}")
    truth.create_all()
    report = run_sync(settings_for(sandbox, truth.url), mapping, truth, full=True)
    assert not report.failed, [s.error for s in report.failed]
    return truth


def test_incremental_sync_equals_a_fresh_full_sync(
    sandbox: Sandbox, mapping: Mapping, store: Store, tmp_path: Path
) -> None:
    settings = settings_for(sandbox, store.url)
    first = run_sync(settings, mapping, store, full=True)
    assert not first.failed, [s.error for s in first.failed]
    calendars = sorted({u.email for u in sandbox.world.users})
    for round_ in range(ROUNDS):
        sandbox.mutate(count=8, seed=1000 + round_, late_share=0.25)
        if round_ % 3 == 1:
            sandbox.calendar_store.invalidate_sync_tokens(calendars[round_ % len(calendars)])
        report = run_sync(settings, mapping, store, reconcile=(round_ % 2 == 1))
        assert not report.failed, [s.error for s in report.failed]
    sandbox.release_pending()
    run_sync(settings, mapping, store, reconcile=True)

    truth = fresh_full(sandbox, mapping, tmp_path)
    assert live(store) == live(truth)
    now = datetime.now(UTC)
    ours = unify(Snapshot.from_records(store.iter_records()), mapping, now)
    theirs = unify(Snapshot.from_records(truth.iter_records()), mapping, now)
    assert ours == theirs
    assert len(ours.engagements) == sandbox.salesforce_store.counts()["Opportunity"]
    truth.dispose()


def test_an_incremental_sync_makes_only_the_calls_the_changes_need(
    sandbox: Sandbox, mapping: Mapping, tmp_path: Path
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'calls.sqlite'}")
    store.create_all()
    settings = settings_for(sandbox, store.url)
    assert not run_sync(settings, mapping, store, full=True).failed
    run_sync(settings, mapping, store, reconcile=False)  # settle: late changes from other tests
    changes = sandbox.mutate(count=2, seed=77, late_share=0.0)
    since = sandbox.log.last_seq
    report = run_sync(settings, mapping, store, reconcile=False)
    assert not report.failed
    calls = sandbox.log.summary(since_seq=since)
    calendars = sum(1 for (_, stream, _) in store.cursors("google_calendar") if stream == "events")
    # Salesforce: one login, one queryAll per object; Jira: client start-up and one search;
    # Calendar: the calendar list and one syncToken call per calendar. Nothing else.
    assert calls["salesforce"] == {"GET query_all": 6, "POST oauth2.token": 1}
    assert calls["jira"].get("POST search_jql", 0) + calls["jira"].get("GET search_jql", 0) == 1
    assert set(calls["jira"]) <= {
        "GET serverInfo",
        "GET myself",
        "GET search_jql",
        "POST search_jql",
        "GET field",
    }
    assert calls["google_calendar"] == {"GET calendarList.list": 1, "GET events.list": calendars}
    # Every visible change was pulled (a change to an unmapped field is pulled, then found unchanged).
    pulled = {s: sum(x.pulled for x in r.streams.values()) for s, r in report.sources.items()}
    visible = {c.api for c in changes if c.kind != "hard_delete"}  # hard deletes wait for reconciliation
    assert visible and all(pulled[api] > 0 for api in visible), (pulled, changes)
    store.dispose()
