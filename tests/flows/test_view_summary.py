"""A run's summary keeps counts for every engagement but rows only for the worst, which its table shows."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from engagement.mapping import load_mapping
from engagement.partition import partition_of
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


def test_the_summaries_of_partitions_merge_into_the_summary_of_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``UnifyPool`` does with its processes' summaries: counts add, the worst rows of all are kept
    in order; the org-wide counts come from the one partition that computed them."""
    monkeypatch.setattr("flows.engine.ROWS_KEPT", 3)
    view = unify(
        Snapshot.from_records(world_records(generate_world("small", 4, NOW))),
        load_mapping("mappings/default.yaml"),
        NOW,
    )
    whole = ViewSummary()
    whole.add(view)
    whole.meetings_internal, whole.issues_without_engagement = 11, 7
    whole.keep_worst()
    parts = []
    for k in range(3):
        part = ViewSummary()
        mine = tuple(e for e in view.engagements if partition_of(e.client_id, 3) == k)
        assert mine  # every partition has engagements of this org
        part.add(replace(view, engagements=mine, unknown_stakeholders=(), ambiguous_meetings=()))
        part.keep_worst()
        parts.append(part)
    parts[0].unknown_stakeholders, parts[2].unknown_stakeholders = len(view.unknown_stakeholders), 0
    parts[1].ambiguous_meetings = len(view.ambiguous_meetings)
    parts[0].meetings_internal, parts[0].issues_without_engagement = 11, 7
    merged = ViewSummary.merged(parts)
    assert merged.rows == sorted((e.summary_json() for e in view.engagements), key=row_order)[:3]
    client = {e.id: e.client_id for e in view.engagements}
    assert len({partition_of(client[r["id"]], 3) for r in merged.rows}) >= 2  # the merge interleaves
    assert merged.health == whole.health and sum(merged.health.values()) == len(view.engagements)
    assert (merged.engagements, merged.unknown_stakeholders, merged.ambiguous_meetings) == (
        whole.engagements,
        whole.unknown_stakeholders,
        whole.ambiguous_meetings,
    )
    assert (merged.meetings_internal, merged.issues_without_engagement) == (11, 7)
    assert merged.groups == 3 and merged.rows == whole.rows
