"""The Jira status writer against the Jira emulator, through the jira library over real HTTP.

Writes are counted from the emulator's own store (its comments and entity properties) and the
calls from its request log, on REST v3 (ADF bodies) and v2 (plain strings).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from pydantic import SecretStr

from connectors.base import WriteRequest, WriteResult
from connectors.errors import AuthError, ConfigError
from connectors.jira import JiraWriter
from connectors.jira import writer as writer_module
from connectors.jira.writer import (
    COMMENT_PAGE,
    MAX_TEXT_CHARS,
    PROJECTS_PER_QUERY,
    STATUS_LOOKBACK,
    comment_text,
    marker,
    markers_in,
    to_adf,
)
from connectors.retry import RetrySettings
from connectors.settings import JiraSettings
from engagement.mapping import Mapping, load_mapping
from sandbox.clock import Clock
from sandbox.credentials import JiraCredentials
from sandbox.generator import generate_world
from sandbox.http import ApiServer, Request, Response, Route
from sandbox.jira import JiraApp, JiraStore, adf
from sandbox.jira.app import jira_error
from sandbox.jira.model import Comment
from sandbox.recorder import RequestLog
from sandbox.world import World

SMALL = generate_world("small", 9, anchor=datetime.now(UTC) - timedelta(hours=1))
FAST_RETRY = RetrySettings(max_attempts=4, base_wait_s=0.0, max_wait_s=0.05)
PROPERTY = "com.accord.status"
VERSIONS = ["3", "2"]
HOSTILE = (
    'Health: "red" — it\'s \\ late; project = ACME OR 1=1 AND key in (ACME-1) ORDER BY key\n'
    "<script>alert('x')</script> {{ monospace }} {code}x{code} *bold* [link|http://evil] ${jndi:ldap://x}\n"
    "\n"
    "北京 · Zürich · 🚀 · tabs\tand  double  spaces  \n"
    "\n" + "long " * 2000
).rstrip()


class WriterJira(JiraApp):
    """The Jira emulator, plus scripted answers per route: ``before`` answers instead of the route
    (nothing applied), ``after`` answers a server error once the route has done its work (a
    response lost on the way back)."""

    def __init__(self, store: JiraStore, clock: Clock, credentials: JiraCredentials) -> None:
        super().__init__(store, clock, credentials)
        self.before: dict[str, list[tuple[int, int]]] = {}
        self.after: dict[str, list[int]] = {}
        self._script_lock = threading.Lock()

    def dispatch(self, request: Request, route: Route | None, path_known: bool) -> Response:
        name = route.name if route else ""
        with self._script_lock:
            pre = self.before[name].pop(0) if self.before.get(name) else None
            post = self.after[name].pop(0) if self.after.get(name) else None
        if pre is not None:
            status, retry_after = pre
            if status == 429:
                return self.rate_limited(request, retry_after)
            if status == 400:
                return jira_error(400, [], {"comment": "Comment body is not valid!"})
            return self.server_error(request, status)
        response = super().dispatch(request, route, path_known)
        return self.server_error(request, post) if post is not None else response


@dataclass
class Site:
    store: JiraStore
    app: WriterJira
    server: ApiServer
    log: RequestLog
    creds: JiraCredentials

    def settings(self, version: str = "3", **changes: Any) -> JiraSettings:
        base: dict[str, Any] = {
            "server": self.server.base_url,
            "email": self.creds.email,
            "api_token": SecretStr(self.creds.api_token),
            "rest_api_version": version,
            "retry": FAST_RETRY,
        }
        return JiraSettings.model_validate({**base, **changes})

    def writer(self, mapping: Mapping, version: str = "3", **changes: Any) -> JiraWriter:
        return JiraWriter(self.settings(version, **changes), mapping)

    def issue_id(self, key: str) -> int:
        return self.store.issue_ids_by_key[key]

    def comments(self, key: str) -> list[Comment]:
        return list(self.store.comments_of(self.issue_id(key)))

    def property(self, key: str) -> Any:
        return self.store.properties.get(self.issue_id(key), {}).get(PROPERTY)

    def calls(self, since: int = 0) -> dict[str, int]:
        """Requests per route since ``since``, client construction (serverInfo) left out."""
        counts = dict(self.log.summary(since).get("jira", {}))
        counts.pop("GET serverInfo", None)
        return counts

    def epics(self) -> list[str]:
        return sorted(
            (v.key for v in self.store.issues.values() if v.issue_type == "Epic" and not v.deleted),
            key=lambda k: (k.rsplit("-", 1)[0], int(k.rsplit("-", 1)[1])),
        )


def open_site(world: World) -> Site:
    clock, creds, log = Clock(), JiraCredentials(), RequestLog()
    store = JiraStore.from_world(world, clock)
    app = WriterJira(store, clock, creds)
    server = ApiServer(app, log)
    app.base_url = server.base_url
    server.start()
    return Site(store, app, server, log, creds)


@pytest.fixture
def site() -> Iterator[Site]:
    s = open_site(SMALL)
    yield s
    s.server.stop()
    assert s.server.errors == []


@pytest.fixture(scope="module")
def big_site() -> Iterator[Site]:
    """A medium org: several hundred projects."""
    s = open_site(generate_world("medium", 1))
    yield s
    s.server.stop()
    assert s.server.errors == []


@pytest.fixture(scope="module")
def mapping() -> Mapping:
    return load_mapping("mappings/default.yaml")


def with_push(mapping: Mapping, **changes: Any) -> Mapping:
    jira = mapping.push.jira.model_validate({**mapping.push.jira.model_dump(), **changes})
    return mapping.model_copy(update={"push": mapping.push.model_copy(update={"jira": jira})})


def status(issue: str, key: str | None = None, *, health: str = "red", body: str | None = None) -> WriteRequest:
    key = key or f"status:{issue}:2024-05-06:{health}"
    return WriteRequest(
        key=key,
        kind="jira_status_comment",
        payload={
            "issue_key": issue,
            "body": body or f"Status: {health}.\n\nTwo issues overdue.\nOne blocked.",
            "property_key": PROPERTY,
            "property_value": {"key": key, "health": health, "posted_at": "2024-05-06T09:00:00+00:00"},
        },
    )


def text_of(comment: Comment) -> str:
    body = comment.body
    return body if isinstance(body, str) else adf.document_to_text(body)


def read_v2(site: Site, issue: str, comment_id: str) -> str:
    """A comment's body as REST v2 answers it: plain text, whatever version posted it."""
    response = requests.get(
        f"{site.server.base_url}/rest/api/2/issue/{issue}/comment/{comment_id}",
        auth=(site.creds.email, site.creds.api_token),
        timeout=10,
    )
    response.raise_for_status()
    body = response.json()["body"]
    assert isinstance(body, str)
    return body


