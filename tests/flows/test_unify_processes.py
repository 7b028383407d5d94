"""The unify tail in two processes (``ACCORD_UNIFY_PROCESSES=2``, ``flows.engine.UnifyPool``) stores
and reports exactly what one process does, on SQLite and PostgreSQL; an in-memory store stays in one
process; a child that fails or is killed is reported by partition, and the next run recomputes."""

from __future__ import annotations

import logging
import os
import select as io_select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from accord.settings import AccordSettings
from engagement.mapping import Mapping, load_mapping
from engagement.partition import load_directory, partition_of
from engagement.records import WorkItem, project_key
from flows.engine import (
    EarlyUnify,
    SourceReport,
    SyncReport,
    UnifyFailedError,
    UnifyPool,
    run_sync,
    threaded_pull_all,
)
from flows.failures import FailureContext, explain
from sandbox.app import Sandbox, SandboxOptions
from store import Store
from store.schema import engagements, records, touched
from tests.sandbox_settings import settings_for

NOW = datetime.now(UTC).replace(microsecond=0)  # the pull's upper bound: after the sandbox's data


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxOptions(size="small", seed=21)) as sb:
        yield sb


@pytest.fixture(scope="module")
def mapping() -> Mapping:
    return load_mapping("mappings/default.yaml")


def _settings(sandbox: Sandbox, url: str, processes: int) -> AccordSettings:
    return settings_for(sandbox, url).model_copy(update={"unify_processes": processes, "unify_split_from": 0})


def _table(store: Store) -> dict[str, tuple[Any, ...]]:
    """Every stored engagement, every column."""
    with store.engine.connect() as conn:
        return {row.id: tuple(row) for row in conn.execute(select(engagements))}


def _reported(report: SyncReport) -> dict[str, Any]:
    """What a run reports of its engagements: the summary, its rows, the set of health changes."""
    assert report.view is not None
    # Not compared: how many clients were unified while the Jira pull went on (its timing decides).
    summary = {
        k: v
        for k, v in report.to_json().items()
        if k not in ("seconds", "sources", "health_changes", "clients_during_pull")
    }
    changes = sorted(report.health_changes, key=lambda c: (c.engagement_id, str(c.previous), str(c.current)))
    return summary | {"rows": report.view.rows, "changes": changes}


def _disturb(store: Store) -> None:
    """Stale digests and health on some engagements of each partition, and stored engagements whose
    Opportunity is gone, in each partition: the next tail rewrites the first and drops the second."""
    clients = store.engagement_clients()
    with store.engine.begin() as conn:
        for k in (0, 1):
            mine = sorted(i for i, client in clients.items() if partition_of(client, 2) == k)
            conn.execute(update(engagements).where(engagements.c.id.in_(mine[:3])).values(digest="stale", health="red"))
            client = clients[mine[0]]
            conn.execute(
                insert(engagements).values(
                    id=f"vanished-{k}",
                    name=f"Vanished {k}",
                    client="Gone",
                    client_id=client,
                    health="amber",
                    stage="Closed",
                    digest="gone",
                    payload={},
                    updated_at="2026-01-01T00:00:00Z",
                )
            )


