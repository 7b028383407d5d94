"""Queueing a group's plan: new items, superseded older status writes, the last status fingerprints;
a few statements per group, not one per item."""

from __future__ import annotations

from pathlib import Path

from store import Delivery, OutboxItem, Store
from tests.store.test_outbox_marks import statements


def status(key: str, engagement: str, target: str = "jira") -> OutboxItem:
    kind = "jira_status_comment" if target == "jira" else "opportunity_status"
    return OutboxItem(key, target, kind, engagement, "status update", {"k": key})


def task(key: str, engagement: str) -> OutboxItem:
    return OutboxItem(key, "salesforce", "task", engagement, "reminder", {"k": key})


def states(store: Store) -> dict[str, str]:
    return {i.key: i.state for i in store.outbox.items()}


def test_new_status_writes_supersede_older_pending_and_failed_ones_of_their_engagement(store: Store) -> None:
    store.outbox.add(
        [
            status("s1-jira", "e1"),
            status("s1-sf", "e1", "salesforce"),
            status("s2-jira", "e2"),
            status("s3-jira", "e3"),
            task("t1", "e1"),
        ]
    )
    store.outbox.claim(store.outbox.due("jira"))
    store.outbox.mark(
        [Delivery("s2-jira", True, "created"), Delivery("s3-jira", False, "failed", error="x", retriable=True)]
    )
    added, known = store.outbox.add(
        [
            status("s1b-jira", "e1"),  # supersedes s1-jira (pending), not s1-sf (another target)
            status("s2b-jira", "e2"),  # s2-jira was delivered: stays delivered
            status("s3b-jira", "e3"),  # s3-jira failed: superseded
            status("s3c-jira", "e3"),  # a second new one in the same group: both stay pending
            status("s1-jira", "e1"),  # known already: left as it is, and supersedes nothing
            task("t2", "e1"),  # not a status: supersedes nothing
        ]
    )
    assert (added, known) == (5, {"s1-jira"})
    assert states(store) == {
        "s1-jira": "superseded",
        "s1-sf": "pending",
        "s2-jira": "delivered",
        "s3-jira": "superseded",
        "t1": "pending",
        "s1b-jira": "pending",
        "s2b-jira": "pending",
        "s3b-jira": "pending",
        "s3c-jira": "pending",
        "t2": "pending",
    }


def test_the_last_status_of_each_engagement_is_kept(store: Store) -> None:
    store.outbox.add([], [("e1", {"v": 1}, "k1"), ("e2", {"v": 2}, "k2")])
    store.outbox.add([], [("e1", {"v": 3}, "k3"), ("e3", {"v": 4}, "k4"), ("e1", {"v": 5}, "k5")])
    assert store.outbox.last_status() == {"e1": ({"v": 5}, "k5"), "e2": ({"v": 2}, "k2"), "e3": ({"v": 4}, "k4")}
    assert store.outbox.last_status(["e3", "e9"]) == {"e3": ({"v": 4}, "k4")}


def test_a_group_is_queued_in_a_few_statements(store: Store) -> None:
    items = [status(f"s{i}-jira", f"e{i}") for i in range(100)] + [
        status(f"s{i}-sf", f"e{i}", "salesforce") for i in range(100)
    ]
    statuses = [(f"e{i}", {"v": i}, f"s{i}") for i in range(100)]
    store.outbox.add(items[:10], statuses[:10])
    again = [status(f"n{i}-jira", f"e{i}") for i in range(100)] + items
    with statements(store) as seen:
        added, known = store.outbox.add(again, statuses)
    assert (added, len(known)) == (290, 10)
    writes = [s for s, _ in seen if s.lstrip().upper().startswith(("UPDATE", "INSERT"))]
    assert len(writes) <= 3  # supersede, insert, fingerprints: each one statement for many rows
    assert sum(1 for state in states(store).values() if state == "superseded") == 10
    assert len(store.outbox.last_status()) == 100


def test_superseding_seeks_the_engagement_not_every_pending_write(tmp_path: Path) -> None:
    """On SQLite (PostgreSQL plans with statistics): without them SQLite preferred the (target,
    state) index, one walk over every pending write of the target per engagement, quadratic in a
    large org's push. The statement names the engagement index, so each engagement is one seek."""
    store = Store(f"sqlite:///{tmp_path / 'outbox.sqlite'}")
    store.create_all()
    store.outbox.add([status(f"s{i}-jira", f"e{i}") for i in range(50)])
    params = {"b_now": "n", "b_engagement": "e1", "b_kind": "jira_status_comment", "b_target": "jira"}
    with store.engine.connect() as conn:
        compiled = store.outbox._supersede.compile(dialect=store.engine.dialect)
        values = tuple(params[name] for name in compiled.positiontup or ())
        plan = " ".join(str(row[3]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(compiled), values))
    assert "ix_outbox_engagement" in plan and "ix_outbox_state" not in plan, plan
    store.outbox.add([status("s1b-jira", "e1")])
    assert states(store)["s1-jira"] == "superseded" and states(store)["s2-jira"] == "pending"
