"""The JQL subset of the Jira emulator, without HTTP: parser, errors and search semantics.

Searches run against a ``JiraStore`` loaded from a small hand-built world whose expected answers
are computed here from the world itself.
"""

from __future__ import annotations

import zlib
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.clock import Clock
from sandbox.jira import JiraStore
from sandbox.jira.jql import BoolOp, Clause, Empty, Function, JqlError, Literal, NotOp, parse, tokenize
from sandbox.world import Engagement, Issue, User, World

LA = ZoneInfo("America/Los_Angeles")
BASE = datetime(2025, 1, 10, 12, 0, tzinfo=UTC)


def _accounts() -> list[str]:
    """Four account ids: three that show their email, the last one hidden (Atlassian privacy)."""
    shown, hidden, n = [], None, 0
    while len(shown) < 3 or hidden is None:
        candidate = f"5f0c9a{n:018x}"
        if zlib.crc32(candidate.encode()) % 10 == 0:
            hidden = hidden or candidate
        elif len(shown) < 3:
            shown.append(candidate)
        n += 1
    return [*shown, hidden]


def small_world() -> World:
    accounts = _accounts()
    users = [
        User(
            f"user-{i}",
            first,
            last,
            f"{first.lower()}@agency.example",
            "PM",
            None,
            "Europe/Berlin",
            True,
            BASE - timedelta(days=400),
            accounts[i],
        )
        for i, (first, last) in enumerate([("Ada", "Byron"), ("Ben", "Okafor"), ("Chen", "Wu"), ("Dana", "Ruiz")])
    ]
    engagements = [
        Engagement(
            f"eng-{k}",
            "client-1",
            f"{k} project",
            "Closed Won",
            1000.0,
            date(2025, 6, 1),
            "user-0",
            k,
            f"{k.title()} Rollout",
            BASE - timedelta(days=100),
            BASE - timedelta(days=1),
        )
        for k in ("ALPHA", "BETA")
    ]
    local = lambda *a: datetime(*a, tzinfo=LA).astimezone(UTC)  # noqa: E731 (test shorthand)
    specs = [
        # key, type, status, epic, assignee, labels, priority, due, updated, summary
        (
            "ALPHA-1",
            "Epic",
            "In Progress",
            None,
            "user-0",
            [],
            "High",
            None,
            local(2025, 1, 2, 9, 0),
            "Launch epic",
        ),
        (
            "ALPHA-2",
            "Story",
            "To Do",
            "ALPHA-1",
            "user-1",
            ["blocked"],
            "Medium",
            date(2025, 1, 5),
            local(2025, 1, 15, 10, 0, 30, 250000),
            "Prepare status report",
        ),
        (
            "ALPHA-3",
            "Task",
            "Done",
            "ALPHA-1",
            None,
            [],
            "Low",
            date(2025, 1, 20),
            local(2025, 1, 15, 9, 59, 59, 999000),
            "Review report draft",
        ),
        (
            "ALPHA-4",
            "Bug",
            "Blocked",
            None,
            "user-2",
            ["Client-Facing", "blocked"],
            "Highest",
            None,
            local(2025, 1, 15, 10, 1),
            "Fix reporting dashboard",
        ),
        (
            "ALPHA-5",
            "Story",
            "In Review",
            "ALPHA-1",
            "user-3",
            [],
            "Medium",
            date(2025, 1, 15),
            local(2025, 1, 14, 23, 30),
            'Quote "AND" OR (markup) <b>x</b>',
        ),
        ("BETA-1", "Task", "To Do", None, None, [], "Lowest", None, local(2024, 12, 31, 23, 59), "Kickoff"),
        (
            "BETA-2",
            "Story",
            "Done",
            None,
            "user-1",
            ["quick-win"],
            "High",
            date(2024, 12, 1),
            local(2025, 1, 1, 0, 0),
            "Résumé of the kickoff",
        ),
    ]
    issues = []
    for key, kind, status, epic, assignee, labels, priority, due, updated, summary in specs:
        created = updated - timedelta(days=3)
        issues.append(
            Issue(
                key,
                key.split("-")[0],
                summary,
                kind,
                status,
                epic,
                assignee,
                "user-0",
                labels,
                priority,
                due,
                created,
                updated,
                updated if status == "Done" else None,
            )
        )
    return World(1, "tiny", BASE, users, [], [], engagements, [], issues, [])


