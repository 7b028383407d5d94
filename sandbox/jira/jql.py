"""A JQL subset: tokenizer, recursive-descent parser, and a compiler to predicates over issues.

Grammar (keywords and field names are case-insensitive, as in Jira)::

    query    := [or_expr] [ORDER BY sort_key ("," sort_key)*]
    or_expr  := and_expr ((OR | "||" | "|") and_expr)*
    and_expr := not_expr ((AND | "&&" | "&") not_expr)*
    not_expr := (NOT | "!") not_expr | "(" or_expr ")" | clause
    clause   := field operator operand
    operator := = | != | < | <= | > | >= | ~ | !~ | IN | NOT IN | IS | IS NOT
    operand  := value | function "(" [value ("," value)*] ")" | EMPTY | NULL | "(" operand ("," operand)* ")"
    sort_key := field [ASC | DESC]

Values are unquoted words or strings in double or single quotes with backslash escapes.

Semantics follow Jira where it matters to a sync (all documented in ``sandbox/jira/README.md``):

- ``NOT`` is pushed down onto the clauses (De Morgan), so ``NOT assignee = x`` is ``assignee != x``.
- ``!=`` and ``NOT IN`` never match an empty field ("component != fred will only match issues that
  have a component", Jira's JQL operator reference).
- Date values have **minute resolution in the searching user's time zone**: a literal is the minute
  it names, and an issue's timestamp is truncated to its minute before comparing. So an issue
  updated at 10:00:30 matches ``updated >= "10:00"``, ``updated <= "10:00"`` and
  ``updated = "10:00"``, but not ``updated > "10:00"`` nor ``updated < "10:00"``.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sandbox.jira import adf
from sandbox.jira.model import (
    CATEGORIES,
    ISSUE_TYPE_BY_ID,
    ISSUE_TYPES,
    PRIORITIES,
    PRIORITY_BY_ID,
    RESOLUTION_DONE,
    RESOLUTION_DONE_ID,
    STATUS_BY_ID,
    STATUS_IDS,
    STATUS_ORDER,
    IssueVersion,
    category_of,
)


class JqlError(Exception):
    """A query Jira refuses with 400; ``str(exc)`` is the text of ``errorMessages``."""


def _syntax(message: str, pos: int | None = None) -> JqlError:
    where = f" (line 1, character {pos})" if pos is not None else ""
    return JqlError(f"Error in the JQL Query: {message}{where}")


# -- tokens ------------------------------------------------------------------------------------------

RESERVED = frozenset({"and", "or", "not", "in", "is", "empty", "null", "order", "by", "asc", "desc", "was", "changed"})
_OPERATORS = ("!=", "<=", ">=", "!~", "&&", "||", "=", "<", ">", "~", "!", "&", "|")
_WORD_STOP = frozenset(" \t\r\n\"'(),=!<>~&|")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "'": "'", "\\": "\\", " ": " "}


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "word" | "string" | "op" | "(" | ")" | "," | "eof"
    text: str
    pos: int  # 1-based character position in the query

    def keyword(self, *words: str) -> bool:
        return self.kind == "word" and self.text.lower() in words

    def describe(self) -> str:
        return "the end of the query" if self.kind == "eof" else f"'{self.text}'"


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        start = i + 1
        if c in "\"'":
            i += 1
            chars: list[str] = []
            while True:
                if i >= n:
                    raise _syntax(f"The quoted string '{''.join(chars)}' has not been completed.", start)
                ch = text[i]
                if ch == "\\":
                    if i + 1 >= n:
                        raise _syntax(f"The quoted string '{''.join(chars)}' has not been completed.", start)
                    nxt = text[i + 1]
                    if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2 : i + 6]):
                        chars.append(chr(int(text[i + 2 : i + 6], 16)))
                        i += 6
                        continue
                    if nxt not in _ESCAPES:
                        raise _syntax(f"The escape sequence '\\{nxt}' in the quoted string is illegal.", i + 1)
                    chars.append(_ESCAPES[nxt])
                    i += 2
                    continue
                if ch == c:
                    i += 1
                    break
                chars.append(ch)
                i += 1
            tokens.append(Token("string", "".join(chars), start))
            continue
        if c in "(),":
            tokens.append(Token(c, c, start))
            i += 1
            continue
        op = next((o for o in _OPERATORS if text.startswith(o, i)), None)
        if op is not None:
            tokens.append(Token("op", op, start))
            i += len(op)
            continue
        j = i
        while j < n and text[j] not in _WORD_STOP:
            j += 1
        tokens.append(Token("word", text[i:j], start))
        i = j
    tokens.append(Token("eof", "", n + 1))
    return tokens


# -- syntax tree -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Literal:
    text: str
    quoted: bool
    pos: int


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    args: tuple[str, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Empty:
    pos: int


Operand = Literal | Function | Empty


@dataclass(frozen=True, slots=True)
class Clause:
    field: str
    operator: str  # "=", "!=", "<", "<=", ">", ">=", "~", "!~", "in", "not in", "is", "is not"
    operands: tuple[Operand, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: str  # "and" | "or"
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class NotOp:
    child: Node


Node = Clause | BoolOp | NotOp


@dataclass(frozen=True, slots=True)
class SortKey:
    field: str
    descending: bool
    pos: int


@dataclass(frozen=True, slots=True)
class Query:
    where: Node | None
    order_by: tuple[SortKey, ...]


_VALID_OPERATORS = (
    "The valid operators are '=', '!=', '<', '>', '<=', '>=', '~', '!~', 'IN', 'NOT IN', 'IS' and 'IS NOT'."
)


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def advance(self) -> Token:
        token = self.tokens[self.i]
        if token.kind != "eof":
            self.i += 1
        return token

    def parse(self) -> Query:
        where: Node | None = None
        if self.tok.kind != "eof" and not self.tok.keyword("order"):
            where = self.or_expr()
        order: list[SortKey] = []
        if self.tok.keyword("order"):
            self.advance()
            if not self.tok.keyword("by"):
                raise self._expected("'by'")
            self.advance()
            order.append(self.sort_key())
            while self.tok.kind == ",":
                self.advance()
                order.append(self.sort_key())
        if self.tok.kind != "eof":
            if order:
                raise self._expected("either 'ASC', 'DESC' or ','")
            raise self._expected("either 'OR' or 'AND'")
        return Query(where, tuple(order))

    def _expected(self, what: str) -> JqlError:
        tok = self.tok
        if tok.kind == "eof":
            return _syntax(f"Expecting {what} before the end of the query.")
        return _syntax(f"Expecting {what} but got '{tok.text}'.", tok.pos)

    def or_expr(self) -> Node:
        children = [self.and_expr()]
        while self.tok.keyword("or") or (self.tok.kind == "op" and self.tok.text in ("||", "|")):
            self.advance()
            children.append(self.and_expr())
        return children[0] if len(children) == 1 else BoolOp("or", tuple(children))

    def and_expr(self) -> Node:
        children = [self.not_expr()]
        while self.tok.keyword("and") or (self.tok.kind == "op" and self.tok.text in ("&&", "&")):
            self.advance()
            children.append(self.not_expr())
        return children[0] if len(children) == 1 else BoolOp("and", tuple(children))

    def not_expr(self) -> Node:
        if self.tok.keyword("not") or (self.tok.kind == "op" and self.tok.text == "!"):
            self.advance()
            return NotOp(self.not_expr())
        if self.tok.kind == "(":
            self.advance()
            inner = self.or_expr()
            if self.tok.kind != ")":
                raise self._expected("')'")
            self.advance()
            return inner
        return self.clause()

    def field_name(self) -> Token:
        tok = self.tok
        if tok.kind == "string" or (tok.kind == "word" and tok.text.lower() not in RESERVED):
            return self.advance()
        raise self._expected("a field name")

    def clause(self) -> Clause:
        field = self.field_name()
        operator = self.operator()
        if operator in ("in", "not in"):
            operands = self.list_operand()
        elif operator in ("is", "is not"):
            tok = self.tok
            if not tok.keyword("empty", "null"):
                raise _syntax(
                    f"The operator '{operator.upper()}' only supports the 'EMPTY' or 'NULL' operand.",
                    tok.pos,
                )
            self.advance()
            operands = (Empty(tok.pos),)
        else:
            operands = (self.operand(),)
        return Clause(field.text, operator, operands, field.pos)

    def operator(self) -> str:
        tok = self.tok
        if tok.kind == "op" and tok.text in ("=", "!=", "<", "<=", ">", ">=", "~", "!~"):
            self.advance()
            return tok.text
        if tok.keyword("in"):
            self.advance()
            return "in"
        if tok.keyword("is"):
            self.advance()
            if self.tok.keyword("not"):
                self.advance()
                return "is not"
            return "is"
        if tok.keyword("not") and self.tokens[self.i + 1].keyword("in"):
            self.advance()
            self.advance()
            return "not in"
        if tok.kind == "eof":
            raise _syntax(f"Expecting operator before the end of the query. {_VALID_OPERATORS}")
        raise _syntax(f"Expecting operator but got '{tok.text}'. {_VALID_OPERATORS}", tok.pos)

    def list_operand(self) -> tuple[Operand, ...]:
        if self.tok.kind != "(":
            if self.tok.kind == "word" and self.tokens[self.i + 1].kind == "(":
                return (self.operand(),)  # a function returning a list, e.g. membersOf(...)
            raise self._expected("'('")
        self.advance()
        items = [self.operand()]
        while self.tok.kind == ",":
            self.advance()
            items.append(self.operand())
        if self.tok.kind != ")":
            raise self._expected("')'")
        self.advance()
        return tuple(items)

    def operand(self) -> Operand:
        tok = self.tok
        if tok.kind == "string":
            self.advance()
            return Literal(tok.text, True, tok.pos)
        if tok.kind == "word":
            lowered = tok.text.lower()
            if lowered in ("empty", "null"):
                self.advance()
                return Empty(tok.pos)
            if self.tokens[self.i + 1].kind == "(":
                self.advance()
                self.advance()
                args: list[str] = []
                if self.tok.kind != ")":
                    args.append(self.function_arg())
                    while self.tok.kind == ",":
                        self.advance()
                        args.append(self.function_arg())
                if self.tok.kind != ")":
                    raise self._expected("')'")
                self.advance()
                return Function(tok.text, tuple(args), tok.pos)
            if lowered in RESERVED:
                raise _syntax(
                    f"Expecting either a value, list or function but got '{tok.text}'. You must surround "
                    f"'{tok.text}' in quotation marks to use it as a value.",
                    tok.pos,
                )
            self.advance()
            return Literal(tok.text, False, tok.pos)
        if tok.kind == "op" and tok.text in ("-", "+"):
            self.advance()
        raise self._expected("either a value, list or function")

    def function_arg(self) -> str:
        tok = self.tok
        if tok.kind in ("string", "word"):
            self.advance()
            return tok.text
        raise self._expected("a function argument")

    def sort_key(self) -> SortKey:
        field = self.field_name()
        descending = False
        if self.tok.keyword("asc", "desc"):
            descending = self.advance().text.lower() == "desc"
        return SortKey(field.text, descending, field.pos)


def parse(text: str) -> Query:
    """Parse a JQL string; raises ``JqlError`` with Jira's wording for syntax errors."""
    return _Parser(tokenize(text)).parse()


