"""The pull's statements come in few distinct texts, so SQLite's per-connection cache of prepared
statements stays small however many pages (and page lengths) a pull stores."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event

from engagement.records import SourceRecord
from store import SeenScope, Store
from store.store import BATCH_LOOKUP, IN_LENGTHS, padded

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def issue(i: int, summary: str = "x") -> SourceRecord:
    data = {"key": f"P-{i}", "project": "P", "summary": summary}
    return SourceRecord("jira", "issues", f"1{i:06d}", T0 + timedelta(seconds=i), data)


def test_padded_keeps_the_ids_and_fills_up_to_a_fixed_length() -> None:
    for count in (0, 1, 7, 8, 9, 100, 257, BATCH_LOOKUP):
        ids = [f"id{i}" for i in range(count)]
        listed = padded(ids)
        assert len(listed) in IN_LENGTHS
        assert len(listed) == min(n for n in IN_LENGTHS if n >= count)
        assert listed[:count] == ids
        assert set(listed[count:]) <= {None}
    with pytest.raises(ValueError, match="at most"):
        padded(["x"] * (BATCH_LOOKUP + 1))


def test_pages_of_every_length_use_few_statement_texts(store: Store) -> None:
    """Pages of 1..70 new records, then the same ids updated (their lookup keys replaced), then a
    reconcile marking 1..70 of them: each IN (...) statement in at most one text per padded length.
    Without the padding each page length is a text of its own (and a prepared statement cached on
    every SQLite connection: 5-6 MB per connection on the large org)."""
    texts: set[str] = set()

    def capture(conn: object, cursor: object, statement: str, *args: object) -> None:
        if re.search(r"\bIN \(", statement):
            texts.add(statement)

    event.listen(store.engine, "before_cursor_execute", capture)
    pages, start = [], 0
    for length in range(1, 71):
        pages.append(range(start, start + length))
        start += length
    for page in pages:
        assert store.apply_batch([issue(i) for i in page]).inserted == len(page)
    for page in pages:
        assert store.apply_batch([issue(i, "changed") for i in page]).updated == len(page)
    seen = SeenScope.new("jira", "issues")
    kept = [issue(i).id for page in pages for i in page[: len(page) // 2]]
    store.clear_seen(seen)
    store.apply_batch([], seen=seen, seen_ids=kept)
    assert store.reconcile(seen, staged=len(kept)) == start - len(kept)
    event.remove(store.engine, "before_cursor_execute", capture)
    assert store.record_ids("jira", "issues") == set(kept)
    # Three statements with an IN list (which exist, replace the keys, mark a chunk deleted);
    # lengths 1..70 pad to 8, 16, 32, 64 and 128, and the reconcile's chunks to the largest.
    assert len(texts) <= 3 * len(IN_LENGTHS)
    assert len(texts) <= 3 * 5 + 1