# -- the comment body, without HTTP -----------------------------------------------------------------
def test_adf_keeps_every_character_as_text() -> None:
    text = comment_text(HOSTILE, "k-1")
    doc = to_adf(text)
    assert adf.is_valid_document(doc)
    assert adf.document_to_text(doc) == text
    assert {node["type"] for p in doc["content"] for node in p["content"]} == {"text", "hardBreak"}
    assert not any("marks" in node for p in doc["content"] for node in p["content"])
    assert doc["content"][-1] == {"type": "paragraph", "content": [{"type": "text", "text": marker("k-1")}]}
    assert markers_in(doc) == ["k-1"]
    assert markers_in(text) == ["k-1"]


def test_body_is_cleaned_and_cut_but_the_marker_survives() -> None:
    text = comment_text("a\r\nb\x00c\x1b[31m\n\n" + "x" * (2 * MAX_TEXT_CHARS), "k")
    assert text.startswith("a\nbc[31m\n\nxxx")
    assert text.endswith("…\n\n" + marker("k"))
    assert len(text) == MAX_TEXT_CHARS + len("\n\n" + marker("k"))
    assert markers_in("quoted: " + marker("k")) == []  # only a line of its own counts


# -- posting ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_twelve_statuses_are_twelve_comments_and_twelve_properties(site: Site, mapping: Mapping, version: str) -> None:
    issues = sorted(site.store.issue_ids_by_key, key=site.issue_id)[:12]
    batch = [status(i) for i in issues]
    writer = site.writer(mapping, version)
    results = writer.write(batch)
    writer.close()

    assert [r.key for r in results] == [r.key for r in batch]
    assert all(r.ok and r.outcome == "created" and r.error is None for r in results)
    for request, result in zip(batch, results, strict=True):
        [comment] = site.comments(request.payload["issue_key"])
        assert str(comment.id) == result.target_id
        assert isinstance(comment.body, dict if version == "3" else str)
        assert text_of(comment) == ("Status: red.\n\nTwo issues overdue.\nOne blocked.\n\n" + marker(request.key))
        assert site.property(request.payload["issue_key"]) == request.payload["property_value"]
    assert site.store.counts()["comments"] == 12
    assert site.store.counts()["properties"] == 12
    assert site.calls() == {"GET comments.list": 12, "POST comments.add": 12, "PUT properties.put": 12}
    scans = site.log.records(endpoint="comments.list")
    assert {(r.query["orderBy"][0], r.query["maxResults"][0], r.query["startAt"][0]) for r in scans} == {
        ("-created", str(COMMENT_PAGE), "0")
    }
    assert all(r.path.startswith(f"/rest/api/{version}/") for r in site.log.records(api="jira"))
    assert site.log.count(endpoint="serverInfo") <= site.settings().concurrency


