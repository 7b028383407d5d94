"""Sandbox faults during sync and push: 429 with Retry-After, 5xx, dropped connections, jitter, an
expiring Salesforce session and a stale Calendar sync token. The store ends equal to a fault-free
run's, and the targets hold every write exactly once (counted from the sandbox's own records).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engagement.mapping import Mapping, load_mapping
from engagement.unify import Snapshot, unify
from flows.engine import SyncReport, run_sync
from flows.push_engine import PushReport, push
from flows.report import plan_markdown, push_markdown, sync_markdown
from sandbox.app import Sandbox, SandboxOptions
from store import Store
from tests.chaos.figures import FIGURES, FULL, count_injected, leak_hits, request_log_text, store_texts
from tests.chaos.support import ExpireMidway, clear_faults, converge, inject, tally_writes
from tests.flows.test_push import queued_keys, settings_for, target_counts
from tests.flows.test_sync_engine import fresh_full, live

MAPPING_PATH = Path("mappings/default.yaml")
ROUNDS = 6 if FULL else 2
# The mix, and a heavier one so that every kind (dropped connections too) shows up in a short run.
MIXES: dict[str, dict[str, float]] = {
    "issue": {"rate_429": 0.10, "rate_5xx": 0.03, "rate_drop": 0.01},
    "heavy": {"rate_429": 0.15, "rate_5xx": 0.10, "rate_drop": 0.10},
}


@pytest.fixture(scope="module")
def mapping() -> Mapping:
    return load_mapping(MAPPING_PATH)


def sync_texts(reports: list[SyncReport]) -> dict[str, str]:
    texts = {}
    for i, report in enumerate(reports):
        texts[f"sync markdown {i}"] = sync_markdown(report)
        texts[f"sync report {i}"] = json.dumps(report.to_json(), default=str)
    return texts


def push_texts(reports: list[PushReport]) -> dict[str, str]:
    texts = {}
    for i, report in enumerate(reports):
        texts[f"plan markdown {i}"] = plan_markdown(report.plan)
        texts[f"push markdown {i}"] = push_markdown(report)
        texts[f"push report {i}"] = json.dumps(report.to_json(), default=str)
    return texts


@pytest.mark.parametrize("mix", sorted(MIXES))
def test_a_sync_under_faults_ends_equal_to_a_fault_free_sync(
    mix: str, store: Store, mapping: Mapping, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with Sandbox(SandboxOptions(size="small", seed=41)) as sandbox:
        settings = settings_for(sandbox, store.url)
        reports: list[SyncReport] = []

        def sync(full: bool = False, reconcile: bool | None = None) -> Callable[[int], bool]:
            def attempt(n: int) -> bool:
                reports.append(run_sync(settings, mapping, store, full=full and n == 0, reconcile=reconcile))
                return not reports[-1].failed

            return attempt

        inject(sandbox, seed=410, **MIXES[mix])
        with ExpireMidway(sandbox, "salesforce", after=4) as expiry:
            converge(sync(full=True), "sync")
        assert expiry.fired
        calendars = sorted({u.email for u in sandbox.world.users})
        for round_ in range(ROUNDS):
            sandbox.mutate(count=8, seed=4100 + round_, late_share=0.25)
            sandbox.calendar_store.invalidate_sync_tokens(calendars[round_ % len(calendars)])
            FIGURES.add("stale_sync_tokens")
            with ExpireMidway(sandbox, "salesforce", after=2 + round_ % 3) as expiry:
                converge(sync(reconcile=round_ % 2 == 1), "sync")
            assert expiry.fired
        sandbox.release_pending()
        converge(sync(reconcile=True), "sync")
        injected = count_injected(sandbox)
        clear_faults(sandbox)
        assert injected["429"] > 0 and injected["5xx"] > 0, injected
        assert mix != "heavy" or injected["drop"] > 0, injected

        truth = fresh_full(sandbox, mapping, tmp_path)
        ours, theirs = live(store), live(truth)
        FIGURES.add("losses", len(theirs.keys() - ours.keys()))
        FIGURES.add("records_compared", len(theirs))
        assert ours == theirs
        now = datetime.now(UTC)
        assert unify(Snapshot.from_records(store.iter_records()), mapping, now) == unify(
            Snapshot.from_records(truth.iter_records()), mapping, now
        )
        truth.dispose()
        texts = {**sync_texts(reports), **store_texts(store), "request log": request_log_text(sandbox)}
        texts["logging"] = caplog.text
        assert leak_hits(sandbox, texts) == []
        assert sandbox.emulator_errors() == []


@pytest.mark.parametrize("mix", sorted(MIXES))
def test_a_push_under_faults_writes_what_a_fault_free_push_writes(
    mix: str, store_factory: Callable[[], Store], mapping: Mapping, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    now = datetime.now(UTC)
    # The fault-free twin: the same org, synced and pushed without a fault.
    with Sandbox(SandboxOptions(size="small", seed=42)) as twin:
        twin_store = store_factory()
        twin_settings = settings_for(twin, twin_store.url)
        assert not run_sync(twin_settings, mapping, twin_store, full=True, now=now).failed
        baseline = push(twin_store, twin_settings, mapping, MAPPING_PATH, now=now)
        assert baseline.failed == 0
        wanted = target_counts(twin, mapping)
        assert all(n == 1 for counts in wanted.values() for n in counts.values())

    with Sandbox(SandboxOptions(size="small", seed=42)) as sandbox:
        store = store_factory()
        settings = settings_for(sandbox, store.url)
        assert not run_sync(settings, mapping, store, full=True, now=now).failed
        reports: list[PushReport] = []

        def attempt(n: int) -> bool:
            reports.append(push(store, settings, mapping, MAPPING_PATH, now=now))
            return reports[-1].failed == 0 and not store.outbox.due()

        inject(sandbox, seed=420, **MIXES[mix])
        with ExpireMidway(sandbox, "salesforce", after=2) as expiry:
            converge(attempt, "push")
        injected = count_injected(sandbox)
        clear_faults(sandbox)
        assert expiry.fired
        assert sum(injected.values()) > 0, injected

        expected = queued_keys(store)
        assert expected == {target: set(keys) for target, keys in wanted.items()}  # the same plan as the twin's
        duplicates, losses = tally_writes(sandbox, mapping, expected)
        assert (duplicates, losses) == (0, 0)
        assert target_counts(sandbox, mapping) == wanted
        assert {state for t in store.outbox.counts().values() for state in t} <= {"delivered", "superseded"}
        since = sandbox.log.last_seq
        assert push(store, settings, mapping, MAPPING_PATH, now=now).queued == 0
        writes = [r for r in sandbox.log.records(since_seq=since) if r.method in ("POST", "PATCH", "PUT", "DELETE")]
        assert [r.endpoint for r in writes if r.endpoint != "oauth2.token"] == []

        texts = {**push_texts(reports), **store_texts(store), "request log": request_log_text(sandbox)}
        texts["logging"] = caplog.text
        assert leak_hits(sandbox, texts) == []
        assert sandbox.emulator_errors() == []
