"""Health-changed events: one per engagement whose health moved, ids and reason codes only, sent from
the store's journal (``health_journal``), so a run that fails or dies after storing an engagement
does not lose its event: the next run sends it, once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import update

import flows.sync
from accord.settings import DEFAULT_MAPPING
from engagement.mapping import load_mapping
from engagement.model import Engagement, EngagementHealth, UnifiedView
from engagement.unify import Snapshot, unify
from flows import engine
from flows.engine import unify_and_store
from sandbox.generator import generate_world
from store import Store
from store.schema import engagements
from tests.engagement.world_records import world_records

NOW = datetime(2026, 11, 22, 9, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)


def other_health(e: Engagement) -> Engagement:
    level = "red" if e.health.level != "red" else "green"
    return replace(e, health=EngagementHealth(level, e.health.reasons))


@pytest.fixture(scope="module")
def view() -> UnifiedView:
    """A small org's engagements, unified at NOW."""
    return unify(
        Snapshot.from_records(world_records(generate_world("small", 4, NOW))), load_mapping(DEFAULT_MAPPING), NOW
    )


class Sent:
    """``emit_event`` as Prefect's: what was handed over, and whether the worker was waited for."""

    def __init__(self, refuse: bool = False) -> None:
        self.events: list[dict[str, Any]] = []
        self.refuse = refuse
        self.flushed = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> Sent:
        monkeypatch.setattr(flows.sync, "emit_event", self.emit)
        monkeypatch.setattr(flows.sync, "events_handled", self.flush)
        return self

    def emit(self, **kwargs: Any) -> object | None:
        if self.refuse:
            return None  # what emit_event answers when events are off
        self.events.append(kwargs)
        return object()

    def flush(self) -> None:
        self.flushed += 1


def test_events_for_transitions_only_with_ids_and_no_names(
    store_factory: Callable[[], Store], view: UnifiedView, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_factory()
    first, second, third = view.engagements[:3]
    assert len(store.save_engagements([first, second, third], NOW)) == 3  # first sightings: no event
    moved = other_health(first)
    changes = store.save_engagements([moved, second], LATER)
    store.drop_engagements_except({first.id, second.id})  # gone: no event
    assert [(c.previous, c.current) for c in changes] == [(first.health.level, moved.health.level)]
    sent = Sent().install(monkeypatch)
    assert flows.sync.emit_health_events(store) == 1
    (event,) = sent.events
    assert isinstance(event.pop("id"), UUID)
    assert event == {
        "event": "accord.engagement.health-changed",
        "resource": {"prefect.resource.id": f"accord.engagement.{first.id}", "accord.health": moved.health.level},
        "payload": {
            "engagement_id": first.id,
            "from": first.health.level,
            "to": moved.health.level,
            "reason_codes": [r.code for r in first.health.reasons],
        },
        "occurred": LATER,
    }
    assert first.name not in str(sent.events)
    assert sent.flushed == 1 and store.health_events() == []  # sent, then out of the journal
    assert flows.sync.emit_health_events(store) == 0 and len(sent.events) == 1


def test_events_that_cannot_be_sent_stay_for_a_run_that_can(
    store_factory: Callable[[], Store], view: UnifiedView, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_factory()
    group = view.engagements[:4]
    store.save_engagements(group, NOW)
    store.save_engagements([other_health(e) for e in group], LATER)
    journaled = [e.event_id for e in store.health_events()]
    assert len(journaled) == 4
    refused = Sent(refuse=True).install(monkeypatch)
    assert flows.sync.emit_health_events(store) == 0 and refused.flushed == 0
    sent = Sent().install(monkeypatch)
    page = Store.health_events
    monkeypatch.setattr(Store, "health_events", lambda self, limit=500, after=0: page(self, 3, after))
    assert flows.sync.emit_health_events(store) == 4 and sent.flushed == 2  # pages of 3: 3, then 1
    assert [e["id"] for e in sent.events] == journaled  # oldest first, with the journal's ids
    assert store.health_events() == []


def test_a_unify_that_fails_after_storing_some_groups_loses_no_event_and_repeats_none(
    store_factory: Callable[[], Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the journal, the events of the groups a failing unify had stored were lost: the re-run
    saw their new health as stored, no change."""
    store = store_factory()
    mapping = load_mapping(DEFAULT_MAPPING)
    monkeypatch.setattr(engine, "unify_groups", partial(engine.unify_groups, group_size=5))  # several groups
    store.apply_batch(world_records(generate_world("small", 4, NOW)))
    unify_and_store(store, mapping, NOW)
    with store.engine.begin() as conn:  # every engagement stored with another health than it has
        rows = conn.execute(engagements.select()).all()
        for row in rows:
            conn.execute(
                update(engagements)
                .where(engagements.c.id == row.id)
                .values(health="red" if row.health != "red" else "green", digest="stale")
            )
    real = Store.save_engagements
    calls = 0

    def failing_after_a_group(self: Store, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("the database went away")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Store, "save_engagements", failing_after_a_group)
    with pytest.raises(RuntimeError, match="went away"):
        unify_and_store(store, mapping, LATER)
    monkeypatch.setattr(Store, "save_engagements", real)
    sent = Sent().install(monkeypatch)
    before = flows.sync.emit_health_events(store)
    assert 0 < before < len(rows)  # the stored groups' events
    unify_and_store(store, mapping, LATER)  # the re-run
    assert flows.sync.emit_health_events(store) == len(rows) - before
    assert sorted(e["payload"]["engagement_id"] for e in sent.events) == sorted(r.id for r in rows)


def test_events_never_sent_for_a_month_are_dropped(
    store_factory: Callable[[], Store], view: UnifiedView, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_factory()
    old, recent = view.engagements[:2]
    now = datetime.now(UTC)
    long_ago = now - timedelta(days=flows.sync.JOURNAL_DAYS, hours=1)
    store.save_engagements([old], long_ago - timedelta(hours=1))
    store.save_engagements([other_health(old)], long_ago)
    store.save_engagements([recent], now - timedelta(hours=1))
    store.save_engagements([other_health(recent)], now)
    assert len(store.health_events()) == 2
    sent = Sent().install(monkeypatch)
    assert flows.sync.emit_health_events(store) == 1
    assert [e["payload"]["engagement_id"] for e in sent.events] == [recent.id] and store.health_events() == []
