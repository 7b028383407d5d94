"""SOQL against the org: names resolved through the schema, WHERE compiled into a predicate, ORDER BY
into sort keys, SELECT into a projection producing Salesforce's nested JSON records.

Semantics follow Salesforce where connectors can tell the difference: text compares
case-insensitively (``=``, ``IN``, ``LIKE``, ordering); a datetime field compares instants and
accepts only unquoted datetime or date-literal values; ids compare in their 18-character form
whether the query wrote 15 or 18 characters; nulls sort first ascending and last descending
unless ``NULLS FIRST|LAST`` says otherwise; ``!=`` and ``NOT IN`` match null values.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

from sandbox.salesforce import ids
from sandbox.salesforce.schema import NUMBER_TYPES, TEXT_TYPES, FieldDef, ObjectDef, OrgSchema
from sandbox.salesforce.soql import (
    And,
    Comparison,
    Condition,
    CountAll,
    FieldRef,
    InList,
    Literal,
    Not,
    Or,
    Query,
)
from sandbox.salesforce.values import to_csv, to_json

Record = dict[str, Any]
Lookup = Callable[[str], Record | None]
Predicate = Callable[[Record], bool]

MAX_OFFSET = 2000
_CUSTOM_FIELD_HINT = (
    "If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. "
    "Please reference your WSDL or the describe call for the appropriate names."
)
_RELATIONSHIP_HINT = (
    "If you are attempting to use a custom relationship, be sure to append the '__r' after the custom "
    "relationship name. Please reference your WSDL or the describe call for the appropriate names."
)
_TYPE_NAMES = {
    "datetime": "dateTime",
    "date": "date",
    "boolean": "boolean",
    "double": "double",
    "currency": "double",
    "int": "integer",
    "id": "id",
    "reference": "id",
}
_ALLOWED_LITERALS: dict[str, frozenset[str]] = {
    "text": frozenset({"string", "null"}),
    "id": frozenset({"string", "null"}),
    "boolean": frozenset({"boolean", "null"}),
    "number": frozenset({"number", "null"}),
    "date": frozenset({"date", "date_literal", "null"}),
    "datetime": frozenset({"datetime", "date_literal", "null"}),
}
_ORDERING = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


class QueryError(Exception):
    """A query that parsed but does not fit the org: ``code`` is the Salesforce error code."""

    def __init__(self, code: str, detail: str, position: int) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.position = position


def _kind(f: FieldDef) -> str:
    if f.type in TEXT_TYPES:
        return "text"
    if f.type in ("id", "reference"):
        return "id"
    if f.type in NUMBER_TYPES:
        return "number"
    return f.type  # boolean, date, datetime


@dataclass(frozen=True)
class Step:
    """One child-to-parent hop: follow ``ref_field`` of the current record."""

    relationship: str  # canonical relationship name, e.g. "Account"
    ref_field: str  # canonical reference field, e.g. "AccountId"
    polymorphic: bool
    target: ObjectDef | None  # None when polymorphic (the "Name" object)


@dataclass(frozen=True)
class FieldPath:
    """A resolved field path: hops, then a leaf field."""

    steps: tuple[Step, ...]
    leaf: str  # canonical field name ("Type" on a polymorphic hop is the target's object name)
    leaf_def: FieldDef
    getter: Callable[[Record], Any]

    @property
    def names(self) -> tuple[str, ...]:
        return (*(s.relationship for s in self.steps), self.leaf)

    @property
    def column(self) -> str:
        return ".".join(self.names)


_NAME_TYPE_FIELD = FieldDef(name="Type", type="picklist", label="Type", createable=False, updateable=False)


class Resolver:
    """Resolves field references against the schema; ``lookup`` finds any record by 18-char id."""

    def __init__(self, schema: OrgSchema, lookup: Lookup) -> None:
        self.schema = schema
        self.lookup = lookup

    def resolve(self, root: ObjectDef, ref: FieldRef) -> FieldPath:
        parts = list(ref.path)
        if len(parts) > 1 and root.relationship(parts[0]) is None and parts[0].lower() == root.name.lower():
            parts = parts[1:]  # "SELECT Contact.Name FROM Contact": the object name as qualifier
        current: ObjectDef | None = root
        steps: list[Step] = []
        for part in parts[:-1]:
            if current is None:  # after a polymorphic hop only "Name" fields may follow
                raise QueryError(
                    "INVALID_FIELD",
                    f"Didn't understand relationship '{part}' in field path. " + _RELATIONSHIP_HINT,
                    ref.position,
                )
            ref_field = current.relationship(part)
            if ref_field is None:
                raise QueryError(
                    "INVALID_FIELD",
                    f"Didn't understand relationship '{part}' in field path. " + _RELATIONSHIP_HINT,
                    ref.position,
                )
            assert ref_field.relationship_name is not None  # every relationship has a name
            target = None if ref_field.polymorphic else self.schema.object(ref_field.reference_to[0])
            steps.append(Step(ref_field.relationship_name, ref_field.name, ref_field.polymorphic, target))
            current = target
        leaf_name = parts[-1]
        if current is None:
            canonical = self.schema.name_field(leaf_name)
            if canonical is None:
                raise QueryError(
                    "INVALID_FIELD",
                    f"No such column '{leaf_name}' on entity 'Name'. " + _CUSTOM_FIELD_HINT,
                    ref.position,
                )
            leaf_def = _NAME_TYPE_FIELD if canonical == "Type" else _name_field_def(self.schema, canonical)
            leaf = canonical
        else:
            found = current.field(leaf_name)
            if found is None:
                raise QueryError(
                    "INVALID_FIELD",
                    f"No such column '{leaf_name}' on entity '{current.name}'. " + _CUSTOM_FIELD_HINT,
                    ref.position,
                )
            leaf_def = found
            leaf = found.name
        return FieldPath(tuple(steps), leaf, leaf_def, self._getter(tuple(steps), leaf))

    def _getter(self, steps: tuple[Step, ...], leaf: str) -> Callable[[Record], Any]:
        lookup = self.lookup
        schema = self.schema
        if not steps:
            return lambda record: record.get(leaf)
        ref_fields = [s.ref_field for s in steps]
        polymorphic_leaf = steps[-1].polymorphic

        def get(record: Record) -> Any:
            current: Record | None = record
            target_id = None
            for ref_field in ref_fields:
                target_id = current.get(ref_field) if current is not None else None
                if target_id is None:
                    return None
                current = lookup(target_id)
                if current is None:
                    return None
            if polymorphic_leaf and leaf == "Type":
                obj = schema.object_for_id(str(target_id))
                return obj.name if obj else None
            return current.get(leaf) if current is not None else None

        return get


def _name_field_def(schema: OrgSchema, name: str) -> FieldDef:
    """The definition of a "Name" object field: the first object that has it decides its type."""
    for obj in schema.objects.values():
        found = obj.field(name)
        if found is not None:
            return found
    return FieldDef(name=name, type="string", label=name)


# -- WHERE -------------------------------------------------------------------------------------------------


def _type_error(path: FieldPath, ref: FieldRef, literal: Literal) -> QueryError:
    kind = _kind(path.leaf_def)
    quoted = kind in ("text", "id")
    type_name = "string" if kind == "text" else _TYPE_NAMES.get(path.leaf_def.type, path.leaf_def.type)
    should = "should be enclosed in quotes" if quoted else "should not be enclosed in quotes"
    return QueryError(
        "INVALID_FIELD",
        f"value of filter criterion for field '{ref.text}' must be of type {type_name} and {should}",
        literal.position,
    )


def _date_range(name: str, n: int | None, today: date) -> tuple[date, date]:
    """[start, end) of a SOQL date literal, in days (UTC)."""
    one = timedelta(days=1)
    week_start = today - timedelta(days=(today.weekday() + 1) % 7)  # weeks start on Sunday
    count = n or 0
    ranges = {
        "TODAY": (today, today + one),
        "YESTERDAY": (today - one, today),
        "TOMORROW": (today + one, today + 2 * one),
        "THIS_WEEK": (week_start, week_start + 7 * one),
        "LAST_WEEK": (week_start - 7 * one, week_start),
        "NEXT_WEEK": (week_start + 7 * one, week_start + 14 * one),
        "LAST_N_DAYS": (today - count * one, today + one),
        "NEXT_N_DAYS": (today + one, today + (count + 1) * one),
        "N_DAYS_AGO": (today - count * one, today - (count - 1) * one),
    }
    return ranges[name]


class _Compiler:
    def __init__(self, resolver: Resolver, root: ObjectDef, now: datetime) -> None:
        self.resolver = resolver
        self.root = root
        self.now = now

    def compile(self, condition: Condition) -> Predicate:
        if isinstance(condition, And):
            parts = [self.compile(c) for c in condition.operands]
            return lambda record: all(p(record) for p in parts)
        if isinstance(condition, Or):
            parts = [self.compile(c) for c in condition.operands]
            return lambda record: any(p(record) for p in parts)
        if isinstance(condition, Not):
            inner = self.compile(condition.operand)
            return lambda record: not inner(record)
        if isinstance(condition, InList):
            return self.in_list(condition)
        return self.comparison(condition)

    def filter_path(self, ref: FieldRef) -> FieldPath:
        path = self.resolver.resolve(self.root, ref)
        if not path.leaf_def.filterable:
            raise QueryError("INVALID_FIELD", f"field '{path.leaf}' can not be filtered in a query call", ref.position)
        return path

    def value(self, path: FieldPath, ref: FieldRef, literal: Literal) -> Any:
        """The literal normalised for comparison with values of ``path`` (checked for type)."""
        kind = _kind(path.leaf_def)
        if literal.kind not in _ALLOWED_LITERALS[kind]:
            raise _type_error(path, ref, literal)
        if literal.kind == "null":
            return None
        if kind == "id":
            normalized = ids.normalize(literal.value)
            if normalized is None:
                raise QueryError(
                    "INVALID_QUERY_FILTER_OPERATOR", f"invalid ID field: {literal.value}", literal.position
                )
            return normalized
        if kind == "text":
            return str(literal.value).lower()
        return literal.value

    def range_of(self, path: FieldPath, literal: Literal) -> tuple[Any, Any]:
        name, n = cast(tuple[str, int | None], literal.value)  # a date literal carries (name, n)
        start, end = _date_range(name, n, self.now.astimezone(UTC).date())
        if path.leaf_def.type == "datetime":
            return (
                datetime(start.year, start.month, start.day, tzinfo=UTC),
                datetime(end.year, end.month, end.day, tzinfo=UTC),
            )
        return start, end

    def comparison(self, condition: Comparison) -> Predicate:
        ref = condition.field
        path = self.filter_path(ref)
        get = _normalizing_getter(path)
        op = condition.operator
        literal = condition.value
        if op == "LIKE":
            if _kind(path.leaf_def) != "text" or literal.kind not in ("string", "null"):
                raise QueryError(
                    "INVALID_QUERY_FILTER_OPERATOR",
                    f"invalid operator on field '{ref.text}': LIKE needs a text field and a quoted pattern",
                    literal.position,
                )
            if literal.kind == "null":
                return lambda record: False
            matcher = _like_matcher(literal.pattern)
            return lambda record: (v := get(record)) is not None and matcher(v)
        value = self.value(path, ref, literal)
        if literal.kind == "date_literal":
            start, end = self.range_of(path, literal)
            checks: dict[str, Callable[[Any], bool]] = {
                "=": lambda v: start <= v < end,
                "!=": lambda v: not start <= v < end,
                "<": lambda v: v < start,
                "<=": lambda v: v < end,
                ">": lambda v: v >= end,
                ">=": lambda v: v >= start,
            }
            check = checks[op]
            if op == "!=":
                return lambda record: (v := get(record)) is None or check(v)
            return lambda record: (v := get(record)) is not None and check(v)
        if op == "=":
            return lambda record: get(record) == value
        if op == "!=":
            return lambda record: get(record) != value
        if value is None:
            return lambda record: False
        compare = _ORDERING[op]
        return lambda record: (v := get(record)) is not None and compare(v, value)

    def in_list(self, condition: InList) -> Predicate:
        ref = condition.field
        path = self.filter_path(ref)
        get = _normalizing_getter(path)
        ranges: list[tuple[Any, Any]] = []
        members: set[Any] = set()
        for literal in condition.values:
            value = self.value(path, ref, literal)
            if literal.kind == "date_literal":
                ranges.append(self.range_of(path, literal))
            else:
                members.add(value)

        def contains(record: Record) -> bool:
            v = get(record)
            if v in members:
                return True
            return v is not None and any(start <= v < end for start, end in ranges)

        if condition.negated:
            return lambda record: not contains(record)
        return contains


def _normalizing_getter(path: FieldPath) -> Callable[[Record], Any]:
    """The path's value in the form comparisons use: lower-cased text, everything else as stored."""
    get = path.getter
    if _kind(path.leaf_def) == "text":
        return lambda record: v.lower() if isinstance(v := get(record), str) else v
    return get


