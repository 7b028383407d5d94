"""Scale-out on this machine: a Prefect server on PostgreSQL, two workers sharing the ``accord-local``
pool, Accord's store on PostgreSQL, and the engagements partitioned across ``accord-partition`` runs.

One cluster for the module (starting it costs most of the time). Measurements (start-up, run times,
which worker ran what, the partition locks' hold intervals) go to test-output/cluster/.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import create_engine, func, select, text

from accord.settings import DEFAULT_MAPPING
from engagement.mapping import load_mapping
from flows.cluster import Cluster, ClusterOptions, poll, worker_of
from flows.ui import REPO
from sandbox.client import SandboxControl
from store.schema import engagements, outbox
from tests.conftest import POSTGRES_URL

pytestmark = pytest.mark.postgres

OUTPUT = REPO / "test-output" / "cluster"
PARTITIONS = 4
MEASURED: dict[str, Any] = {}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    options = ClusterOptions(home=tmp_path_factory.mktemp("cluster"), postgres=POSTGRES_URL, schedules=False)
    with Cluster(options) as running:
        MEASURED["start_s"] = dict(running.timings)
        yield running
    MEASURED["stop_s"] = running.timings["stop"]
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "measurements.json").write_text(json.dumps(MEASURED, indent=2, default=str) + "\n")


def _state(run: Any) -> str:
    return str(run.state.type.value) if run.state else "NONE"


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start and end else None


def _holds(cluster: Cluster, run_ids: list[UUID], timeout: float = 60.0) -> dict[UUID, tuple[str, datetime, datetime]]:
    """Each flow run's hold of its partition lock: (limit name, acquired, released), read from the
    ``prefect.concurrency-limit.acquired/released`` events the runs emitted (they arrive asynchronously)."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter, EventResourceFilter

    wanted = {f"prefect.flow-run.{run_id}": run_id for run_id in run_ids}

    def complete() -> dict[UUID, tuple[str, datetime, datetime]] | None:
        event_filter = EventFilter(  # made anew each time: its time window ends when it is made
            event=EventNameFilter(prefix=["prefect.concurrency-limit."]),
            resource=EventResourceFilter(id_prefix=["prefect.concurrency-limit."]),
            related=EventRelatedFilter(id=list(wanted)),
        )
        seen: dict[UUID, dict[str, Any]] = {}
        with cluster.client() as client:
            page = client.read_events(event_filter, limit=50)
            events = list(page.events)
            while page.next_page:
                page = client.read_events_page(str(page.next_page))
                events += page.events
        for event in events:
            name = event.resource.get("prefect.resource.name") or ""
            if not name.startswith("accord-partition-"):
                continue
            for related in event.related:
                run_id = wanted.get(related.id)
                if run_id is not None:
                    seen.setdefault(run_id, {"name": name})[event.event.rsplit(".", 1)[-1]] = event.occurred
        if any({"acquired", "released"} - set(seen.get(r, {})) for r in run_ids):
            return None
        return {r: (seen[r]["name"], seen[r]["acquired"], seen[r]["released"]) for r in run_ids}

    return poll("the partition runs' concurrency-limit events", complete, timeout=timeout)


