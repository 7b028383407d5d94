"""Scale-out: one partition of clients per flow run, so several workers share the engagements.

Clients are split into ``partitions`` by a stable hash of their account id
(``engagement.partition.partition_of``). An ``accord-partition`` run recomputes and stores the
engagements of one partition (``work="engagements"``) or plans and applies its pushes
(``work="push"``). Each run first takes the one slot of the Prefect global concurrency limit
``accord-partition-<k>-of-<n>``: two runs of the same partition never overlap, whichever workers
pick them up; runs of different partitions go in parallel. A run that dies keeps its slot until
its lease expires (``LEASE_SECONDS``), then the partition is free again. The outbox claims each
write before making it (compare and set), so even a push outside this scheme cannot write twice.

``accord-sync`` with ``partitions=N`` pulls once, then starts N ``accord-partition`` runs through
the ``accord-partition`` deployment (any worker of the pool takes them) and waits for them;
``accord-push`` with ``partitions=N`` does the same for the pushes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import FlowRun
from prefect.concurrency.sync import concurrency

from accord.settings import AccordSettings, load_settings
from engagement.mapping import Mapping, load_mapping
from engagement.records import iso
from flows.budget import budget_throttles
from flows.engine import unify_and_store
from flows.failures import FailureContext, explain, publish
from flows.push_engine import push
from flows.report import engagement_markdown, plan_markdown, push_markdown
from store import Store

log = logging.getLogger("accord.partition")
DEPLOYMENT = "accord-partition/accord-partition"
LEASE_SECONDS = 300.0  # a crashed run's slot frees itself after this (Prefect renews it while alive)
Work = Literal["engagements", "push"]
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class PartitionFailedError(RuntimeError):
    """Some partition runs did not complete; the others' work is stored."""


def lock_name(partition: int, partitions: int) -> str:
    return f"accord-partition-{partition}-of-{partitions}"


def ensure_locks(partitions: int) -> list[str]:
    """Create the one-slot global concurrency limit of every partition (kept if it exists)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    names = [lock_name(k, partitions) for k in range(partitions)]
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                with suppress(ObjectAlreadyExists):  # another run created it first
                    client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    return names


def _check(partition: int, partitions: int) -> None:
    if partitions < 1 or not 0 <= partition < partitions:
        raise ValueError(f"partition {partition} of {partitions}: expected 0 <= partition < partitions")


@flow(name="accord-partition", flow_run_name="{work}-{partition}-of-{partitions}")
def partition_flow(partition: int, partitions: int, work: Work = "engagements") -> dict[str, Any]:
    """Recompute and store the engagements of one partition of clients, or push for them."""
    _check(partition, partitions)
    logger = get_run_logger()
    context = FailureContext("push" if work == "push" else "sync")
    try:
        settings = context.settings = load_settings()
        context.mapping_path = str(settings.mapping)
        mapping = context.mapping = load_mapping(context.mapping_path)
        with budget_throttles(settings):
            return _run_partition(partition, partitions, work, settings, mapping, logger)
    except PartitionFailedError:
        raise
    except Exception as exc:
        # In ops words (what, likely cause, what to check, what is kept), like the sync and push runs.
        raise PartitionFailedError(publish(context.stage, [explain(exc, context)], logger)) from exc


def _run_partition(
    partition: int, partitions: int, work: Work, settings: AccordSettings, mapping: Mapping, logger: Any
) -> dict[str, Any]:
    mapping_path = Path(settings.mapping)
    ensure_locks(partitions)
    waited = time.perf_counter()
    with concurrency(lock_name(partition, partitions), occupy=1, strict=True, lease_duration=LEASE_SECONDS):
        started = datetime.now(UTC)
        logger.info(
            "partition %d of %d: %s (waited %.1f s for the partition)",
            partition,
            partitions,
            work,
            time.perf_counter() - waited,
        )
        store = Store(settings.database_url)
        store.create_all()
        try:
            result: dict[str, Any] = {"partition": partition, "partitions": partitions, "work": work}
            if work == "engagements":
                # The org-wide counts do not depend on the partition: partition 0's run gives them.
                from flows.sync import emit_health_events, send_health_events_after_failure

                try:
                    summary, changes = unify_and_store(
                        store, mapping, started, partition=partition, partitions=partitions, counts=partition == 0
                    )
                except Exception:
                    send_health_events_after_failure(store, logger)  # of the groups stored before it failed
                    raise
                result["health_events"] = emit_health_events(store, logger)
                create_markdown_artifact(
                    key=f"accord-partition-{partition}",
                    markdown="\n".join(
                        [
                            f"# Partition {partition} of {partitions}",
                            "",
                            *engagement_markdown(summary.rows, total=summary.engagements),
                        ]
                    ),
                    description=f"Accord engagements of partition {partition} of {partitions}",
                )
                result |= {"engagements": summary.engagements, "health": summary.health_counts()}
                if partition == 0:
                    result["meetings_internal"] = summary.meetings_internal
                    result["issues_without_engagement"] = summary.issues_without_engagement
                result["health_changes"] = len(changes)
            else:
                report = push(store, settings, mapping, mapping_path, partition=partition, partitions=partitions)
                create_markdown_artifact(
                    key=f"accord-push-{partition}",
                    markdown=plan_markdown(report.plan) + "\n\n" + push_markdown(report),
                    description=f"Accord push of partition {partition} of {partitions}",
                )
                result |= {"planned": report.plan.planned, "failed": report.failed}
                if report.failed:
                    raise PartitionFailedError(
                        f"partition {partition}: {report.failed} writes failed and stay queued for the next push"
                    )
        finally:
            store.dispose()
        finished = datetime.now(UTC)
    result |= {"worker": os.environ.get("ACCORD_WORKER_NAME"), "started": iso(started), "finished": iso(finished)}
    logger.info("partition %d of %d done: %s", partition, partitions, result)
    return result


def fan_out(
    partitions: int,
    work: Work,
    *,
    wait: Callable[[UUID], str] | None = None,
    deployment: str = DEPLOYMENT,
) -> dict[int, str]:
    """Start one ``accord-partition`` run per partition through the deployment (any worker takes
    them) and wait for all; returns each partition's final state name."""
    from prefect.deployments import run_deployment

    ensure_locks(partitions)
    ids: dict[int, UUID] = {}
    for k in range(partitions):
        run = run_deployment(
            deployment,
            parameters={"partition": k, "partitions": partitions, "work": work},
            flow_run_name=f"{work}-{k}-of-{partitions}",
            timeout=0,
            as_subflow=True,
        )
        assert isinstance(run, FlowRun)  # called from sync code: the sync variant answers
        ids[k] = run.id
    waiter = wait or wait_for_run
    return {k: waiter(flow_run_id) for k, flow_run_id in ids.items()}


def wait_for_run(flow_run_id: UUID, poll_seconds: float = 2.0) -> str:
    """The final state name of a flow run, polling the API (no deadline: the sync's own timeout
    and the partitions' leases bound it)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.type.value in TERMINAL:
                return str(run.state.name)
            time.sleep(poll_seconds)  # polling another process's run through the API


def check(states: dict[int, str], work: Work) -> None:
    failed = {k: s for k, s in states.items() if s != "Completed"}
    if failed:
        listed = ", ".join(f"partition {k}: {s}" for k, s in sorted(failed.items()))
        raise PartitionFailedError(
            f"{work}: {len(failed)} of {len(states)} partition runs did not complete ({listed}); "
            "the others are stored, and the next run retries all partitions"
        )
