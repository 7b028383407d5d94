"""Partition runs (flows/partition.py) through the session's temporary Prefect API: together they
store exactly what one run stores; two runs of one partition never overlap (the one-slot global
concurrency limit); a partition pushes only its own engagements, each write once."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from accord.settings import DEFAULT_MAPPING, load_settings
from engagement.mapping import load_mapping
from engagement.partition import partition_of
from flows.engine import run_sync, unify_and_store
from flows.partition import lock_name, partition_flow
from sandbox.app import Sandbox, SandboxOptions
from store import Store

PARTITIONS = 3


@pytest.fixture
def pulled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[Sandbox, Store]]:
    """A small org pulled into a store, engagements not computed yet (as a partitioned sync leaves it)."""
    with Sandbox(SandboxOptions(size="small", seed=5)) as sb:
        url = f"sqlite:///{tmp_path / 'partitioned.sqlite'}"
        monkeypatch.setenv("ACCORD_SANDBOX_CONTROL", str(sb.info()["control"]))
        monkeypatch.setenv("ACCORD_DATABASE_URL", url)
        store = Store(url)
        store.create_all()
        report = run_sync(load_settings(), load_mapping(DEFAULT_MAPPING), store, full=True, unify=False)
        assert not report.failed and report.view is None
        try:
            yield sb, store
        finally:
            store.dispose()


def _rows(store: Store) -> dict[str, Any]:
    return {e["summary"]["id"]: e for e in store.load_engagements()}


def test_partitions_together_store_what_one_run_stores(prefect_api: None, pulled: tuple[Sandbox, Store]) -> None:
    sandbox, store = pulled
    results = [partition_flow(k, PARTITIONS) for k in range(PARTITIONS)]
    assert sum(r["engagements"] for r in results) == sandbox.salesforce_store.counts()["Opportunity"]
    assert all(r["engagements"] > 0 for r in results)  # the hash spreads the clients
    clients = store.engagement_clients()
    per_partition = Counter(partition_of(client, PARTITIONS) for client in clients.values())
    assert {r["partition"]: r["engagements"] for r in results} == dict(per_partition)
    by_partition = _rows(store)
    # One run over the same records stores the same engagements (the model's exact equality across
    # any partitioning is tests/engagement/test_partition.py; here: the flow stores all of them).
    store.drop_engagements_except(set())
    summary, _ = unify_and_store(store, load_mapping(DEFAULT_MAPPING), datetime.now(UTC))
    single = _rows(store)
    assert set(single) == set(by_partition) and summary.engagements == len(single)
    # The org-wide counts come from partition 0's run alone (the others do not compute them).
    assert results[0]["meetings_internal"] == summary.meetings_internal > 0
    assert results[0]["issues_without_engagement"] == summary.issues_without_engagement
    assert all("meetings_internal" not in r for r in results[1:])
    assert {i: e["summary"]["client"] for i, e in single.items()} == {
        i: e["summary"]["client"] for i, e in by_partition.items()
    }


def test_two_runs_of_one_partition_never_overlap(prefect_api: None, pulled: tuple[Sandbox, Store]) -> None:
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def run(partition: int) -> None:
        try:
            start.wait(timeout=30)
            results.append(partition_flow(partition, PARTITIONS))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    same = sorted((r["started"], r["finished"]) for r in results if r["partition"] == 0)
    assert len(same) == 2
    assert same[0][1] <= same[1][0], f"two runs of {lock_name(0, PARTITIONS)} overlapped: {same}"


def test_a_partition_pushes_only_its_engagements_and_each_write_once(
    prefect_api: None, pulled: tuple[Sandbox, Store]
) -> None:
    _, store = pulled
    for k in range(PARTITIONS):
        partition_flow(k, PARTITIONS)
    clients = store.engagement_clients()
    first = partition_flow(1, PARTITIONS, work="push")
    delivered = store.outbox.items(state="delivered")
    assert first["planned"] > 0 and first["failed"] == 0
    assert {partition_of(clients[i.engagement_id], PARTITIONS) for i in delivered} == {1}
    for k in (0, 2, 1):
        partition_flow(k, PARTITIONS, work="push")
    keys = Counter(i.key for i in store.outbox.items(state="delivered"))
    assert keys and max(keys.values()) == 1
    assert {partition_of(clients[i.engagement_id], PARTITIONS) for i in store.outbox.items()} == set(range(PARTITIONS))
    assert partition_flow(1, PARTITIONS, work="push")["planned"] == 0  # nothing new: never twice
