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
import sys
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
from engagement.records import SourceRecord, iso, project_key
from flows import engine
from flows.engine import UNIFY_BASIS, EarlyUnify, SyncReport, ViewSummary, recompute
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


def assert_a_full_unify_changes_nothing(store: Store, mapping: Mapping, now: datetime, summary: ViewSummary) -> None:
    """Every client recomputed (the basis forgotten) changes no stored engagement, horizon or count,
    reports no health change, and gives the summary ``summary`` gave."""
    after = stored_state(store)
    store.set_cursor(UNIFY_BASIS)
    full, changes, _ = recompute(store, mapping, now)
    assert full.clients_recomputed is None
    assert stored_state(store) == after
    assert changes == []
    assert figures(summary) == figures(full)


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
    # A full sync with rounds during the Jira read, an issue moved out of a project settled first.
    projects = sorted(projects_of(org))
    issue = next(i for i in org["jira", "issues"].values() if i.data["project"] == projects[0] and not i.deleted)
    current = {stream: dict(records) for stream, records in org.items()}
    current["jira", "issues"][issue.id] = edited(issue, NOW, project=projects[-1])
    store.set_cursor(UNIFY_BASIS)
    early, summary = full_sync_with_rounds(
        store, current, mapping, NOW, random.Random(3), chunks=[[p] for p in projects]
    )
    assert early.rounds >= 2 and summary.clients_recomputed is None
    assert_a_full_unify_changes_nothing(store, mapping, NOW, summary)


def full_sync_with_rounds(
    store: Store,
    current: Records,
    mapping: Mapping,
    now: datetime,
    rng: random.Random,
    *,
    rounds: float = 1.0,
    chunks: list[list[str]] | None = None,
) -> tuple[EarlyUnify, ViewSummary]:
    """A full sync as ``run_sync`` stores it when Jira is pulled in a unify child: every Salesforce and
    Calendar record (a full read: not tracked), then Jira's read chunk of projects by chunk (tracked
    from its first batch, which names every project pending), a round (``EarlyUnify.unify_settled``)
    after each chunk settles with probability ``rounds``, the read's reconcile (the deleted issues),
    then the final unify. ``chunks``: the read's chunks of projects, in order (else random ones)."""
    store.apply_batch([r for (source, _), stream in current.items() if source != "jira" for r in stream.values()])
    early = EarlyUnify(store, mapping, now)
    issues = list(current["jira", "issues"].values())
    live = [i for i in issues if not i.deleted]
    if chunks is None:
        projects = sorted({str(i.data["project"]) for i in live} | projects_of(current))
        rng.shuffle(projects)
        cuts = sorted(rng.sample(range(1, len(projects)), k=min(len(projects) - 1, rng.randint(1, 6))))
        chunks = [projects[start:end] for start, end in zip([0, *cuts], [*cuts, len(projects)], strict=True)]
    pending = {project_key(p) for chunk in chunks for p in chunk}

    def settle() -> None:
        if rng.random() < rounds:
            early.unify_settled(frozenset(pending))

    settle()
    for chunk in chunks:
        store.apply_batch([i for i in live if str(i.data["project"]) in chunk], track=True)
        pending -= {project_key(p) for p in chunk}
        settle()
    store.apply_batch([i for i in issues if i.deleted], track=True)  # what the read's reconcile marks
    summary, _, _ = recompute(store, mapping, now, None, early)
    return early, summary


def projects_of(org: Records) -> set[str]:
    return {str(o.data["jira_project"]) for o in org["salesforce", "opportunities"].values()}


@pytest.mark.parametrize("forget", [False, True])
@pytest.mark.parametrize("change", ["to_a_later_project", "to_an_earlier_project", "deleted"])
def test_an_issue_moved_or_deleted_after_its_project_settled_is_seen_by_the_final_unify(
    copy_of: Callable[[], Store], org: Records, mapping: Mapping, forget: bool, change: str
) -> None:
    """The read's chunks one project each, in key order, a round after each: an issue of the first
    project moved to the last (its new version is written after the first project's client was
    unified with the old one), one of the last moved to the first, or one deleted (by the reconcile,
    after every round). With every client to recompute (``forget``) or only those touched."""
    projects = sorted(projects_of(org))
    source, target = (projects[0], projects[-1]) if change != "to_an_earlier_project" else (projects[-1], projects[0])
    issue = next(i for i in org["jira", "issues"].values() if i.data["project"] == source and not i.deleted)
    if change == "deleted":
        new = replace(issue, deleted=True, updated_at=NOW)
    else:
        new = edited(issue, NOW, project=target, status="Done", status_category="done", resolved=iso(NOW))
    current = {stream: dict(records) for stream, records in org.items()}
    current["jira", "issues"][issue.id] = new
    store = copy_of()
    if forget:
        store.set_cursor(UNIFY_BASIS)
    early, summary = full_sync_with_rounds(
        store, current, mapping, NOW, random.Random(1), chunks=[[p] for p in projects]
    )
    assert early.rounds >= 1
    assert_a_full_unify_changes_nothing(store, mapping, NOW, summary)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    edits=st.integers(0, 6),
    moves=st.integers(0, 4),
    forget=st.booleans(),
    hours=st.sampled_from([0, 2, 30, 24 * 20]),
    rounds=st.sampled_from([1.0, 0.5]),
)
def test_clients_unified_during_the_jira_read_end_as_a_full_unify_leaves_them(
    copy_of: Callable[[], Store],
    org: Records,
    mapping: Mapping,
    seed: int,
    edits: int,
    moves: int,
    forget: bool,
    hours: int,
    rounds: float,
) -> None:
    """Random edits of every kind, and issues moved between projects (out of projects the read settles
    before or after the ones they move to) or deleted, then a full sync whose rounds unify clients
    while Jira's read goes on, with every client to recompute (``forget``: another basis) or those
    the changes touch; then every client is recomputed and must change nothing."""
    rng = random.Random(seed)
    later = NOW + timedelta(hours=hours)
    current = {stream: dict(records) for stream, records in org.items()}
    editor = Editor(current, rng, later - timedelta(minutes=1))
    changed = [editor.edit() for _ in range(edits)]
    for _ in range(moves):
        issue = editor.pick(editor.issues)
        if rng.random() < 0.8:
            changed.append(edited(issue, editor.stamp, project=rng.choice(editor.projects), status_category="done"))
        else:
            changed.append(replace(issue, deleted=True, updated_at=editor.stamp))
    for record in changed:
        current[record.source, record.stream][record.id] = record
    store = copy_of()
    if forget:
        store.set_cursor(UNIFY_BASIS)
    _, summary = full_sync_with_rounds(store, current, mapping, later, rng, rounds=rounds)
    assert store.touched_keys() == (0, set())
    assert_a_full_unify_changes_nothing(store, mapping, later, summary)


