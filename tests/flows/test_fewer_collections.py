"""The sync's garbage-collection setting is restored when the last concurrent sync ends."""

from __future__ import annotations

import gc
import threading

from flows.engine import fewer_collections


def test_nested_and_concurrent_syncs_restore_the_collector() -> None:
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    inside = threading.Event()
    release = threading.Event()

    def other_sync() -> None:
        with fewer_collections():
            inside.set()
            release.wait(timeout=30)

    thread = threading.Thread(target=other_sync)
    with fewer_collections():
        assert gc.get_threshold()[0] >= 50_000
        thread.start()
        assert inside.wait(timeout=30)
    assert gc.get_threshold()[0] >= 50_000  # the other sync still runs: still raised
    release.set()
    thread.join(timeout=30)
    assert gc.get_threshold() == before and gc.get_freeze_count() == frozen
