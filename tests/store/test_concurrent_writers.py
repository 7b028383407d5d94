"""Two processes write the engagements of one SQLite store at once (the unify tail in two processes,
``flows.engine.UnifyPool``): a writer that finds the write lock taken waits for it (the ``timeout``
connect argument: SQLite's busy timeout) instead of failing with "database is locked"."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

from engagement.mapping import load_mapping
from engagement.unify import Snapshot, unify
from sandbox.generator import generate_world
from store import HealthChange, Store
from tests.engagement.world_records import world_records

NOW = datetime(2026, 11, 22, 9, tzinfo=UTC)

# Another process takes SQLite's write lock (as the other unify process does while it saves a group),
# says so, and holds it until told to commit.
HOLDER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
connection.execute("DELETE FROM engagements WHERE id = 'none'")
print("locked", flush=True)
sys.stdin.readline()
connection.execute("COMMIT")
"""


def test_a_writer_waits_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    store = Store(f"sqlite:///{path}")
    store.create_all()
    view = unify(
        Snapshot.from_records(world_records(generate_world("small", 2, NOW))),
        load_mapping("mappings/default.yaml"),
        NOW,
    )
    assert view.engagements
    holder = subprocess.Popen(  # noqa: S603  # our own interpreter, a fixed script
        [sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdin is not None and holder.stdout is not None
    changes: list[HealthChange] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            changes.extend(store.save_engagements(view.engagements, NOW))
            changes.extend(store.drop_engagements_except({e.id for e in view.engagements}))
        except BaseException as exc:  # reported by the assertions below
            errors.append(exc)

    try:
        assert holder.stdout.readline().strip() == "locked"
        writer = threading.Thread(target=write)
        writer.start()
        # Without a busy timeout the save fails at once ("database is locked"); with it, it waits.
        writer.join(timeout=1.0)
        assert writer.is_alive() and not errors
        holder.stdin.write("commit\n")
        holder.stdin.flush()
        writer.join(timeout=30)
        assert not writer.is_alive()
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
        holder.stdout.close()
    assert errors == []
    assert len(changes) == len(view.engagements) and all(c.previous is None for c in changes)
    assert len(store.load_engagements()) == len(view.engagements)
    store.dispose()
