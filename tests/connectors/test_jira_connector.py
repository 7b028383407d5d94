"""The Jira connector against the Jira emulator, through the jira library over real HTTP.

Every test asserts the data and the requests the read made (the emulator's request log): which
endpoint, how often, which JQL and minute literal, which page tokens and reconcileIssues.
"""

from __future__ import annotations

import io
import json
import random
import ssl
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests
import urllib3
from jira.exceptions import JIRAError
from pydantic import SecretStr

from accord.settings import AccordSettings
from connectors.base import WorkUnit
from connectors.errors import (
    AuthError,
    ConfigError,
    PermanentError,
    RateLimitedError,
    TransientError,
)
from connectors.incremental import Batch
from connectors.jira import JiraConnector
from connectors.jira import connector as connector_module
from connectors.jira.connector import FULL_BATCH_PAGES, _read_body
from connectors.jira.errors import classify
from connectors.retry import RetrySettings
from connectors.settings import JiraSettings
from engagement.mapping import Mapping, load_mapping
from engagement.records import SourceRecord, WorkItem, iso, parse_datetime, project_key
from flows.engine import pull_source
from sandbox.clock import Clock
from sandbox.credentials import JiraCredentials
from sandbox.generator import generate_world
from sandbox.http import ApiServer, Request, Response, Route
from sandbox.jira import JiraApp, JiraStore
from sandbox.jira.model import IssueVersion, category_of
from sandbox.recorder import RecordedRequest, RequestLog
from sandbox.tls import make_self_signed, server_context
from store import Store

UNIT = WorkUnit("issues")
# Every world timestamp is at least an hour old, so an incremental window sees only what a test changes.
WORLD = generate_world("small", 9, anchor=datetime.now(UTC) - timedelta(hours=1))
ISSUES = len(WORLD.issues)
FAST_RETRY = RetrySettings(max_attempts=6, base_wait_s=0.0, max_wait_s=0.05)


