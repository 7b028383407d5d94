"""JQL built by the Jira connector: quoting of hostile values and minute literals in the user's zone.

No HTTP: quoted values are read back by the emulator's own JQL tokenizer and parser, and run
against a store loaded from the generated org, whose project names carry quotes and operators.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.jira import jql
from sandbox.clock import Clock
from sandbox.generator import generate_world
from sandbox.jira import JiraStore
from sandbox.jira.jql import Clause, Literal, parse

LA = ZoneInfo("America/Los_Angeles")
HOSTILE = [
    'say "hi"',
    "back\\slash",
    "ends with backslash \\",
    '\\"',
    'x" OR project = "Y',
    "O'Reilly",
    'a" ORDER BY key DESC --',
    "new\nline\ttab\rreturn",
    "Ünïcödé 北京",
    "",
]


def read_back(text: str) -> tuple[str, ...]:
    """The values the emulator's parser sees in ``project in (<text>)``."""
    query = parse(f"project in ({text}) ORDER BY key ASC")
    assert isinstance(query.where, Clause) and query.where.operator == "in"
    assert [k.field for k in query.order_by] == ["key"]  # nothing was appended to the query
    values = []
    for operand in query.where.operands:
        assert isinstance(operand, Literal) and operand.quoted
        values.append(operand.text)
    return tuple(values)


@pytest.mark.parametrize("value", HOSTILE)
def test_quote_reads_back_as_exactly_the_value(value: str) -> None:
    assert read_back(jql.quote(value)) == (value,)


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_quote_round_trips_any_text(value: str) -> None:
    assert read_back(jql.quote(value)) == (value,)


def test_quote_escapes_backslash_quote_and_controls() -> None:
    assert jql.quote('a"b\\c') == '"a\\"b\\\\c"'
    assert jql.quote("l1\nl2\tx\r") == '"l1\\nl2\\tx\\r"'


def test_project_in_quotes_every_key() -> None:
    text = jql.project_in(["ABC", 'EVIL") OR project in ("X'])
    assert text == 'project in ("ABC", "EVIL\\") OR project in (\\"X")'
    assert read_back(text.removeprefix("project in (").removesuffix(")")) == (
        "ABC",
        'EVIL") OR project in ("X',
    )
    with pytest.raises(ValueError, match="at least one"):
        jql.project_in([])


def test_issue_ids_accepts_digits_only() -> None:
    assert jql.issue_ids(["10001", 10002]) == "id in (10001, 10002)"
    for bad in (["10001) OR id > (0"], ["ABC-1"], ["-1"], []):
        with pytest.raises(ValueError):
            jql.issue_ids(bad)


def test_hostile_project_names_match_only_their_project() -> None:
    """Project names of the generated org carry quotes, backslashes and JQL words; quoted, each
    one names its own project (the emulator resolves projects by name too)."""
    store = JiraStore.from_world(generate_world("small", 1), Clock())
    hostile = [p for p in store.projects.values() if any(c in p.name for c in "\"'\\")]
    assert len(hostile) >= 3
    for project in hostile:
        found = store.search(f"project = {jql.quote(project.name)} ORDER BY key ASC")
        assert found == sorted(store.project_issue_ids[project.id], key=lambda i: store.issues[i].number)


# -- minute literals ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("moment", "zone", "literal"),
    [
        (datetime(2025, 1, 15, 12, 34, 56, 789000, tzinfo=UTC), "America/Los_Angeles", "2025/01/15 04:34"),
        (datetime(2025, 7, 15, 12, 34, 0, tzinfo=UTC), "America/Los_Angeles", "2025/07/15 05:34"),
        (datetime(2025, 1, 15, 12, 34, 56, tzinfo=UTC), "Asia/Kolkata", "2025/01/15 18:04"),
        (datetime(2025, 1, 15, 23, 59, 59, tzinfo=UTC), "Asia/Kolkata", "2025/01/16 05:29"),
        (datetime(2025, 1, 15, 0, 0, 0, tzinfo=UTC), "UTC", "2025/01/15 00:00"),
        (
            datetime(2025, 3, 9, 10, 30, tzinfo=UTC),
            "America/Los_Angeles",
            "2025/03/09 03:30",
        ),  # after spring-forward
    ],
)
def test_minute_literal_rounds_down_in_the_zone(moment: datetime, zone: str, literal: str) -> None:
    assert jql.minute_literal(moment, ZoneInfo(zone)) == literal


def test_minute_literal_is_never_later_than_the_moment_when_the_clock_falls_back() -> None:
    # 2025-11-02: Los Angeles shows 01:00-01:59 twice (PDT, then PST).
    first_pass = datetime(2025, 11, 2, 8, 30, tzinfo=UTC)  # 01:30 PDT
    second_pass = datetime(2025, 11, 2, 9, 30, tzinfo=UTC)  # 01:30 PST
    # "01:30" could be read as 09:30 UTC, an hour after the first moment: go back to 00:30.
    assert jql.minute_literal(first_pass, LA) == "2025/11/02 00:30"
    assert jql.minute_literal(second_pass, LA) == "2025/11/02 01:30"


@given(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)))
def test_minute_literal_read_in_the_zone_is_at_most_the_moment(moment: datetime) -> None:
    for zone in (LA, ZoneInfo("Asia/Kolkata"), ZoneInfo("Australia/Lord_Howe")):
        literal = jql.minute_literal(moment, zone)
        wall = datetime.strptime(literal, "%Y/%m/%d %H:%M")
        readings = [wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1)]
        assert max(readings) <= moment
        assert moment - min(readings) < timedelta(hours=2, minutes=1)


def test_minute_literal_needs_an_aware_moment() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        jql.minute_literal(datetime(2025, 1, 1, 12, 0), LA)


def test_updated_since_in_an_unknown_zone_moves_back_by_the_widest_offset() -> None:
    moment = datetime(2025, 1, 15, 12, 34, 56, tzinfo=UTC)
    assert jql.updated_since(moment, LA) == 'updated >= "2025/01/15 04:34"'
    assert jql.updated_since(moment, None) == 'updated >= "2025/01/14 22:34"'
