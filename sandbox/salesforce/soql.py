"""A SOQL subset: tokenizer and recursive-descent parser producing a small syntax tree.

Supported: ``SELECT`` of fields, dotted child-to-parent paths and ``COUNT()``; ``FROM`` one object;
``WHERE`` with ``AND``/``OR``/``NOT`` and parentheses (mixing ``AND`` and ``OR`` at one level needs
parentheses, as in Salesforce), ``= != <> < > <= >=``, ``[NOT] IN (...)``, ``LIKE``; literals:
quoted strings with backslash escapes, numbers, ``true``/``false``/``null``, unquoted datetimes
(``2024-05-01T10:00:00Z``, ``…+02:00``, optional milliseconds), dates (``2024-05-01``) and date
literals (``TODAY``, ``LAST_N_DAYS:7``, …); ``ORDER BY`` with ``ASC``/``DESC`` and ``NULLS
FIRST``/``LAST``; ``LIMIT``; ``OFFSET``.

The parser knows nothing about the org: names are checked later against the schema
(``sandbox.salesforce.query``). Every error carries the character offset it refers to, so the
emulator can point at it the way Salesforce's error messages do.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone

KEYWORDS = frozenset(
    {
        "SELECT",
        "FROM",
        "WHERE",
        "AND",
        "OR",
        "NOT",
        "IN",
        "LIKE",
        "INCLUDES",
        "EXCLUDES",
        "ORDER",
        "BY",
        "ASC",
        "DESC",
        "NULLS",
        "FIRST",
        "LAST",
        "LIMIT",
        "OFFSET",
        "TRUE",
        "FALSE",
        "NULL",
        "GROUP",
        "HAVING",
        "WITH",
        "FOR",
        "USING",
        "TYPEOF",
    }
)
# Date literals without a parameter (TODAY) and with one (LAST_N_DAYS:7).
DATE_LITERALS = frozenset({"TODAY", "YESTERDAY", "TOMORROW", "LAST_WEEK", "THIS_WEEK", "NEXT_WEEK"})
DATE_LITERALS_N = frozenset({"LAST_N_DAYS", "NEXT_N_DAYS", "N_DAYS_AGO"})
COMPARISON_OPERATORS = ("=", "!=", "<>", "<", ">", "<=", ">=")
_STRING_ESCAPES = {"'": "'", '"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}


class SoqlSyntaxError(Exception):
    """MALFORMED_QUERY: ``detail`` is Salesforce's wording, ``position`` the offending offset."""

    def __init__(self, detail: str, position: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.position = position


# -- tokens ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    kind: str  # IDENT KEYWORD STRING NUMBER DATETIME DATE DATE_LITERAL OP PUNCT EOF
    text: str  # the source text of the token
    position: int
    value: object = None  # decoded value for literals; upper-case word for keywords
    # For strings: the characters with a flag telling a LIKE wildcard (% or _) from an escaped one.
    pattern: tuple[tuple[str, bool], ...] = ()


_ASCII_DIGITS = frozenset("0123456789")
_ASCII_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _is_digit(char: str) -> bool:
    return char in _ASCII_DIGITS  # str.isdigit() would also take "²" and other Unicode digits


def _all_digits(text: str) -> bool:
    return bool(text) and all(c in _ASCII_DIGITS for c in text)


def _is_ident_start(char: str) -> bool:
    return char in _ASCII_LETTERS or char == "_"


def _is_ident_char(char: str) -> bool:
    return char in _ASCII_LETTERS or char in _ASCII_DIGITS or char == "_"


class _Lexer:
    def __init__(self, source: str) -> None:
        self.source = source
        self.pos = 0

    def error(self, detail: str, position: int | None = None) -> SoqlSyntaxError:
        return SoqlSyntaxError(detail, self.pos if position is None else position)

    def tokens(self) -> list[Token]:
        out: list[Token] = []
        while True:
            token = self.next_token()
            out.append(token)
            if token.kind == "EOF":
                return out

    def next_token(self) -> Token:
        src = self.source
        while self.pos < len(src) and src[self.pos].isspace():
            self.pos += 1
        start = self.pos
        if start >= len(src):
            return Token("EOF", "<EOF>", start)
        char = src[start]
        if char == "'":
            return self.string()
        if _is_digit(char) or (char in "+-" and start + 1 < len(src) and _all_digits(src[start + 1])):
            return self.number_or_date()
        if _is_ident_start(char):
            return self.word()
        two = src[start : start + 2]
        if two in ("!=", "<>", "<=", ">="):
            self.pos += 2
            return Token("OP", two, start)
        if char in "=<>":
            self.pos += 1
            return Token("OP", char, start)
        if char in "(),.:":
            self.pos += 1
            return Token("PUNCT", char, start)
        raise self.error(f"unexpected token: '{char}'", start)

    def string(self) -> Token:
        src = self.source
        start = self.pos
        self.pos += 1
        pattern: list[tuple[str, bool]] = []
        while True:
            if self.pos >= len(src):
                raise self.error("unexpected token: '<EOF>' (unterminated string)", start)
            char = src[self.pos]
            if char == "'":
                self.pos += 1
                text = "".join(c for c, _ in pattern)
                return Token("STRING", src[start : self.pos], start, text, tuple(pattern))
            if char == "\\":
                if self.pos + 1 >= len(src):
                    raise self.error("Invalid string literal: a backslash ends the string", self.pos)
                escaped = src[self.pos + 1]
                if escaped in _STRING_ESCAPES:
                    pattern.append((_STRING_ESCAPES[escaped], False))
                elif escaped in "%_":
                    pattern.append((escaped, False))  # a literal % or _ in a LIKE pattern
                else:
                    raise self.error(
                        f"Invalid string literal '{src[start : self.pos + 2]}'. Illegal character sequence "
                        f"'\\{escaped}' in string literal.",
                        self.pos,
                    )
                self.pos += 2
                continue
            pattern.append((char, char in "%_"))
            self.pos += 1

    def _digits(self, count: int) -> str:
        text = self.source[self.pos : self.pos + count]
        if len(text) != count or not _all_digits(text):
            raise self.error(f"unexpected token: '{self.source[self.pos : self.pos + count] or '<EOF>'}'")
        self.pos += count
        return text

    def _expect_char(self, char: str) -> None:
        if self.source[self.pos : self.pos + 1] != char:
            raise self.error(f"unexpected token: '{self.source[self.pos : self.pos + 1] or '<EOF>'}'")
        self.pos += 1

    def number_or_date(self) -> Token:
        src = self.source
        start = self.pos
        # A date or datetime starts with four digits and a dash.
        if _all_digits(src[start : start + 4]) and src[start + 4 : start + 5] == "-":
            return self.date_or_datetime()
        if src[self.pos] in "+-":
            self.pos += 1
        while self.pos < len(src) and _all_digits(src[self.pos]):
            self.pos += 1
        is_int = True
        if self.pos < len(src) and src[self.pos] == ".":
            is_int = False
            self.pos += 1
            if not (self.pos < len(src) and _all_digits(src[self.pos])):
                raise self.error(f"unexpected token: '{src[start : self.pos]}'", start)
            while self.pos < len(src) and _all_digits(src[self.pos]):
                self.pos += 1
        if self.pos < len(src) and _is_ident_char(src[self.pos]):
            raise self.error(f"unexpected token: '{src[start : self.pos + 1]}'", start)
        text = src[start : self.pos]
        value: int | float = int(text) if is_int else float(text)
        return Token("NUMBER", text, start, value)

    def date_or_datetime(self) -> Token:
        src = self.source
        start = self.pos
        try:
            year = int(self._digits(4))
            self._expect_char("-")
            month = int(self._digits(2))
            self._expect_char("-")
            day = int(self._digits(2))
            if src[self.pos : self.pos + 1] != "T":
                if self.pos < len(src) and _is_ident_char(src[self.pos]):
                    raise self.error(f"unexpected token: '{src[start : self.pos + 1]}'", start)
                return Token("DATE", src[start : self.pos], start, date(year, month, day))
            self.pos += 1
            hour = int(self._digits(2))
            self._expect_char(":")
            minute = int(self._digits(2))
            self._expect_char(":")
            second = int(self._digits(2))
            micro = 0
            if src[self.pos : self.pos + 1] == ".":
                self.pos += 1
                frac_start = self.pos
                while self.pos < len(src) and _all_digits(src[self.pos]):
                    self.pos += 1
                fraction = src[frac_start : self.pos]
                if not fraction or len(fraction) > 3:
                    raise self.error(f"unexpected token: '{src[start : self.pos]}'", start)
                micro = int(fraction.ljust(3, "0")) * 1000
            zone_char = src[self.pos : self.pos + 1]
            if zone_char == "Z":
                self.pos += 1
                tz = UTC
            elif zone_char in ("+", "-"):
                self.pos += 1
                offset_hours = int(self._digits(2))
                if src[self.pos : self.pos + 1] == ":":
                    self.pos += 1
                offset_minutes = int(self._digits(2))
                sign = 1 if zone_char == "+" else -1
                tz = timezone(sign * timedelta(hours=offset_hours, minutes=offset_minutes))
            else:
                # Salesforce requires the zone designator on a datetime literal.
                raise self.error(f"unexpected token: '{src[start : self.pos]}'", start)
            if self.pos < len(src) and _is_ident_char(src[self.pos]):
                raise self.error(f"unexpected token: '{src[start : self.pos + 1]}'", start)
            moment = datetime(year, month, day, hour, minute, second, micro, tzinfo=tz).astimezone(UTC)
        except ValueError:  # e.g. month 13: a well-formed but impossible date
            raise self.error(f"unexpected token: '{src[start : self.pos]}'", start) from None
        return Token("DATETIME", src[start : self.pos], start, moment)

    def word(self) -> Token:
        src = self.source
        start = self.pos
        while self.pos < len(src) and _is_ident_char(src[self.pos]):
            self.pos += 1
        text = src[start : self.pos]
        upper = text.upper()
        if upper in DATE_LITERALS_N and src[self.pos : self.pos + 1] == ":":
            self.pos += 1
            digits_start = self.pos
            while self.pos < len(src) and _all_digits(src[self.pos]):
                self.pos += 1
            if digits_start == self.pos:
                raise self.error(f"unexpected token: '{src[start : self.pos]}'", start)
            return Token("DATE_LITERAL", src[start : self.pos], start, (upper, int(src[digits_start : self.pos])))
        if upper in DATE_LITERALS:
            return Token("DATE_LITERAL", text, start, (upper, None))
        if upper in KEYWORDS:
            return Token("KEYWORD", text, start, upper)
        return Token("IDENT", text, start, text)


def tokenize(source: str) -> list[Token]:
    """All tokens of ``source`` ending with an EOF token; raises ``SoqlSyntaxError``."""
    return _Lexer(source).tokens()


# -- syntax tree -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldRef:
    path: tuple[str, ...]  # as written, e.g. ("Account", "Owner", "Email")
    position: int

    @property
    def text(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True)
class CountAll:
    position: int


@dataclass(frozen=True)
class Literal:
    kind: str  # string number boolean null datetime date date_literal
    value: object  # str | int | float | bool | None | datetime | date | (name, n)
    text: str
    position: int
    pattern: tuple[tuple[str, bool], ...] = ()  # strings: characters, True for a LIKE wildcard


@dataclass(frozen=True)
class Comparison:
    field: FieldRef
    operator: str  # = != < > <= >= LIKE ("<>" is normalised to "!=")
    value: Literal


@dataclass(frozen=True)
class InList:
    field: FieldRef
    values: tuple[Literal, ...]
    negated: bool


@dataclass(frozen=True)
class Not:
    operand: Condition


@dataclass(frozen=True)
class And:
    operands: tuple[Condition, ...]


@dataclass(frozen=True)
class Or:
    operands: tuple[Condition, ...]


Condition = Comparison | InList | Not | And | Or


@dataclass(frozen=True)
class OrderItem:
    field: FieldRef
    descending: bool
    nulls_last: bool


@dataclass(frozen=True)
class Query:
    select: tuple[FieldRef | CountAll, ...]
    sobject: str
    sobject_position: int
    where: Condition | None
    order_by: tuple[OrderItem, ...]
    limit: int | None
    offset: int | None
    source: str

    @property
    def is_count(self) -> bool:
        return any(isinstance(item, CountAll) for item in self.select)


# -- parser ------------------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = tokenize(source)
        self.index = 0

    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        if token.kind != "EOF":
            self.index += 1
        return token

    def unexpected(self, token: Token | None = None) -> SoqlSyntaxError:
        token = token or self.current
        return SoqlSyntaxError(f"unexpected token: '{token.text}'", token.position)

    def at_keyword(self, *words: str) -> bool:
        return self.current.kind == "KEYWORD" and self.current.value in words

    def accept_keyword(self, word: str) -> bool:
        if self.at_keyword(word):
            self.advance()
            return True
        return False

    def expect_keyword(self, word: str) -> Token:
        if not self.at_keyword(word):
            raise self.unexpected()
        return self.advance()

    def expect_punct(self, char: str) -> Token:
        if self.current.kind != "PUNCT" or self.current.text != char:
            raise self.unexpected()
        return self.advance()

    def at_punct(self, char: str) -> bool:
        return self.current.kind == "PUNCT" and self.current.text == char

    # query := SELECT select_list FROM ident [WHERE cond] [ORDER BY ...] [LIMIT n] [OFFSET n]
    def query(self) -> Query:
        self.expect_keyword("SELECT")
        select = self.select_list()
        self.expect_keyword("FROM")
        if self.current.kind != "IDENT":
            raise self.unexpected()
        sobject_token = self.advance()
        where = None
        if self.accept_keyword("WHERE"):
            where = self.condition()
        if self.at_keyword("GROUP", "HAVING", "WITH", "FOR", "USING", "TYPEOF"):
            raise SoqlSyntaxError(
                f"{self.current.text.upper()} is not supported by the Accord sandbox", self.current.position
            )
        order_by: tuple[OrderItem, ...] = ()
        if self.accept_keyword("ORDER"):
            self.expect_keyword("BY")
            order_by = self.order_list()
        limit = offset = None
        if self.accept_keyword("LIMIT"):
            limit = self.non_negative_int()
        if self.accept_keyword("OFFSET"):
            offset = self.non_negative_int()
        if self.current.kind != "EOF":
            raise self.unexpected()
        return Query(
            select=select,
            sobject=str(sobject_token.value),
            sobject_position=sobject_token.position,
            where=where,
            order_by=order_by,
            limit=limit,
            offset=offset,
            source=self.source,
        )

    def non_negative_int(self) -> int:
        token = self.current
        if token.kind != "NUMBER" or not isinstance(token.value, int) or token.value < 0:
            raise self.unexpected()
        self.advance()
        return token.value

    def select_list(self) -> tuple[FieldRef | CountAll, ...]:
        items: list[FieldRef | CountAll] = [self.select_item()]
        while self.at_punct(","):
            self.advance()
            items.append(self.select_item())
        if any(isinstance(item, CountAll) for item in items) and len(items) > 1:
            count = next(item for item in items if isinstance(item, CountAll))
            raise SoqlSyntaxError("COUNT() must be the only element in the SELECT list", count.position)
        return tuple(items)

    def select_item(self) -> FieldRef | CountAll:
        token = self.current
        if token.kind == "IDENT" and token.text.upper() == "COUNT" and self.tokens[self.index + 1].text == "(":
            self.advance()
            self.expect_punct("(")
            self.expect_punct(")")
            return CountAll(token.position)
        if token.kind == "PUNCT" and token.text == "(":
            raise SoqlSyntaxError("parent-to-child subqueries are not supported by the Accord sandbox", token.position)
        return self.field_ref()

    def field_ref(self) -> FieldRef:
        token = self.current
        if token.kind != "IDENT":
            raise self.unexpected()
        self.advance()
        parts = [token.text]
        while self.at_punct("."):
            self.advance()
            if self.current.kind not in ("IDENT", "KEYWORD"):
                raise self.unexpected()
            parts.append(self.advance().text)
        if self.at_punct("("):
            raise SoqlSyntaxError(f"function {token.text}() is not supported by the Accord sandbox", token.position)
        return FieldRef(tuple(parts), token.position)

    def order_list(self) -> tuple[OrderItem, ...]:
        items = [self.order_item()]
        while self.at_punct(","):
            self.advance()
            items.append(self.order_item())
        return tuple(items)

    def order_item(self) -> OrderItem:
        ref = self.field_ref()
        descending = False
        if self.accept_keyword("DESC"):
            descending = True
        else:
            self.accept_keyword("ASC")
        nulls_last = descending  # Salesforce's default: nulls first ascending, last descending
        if self.accept_keyword("NULLS"):
            if self.accept_keyword("LAST"):
                nulls_last = True
            else:
                self.expect_keyword("FIRST")
                nulls_last = False
        return OrderItem(ref, descending, nulls_last)

    # condition := term ((AND term)* | (OR term)*) -- mixing needs parentheses
    def condition(self) -> Condition:
        first = self.unary()
        if not self.at_keyword("AND", "OR"):
            return first
        operator = str(self.current.value)
        operands = [first]
        while self.at_keyword("AND", "OR"):
            if self.current.value != operator:
                raise self.unexpected()
            self.advance()
            operands.append(self.unary())
        return And(tuple(operands)) if operator == "AND" else Or(tuple(operands))

    def unary(self) -> Condition:
        if self.accept_keyword("NOT"):
            return Not(self.unary())
        if self.at_punct("("):
            self.advance()
            inner = self.condition()
            self.expect_punct(")")
            return inner
        return self.simple_condition()

    def simple_condition(self) -> Condition:
        ref = self.field_ref()
        token = self.current
        if token.kind == "OP":
            self.advance()
            operator = "!=" if token.text == "<>" else token.text
            return Comparison(ref, operator, self.literal())
        if self.accept_keyword("LIKE"):
            return Comparison(ref, "LIKE", self.literal())
        if self.at_keyword("NOT") and self.tokens[self.index + 1].value == "IN":
            self.advance()
            self.advance()
            return InList(ref, self.literal_list(), negated=True)
        if self.accept_keyword("IN"):
            return InList(ref, self.literal_list(), negated=False)
        if self.at_keyword("INCLUDES", "EXCLUDES"):
            raise SoqlSyntaxError(f"{token.text.upper()} is not supported by the Accord sandbox", token.position)
        raise self.unexpected()

    def literal_list(self) -> tuple[Literal, ...]:
        self.expect_punct("(")
        if self.at_keyword("SELECT"):
            raise SoqlSyntaxError("semi-join subqueries are not supported by the Accord sandbox", self.current.position)
        values = [self.literal()]
        while self.at_punct(","):
            self.advance()
            values.append(self.literal())
        self.expect_punct(")")
        return tuple(values)

    def literal(self) -> Literal:
        token = self.current
        kinds = {
            "STRING": "string",
            "NUMBER": "number",
            "DATETIME": "datetime",
            "DATE": "date",
            "DATE_LITERAL": "date_literal",
        }
        if token.kind in kinds:
            self.advance()
            return Literal(kinds[token.kind], token.value, token.text, token.position, token.pattern)
        if token.kind == "KEYWORD" and token.value in ("TRUE", "FALSE"):
            self.advance()
            return Literal("boolean", token.value == "TRUE", token.text, token.position)
        if token.kind == "KEYWORD" and token.value == "NULL":
            self.advance()
            return Literal("null", None, token.text, token.position)
        raise self.unexpected()


def parse(source: str) -> Query:
    """The syntax tree of one SOQL statement; raises ``SoqlSyntaxError`` (MALFORMED_QUERY)."""
    return _Parser(source).query()


def error_message(source: str, position: int, detail: str) -> str:
    """Salesforce's error layout: the query line, a caret under the culprit, Row/Column, the detail."""
    line_start = source.rfind("\n", 0, position) + 1
    line_end = source.find("\n", position)
    line = source[line_start : line_end if line_end != -1 else len(source)]
    row = source.count("\n", 0, position) + 1
    column = position - line_start + 1
    return f"\n{line}\n{' ' * (column - 1)}^\nERROR at Row:{row}:Column:{column}\n{detail}"
