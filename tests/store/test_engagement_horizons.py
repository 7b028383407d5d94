"""Each stored engagement keeps until when it holds with no new records (``valid_until``, from
``engagement.horizon``): written by the sync's unify, moved where an unchanged engagement's horizon
moved, "never" where time alone never changes it, NULL where it is not known; ``engagements_due``
lists the engagements whose horizon has passed or is not known. On SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from engagement.mapping import Mapping, load_mapping
from engagement.partition import unify_all
from flows.engine import unify_and_store
from sandbox.app import Sandbox, SandboxOptions
from store import Store
from store.schema import engagements
from store.store import NEVER, horizon_text
from tests.sandbox_settings import settings_for

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxOptions(size="small", seed=29)) as sb:
        yield sb


@pytest.fixture(scope="module")
def mapping() -> Mapping:
    return load_mapping("mappings/default.yaml")


def _pulled(store: Store, sandbox: Sandbox, mapping: Mapping) -> None:
    from flows.engine import run_sync

    settings = settings_for(sandbox, store.url).model_copy(update={"unify_processes": 1})
    assert not run_sync(settings, mapping, store, full=True, unify=False).failed


def _stored(store: Store) -> dict[str, tuple[str | None, str, str]]:
    """Each engagement's stored horizon, digest and when it was last written."""
    query = select(engagements.c.id, engagements.c.valid_until, engagements.c.digest, engagements.c.updated_at)
    with store.engine.connect() as conn:
        return {row.id: (row.valid_until, row.digest, row.updated_at) for row in conn.execute(query)}


def test_the_unify_stores_each_engagements_horizon_and_lists_those_due(
    store: Store, sandbox: Sandbox, mapping: Mapping
) -> None:
    _pulled(store, sandbox, mapping)
    unify_and_store(store, mapping, NOW)
    view = unify_all(store, mapping, NOW)
    stored = _stored(store)
    assert set(stored) == {e.id for e in view.engagements} and len(stored) > 5
    assert {i: s[0] for i, s in stored.items()} == {i: horizon_text(view.valid_until[i]) for i in stored}
    horizons = sorted(h for h in view.valid_until.values() if h is not None)
    assert horizons and all(h > NOW for h in horizons)
    assert store.engagements_due(NOW) == {}
    # Just past the earliest horizon, exactly the engagements whose horizon has passed are due.
    later = horizons[0] + timedelta(milliseconds=1)
    due = store.engagements_due(later)
    assert due and set(due) == {i for i, h in view.valid_until.items() if h is not None and h <= later}
    clients = {e.id: e.client_id for e in view.engagements}
    assert due == {i: clients[i] for i in due}
    never = {i for i, h in view.valid_until.items() if h is None}
    assert all(stored[i][0] == NEVER for i in never)
    assert not never & set(store.engagements_due(datetime(2999, 1, 1, tzinfo=UTC)))


def test_an_unchanged_engagement_gets_its_new_horizon_and_one_saved_without_is_due(
    store: Store, sandbox: Sandbox, mapping: Mapping
) -> None:
    _pulled(store, sandbox, mapping)
    view = unify_all(store, mapping, NOW)
    store.save_engagements(view.engagements, NOW)  # no horizons: not known
    assert {s[0] for s in _stored(store).values()} == {None}
    assert set(store.engagements_due(NOW)) == {e.id for e in view.engagements}

    before = _stored(store)
    first = view.engagements[0]
    later = datetime(2031, 1, 1, tzinfo=UTC)
    changes = store.save_engagements(view.engagements, NOW + timedelta(hours=1), {first.id: later})
    after = _stored(store)
    assert changes == []  # same engagements: no health change, nothing rewritten but the horizon
    assert after[first.id] == (horizon_text(later), *before[first.id][1:])
    assert all(after[i] == before[i] for i in after if i != first.id)  # not in the map: still unknown
    assert first.id not in store.engagements_due(NOW) and first.id in store.engagements_due(later)

    store.save_engagements([first], NOW, {first.id: None})
    assert _stored(store)[first.id][0] == NEVER


def test_an_earlier_store_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "earlier.sqlite"
    with sqlite3.connect(path) as conn:  # the engagements table before valid_until (and client_id)
        conn.execute(
            "CREATE TABLE engagements (id VARCHAR(255) PRIMARY KEY, name TEXT NOT NULL, client TEXT NOT NULL, "
            "health VARCHAR(8) NOT NULL, stage VARCHAR(16) NOT NULL, digest VARCHAR(64) NOT NULL, "
            "payload JSON NOT NULL, updated_at VARCHAR(32) NOT NULL)"
        )
        conn.execute("INSERT INTO engagements VALUES ('e1', 'E', 'C', 'green', 'execution', 'd', '{}', 'x')")
    store = Store(f"sqlite:///{path}")
    try:
        store.create_all()
        assert store.engagements_due(NOW) == {"e1": None}  # kept, its horizon unknown
    finally:
        store.dispose()