@pytest.mark.parametrize("version", VERSIONS)
def test_the_same_statuses_again_post_nothing(site: Site, mapping: Mapping, version: str) -> None:
    issues = sorted(site.store.issue_ids_by_key, key=site.issue_id)[:12]
    batch = [status(i) for i in issues]
    first = site.writer(mapping, version)
    created = first.write(batch)
    first.close()
    since = site.log.last_seq

    again = site.writer(mapping, version)
    results = again.write(batch)
    again.close()

    assert [r.outcome for r in results] == ["exists"] * 12
    assert [r.target_id for r in results] == [r.target_id for r in created]
    assert site.store.counts()["comments"] == 12
    assert all(len(site.comments(i)) == 1 for i in issues)
    # Read only: the marker scan and the property, nothing written.
    assert site.calls(since) == {"GET comments.list": 12, "GET properties.get": 12}


@pytest.mark.parametrize("version", VERSIONS)
def test_a_crash_between_comment_and_property_leaves_one_comment_and_the_property_set(
    site: Site, mapping: Mapping, version: str
) -> None:
    issue = site.epics()[0]
    site.store.set_property(site.issue_id(issue), PROPERTY, {"key": "an earlier status", "health": "green"})
    request = status(issue)

    class Crash(BaseException):
        """The process dies: nothing after this runs, the outbox never hears of the comment."""

    crashing = site.writer(mapping, version)

    def crash(issue: str, key: str, value: dict[str, Any]) -> None:
        raise Crash

    crashing._put_property = crash  # type: ignore[method-assign]  # the crash point under test
    with pytest.raises(Crash):
        crashing.write([request])
    crashing.close()
    assert len(site.comments(issue)) == 1
    assert site.property(issue) == {"key": "an earlier status", "health": "green"}  # stale
    since = site.log.last_seq

    rerun = site.writer(mapping, version)
    [result] = rerun.write([request])
    rerun.close()

    assert result.ok and result.outcome == "exists"
    [comment] = site.comments(issue)
    assert result.target_id == str(comment.id)
    assert site.property(issue) == request.payload["property_value"]
    assert site.calls(since) == {"GET comments.list": 1, "GET properties.get": 1, "PUT properties.put": 1}


def test_the_marker_is_found_behind_many_newer_comments(site: Site, mapping: Mapping) -> None:
    issue = site.epics()[0]
    request = status(issue)
    writer = site.writer(mapping)
    writer._put_property = lambda *_: (_ for _ in ()).throw(KeyboardInterrupt)  # type: ignore[method-assign]  # crash
    with pytest.raises(KeyboardInterrupt):
        writer.write([request])
    writer.close()
    for n in range(2 * COMMENT_PAGE + 10):  # people keep talking before the re-run
        site.store.add_comment(site.issue_id(issue), f"human comment {n}")
    since = site.log.last_seq

    rerun = site.writer(mapping)
    [result] = rerun.write([request])
    rerun.close()

    assert result.outcome == "exists"
    assert len(site.comments(issue)) == 2 * COMMENT_PAGE + 11
    assert site.calls(since)["GET comments.list"] == 3
    starts = [r.query["startAt"][0] for r in site.log.records(endpoint="comments.list", since_seq=since)]
    assert starts == ["0", str(COMMENT_PAGE), str(2 * COMMENT_PAGE)]