# -- compiling to predicates -------------------------------------------------------------------------


class Catalog(Protocol):
    """What the compiler needs to resolve values: implemented by the store under its lock."""

    def project_id(self, value: str) -> int | None: ...
    def project_key(self, project_id: int) -> str: ...
    def account_id(self, value: str) -> str | None: ...
    def display_name(self, account_id: str) -> str: ...
    def issue_id(self, key: str) -> int | None: ...


@dataclass(frozen=True)
class Environment:
    catalog: Catalog
    zone: ZoneInfo
    now: datetime
    current_account_id: str


Predicate = Callable[[IssueVersion], bool]


@dataclass
class CompiledQuery:
    predicate: Predicate
    sort: Callable[[list[IssueVersion]], None]
    project_ids: frozenset[int] | None  # candidate projects, when the query restricts them
    bounded: bool  # False for an empty query or one that is only ORDER BY


# Field ids by the (lower-cased) names JQL accepts for them.
FIELD_NAMES: dict[str, str] = {
    "project": "project",
    "key": "issuekey",
    "issuekey": "issuekey",
    "id": "issuekey",
    "issue": "issuekey",
    "issuetype": "issuetype",
    "type": "issuetype",
    "status": "status",
    "statuscategory": "statuscategory",
    "assignee": "assignee",
    "reporter": "reporter",
    "creator": "creator",
    "labels": "labels",
    "duedate": "duedate",
    "due": "duedate",
    "created": "created",
    "createddate": "created",
    "updated": "updated",
    "updateddate": "updated",
    "resolutiondate": "resolutiondate",
    "resolved": "resolutiondate",
    "resolution": "resolution",
    "parent": "parent",
    "priority": "priority",
    "summary": "summary",
    "description": "description",
    "text": "text",
    "cf[10016]": "customfield_10016",
    "story point estimate": "customfield_10016",
}