@pytest.fixture(scope="module")
def world() -> World:
    return small_world()


@pytest.fixture(scope="module")
def store(world: World) -> JiraStore:
    return JiraStore.from_world(world, Clock(), timezone="America/Los_Angeles")


def keys(store: JiraStore, jql: str) -> list[str]:
    return [store.issues[i].key for i in store.search(jql)]


def keyset(store: JiraStore, jql: str) -> set[str]:
    return set(keys(store, jql))


# -- tokenizer and parser ----------------------------------------------------------------------------


def test_tokenizer_reads_strings_with_escapes_and_two_char_operators() -> None:
    text = 'summary ~ "say \\"hi\\"\\n" AND labels != \'it\\\'s\' OR x>=1'
    assert text == """summary ~ "say \\"hi\\"\\n" AND labels != 'it\\'s' OR x>=1"""
    kinds = [(t.kind, t.text) for t in tokenize(text)]
    assert ("string", 'say "hi"\n') in kinds
    assert ("string", "it's") in kinds
    assert ("op", "!=") in kinds and ("op", ">=") in kinds
    assert kinds[-1] == ("eof", "")


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_any_string_survives_quoting(value: str) -> None:
    quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    query = parse(f"summary ~ {quoted}")
    assert isinstance(query.where, Clause)
    literal = query.where.operands[0]
    assert isinstance(literal, Literal) and literal.text == value and literal.quoted


def test_parser_builds_precedence_not_in_is_empty_functions_and_order() -> None:
    query = parse(
        "project = A and not status in (Done, 'In Review') or assignee is EMPTY and "
        "reporter = currentUser() ORDER BY updated DESC, key"
    )
    assert isinstance(query.where, BoolOp) and query.where.op == "or"
    left, right = query.where.children
    assert isinstance(left, BoolOp) and left.op == "and"
    assert isinstance(left.children[1], NotOp)
    inner = left.children[1].child
    assert isinstance(inner, Clause) and inner.operator == "in" and len(inner.operands) == 2
    assert isinstance(right, BoolOp)
    is_empty, function = right.children
    assert isinstance(is_empty, Clause) and is_empty.operator == "is" and isinstance(is_empty.operands[0], Empty)
    assert isinstance(function, Clause) and isinstance(function.operands[0], Function)
    assert [(k.field, k.descending) for k in query.order_by] == [("updated", True), ("key", False)]
    not_in = parse("status NOT IN (Done) && labels is not null || summary !~ x").where
    assert isinstance(not_in, BoolOp) and not_in.op == "or"


@pytest.mark.parametrize(
    ("jql", "message"),
    [
        ('summary ~ "open', "Error in the JQL Query: The quoted string 'open' has not been completed."),
        ("project = ", "Error in the JQL Query: Expecting either a value, list or function before the end"),
        ("project A", "Error in the JQL Query: Expecting operator but got 'A'."),
        ("(project = A", "Error in the JQL Query: Expecting ')' before the end of the query."),
        (
            "project = and",
            "Error in the JQL Query: Expecting either a value, list or function but got 'and'.",
        ),
        ("project = A B", "Error in the JQL Query: Expecting either 'OR' or 'AND' but got 'B'."),
        ("project = A ORDER updated", "Error in the JQL Query: Expecting 'by' but got 'updated'."),
        ("status is Done", "Error in the JQL Query: The operator 'IS' only supports the 'EMPTY' or 'NULL'"),
        ("project in A", "Error in the JQL Query: Expecting '(' but got 'A'."),
    ],
)
def test_syntax_errors_use_jiras_wording(jql: str, message: str) -> None:
    with pytest.raises(JqlError) as caught:
        parse(jql)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("jql", "message"),
    [
        ("project = NOPE", "The value 'NOPE' does not exist for the field 'project'."),
        ("project in (ALPHA, Nope)", "The value 'Nope' does not exist for the field 'project'."),
        ("colour = red", "Field 'colour' does not exist or you do not have permission to view it."),
        ("status = Archived", "The value 'Archived' does not exist for the field 'status'."),
        (
            "assignee = nobody@agency.example",
            "The value 'nobody@agency.example' does not exist for the field",
        ),
        ("key = ALPHA-99", "An issue with key 'ALPHA-99' does not exist for field 'key'."),
        ("project ~ ALPHA", "The operator '~' is not supported by the 'project' field."),
        ('updated >= "2025/13/01"', "Date value '2025/13/01' for field 'updated' is invalid."),
        ("updated >= yesterday", "Date value 'yesterday' for field 'updated' is invalid."),
        ("updated >= lastWeek()", "Unable to find JQL function 'lastWeek()'."),
        ("project = ALPHA ORDER BY labels", "Not able to sort using field 'labels'."),
    ],
)
def test_value_errors_use_jiras_wording(store: JiraStore, jql: str, message: str) -> None:
    with pytest.raises(JqlError) as caught:
        store.search(jql)
    assert str(caught.value).startswith(message)