def test_the_scan_stops_a_few_status_comments_back(site: Site, mapping: Mapping) -> None:
    issue = site.epics()[0]
    issue_id = site.issue_id(issue)
    for n in range(3 * COMMENT_PAGE):
        site.store.add_comment(issue_id, f"old human comment {n}")
    writer = site.writer(mapping)
    for week in range(STATUS_LOOKBACK):
        assert writer.write([status(issue, f"week-{week}")])[0].outcome == "created"
        for n in range(5):
            site.store.add_comment(issue_id, f"human comment {n} after week {week}")
    since = site.log.last_seq

    [result] = writer.write([status(issue, "this-week")])
    writer.close()

    assert result.outcome == "created"
    # One page, newest first, ends at the oldest of the recent status comments: the 150 older
    # comments are never read.
    assert site.calls(since) == {"GET comments.list": 1, "POST comments.add": 1, "PUT properties.put": 1}
    assert [k for c in site.comments(issue) for k in markers_in(c.body)] == [
        *(f"week-{w}" for w in range(STATUS_LOOKBACK)),
        "this-week",
    ]


def test_requests_for_one_issue_are_applied_in_order(site: Site, mapping: Mapping) -> None:
    epics = site.epics()
    batch = [
        status(epics[0], "a1", health="amber"),
        status(epics[1], "b1"),
        status(epics[0], "a2", health="red"),
        status(epics[0], "a1", health="amber"),  # re-sent after its successor
    ]
    writer = site.writer(mapping, concurrency=4)
    results = writer.write(batch)
    writer.close()

    assert [(r.key, r.outcome) for r in results] == [
        ("a1", "created"),
        ("b1", "created"),
        ("a2", "created"),
        ("a1", "exists"),
    ]
    assert [markers_in(c.body) for c in site.comments(epics[0])] == [["a1"], ["a2"]]
    # a1 found its comment below a2's: the property keeps the newer status.
    assert site.property(epics[0]) == batch[2].payload["property_value"]


@pytest.mark.parametrize("version", VERSIONS)
def test_hostile_text_arrives_intact_as_text(site: Site, mapping: Mapping, version: str) -> None:
    issue = site.epics()[0]
    request = status(issue, body=HOSTILE)
    writer = site.writer(mapping, version)
    [result] = writer.write([request])
    writer.close()

    assert result.outcome == "created"
    [comment] = site.comments(issue)
    expected = HOSTILE + "\n\n" + marker(request.key)
    if version == "3":
        assert isinstance(comment.body, dict)
        paragraphs = [
            "".join(n["text"] if n["type"] == "text" else "\n" for n in p["content"]) for p in comment.body["content"]
        ]
        assert paragraphs == expected.split("\n\n")
        assert all(p["type"] == "paragraph" for p in comment.body["content"])
    else:
        assert comment.body == expected
    assert read_v2(site, issue, str(comment.id)) == expected
    assert len(expected) > 10_000


# -- failures ---------------------------------------------------------------------------------------
def test_rate_limits_are_retried_honouring_retry_after_without_duplicates(site: Site, mapping: Mapping) -> None:
    epics = site.epics()[:3]
    site.app.before = {"comments.add": [(429, 1)], "properties.put": [(429, 1), (503, 0)]}
    retry = RetrySettings(max_attempts=4, base_wait_s=0.0, max_wait_s=0.2)
    writer = site.writer(mapping, retry=retry, concurrency=1)  # one at a time: the waits add up
    started = time.perf_counter()
    results = writer.write([status(e) for e in epics])
    elapsed = time.perf_counter() - started
    writer.close()

    assert [r.outcome for r in results] == ["created"] * 3
    assert all(len(site.comments(e)) == 1 for e in epics)
    assert all(site.property(e) is not None for e in epics)
    assert site.log.count(endpoint="comments.add", method="POST") == 4  # 3 + the throttled one
    assert [r.status for r in site.log.records(endpoint="properties.put")].count(429) == 1
    # Three waits, each Retry-After (1 s, the emulator's 503 included) capped by max_wait_s.
    assert elapsed >= 3 * 0.2