_EQUALITY = frozenset({"=", "!=", "in", "not in", "is", "is not"})
_RANGE = frozenset({"<", "<=", ">", ">="})
_TEXT = frozenset({"~", "!~", "is", "is not"})
ALLOWED_OPERATORS: dict[str, frozenset[str]] = {
    "project": _EQUALITY,
    "issuekey": (_EQUALITY | _RANGE) - {"is", "is not"},
    "issuetype": _EQUALITY,
    "status": _EQUALITY,
    "statuscategory": _EQUALITY,
    "assignee": _EQUALITY,
    "reporter": _EQUALITY,
    "creator": _EQUALITY,
    "labels": _EQUALITY,
    "duedate": _EQUALITY | _RANGE,
    "created": _EQUALITY | _RANGE,
    "updated": _EQUALITY | _RANGE,
    "resolutiondate": _EQUALITY | _RANGE,
    "resolution": _EQUALITY,
    "parent": _EQUALITY,
    "priority": _EQUALITY | _RANGE,
    "summary": _TEXT,
    "description": _TEXT,
    "text": frozenset({"~", "!~"}),
    "customfield_10016": _EQUALITY | _RANGE,
}

INVERSE = {
    "=": "!=",
    "!=": "=",
    "<": ">=",
    ">=": "<",
    ">": "<=",
    "<=": ">",
    "~": "!~",
    "!~": "~",
    "in": "not in",
    "not in": "in",
    "is": "is not",
    "is not": "is",
}

