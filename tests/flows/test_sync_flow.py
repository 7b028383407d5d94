"""The Prefect flow, through one session-wide temporary Prefect API."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest

from flows.sync import sync_flow
from sandbox.app import Sandbox, SandboxOptions
from store import Store


@pytest.fixture
def sandbox_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[Sandbox, str]]:
    with Sandbox(SandboxOptions(size="small", seed=5)) as sb:
        url = f"sqlite:///{tmp_path / 'flow.sqlite'}"
        monkeypatch.setenv("ACCORD_SANDBOX_CONTROL", str(sb.info()["control"]))
        monkeypatch.setenv("ACCORD_DATABASE_URL", url)
        monkeypatch.setenv("ACCORD_UNIFY_PROCESSES", "2")  # the default where the machine has 2 cores
        yield sb, url


async def _artifact_markdown(key: str, flow_run_id: UUID) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
            )
        )
    assert len(artifacts) == 1, f"expected one artifact {key} for flow run {flow_run_id}, got {len(artifacts)}"
    return str(artifacts[0].data)


def test_flow_runs_full_then_incremental_and_publishes_an_artifact(
    prefect_api: None, sandbox_env: tuple[Sandbox, str]
) -> None:
    sandbox, url = sandbox_env
    first = sync_flow(full=True)
    assert first["full"] is True and first["engagements"] == sandbox.salesforce_store.counts()["Opportunity"]
    assert all(source["error"] is None for source in first["sources"].values())
    # Jira's pull task handed the pull to the unify child (the task runs in a copy of the flow's context).
    assert {name: source["in_child"] for name, source in first["sources"].items()} == {
        "salesforce": False,
        "jira": True,
        "google_calendar": False,
    }
    sandbox.mutate(count=5, seed=3)
    state = sync_flow(full=False, return_state=True)
    second = state.result()
    assert second["full"] is False
    pulled = sum(s["pulled"] for src in second["sources"].values() for s in src["streams"].values())
    total = sum(s["pulled"] for src in first["sources"].values() for s in src["streams"].values())
    assert 0 < pulled < total / 4
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    markdown = asyncio.run(_artifact_markdown("accord-sync", flow_run_id))
    assert "# Accord sync (incremental)" in markdown and "| salesforce | contacts |" in markdown
    assert "<script>" not in markdown  # org values are escaped in the UI
    for secret in sandbox.credentials.secret_values():
        assert secret not in markdown
    store = Store(url)
    assert len(store.load_engagements()) == first["engagements"]
    store.dispose()
