"""Health-changed events: one per engagement whose health moved, ids and reason codes only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

import flows.sync
from engagement.mapping import load_mapping
from engagement.unify import Snapshot, unify
from flows.engine import SyncReport
from sandbox.generator import generate_world
from store import HealthChange
from tests.engagement.world_records import world_records

NOW = datetime(2026, 11, 22, 9, tzinfo=UTC)


def test_events_for_changes_only_without_names(monkeypatch: pytest.MonkeyPatch) -> None:
    view = unify(
        Snapshot.from_records(world_records(generate_world("small", 4, NOW))),
        load_mapping("mappings/default.yaml"),
        NOW,
    )
    first, second, third = view.engagements[:3]
    report = SyncReport(started_at=NOW, full=False)
    report.health_changes = [
        HealthChange(
            first.id, first.name, "green", first.health.level, ("x",), tuple(r.code for r in first.health.reasons)
        ),
        HealthChange(second.id, second.name, None, second.health.level),  # first sighting: no event
        HealthChange(third.id, third.name, "amber", None),  # gone: no event
    ]
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(flows.sync, "emit_event", lambda **kwargs: sent.append(kwargs))
    assert flows.sync.emit_health_events(report) == 1
    assert sent == [
        {
            "event": "accord.engagement.health-changed",
            "resource": {"prefect.resource.id": f"accord.engagement.{first.id}", "accord.health": first.health.level},
            "payload": {
                "engagement_id": first.id,
                "from": "green",
                "to": first.health.level,
                "reason_codes": [r.code for r in first.health.reasons],
            },
        }
    ]
    assert first.name not in str(sent)