def test_two_processes_store_and_report_what_one_process_does(
    sandbox: Sandbox, mapping: Mapping, store_factory: Callable[[], Store]
) -> None:
    one, two = store_factory(), store_factory()
    first_one = run_sync(_settings(sandbox, one.url, 1), mapping, one, full=True, now=NOW)
    first_two = run_sync(_settings(sandbox, two.url, 2), mapping, two, full=True, now=NOW)
    assert not first_one.failed and not first_two.failed
    assert first_one.unify_children == [] and [c.partition for c in first_two.unify_children] == [1]
    clients = one.engagement_clients()
    assert {partition_of(c, 2) for c in clients.values()} == {0, 1}  # both processes had engagements
    assert len(clients) == sandbox.salesforce_store.counts()["Opportunity"]
    assert _table(two) == _table(one)
    assert _reported(first_two) == _reported(first_one)

    for store in (one, two):
        _disturb(store)
    assert _table(two) == _table(one)
    again_one = run_sync(_settings(sandbox, one.url, 1), mapping, one, now=NOW)
    again_two = run_sync(_settings(sandbox, two.url, 2), mapping, two, now=NOW)
    dropped = {c.engagement_id for c in again_two.health_changes if c.current is None}
    assert dropped == {"vanished-0", "vanished-1"}  # the child dropped its partition's
    assert sum(1 for c in again_two.health_changes if c.current is not None) == 6 - _still_red(one)
    assert _table(two) == _table(one)
    assert _reported(again_two) == _reported(again_one)


def _still_red(store: Store) -> int:
    """Of the six engagements ``_disturb`` marked red, those whose health is red anyway (no change)."""
    clients = store.engagement_clients()
    disturbed = [i for k in (0, 1) for i in sorted(i for i, c in clients.items() if partition_of(c, 2) == k)[:3]]
    table = _table(store)
    return sum(1 for i in disturbed if table[i][4] == "red")  # columns: id, name, client, client_id, health


