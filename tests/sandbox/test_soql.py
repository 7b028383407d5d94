"""The SOQL tokenizer and parser on their own: what parses to what, and what is MALFORMED_QUERY."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from simple_salesforce.format import format_soql

from sandbox.salesforce.soql import (
    And,
    Comparison,
    CountAll,
    FieldRef,
    InList,
    Not,
    Or,
    SoqlSyntaxError,
    error_message,
    parse,
    tokenize,
)


def where(soql_condition: str) -> object:
    query = parse(f"SELECT Id FROM Contact WHERE {soql_condition}")  # noqa: S608 (SOQL is the unit under test)
    return query.where


def test_select_list_with_parent_paths_and_clauses() -> None:
    query = parse(
        "select Id, Account.Owner.Email, Name from Contact where Name = 'x' "
        "order by LastName desc nulls first, FirstName limit 10 offset 5"
    )
    assert [item.path for item in query.select if isinstance(item, FieldRef)] == [
        ("Id",),
        ("Account", "Owner", "Email"),
        ("Name",),
    ]
    assert query.sobject == "Contact"
    assert [(o.field.path, o.descending, o.nulls_last) for o in query.order_by] == [
        (("LastName",), True, False),
        (("FirstName",), False, False),
    ]
    assert (query.limit, query.offset) == (10, 5)


def test_default_null_ordering_follows_direction() -> None:
    query = parse("SELECT Id FROM Contact ORDER BY A, B DESC, C ASC NULLS LAST")
    assert [o.nulls_last for o in query.order_by] == [False, True, True]


def test_count() -> None:
    query = parse("SELECT COUNT() FROM Contact WHERE IsDeleted = false")
    assert query.is_count and isinstance(query.select[0], CountAll)
    with pytest.raises(SoqlSyntaxError, match="COUNT"):
        parse("SELECT COUNT(), Id FROM Contact")


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("2024-05-01T10:00:00Z", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T10:00:00.000Z", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T10:00:00.5Z", datetime(2024, 5, 1, 10, 0, 0, 500_000, tzinfo=UTC)),
        ("2024-05-01T12:00:00+02:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T05:30:00-04:30", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T12:00:00.123+0200", datetime(2024, 5, 1, 10, 0, 0, 123_000, tzinfo=UTC)),
    ],
)
def test_datetime_literals_are_instants(literal: str, expected: datetime) -> None:
    condition = where(f"SystemModstamp >= {literal}")
    assert isinstance(condition, Comparison)
    assert condition.value.kind == "datetime"
    assert condition.value.value == expected


def test_date_and_date_function_literals() -> None:
    condition = where("CloseDate = 2024-05-01")
    assert isinstance(condition, Comparison) and condition.value.value == date(2024, 5, 1)
    condition = where("CreatedDate = LAST_N_DAYS:14")
    assert isinstance(condition, Comparison) and condition.value.value == ("LAST_N_DAYS", 14)
    condition = where("CreatedDate = today")
    assert isinstance(condition, Comparison) and condition.value.value == ("TODAY", None)


@pytest.mark.parametrize(
    ("source", "value"),
    [
        (r"'O\'Reilly'", "O'Reilly"),
        (r"'say \"hi\"'", 'say "hi"'),
        (r"'back\\slash'", "back\\slash"),
        (r"'two\nlines'", "two\nlines"),
        (r"'100\%'", "100%"),
        (r"'a\_b'", "a_b"),
        ("'Ünïcödé 北京'", "Ünïcödé 北京"),
    ],
)
def test_string_escapes(source: str, value: str) -> None:
    condition = where(f"Name = {source}")
    assert isinstance(condition, Comparison) and condition.value.value == value


def test_operators_and_lists() -> None:
    condition = where("(Amount > 5 OR Amount <= -2.5) AND NOT Name LIKE 'a%' AND Id NOT IN ('x', 'y')")
    assert isinstance(condition, And)
    first, second, third = condition.operands
    assert isinstance(first, Or)
    assert [c.operator for c in first.operands if isinstance(c, Comparison)] == [">", "<="]
    assert isinstance(second, Not) and isinstance(second.operand, Comparison)
    assert second.operand.operator == "LIKE"
    assert isinstance(third, InList) and third.negated and [v.value for v in third.values] == ["x", "y"]
    condition = where("Name <> 'a'")
    assert isinstance(condition, Comparison) and condition.operator == "!="
    condition = where("IsDeleted = TRUE")
    assert isinstance(condition, Comparison) and condition.value.value is True


def test_mixing_and_or_needs_parentheses() -> None:
    with pytest.raises(SoqlSyntaxError, match="unexpected token: 'OR'"):
        parse("SELECT Id FROM Contact WHERE A = 1 AND B = 2 OR C = 3")
    assert isinstance(where("(A = 1 AND B = 2) OR C = 3"), Or)


@pytest.mark.parametrize(
    ("soql", "detail", "culprit"),
    [
        ("SELECT Id FRM Contact", "unexpected token: 'FRM'", "FRM"),
        ("SELECT Id FROM Contact WHERE", "unexpected token: '<EOF>'", None),
        ("SELECT Id FROM Contact WHERE Name = 'open", "unterminated string", "'open"),
        ("SELECT Id FROM Contact WHERE CreatedDate > 2024-05-01T10:00:00", "unexpected token", "2024"),
        ("SELECT Id FROM Contact WHERE CreatedDate > 2024-13-01", "unexpected token", "2024"),
        ("SELECT Id FROM Contact LIMIT -1", "unexpected token: '-1'", "-1"),
        ("SELECT Id FROM Contact WHERE Name = 'a' GROUP BY Name", "GROUP", "GROUP"),
        ("SELECT Id, (SELECT Id FROM Contacts) FROM Account", "subqueries", "("),
        ("SELECT Id FROM Contact WHERE Name = 'a' ;", "unexpected token: ';'", ";"),
        (r"SELECT Id FROM Contact WHERE Name = 'a\q'", "Illegal character sequence", "\\"),
        ("SELECT Id FROM Contact WHERE Name IN (SELECT Id FROM Account)", "semi-join", "SELECT Id FROM A"),
        ("SELECT Id FROM Contact WHERE Name INCLUDES ('a')", "INCLUDES", "INCLUDES"),
    ],
)
def test_malformed(soql: str, detail: str, culprit: str | None) -> None:
    with pytest.raises(SoqlSyntaxError) as raised:
        parse(soql)
    assert detail in raised.value.detail
    assert raised.value.position == (soql.index(culprit) if culprit else len(soql))


def test_error_message_points_at_the_culprit() -> None:
    soql = "SELECT Id\nFROM Contact\nWHERE Foo = 1"
    message = error_message(soql, soql.index("Foo"), "No such column 'Foo'")
    assert message == "\nWHERE Foo = 1\n      ^\nERROR at Row:3:Column:7\nNo such column 'Foo'"


def test_tokens_keep_positions() -> None:
    tokens = tokenize("SELECT Id FROM Task WHERE ActivityDate < 2024-01-02")
    assert [(t.kind, t.position) for t in tokens[-3:]] == [("OP", 39), ("DATE", 41), ("EOF", 51)]


# -- properties -------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_any_string_round_trips_through_the_clients_quoting(value: str) -> None:
    condition = where(format_soql("Name = {}", value))
    assert isinstance(condition, Comparison)
    assert condition.value.value == value


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab%_\\'x")), st.text(alphabet=st.sampled_from("ab%_\\'x")))
def test_like_escapes_keep_wildcards_literal(prefix: str, rest: str) -> None:
    condition = where(format_soql("Name LIKE '{:like}%'", prefix))
    assert isinstance(condition, Comparison)
    wildcards = [char for char, wildcard in condition.value.pattern if wildcard]
    assert wildcards == ["%"]  # only the trailing one; the prefix's own % and _ are literal
    assert "".join(char for char, _ in condition.value.pattern) == prefix + "%"
    assert rest is not None


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)),
    st.integers(min_value=-12 * 60, max_value=14 * 60).map(lambda m: m - m % 15),
    st.booleans(),
)
def test_any_datetime_literal_parses_to_its_instant(moment: datetime, offset_minutes: int, millis: bool) -> None:
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000 if millis else 0)
    local = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    text = local.isoformat(timespec="milliseconds" if millis else "seconds")
    condition = where(f"SystemModstamp > {text}")
    assert isinstance(condition, Comparison)
    assert condition.value.value == moment


names = st.sampled_from(["Name", "Email", "Title", "Amount", "Account.Name"])
leaves = st.builds(
    lambda field, op, n: f"{field} {op} {n}",
    names,
    st.sampled_from(["=", "!=", "<", ">=", "<>"]),
    st.integers(0, 9),
)


def conditions(depth: int) -> st.SearchStrategy[str]:
    if depth == 0:
        return leaves
    inner = conditions(depth - 1)
    return st.one_of(
        leaves,
        st.builds(lambda a: f"NOT {a}", inner),
        st.builds(
            lambda parts, op: f" {op} ".join(f"({p})" for p in parts),
            st.lists(inner, min_size=2, max_size=3),
            st.sampled_from(["AND", "OR"]),
        ),
    )


def render(condition: object) -> str:
    """The condition back as SOQL, fully parenthesised."""
    if isinstance(condition, Comparison):
        return f"{condition.field.text} {condition.operator} {condition.value.text}"
    if isinstance(condition, Not):
        return f"NOT ({render(condition.operand)})"
    if isinstance(condition, And | Or):
        joiner = " AND " if isinstance(condition, And) else " OR "
        return joiner.join(f"({render(c)})" for c in condition.operands)
    raise AssertionError(condition)


def shape(condition: object) -> object:
    if isinstance(condition, Comparison):
        return (condition.field.path, condition.operator, condition.value.value)
    if isinstance(condition, Not):
        return ("NOT", shape(condition.operand))
    if isinstance(condition, And | Or):
        return (type(condition).__name__, tuple(shape(c) for c in condition.operands))
    raise AssertionError(condition)


@settings(max_examples=200, deadline=None)
@given(conditions(3))
def test_rendered_conditions_parse_back_to_the_same_tree(text: str) -> None:
    tree = where(text)
    assert shape(where(render(tree))) == shape(tree)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_garbage_is_malformed_never_a_crash(text: str) -> None:
    try:
        parse(f"SELECT Id FROM Contact WHERE {text}")  # noqa: S608 (SOQL is the unit under test)
    except SoqlSyntaxError as exc:
        assert 0 <= exc.position <= len(text) + 30