def test_a_lost_answer_after_the_comment_was_stored_does_not_duplicate_it(site: Site, mapping: Mapping) -> None:
    issue = site.epics()[0]
    site.app.after = {"comments.add": [503]}
    writer = site.writer(mapping)
    [result] = writer.write([status(issue)])
    writer.close()

    assert result.ok and result.outcome == "created"  # posted by this call, found by its retry
    [comment] = site.comments(issue)
    assert result.target_id == str(comment.id)
    assert site.property(issue) == status(issue).payload["property_value"]
    assert site.calls() == {
        "GET comments.list": 2,
        "POST comments.add": 1,
        "GET properties.get": 1,
        "PUT properties.put": 1,
    }


def test_throttling_that_outlasts_the_retries_is_a_retriable_failure(site: Site, mapping: Mapping) -> None:
    issue = site.epics()[0]
    site.app.before = {"comments.add": [(429, 0)] * FAST_RETRY.max_attempts}
    writer = site.writer(mapping)
    [result] = writer.write([status(issue)])
    writer.close()

    assert (result.ok, result.outcome, result.retriable) == (False, "failed", True)
    assert result.error == "jira: post a status comment: rate limited (429)"
    assert site.comments(issue) == []
    assert site.log.count(endpoint="comments.add") == FAST_RETRY.max_attempts


def test_a_missing_issue_fails_alone_and_is_not_retried(site: Site, mapping: Mapping) -> None:
    epic = site.epics()[0]
    batch = [status("ROBE-9999"), status(epic)]
    writer = site.writer(mapping)
    missing, posted = writer.write(batch)
    writer.close()

    assert (missing.ok, missing.outcome, missing.retriable, missing.error) == (
        False,
        "failed",
        False,
        "issue not found (404)",
    )
    assert posted.outcome == "created"
    assert site.log.count(endpoint="comments.list", path="ROBE-9999") == 1


def test_a_rejected_body_fails_without_retries_and_logs_only_the_key(
    site: Site, mapping: Mapping, caplog: pytest.LogCaptureFixture
) -> None:
    issue = site.epics()[0]
    site.app.before = {"comments.add": [(400, 0)]}
    request = status(issue, body="Secret client note about Jane Doe")
    writer = site.writer(mapping)
    with caplog.at_level(logging.INFO, logger="accord"):
        [result] = writer.write([request])
    writer.close()

    assert (result.ok, result.retriable) == (False, False)
    assert result.error == "Jira rejected the comment or property (400)"
    assert site.log.count(endpoint="comments.add") == 1
    assert request.key in caplog.text
    assert "Jane Doe" not in caplog.text and "Jane Doe" not in (result.error or "")


def test_requests_that_cannot_be_sent_fail_without_calls(site: Site, mapping: Mapping) -> None:
    good = status(site.epics()[0])
    bad = [
        replace(good, kind="task"),
        replace(good, key="has a space"),
        replace(good, payload={**good.payload, "issue_key": "../../myself"}),
        replace(good, payload={**good.payload, "body": "  "}),
        replace(good, payload={**good.payload, "property_key": "a/b"}),
        replace(good, payload={**good.payload, "property_value": {"x": "y" * 40_000}}),
        replace(good, payload={**good.payload, "property_value": "red"}),
    ]
    writer = site.writer(mapping)
    results = writer.write(bad)
    writer.close()

    assert all(r.outcome == "failed" and not r.retriable and r.error for r in results)
    assert all("y" * 20 not in (r.error or "") for r in results)
    assert site.log.records(api="jira") == []


