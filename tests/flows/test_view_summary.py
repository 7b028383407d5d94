"""A run's summary keeps counts for every engagement but rows only for the worst, which its table shows."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from engagement.mapping import load_mapping
from engagement.unify import Snapshot, unify
from flows.engine import ViewSummary, row_order
from flows.report import engagement_markdown
from sandbox.generator import generate_world
from tests.engagement.world_records import world_records

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def test_the_summary_keeps_the_worst_rows_and_counts_every_engagement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("flows.engine.ROWS_KEPT", 3)
    view = unify(
        Snapshot.from_records(world_records(generate_world("small", 4, NOW))),
        load_mapping("mappings/default.yaml"),
        NOW,
    )
    engagements = view.engagements
    assert len(engagements) >= 9 and len({e.health.level for e in engagements}) >= 2
    summary = ViewSummary()
    for start in range(0, len(engagements), 2):  # groups of two, as unify_groups hands them over
        summary.add(replace(view, engagements=engagements[start : start + 2]))
    every = sorted((e.summary_json() for e in engagements), key=row_order)
    assert summary.engagements == len(engagements) and sum(summary.health.values()) == len(engagements)
    assert len(summary.rows) < 6
    assert sorted(summary.rows, key=row_order)[:3] == every[:3]
    table = engagement_markdown(summary.rows, 3, summary.engagements)
    assert table[-1].startswith(f"| … | {len(engagements) - 3} more |")
    assert sum(1 for line in table if line.startswith("|")) == 2 + 3 + 1  # header, rule, 3 rows, "more"
