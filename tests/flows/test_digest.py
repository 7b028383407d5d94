"""The weekly digest: engagements by health and the week's health changes, as an artifact."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from prefect.events import emit_event
from sqlalchemy import insert

from engagement.records import iso
from flows.digest import HealthMove, digest_flow, digest_markdown
from flows.sync import HEALTH_EVENT, sync_flow
from sandbox.app import Sandbox, SandboxOptions
from store import Store
from store.schema import health_journal
from tests.flows.test_sync_flow import _artifact_markdown

UNTIL = datetime(2026, 11, 23, 8, tzinfo=UTC)
SINCE = UNTIL - timedelta(days=7)


def _engagement(engagement_id: str, name: str, health: str) -> dict[str, Any]:
    summary = {
        "id": engagement_id,
        "name": name,
        "client": "Client <b>",
        "health": health,
        "stage": "delivery",
        "progress": 50.0,
        "last_client_meeting": None,
        "next_client_meeting": None,
        "reasons": [],
    }
    return {"summary": summary, "detail": {}}


def test_digest_counts_and_first_to_last_health_of_the_week() -> None:
    engagements = [
        _engagement("a", "Alpha", "red"),
        _engagement("b", "Beta", "green"),
        _engagement("c", "Gamma", "amber"),
    ]
    moves = [
        HealthMove(SINCE + timedelta(days=1), "a", "green", "amber"),
        HealthMove(SINCE + timedelta(days=2), "a", "amber", "red"),
        HealthMove(SINCE + timedelta(days=3), "b", "red", "green"),
        HealthMove(SINCE + timedelta(days=4), "gone", "amber", "red"),
    ]
    markdown = digest_markdown(engagements, moves, SINCE, UNTIL)
    assert markdown.startswith("# Accord weekly digest, 2026-11-16 to 2026-11-23")
    assert "**Engagements:** 3 — 🔴 red 1, 🟠 amber 1, 🟢 green 1" in markdown
    assert "| Alpha | Client &lt;b&gt; | 🟢 green | 🔴 red | 2 |" in markdown
    assert "| Beta | Client &lt;b&gt; | 🔴 red | 🟢 green | 1 |" in markdown
    assert "| gone (no longer tracked) | — | 🟠 amber | 🔴 red | 1 |" in markdown
    assert "**Turned red:** 2 — **recovered from red:** 1" in markdown
    assert markdown.index("| Alpha |") < markdown.index("| Beta |")  # red first


def test_digest_without_changes() -> None:
    markdown = digest_markdown([_engagement("a", "Alpha", "green")], [], SINCE, UNTIL)
    assert "No engagement changed health this week." in markdown and "## All engagements" in markdown


def test_digest_flow_reads_the_store_and_publishes_an_artifact(
    prefect_api: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with Sandbox(SandboxOptions(size="small", seed=2)) as sandbox:
        monkeypatch.setenv("ACCORD_SANDBOX_CONTROL", str(sandbox.info()["control"]))
        monkeypatch.setenv("ACCORD_DATABASE_URL", f"sqlite:///{tmp_path / 'digest.sqlite'}")
        synced = sync_flow(full=True)
        # A transition a failed run stored with its engagement and could not send: the next sync
        # sends it (the journal, ``flows.sync.emit_health_events``), and the digest reads it back.
        store = Store(f"sqlite:///{tmp_path / 'digest.sqlite'}")
        (engagement_id, *_) = sorted(store.engagement_clients())
        journaled = uuid4()
        with store.engine.begin() as conn:
            conn.execute(
                insert(health_journal).values(
                    event_id=str(journaled),
                    engagement_id=engagement_id,
                    previous="amber",
                    current="red",
                    reason_codes=[],
                    occurred=iso(datetime.now(UTC)),
                )
            )
        again = sync_flow()
        assert again["health_events"] >= 1 and store.health_events() == []
        store.dispose()
    emit_event(  # and one of an engagement no longer tracked
        event=HEALTH_EVENT,
        resource={"prefect.resource.id": "accord.engagement.006GONE", "accord.health": "red"},
        payload={"engagement_id": "006GONE", "from": "amber", "to": "red", "reason_codes": []},
    )
    deadline = time.monotonic() + 20
    while True:  # the server stores events asynchronously
        state = digest_flow(days=7, return_state=True)
        result = state.result()
        if result["health_changes"] > again["health_events"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert result["health_changes"] == again["health_events"] + 1
    assert result["engagements"] == synced["engagements"]
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    markdown = asyncio.run(_artifact_markdown("accord-digest", flow_run_id))
    assert "# Accord weekly digest" in markdown
    assert markdown.count("\n| ") >= synced["engagements"]
    assert "**Turned red:** 2" in markdown and "006GONE (no longer tracked)" in markdown  # and the journaled one