_DATE_FORMATS = re.compile(r"(\d{4})[/-](\d{1,2})[/-](\d{1,2})(?:\s+(\d{1,2}):(\d{2}))?")
_PERIOD = re.compile(r"([-+]?)\s*((?:\d+\s*[wdhm]\s*)+)")
_PERIOD_PART = re.compile(r"(\d+)\s*([wdhm])")
_PERIOD_MINUTES = {"w": 7 * 24 * 60, "d": 24 * 60, "h": 60, "m": 1}
_KEY = re.compile(r"([A-Za-z][A-Za-z0-9_]*)-(\d+)")
_TEXT_TERM = re.compile(r"\w+\*?")
_WORD = re.compile(r"\w+")
DATE_HELP = (
    "Valid formats include: 'yyyy/MM/dd HH:mm', 'yyyy-MM-dd HH:mm', 'yyyy/MM/dd', 'yyyy-MM-dd', "
    "or a period format e.g. '-5d', '4w 2d'."
)
_MISSING = object()  # a resolved operand meaning "the field is empty" (EMPTY, or resolution Unresolved)


def epoch_minute(moment: datetime) -> int:
    """The minute an aware datetime falls in, counted from the epoch (equal in every whole-minute zone)."""
    return int(moment.timestamp()) // 60