def _like_matcher(pattern: tuple[tuple[str, bool], ...]) -> Callable[[str], bool]:
    """LIKE: ``%`` any run, ``_`` one character, escaped ``\\%``/``\\_`` literal; case-insensitive."""
    parts = []
    for char, wildcard in pattern:
        if wildcard:
            parts.append(".*" if char == "%" else ".")
        else:
            parts.append(re.escape(char))
    compiled = re.compile("".join(parts), re.IGNORECASE | re.DOTALL)
    return lambda value: compiled.fullmatch(value) is not None


# -- SELECT and ORDER BY -----------------------------------------------------------------------------------


@dataclass
class _Node:
    """The nested shape of a record in the output: fields and parent relationships, in SELECT order."""

    entries: dict[str, _Node | None] = field(default_factory=dict)  # name -> None (a field) or a node
    step: Step | None = None


@dataclass
class CompiledQuery:
    root: ObjectDef
    columns: list[FieldPath]
    is_count: bool
    predicate: Predicate | None
    order: list[tuple[Callable[[Record], Any], bool, bool]]  # getter, descending, nulls_last
    limit: int | None
    offset: int | None
    lookup: Lookup
    schema: OrgSchema
    _shape: _Node = field(default_factory=_Node)

    def __post_init__(self) -> None:
        for path in self.columns:
            node = self._shape
            for step in path.steps:
                child = node.entries.get(step.relationship)
                if child is None:
                    child = _Node(step=step)
                    node.entries[step.relationship] = child
                node = child
            node.entries.setdefault(path.leaf, None)

    def run(self, rows: Iterable[Record]) -> list[Record]:
        """The matching records, sorted, offset and limited: computed once per query."""
        predicate = self.predicate
        result = [r for r in rows if predicate(r)] if predicate is not None else list(rows)
        for getter, descending, nulls_last in reversed(self.order):
            null_rank = 0 if nulls_last == descending else 2

            def key(record: Record, getter: Callable[[Record], Any] = getter, null_rank: int = null_rank) -> Any:
                value = getter(record)
                return (null_rank,) if value is None else (1, value)

            result.sort(key=key, reverse=descending)
        start = self.offset or 0
        end = None if self.limit is None else start + self.limit
        return result[start:end]

    def to_json(self, record: Record, version: str) -> dict[str, Any]:
        """One record as the REST query resource renders it (only the selected fields, parents nested)."""
        return self._render(record, self.root.name, self._shape, version)

    def _render(self, record: Record, type_name: str, node: _Node, version: str) -> dict[str, Any]:
        record_type = type_name
        if type_name == "Name":
            obj = self.schema.object_for_id(record["Id"])
            record_type = obj.name if obj else "Name"
        out: dict[str, Any] = {
            "attributes": {
                "type": type_name,
                "url": f"/services/data/v{version}/sobjects/{record_type}/{record['Id']}",
            }
        }
        for name, child in node.entries.items():
            if child is None:
                if type_name == "Name" and name == "Type":
                    out[name] = record_type
                else:
                    out[name] = to_json(record.get(name))
                continue
            step = child.step
            assert step is not None  # every nested node is a relationship hop
            parent_id = record.get(step.ref_field)
            parent = self.lookup(parent_id) if parent_id else None
            if parent is None:
                out[name] = None
            else:
                parent_type = "Name" if step.polymorphic else (step.target.name if step.target else "Name")
                out[name] = self._render(parent, parent_type, child, version)
        return out

    def csv_header(self) -> list[str]:
        return [path.column for path in self.columns]

    def csv_row(self, record: Record) -> list[str]:
        return [to_csv(path.getter(record)) for path in self.columns]


