"""A record's digest is the one every earlier version stored (``_digest`` over data, flag and
partition), whichever way it is computed; the SQLite fast path stores the bytes SQLAlchemy stored;
JSON columns read back as ``json.loads`` reads them."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import insert

from engagement.records import SourceRecord, iso
from store import Store
from store.schema import records
from store.store import _digest, json_text, json_value, record_digest
from tests.connectors.test_jsonbody import typed

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)

# Every code point a str can hold, lone surrogates and control characters included.
text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=12)
scalars = (
    text
    | st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)


def reference(data: Any, deleted: Any = False, partition: Any = "") -> tuple[str, str]:
    try:
        return ("ok", _digest([data, deleted, partition]))
    except (ValueError, TypeError) as exc:  # a lone surrogate cannot be encoded: the same error
        return ("error", type(exc).__name__)


def fast(data: Any, deleted: Any = False, partition: Any = "") -> tuple[str, str]:
    try:
        return ("ok", record_digest(SourceRecord("jira", "issues", "1", T0, data, deleted, partition)))
    except (ValueError, TypeError) as exc:
        return ("error", type(exc).__name__)


@given(st.dictionaries(text, values, max_size=8), st.booleans(), text)
def test_digest_of_any_record(data: dict[str, Any], deleted: bool, partition: str) -> None:
    assert fast(data, deleted, partition) == reference(data, deleted, partition)


@pytest.mark.parametrize(
    "data",
    [
        {"b": 1, "a": 2, "é": 3, "Z": 4, "\U0001f600": 5, "\uffff": 6, "": 7},  # key order by code point
        {"n": 2**63 - 1, "m": -(2**63), "u": 2**64 - 1, "big": 2**64, "neg": -(2**64) - 1},
        {"f": 1e-05, "g": 1e16, "h": 0.1, "nan": float("nan"), "inf": float("-inf")},
        {"ctl": "".join(chr(c) for c in range(0x20)) + '"\\/\x7f\u2028\u2029'},
        {"when": T0, "amount": Decimal("1.10"), "tuple": (1, 2), "set": {"x"}},  # through default=str
        {1: "int key"},
        {"nested": [{"z": [None, True, {"y": "x"}]}, [], {}]},
        {"lone": "\ud800"},
    ],
)
def test_digest_of_fixed_values(data: dict[Any, Any]) -> None:
    assert fast(data) == reference(data)
    assert fast(data, True, "PRJ") == reference(data, True, "PRJ")


class Flag(int):
    pass


class Text(str):
    pass


@pytest.mark.parametrize(
    ("data", "deleted", "partition"),
    [({"a": Text("x")}, False, ""), ({"a": 1}, Flag(1), ""), ({"a": 1}, False, Text("p")), ([1, "x"], 0, "")],
)
def test_digest_of_subclasses_and_odd_flags(data: Any, deleted: Any, partition: Any) -> None:
    assert fast(data, deleted, partition) == reference(data, deleted, partition)


def stored_rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT source, stream, id, partition, updated_at, deleted, typeof(deleted), digest, data, typeof(data) "
            "FROM records ORDER BY id"
        ).fetchall()


def test_sqlite_rows_are_what_sqlalchemy_wrote(tmp_path: Path) -> None:
    batch = [
        SourceRecord("jira", "issues", "1", T0, {"key": "A-1", "project": "A", "labels": ["x"], "n": None}, False, "A"),
        SourceRecord("jira", "issues", "2", T0, {"key": "A-2", "project": "A", "amount": 1.5, "北京": "é"}, False, "A"),
        SourceRecord("salesforce", "contacts", "3", T0, {"name": "x", "big": 2**70}, True),
        SourceRecord("google_calendar", "events", "4", T0, {"status": "cancelled", "nan": float("nan")}, False, "c"),
    ]
    fast_store = Store(f"sqlite:///{tmp_path / 'fast.sqlite'}")
    fast_store.create_all()
    fast_store.apply_batch(batch)
    fast_store.dispose()

    slow_store = Store(f"sqlite:///{tmp_path / 'slow.sqlite'}")
    slow_store.create_all()
    with slow_store.engine.begin() as conn:  # the plain SQLAlchemy insert, parameters processed by it
        conn.execute(
            insert(records),
            [
                {
                    "source": r.source,
                    "stream": r.stream,
                    "id": r.id,
                    "partition": r.partition,
                    "updated_at": iso(r.updated_at),
                    "deleted": r.deleted,
                    "digest": _digest([r.data, r.deleted, r.partition]),
                    "data": r.data,
                    "stored_at": "x",
                }
                for r in batch
            ],
        )
    slow_store.dispose()

    fast_rows = stored_rows(tmp_path / "fast.sqlite")
    assert fast_rows == stored_rows(tmp_path / "slow.sqlite")
    assert [row[8] for row in fast_rows] == [json_text(r.data) for r in batch]


@given(values, st.booleans())
def test_json_columns_read_as_json_reads_them(value: Any, ascii_only: bool) -> None:
    for written in (json.dumps(value, ensure_ascii=ascii_only), json_text(value)):
        try:
            expected = typed(json.loads(written))
        except ValueError:
            continue
        assert typed(json_value(written)) == expected
        assert typed(json_value(written.encode("utf-8", "surrogatepass"))) == expected


@pytest.mark.parametrize(
    "written",
    [
        '{"n": 123456789012345678901234}',
        '{"n": -1e400}',
        "[NaN, Infinity]",
        '"\\ud800"',
        '{"a": 1, "a": 2}',
        "-0",
        "1E5",
    ],
)
def test_json_columns_odd_texts(written: str) -> None:
    assert typed(json_value(written)) == typed(json.loads(written))
