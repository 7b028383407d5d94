"""Writes that land while their answers are lost (the sandbox's ``drop_after`` fault): a push re-run
until its outbox is drained leaves every planned write in its target exactly once.

The writers never learn whether such a write happened; their idempotency keys must make the retry
(inside a run, or in the next run) find the first one: Salesforce upserts Tasks by External ID,
Jira looks for the comment's marker line before posting, Calendar inserts events under ids derived
from the key (409 = there already). Counted from the sandbox's own records, on SQLite and PostgreSQL.

A quarter of the write requests of each API lose their answer (a tenth left a small org's eight
status comments untouched too often); rounds of mutations, sync and push continue until a Jira
comment, a Salesforce Task upsert and a Calendar batch have each lost an answer (one round, usually).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectors.google_calendar.writer import reminder_event_id
from engagement.mapping import Mapping, load_mapping
from flows.engine import run_sync
from flows.push_engine import PushReport, push
from sandbox.app import Sandbox, SandboxOptions
from sandbox.faults import WRITE_METHODS
from store import Store
from tests.chaos.figures import FIGURES, leak_hits, request_log_text
from tests.chaos.support import clear_faults, converge, tally_writes
from tests.flows.test_push import queued_keys, settings_for, target_counts

MAPPING_PATH = Path("mappings/default.yaml")
DROP_AFTER = 0.25  # of every write request, on all three APIs
ROUNDS = 5  # at most; usually one or two
MUST_LOSE = (("jira", "comments.add"), ("salesforce", "composite.upsert"), ("google_calendar", "batch"))


@pytest.fixture(scope="module")
def mapping() -> Mapping:
    """The default mapping with one record per Salesforce composite call and per Calendar batch: a
    small org's push then makes dozens of write requests per API instead of a handful, each of
    which may lose its answer."""
    mapping = load_mapping(MAPPING_PATH)
    push_section = mapping.push.model_copy(
        update={
            "salesforce": mapping.push.salesforce.model_copy(update={"batch_size": 1}),
            "google_calendar": mapping.push.google_calendar.model_copy(update={"batch_size": 1}),
        }
    )
    return mapping.model_copy(update={"push": push_section})


def calendar_events_by_id(sandbox: Sandbox, expected: set[str]) -> tuple[int, int]:
    """(missing, extra): planned reminders without their event under ``reminder_event_id(key)``, and
    live events carrying a planned key under any other id."""
    wanted = {reminder_event_id(key): key for key in expected}
    found: set[str] = set()
    extra = 0
    for calendar in sandbox.calendar_store.calendars.values():
        for event_id, event in calendar.events.items():
            private = ((event.fields or {}).get("extendedProperties") or {}).get("private") or {}
            key = private.get("accordKey")
            if key not in expected or event.status == "cancelled":
                continue
            if wanted.get(event_id) == key:
                found.add(event_id)
            else:
                extra += 1
    return len(wanted.keys() - found), extra


def test_writes_whose_answers_are_lost_land_exactly_once(
    store: Store, mapping: Mapping, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with Sandbox(SandboxOptions(size="small", seed=44)) as sandbox:
        settings = settings_for(sandbox, store.url)
        expected: dict[str, set[str]] = {"salesforce": set(), "jira": set(), "google_calendar": set()}
        writes: Counter[str] = Counter()
        lost: Counter[tuple[str, str]] = Counter()
        runs = 0
        # Rounds of (world moves on, sync, push under drop_after until drained), until the answers
        # lost include a Jira comment, a Salesforce Task upsert and a Calendar batch of inserts.
        for round_ in range(ROUNDS):
            now = datetime.now(UTC)
            if round_:
                sandbox.mutate(count=25, seed=4400 + round_, late_share=0.0)
            assert not run_sync(settings, mapping, store, full=round_ == 0, now=now).failed
            since = sandbox.log.last_seq
            for i, name in enumerate(sorted(sandbox.apps)):
                sandbox.apps[name].faults.configure(rate_drop_after=DROP_AFTER, seed=440 + 10 * round_ + i)
            reports: list[PushReport] = []

            def attempt(n: int) -> bool:
                reports.append(push(store, settings, mapping, MAPPING_PATH, now=now))  # noqa: B023 (called here)
                return reports[-1].failed == 0 and not store.outbox.due()  # noqa: B023 (called here)

            runs += converge(attempt, "push_drop_after")
            clear_faults(sandbox)
            for target, keys in queued_keys(store).items():
                expected[target] |= keys
            records = sandbox.log.records(since_seq=since)
            writes.update(r.api for r in records if r.method in WRITE_METHODS and r.endpoint != "oauth2.token")
            lost.update((r.api, r.endpoint) for r in records if r.fault == "drop_after")
            if all(lost[endpoint] for endpoint in MUST_LOSE):
                break
        injected = {name: app.faults.snapshot()["injected"]["drop_after"] for name, app in sandbox.apps.items()}
        assert sum(lost.values()) == sum(injected.values())  # every injected drop is in the request log
        assert all(lost[endpoint] for endpoint in MUST_LOSE), lost  # else the test proved too little
        assert all(expected.values()), expected  # tasks, status comments and reminders were planned

        held = target_counts(sandbox, mapping)
        duplicates = {t: {k: n for k, n in held[t].items() if n > 1} for t in held}
        missing = {t: sorted(keys - set(held[t])) for t, keys in expected.items()}
        events_missing, events_extra = calendar_events_by_id(sandbox, expected["google_calendar"])
        figures = {
            "rounds": round_ + 1,
            "push_runs": runs,
            "planned": {t: len(k) for t, k in expected.items()},
            "write_requests": dict(writes),
            "answers_lost": {f"{api} {endpoint}": n for (api, endpoint), n in sorted(lost.items())},
            "duplicates": {t: sum(n - 1 for n in d.values()) for t, d in duplicates.items()},
            "missing": {t: len(m) for t, m in missing.items()},
            "calendar_events_not_under_their_id": events_missing + events_extra,
        }
        print("drop_after figures:", json.dumps(figures, sort_keys=True))
        FIGURES.add("drop_after_injected", sum(injected.values()))
        tally_writes(sandbox, mapping, expected)  # adds duplicates and losses to the suite's verdict

        assert duplicates == {"salesforce": {}, "jira": {}, "google_calendar": {}}, figures
        assert missing == {"salesforce": [], "jira": [], "google_calendar": []}, figures
        assert (events_missing, events_extra) == (0, 0), figures
        assert {state for t in store.outbox.counts().values() for state in t} <= {"delivered", "superseded"}

        # Drained: one more push plans nothing and writes nothing.
        since = sandbox.log.last_seq
        assert push(store, settings, mapping, MAPPING_PATH, now=now).queued == 0
        again = [r for r in sandbox.log.records(since_seq=since) if r.method in WRITE_METHODS]
        assert [r.endpoint for r in again if r.endpoint != "oauth2.token"] == []

        texts = {"request log": request_log_text(sandbox), "logging": caplog.text}
        assert leak_hits(sandbox, texts) == []
        assert sandbox.emulator_errors() == []