def test_a_full_sync_unifies_its_clients_during_the_jira_read(
    copy_of: Callable[[], Store], org: Records, mapping: Mapping
) -> None:
    """With every client to recompute (another basis), each settled chunk's clients are unified in a
    round, the last chunk's too (its round comes before the read's end); the summary says every
    client was recomputed, and how many during the read."""
    store = copy_of()
    store.set_cursor(UNIFY_BASIS)  # another basis: every client is to be recomputed
    early, summary = full_sync_with_rounds(store, org, mapping, NOW, random.Random(7))
    clients = len(org["salesforce", "accounts"])
    assert early.rounds >= 2 and len(early.clients) == clients
    assert summary.clients_recomputed is None and summary.clients_during_pull == len(early.clients)
    assert early.internal == summary.meetings_internal  # counted during the read, after the calendars
    shown = sync_markdown(SyncReport(NOW, full=True, view=summary))
    assert f"every client's engagements ({len(early.clients)} of them while a slower pull went on" in shown


def fail_the_second_round(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``unify_and_store`` whose second round (``counts=False``) stores one client's engagements and
    fails; the rounds so far, in a list of one."""
    real = engine.unify_and_store
    rounds = [0]

    def failing(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("counts") is False:
            rounds[0] += 1
            if rounds[0] == 2:
                real(*args, **{**kwargs, "clients": set(sorted(kwargs["clients"])[:1])})
                raise RuntimeError("disk I/O error")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "unify_and_store", failing)
    return rounds


def test_a_round_that_fails_leaves_its_clients_to_the_final_unify(
    copy_of: Callable[[], Store], org: Records, mapping: Mapping, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second round stores one client's engagements and fails: the rounds stop, the sync goes on,
    and the final unify recomputes that round's clients and the rest."""
    rounds = fail_the_second_round(monkeypatch)

    store = copy_of()
    store.set_cursor(UNIFY_BASIS)
    projects = sorted(projects_of(org))
    early, summary = full_sync_with_rounds(store, org, mapping, NOW, random.Random(1), chunks=[[p] for p in projects])
    assert early.failed and early.rounds == 1 and rounds == [2]
    assert summary.clients_recomputed is None and summary.clients_during_pull == len(early.clients) > 0
    assert_a_full_unify_changes_nothing(store, mapping, NOW, summary)


def test_the_health_changes_of_a_failing_round_are_reported_once(
    copy_of: Callable[[], Store], org: Records, mapping: Mapping, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every stored engagement has another health than it will get: the sync reports one change per
    engagement, those the failing round stored before it failed included (the final unify finds them
    as stored, so they were missing from the run's report)."""
    rounds = fail_the_second_round(monkeypatch)

    reported: list[Any] = []
    final = recompute

    def recompute_kept(*args: Any, **kwargs: Any) -> Any:
        summary, changes, figures = final(*args, **kwargs)
        reported.extend(changes)
        return summary, changes, figures

    monkeypatch.setattr(sys.modules[__name__], "recompute", recompute_kept)
    store = copy_of()
    store.set_cursor(UNIFY_BASIS)
    with store.engine.begin() as conn:
        held = {row.id: row.health for row in conn.execute(select(engagements.c.id, engagements.c.health))}
        for engagement_id, health in held.items():
            conn.execute(
                engagements.update()
                .where(engagements.c.id == engagement_id)
                .values(health="red" if health != "red" else "green", digest="stale")
            )
    projects = sorted(projects_of(org))
    early, _ = full_sync_with_rounds(store, org, mapping, NOW, random.Random(1), chunks=[[p] for p in projects])
    assert early.failed and rounds == [2]
    changed = [c.engagement_id for c in reported if c.previous is not None and c.current is not None]
    assert sorted(changed) == sorted(held)  # each once
    assert [(c.previous, c.current) for c in reported if c.engagement_id in held] == [
        ("red" if held[c.engagement_id] != "red" else "green", held[c.engagement_id])
        for c in reported
        if c.engagement_id in held
    ]