def test_clients_are_unified_while_the_jira_pull_goes_on(
    sandbox: Sandbox, mapping: Mapping, store_factory: Callable[[], Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jira pulled in the child, its end held back (an event, not a delay) until a round has unified
    clients here: what is stored and reported is what one process stores, every client recomputed,
    some of them during the pull."""
    one, two = store_factory(), store_factory()
    first_one = run_sync(_settings(sandbox, one.url, 1), mapping, one, full=True, now=NOW)
    unified = threading.Event()
    real = EarlyUnify.unify_settled

    def unify_settled(self: EarlyUnify, pending: frozenset[str]) -> int:
        done = real(self, pending)
        if done:
            unified.set()
        return done

    monkeypatch.setattr(EarlyUnify, "unify_settled", unify_settled)
    settings = _settings(sandbox, two.url, 2)
    pull_all = threaded_pull_all(settings, mapping, two)

    def held_jira(
        sources: tuple[str, ...], upper: datetime, full: bool, reconcile: bool | None
    ) -> dict[str, Callable[[], SourceReport]]:
        waits = pull_all(sources, upper, full, reconcile)
        jira = waits["jira"]

        def held() -> SourceReport:
            report = jira()
            if not unified.wait(timeout=120):
                raise AssertionError("no round unified clients while the Jira pull was held")
            return report

        return {**waits, "jira": held}

    report = run_sync(settings, mapping, two, full=True, now=NOW, pull_all=held_jira)
    assert not report.failed and report.sources["jira"].in_child
    assert report.view is not None and report.view.clients_recomputed is None
    assert report.view.clients_during_pull > 0
    assert _table(two) == _table(one)
    assert _reported(report) == _reported(first_one)


@pytest.mark.parametrize(
    ("url", "shared"),
    [
        ("sqlite://", False),
        ("sqlite:///:memory:", False),
        ("sqlite:///file:accord?mode=memory&cache=shared&uri=true", False),
        ("sqlite:////var/lib/accord/accord.sqlite", True),
        ("postgresql+psycopg2://accord@db/accord", True),
    ],
)
def test_which_stores_other_processes_can_open(url: str, shared: bool) -> None:
    store = Store(url)
    try:
        assert store.shared_across_processes is shared
        if not shared:
            assert UnifyPool.start(store, 2) is None
    finally:
        store.dispose()


def _no_pull(
    sources: tuple[str, ...], upper: datetime, full: bool, reconcile: bool | None
) -> dict[str, Callable[[], SourceReport]]:
    return {}


def test_an_in_memory_store_unifies_in_one_process(sandbox: Sandbox, mapping: Mapping, tmp_path: Path) -> None:
    synced = _synced(sandbox, mapping, tmp_path / "synced.sqlite")
    reference = _table(synced)
    # An in-memory SQLite database is private to its connection (each thread gets its own): filled
    # and unified in this thread, as a test or a demo does.
    store = Store("sqlite://")
    store.create_all()
    try:
        store.apply_batch(list(synced.iter_records(include_deleted=True)))
        settings = _settings(sandbox, store.url, 2)
        report = run_sync(settings, mapping, store, now=NOW, sources=(), pull_all=_no_pull)
        assert report.view is not None and report.unify_children == []
        assert report.view.engagements == len(reference) and _table(store) == reference
    finally:
        store.dispose()
        synced.dispose()


def _synced(sandbox: Sandbox, mapping: Mapping, path: Path) -> Store:
    store = Store(f"sqlite:///{path}")
    store.create_all()
    report = run_sync(_settings(sandbox, store.url, 2), mapping, store, full=True, now=NOW)
    assert not report.failed
    return store


def test_a_failing_child_names_its_partition_and_the_next_run_recomputes(
    sandbox: Sandbox, mapping: Mapping, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _synced(sandbox, mapping, tmp_path / "failing.sqlite")
    reference = _table(store)
    # An issue only partition 1's engagements read, stored so that reading it fails (a bug's stand-in).
    directory = load_directory(store, mapping)
    projects: dict[int, set[str]] = {0: set(), 1: set()}
    for o in directory.opportunities:
        if project := directory.base.project.get(o.id):
            projects[partition_of(o.account_id, 2)].add(project)
    project = sorted(projects[1] - projects[0])[0]
    issue = next(iter(store.records_by_keys("jira", "issues", [project_key(project)])))
    with pytest.raises(AttributeError):
        WorkItem.from_record(replace(issue, data=[]))
    where = (records.c.source == "jira") & (records.c.stream == "issues") & (records.c.id == issue.id)
    with store.engine.begin() as conn:
        conn.execute(update(records).where(where).values(data=[]))
        conn.execute(insert(touched).values(key=project_key(project)))  # as a pull storing it notes it
    _disturb(store)

    settings = _settings(sandbox, store.url, 2)
    with caplog.at_level(logging.ERROR, logger="accord.sync"), pytest.raises(UnifyFailedError) as failed:
        run_sync(settings, mapping, store, now=NOW, sources=("salesforce",))  # the issue stays as it is
    message = str(failed.value)
    assert message.startswith("the engagements of partition 1 of 2: AttributeError: 'list' object has no attribute")
    assert "from_record" in caplog.text  # the child's own traceback, in the log only
    ops = explain(failed.value, FailureContext("sync", settings)).text()  # what the flow run fails with
    assert "partition 1 of 2" in ops and "ACCORD_UNIFY_PROCESSES=1" in ops and "Traceback" not in ops
    run = store.last_runs(1)[0]
    assert run["status"] == "failed" and run["stats"]["error"] == message
    table = _table(store)
    assert "vanished-0" not in table and "vanished-1" in table  # partition 0 done, partition 1 not

    with store.engine.begin() as conn:
        conn.execute(update(records).where(where).values(data=issue.data))
    report = run_sync(settings, mapping, store, now=NOW, sources=("salesforce",))
    assert not report.failed and store.last_runs(1)[0]["status"] == "completed"
    assert _table(store) == reference
    store.dispose()


def test_a_killed_child_is_reported_and_the_next_run_recomputes(
    sandbox: Sandbox, mapping: Mapping, tmp_path: Path
) -> None:
    store = _synced(sandbox, mapping, tmp_path / "killed.sqlite")
    reference = _table(store)
    _disturb(store)
    pool = UnifyPool(store.url, 2)
    try:
        [child] = pool.wait_started()
        os.kill(child, signal.SIGKILL)
        with pytest.raises(UnifyFailedError, match=r"^the engagements of partition 1 of 2: its process ended abruptly"):
            pool.unify_and_store(store, mapping, NOW)
    finally:
        pool.close()
    assert "vanished-1" in _table(store)

    pool = UnifyPool(store.url, 2)
    try:
        summary, changes, children = pool.unify_and_store(store, mapping, NOW)
    finally:
        pool.close()
    assert [c.partition for c in children] == [1] and summary.engagements == len(reference)
    assert "vanished-1" in {c.engagement_id for c in changes}
    assert _table(store) == reference
    store.dispose()


def test_a_small_org_unifies_in_one_process_once_its_size_is_known(
    sandbox: Sandbox, mapping: Mapping, tmp_path: Path
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'small.sqlite'}")
    store.create_all()
    try:
        settings = settings_for(sandbox, store.url).model_copy(update={"unify_processes": 2})
        assert settings.unify_split_from == 200  # the default
        first = run_sync(settings, mapping, store, full=True, now=NOW)
        assert len(first.unify_children) == 1  # an empty store: a first sync of unknown size is split
        held = store.engagement_count()
        assert 0 < held < 200
        again = run_sync(settings, mapping, store, now=NOW)
        assert again.unify_children == [] and again.view is not None and again.view.engagements == held
        pool = UnifyPool.start(store, 2, split_from=held)  # as many as the threshold: split
        assert pool is not None
        pool.close()
        assert UnifyPool.start(store, 2, split_from=held + 1) is None
    finally:
        store.dispose()


HOLDER = """
import sys
from flows.engine import UnifyPool
pool = UnifyPool(sys.argv[1], 2)
print(*pool.wait_started(), flush=True)
sys.stdin.read()  # held open until the test kills this process
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="the parent-death signal (prctl PR_SET_PDEATHSIG) is Linux's; elsewhere a child ends when its input closes",
)
def test_a_unify_child_ends_with_the_sync_process_killed_under_it(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'held.sqlite'}")
    store.create_all()
    store.dispose()
    with subprocess.Popen(  # noqa: S603  # our own interpreter
        [sys.executable, "-c", HOLDER, store.url],
        cwd=Path(__file__).resolve().parents[2],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdout is not None
        [child] = [int(pid) for pid in holder.stdout.readline().split()]
        watch = os.pidfd_open(child)  # readable once the child has ended (before anyone reaps it)
        try:
            assert io_select.select([watch], [], [], 0)[0] == []  # alive while its parent is
            holder.kill()  # SIGKILL: no finally, no pool shutdown
            holder.wait(timeout=30)
            ended, _, _ = io_select.select([watch], [], [], 10)
            assert ended == [watch]
        finally:
            os.close(watch)


UNGUARDED = """
# A script with no `if __name__ == "__main__"` guard, as an ops one-off often is.
import sys
from datetime import UTC, datetime
from pathlib import Path

from accord.settings import DEFAULT_MAPPING
from engagement.mapping import load_mapping
from flows.engine import UnifyPool
from store import Store

with open(sys.argv[2], "a") as runs:
    runs.write("top level ran\\n")
store = Store(sys.argv[1])
store.create_all()
pool = UnifyPool(store.url, 2)
try:
    summary, _, children = pool.unify_and_store(store, load_mapping(DEFAULT_MAPPING), datetime.now(UTC))
finally:
    pool.close()
print(summary.engagements, len(children))
"""


def test_a_script_without_a_main_guard_is_not_run_again_by_the_child(tmp_path: Path) -> None:
    script, runs = tmp_path / "one_off.py", tmp_path / "runs.txt"
    script.write_text(UNGUARDED)
    done = subprocess.run(  # noqa: S603  # our own interpreter
        [sys.executable, str(script), f"sqlite:///{tmp_path / 'one_off.sqlite'}", str(runs)],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", "1"]  # an empty store, unified in two processes
    assert runs.read_text().splitlines() == ["top level ran"]  # by the script's own process only