def test_a_revoked_token_is_an_auth_error(site: Site, mapping: Mapping) -> None:
    site.app.expire_credentials()
    writer = site.writer(mapping)
    with pytest.raises(AuthError) as caught:
        writer.write([status(e) for e in site.epics()[:3]])
    assert caught.value.status == 401
    with pytest.raises(AuthError):
        writer.last_posted(site.epics()[:2])
    with pytest.raises(AuthError):
        writer.status_issue_keys(["ROBE"])
    writer.close()
    assert site.store.counts()["comments"] == 0
    assert all(r.status == 401 for r in site.log.records(api="jira") if r.endpoint != "serverInfo")
    assert site.log.count(endpoint="comments.list") <= site.settings().concurrency  # no retries


# -- reads for the planner -------------------------------------------------------------------------------
def test_last_posted_reads_the_property(site: Site, mapping: Mapping) -> None:
    epics = site.epics()
    writer = site.writer(mapping)
    writer.write([status(epics[0], health="amber"), status(epics[1])])
    since = site.log.last_seq

    posted = writer.last_posted([epics[0], epics[1], epics[2], "ROBE-9999"])
    writer.close()

    assert posted == {
        epics[0]: status(epics[0], health="amber").payload["property_value"],
        epics[1]: status(epics[1]).payload["property_value"],
        epics[2]: None,
        "ROBE-9999": None,
    }
    assert site.calls(since) == {"GET properties.get": 4}


def expected_status_issues(site: Site, projects: list[str], label: str | None) -> dict[str, str | None]:
    found: dict[str, str | None] = dict.fromkeys(projects)
    for v in sorted(site.store.issues.values(), key=lambda v: v.number, reverse=True):
        project = site.store.projects[v.project_id].key
        if v.deleted or project not in found:
            continue
        if (label is None and v.issue_type == "Epic") or (label is not None and label in v.labels):
            found[project] = v.key
    return found