class ScriptedJira(JiraApp):
    """The Jira emulator, plus: scripted failures for the next searches, another deploymentType,
    and a count of searches in flight. ``hold_s`` keeps each search open until one more than
    ``expect_parallel`` are in flight or the time is up, so a read that exceeds its bound shows."""

    def __init__(self, store: JiraStore, clock: Clock, credentials: JiraCredentials) -> None:
        super().__init__(store, clock, credentials)
        self.script: list[tuple[int, int]] = []  # (status, Retry-After) answered by the next searches
        self.deployment = "Cloud"
        self.hold_s = 0.0
        self.expect_parallel = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.searches = 0
        self._changed = threading.Condition()
        self.edit_projects: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # rewrites project pages

    def wait_for_searches(self, count: int, timeout: float) -> bool:
        """Whether ``count`` searches arrived within ``timeout`` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: self.searches >= count, timeout=timeout)

    def server_info(self, request: Request) -> Response:
        response = super().server_info(request)
        if self.deployment != "Cloud":
            response = Response.json({"versionNumbers": [9, 12, 0], "deploymentType": self.deployment})
        return response

    def dispatch(self, request: Request, route: Route | None, path_known: bool) -> Response:
        if route is not None and route.name == "project.search" and self.edit_projects is not None:
            answer = super().dispatch(request, route, path_known)
            return Response.json(self.edit_projects(json.loads(answer.body)), answer.status)
        if route is None or route.name != "search_jql":
            return super().dispatch(request, route, path_known)
        with self._changed:
            scripted = self.script.pop(0) if self.script else None
            self.in_flight += 1
            self.searches += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._changed.notify_all()
            if self.hold_s:
                self._changed.wait_for(lambda: self.in_flight > self.expect_parallel, timeout=self.hold_s)
        try:
            if scripted is not None:
                status, retry_after = scripted
                if status == 429:
                    return self.rate_limited(request, retry_after)
                self.faults.configure(retry_after_s=retry_after)
                return self.server_error(request, status)
            return super().dispatch(request, route, path_known)
        finally:
            with self._changed:
                self.in_flight -= 1
                self._changed.notify_all()


@dataclass
class Site:
    store: JiraStore
    app: ScriptedJira
    server: ApiServer
    log: RequestLog
    creds: JiraCredentials
    clock: Clock

    def settings(self, **changes: Any) -> JiraSettings:
        base: dict[str, Any] = {
            "server": self.server.base_url,
            "email": self.creds.email,
            "api_token": SecretStr(self.creds.api_token),
            "retry": FAST_RETRY,
        }
        return JiraSettings.model_validate({**base, **changes})

    def connector(self, mapping: Mapping, **changes: Any) -> JiraConnector:
        return JiraConnector(self.settings(**changes), mapping)

    def searches(self, since: int = 0) -> list[RecordedRequest]:
        return self.log.records(endpoint="search_jql", since_seq=since)

    def live_ids(self) -> set[str]:
        return {str(i) for i, v in self.store.issues.items() if not v.deleted}


def open_site(timezone: str = "America/Los_Angeles", tls: ssl.SSLContext | None = None) -> Site:
    clock, creds, log = Clock(), JiraCredentials(), RequestLog()
    store = JiraStore.from_world(WORLD, clock, timezone=timezone)
    app = ScriptedJira(store, clock, creds)
    server = ApiServer(app, log, ssl_context=tls)
    app.base_url = server.base_url
    server.start()
    return Site(store, app, server, log, creds, clock)


@pytest.fixture
def site() -> Iterator[Site]:
    s = open_site()
    yield s
    s.server.stop()
    assert s.server.errors == []


@pytest.fixture(scope="module")
def mapping() -> Mapping:
    return load_mapping("mappings/default.yaml")


def with_jira(mapping: Mapping, **changes: Any) -> Mapping:
    jira = mapping.jira.model_validate({**mapping.jira.model_dump(), **changes})
    return mapping.model_copy(update={"jira": jira})


def read(
    connector: JiraConnector,
    cursor: str | None,
    *,
    upper: datetime | None = None,
    full: bool = False,
    reconcile: bool = False,
) -> list[Batch]:
    return list(connector.read(UNIT, cursor, upper=upper or datetime.now(UTC), full=full, reconcile=reconcile))


def seen_in(batches: list[Batch]) -> set[str]:
    """The ids a reconciling read says exist, over all its batches (what the engine stages)."""
    return {i for b in batches for i in b.existing_ids()}


def records(batches: list[Batch]) -> list[SourceRecord]:
    return [r for b in batches for r in b.records]


def expected(store: JiraStore, v: IssueVersion) -> dict[str, Any]:
    """What the connector should store for an issue, from the emulator's own model."""
    user = store.users.get(v.assignee) if v.assignee else None
    return {
        "key": v.key,
        "project": store.projects[v.project_id].key,
        "summary": v.summary,
        "issue_type": v.issue_type,
        "status": v.status,
        "status_category": category_of(v.status),
        "assignee_email": user.email if user and user.email_visible else None,
        "assignee_name": user.display_name if user else None,
        "assignee_account_id": v.assignee,
        "due_date": v.due_date.isoformat() if v.due_date else None,
        "labels": list(v.labels),
        "parent": store.issues[v.parent_id].key if v.parent_id else None,
        "created": iso(v.created),
        "resolved": iso(v.resolution_date),
        "priority": v.priority,
    }


def minute_literal(cursor: str, lookback_s: int, zone: str) -> str:
    moment = parse_datetime(cursor)
    assert moment is not None
    return (moment - timedelta(seconds=lookback_s)).astimezone(ZoneInfo(zone)).strftime("%Y/%m/%d %H:%M")


def mutate(site: Site, count: int, seed: int, late_share: float = 0.0) -> tuple[set[str], set[str]]:
    """(ids changed and still there, ids deleted) after one round of sandbox changes."""
    changes = site.store.mutate(random.Random(seed), count, site.clock.now(), late_share=late_share)
    deleted = {c.id for c in changes if c.kind == "hard_delete"}
    return {c.id for c in changes} - deleted, deleted


