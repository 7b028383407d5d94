"""A sync's unify recomputes only the clients the pulled changes touch (and those whose engagements'
horizon passed), and what it stores is exactly what recomputing every client stores.

Each case: a generated org stored and unified in full; then random edits of every kind unify reads
(contacts moved or re-addressed, attendees added and dropped, meetings cancelled or moved, issues
moved between projects or done, Opportunities moved between clients or projects, contact roles
re-pointed, account domains changed, deletions), stored as an incremental pull stores them, and time
moved on; the selective unify runs; then every client is recomputed (the basis forgotten) and must
change nothing: no engagement, no health, no horizon, no per-client count, the same summary.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from accord.settings import DEFAULT_MAPPING
from engagement.mapping import Mapping, load_mapping
from engagement.records import SourceRecord, iso
from flows.engine import UNIFY_BASIS, SyncReport, ViewSummary, recompute
from flows.report import sync_markdown
from sandbox.generator import generate_world
from store import Store
from store.schema import client_counts, engagements
from tests.engagement.world_records import world_records

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
Records = dict[tuple[str, str], dict[str, SourceRecord]]


@pytest.fixture(scope="module")
def mapping() -> Mapping:
    return load_mapping(DEFAULT_MAPPING)


def by_stream(records: list[SourceRecord]) -> Records:
    streams: Records = {}
    for r in records:
        streams.setdefault((r.source, r.stream), {})[r.id] = r
    return streams


@pytest.fixture(scope="module")
def org() -> Records:
    """The generated org, with a few contact roles naming another client's contact (a consultant
    who works for one client and is a stakeholder of another's engagement): a change of that contact
    changes an engagement of a client it does not belong to."""
    org = by_stream(world_records(generate_world("small", 5, NOW)))
    roles = org["salesforce", "contact_roles"]
    contacts = sorted(org["salesforce", "contacts"].values(), key=lambda c: c.id)
    client_of = {o.id: o.data["account"] for o in org["salesforce", "opportunities"].values()}
    for role in sorted(roles.values(), key=lambda r: r.id)[::7]:
        other = next(c for c in contacts if c.data["account"] != client_of[role.data["opportunity"]])
        roles[role.id] = replace(role, data={**role.data, "contact": other.id})
        contacts.remove(other)  # a different one each time
    return org


@pytest.fixture(scope="module")
def unified(org: Records, mapping: Mapping, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store holding the org and its engagements, computed in full; copied for each case."""
    path = tmp_path_factory.mktemp("selective") / "base.sqlite"
    store = Store(f"sqlite:///{path}")
    store.create_all()
    store.apply_batch([r for stream in org.values() for r in stream.values()])
    summary, _, _ = recompute(store, mapping, NOW)
    assert summary.clients_recomputed is None and summary.engagements > 5
    assert store.touched_keys() == (0, set())
    store.dispose()
    return path


def stored_state(store: Store) -> tuple[dict[str, Any], dict[str, Any]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(engagements.c.id, engagements.c.digest, engagements.c.health, engagements.c.valid_until)
        )
        kept = {r.id: (r.digest, r.health, r.valid_until) for r in rows}
        counts = {
            r.client_id: (r.unknown_stakeholders, r.ambiguous_meetings) for r in conn.execute(select(client_counts))
        }
    return kept, counts


def figures(summary: ViewSummary) -> tuple[Any, ...]:
    return (
        summary.engagements,
        summary.health,
        summary.unknown_stakeholders,
        summary.ambiguous_meetings,
        summary.issues_without_engagement,
        summary.meetings_internal,
        [r["id"] for r in summary.rows],
    )


def edited(record: SourceRecord, stamp: datetime, **data: Any) -> SourceRecord:
    return replace(record, data={**record.data, **data}, updated_at=stamp)