def _reported_workers(cluster: Cluster, run_ids: list[UUID], timeout: float = 60.0) -> dict[UUID, str]:
    """The worker each partition run reports in its result, from its last log line ("... done: {...}");
    logs reach the API in batches, so poll."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTextSearch

    def reported() -> dict[UUID, str] | None:
        with cluster.client() as client:
            logs = client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=run_ids), text=LogFilterTextSearch(query="done:"))
            )
        found = {}
        for log in logs:
            match = re.search(r"'worker': '([^']*)'", log.message)
            if match and log.flow_run_id is not None:
                found[log.flow_run_id] = match.group(1)
        return found if set(found) == set(run_ids) else None

    return poll("the partition runs' last log lines", reported, timeout=timeout)


def test_the_server_keeps_its_state_in_postgresql_and_two_workers_serve_the_pool(cluster: Cluster) -> None:
    assert set(cluster.online_workers()) == {"accord-worker-1", "accord-worker-2"}
    engine = create_engine(cluster.prefect_database_url.replace("+asyncpg", "+psycopg2"))
    try:
        with engine.connect() as conn:
            deployments = set(conn.execute(text("SELECT name FROM deployment")).scalars())
            workers = set(conn.execute(text("SELECT name FROM worker")).scalars())
    finally:
        engine.dispose()
    assert {"accord-sync", "accord-push", "accord-partition"} <= deployments, "prefect deploy --all, into PostgreSQL"
    assert {"accord-worker-1", "accord-worker-2"} <= workers


def test_a_partitioned_sync_spreads_over_both_workers_and_stores_every_engagement_once(cluster: Cluster) -> None:
    sync = cluster.run("accord-sync/accord-sync", {"full": True, "partitions": PARTITIONS})
    (sync,) = cluster.wait([sync.id], timeout=300)
    assert _state(sync) == "COMPLETED", f"sync {_state(sync)}: {sync.state.message if sync.state else ''}"
    children = cluster.wait([r.id for r in cluster.children(sync.id)], timeout=60)
    MEASURED["partitioned_sync"] = {
        "sync": {"worker": worker_of(sync), "run_s": sync.total_run_time.total_seconds()},
        "partitions": [
            {
                "partition": r.parameters.get("partition"),
                "worker": worker_of(r),
                "state": _state(r),
                "run_s": r.total_run_time.total_seconds(),
                "start": r.start_time,
                "end": r.end_time,
            }
            for r in sorted(children, key=lambda r: r.parameters.get("partition", -1))
        ],
    }

    # One accord-partition run per partition, each of the 4, all completed.
    assert all(r.deployment_id == children[0].deployment_id for r in children)
    assert sorted(r.parameters["partition"] for r in children) == list(range(PARTITIONS))
    assert {r.parameters["partitions"] for r in children} == {PARTITIONS}
    assert {r.parameters.get("work", "engagements") for r in children} == {"engagements"}
    assert [_state(r) for r in children] == ["COMPLETED"] * PARTITIONS

    # The two workers shared the partition runs (each worker labels the runs it submitted), and each
    # run saw its worker's ACCORD_WORKER_NAME (its result, logged in its last line).
    ran = {worker_of(r) for r in children}
    assert ran == {"accord-worker-1", "accord-worker-2"}, f"partition runs by worker: {ran}"
    assert _reported_workers(cluster, [r.id for r in children]) == {r.id: worker_of(r) for r in children}

    # The shared store holds every engagement once: one per Opportunity of the sandbox.
    opportunities = SandboxControl(cluster.sandbox_control).counts()["salesforce"]["Opportunity"]
    engine = create_engine(cluster.store_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(select(engagements.c.id)).scalars().all()
            distinct = conn.execute(select(func.count(func.distinct(engagements.c.id)))).scalar_one()
    finally:
        engine.dispose()
    MEASURED["engagements"] = {"stored": len(stored), "opportunities": opportunities}
    assert len(stored) == distinct == opportunities


def test_a_partitioned_push_writes_each_planned_write_once_and_a_second_push_writes_nothing(
    cluster: Cluster,
) -> None:
    """``accord-push`` with ``partitions`` fans out push runs of ``accord-partition`` over the pool;
    the targets (counted by the sandbox, by idempotency key) hold each planned write exactly once."""
    control = SandboxControl(cluster.sandbox_control)
    ext = load_mapping(DEFAULT_MAPPING).push.salesforce.task_external_id
    assert not any(control.written(ext).values()), "triggers paused: nothing pushed before this test"

    def partitioned_push() -> list[Any]:
        push = cluster.run("accord-push/accord-push", {"partitions": PARTITIONS})
        (push,) = cluster.wait([push.id], timeout=300)
        assert _state(push) == "COMPLETED", f"push {_state(push)}: {push.state.message if push.state else ''}"
        children = cluster.wait([r.id for r in cluster.children(push.id)], timeout=60)
        assert sorted(r.parameters["partition"] for r in children) == list(range(PARTITIONS))
        assert {r.parameters["work"] for r in children} == {"push"}
        assert [_state(r) for r in children] == ["COMPLETED"] * PARTITIONS
        return children

    children = partitioned_push()
    engine = create_engine(cluster.store_url)
    try:
        with engine.connect() as conn:
            items = conn.execute(select(outbox.c.key, outbox.c.target, outbox.c.kind, outbox.c.state)).all()
    finally:
        engine.dispose()
    assert items and {i.state for i in items} == {"delivered"}
    counted = {"task": "salesforce", "jira_status_comment": "jira", "calendar_event": "google_calendar"}
    expected = {target: {i.key for i in items if counted.get(i.kind) == target} for target in counted.values()}
    written = control.written(ext)
    assert {target: set(keys) for target, keys in written.items()} == expected
    assert {n for keys in written.values() for n in keys.values()} == {1}, "a write landed twice"
    MEASURED["partitioned_push"] = {
        "writes": {target: len(keys) for target, keys in written.items()},
        "partitions": [{"partition": r.parameters["partition"], "worker": worker_of(r)} for r in children],
    }

    partitioned_push()  # plans nothing new: every write is already delivered
    assert control.written(ext) == written


def test_two_runs_of_one_partition_never_overlap_while_other_partitions_go_ahead(cluster: Cluster) -> None:
    """Two runs of partition 0 and one of partition 1 start while this test holds partition 0's lock:
    both partition-0 runs are running (waiting) at the same time, partition 1 completes meanwhile;
    once released, the partition-0 runs hold the lock one after the other."""
    from prefect.concurrency.sync import concurrency

    from flows.partition import ensure_locks, lock_name

    def parameters(k: int) -> dict[str, Any]:
        return {"partition": k, "partitions": PARTITIONS, "work": "engagements"}

    with cluster.client():
        ensure_locks(PARTITIONS)
        with concurrency(lock_name(0, PARTITIONS), occupy=1, strict=True):
            first, second = (cluster.run("accord-partition/accord-partition", parameters(0)) for _ in range(2))
            other = cluster.run("accord-partition/accord-partition", parameters(1))

            def waiting_and_other_done() -> bool | None:
                with cluster.client() as client:
                    states = [_state(client.read_flow_run(r.id)) for r in (first, second, other)]
                assert not {"FAILED", "CRASHED", "CANCELLED"} & set(states), f"partition runs 0, 0, 1: {states}"
                return True if states == ["RUNNING", "RUNNING", "COMPLETED"] else None

            poll("both partition-0 runs running and the partition-1 run completed", waiting_and_other_done, 240)
            released = datetime.now().astimezone()
    runs = cluster.wait([first.id, second.id, other.id], timeout=180)
    assert [_state(r) for r in runs] == ["COMPLETED"] * 3, [(r.name, _state(r)) for r in runs]

    holds = _holds(cluster, [r.id for r in runs])
    (n1, a1, r1), (n2, a2, r2), (n3, a3, r3) = (holds[r.id] for r in runs)
    MEASURED["same_partition"] = {
        "released_by_test": released,
        "runs": [
            {"partition": r.parameters["partition"], "worker": worker_of(r), "start": r.start_time, "end": r.end_time}
            | dict(zip(("lock", "acquired", "released"), holds[r.id], strict=True))
            | {"held_s": _seconds(holds[r.id][1], holds[r.id][2])}
            for r in runs
        ],
    }
    assert n1 == n2 == lock_name(0, PARTITIONS) and n3 == lock_name(1, PARTITIONS)
    # The two runs of partition 0 ran at the same time (both were running while the lock was held) ...
    assert runs[0].start_time and runs[1].start_time and runs[0].start_time < released and runs[1].start_time < released
    # ... and held partition 0 one after the other, only after the test let go of it.
    assert r1 <= a2 or r2 <= a1, f"partition 0 held twice at once: {a1}..{r1} and {a2}..{r2}"
    assert min(a1, a2) >= released
    # Partition 1 went ahead while partition 0 was held.
    assert a3 <= r3 <= released


def test_an_active_schedule_gets_its_runs_from_the_servers_scheduler(cluster: Cluster) -> None:
    """The scheduler service fills an active schedule (SQLAlchemy 2.1 broke it in every cycle: no
    scheduled run was ever made). The weekly digest's runs are days away, so nothing runs here."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with cluster.client() as client:
        deployment = client.read_deployment_by_name("accord-digest/accord-digest-weekly")
        (schedule,) = client.read_deployment_schedules(deployment.id)
        runs_of = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        scheduled = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])))
        assert client.read_flow_runs(deployment_filter=runs_of) == []  # paused since deploy: none yet
        client.update_deployment_schedule(deployment.id, schedule.id, active=True)
        try:
            runs = poll(
                "scheduled runs of the weekly digest",
                lambda: client.read_flow_runs(deployment_filter=runs_of, flow_run_filter=scheduled) or None,
                timeout=120,
                interval=1.0,
            )
        finally:
            client.update_deployment_schedule(deployment.id, schedule.id, active=False)
            for run in client.read_flow_runs(deployment_filter=runs_of):
                client.delete_flow_run(run.id)
    starts = sorted(run.expected_start_time for run in runs if run.expected_start_time)
    assert starts and all((s.weekday(), s.hour, s.minute) == (0, 8, 0) for s in starts)  # cron "0 8 * * 1", UTC
    assert all(s > datetime.now(s.tzinfo) for s in starts)
    server_log = (cluster.logs / "server.log").read_text(encoding="utf-8", errors="replace")
    assert "Can't evaluate bulk DML" not in server_log
    MEASURED["scheduled_digest_runs"] = len(runs)