# -- full read ----------------------------------------------------------------------------------------
def test_full_read_equals_the_emulators_issues(site: Site, mapping: Mapping) -> None:
    extra = with_jira(mapping, extra_fields={"story_points": "customfield_10016"})
    connector = site.connector(extra)
    upper = datetime.now(UTC)
    batches = read(connector, None, upper=upper)
    connector.close()

    got = {r.id: r for r in records(batches)}
    assert len(got) == len(records(batches)) == site.store.counts()["issues"] == ISSUES
    assert set(got) == site.live_ids()
    for issue_id, record in got.items():
        v = site.store.issues[int(issue_id)]
        assert record.data == {**expected(site.store, v), "story_points": v.story_points}
        assert record.updated_at == v.updated and record.partition == record.data["project"]
        assert WorkItem.from_record(record).status_category in ("new", "indeterminate", "done")
    values = list(got.values())
    # The world has each case the normalization must get right.
    assert {r.data["status_category"] for r in values} == {"new", "indeterminate", "done"}
    assert any(r.data["assignee_account_id"] is None and r.data["assignee_name"] is None for r in values)
    hidden = [r for r in values if r.data["assignee_account_id"] and r.data["assignee_email"] is None]
    assert hidden and all(r.data["assignee_name"] for r in hidden)
    assert any(r.data["parent"] for r in values) and any(r.data["resolved"] for r in values)

    *pages, final = batches
    assert all(b.cursor is None and not b.final for b in pages)
    assert final.final and final.cursor == iso(upper) and final.reconcile and seen_in(batches) == site.live_ids()
    assert all(b.records_seen and not b.seen_ids for b in pages)

    summary = site.log.summary()["jira"]
    assert summary["GET project.search"] == 1 and "GET search" not in summary and "GET myself" not in summary
    assert summary["GET serverInfo"] <= 4  # one client per concurrent worker, never one per page
    searches = site.searches()
    assert len(searches) == summary["GET search_jql"] == sum(b.meta["pages"] for b in pages)
    # Pages reach the store several at a time, fewer only where a chunk of projects ends (its
    # projects are settled at once, ``Batch.pending``) or at the end; the first batch says what is pending.
    assert pages[0].pending is not None and pages[0].meta["pages"] == 0
    assert all(b.meta["pages"] == FULL_BATCH_PAGES for b in pages[1:-1] if b.pending is None)
    assert all(0 < b.meta["pages"] <= FULL_BATCH_PAGES for b in pages[1:] if b.pending is None)
    for s in searches:
        assert s.path == "/rest/api/3/search/jql" and s.status == 200
        assert s.query["fields"] == [
            "project,summary,issuetype,status,assignee,duedate,labels,parent,created,updated,"
            "resolutiondate,priority,customfield_10016"
        ]
        assert s.query["jql"][0].startswith("project in (") and s.query["maxResults"] == ["100"]
    # Every project is asked for exactly once, in chunks that keep the workers busy.
    asked = [s.query["jql"][0] for s in searches if "nextPageToken" not in s.query]
    keys = sorted(p.key for p in site.store.projects.values())
    assert sorted(k for q in asked for k in q.split("(", 1)[1].split(")")[0].replace('"', "").split(", ")) == keys
    # Dealt into two chunks per worker (4 workers; fewer than 8 x 50 projects), one key apart at most.
    sizes = sorted(len(q.split(", ")) for q in asked)
    assert len(asked) == min(8, len(keys)) and sizes[-1] - sizes[0] <= 1


class CountedBody(io.BytesIO):
    """A response body that counts the reads urllib3 makes of it; closed once read to the end, like
    ``http.client.HTTPResponse``."""

    reads = 0

    def isclosed(self) -> bool:
        return self.closed or self.tell() >= len(self.getbuffer())

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        return super().read(size)

    def readinto(self, buffer: Any) -> int:
        self.reads += 1
        return super().readinto(buffer)


def raw_response(body: bytes) -> tuple[requests.Response, CountedBody]:
    counted = CountedBody(body)
    response = requests.Response()
    response.status_code = 200
    response.raw = urllib3.HTTPResponse(
        body=counted, headers={"Content-Length": str(len(body))}, status=200, preload_content=False
    )
    return response, counted


def test_the_page_hook_reads_a_body_in_one_piece() -> None:
    """requests reads ``Response.content`` 10 KB at a time (a page of 100 issues, about 300 KB: 30
    reads, each a release and re-take of the GIL); the reader's hook reads the body at once and
    ``content`` is then what it would have read."""
    body = b'{"issues": [' + b",".join(b'{"id": "%d", "pad": "%s"}' % (i, b"x" * 2900) for i in range(100)) + b"]}"
    chunked, by_requests = raw_response(body)
    assert chunked.content == body and by_requests.reads > 25
    hooked, by_hook = raw_response(body)
    assert _read_body(hooked) is hooked
    assert hooked.content == body and by_hook.reads <= 2
    assert _read_body(hooked).content == body  # a second call reads nothing more