class Editor:
    """Random edits of the stored org, as an incremental pull would bring them."""

    def __init__(self, org: Records, rng: random.Random, stamp: datetime) -> None:
        self.org, self.rng, self.stamp = org, rng, stamp
        self.accounts = list(org["salesforce", "accounts"].values())
        self.contacts = list(org["salesforce", "contacts"].values())
        self.opportunities = list(org["salesforce", "opportunities"].values())
        self.roles = list(org["salesforce", "contact_roles"].values())
        self.issues = list(org["jira", "issues"].values())
        self.meetings = list(org["google_calendar", "events"].values())
        self.projects = sorted({str(o.data["jira_project"]) for o in self.opportunities})
        self.domains = sorted({d for a in self.accounts for d in str(a.data["domains"]).split(";") if d})
        self.made = 0

    def pick(self, records: list[SourceRecord]) -> SourceRecord:
        return self.rng.choice(records)

    def address(self) -> str:
        kind = self.rng.randrange(3)
        if kind == 0:
            return str(self.pick(self.contacts).data.get("email") or "nobody@nowhere.example")
        if kind == 1:
            return f"someone{self.rng.randrange(5)}@{self.rng.choice(self.domains)}"
        return f"outsider{self.rng.randrange(5)}@elsewhere.example"

    def new_id(self, prefix: str) -> str:
        self.made += 1
        return f"{prefix}-new-{self.made}"

    def edit(self) -> SourceRecord:
        s, rng, pick = self.stamp, self.rng, self.pick
        kind = rng.randrange(17)
        if kind == 0:
            return edited(pick(self.contacts), s, account=pick(self.accounts).id)
        if kind == 1:
            return edited(pick(self.contacts), s, email=self.address())
        if kind == 2:
            return replace(pick(self.contacts), deleted=True, updated_at=s)
        if kind in (3, 4):
            meeting = pick(self.meetings)
            attendees = list(meeting.data.get("attendees") or [])
            if kind == 3:
                attendees.append({"email": self.address(), "response": "accepted", "organizer": False})
            elif attendees:
                attendees.pop(rng.randrange(len(attendees)))
            return edited(meeting, s, attendees=attendees)
        if kind == 5:
            return edited(pick(self.meetings), s, status="cancelled")
        if kind == 6:
            meeting = pick(self.meetings)
            shift = timedelta(days=rng.randint(-40, 40))
            start = datetime.fromisoformat(str(meeting.data["start"])) + shift
            end = datetime.fromisoformat(str(meeting.data["end"])) + shift
            return edited(meeting, s, start=iso(start), end=iso(end))
        if kind == 7:
            return edited(pick(self.issues), s, project=rng.choice(self.projects))
        if kind == 8:
            return edited(pick(self.issues), s, status="Done", status_category="done", resolved=iso(s))
        if kind == 9:
            return replace(pick(self.issues), deleted=True, updated_at=s)
        if kind == 10:
            return edited(pick(self.opportunities), s, account=pick(self.accounts).id)
        if kind == 11:
            return edited(pick(self.opportunities), s, jira_project=rng.choice(self.projects))
        if kind == 12:
            return edited(pick(self.opportunities), s, stage=rng.choice(["Closed Won", "Prospecting", "Negotiation"]))
        if kind == 13:
            return edited(pick(self.roles), s, contact=pick(self.contacts).id)
        if kind == 14:
            role = pick(self.roles)
            data = {**role.data, "opportunity": pick(self.opportunities).id, "contact": pick(self.contacts).id}
            return replace(role, id=self.new_id("role"), data=data, updated_at=s)
        if kind == 15:
            account = pick(self.accounts)
            return edited(account, s, domains=f"{account.data['domains']};{rng.choice(self.domains)}")
        meeting = pick(self.meetings)
        attendees = [{"email": self.address(), "response": "accepted", "organizer": False} for _ in range(2)]
        return replace(meeting, id=self.new_id("meeting"), data={**meeting.data, "attendees": attendees}, updated_at=s)


