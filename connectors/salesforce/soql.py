"""SOQL text built from the mapping: field names checked, every value escaped, never pasted."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime

from engagement.mapping import FieldFilter

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*$")
_ESCAPES = {
    "\\": "\\\\",
    "'": "\\'",
    '"': '\\"',
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
}


def name(identifier: str) -> str:
    if not _NAME.match(identifier):
        raise ValueError(f"not a Salesforce field or object name: {identifier!r}")
    return identifier


def literal(value: object) -> str:
    """A SOQL literal for ``value``: quoted and escaped strings, numbers, booleans, null, datetimes."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("SOQL datetimes must be timezone-aware")
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    text = str(value)
    return "'" + "".join(_ESCAPES.get(ch, ch) for ch in text) + "'"


def condition(f: FieldFilter) -> str:
    field = name(f.field)
    op = f.op.upper()
    if op in ("IN", "NOT IN"):
        values = f.value if isinstance(f.value, list) else [f.value]
        return f"{field} {op} ({', '.join(literal(v) for v in values)})"
    return f"{field} {op} {literal(f.value)}"


def select(
    obj: str,
    fields: Sequence[str],
    *,
    where: Sequence[str] = (),
    order_by: Sequence[str] = (),
    limit: int | None = None,
) -> str:
    seen: dict[str, None] = {}
    for f in fields:
        seen.setdefault(name(f), None)
    # Names are checked against a strict pattern and values pass through literal(): nothing is pasted.
    text = f"SELECT {', '.join(seen)} FROM {name(obj)}"  # noqa: S608 (see above)
    if where:
        text += " WHERE " + " AND ".join(f"({w})" for w in where)
    if order_by:
        text += " ORDER BY " + ", ".join(order_by)
    if limit is not None:
        text += f" LIMIT {int(limit)}"
    return text