def test_full_read_streams_pages_and_stops_its_workers_when_abandoned(site: Site, mapping: Mapping) -> None:
    connector = site.connector(with_jira(mapping, page_size=5), concurrency=2)
    reader = connector.read(UNIT, None, upper=datetime.now(UTC), full=True, reconcile=False)
    assert isinstance(reader, Generator)
    assert next(reader).pending  # what the read has to settle: every project
    first = next(reader)
    assert len(first.records) == 5 * FULL_BATCH_PAGES and first.cursor is None
    # While the reader holds a batch, the workers fill a queue of 2 * workers and then wait: pages
    # fetched stay bounded however large the org (about 80 pages here).
    bound = FULL_BATCH_PAGES + 2 * 2 + 2  # handed over + queued + one waiting in each worker
    assert not site.app.wait_for_searches(bound + 1, timeout=0.5)
    reader.close()
    fetched = len(site.searches())
    assert fetched <= bound
    assert not [t for t in threading.enumerate() if t.name.startswith("jira-read")]
    connector.close()
    assert len(site.searches()) == fetched


@pytest.mark.parametrize("concurrency", [1, 4])
def test_full_read_says_which_projects_are_still_pending(site: Site, mapping: Mapping, concurrency: int) -> None:
    """The first batch names every project as pending; a batch names fewer only once every issue of
    the projects it drops has been handed over (none comes after); the last pending set is empty."""
    connector = site.connector(mapping, concurrency=concurrency)
    batches = read(connector, None, upper=datetime.now(UTC))
    connector.close()
    first = batches[0]
    assert not first.records and first.pending == {project_key(k) for k in all_project_keys(site)}
    pending = set(first.pending)
    settled_at: list[int] = []
    for index, batch in enumerate(batches[1:], start=1):
        assert all(project_key(r.data["project"]) in pending for r in batch.records)
        if batch.pending is not None:
            assert batch.pending < pending
            pending = set(batch.pending)
            settled_at.append(index)
    assert pending == set()
    assert len(settled_at) == len(connector._chunks(all_project_keys(site), spread=True)) > 1
    assert settled_at[0] < len(batches) - 2  # projects settle while others are still read


