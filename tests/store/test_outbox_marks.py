"""Marking deliveries: what each row becomes, and a chunk's marks as a few statements, not one a row."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from store import Delivery, OutboxItem, Store
from store.outbox import holder


def _items(n: int) -> list[OutboxItem]:
    return [OutboxItem(f"k{i:04d}", "salesforce", "task", f"e{i}", "reminder", {"n": i}) for i in range(n)]


@contextmanager
def statements(store: Store) -> Iterator[list[tuple[str, bool]]]:
    """The statements sent to the database meanwhile (text, and whether executed for many rows)."""
    seen: list[tuple[str, bool]] = []

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        seen.append((statement, executemany))

    event.listen(store.engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", before)


def test_marks_set_each_row_as_its_delivery_says(store: Store) -> None:
    store.outbox.enqueue(_items(6))
    with holder() as me:
        claimed = store.outbox.claim(store.outbox.due("salesforce"), by=me)
    assert len(claimed) == 6
    store.outbox.mark(
        [
            Delivery("k0000", True, "created", "T0"),
            Delivery("k0001", True, "exists", None),
            Delivery("k0002", False, "failed", error="throttled", retriable=True),
            Delivery("k0003", False, "failed", error="refused", retriable=False),
            Delivery("k0004", True, "updated", "T4"),
        ]
    )
    rows = {i.key: i for i in store.outbox.items()}
    got = {k: (i.state, i.outcome, i.target_id, i.last_error, i.retriable, i.attempts) for k, i in rows.items()}
    assert got == {
        "k0000": ("delivered", "created", "T0", None, True, 1),
        "k0001": ("delivered", "exists", None, None, True, 1),
        "k0002": ("failed", None, None, "throttled", True, 1),
        "k0003": ("failed", None, None, "refused", False, 1),
        "k0004": ("delivered", "updated", "T4", None, True, 1),
        "k0005": ("pending", None, None, None, True, 1),  # not marked: still claimed, still pending
    }
    delivered = {k for k, i in rows.items() if i.delivered_at is not None}
    assert delivered == {"k0000", "k0001", "k0004"}
    # Due again: the failed retriable one, and the unmarked one (its holder's block has ended).
    assert sorted(i.key for i in store.outbox.due("salesforce")) == ["k0002", "k0005"]


def test_a_failed_item_delivered_later_loses_its_error(store: Store) -> None:
    store.outbox.enqueue(_items(1))
    store.outbox.claim(store.outbox.due("salesforce"))
    store.outbox.mark([Delivery("k0000", False, "failed", error="5xx", retriable=True)])
    store.outbox.claim(store.outbox.due("salesforce"))
    store.outbox.mark([Delivery("k0000", True, "created", "T0")])
    [item] = store.outbox.items()
    assert (item.state, item.last_error, item.outcome, item.target_id, item.attempts) == (
        "delivered",
        None,
        "created",
        "T0",
        2,
    )


def test_a_chunk_is_marked_with_one_statement_per_run_of_outcomes(store: Store) -> None:
    store.outbox.enqueue(_items(200))
    store.outbox.claim(store.outbox.due("salesforce"))
    deliveries = [Delivery(f"k{i:04d}", True, "created", f"T{i}") for i in range(100)]
    deliveries += [Delivery(f"k{i:04d}", False, "failed", error="no", retriable=False) for i in range(100, 150)]
    deliveries += [Delivery(f"k{i:04d}", True, "created", f"T{i}") for i in range(150, 200)]
    with statements(store) as seen:
        store.outbox.mark(deliveries)
    updates = [(s, many) for s, many in seen if s.lstrip().upper().startswith("UPDATE")]
    assert len(updates) == 3 and all(many for _, many in updates)
    states = [i.state for i in sorted(store.outbox.items(), key=lambda i: i.key)]
    assert states == ["delivered"] * 100 + ["failed"] * 50 + ["delivered"] * 50
