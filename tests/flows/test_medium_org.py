"""The medium org (500 clients, 5,000 contacts, 50,000 issues, 20,000 events) end to end.

Starts in seconds, and a full sync pages through all of it with the real client libraries.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest

from accord.settings import AccordSettings
from engagement.mapping import load_mapping
from engagement.records import iso
from flows.engine import run_sync
from sandbox.app import Sandbox, SandboxOptions
from store import Store


@pytest.mark.slow
def test_medium_org_starts_fast_and_syncs_completely(tmp_path: Path) -> None:
    started = time.perf_counter()
    with Sandbox(SandboxOptions(size="medium", seed=1)) as sandbox:
        assert time.perf_counter() - started < 30  # the promise, not a benchmark
        store = Store(f"sqlite:///{tmp_path / 'medium.sqlite'}")
        store.create_all()
        mapping = load_mapping("mappings/default.yaml")
        settings = AccordSettings(database_url=store.url).with_sandbox(sandbox.info())
        report = run_sync(settings, mapping, store, full=True)
        assert not report.failed, [s.error for s in report.failed]

        counts = store.record_counts()
        sf = sandbox.salesforce_store.counts()
        assert counts["salesforce.accounts"] == sf["Account"] == 500
        assert counts["salesforce.contacts"] == sf["Contact"]
        assert counts["salesforce.opportunities"] == sf["Opportunity"]
        assert counts["salesforce.contact_roles"] == sf["OpportunityContactRole"]
        assert counts["jira.issues"] == sandbox.jira_store.counts()["issues"] > 49_000
        # Every one-off meeting inside the read window is there, under its calendar.
        users = {u.key: u.email for u in sandbox.world.users}
        window = (
            report.started_at - timedelta(days=mapping.google_calendar.past_days),
            report.started_at + timedelta(days=mapping.google_calendar.future_days),
        )
        expected = {
            (users[m.calendar_owner_key], iso(m.start), m.summary)
            for m in sandbox.world.meetings
            if not m.recurrence
            and not m.all_day
            and m.status != "cancelled"
            and window[0] < m.end
            and m.start < window[1]
        }
        stored_events = {
            (r.partition, r.data.get("start"), r.data.get("summary"))
            for r in store.iter_records("google_calendar", "events")
        }
        assert len(expected) > 10_000 and expected <= stored_events
        assert report.view is not None and report.view.engagements == sf["Opportunity"]

        sandbox.mutate(count=20, seed=9, late_share=0.0)
        since = sandbox.log.last_seq
        run_sync(settings, mapping, store)
        calls = sandbox.log.summary(since_seq=since)
        assert sum(calls["jira"].values()) <= 3 and sum(calls["salesforce"].values()) == 7
        store.dispose()