@pytest.mark.parametrize("projects", [0, 1, 3, 10, 16, 49, 200, 689, 5000])
@pytest.mark.parametrize("concurrency", [1, 3, 4])
def test_full_read_chunks_are_dealt_evenly_to_the_workers(site: Site, projects: int, concurrency: int) -> None:
    """A multiple of ``concurrency`` chunks (at least two per worker, at most 50 keys each), sizes
    one key apart at most, in key order: the workers read equal shares and finish together. With
    several workers and chunks of two keys or more, the last wave is cut in halves: what settles at
    the very end is half as much."""
    connector = site.connector(load_mapping("mappings/default.yaml"), concurrency=concurrency)
    keys = [f"P{i:05d}" for i in range(projects)]
    chunks = connector._chunks(keys, spread=True)
    connector.close()
    assert [k for chunk in chunks for k in chunk] == keys
    assert all(0 < len(c) <= 50 for c in chunks)
    dealt = min(projects, max(2 * concurrency, -(-projects // 50 // concurrency) * concurrency))
    halved = concurrency > 1 and dealt >= 2 * concurrency and projects // max(dealt, 1) >= 2
    assert len(chunks) == dealt + (concurrency if halved else 0)
    waves = chunks[: dealt - concurrency] if halved else chunks
    if waves:
        assert max(map(len, waves)) - min(map(len, waves)) <= 1
    if halved:
        last = chunks[dealt - concurrency :]
        assert len(last) == 2 * concurrency
        assert max(map(len, last)) <= -(-max(map(len, waves)) // 2)


def all_project_keys(site: Site) -> list[str]:
    return sorted(p.key for p in site.store.projects.values())


@pytest.mark.parametrize("answer", ["as_is", "without_total", "total_grew"])
def test_project_pages_after_the_first_are_asked_for_at_once(
    site: Site, mapping: Mapping, monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    """The first page's ``total`` says which pages follow; they are asked for concurrently. Without a
    total, the pages follow one by one; when more projects came after the first page (its total was
    smaller), the pages past it follow one by one. Every project once, every page once."""
    monkeypatch.setattr(connector_module, "PROJECT_PAGE_SIZE", 3)
    keys = all_project_keys(site)
    assert len(keys) > 9

    edited = []

    def edit(page: dict[str, Any]) -> dict[str, Any]:
        edited.append(page["startAt"])
        if answer == "without_total":
            page.pop("total")
        if answer == "total_grew" and page["startAt"] == 0:
            page["total"] = 7  # 2 more pages to ask for at once, then on one by one
        return page

    site.app.edit_projects = edit
    connector = site.connector(mapping)
    assert connector.project_keys() == keys
    connector.close()
    starts = sorted(int(r.query["startAt"][0]) for r in site.log.records(endpoint="project.search"))
    assert starts == sorted(edited) == list(range(0, len(keys), 3))


def test_full_read_concurrency_is_bounded_by_settings(site: Site, mapping: Mapping) -> None:
    site.app.hold_s, site.app.expect_parallel = 0.2, 2
    connector = site.connector(mapping, concurrency=2)
    batches = read(connector, None, full=True)
    connector.close()
    assert len(records(batches)) == ISSUES
    # Two searches were in flight together (the read is concurrent), never a third.
    assert site.app.max_in_flight == 2
    assert site.log.summary()["jira"]["GET serverInfo"] == 2


# -- incremental --------------------------------------------------------------------------------------
def test_incremental_read_returns_exactly_the_changed_issues_with_one_search(site: Site, mapping: Mapping) -> None:
    first = site.connector(mapping)
    cursor = read(first, None)[-1].cursor
    assert cursor is not None
    first.close()
    changed, deleted = mutate(site, 12, seed=5)
    assert len(changed) >= 8

    mark = site.log.last_seq
    connector = site.connector(mapping)
    upper = datetime.now(UTC)
    batches = read(connector, cursor, upper=upper)
    connector.close()

    got = records(batches)
    assert {r.id for r in got} == changed
    for r in got:
        assert r.data == expected(site.store, site.store.issues[int(r.id)])
    assert batches[-1].cursor == iso(upper) and not batches[-1].reconcile and seen_in(batches) == set()
    assert batches[0].cursor == iso(max(r.updated_at for r in got))
    # One search; the minute literal is cursor - lookback in the API user's (the store's) zone.
    assert site.log.summary(since_seq=mark)["jira"] == {
        "GET myself": 1,
        "GET search_jql": 1,
        "GET serverInfo": 1,
    }
    (search,) = site.searches(mark)
    literal = minute_literal(cursor, 120, "America/Los_Angeles")
    assert search.query["jql"] == [f'updated >= "{literal}" ORDER BY updated ASC, key ASC']
    assert "reconcileIssues" not in search.query
    assert deleted.isdisjoint(r.id for r in got)


def test_issues_sharing_a_stamp_across_page_boundaries_are_not_lost(site: Site, mapping: Mapping) -> None:
    connector = site.connector(with_jira(mapping, page_size=2))
    cursor = read(connector, None)[-1].cursor
    assert cursor is not None
    changed, _ = mutate(site, 9, seed=8)
    stamps = {site.store.issues[int(i)].updated for i in changed}
    assert len(changed) >= 6 and len(stamps) == 1

    mark = site.log.last_seq
    batches = read(connector, cursor)
    assert {r.id for r in records(batches)} == changed
    pages = batches[:-1]
    assert [len(b.records) for b in pages] == [2] * (len(changed) // 2) + [1] * (len(changed) % 2)
    searches = site.searches(mark)
    assert len(searches) == len(pages) and all("nextPageToken" in s.query for s in searches[1:])

    # A run that stopped after the first page resumes from that page's cursor: the lookback reads
    # the shared stamp again, so the rest of the tie is still there.
    (stamp,) = stamps
    assert pages[0].cursor == iso(stamp)
    resumed = read(connector, pages[0].cursor)
    assert {r.id for r in records(resumed)} == changed
    connector.close()


def test_late_visible_changes_are_caught_by_the_lookback(site: Site, mapping: Mapping) -> None:
    connector = site.connector(mapping)
    cursor = read(connector, None)[-1].cursor
    changed, _ = mutate(site, 10, seed=3, late_share=1.0)
    assert len(changed) >= 6

    second = read(connector, cursor)
    assert records(second) == []
    later_cursor = second[-1].cursor
    assert later_cursor is not None

    site.store.release_pending()  # visible now, with their old stamps: older than the cursor
    third = read(connector, later_cursor)
    got = {r.id: r for r in records(third)}
    assert set(got) == changed
    later = parse_datetime(later_cursor)
    assert later is not None and all(r.updated_at <= later for r in got.values())
    connector.close()


@pytest.mark.parametrize(
    ("timezone", "cursor", "literal"),
    [
        ("America/Los_Angeles", "2025-01-15T12:34:56.789Z", "2025/01/15 04:32"),
        ("Asia/Kolkata", "2025-01-15T12:34:56.789Z", "2025/01/15 18:02"),
        ("Asia/Kolkata", "2025-07-01T18:29:10.000Z", "2025/07/01 23:57"),
    ],
)
def test_minute_literal_is_in_the_api_users_time_zone(
    mapping: Mapping, timezone: str, cursor: str, literal: str
) -> None:
    site = open_site(timezone)
    try:
        connector = site.connector(mapping)
        read(connector, cursor)
        search = site.searches()[0]
        assert search.query["jql"] == [f'updated >= "{literal}" ORDER BY updated ASC, key ASC']

        # The same bound over real data: a cursor inside the world's history reads exactly the
        # issues updated from the minute of (cursor - lookback) on, in any zone.
        stamps = sorted(v.updated for v in site.store.issues.values())
        middle = stamps[len(stamps) // 2]
        got = {r.id for r in records(read(connector, iso(middle)))}
        bound = (middle - timedelta(seconds=120)).replace(second=0, microsecond=0)
        want = {str(i) for i, v in site.store.issues.items() if v.updated >= bound}
        assert got == want and 100 < len(want) < 300
        connector.close()
    finally:
        site.server.stop()
    assert site.server.errors == []


# -- reconciliation and read-after-write ----------------------------------------------------------------
def test_reconcile_lists_live_ids_so_deleted_issues_disappear(site: Site, mapping: Mapping, tmp_path: Path) -> None:
    db = Store(f"sqlite:///{tmp_path / 'accord.sqlite'}")
    db.create_all()
    settings = AccordSettings(jira=site.settings(), database_url="sqlite://")

    def pull(*, full: bool, reconcile: bool) -> None:
        pull_source(
            "jira",
            settings,
            mapping,
            db,
            upper=datetime.now(UTC),
            full=full,
            reconcile=reconcile,
            connector_factory=lambda s, st, m: JiraConnector(site.settings(), m),
        )

    pull(full=False, reconcile=False)  # no cursor yet: a full read
    assert db.record_ids("jira", "issues") == site.live_ids()
    first_ids = site.live_ids()
    changed: set[str] = set()
    for seed in range(40, 60):
        more_changed, _ = mutate(site, 20, seed=seed)
        changed = (changed | more_changed) & site.live_ids()
        if len(first_ids - site.live_ids()) >= 3:
            break
    deleted = first_ids - site.live_ids()
    assert len(deleted) >= 3

    mark = site.log.last_seq
    pull(full=False, reconcile=True)
    assert db.record_ids("jira", "issues") == site.live_ids()
    gone = {r.id for r in db.iter_records("jira", include_deleted=True) if r.deleted}
    assert gone == deleted
    stored = {r.id: r.data for r in db.iter_records("jira")}
    for issue_id in changed:
        assert stored[issue_id] == expected(site.store, site.store.issues[int(issue_id)])
    summary = site.log.summary(since_seq=mark)["jira"]
    assert summary["GET project.search"] == 1 and summary["GET search_jql"] == 2
    (ids_search,) = [s for s in site.searches(mark) if s.query["fields"] == ["id"]]
    assert ids_search.query["maxResults"] == ["5000"] and ids_search.query["jql"][0].startswith("project in (")
    db.dispose()


def test_ids_known_to_have_changed_are_read_after_write(site: Site, mapping: Mapping) -> None:
    connector = site.connector(mapping)
    cursor = read(connector, None)[-1].cursor
    site.store.search_lag_seconds = 600.0  # the index trails writes by ten minutes
    written = sorted(site.live_ids(), key=int)[:3]
    for issue_id in written:
        site.store.add_comment(int(issue_id), "Reminder: follow-up due")

    lagging = site.connector(mapping)
    assert records(read(lagging, cursor)) == []  # the search does not see the writes yet
    lagging.close()

    connector.note_changed(written)
    mark = site.log.last_seq
    got = records(read(connector, cursor))
    assert {r.id for r in got} == set(written)
    for r in got:
        assert r.updated_at == site.store.issues[int(r.id)].updated
    (search,) = site.searches(mark)
    assert sorted(search.query["reconcileIssues"], key=int) == written

    mark = site.log.last_seq
    read(connector, cursor)  # the ids were used: the next read does not send them again
    assert all("reconcileIssues" not in s.query for s in site.searches(mark))
    connector.close()


def test_more_than_fifty_known_ids_are_read_in_groups(site: Site, mapping: Mapping) -> None:
    connector = site.connector(mapping)
    cursor = read(connector, None)[-1].cursor
    site.store.search_lag_seconds = 600.0
    written = sorted(site.live_ids(), key=int)[:60]
    for issue_id in written:
        site.store.add_comment(int(issue_id), "Reminder")
    connector.note_changed(written)

    mark = site.log.last_seq
    got = records(read(connector, cursor))
    assert {r.id for r in got} == set(written)
    main, extra = site.searches(mark)
    assert len(main.query["reconcileIssues"]) == 50
    assert extra.query["jql"][0].startswith("id in (") and len(extra.query["reconcileIssues"]) == 10
    connector.close()


# -- errors and retries -----------------------------------------------------------------------------------
def test_library_retries_are_off_by_default() -> None:
    settings = JiraSettings(server="https://x.atlassian.net", email="a@b.example", api_token=SecretStr("t"))
    assert settings.library_max_retries == 0


def test_rate_limit_is_retried_by_tenacity_honouring_retry_after(site: Site, mapping: Mapping) -> None:
    connector = site.connector(mapping, retry=RetrySettings(max_attempts=3, base_wait_s=0.0, max_wait_s=5))
    site.app.script = [(429, 1)]
    started = time.perf_counter()
    batches = read(connector, "2025-01-15T12:00:00.000Z")
    elapsed = time.perf_counter() - started
    connector.close()
    assert len(records(batches)) == ISSUES
    statuses = [s.status for s in site.searches()]
    assert statuses[:2] == [429, 200] and statuses.count(429) == 1
    assert 1.0 <= elapsed < 1.9  # Retry-After: 1 waited once, by our policy alone


def test_transient_errors_are_retried_in_one_layer_only(site: Site, mapping: Mapping) -> None:
    connector = site.connector(mapping)  # FAST_RETRY caps every wait at 0.05 s
    site.app.script = [(429, 0), (503, 1), (502, 0)]
    started = time.perf_counter()
    batches = read(connector, "2025-01-15T12:00:00.000Z")
    elapsed = time.perf_counter() - started
    connector.close()
    assert len(records(batches)) == ISSUES
    assert [s.status for s in site.searches()][:4] == [429, 503, 502, 200]
    # The jira library would have slept at least a second on the 429 and the 503 by itself.
    assert elapsed < 0.9


def test_rate_limit_that_persists_raises_rate_limited_with_retry_after(site: Site, mapping: Mapping) -> None:
    connector = site.connector(mapping, retry=RetrySettings(max_attempts=2, base_wait_s=0.0, max_wait_s=0.01))
    site.app.script = [(429, 7), (429, 7)]
    with pytest.raises(RateLimitedError) as caught:
        read(connector, "2025-01-15T12:00:00.000Z")
    connector.close()
    assert caught.value.status == 429 and caught.value.retry_after == 7
    assert [s.status for s in site.searches()] == [429, 429]


def test_revoked_token_is_an_auth_error_without_retries(site: Site, mapping: Mapping) -> None:
    site.app.expire_credentials()
    connector = site.connector(mapping)
    with pytest.raises(AuthError) as caught:
        read(connector, None)
    connector.close()
    assert caught.value.status == 401 and caught.value.__cause__ is None
    assert site.log.summary()["jira"] == {"GET project.search": 1, "GET serverInfo": 1}
    assert site.creds.api_token not in str(caught.value)


def test_a_server_that_is_not_cloud_is_a_config_error(site: Site, mapping: Mapping) -> None:
    site.app.deployment = "Server"
    connector = site.connector(mapping)
    with pytest.raises(ConfigError, match="deploymentType 'Server'"):
        read(connector, None)
    connector.close()
    assert site.log.summary()["jira"] == {"GET serverInfo": 1}


def test_a_query_jira_rejects_is_a_config_error_naming_the_purpose(site: Site, mapping: Mapping) -> None:
    connector = site.connector(mapping)
    hostile = 'summary ~ "jane.doe@client.example" AND nosuchfield = 1'
    with pytest.raises(ConfigError) as caught:
        list(connector.search_pages(hostile, fields=["id"], page_size=10, reconcile=[], what="probe"))
    connector.close()
    message = str(caught.value)
    assert message.startswith("jira: probe:") and "400" in message and "jane.doe" not in message
    assert [s.status for s in site.searches()] == [400]


def _jira_error(status: int, text: str = "", **headers: str) -> JIRAError:
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers)
    return JIRAError(text, status_code=status, url="https://x/rest/api/3/search/jql", response=response)


@pytest.mark.parametrize(
    ("exc", "kind", "status", "retry_after"),
    [
        (_jira_error(401), AuthError, 401, None),
        (_jira_error(403), AuthError, 403, None),
        (_jira_error(400, "Field 'x' does not exist"), ConfigError, 400, None),
        (_jira_error(400, "The provided next page token is invalid or expired."), PermanentError, 400, None),
        (_jira_error(404), ConfigError, 404, None),
        (_jira_error(410, "The requested API has been removed."), ConfigError, 410, None),
        (_jira_error(429, **{"Retry-After": "12"}), RateLimitedError, 429, 12.0),
        (_jira_error(429, **{"Retry-After": "soon"}), RateLimitedError, 429, None),
        (_jira_error(500), TransientError, 500, None),
        (_jira_error(503, **{"Retry-After": "2"}), TransientError, 503, 2.0),
        (_jira_error(504), TransientError, 504, None),
        (_jira_error(409), PermanentError, 409, None),
        (requests.ConnectionError("reset"), TransientError, None, None),
        (requests.Timeout("slow"), TransientError, None, None),
        (requests.exceptions.ChunkedEncodingError("cut"), TransientError, None, None),
        (requests.exceptions.SSLError("bad cert"), ConfigError, None, None),
    ],
)
def test_classify(exc: BaseException, kind: type, status: int | None, retry_after: float | None) -> None:
    error = classify(exc, "read changed issues")
    assert type(error) is kind and error.status == status
    assert getattr(error, "retry_after", None) == retry_after
    assert str(error).startswith("jira: read changed issues:")
    assert "does not exist" not in str(error) and "removed." not in str(error)


# -- escaping -------------------------------------------------------------------------------------------
def test_a_hostile_project_key_cannot_change_the_query(site: Site, mapping: Mapping) -> None:
    keys = sorted(p.key for p in site.store.projects.values())
    victim, other = keys[-1], keys[0]  # in different chunks of the full read
    hostile = f'{victim}") OR PROJECT IN ("{other}'
    project = next(p for p in site.store.projects.values() if p.key == victim)
    project.key = hostile  # renamed; the old key still works in JQL, as in Jira
    site.store.project_ids_by_key[hostile] = project.id

    connector = site.connector(mapping)
    got = records(read(connector, None))
    connector.close()
    ids = [r.id for r in got]
    assert len(ids) == len(set(ids)) == ISSUES  # pasted, the key would have read the other project twice
    assert {r.id for r in got if r.data["project"] == hostile} == {
        str(i) for i in site.store.project_issue_ids[project.id]
    }
    sent = [s.query["jql"][0] for s in site.searches()]
    escaped = f'"{victim}\\") OR PROJECT IN (\\"{other}"'
    assert sum(escaped in q for q in sent) == 1


def test_extra_fields_may_not_replace_built_in_attributes(mapping: Mapping) -> None:
    clashing = with_jira(mapping, extra_fields={"status": "customfield_10016"})
    with pytest.raises(ConfigError, match="status"):
        JiraConnector(JiraSettings(server="https://x", email="a@b.example", api_token=SecretStr("t")), clashing)


def test_tls_with_a_private_certificate_authority(mapping: Mapping, tmp_path: Path) -> None:
    cert, key = make_self_signed(tmp_path)
    site = open_site(tls=server_context(cert, key))
    try:
        assert site.server.base_url.startswith("https://")
        untrusted = site.connector(mapping)
        with pytest.raises(ConfigError, match="TLS verification failed"):
            read(untrusted, None)
        untrusted.close()
        trusted = site.connector(mapping, ca_cert=str(cert))
        assert len(records(read(trusted, None))) == ISSUES
        trusted.close()
    finally:
        site.server.stop()
    assert site.server.errors == []


def test_unknown_stream_is_a_config_error(site: Site, mapping: Mapping) -> None:
    connector = site.connector(mapping)
    with pytest.raises(ConfigError, match="unknown stream"):
        list(connector.read(WorkUnit("sprints"), None, upper=datetime.now(UTC), full=True, reconcile=False))
    assert site.log.last_seq == 0


def test_pages_are_read_whole_over_one_kept_alive_connection(site: Site, mapping: Mapping) -> None:
    """Each page's body is read in one piece (stream=True): the connection still goes back to the
    pool after every page, so one client makes one connection for all its pages."""
    connector = site.connector(with_jira(mapping, page_size=7), concurrency=1)
    try:
        batches = read(connector, None, full=True)
        pages = sum(b.meta["pages"] for b in batches)
        assert pages > 20 and len(records(batches)) == ISSUES
        [client] = connector._pool._all
        pools = list(client._session.adapters["http://"].poolmanager.pools._container.values())
        assert [p.num_connections for p in pools] == [1]
        assert pools[0].num_requests >= pages
    finally:
        connector.close()
