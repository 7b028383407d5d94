"""Push against the whole sandbox: exactly once under re-runs, crashes at every step, and faults.

Counted from the sandbox's own records: Salesforce Tasks by External ID, Jira comments by their
Accord marker, calendar events by their private ``accordKey``; no duplicate and no missing write.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select

from accord.settings import AccordSettings
from connectors.base import TargetWriter, WriteRequest, WriteResult
from engagement.mapping import Mapping, load_mapping
from flows.engine import run_sync
from flows.push_engine import (
    PLANNING,
    Planning,
    TargetReport,
    apply_concurrently,
    build_writer,
    plan_push,
    push,
)
from sandbox.app import Sandbox, SandboxOptions
from sandbox.client import SandboxControl, SandboxControlError
from sandbox.generator import generate_world
from store import OutboxItem, Store
from store.schema import metadata
from tests.sandbox_settings import settings_for

MAPPING_PATH = Path("mappings/default.yaml")


class SimulatedCrash(BaseException):
    """Stands in for the process dying: not an Exception, so nothing on the way catches it."""


@pytest.fixture(scope="module")
def mapping() -> Mapping:
    return load_mapping(MAPPING_PATH)


@dataclass
class World:
    sandbox: Sandbox
    store: Store
    settings: AccordSettings


@pytest.fixture
def world(store: Store, mapping: Mapping) -> Iterator[World]:
    with Sandbox(SandboxOptions(size="small", seed=31)) as sandbox:
        settings = settings_for(sandbox, store.url)
        report = run_sync(settings, mapping, store, full=True)
        assert not report.failed
        yield World(sandbox, store, settings)
        assert sandbox.emulator_errors() == []


def target_counts(sandbox: Sandbox, mapping: Mapping) -> dict[str, Counter[str]]:
    """Writes as the targets hold them, by idempotency key."""
    written = sandbox.written(mapping.push.salesforce.task_external_id)
    return {target: Counter(keys) for target, keys in written.items()}


def expected_keys(items: Iterable[OutboxItem]) -> dict[str, set[str]]:
    """The keys ``items`` put in the targets, per target (status updates of opportunities carry none)."""
    keys: dict[str, set[str]] = {"salesforce": set(), "jira": set(), "google_calendar": set()}
    for item in items:
        if item.kind == "task":
            keys["salesforce"].add(item.key)
        elif item.kind == "jira_status_comment":
            keys["jira"].add(item.key)
        elif item.kind == "calendar_event":
            keys["google_calendar"].add(item.key)
    return keys


def queued_keys(store: Store) -> dict[str, set[str]]:
    """``expected_keys`` of everything pushes have queued and not superseded."""
    return expected_keys(i for i in store.outbox.items() if i.state != "superseded")


def assert_exactly_once(sandbox: Sandbox, mapping: Mapping, keys: dict[str, set[str]]) -> None:
    held = target_counts(sandbox, mapping)
    for target, wanted in keys.items():
        duplicates = {k: n for k, n in held[target].items() if n > 1}
        assert not duplicates, (target, duplicates)
        assert wanted <= set(held[target]), (target, sorted(wanted - set(held[target]))[:5])


def test_push_writes_once_and_the_second_push_is_empty(world: World, mapping: Mapping) -> None:
    plan = plan_push(world.store, mapping, MAPPING_PATH)
    assert world.store.outbox.counts() == {}  # planning writes nothing
    kinds = Counter(i.kind for i in plan.items)
    assert kinds["task"] > 0 and kinds["calendar_event"] > 0 and kinds["jira_status_comment"] > 0
    assert kinds["opportunity_status"] == kinds["jira_status_comment"] + sum(
        1 for s in plan.skipped if s.what == "Jira status comment"
    )
    report = push(world.store, world.settings, mapping, MAPPING_PATH)
    assert report.failed == 0, report.to_json()
    assert report.plan.planned == len(plan.items) and queued_keys(world.store) == expected_keys(plan.items)
    assert_exactly_once(world.sandbox, mapping, expected_keys(plan.items))
    assert {state for t in world.store.outbox.counts().values() for state in t} == {"delivered"}
    # The control API tells out-of-process tests (the cluster) the same counts.
    control = SandboxControl(world.sandbox.info()["control"])
    ext = mapping.push.salesforce.task_external_id
    assert control.written(ext) == world.sandbox.written(ext) and all(control.written(ext).values())
    with pytest.raises(SandboxControlError, match="400"):
        control.written("Id FROM Task --")
    # Salesforce went in batches: at most ceil(n/200) upserts for the tasks.
    tasks = kinds["task"]
    upserts = world.sandbox.log.count(api="salesforce", endpoint="composite.upsert")
    assert upserts <= -(-tasks // 200) + 1

    # First attempts skip the writers' look-ups: one comment and one property per status, no reads.
    assert world.sandbox.log.count(api="jira", endpoint="comments.list") == 0
    assert world.sandbox.log.count(api="salesforce", endpoint="query_all", method="GET") == 0
    since = world.sandbox.log.last_seq
    again = push(world.store, world.settings, mapping, MAPPING_PATH)
    assert again.plan.planned == 0 and again.plan.retries == 0 and again.queued == 0
    writes = [r for r in world.sandbox.log.records(since_seq=since) if r.method in ("POST", "PATCH", "PUT", "DELETE")]
    assert [(r.api, r.endpoint) for r in writes if r.endpoint not in ("oauth2.token",)] == []


class CrashPoints:
    """Counts the steps of a push (each group's enqueue, each claim, each writer call, each outbox
    mark) and crashes at step ``at``, before or after doing it; with a ``kind`` (add, claim, write,
    mark, or one target's writes: "write jira"), at the ``at``-th step of that kind. ``at=0`` only
    counts. Groups of ``GROUP`` engagements (two or three), so a crash can fall between two groups'
    enqueues."""

    GROUP = 5
    KINDS = ("add", "claim", "write", "mark")

    def __init__(self, at: int, when: str, kind: str | None = None) -> None:
        self.at, self.when, self.kind, self.taken = at, when, kind, 0
        self.kinds: Counter[str] = Counter()  # the steps taken, by kind
        self._lock = threading.Lock()  # the targets apply in threads of their own, at the same time

    def step(self, kind: str, do: Callable[[], Any], target: str = "") -> Any:
        with self._lock:
            self.taken += 1
            names = [kind, f"{kind} {target}"] if target else [kind]
            self.kinds.update(names)
            mine = self.taken if self.kind is None else self.kinds[self.kind] if self.kind in names else 0
        if mine == self.at and self.when == "before":
            raise SimulatedCrash
        result = do()
        if mine == self.at and self.when == "after":
            raise SimulatedCrash
        return result

    @property
    def crashes(self) -> bool:
        """Whether step ``at`` (of ``kind``) comes in a push: it did unless the push had fewer."""
        return self.at > 0 and self.at <= (self.taken if self.kind is None else self.kinds[self.kind])

    def writer_factory(self, target: str, settings: AccordSettings, mapping: Mapping) -> TargetWriter:
        points = self
        inner = build_writer(target, settings, mapping)

        class Crashing:
            target = inner.target

            def write(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
                result: list[WriteResult] = points.step("write", lambda: inner.write(requests), inner.target)
                return result

            def close(self) -> None:
                inner.close()

        return Crashing()

    def run(self, store: Store, settings: AccordSettings, mapping: Mapping, now: datetime) -> bool:
        """One push with the crash points in place; True when it ran to the end."""
        outbox = store.outbox
        mark, add, claim = outbox.mark, outbox.add, outbox.claim
        outbox.mark = lambda deliveries: self.step("mark", lambda: mark(deliveries))  # type: ignore[method-assign]  # crash point
        outbox.claim = lambda items, **kw: self.step("claim", lambda: claim(items, **kw))  # type: ignore[method-assign]  # crash point
        outbox.add = lambda *a, **k: self.step("add", lambda: add(*a, **k))  # type: ignore[method-assign]  # crash point
        try:
            factory, size = self.writer_factory, self.GROUP
            push(store, settings, mapping, MAPPING_PATH, now=now, writer_factory=factory, group_size=size)
            return True
        except SimulatedCrash:
            return False
        finally:
            outbox.mark, outbox.add, outbox.claim = mark, add, claim  # type: ignore[method-assign]  # restore


def copy_store(source: Store, target: Store) -> None:
    """``target`` (made by ``create_all``) left holding exactly the rows of ``source``, through
    SQLAlchemy: the same on SQLite and PostgreSQL (where a serial id's sequence moves past the copies)."""
    with source.engine.connect() as read, target.engine.begin() as write:
        for table in reversed(metadata.sorted_tables):
            write.execute(delete(table))  # what create_all wrote (the lookup keys' version cursor)
        for table in metadata.sorted_tables:
            rows = [dict(row._mapping) for row in read.execute(select(table))]
            if rows:
                write.execute(insert(table), rows)
            serial = [c.name for c in table.primary_key.columns if c.autoincrement is True]
            if rows and serial and target.dialect == "postgresql":
                sequence = func.pg_get_serial_sequence(table.name, serial[0])
                write.execute(select(func.setval(sequence, select(func.max(table.c[serial[0]])).scalar_subquery())))


@dataclass
class Synced:
    """The trials' org, synced once: each trial gets a copy of ``store`` and a fresh sandbox rendering
    the same world (``anchor`` fixes its dates), the org ``store`` was synced from."""

    anchor: datetime
    store: Store
    now: datetime
    expected: dict[str, set[str]]  # what a push writes, planned once: planning writes nothing

    OPTIONS = SandboxOptions(size="small", seed=32)

    @classmethod
    def make(cls, store: Store, mapping: Mapping) -> Synced:
        anchor = datetime.now(UTC).replace(second=0, microsecond=0)
        with Sandbox(cls.OPTIONS, world=generate_world(cls.OPTIONS.size, cls.OPTIONS.seed, anchor)) as sandbox:
            assert not run_sync(settings_for(sandbox, store.url), mapping, store, full=True).failed
            assert sandbox.emulator_errors() == []
        now = datetime.now(UTC)
        return cls(anchor, store, now, expected_keys(plan_push(store, mapping, MAPPING_PATH, now).items))

    def sandbox(self) -> Sandbox:
        return Sandbox(self.OPTIONS, world=generate_world(self.OPTIONS.size, self.OPTIONS.seed, self.anchor))


def crash_trial(synced: Synced, store: Store, mapping: Mapping, points: CrashPoints) -> CrashPoints:
    """A fresh org and a copy of its synced store, a crash at one step of the push, a re-run; returns
    ``points``, which counted the steps. (Syncing the org anew each time took ~3 s of a trial's ~4.)"""
    copy_store(synced.store, store)
    now = synced.now
    with synced.sandbox() as sandbox:
        settings = settings_for(sandbox, store.url)
        finished = points.run(store, settings, mapping, now)
        assert finished == (not points.crashes)
        rerun = push(store, settings, mapping, MAPPING_PATH, now=now)
        assert rerun.failed == 0
        assert push(store, settings, mapping, MAPPING_PATH, now=now).queued == 0  # and then nothing more
        assert_exactly_once(sandbox, mapping, synced.expected)
        assert {state for t in store.outbox.counts().values() for state in t} <= {"delivered", "superseded"}
        assert sandbox.emulator_errors() == []
        store.dispose()  # many trials: give the connections back now (PostgreSQL has a client limit)
        return points


def test_a_crash_at_every_step_then_a_rerun_writes_everything_exactly_once(
    store_factory: Callable[[], Store], mapping: Mapping
) -> None:
    """On SQLite a crash at every step, before and after it. On PostgreSQL (a trial there costs twice
    as much) a crash at the first step of each kind, before and after it: the crashes differ in what
    the transaction of each kind of step left behind, which is what the dialect changes. After a
    write, at each target's first: its writer finding what it wrote is the target's own."""
    synced = Synced.make(store_factory(), mapping)
    assert all(synced.expected.values())  # every target has writes to crash in
    counted = crash_trial(synced, store_factory(), mapping, CrashPoints(0, "never"))
    assert counted.taken >= 11  # enqueues of 2 groups at least, and a claim, a write and a mark per target
    assert counted.kinds["add"] >= 2 and all(counted.kinds[kind] >= 3 for kind in ("claim", "write", "mark"))
    if synced.store.dialect == "sqlite":
        trials = [CrashPoints(at, when) for at in range(1, counted.taken + 1) for when in ("before", "after")]
    else:
        trials = [
            CrashPoints(1, when, kind)
            for kind in CrashPoints.KINDS
            for when in ("before", "after")
            if (kind, when) != ("write", "after")
        ]
        trials += [CrashPoints(1, "after", f"write {target}") for target in ("salesforce", "jira", "google_calendar")]
    for points in trials:
        assert crash_trial(synced, store_factory(), mapping, points).crashes


def test_faults_during_a_push_lose_and_duplicate_nothing(world: World, mapping: Mapping) -> None:
    for app in world.sandbox.apps.values():
        app.faults.configure(rate_429=0.1, rate_5xx=0.05, rate_drop=0.03, retry_after_s=0, seed=7)
    push(world.store, world.settings, mapping, MAPPING_PATH)
    expected = queued_keys(world.store)
    for _ in range(5):  # writes that failed after all retries stay queued; later pushes finish them
        if not world.store.outbox.due():
            break
        push(world.store, world.settings, mapping, MAPPING_PATH)
    for app in world.sandbox.apps.values():
        app.faults.reset()
    push(world.store, world.settings, mapping, MAPPING_PATH)
    injected = sum(sum(app.faults.snapshot()["injected"].values()) for app in world.sandbox.apps.values())
    assert injected > 5
    assert world.store.outbox.due() == []
    assert_exactly_once(world.sandbox, mapping, expected)


def test_a_failed_write_keeps_its_error_and_is_retried(world: World, mapping: Mapping) -> None:
    world.sandbox.apps["jira"].expire_credentials()
    report = push(world.store, world.settings, mapping, MAPPING_PATH)
    assert report.targets["jira"].failed > 0 and report.targets["jira"].error
    failed = world.store.outbox.items(state="failed")
    assert failed and all(i.target == "jira" and i.last_error for i in failed)
    world.sandbox.apps["jira"].restore_credentials()  # type: ignore[attr-defined]  # JiraApp has it
    retry = push(world.store, world.settings, mapping, MAPPING_PATH)
    assert retry.targets["jira"].delivered == len(failed) and retry.failed == 0


def test_the_targets_are_applied_at_the_same_time(world: World, mapping: Mapping) -> None:
    """Each writer's first call waits until all three are writing: applied one after another, the
    first would wait alone and its barrier break (30 s), failing the push."""
    together = threading.Barrier(3, timeout=30)

    def writer_factory(target: str, settings: AccordSettings, mapping: Mapping) -> TargetWriter:
        inner = build_writer(target, settings, mapping)

        class Together:
            target = inner.target
            waited = False

            def write(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
                if not self.waited:
                    self.waited = True
                    together.wait()
                return inner.write(requests)

            def close(self) -> None:
                inner.close()

        return Together()

    plan = plan_push(world.store, mapping, MAPPING_PATH)
    report = push(world.store, world.settings, mapping, MAPPING_PATH, writer_factory=writer_factory)
    assert report.failed == 0 and not together.broken
    assert list(report.targets) == ["salesforce", "jira", "google_calendar"]
    assert_exactly_once(world.sandbox, mapping, expected_keys(plan.items))


def test_a_target_that_fails_does_not_stop_the_others_and_the_first_failure_is_raised() -> None:
    finished: list[str] = []
    started = threading.Barrier(3, timeout=30)

    def run(target: str) -> TargetReport:
        started.wait()  # all three running at once
        finished.append(target)
        if target != "salesforce":
            raise RuntimeError(f"{target} broke")
        return TargetReport(target)

    with pytest.raises(RuntimeError, match=r"^jira broke$"):
        apply_concurrently(run, ["salesforce", "jira", "google_calendar"])
    assert sorted(finished) == ["google_calendar", "jira", "salesforce"]
    reports = apply_concurrently(lambda target: TargetReport(target, delivered=len(target)), ["jira", "salesforce"])
    assert list(reports) == ["jira", "salesforce"] and reports["jira"].delivered == 4


def test_jira_is_written_while_the_plan_is_still_being_queued(
    world: World, mapping: Mapping, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a group with Jira writes is queued, the plan waits until the Jira writer has written: a
    Jira apply that began only after the whole plan would never write, and the wait gives up (30 s)."""
    wrote = threading.Event()
    waited: list[bool] = []
    jira_queued: list[bool] = []
    queue, said = world.store.outbox.add, Planning.queued

    def add(items: Sequence[OutboxItem], statuses: Any) -> Any:
        jira_queued.append(any(i.target == "jira" for i in items))
        return queue(items, statuses)

    def queued(planning: Planning) -> None:
        said(planning)
        if not waited and jira_queued[-1]:
            waited.append(wrote.wait(timeout=30))

    def writer_factory(target: str, settings: AccordSettings, mapping: Mapping) -> TargetWriter:
        inner = build_writer(target, settings, mapping)

        class Telling:
            target = inner.target

            def write(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
                results = inner.write(requests)
                if target == "jira":
                    wrote.set()
                return results

            def close(self) -> None:
                inner.close()

        return Telling()

    plan = plan_push(world.store, mapping, MAPPING_PATH)
    monkeypatch.setattr(world.store.outbox, "add", add)
    monkeypatch.setattr(Planning, "queued", queued)
    report = push(world.store, world.settings, mapping, MAPPING_PATH, writer_factory=writer_factory, group_size=2)
    assert waited == [True]
    jira = [i for i in plan.items if i.target == "jira"]
    assert report.failed == 0 and report.targets["jira"].delivered == len(jira) > 0
    assert report.plan.planned == len(plan.items) and report.queued == len(plan.items)
    assert_exactly_once(world.sandbox, mapping, expected_keys(plan.items))


def test_a_write_that_fails_while_the_plan_is_queued_is_tried_once_in_the_run(world: World, mapping: Mapping) -> None:
    """The Jira apply reads what is due again after each queued group: what it already tried and
    failed is due again, and left for the next run, as without the overlap."""

    def writer_factory(target: str, settings: AccordSettings, mapping: Mapping) -> TargetWriter:
        inner = build_writer(target, settings, mapping)

        class Failing:
            target = inner.target

            def write(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
                if target != "jira":
                    return inner.write(requests)
                return [WriteResult(r.key, False, "failed", error="busy", retriable=True) for r in requests]

            def close(self) -> None:
                inner.close()

        return Failing()

    report = push(world.store, world.settings, mapping, MAPPING_PATH, writer_factory=writer_factory, group_size=2)
    failed = world.store.outbox.items(state="failed")
    assert failed and {i.target for i in failed} == {"jira"} and {i.attempts for i in failed} == {1}
    assert report.targets["jira"].attempted == report.targets["jira"].failed == len(failed)
    retry = push(world.store, world.settings, mapping, MAPPING_PATH)
    assert retry.targets["jira"].delivered == len(failed) and retry.failed == 0
    assert retry.plan.retries == len(failed)


def test_only_jira_applies_during_the_plan_and_a_failing_plan_is_raised_after_it() -> None:
    events: list[str] = []
    lock = threading.Lock()

    def run(target: str) -> TargetReport:
        planning = PLANNING.get()
        if planning is not None:  # waits for the plan's end, as an apply with nothing due does
            version, done = planning.now()
            while not done:
                version, done = planning.wait(version)
        with lock:
            events.append(f"{target} {'during' if planning else 'after'}")
        return TargetReport(target)

    def plan(planning: Planning) -> None:
        planning.queued()
        with lock:
            events.append("planned")

    reports = apply_concurrently(run, ["salesforce", "jira", "google_calendar"], plan)
    assert list(reports) == ["salesforce", "jira", "google_calendar"]
    assert events[0] == "planned" and sorted(events[1:]) == ["google_calendar after", "jira during", "salesforce after"]

    def broken(planning: Planning) -> None:
        planning.queued()
        raise RuntimeError("the plan broke")

    events.clear()
    with pytest.raises(RuntimeError, match="the plan broke"):
        apply_concurrently(run, ["salesforce", "jira", "google_calendar"], broken)
    assert events == ["jira during"]  # ended, and nothing else started