def test_first_epic_of_hundreds_of_projects_in_a_few_searches(big_site: Site, mapping: Mapping) -> None:
    projects = sorted(p.key for p in big_site.store.projects.values())
    since = big_site.log.last_seq
    writer = big_site.writer(mapping)
    found = writer.status_issue_keys(projects)
    writer.close()

    expected = expected_status_issues(big_site, projects, None)
    assert found == expected
    assert sum(v is not None for v in found.values()) > 0.8 * len(projects)
    searches = big_site.log.records(endpoint="search_jql", since_seq=since)
    assert len(searches) == -(-len(projects) // PROJECTS_PER_QUERY) > 1
    assert big_site.calls(since) == {"GET search_jql": len(searches)}
    for s in searches:
        assert s.query["fields"] == ["key"]
        assert " AND issuetype = Epic ORDER BY key ASC" in s.query["jql"][0]


def test_labelled_status_issues_in_a_few_searches(big_site: Site, mapping: Mapping) -> None:
    projects = sorted(p.key for p in big_site.store.projects.values())
    labelled = with_push(mapping, status_issue="labelled", status_label="accord-status")
    by_project: dict[str, list[int]] = {}
    for v in big_site.store.issues.values():
        by_project.setdefault(big_site.store.projects[v.project_id].key, []).append(v.id)
    # Every third project gets the label on two issues (the lower number wins), the rest none.
    for project in projects[::3]:
        for issue_id in sorted(by_project[project])[-2:]:
            old = big_site.store.issues[issue_id]
            big_site.store.edit_issue(issue_id, {"labels": (*old.labels, "accord-status")})
    since = big_site.log.last_seq
    writer = big_site.writer(labelled)
    found = writer.status_issue_keys(projects)
    writer.close()

    expected = expected_status_issues(big_site, projects, "accord-status")
    assert found == expected
    assert sum(v is not None for v in found.values()) == len(projects[::3])
    searches = big_site.log.records(endpoint="search_jql", since_seq=since)
    assert len(searches) == -(-len(projects) // PROJECTS_PER_QUERY)
    assert all(' AND labels = "accord-status" ORDER BY' in s.query["jql"][0] for s in searches)


def test_projects_jira_does_not_know_are_none_for_one_listing_and_one_more_search(site: Site, mapping: Mapping) -> None:
    projects = sorted(p.key for p in site.store.projects.values())
    asked = [*projects[:5], "GHOST", *projects[5:], 'X" OR project is not EMPTY', projects[0].lower()]
    writer = site.writer(mapping)
    found = writer.status_issue_keys(asked)
    writer.close()

    expected = expected_status_issues(site, projects, None)
    assert found == {
        **expected,
        "GHOST": None,
        'X" OR project is not EMPTY': None,
        projects[0].lower(): expected[projects[0]],
    }
    assert [r.status for r in site.log.records(endpoint="search_jql")] == [400, 200]
    assert site.calls() == {"GET search_jql": 2, "GET project.search": 1}


def test_a_search_jira_rejects_for_another_reason_raises(site: Site, mapping: Mapping) -> None:
    projects = sorted(p.key for p in site.store.projects.values())
    writer = site.writer(mapping)
    site.app.before = {"search_jql": [(400, 0)]}
    with pytest.raises(ConfigError) as caught:
        writer.status_issue_keys(projects)
    writer.close()
    assert caught.value.status == 400
    assert site.calls() == {"GET search_jql": 1, "GET project.search": 1}


def test_projects_per_query_is_what_bounds_the_searches(
    site: Site, mapping: Mapping, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "PROJECTS_PER_QUERY", 3)
    projects = sorted(p.key for p in site.store.projects.values())
    writer = site.writer(mapping)
    assert writer.status_issue_keys(projects) == expected_status_issues(site, projects, None)
    writer.close()
    assert site.log.count(endpoint="search_jql") == -(-len(projects) // 3)


def test_results_keep_request_order_under_concurrency(site: Site, mapping: Mapping) -> None:
    issues = sorted(site.store.issue_ids_by_key, key=site.issue_id)[:20]
    batch = [status(i) for i in reversed(issues)]
    writer = site.writer(mapping, concurrency=6)
    results: list[WriteResult] = writer.write(batch)
    writer.close()
    assert [r.key for r in results] == [r.key for r in batch]
    for request, result in zip(batch, results, strict=True):
        [comment] = site.comments(request.payload["issue_key"])
        assert result.target_id == str(comment.id)


def test_the_environment_is_read_once_per_client_not_per_request(
    site: Site, mapping: Mapping, monkeypatch: pytest.MonkeyPatch
) -> None:
    # requests walks os.environ for proxies on every request: a fifth of a write's CPU.
    reads = 0
    environ_proxies = requests.sessions.get_environ_proxies

    def counted(url: str, no_proxy: str | None = None) -> dict[str, str]:
        nonlocal reads
        reads += 1
        return environ_proxies(url, no_proxy=no_proxy)

    monkeypatch.setattr(requests.sessions, "get_environ_proxies", counted)
    issues = sorted(site.store.issue_ids_by_key, key=site.issue_id)[:6]
    writer = site.writer(mapping, concurrency=1)
    results = writer.write([status(i) for i in issues])
    writer.close()
    assert all(r.ok and r.outcome == "created" for r in results)
    requests_made = sum(site.calls().values()) + site.log.count(endpoint="serverInfo")
    assert requests_made >= 18
    assert reads <= 2  # the client's server check, made before it is ours, and its first request


def test_the_writer_keeps_its_threads_from_one_call_to_the_next(
    site: Site, mapping: Mapping, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A push calls write once per chunk of ten: starting threads for each cost more than the writes.
    pools: list[Any] = []
    executor = writer_module.ThreadPoolExecutor

    class Counted(executor):  # type: ignore[misc,valid-type]  # the executor class the writer uses, found at run time
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            pools.append(self)

    monkeypatch.setattr(writer_module, "ThreadPoolExecutor", Counted)
    issues = sorted(site.store.issue_ids_by_key, key=site.issue_id)[:9]
    writer = site.writer(mapping, concurrency=3)
    try:
        for start in range(0, 9, 3):  # three calls, three issues each: written concurrently
            results = writer.write([status(i) for i in issues[start : start + 3]])
            assert all(r.ok and r.outcome == "created" for r in results)
        assert len(pools) == 1 and pools[0]._max_workers == 3
    finally:
        writer.close()
    assert pools[0]._shutdown  # closing the writer ends its threads
    assert site.store.counts()["comments"] == 9