def test_unbounded_queries_are_refused_but_parse(store: JiraStore) -> None:
    for jql in ("", "ORDER BY updated"):
        with pytest.raises(JqlError, match="Unbounded JQL queries are not allowed here"):
            store.search(jql)
        assert len(store.search(jql, bounded=False)) == 7


# -- semantics -----------------------------------------------------------------------------------------


def test_project_key_id_and_name_are_case_insensitive(store: JiraStore) -> None:
    alpha = {f"ALPHA-{n}" for n in range(1, 6)}
    alpha_id = store.project_ids_by_key["ALPHA"]
    assert keyset(store, "project = alpha") == alpha
    assert keyset(store, f"PROJECT = {alpha_id}") == alpha
    assert keyset(store, 'project = "Alpha Rollout"') == alpha
    assert keyset(store, "project in (ALPHA, BETA)") == alpha | {"BETA-1", "BETA-2"}


def test_not_equal_and_not_in_never_match_empty_fields(store: JiraStore, world: World) -> None:
    ben = next(u.jira_account_id for u in world.users if u.first_name == "Ben")
    assigned_not_ben = {i.key for i in world.issues if i.assignee_key not in (None, "user-1")}
    assert keyset(store, f"assignee != {ben}") == assigned_not_ben
    assert keyset(store, f"NOT assignee = {ben}") == assigned_not_ben  # NOT is pushed down
    assert keyset(store, f"assignee not in ({ben})") == assigned_not_ben
    assert keyset(store, f"assignee != {ben} OR assignee is EMPTY") == {
        i.key for i in world.issues if i.assignee_key != "user-1"
    }
    assert keyset(store, "assignee in (EMPTY)") == {"ALPHA-3", "BETA-1"}
    assert keyset(store, "NOT (assignee is EMPTY OR project = BETA)") == {
        "ALPHA-1",
        "ALPHA-2",
        "ALPHA-4",
        "ALPHA-5",
    }


def test_users_by_account_visible_email_and_current_user(store: JiraStore, world: World) -> None:
    ada = world.users[0]
    hidden = world.users[3]
    assert keyset(store, f'assignee = "{ada.email.upper()}"') == {"ALPHA-1"}
    assert keyset(store, f"assignee = {hidden.jira_account_id}") == {"ALPHA-5"}
    with pytest.raises(JqlError):  # a hidden address cannot be searched for
        store.search(f"assignee = {hidden.email}")
    assert keyset(store, "reporter = currentUser()") == set()
    assert len(keyset(store, f"reporter = {ada.jira_account_id}")) == 7