class _Compiler:
    def __init__(self, env: Environment) -> None:
        self.env = env
        self.catalog = env.catalog
        self._day_minutes: dict[date, int] = {}

    # -- entry ---------------------------------------------------------------------------------------
    def compile(self, query: Query) -> CompiledQuery:
        predicate: Predicate = (lambda v: True) if query.where is None else self.node(query.where, False)
        sort = self.sorter(query.order_by)
        projects = self.projects(query.where) if query.where is not None else None
        return CompiledQuery(predicate, sort, projects, query.where is not None)

    def node(self, node: Node, negated: bool) -> Predicate:
        if isinstance(node, NotOp):
            return self.node(node.child, not negated)
        if isinstance(node, BoolOp):
            parts = [self.node(child, negated) for child in node.children]
            conjunction = (node.op == "and") != negated  # De Morgan
            if conjunction:
                return lambda v: all(p(v) for p in parts)
            return lambda v: any(p(v) for p in parts)
        return self.clause(node, negated)

    def projects(self, node: Node) -> frozenset[int] | None:
        """Project ids every match must be in, when the query says so without negation."""
        if isinstance(node, Clause):
            if FIELD_NAMES.get(node.field.lower()) != "project" or node.operator not in ("=", "in"):
                return None
            ids = {self.catalog.project_id(op.text) for op in node.operands if isinstance(op, Literal)}
            if None in ids or any(not isinstance(op, Literal) for op in node.operands):
                return None
            return frozenset(i for i in ids if i is not None)
        if isinstance(node, BoolOp):
            found = [self.projects(child) for child in node.children]
            if node.op == "and":
                known = [f for f in found if f is not None]
                if not known:
                    return None
                result = known[0]
                for other in known[1:]:
                    result = result & other
                return result
            if any(f is None for f in found):
                return None
            return frozenset().union(*(f for f in found if f is not None))
        return None

    # -- clauses -------------------------------------------------------------------------------------
    def clause(self, clause: Clause, negated: bool) -> Predicate:
        name = clause.field
        field = FIELD_NAMES.get(name.lower())
        if field is None:
            raise JqlError(f"Field '{name}' does not exist or you do not have permission to view it.")
        if clause.operator not in ALLOWED_OPERATORS[field]:
            raise JqlError(f"The operator '{clause.operator.upper()}' is not supported by the '{name}' field.")
        op = INVERSE[clause.operator] if negated else clause.operator
        if op in ("=", "!=") and isinstance(clause.operands[0], Empty):
            op = "is" if op == "=" else "is not"
        if field in ("summary", "description", "text"):
            return self.text_clause(field, name, op, clause)
        if field in ("created", "updated", "resolutiondate", "duedate"):
            return self.date_clause(field, name, op, clause)
        if field == "labels":
            return self.labels_clause(name, op, clause)
        if field == "issuekey" and op in _RANGE:
            return self.key_range(name, op, clause)
        getter, resolve, rank = self.single_valued(field, name)
        if op in _RANGE:
            assert rank is not None  # ALLOWED_OPERATORS admits ranges only for ranked fields
            bound = self.single_operand(clause, name)
            if bound is _MISSING:
                raise JqlError(f"The operator '{op}' does not support the EMPTY operand for field '{name}'.")
            return _range(lambda v: _ranked(rank, getter(v)), op, rank(bound))
        targets, include_empty = self.resolve_all(clause, resolve)
        return _equality(getter, op, targets, include_empty)

    def resolve_all(self, clause: Clause, resolve: Callable[[Operand], Any]) -> tuple[frozenset[Any], bool]:
        values = [resolve(op) if not isinstance(op, Empty) else _MISSING for op in clause.operands]
        return frozenset(v for v in values if v is not _MISSING), any(v is _MISSING for v in values)

    def single_operand(self, clause: Clause, name: str) -> Any:
        field = FIELD_NAMES[name.lower()]
        _, resolve, _ = self.single_valued(field, name)
        operand = clause.operands[0]
        return _MISSING if isinstance(operand, Empty) else resolve(operand)

    def single_valued(
        self, field: str, name: str
    ) -> tuple[Callable[[IssueVersion], Any], Callable[[Operand], Any], Callable[[Any], Any] | None]:
        """(value of the issue, resolver of an operand to that kind of value, rank for ranges)."""
        if field == "project":
            return (lambda v: v.project_id), self.resolver(name, self.catalog.project_id), None
        if field == "issuekey":
            return (lambda v: v.id), self.issue_resolver(name), None
        if field == "parent":
            return (lambda v: v.parent_id), self.issue_resolver(name), None
        if field == "issuetype":
            lookup = {k.casefold(): k for k in ISSUE_TYPES}
            return (
                (lambda v: v.issue_type),
                self.resolver(name, lambda s: lookup.get(s.casefold()) or ISSUE_TYPE_BY_ID.get(s)),
                None,
            )
        if field == "status":
            statuses = {k.casefold(): k for k in STATUS_IDS}
            return (
                (lambda v: v.status),
                self.resolver(name, lambda s: statuses.get(s.casefold()) or STATUS_BY_ID.get(s)),
                None,
            )
        if field == "statuscategory":
            return (lambda v: category_of(v.status)), self.resolver(name, _category_key), None
        if field == "priority":
            names = {k.casefold(): k for k in PRIORITIES}
            return (
                (lambda v: v.priority),
                self.resolver(name, lambda s: names.get(s.casefold()) or PRIORITY_BY_ID.get(s)),
                lambda p: 6 - int(PRIORITIES[p]),  # Highest ranks highest: priority > Medium = High, Highest
            )
        if field == "resolution":

            def resolution(s: str) -> Any:
                if s.casefold() == "unresolved":
                    return _MISSING
                if s.casefold() == RESOLUTION_DONE.casefold() or s == RESOLUTION_DONE_ID:
                    return RESOLUTION_DONE
                return None

            return (lambda v: v.resolution), self.resolver(name, resolution), None
        if field in ("assignee", "reporter", "creator"):
            attr = field
            return (lambda v: getattr(v, attr)), self.user_resolver(name), None
        if field == "customfield_10016":

            def number(s: str) -> float | None:
                try:
                    return float(s)
                except ValueError:
                    return None

            return (lambda v: v.story_points), self.resolver(name, number, invalid="number"), lambda x: x
        raise JqlError(f"Field '{name}' does not exist or you do not have permission to view it.")

    def resolver(self, name: str, lookup: Callable[[str], Any], invalid: str = "value") -> Callable[[Operand], Any]:
        def resolve(operand: Operand) -> Any:
            if isinstance(operand, Function):
                raise JqlError(
                    f"Unable to find JQL function '{operand.name}()'."
                    if operand.name.lower() not in _FUNCTIONS
                    else f"The function '{operand.name}' is not supported by the field '{name}'."
                )
            assert isinstance(operand, Literal)
            value = lookup(operand.text)
            if value is None:
                if invalid == "number":
                    raise JqlError(f"'{operand.text}' is an invalid number for the field '{name}'.")
                raise JqlError(f"The value '{operand.text}' does not exist for the field '{name}'.")
            return value

        return resolve

    def user_resolver(self, name: str) -> Callable[[Operand], Any]:
        def resolve(operand: Operand) -> Any:
            if isinstance(operand, Function):
                if operand.name.lower() == "currentuser":
                    return self.env.current_account_id
                raise JqlError(
                    f"Unable to find JQL function '{operand.name}()'."
                    if operand.name.lower() not in _FUNCTIONS
                    else f"The function '{operand.name}' is not supported by the field '{name}'."
                )
            assert isinstance(operand, Literal)
            account = self.catalog.account_id(operand.text)
            if account is None:
                raise JqlError(f"The value '{operand.text}' does not exist for the field '{name}'.")
            return account

        return resolve

    def issue_resolver(self, name: str) -> Callable[[Operand], Any]:
        def resolve(operand: Operand) -> Any:
            if isinstance(operand, Function):
                raise JqlError(f"Unable to find JQL function '{operand.name}()'.")
            assert isinstance(operand, Literal)
            text = operand.text.strip()
            if text.isdigit():
                return int(text)
            if not _KEY.fullmatch(text):
                raise JqlError(f"The issue key '{text}' for field '{name}' is invalid.")
            issue_id = self.catalog.issue_id(text.upper())
            if issue_id is None:
                raise JqlError(f"An issue with key '{text}' does not exist for field '{name}'.")
            return issue_id

        return resolve

    def key_range(self, name: str, op: str, clause: Clause) -> Predicate:
        operand = clause.operands[0]
        if not isinstance(operand, Literal) or not _KEY.fullmatch(operand.text.strip()):
            raise JqlError(f"The issue key '{getattr(operand, 'text', '')}' for field '{name}' is invalid.")
        match = _KEY.fullmatch(operand.text.strip())
        assert match is not None
        project_id = self.catalog.project_id(match.group(1).upper())
        if project_id is None:
            raise JqlError(f"An issue with key '{operand.text}' does not exist for field '{name}'.")
        number = int(match.group(2))
        compare = _COMPARE[op]
        return lambda v: v.project_id == project_id and compare(v.number, number)

    def labels_clause(self, name: str, op: str, clause: Clause) -> Predicate:
        values: list[Any] = []
        for operand in clause.operands:
            if isinstance(operand, Function):
                raise JqlError(f"Unable to find JQL function '{operand.name}()'.")
            values.append(_MISSING if isinstance(operand, Empty) else operand.text.casefold())
        include_empty = any(v is _MISSING for v in values)
        wanted = frozenset(v for v in values if v is not _MISSING)
        if op in ("is", "=", "in"):
            if op == "is":
                return lambda v: not v.labels
            return lambda v: (not v.labels and include_empty) or any(label.casefold() in wanted for label in v.labels)
        if op == "is not":
            return lambda v: bool(v.labels)
        return lambda v: bool(v.labels) and not any(label.casefold() in wanted for label in v.labels)

    # -- dates ---------------------------------------------------------------------------------------
    def day_minute(self, day: date) -> int:
        minute = self._day_minutes.get(day)
        if minute is None:
            minute = epoch_minute(datetime.combine(day, time(0, 0), self.env.zone))
            self._day_minutes[day] = minute
        return minute

    def date_clause(self, field: str, name: str, op: str, clause: Clause) -> Predicate:
        getter: Callable[[IssueVersion], int | None]
        if field == "duedate":
            day_minute = self.day_minute
            getter = lambda v: None if v.due_date is None else day_minute(v.due_date)  # noqa: E731 (a small accessor)
        else:
            attr = field if field != "resolutiondate" else "resolution_date"
            getter = lambda v: _minute_or_none(getattr(v, attr))  # noqa: E731 (a small accessor)
        if op in ("is", "is not"):
            return _equality(getter, op, frozenset(), True)
        values = [
            _MISSING if isinstance(operand, Empty) else self.date_operand(operand, name) for operand in clause.operands
        ]
        if op in _RANGE:
            bound = values[0]
            if bound is _MISSING:
                raise JqlError(f"The operator '{op}' does not support the EMPTY operand for field '{name}'.")
            return _range(getter, op, bound)
        include_empty = any(v is _MISSING for v in values)
        return _equality(getter, op, frozenset(v for v in values if v is not _MISSING), include_empty)

    def date_operand(self, operand: Operand, name: str) -> int:
        if isinstance(operand, Function):
            return self.date_function(operand, name)
        assert isinstance(operand, Literal)
        text = operand.text.strip()
        if not operand.quoted and text.isdigit():
            return int(text) // 60_000  # unquoted numbers are epoch milliseconds
        match = _DATE_FORMATS.fullmatch(text)
        if match:
            year, month, day, hour, minute = match.groups()
            try:
                local = datetime(
                    int(year), int(month), int(day), int(hour or 0), int(minute or 0), tzinfo=self.env.zone
                )
            except ValueError:
                raise JqlError(f"Date value '{text}' for field '{name}' is invalid. {DATE_HELP}") from None
            return epoch_minute(local)
        period = _PERIOD.fullmatch(text)
        if period:
            minutes = sum(int(n) * _PERIOD_MINUTES[u] for n, u in _PERIOD_PART.findall(period.group(2)))
            sign = -1 if period.group(1) == "-" else 1
            return epoch_minute(self.env.now) + sign * minutes
        raise JqlError(f"Date value '{text}' for field '{name}' is invalid. {DATE_HELP}")

    def date_function(self, function: Function, name: str) -> int:
        fname = function.name.lower()
        if fname not in _FUNCTIONS:
            raise JqlError(f"Unable to find JQL function '{function.name}()'.")
        if fname == "currentuser":
            raise JqlError(f"The function '{function.name}' is not supported by the field '{name}'.")
        now_local = self.env.now.astimezone(self.env.zone)
        if fname == "now":
            if function.args:
                raise JqlError(f"Function 'now' expected '0' arguments but received '{len(function.args)}'.")
            return epoch_minute(self.env.now)
        unit = fname.removeprefix("startof").removeprefix("endof")  # day | week | month | year
        start = fname.startswith("start")
        today = now_local.date()
        if unit == "day":
            first = today
        elif unit == "week":
            first = today - timedelta(days=(today.weekday() + 1) % 7)  # weeks start on Sunday (en_US)
        elif unit == "month":
            first = today.replace(day=1)
        else:
            first = today.replace(month=1, day=1)
        minutes_shift = 0
        if function.args:
            inc = re.fullmatch(r"([-+]?)(\d+)([ywdhmM]?)", function.args[0].strip())
            if inc is None or len(function.args) > 1:
                raise JqlError(f"Invalid increment '{','.join(function.args)}' for function '{function.name}'.")
            amount = int(inc.group(2)) * (-1 if inc.group(1) == "-" else 1)
            inc_unit = inc.group(3) or {"day": "d", "week": "w", "month": "M", "year": "y"}[unit]
            if inc_unit in ("M", "y"):
                months = amount * (12 if inc_unit == "y" else 1)
                first = _add_months(first, months)
            elif inc_unit in ("w", "d"):
                first = first + timedelta(days=amount * (7 if inc_unit == "w" else 1))
            else:
                minutes_shift = amount * (60 if inc_unit == "h" else 1)
        if start:
            return self.day_minute(first) + minutes_shift
        if unit == "day":
            last = first
        elif unit == "week":
            last = first + timedelta(days=6)
        elif unit == "month":
            last = first.replace(day=calendar.monthrange(first.year, first.month)[1])
        else:
            last = first.replace(month=12, day=31)
        return self.day_minute(last + timedelta(days=1)) - 1 + minutes_shift  # 23:59, the last minute

    # -- text ----------------------------------------------------------------------------------------
    def text_clause(self, field: str, name: str, op: str, clause: Clause) -> Predicate:
        getter: Callable[[IssueVersion], str | None]
        if field == "summary":
            getter = lambda v: v.summary  # noqa: E731 (a small accessor)
        elif field == "description":
            getter = lambda v: adf.as_text(v.description)  # noqa: E731 (a small accessor)
        else:
            getter = lambda v: " ".join(filter(None, (v.summary, adf.as_text(v.description))))  # noqa: E731 (a small accessor)
        if op == "is":
            return lambda v: not getter(v)
        if op == "is not":
            return lambda v: bool(getter(v))
        operand = clause.operands[0]
        if not isinstance(operand, Literal):
            raise JqlError(f"The operator '{op}' only supports a text value for field '{name}'.")
        matches = _text_matcher(operand.text)
        if op == "~":
            return lambda v: (text := getter(v)) is not None and matches(text)
        return lambda v: (text := getter(v)) is not None and not matches(text)

    # -- ordering ------------------------------------------------------------------------------------
    def sorter(self, keys: Sequence[SortKey]) -> Callable[[list[IssueVersion]], None]:
        if not keys:
            return lambda items: items.sort(key=lambda v: v.id, reverse=True)
        extractors = [(self.sort_value(k), k.descending) for k in keys]

        def sort(items: list[IssueVersion]) -> None:
            items.sort(key=lambda v: v.id)  # the tie-break: issue id, ascending
            for extract, descending in reversed(extractors):
                items.sort(key=lambda v: _none_last(extract(v)), reverse=descending)

        return sort

    def sort_value(self, key: SortKey) -> Callable[[IssueVersion], Any]:
        field = FIELD_NAMES.get(key.field.lower())
        catalog = self.catalog
        if field == "issuekey":
            return lambda v: (catalog.project_key(v.project_id), v.number)
        if field in ("created", "updated"):
            attr = field
            return lambda v: getattr(v, attr)
        if field == "resolutiondate":
            return lambda v: v.resolution_date
        if field == "duedate":
            return lambda v: v.due_date
        if field == "priority":
            return lambda v: 6 - int(PRIORITIES[v.priority])
        if field == "status":
            return lambda v: STATUS_ORDER.index(v.status)
        if field == "statuscategory":
            return lambda v: ("new", "indeterminate", "done").index(category_of(v.status))
        if field == "summary":
            return lambda v: v.summary.casefold()
        if field in ("assignee", "reporter", "creator"):
            attr = field

            def person(v: IssueVersion) -> str | None:
                account = getattr(v, attr)
                return None if account is None else catalog.display_name(account).casefold()

            return person
        if field == "project":
            return lambda v: catalog.project_key(v.project_id)
        if field == "issuetype":
            return lambda v: v.issue_type
        if field == "resolution":
            return lambda v: v.resolution
        if field == "parent":
            return lambda v: v.parent_id
        if field == "customfield_10016":
            return lambda v: v.story_points
        raise JqlError(f"Not able to sort using field '{key.field}'.")


