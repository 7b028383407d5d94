"""Hostile data in the sandbox org: quotes and operators aimed at SOQL and JQL, markup and template
syntax aimed at comments and templates, very long and non-ASCII names, mixed-case and plus-addressed
emails. Nothing crashes, nothing is injected, and the values arrive intact in the store and in the
pushed Tasks, Jira comments and calendar events.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from connectors.jira.writer import comment_text
from connectors.salesforce.writer import DESCRIPTION_MAX, SUBJECT_MAX, fit
from engagement.mapping import Mapping, load_mapping
from engagement.records import iso
from flows.engine import run_sync
from flows.push_engine import push
from flows.report import plan_markdown, push_markdown, sync_markdown
from sandbox.app import Sandbox, SandboxOptions
from sandbox.generator import HOSTILE_CLIENT_NAMES
from sandbox.jira.adf import document_to_text
from store import Store
from tests.chaos.figures import FIGURES, leak_hits, request_log_text, store_texts
from tests.flows.test_push import settings_for

MAPPING_PATH = Path("mappings/default.yaml")


@pytest.fixture(scope="module")
def mapping() -> Mapping:
    return load_mapping(MAPPING_PATH)


def test_hostile_values_arrive_intact_and_inject_nothing(
    store: Store, mapping: Mapping, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with Sandbox(SandboxOptions(size="small", seed=43)) as sandbox:
        settings = settings_for(sandbox, store.url)
        report = run_sync(settings, mapping, store, full=True)
        assert not report.failed, [s.error for s in report.failed]
        sf, counts = sandbox.salesforce_store, sandbox.counts()

        # The store holds every value as the org does: names with quotes, operators, markup, 255 characters.
        org_accounts = {
            str(r["Id"]): r["Name"] for r in sf.run(sf.compile("SELECT Id, Name FROM Account"), include_deleted=False)
        }
        stored_accounts = {r.id: r.data.get("name") for r in store.iter_records("salesforce", "accounts")}
        assert stored_accounts == org_accounts
        hostile = [name[:255] for name in HOSTILE_CLIENT_NAMES]
        assert set(hostile) <= set(stored_accounts.values())
        org_opportunities = {
            str(r["Id"]): r["Name"]
            for r in sf.run(sf.compile("SELECT Id, Name FROM Opportunity"), include_deleted=False)
        }
        stored = {r.id: r.data.get("name") for r in store.iter_records("salesforce", "opportunities")}
        assert stored == org_opportunities
        # Nothing injected into the queries: every object and issue came back, no more, no fewer.
        assert len(list(store.iter_records("salesforce", "users"))) == counts["salesforce"]["User"]
        assert len(list(store.iter_records("jira", "issues"))) == counts["jira"]["issues"]
        FIGURES.add("hostile_values_checked", len(stored_accounts) + len(stored))

        # Identity: mixed-case and plus-addressed invitations still find their engagements.
        assert report.view is not None
        engagement_clients = Counter(row["client"] for row in report.view.rows)
        assert all(engagement_clients[name] >= 1 for name in hostile), engagement_clients

        # Push, then read back what the targets hold: exactly what was planned, character for character.
        result = push(store, settings, mapping, MAPPING_PATH)
        assert result.failed == 0, result.to_json()
        items = {i.key: i for i in store.outbox.items(state="delivered")}
        ext = mapping.push.salesforce.task_external_id
        soql = f"SELECT Id, Subject, Description, {ext} FROM Task"  # noqa: S608 (the emulator's own query)
        tasks = {str(r[ext]): r for r in sf.run(sf.compile(soql), include_deleted=False) if r.get(ext)}
        checked = 0
        pushed_texts: list[str] = []
        for key, task in tasks.items():
            payload = items[key].payload
            assert task["Subject"] == fit(payload["subject"], SUBJECT_MAX)
            assert (task.get("Description") or "") == fit(payload.get("description") or "", DESCRIPTION_MAX)
            pushed_texts += [task["Subject"], task.get("Description") or ""]
            checked += 1
        for calendar in sandbox.calendar_store.calendars.values():
            for event in calendar.events.values():
                fields = event.fields or {}
                accord_key = ((fields.get("extendedProperties") or {}).get("private") or {}).get("accordKey")
                if accord_key:
                    payload = items[str(accord_key)].payload
                    assert (fields.get("summary"), fields.get("description")) == (
                        payload["summary"],
                        payload["description"],
                    )
                    pushed_texts += [fields["summary"], fields["description"]]
                    checked += 1
        with sandbox.jira_store.lock:
            bodies = [c.body for thread in sandbox.jira_store.comments.values() for c in thread]
        jira_items = [i for i in items.values() if i.kind == "jira_status_comment"]
        texts = [b if isinstance(b, str) else document_to_text(b) for b in bodies]
        for item in jira_items:
            wanted = comment_text(item.payload["body"], item.key)
            assert sum(1 for t in texts if t.strip() == wanted.strip()) == 1, item.key
            pushed_texts.append(wanted)
            checked += 1
        for item in items.values():
            if item.kind != "opportunity_status":
                continue
            fields = item.payload["fields"]
            soql = f"SELECT Id, {', '.join(fields)} FROM Opportunity"  # noqa: S608 (the emulator's own query)
            row = next(r for r in sf.run(sf.compile(soql), include_deleted=False) if r["Id"] == item.target_id)
            held = {name: iso(v) if isinstance(v, datetime) else v for name, v in ((n, row[n]) for n in fields)}
            assert held == fields, item.key
            pushed_texts += [str(v) for v in fields.values()]
            checked += 1
        assert checked == len(items) > 0
        FIGURES.add("hostile_values_checked", checked)

        # Markup and template syntax stay text: nothing rendered, nothing escaped away.
        everything = "\n".join(pushed_texts)
        for name in hostile:
            if name[:20] in everything:
                FIGURES.add("hostile_names_pushed")
        assert "Media 49 AG" not in everything
        if "Media" in everything:
            assert "<script>alert('x')</script> Media {{ 7*7 }} AG" in everything

        leak_texts = {
            "sync markdown": sync_markdown(report),
            "plan markdown": plan_markdown(result.plan),
            "push markdown": push_markdown(result),
            "pushed texts": everything,
            "logging": caplog.text,
            "request log": request_log_text(sandbox),
            **store_texts(store),
        }
        assert leak_hits(sandbox, leak_texts) == []
        assert sandbox.emulator_errors() == []