def test_status_category_type_priority_resolution_labels_parent(store: JiraStore) -> None:
    assert keyset(store, "statusCategory = Done") == {"ALPHA-3", "BETA-2"}
    assert keyset(store, 'statusCategory in ("In Progress", new)') == {
        "ALPHA-1",
        "ALPHA-2",
        "ALPHA-4",
        "ALPHA-5",
        "BETA-1",
    }
    assert keyset(store, "statusCategory = 4") == {"ALPHA-1", "ALPHA-4", "ALPHA-5"}
    assert keyset(store, "status = 'in review'") == {"ALPHA-5"}
    assert keyset(store, "type = Epic") == {"ALPHA-1"}
    assert keyset(store, "issuetype in (Bug, 10002)") == {"ALPHA-3", "ALPHA-4", "BETA-1"}
    assert keyset(store, "priority > Medium") == {"ALPHA-1", "ALPHA-4", "BETA-2"}
    assert keyset(store, "priority <= Low") == {"ALPHA-3", "BETA-1"}
    assert keyset(store, "resolution = Unresolved AND project = BETA") == {"BETA-1"}
    assert keyset(store, "resolution = Done") == {"ALPHA-3", "BETA-2"}
    assert keyset(store, "labels = BLOCKED") == {"ALPHA-2", "ALPHA-4"}
    assert keyset(store, "labels in (client-facing, quick-win)") == {"ALPHA-4", "BETA-2"}
    assert keyset(store, "labels != blocked") == {"BETA-2"}
    assert keyset(store, "labels is EMPTY and project = ALPHA") == {"ALPHA-1", "ALPHA-3", "ALPHA-5"}
    assert keyset(store, "parent = ALPHA-1") == {"ALPHA-2", "ALPHA-3", "ALPHA-5"}
    assert keyset(store, "parent is empty and project = alpha") == {"ALPHA-1", "ALPHA-4"}


def test_key_and_id_clauses(store: JiraStore) -> None:
    alpha3 = store.issue_ids_by_key["ALPHA-3"]
    assert keyset(store, "key in (alpha-2, BETA-1)") == {"ALPHA-2", "BETA-1"}
    assert keyset(store, f"id = {alpha3}") == {"ALPHA-3"}
    assert keyset(store, f"issue = {alpha3} or issuekey = BETA-2") == {"ALPHA-3", "BETA-2"}
    assert keyset(store, "key > ALPHA-3") == {"ALPHA-4", "ALPHA-5"}
    assert keyset(store, "key != ALPHA-3 and project = ALPHA") == {"ALPHA-1", "ALPHA-2", "ALPHA-4", "ALPHA-5"}


def test_text_search_matches_whole_words_prefixes_and_phrases(store: JiraStore) -> None:
    assert keyset(store, "summary ~ report") == {"ALPHA-2", "ALPHA-3"}
    assert keyset(store, "summary ~ 'report*'") == {"ALPHA-2", "ALPHA-3", "ALPHA-4"}
    assert keyset(store, 'summary ~ "REPORT draft"') == {"ALPHA-3"}
    assert keyset(store, 'summary ~ "\\"draft report\\""') == set()
    assert keyset(store, 'summary ~ "\\"report draft\\""') == {"ALPHA-3"}
    assert keyset(store, "summary ~ résumé") == {"BETA-2"}
    assert keyset(store, 'summary ~ "\\"AND\\" OR"') == {"ALPHA-5"}
    assert keyset(store, "summary !~ kickoff and project = BETA") == set()


def test_minute_resolution_in_the_users_zone(store: JiraStore) -> None:
    """ALPHA-2 was updated at 10:00:30.250 Los Angeles time; ALPHA-3 at 09:59:59.999; ALPHA-4 at 10:01."""
    window = "project = ALPHA AND updated {} '2025/01/15 10:00'"
    assert keyset(store, window.format(">=")) == {"ALPHA-2", "ALPHA-4"}
    assert keyset(store, window.format(">")) == {"ALPHA-4"}
    assert keyset(store, window.format("=")) == {"ALPHA-2"}
    assert keyset(store, window.format("<=")) == {"ALPHA-1", "ALPHA-2", "ALPHA-3", "ALPHA-5"}
    assert keyset(store, window.format("<")) == {"ALPHA-1", "ALPHA-3", "ALPHA-5"}
    assert keyset(store, "updated > '2025-01-15 09:59' and updated < '2025-01-15 10:01'") == {"ALPHA-2"}
    # The same instant as UTC text names another minute: 10:00 UTC is 02:00 in Los Angeles.
    assert keyset(store, "project = ALPHA and updated >= '2025/01/15 18:00' and updated <= '2025/01/15 18:00'") == set()
    millis = int(datetime(2025, 1, 15, 10, 0, 45, tzinfo=LA).timestamp() * 1000)
    assert keyset(store, f"updated >= {millis} and project = ALPHA") == {"ALPHA-2", "ALPHA-4"}
    assert keyset(store, "updated >= '2025-01-15' and updated < 2025/01/16") == {
        "ALPHA-2",
        "ALPHA-3",
        "ALPHA-4",
    }