def check_selective(
    store: Store, org: Records, mapping: Mapping, seed: int, rounds: list[int], hours: int
) -> ViewSummary:
    """Rounds of edits, each stored and unified selectively, then every client recomputed: nothing may
    change. Later rounds edit what earlier ones stored (a role re-pointed, then its contact moved)."""
    rng = random.Random(seed)
    later = NOW + timedelta(hours=hours)
    current = {stream: dict(records) for stream, records in org.items()}
    selective = ViewSummary()
    for k, edits in enumerate(rounds):
        editor = Editor(current, rng, later - timedelta(minutes=len(rounds) - k))
        editor.made = 1000 * k
        batch = [editor.edit() for _ in range(edits)]
        for record in batch:
            current[record.source, record.stream][record.id] = record
        store.apply_batch(batch, track=True)
        selective, _, _ = recompute(store, mapping, later)
        assert selective.clients_recomputed is not None  # the changes were tracked: not every client
        assert store.touched_keys() == (0, set())  # forgotten once stored
    after = stored_state(store)
    store.set_cursor(UNIFY_BASIS)  # forget the basis: every client is recomputed
    full, changes, _ = recompute(store, mapping, later)
    assert full.clients_recomputed is None
    assert stored_state(store) == after
    assert changes == []
    assert figures(selective) == figures(full)
    return selective


@pytest.fixture
def copy_of(unified: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], Store]]:
    made: list[Store] = []

    def make() -> Store:
        path = tmp_path_factory.mktemp("case") / "store.sqlite"
        shutil.copy(unified, path)
        store = Store(f"sqlite:///{path}")
        made.append(store)
        return store

    yield make
    for store in made:
        store.dispose()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    rounds=st.lists(st.integers(1, 3), min_size=1, max_size=3),  # few: most clients untouched
    hours=st.sampled_from([0, 0, 0, 2, 30, 24 * 20]),  # mostly little time: few engagements due
)
def test_a_selective_unify_stores_what_a_full_one_does(
    copy_of: Callable[[], Store], org: Records, mapping: Mapping, seed: int, rounds: list[int], hours: int
) -> None:
    check_selective(copy_of(), org, mapping, seed, rounds, hours)


def test_a_few_changes_recompute_a_few_clients(copy_of: Callable[[], Store], org: Records, mapping: Mapping) -> None:
    clients = len(org["salesforce", "accounts"])
    issue = next(iter(org["jira", "issues"].values()))
    store = copy_of()
    owner = next(
        o.data["account"]
        for o in org["salesforce", "opportunities"].values()
        if o.data["jira_project"] == issue.data["project"]
    )
    due = set(store.engagements_due(NOW).values())  # a horizon at the computation's instant
    store.apply_batch([edited(issue, NOW, status="Done", status_category="done", resolved=iso(NOW))], track=True)
    summary, _, _ = recompute(store, mapping, NOW)
    assert summary.clients_recomputed == len(due | {owner}) < clients
    summary, _, _ = recompute(store, mapping, NOW)  # nothing touched: only what is due
    assert summary.clients_recomputed == len(due)
    summary, _, _ = recompute(store, mapping, NOW - timedelta(hours=1))  # nothing due an hour earlier
    assert summary.clients_recomputed == 0
    shown = sync_markdown(SyncReport(NOW, full=False, view=summary))  # the run's artifact in the Prefect UI
    assert "**Recomputed:** 0 clients' engagements" in shown
    store.set_cursor(UNIFY_BASIS)
    summary, _, _ = recompute(store, mapping, NOW)
    assert "**Recomputed:** every client's engagements" in sync_markdown(SyncReport(NOW, full=False, view=summary))


def test_an_untracked_write_or_another_mapping_recomputes_every_client(
    copy_of: Callable[[], Store], org: Records, mapping: Mapping
) -> None:
    issue = next(iter(org["jira", "issues"].values()))
    store = copy_of()
    store.apply_batch([edited(issue, NOW, summary="changed")])  # a full read: not tracked
    earlier = NOW - timedelta(hours=1)  # when nothing is due
    assert recompute(store, mapping, earlier)[0].clients_recomputed is None
    assert recompute(store, mapping, earlier)[0].clients_recomputed == 0
    other = mapping.model_copy(update={"health": mapping.health.model_copy(update={"stakeholder_quiet_days": 7})})
    assert recompute(store, other, earlier)[0].clients_recomputed is None
    assert recompute(store, other, earlier)[0].clients_recomputed == 0


def test_on_postgresql_too(store_factory: Callable[[], Store], org: Records, mapping: Mapping) -> None:
    store = store_factory()
    store.apply_batch([r for stream in org.values() for r in stream.values()])
    recompute(store, mapping, NOW)
    for seed in range(3):
        check_selective(store, org, mapping, seed, rounds=[4, 4], hours=seed * 50)