def test_a_completed_sync_triggers_a_push(cluster: Cluster) -> None:
    """``accord-push``'s trigger (prefect.yaml): the server's automation starts a push each time an
    ``accord-sync`` run completes. Triggers are paused since deploy; this test resumes them for one sync."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with cluster.client() as client:
        deployment = client.read_deployment_by_name("accord-push/accord-push")
        automations = client.read_resource_related_automations(f"prefect.deployment.{deployment.id}")
        assert automations, "accord-push has no trigger"
        runs_of = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        before = {run.id for run in client.read_flow_runs(deployment_filter=runs_of)}
        for automation in automations:
            client.resume_automation(automation.id)
        try:
            sync = cluster.run("accord-sync/accord-sync", {})
            (sync,) = cluster.wait([sync.id], timeout=300)
            assert _state(sync) == "COMPLETED", f"sync {_state(sync)}: {sync.state.message if sync.state else ''}"
            triggered = poll(
                "the push the completed sync triggers",
                lambda: [r for r in client.read_flow_runs(deployment_filter=runs_of) if r.id not in before] or None,
                timeout=120,
                interval=1.0,
            )
        finally:
            for automation in automations:
                client.pause_automation(automation.id)
    (push,) = cluster.wait([run.id for run in triggered], timeout=300)
    assert push.created_by is not None and push.created_by.type == "AUTOMATION"
    assert _state(push) == "COMPLETED", f"push {_state(push)}: {push.state.message if push.state else ''}"
    assert push.parameters == {"dry_run": False}
    MEASURED["triggered_push"] = {"worker": worker_of(push), "after_sync_s": _seconds(sync.end_time, push.start_time)}