def compile_query(query: Query, schema: OrgSchema, lookup: Lookup, now: datetime) -> CompiledQuery:
    """Bind ``query`` to the org; raises ``QueryError`` (INVALID_TYPE, INVALID_FIELD, …)."""
    root = schema.object(query.sobject)
    if root is None:
        raise QueryError(
            "INVALID_TYPE",
            f"sObject type '{query.sobject}' is not supported. If you are attempting to use a custom object, "
            "be sure to append the '__c' after the entity name. Please reference your WSDL or the describe "
            "call for the appropriate names.",
            query.sobject_position,
        )
    resolver = Resolver(schema, lookup)
    columns: list[FieldPath] = []
    seen: set[str] = set()
    for item in query.select:
        if isinstance(item, CountAll):
            continue
        path = resolver.resolve(root, item)
        if path.column.lower() in seen:
            raise QueryError("INVALID_FIELD", f"duplicate field selected: {item.text}", item.position)
        seen.add(path.column.lower())
        columns.append(path)
    predicate = _Compiler(resolver, root, now).compile(query.where) if query.where is not None else None
    order: list[tuple[Callable[[Record], Any], bool, bool]] = []
    for order_item in query.order_by:
        path = resolver.resolve(root, order_item.field)
        if not path.leaf_def.sortable:
            position = order_item.field.position
            raise QueryError("INVALID_FIELD", f"field '{path.leaf}' can not be sorted in a query call", position)
        order.append((_normalizing_getter(path), order_item.descending, order_item.nulls_last))
    if query.offset is not None and query.offset > MAX_OFFSET:
        raise QueryError(
            "NUMBER_OUTSIDE_VALID_RANGE",
            f"Maximum SOQL offset allowed is {MAX_OFFSET}",
            query.sobject_position,
        )
    return CompiledQuery(
        root=root,
        columns=columns,
        is_count=query.is_count,
        predicate=predicate,
        order=order,
        limit=query.limit,
        offset=query.offset,
        lookup=lookup,
        schema=schema,
    )
