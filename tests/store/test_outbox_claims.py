"""Exclusive claims: two runs applying the same outbox at once never both write an item."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from accord.settings import AccordSettings
from connectors.base import WriteRequest, WriteResult
from engagement.mapping import load_mapping
from flows.push_engine import apply_target
from store import OutboxItem, Store
from store.outbox import holder


def _items(n: int) -> list[OutboxItem]:
    return [
        OutboxItem(f"k{i:04d}", "jira", "jira_status_comment", f"e{i % 7}", "status update", {"n": i}) for i in range(n)
    ]


def test_a_claimed_item_cannot_be_claimed_again_from_the_same_reading(store: Store) -> None:
    store.outbox.enqueue(_items(5))
    first_read = store.outbox.due("jira")
    second_read = store.outbox.due("jira")
    assert [i.key for i in store.outbox.claim(first_read)] == [i.key for i in first_read]
    assert store.outbox.claim(second_read) == []  # read before the first claim: stale, nothing held
    again = store.outbox.due("jira")  # a fresh reading (after a crash, say) claims the next attempt
    held = store.outbox.claim(again)
    assert len(held) == 5 and all(i.attempts == 1 for i in held)


class RecordingWriter:
    target = "jira"

    def __init__(self, written: list[str], gate: threading.Barrier) -> None:
        self.written, self.gate = written, gate

    def write(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        self.written.extend(r.key for r in requests)
        return [WriteResult(r.key, True, "created") for r in requests]

    def close(self) -> None:
        pass


def test_two_runs_applying_at_once_write_each_item_once(store_factory: Callable[[], Store], tmp_path: Path) -> None:
    store = store_factory()
    store.outbox.enqueue(_items(120))
    mapping = load_mapping("mappings/default.yaml")
    settings = AccordSettings(database_url=store.url, sandbox_control=None)
    written: list[str] = []
    gate = threading.Barrier(2)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            gate.wait(timeout=30)  # both runs read the same due items before either claims
            apply_target("jira", store, settings, mapping, lambda *_: RecordingWriter(written, gate))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert Counter(written) == Counter(i.key for i in _items(120))  # each exactly once
    assert {i.state for i in store.outbox.items()} == {"delivered"}


def test_a_partition_applies_only_its_engagements(store: Store) -> None:
    store.outbox.enqueue(_items(30))
    mapping = load_mapping("mappings/default.yaml")
    settings = AccordSettings(database_url=store.url, sandbox_control=None)
    written: list[str] = []
    mine = {"e1", "e3"}
    apply_target(
        "jira",
        store,
        settings,
        mapping,
        lambda *_: RecordingWriter(written, threading.Barrier(1)),
        engagements=mine.__contains__,
    )
    assert sorted(written) == sorted(i.key for i in _items(30) if i.engagement_id in mine)


def test_a_run_reading_while_another_writes_leaves_the_held_items_alone(store: Store) -> None:
    """The race two concurrent runs hit: B reads the outbox after A claimed but before A marked."""
    store.outbox.enqueue(_items(5))
    with holder() as a:
        assert len(store.outbox.claim(store.outbox.due("jira"), by=a)) == 5
        assert store.outbox.due("jira") == []  # B's reading: A may be writing these right now
    # A's run ended without marking them (a crash unwinding it): the next reading retries them.
    again = store.outbox.due("jira")
    assert len(again) == 5 and all(i.attempts == 1 for i in again)


def test_a_holder_on_this_host_that_is_gone_frees_its_items_and_one_elsewhere_waits(store: Store) -> None:
    import subprocess
    import sys

    from store.outbox import _HOST, _process_start, holder_alive

    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    start = _process_start(child.pid)
    alive = f"{_HOST}/{child.pid}/{start}/run"
    assert holder_alive(alive) is True
    store.outbox.enqueue(_items(3))
    store.outbox.claim(store.outbox.due("jira"), by=alive)
    assert store.outbox.due("jira") == []  # a live process of this host holds them
    assert child.stdin is not None
    child.stdin.close()
    child.wait(timeout=30)
    assert holder_alive(alive) is False  # killed or exited: its pid is gone (or reused, with another start)
    assert len(store.outbox.due("jira")) == 3
    elsewhere = "another-host/4242/777/run"
    assert holder_alive(elsewhere) is None
    store.outbox.claim(store.outbox.due("jira"), by=elsewhere)
    assert store.outbox.due("jira") == []  # on another host: wait for its lease to end
    from sqlalchemy import update

    from store.schema import outbox

    with store.engine.begin() as conn:  # its lease ran out: the holder is presumed gone
        conn.execute(update(outbox).values(claimed_until="2026-01-01T00:00:00.000Z"))
    assert len(store.outbox.due("jira")) == 3