def test_the_zone_decides_which_day_a_date_names(world: World) -> None:
    berlin = JiraStore.from_world(world, Clock(), timezone="Europe/Berlin")
    # BETA-1 was updated 2024-12-31 23:59 in Los Angeles, which is 2025-01-01 08:59 in Berlin.
    assert keyset(berlin, "project = BETA and updated < '2025-01-01'") == set()
    la = JiraStore.from_world(world, Clock(), timezone="America/Los_Angeles")
    assert keyset(la, "project = BETA and updated < '2025-01-01'") == {"BETA-1"}
    assert berlin.format_time(berlin.issues[berlin.issue_ids_by_key["BETA-1"]].updated).endswith("+0100")


def test_duedate_relative_dates_and_functions(world: World) -> None:
    clock = Clock()
    store = JiraStore.from_world(world, clock)
    assert keyset(store, "duedate < '2025-01-15'") == {"ALPHA-2", "BETA-2"}
    assert keyset(store, "duedate = 2025-01-15") == {"ALPHA-5"}
    assert keyset(store, "duedate is empty and project = ALPHA") == {"ALPHA-1", "ALPHA-4"}
    assert keyset(store, "duedate < now() and statusCategory != Done") == {"ALPHA-2", "ALPHA-5"}
    assert keyset(store, "updated >= -1w") == set()
    project = store.projects[store.project_ids_by_key["BETA"]]
    fresh = store.create_issue(
        project=project,
        issue_type="Task",
        summary="Fresh",
        description=None,
        parent_id=None,
        assignee=None,
        reporter=None,
        labels=[],
        priority="Medium",
        due_date=None,
        story_points=None,
    )
    assert keyset(store, "updated >= -15m") == {fresh.key}
    assert keyset(store, "created >= startOfDay() and created <= endOfDay()") == {fresh.key}
    assert keyset(store, "created >= startOfDay(-1) and reporter = currentUser()") == {fresh.key}
    assert keyset(store, "created > '-2h 30m' and created < startOfWeek(1)") == {fresh.key}
    clock.advance(20 * 60)
    assert keyset(store, "updated >= -15m") == set()
    assert keyset(store, "updated >= '-1d'") == {fresh.key}


def test_order_by_fields_directions_and_empty_values(store: JiraStore) -> None:
    assert keys(store, "project = ALPHA ORDER BY key DESC") == [f"ALPHA-{n}" for n in (5, 4, 3, 2, 1)]
    assert keys(store, "project = ALPHA ORDER BY updated") == [
        "ALPHA-1",
        "ALPHA-5",
        "ALPHA-3",
        "ALPHA-2",
        "ALPHA-4",
    ]
    assert keys(store, "project = ALPHA ORDER BY duedate ASC")[-2:] == ["ALPHA-1", "ALPHA-4"]  # empty last
    assert keys(store, "project = ALPHA ORDER BY duedate DESC")[:2] == ["ALPHA-1", "ALPHA-4"]
    assert keys(store, "project = ALPHA ORDER BY priority DESC, key ASC") == [
        "ALPHA-4",
        "ALPHA-1",
        "ALPHA-2",
        "ALPHA-5",
        "ALPHA-3",
    ]
    assert keys(store, "project = ALPHA ORDER BY status, key desc") == [
        "ALPHA-2",
        "ALPHA-1",
        "ALPHA-4",
        "ALPHA-5",
        "ALPHA-3",
    ]
    newest_first = sorted((store.issue_ids_by_key[f"ALPHA-{n}"] for n in range(1, 6)), reverse=True)
    assert store.search("project = ALPHA") == newest_first