_FUNCTIONS = frozenset(
    {
        "currentuser",
        "now",
        "startofday",
        "endofday",
        "startofweek",
        "endofweek",
        "startofmonth",
        "endofmonth",
        "startofyear",
        "endofyear",
    }
)

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _category_key(value: str) -> str | None:
    folded = value.casefold()
    for key, (cid, name, _) in CATEGORIES.items():
        if folded in (key, name.casefold(), str(cid)):
            return key
    return None


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def _minute_or_none(moment: datetime | None) -> int | None:
    return None if moment is None else epoch_minute(moment)


def _ranked(rank: Callable[[Any], Any], value: Any) -> Any:
    return None if value is None else rank(value)


def _none_last(value: Any) -> tuple[bool, Any]:
    return (True, 0) if value is None else (False, value)


def _equality(
    getter: Callable[[IssueVersion], Any], op: str, targets: frozenset[Any], include_empty: bool
) -> Predicate:
    """``=``/``IN``/``IS`` and their negations; the negations never match an empty field."""
    if op in ("=", "in"):

        def equals(v: IssueVersion) -> bool:
            value = getter(v)
            return include_empty if value is None else value in targets

        return equals
    if op == "is":
        return lambda v: getter(v) is None
    if op == "is not":
        return lambda v: getter(v) is not None
    # "!=" / "not in": only issues that have a value, and not one of these
    return lambda v: (value := getter(v)) is not None and value not in targets


