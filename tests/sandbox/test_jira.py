"""The Jira Cloud emulator driven by the real ``jira`` 3.10.5 client over HTTP.

One module-scoped server serves a hand-built world (expected answers are computed from it); tests
that move the world on (mutations, search lag, writes that must not disturb others) use their own
stores or restore what they change.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests
from jira import JIRA, JIRAError

from sandbox.clock import Clock
from sandbox.credentials import JiraCredentials
from sandbox.generator import generate_world
from sandbox.http import ApiServer
from sandbox.jira import JiraApp, JiraStore
from sandbox.recorder import RequestLog
from sandbox.world import STATUS_CATEGORY, Engagement, Issue, User, World

LA = ZoneInfo("America/Los_Angeles")
BASE = datetime(2025, 1, 10, 12, 0, tzinfo=UTC)
STATUSES = ("To Do", "In Progress", "Blocked", "In Review", "Done")
PRIORITIES = ("Highest", "High", "Medium", "Low")
ALPHA_SIZE = 320
ADF_HELLO = {
    "type": "doc",
    "version": 1,
    "content": [
        {
            "type": "paragraph",
            "content": [
                {"type": "text", "text": "Hello "},
                {"type": "text", "text": "team", "marks": [{"type": "strong"}]},
            ],
        },
        {
            "type": "paragraph",
            "content": [
                {"type": "text", "text": "line one"},
                {"type": "hardBreak"},
                {"type": "text", "text": "line two"},
            ],
        },
    ],
}


def _account_ids(count: int) -> tuple[list[str], str]:
    """``count`` account ids whose owners show their email, and one whose owner hides it."""
    shown: list[str] = []
    hidden: str | None = None
    n = 0
    while len(shown) < count or hidden is None:
        candidate = f"61a2b3c4d5{n:014x}"
        if zlib.crc32(candidate.encode()) % 10 == 0:
            hidden = hidden or candidate
        elif len(shown) < count:
            shown.append(candidate)
        n += 1
    return shown, hidden


def make_world() -> World:
    shown, hidden = _account_ids(5)
    names = [
        ("Ada", "Byron"),
        ("Ben", "Okafor"),
        ("Chen", "Wu"),
        ("Dana", "Ruiz"),
        ("Eli", "Sato"),
        ("Fay", "Lund"),
    ]
    users = [
        User(
            f"user-{i}",
            first,
            last,
            f"{first.lower()}.{last.lower()}@agency.example",
            "PM",
            None,
            "Europe/Berlin",
            True,
            BASE - timedelta(days=500),
            account,
        )
        for i, ((first, last), account) in enumerate(zip(names, [*shown, hidden], strict=True))
    ]
    engagements = [
        Engagement(
            f"eng-{k}",
            "client-1",
            f"{k} engagement",
            "Closed Won",
            5000.0,
            date(2025, 6, 1),
            "user-0",
            k,
            f"{k.title()} Programme",
            BASE - timedelta(days=200),
            BASE - timedelta(days=2),
        )
        for k in ("ALPHA", "BETA")
    ]
    issues: list[Issue] = []
    start = BASE - timedelta(days=90)
    for n in range(1, ALPHA_SIZE + 1):
        epic = n <= 4
        status = "In Progress" if epic else STATUSES[n % 5]
        created = start + timedelta(hours=n)
        updated = created + timedelta(days=n % 30, seconds=n * 7, milliseconds=n)
        issues.append(
            Issue(
                key=f"ALPHA-{n}",
                project_key="ALPHA",
                summary=f"Work item {n}",
                issue_type="Epic" if epic else ("Story", "Task", "Bug")[n % 3],
                status=status,
                epic_key=None if epic or n % 9 == 0 else f"ALPHA-{n % 4 + 1}",
                assignee_key=None if n % 7 == 0 else f"user-{n % 6}",
                reporter_key="user-0",
                labels=["blocked"] if n % 11 == 0 else [],
                priority=PRIORITIES[n % 4],
                due_date=None if epic or n % 3 == 0 else (BASE + timedelta(days=n % 40 - 20)).date(),
                created=created,
                updated=updated,
                resolution_date=updated if status == "Done" else None,
            )
        )
    boundary = [
        ("BETA-1", datetime(2025, 1, 15, 10, 0, 30, 250000, tzinfo=LA), "Boundary at 10:00:30"),
        ("BETA-2", datetime(2025, 1, 15, 9, 59, 59, 999000, tzinfo=LA), "Boundary at 09:59:59"),
        ("BETA-3", datetime(2025, 1, 15, 10, 1, 0, tzinfo=LA), "Boundary at 10:01"),
    ]
    for key, updated_local, summary in boundary:
        updated = updated_local.astimezone(UTC)
        issues.append(
            Issue(
                key,
                "BETA",
                summary,
                "Task",
                "In Progress",
                None,
                "user-5",
                "user-0",
                [],
                "Medium",
                None,
                updated - timedelta(days=5),
                updated,
                None,
            )
        )
    return World(7, "test", BASE, users, [], [], engagements, [], issues, [])


class Harness:
    """A served store with its clients: ``jira`` (v2), ``jira3`` (v3)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.clock = Clock()
        self.store = JiraStore.from_world(world, self.clock, timezone="America/Los_Angeles")
        self.credentials = JiraCredentials()
        self.app = JiraApp(self.store, self.clock, self.credentials)
        self.log = RequestLog()
        self.server = ApiServer(self.app, self.log)
        self.app.base_url = self.server.base_url
        self.server.start()
        auth = (self.credentials.email, self.credentials.api_token)
        self.jira = JIRA(self.server.base_url, basic_auth=auth)
        self.jira3 = JIRA(self.server.base_url, basic_auth=auth, options={"rest_api_version": "3"})

    @property
    def url(self) -> str:
        return self.server.base_url

    def raw(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        auth = (self.credentials.email, self.credentials.api_token)
        return requests.request(method, self.url + path, auth=auth, timeout=10, **kwargs)

    def calls(self, endpoint: str, since: int) -> list[Any]:
        return self.log.records(endpoint=endpoint, since_seq=since)

    def stop(self) -> None:
        self.server.stop()
        assert self.server.errors == []


@pytest.fixture(scope="module")
def world() -> World:
    return make_world()


@pytest.fixture(scope="module")
def h(world: World) -> Iterator[Harness]:
    harness = Harness(world)
    yield harness
    harness.stop()


@pytest.fixture
def fresh() -> Iterator[Harness]:
    """A harness of its own, for tests that move the world on."""
    harness = Harness(make_world())
    yield harness
    harness.stop()


def alpha_keys(world: World) -> set[str]:
    return {i.key for i in world.issues if i.project_key == "ALPHA"}


# -- construction, catalogue, auth ---------------------------------------------------------------------


def test_client_sees_a_cloud_site_and_serverinfo_is_anonymous(h: Harness) -> None:
    assert h.jira.deploymentType == "Cloud"
    assert h.jira._version == (1001, 0, 0)
    anonymous = requests.get(h.url + "/rest/api/3/serverInfo", timeout=10)
    assert anonymous.status_code == 200 and anonymous.json()["deploymentType"] == "Cloud"
    assert anonymous.json()["baseUrl"] == h.url


def test_myself_field_and_projects(h: Harness, world: World) -> None:
    me = h.jira.myself()
    assert me["timeZone"] == "America/Los_Angeles"
    assert me["emailAddress"] == h.credentials.email and me["accountType"] == "atlassian"
    fields = h.jira.fields()
    by_id = {f["id"]: f for f in fields}
    assert {"summary", "status", "updated", "duedate", "customfield_10016"} <= set(by_id)
    assert by_id["customfield_10016"]["custom"] is True and "cf[10016]" in by_id["customfield_10016"]["clauseNames"]
    assert all({"id", "key", "name", "custom", "clauseNames"} <= set(f) for f in fields)
    projects = h.jira.projects()
    assert [p.key for p in projects] == ["ALPHA", "BETA"]
    alpha = h.jira.project("ALPHA")
    assert alpha.projectTypeKey == "software"
    assert alpha.lead.accountId == world.users[0].jira_account_id
    assert [t.name for t in alpha.issueTypes] == ["Epic", "Story", "Task", "Bug"]
    assert h.jira.project(alpha.id).key == "ALPHA"
    paged = h.raw("GET", "/rest/api/3/project/search", params={"maxResults": 1}).json()
    assert (paged["total"], paged["isLast"], [p["key"] for p in paged["values"]]) == (2, False, ["ALPHA"])
    with pytest.raises(JIRAError) as missing:
        h.jira.project("NOPE")
    assert missing.value.status_code == 404 and "No project could be found with key 'NOPE'" in missing.value.text


def test_wrong_token_gets_401_and_no_data(h: Harness) -> None:
    bad = JIRA(h.url, basic_auth=(h.credentials.email, "ATATT3x-not-the-token"), max_retries=0)
    with pytest.raises(JIRAError) as denied:
        bad.enhanced_search_issues("project = ALPHA")
    assert denied.value.status_code == 401
    assert denied.value.text == "Client must be authenticated to access this resource."
    assert "ALPHA-" not in denied.value.response.text
    assert denied.value.response.headers["X-Seraph-LoginReason"] == "AUTHENTICATED_FAILED"
    for path in ("/rest/api/2/myself", "/rest/api/3/issue/ALPHA-1", "/rest/api/2/field"):
        anonymous = requests.get(h.url + path, timeout=10)
        assert anonymous.status_code == 401 and "ALPHA" not in anonymous.text


def test_expired_credentials_answer_401_until_restored(fresh: Harness) -> None:
    fresh.app.expire_credentials()
    with pytest.raises(JIRAError) as denied:
        fresh.jira.issue("ALPHA-1")
    assert denied.value.status_code == 401
    assert fresh.raw("GET", "/rest/api/2/serverInfo").status_code == 200
    fresh.app.restore_credentials()
    assert fresh.jira.issue("ALPHA-1").key == "ALPHA-1"


# -- search ------------------------------------------------------------------------------------------------


def test_enhanced_search_pages_through_everything_once(h: Harness, world: World) -> None:
    since = h.log.last_seq
    issues = h.jira.enhanced_search_issues("project = ALPHA ORDER BY key ASC", maxResults=0, fields="summary")
    got = [i.key for i in issues]
    assert got == [f"ALPHA-{n}" for n in range(1, ALPHA_SIZE + 1)]
    calls = h.calls("search_jql", since)
    assert len(calls) == 4  # pages of 100
    assert "nextPageToken" not in calls[0].query
    assert all("nextPageToken" in c.query for c in calls[1:])
    assert len({c.query["nextPageToken"][0] for c in calls[1:]}) == 3


def test_search_issues_on_cloud_uses_search_jql(h: Harness, world: World) -> None:
    since = h.log.last_seq
    issues = h.jira.search_issues("project = ALPHA", maxResults=0, fields=["status"])
    assert {i.key for i in issues} == alpha_keys(world) and len(issues) == ALPHA_SIZE
    assert h.log.count(endpoint="search", since_seq=since) == 0
    assert h.log.count(endpoint="search_jql", since_seq=since) == 4
    by_key = {i.key: i for i in world.issues}
    for issue in issues:
        status = issue.fields.status
        assert status.name == by_key[issue.key].status
        assert status.statusCategory.key == STATUS_CATEGORY[status.name]
    with pytest.raises(JIRAError):
        h.jira.search_issues("project = ALPHA", startAt=50)


def test_max_results_50_is_one_page(h: Harness) -> None:
    since = h.log.last_seq
    issues = h.jira.enhanced_search_issues("project = ALPHA ORDER BY created DESC", maxResults=50)
    assert len(issues) == 50 and issues[0].key == f"ALPHA-{ALPHA_SIZE}"
    assert h.log.count(endpoint="search_jql", since_seq=since) == 1


def test_post_search_with_nulls_and_all_pages(h: Harness, world: World) -> None:
    since = h.log.last_seq
    issues = h.jira.enhanced_search_issues("project = ALPHA", maxResults=0, use_post=True, fields=["key"])
    assert sorted(i.key for i in issues) == sorted(alpha_keys(world))
    posts = h.log.records(endpoint="search_jql", method="POST", since_seq=since)
    assert len(posts) == 4 and "reconcileIssues" in posts[0].body_keys
    body = {
        "jql": "project = BETA",
        "fields": None,
        "expand": None,
        "properties": None,
        "reconcileIssues": None,
    }
    answer = h.raw("POST", "/rest/api/3/search/jql", json=body)
    assert answer.status_code == 200 and len(answer.json()["issues"]) == 3
    refused = h.raw("POST", "/rest/api/3/search/jql", json={"jql": "project = BETA", "startAt": 0})
    assert refused.status_code == 400 and refused.json()["errors"] == {}


def test_fields_selection_and_exclusions(h: Harness) -> None:
    raw = h.jira.enhanced_search_issues("key = ALPHA-10", fields=["summary", "status"], json_result=True)
    assert set(raw) == {"issues", "isLast"} and raw["isLast"] is True
    assert set(raw["issues"][0]["fields"]) == {"summary", "status"}
    everything = h.raw("GET", "/rest/api/2/search/jql", params={"jql": "key = ALPHA-10", "fields": "*all,-comment"})
    fields = everything.json()["issues"][0]["fields"]
    assert "comment" not in fields and {"updated", "assignee", "parent", "customfield_10016"} <= set(fields)
    repeated = h.raw(
        "GET",
        "/rest/api/2/search/jql",
        params=[("jql", "key = ALPHA-10"), ("fields", "labels"), ("fields", "duedate,priority")],
    )
    assert set(repeated.json()["issues"][0]["fields"]) == {"labels", "duedate", "priority"}
    expanded = h.jira.issue("ALPHA-10", fields="created,description,duedate", expand="renderedFields,names")
    assert expanded.raw["names"] == {
        "created": "Created",
        "description": "Description",
        "duedate": "Due date",
    }
    assert expanded.raw["renderedFields"]["created"] and expanded.raw["renderedFields"]["description"] is None
    latest = h.raw("GET", "/rest/api/latest/issue/ALPHA-10", params={"fields": "summary"}).json()
    assert latest["fields"] == {"summary": "Work item 10"} and "/rest/api/2/issue/" in latest["self"]
    default = h.raw("GET", "/rest/api/2/search/jql", params={"jql": "key = ALPHA-10"}).json()["issues"][0]
    assert "fields" not in default and default["key"] == "ALPHA-10" and default["id"].isdigit()


def test_id_only_searches_take_big_pages_full_ones_100(h: Harness) -> None:
    ids = h.jira.enhanced_search_issues("project = ALPHA", fields="key", maxResults=1000, json_result=True)
    assert len(ids["issues"]) == ALPHA_SIZE and ids["isLast"] is True
    full = h.jira.enhanced_search_issues("project = ALPHA", maxResults=1000, json_result=True)
    assert len(full["issues"]) == 100 and full["isLast"] is False and full["nextPageToken"]
    assert "total" not in full and "startAt" not in full


def test_page_tokens_are_checked(h: Harness) -> None:
    first = h.jira.enhanced_search_issues("project = ALPHA ORDER BY key", maxResults=100, json_result=True)
    second = h.jira.enhanced_search_issues(
        "project = ALPHA ORDER BY key", maxResults=100, nextPageToken=first["nextPageToken"], json_result=True
    )
    assert second["issues"][0]["key"] == "ALPHA-101"
    for token, jql in (
        ("bm90LWEtdG9rZW4", "project = ALPHA ORDER BY key"),
        (first["nextPageToken"], "project = BETA"),
    ):
        with pytest.raises(JIRAError) as refused:
            h.jira.enhanced_search_issues(jql, nextPageToken=token, json_result=True, maxResults=10)
        assert refused.value.status_code == 400 and "next page token is invalid or expired" in refused.value.text


def test_unbounded_and_bad_jql_answer_400_with_jiras_text(h: Harness) -> None:
    with pytest.raises(JIRAError) as syntax:
        h.jira.enhanced_search_issues('project = ALPHA AND summary ~ "open')
    assert syntax.value.status_code == 400
    assert syntax.value.text.startswith("Error in the JQL Query: The quoted string 'open' has not been completed.")
    assert syntax.value.response.json()["errors"] == {}
    with pytest.raises(JIRAError) as unknown:
        h.jira.enhanced_search_issues("project = GAMMA ORDER BY key")
    assert unknown.value.text == "The value 'GAMMA' does not exist for the field 'project'."
    for jql in ("", "ORDER BY updated DESC"):
        with pytest.raises(JIRAError) as unbounded:
            h.jira.enhanced_search_issues(jql)
        assert unbounded.value.status_code == 400 and "Unbounded JQL" in unbounded.value.text


def test_old_search_endpoint_is_gone(h: Harness) -> None:
    with pytest.raises(JIRAError) as gone:
        h.jira._session.get(h.url + "/rest/api/2/search", params={"jql": "project = ALPHA"})
    assert gone.value.status_code == 410
    assert gone.value.text.startswith(
        "The requested API has been removed. Please migrate to the /rest/api/3/search/jql"
    )
    raw = h.raw("POST", "/rest/api/3/search", json={"jql": "project = ALPHA", "startAt": 0})
    assert raw.status_code == 410 and raw.json()["errors"] == {}


def test_jql_constructs_match_the_world(h: Harness, world: World) -> None:
    alpha = [i for i in world.issues if i.project_key == "ALPHA"]
    accounts = {u.key: u.jira_account_id for u in world.users}
    ben = accounts["user-1"]

    def search(jql: str) -> set[str]:
        return {i.key for i in h.jira.enhanced_search_issues(jql, maxResults=0, fields="key")}

    assert search("project = ALPHA AND status = Blocked") == {i.key for i in alpha if i.status == "Blocked"}
    assert search("project = ALPHA AND statusCategory != Done AND labels = blocked") == {
        i.key for i in alpha if i.status != "Done" and "blocked" in i.labels
    }
    assert search(f"project = ALPHA AND (assignee = {ben} OR assignee is EMPTY)") == {
        i.key for i in alpha if i.assignee_key in ("user-1", None)
    }
    assert search("project = ALPHA AND duedate < '2025-01-01' AND resolution = Unresolved") == {
        i.key for i in alpha if i.due_date and i.due_date < date(2025, 1, 1) and i.status != "Done"
    }
    assert search("key in (ALPHA-1, ALPHA-2, BETA-3)") == {"ALPHA-1", "ALPHA-2", "BETA-3"}
    assert h.jira.approximate_issue_count("project = ALPHA AND status = Done") == len(
        [i for i in alpha if i.status == "Done"]
    )
    assert search("parent = ALPHA-2") == {i.key for i in alpha if i.epic_key == "ALPHA-2"}
    assert search("project in (ALPHA, BETA) AND NOT issuetype in (Story, Epic) AND priority >= High") == {
        i.key for i in world.issues if i.issue_type not in ("Story", "Epic") and i.priority in ("Highest", "High")
    }
    ordered = h.jira.enhanced_search_issues("project = ALPHA ORDER BY updated DESC, key", maxResults=0)
    expected = sorted(alpha, key=lambda i: i.key)
    expected.sort(key=lambda i: i.updated, reverse=True)
    assert [i.key for i in ordered] == [i.key for i in expected]


def test_minute_resolution_windows_in_los_angeles(h: Harness) -> None:
    """BETA-1 was updated at 10:00:30.250 Los Angeles time (18:00:30.250 UTC)."""

    def search(jql: str) -> set[str]:
        return {i.key for i in h.jira.enhanced_search_issues(f"project = BETA AND {jql}", fields="updated")}

    assert search('updated >= "2025/01/15 10:00"') == {"BETA-1", "BETA-3"}
    assert search('updated > "2025/01/15 10:00"') == {"BETA-3"}
    assert search('updated <= "2025/01/15 10:00"') == {"BETA-1", "BETA-2"}
    assert search('updated < "2025-01-15 10:00"') == {"BETA-2"}
    assert search('updated >= "2025/01/15 18:00"') == set()  # a UTC wall time read in the user's zone
    beta1 = h.jira.issue("BETA-1", fields="updated")
    assert beta1.fields.updated == "2025-01-15T10:00:30.250-0800"


def test_expand_changelog_on_search_and_issue(h: Harness, world: World) -> None:
    done = next(i for i in world.issues if i.status == "Done")
    found = h.jira.enhanced_search_issues(f"key = {done.key}", expand="changelog", fields="status,updated")
    histories = found[0].changelog.histories
    assert [item.toString for h_ in histories for item in h_.items if item.field == "status"] == [
        "In Progress",
        "In Review",
        "Done",
    ]
    assert histories[-1].created == found[0].fields.updated
    assert {(i.field, i.toString) for i in histories[-1].items} == {
        ("status", "Done"),
        ("resolution", "Done"),
    }
    item = histories[0].items[0]
    assert (item.fromString, item.to, item.fieldtype) == ("To Do", "3", "jira")
    issue = h.jira.issue(done.key, expand="changelog")
    assert len(issue.changelog.histories) == issue.changelog.total == 3
    page = h.raw("GET", f"/rest/api/3/issue/{done.key}/changelog", params={"maxResults": 2}).json()
    assert page["total"] == 3 and page["isLast"] is False and len(page["values"]) == 2


def test_reconcile_issues_reads_through_the_search_lag(fresh: Harness) -> None:
    fresh.store.search_lag_seconds = 30
    created = fresh.jira.create_issue(
        fields={"project": {"key": "BETA"}, "issuetype": {"name": "Task"}, "summary": "Just written"}
    )
    fresh.jira.issue("BETA-1").update(summary="Renamed while the index lags")

    def search(reconcile: list[int] | None = None) -> dict[str, str]:
        found = fresh.jira.enhanced_search_issues(
            "project = BETA", fields="summary", reconcileIssues=reconcile, maxResults=50
        )
        return {i.key: i.fields.summary for i in found}

    lagging = search()
    assert created.key not in lagging and lagging["BETA-1"] == "Boundary at 10:00:30"
    beta1 = int(fresh.jira.issue("BETA-1").id)
    reconciled = search([int(created.id), beta1])
    assert reconciled[created.key] == "Just written"
    assert reconciled["BETA-1"] == "Renamed while the index lags"
    assert fresh.jira.issue(created.key).fields.summary == "Just written"  # GET is always current
    posted = fresh.raw(
        "POST",
        "/rest/api/2/search/jql",
        json={"jql": "project = BETA", "fields": ["summary"], "reconcileIssues": [int(created.id)]},
    )
    assert created.key in {i["key"] for i in posted.json()["issues"]}
    too_many = fresh.raw(
        "POST",
        "/rest/api/2/search/jql",
        json={"jql": "project = BETA", "reconcileIssues": list(range(1, 52))},
    )
    assert too_many.status_code == 400
    fresh.clock.advance(31)
    caught_up = search()
    assert caught_up[created.key] == "Just written" and caught_up["BETA-1"] == "Renamed while the index lags"


# -- issues, comments, properties ---------------------------------------------------------------------------


def test_issue_get_by_key_and_id_and_404(h: Harness, world: World) -> None:
    issue = h.jira.issue("ALPHA-12")
    source = next(i for i in world.issues if i.key == "ALPHA-12")
    f = issue.fields
    assert f.summary == source.summary and f.issuetype.name == source.issue_type
    assert f.parent.key == source.epic_key and f.parent.fields.summary == "Work item 1"
    assert f.project.key == "ALPHA" and f.priority.name == source.priority
    assert f.duedate == (source.due_date.isoformat() if source.due_date else None)
    assert f.reporter.accountId == world.users[0].jira_account_id
    assert f.comment.total == 0 and f.resolution is None
    assert h.jira.issue(issue.id).key == "ALPHA-12"
    assert not hasattr(h.jira.issue("ALPHA-9").fields, "parent")
    with pytest.raises(JIRAError) as missing:
        h.jira.issue("ALPHA-9999")
    assert missing.value.status_code == 404
    assert missing.value.text == "Issue does not exist or you do not have permission to see it."


def test_users_render_with_atlassian_privacy(h: Harness, world: World) -> None:
    hidden = world.users[5]
    found = h.jira.enhanced_search_issues("project = BETA", fields="assignee")
    assignee = found[0].raw["fields"]["assignee"]
    assert assignee["accountId"] == hidden.jira_account_id and "emailAddress" not in assignee
    assert assignee["displayName"] == "Fay Lund" and assignee["timeZone"] == "Europe/Berlin"
    shown = h.jira.issue("ALPHA-1").raw["fields"]["assignee"]
    assert shown["emailAddress"] == world.users[1].email


def test_create_issue_and_validation(fresh: Harness, world: World) -> None:
    epic = fresh.jira.issue("ALPHA-3")
    created = fresh.jira.create_issue(
        fields={
            "project": {"key": "ALPHA"},
            "issuetype": {"id": "10001"},
            "summary": "Client kickoff deck",
            "description": "Agenda\n\nOwners",
            "labels": ["client-facing"],
            "priority": {"name": "High"},
            "duedate": "2025-02-01",
            "assignee": {"accountId": world.users[2].jira_account_id},
            "parent": {"key": epic.key},
        }
    )
    assert created.key == f"ALPHA-{ALPHA_SIZE + 1}"
    f = created.fields
    assert (f.status.name, f.issuetype.name, f.parent.key, f.duedate) == (
        "To Do",
        "Story",
        "ALPHA-3",
        "2025-02-01",
    )
    assert f.reporter.emailAddress == fresh.credentials.email and f.created == f.updated
    assert fresh.jira3.issue(created.key).raw["fields"]["description"] == {
        "type": "doc",
        "version": 1,
        "content": [
            {"type": "paragraph", "content": [{"type": "text", "text": "Agenda"}]},
            {"type": "paragraph", "content": [{"type": "text", "text": "Owners"}]},
        ],
    }
    found = fresh.jira.enhanced_search_issues("project = ALPHA AND updated >= -5m", fields="summary")
    assert [i.key for i in found] == [created.key]
    with pytest.raises(JIRAError) as no_summary:
        fresh.jira.create_issue(fields={"project": {"key": "ALPHA"}, "issuetype": {"name": "Task"}})
    assert no_summary.value.status_code == 400
    assert no_summary.value.response.json() == {
        "errorMessages": [],
        "errors": {"summary": "You must specify a summary of the issue."},
    }
    with pytest.raises(JIRAError) as bad:
        fresh.jira3.create_issue(
            fields={
                "project": {"key": "NOPE"},
                "issuetype": {"name": "Task"},
                "summary": "x",
                "description": "plain",
            }
        )
    errors = bad.value.response.json()["errors"]
    assert errors["project"] == "Specify a valid project ID or key"
    assert errors["description"].startswith("Operation value must be an Atlassian Document")
    with pytest.raises(JIRAError) as hierarchy:
        fresh.jira.create_issue(
            fields={
                "project": {"key": "BETA"},
                "issuetype": {"name": "Task"},
                "summary": "x",
                "parent": {"key": "ALPHA-1"},
            }
        )
    assert "parent" in hierarchy.value.response.json()["errors"]


def test_edit_transition_assign_and_delete(fresh: Harness, world: World) -> None:
    issue = fresh.jira.issue("ALPHA-20")
    issue.update(fields={"summary": "Renamed", "duedate": "2025-03-01"}, update={"labels": [{"add": "blocked"}]})
    assert fresh.jira.issue("ALPHA-20").fields.labels == ["blocked"]
    transitions = {t["name"]: t["id"] for t in fresh.jira.transitions("ALPHA-20")}
    assert issue.fields.status.name == "To Do" and set(transitions) == {"In Progress"}
    fresh.jira.assign_issue("ALPHA-20", world.users[4].jira_account_id)
    target = next(iter(transitions))
    fresh.jira.transition_issue("ALPHA-20", transitions[target])
    after = fresh.jira.issue("ALPHA-20", expand="changelog")
    assert after.fields.summary == "Renamed" and after.fields.status.name == target
    assert after.fields.assignee.accountId == world.users[4].jira_account_id
    changed = {i.field for hist in after.changelog.histories[-3:] for i in hist.items}
    assert {"summary", "duedate", "labels", "assignee", "status"} <= changed
    fresh.jira.issue("ALPHA-20").delete()
    with pytest.raises(JIRAError) as gone:
        fresh.jira.issue("ALPHA-20")
    assert gone.value.status_code == 404
    assert "ALPHA-20" not in {i.key for i in fresh.jira.enhanced_search_issues("project = ALPHA", maxResults=0)}


def test_comments_v2_strings_and_v3_documents(fresh: Harness) -> None:
    plain = fresh.jira.add_comment("ALPHA-5", "First line\nsecond line")
    assert plain.body == "First line\nsecond line"
    assert plain.author.emailAddress == fresh.credentials.email and plain.jsdPublic is True
    rich = fresh.jira3.add_comment("ALPHA-5", ADF_HELLO)
    assert rich.raw["body"] == ADF_HELLO
    v2_view = [c.body for c in fresh.jira.comments("ALPHA-5")]
    assert v2_view == ["First line\nsecond line", "Hello team\n\nline one\nline two"]
    v3_view = [c.raw["body"] for c in fresh.jira3.comments("ALPHA-5")]
    assert v3_view[1] == ADF_HELLO
    assert v3_view[0]["content"][0]["content"][1] == {"type": "hardBreak"}
    assert fresh.jira.comment("ALPHA-5", rich.id).body == "Hello team\n\nline one\nline two"
    with pytest.raises(JIRAError) as wrong_shape:
        fresh.jira3.add_comment("ALPHA-5", "a plain string to v3")
    assert wrong_shape.value.status_code == 400 and wrong_shape.value.text == "Comment body is not valid!"
    with pytest.raises(JIRAError) as not_adf:
        fresh.jira3.add_comment("ALPHA-5", {"type": "doc", "version": 1, "content": [{"type": "blink"}]})
    assert not_adf.value.status_code == 400
    with pytest.raises(JIRAError) as empty:
        fresh.jira.add_comment("ALPHA-5", "   ")
    assert empty.value.text == "Comment body can not be empty!"
    embedded = fresh.jira.issue("ALPHA-5").fields.comment
    assert embedded.total == 2 and embedded.comments[0].body == "First line\nsecond line"
    recent = fresh.jira.enhanced_search_issues("project = ALPHA AND updated >= -1h", fields="comment")
    assert [i.key for i in recent] == ["ALPHA-5"]  # a comment bumps `updated`


def test_entity_properties_round_trip(fresh: Harness) -> None:
    before = fresh.jira.issue("ALPHA-7").fields.updated
    value = {"reminder": "sync-42", "sent": True, "attempt": 1}
    assert fresh.jira.add_issue_property("ALPHA-7", "com.accord.reminder", value).status_code == 201
    assert fresh.jira.issue_property("ALPHA-7", "com.accord.reminder").raw == {
        "key": "com.accord.reminder",
        "value": value,
    }
    replaced = fresh.jira.add_issue_property("ALPHA-7", "com.accord.reminder", {**value, "attempt": 2})
    assert replaced.status_code == 200 and replaced.content == b""
    fresh.jira.add_issue_property("ALPHA-7", "com.accord.other", [1, 2, 3])
    assert [p.key for p in fresh.jira.issue_properties("ALPHA-7")] == [
        "com.accord.other",
        "com.accord.reminder",
    ]
    assert fresh.jira.issue("ALPHA-7").fields.updated == before
    searched = fresh.raw(
        "GET", "/rest/api/2/search/jql", params={"jql": "key = ALPHA-7", "properties": "com.accord.reminder"}
    ).json()
    assert searched["issues"][0]["properties"] == {"com.accord.reminder": {**value, "attempt": 2}}
    too_long = fresh.raw("PUT", "/rest/api/2/issue/ALPHA-7/properties/big", data='"' + "x" * 40000 + '"')
    assert too_long.status_code == 400
    not_json = fresh.raw("PUT", "/rest/api/2/issue/ALPHA-7/properties/bad", data="{nope")
    assert not_json.status_code == 400
    assert fresh.raw("DELETE", "/rest/api/2/issue/ALPHA-7/properties/com.accord.other").status_code == 204
    with pytest.raises(JIRAError) as missing:
        fresh.jira.issue_property("ALPHA-7", "com.accord.other")
    assert missing.value.status_code == 404


# -- rate limits and faults ---------------------------------------------------------------------------


def _seed_for_one_fault(rate: float) -> int:
    """A fault seed whose first decision is a fault and whose next three are not."""
    for seed in range(10_000):
        rng = random.Random(seed)
        rolls = [rng.random() for _ in range(4)]
        if rolls[0] < rate and all(r >= rate for r in rolls[1:]):
            return seed
    raise AssertionError("no seed found")


def test_429_with_retry_after_is_retried_by_the_client(fresh: Harness) -> None:
    fresh.jira._session.max_retry_delay = 0.05  # the library's own cap on its backoff; keeps this test fast
    fresh.jira.enhanced_search_issues("project = BETA", fields="key")  # loads the client's field cache first
    fresh.app.faults.configure(rate_429=0.5, retry_after_s=1, seed=_seed_for_one_fault(0.5))
    since = fresh.log.last_seq
    issues = fresh.jira.enhanced_search_issues("project = BETA", fields="summary")
    assert len(issues) == 3
    calls = fresh.calls("search_jql", since)
    assert [(c.status, c.fault) for c in calls] == [(429, "429"), (200, None)]
    fresh.app.faults.configure(rate_429=1.0)
    limited = fresh.raw("GET", "/rest/api/2/myself")
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "1"
    assert limited.headers["X-RateLimit-Remaining"] == "0" and int(limited.headers["X-RateLimit-Limit"]) > 0
    assert limited.headers["RateLimit-Reason"] == "jira-burst-based"
    datetime.strptime(limited.headers["X-RateLimit-Reset"], "%Y-%m-%dT%H:%MZ")
    assert limited.json() == {"errorMessages": ["Rate limit exceeded."], "errors": {}}
    fresh.app.faults.reset()


def test_503_carries_retry_after_and_500_does_not(fresh: Harness) -> None:
    fresh.app.faults.configure(rate_5xx=1.0, retry_after_s=0)
    answers = {}
    for _ in range(30):
        response = fresh.raw("GET", "/rest/api/2/field")
        answers[response.status_code] = response
        if len(answers) == 3:
            break
    fresh.app.faults.reset()
    assert set(answers) == {500, 502, 503}
    assert answers[503].headers["Retry-After"] == "0" and "Retry-After" not in answers[500].headers
    assert answers[500].json()["errorMessages"]


# -- mutations ----------------------------------------------------------------------------------------


def test_mutations_share_a_stamp_and_late_ones_appear_with_it(fresh: Harness) -> None:
    stamp = fresh.clock.now()
    changes = fresh.store.mutate(random.Random(11), 40, stamp, late_share=0.3)
    assert len(changes) >= 30 and all(c.api == "jira" and c.stamp == stamp for c in changes)
    late = [c for c in changes if c.late]
    on_time = [c for c in changes if not c.late]
    assert late and on_time
    assert {c.kind for c in changes} >= {"update", "create"}
    stamp_text = fresh.store.format_time(stamp)
    minute = stamp.astimezone(LA).strftime("%Y/%m/%d %H:%M")
    window = f'updated >= "{minute}" ORDER BY key'
    visible = {i.id: i for i in fresh.jira.enhanced_search_issues(window, maxResults=0, fields="updated")}
    expected_now = {c.id for c in on_time if c.kind != "hard_delete"}
    assert set(visible) == expected_now
    assert {i.fields.updated for i in visible.values()} == {stamp_text}
    for change in late:
        if change.kind == "create":
            with pytest.raises(JIRAError):
                fresh.jira.issue(change.id)
        else:
            assert fresh.jira.issue(change.id).fields.updated != stamp_text
    for change in (c for c in on_time if c.kind == "hard_delete"):
        with pytest.raises(JIRAError):
            fresh.jira.issue(change.id)
    fresh.clock.advance(120)
    released = fresh.store.release_pending()
    assert {c.id for c in released} == {c.id for c in late}
    after = {i.id for i in fresh.jira.enhanced_search_issues(window, maxResults=0, fields="updated")}
    assert after == {c.id for c in changes if c.kind != "hard_delete"}
    for change in late:
        if change.kind != "hard_delete":
            assert fresh.jira.issue(change.id).fields.updated == stamp_text  # old stamp, visible late


def test_an_api_write_first_settles_a_pending_late_change(fresh: Harness) -> None:
    stamp = fresh.clock.now() - timedelta(minutes=10)
    changes = []
    for seed in range(200):  # the first seed whose all-late round has both an update and a delete
        probe = JiraStore.from_world(fresh.world, Clock()).mutate(random.Random(seed), 12, stamp, late_share=1.0)
        if {"update", "hard_delete"} <= {c.kind for c in probe}:
            changes = fresh.store.mutate(random.Random(seed), 12, stamp, late_share=1.0)
            break
    assert changes and all(c.late for c in changes)
    updated = next(c for c in changes if c.kind == "update")
    deleted = next(c for c in changes if c.kind == "hard_delete")
    assert fresh.jira.issue(deleted.id).id == deleted.id  # still visible while its delete is pending
    with pytest.raises(JIRAError) as gone:
        fresh.jira.add_comment(deleted.id, "too late")
    assert gone.value.status_code == 404
    before = fresh.jira.issue(updated.id, expand="changelog")
    assert before.fields.updated != fresh.store.format_time(stamp)
    fresh.jira.add_comment(updated.id, "a write of our own")
    after = fresh.jira.issue(updated.id, expand="changelog")
    assert after.changelog.histories[-1].created == fresh.store.format_time(stamp)  # the late change, now visible
    assert after.fields.updated > fresh.store.format_time(stamp)
    assert {c.id for c in fresh.store.release_pending()} == {c.id for c in changes} - {updated.id, deleted.id}


def test_mutations_are_deterministic_and_keep_the_changelog(world: World) -> None:
    stamp = datetime(2025, 2, 1, 17, 30, tzinfo=UTC)
    runs = []
    for _ in range(2):
        store = JiraStore.from_world(world, Clock())
        runs.append((store, store.mutate(random.Random(5), 60, stamp, late_share=0.0)))
    (store, first), (_, second) = runs
    assert [(c.kind, c.id, c.detail) for c in first] == [(c.kind, c.id, c.detail) for c in second]
    for change in first:
        if change.kind != "update" or not change.detail.startswith("status"):
            continue
        version = store.issues[int(change.id)]
        last = store.history_of(version)[-1]
        assert last.created == stamp and last.items[0].field == "status"
        assert (version.resolution_date == stamp) == (version.status == "Done" and "-> Done" in change.detail)
        if "Done ->" in change.detail:
            assert version.resolution_date is None
    assert "@" not in " ".join(c.detail for c in first)


def test_generated_world_pages_completely(world: World) -> None:
    generated = generate_world("small", 3)
    harness = Harness(generated)
    try:
        projects = ",".join(f'"{e.jira_project_key}"' for e in generated.engagements)
        found = harness.jira.enhanced_search_issues(f"project in ({projects})", maxResults=0, fields="*navigable")
        assert sorted(i.key for i in found) == sorted(i.key for i in generated.issues)
        by_key = {i.key: i for i in generated.issues}
        for issue in found:
            assert issue.fields.summary == by_key[issue.key].summary
    finally:
        harness.stop()