def _range(getter: Callable[[IssueVersion], Any], op: str, bound: Any) -> Predicate:
    compare = _COMPARE[op]
    return lambda v: (value := getter(v)) is not None and compare(value, bound)


def _text_matcher(query: str) -> Callable[[str], bool]:
    """Jira-like text search: every term must occur as a word (case-insensitive); ``term*`` is a
    prefix; a query wrapped in double quotes is a phrase (the words in that order)."""
    stripped = query.strip()
    phrase = len(stripped) >= 2 and stripped[0] == stripped[-1] == '"'
    terms = [t.casefold() for t in _TEXT_TERM.findall(stripped)]
    if not terms:
        return lambda text: False

    def term_matches(term: str, word: str) -> bool:
        return word.startswith(term[:-1]) if term.endswith("*") else word == term

    if phrase:

        def match_phrase(text: str) -> bool:
            words = _WORD.findall(text.casefold())
            span = len(terms)
            return any(
                all(term_matches(t, w) for t, w in zip(terms, words[i : i + span], strict=True))
                for i in range(len(words) - span + 1)
            )

        return match_phrase

    def match_all(text: str) -> bool:
        words = _WORD.findall(text.casefold())
        return all(any(term_matches(t, w) for w in words) for t in terms)

    return match_all


def compile_query(text: str, env: Environment) -> CompiledQuery:
    """Parse and compile ``text``; every ``JqlError`` (syntax or value) is raised before any issue is read."""
    return _Compiler(env).compile(parse(text))
