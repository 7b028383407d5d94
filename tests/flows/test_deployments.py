"""prefect.yaml: `prefect deploy --all` from the repository, against the session's temporary API."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _prefect(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCORD_", "PREFECT_"))}
    env.update(PREFECT_API_URL=str(PREFECT_API_URL.value()), PREFECT_HOME=str(home), NO_COLOR="1", COLUMNS="200")
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    result = subprocess.run(  # noqa: S603  # our own venv's prefect CLI, fixed arguments
        [PREFECT, "--no-prompt", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


async def _deployments() -> tuple[dict[str, Any], list[Any]]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        deployments = {d.name: d for d in await client.read_deployments()}
        automations = await client.read_automations()
    return deployments, automations


def test_prefect_yaml_declares_no_credentials() -> None:
    text = (REPO / "prefect.yaml").read_text()
    config = yaml.safe_load(text)
    for deployment in config["deployments"]:
        env = deployment["work_pool"].get("job_variables", {}).get("env", {})
        assert not env, "credentials come from the worker's environment, never from the deployment"
    for word in ("password", "token", "secret", "session_id"):
        assert word not in text.split("# How the schedules chain")[1].lower()


def test_deploy_all_creates_the_deployments_schedules_and_the_push_trigger(prefect_api: None, tmp_path: Path) -> None:
    _prefect("work-pool", "create", "accord-local", "--type", "process", "--overwrite", home=tmp_path)
    _prefect("deploy", "--all", home=tmp_path)
    deployments, automations = asyncio.run(_deployments())
    assert {"accord-sync", "accord-push", "accord-reminders-daily", "accord-digest-weekly"} <= set(deployments)
    for d in deployments.values():
        assert d.work_pool_name == "accord-local"

    def crons(name: str) -> list[str]:
        return [str(getattr(s.schedule, "cron", None)) for s in deployments[name].schedules]

    assert crons("accord-sync") == ["*/15 * * * *"]
    assert crons("accord-reminders-daily") == ["0 7 * * *"]
    assert crons("accord-digest-weekly") == ["0 8 * * 1"]
    assert deployments["accord-push"].schedules == []
    assert deployments["accord-sync"].parameters == {"full": False}
    assert deployments["accord-push"].parameters == {"dry_run": False}
    assert deployments["accord-digest-weekly"].parameters == {"days": 7}
    assert deployments["accord-sync"].entrypoint == "flows/sync.py:sync_flow"
    assert deployments["accord-digest-weekly"].entrypoint == "flows/digest.py:digest_flow"

    push_id = str(deployments["accord-push"].id)
    (push_trigger,) = [
        a for a in automations if any(str(getattr(x, "deployment_id", "")) == push_id for x in a.actions)
    ]
    trigger = push_trigger.trigger
    assert set(trigger.expect) == {"prefect.flow-run.Completed"}
    related = trigger.match_related
    related = related if isinstance(related, list) else [related]
    assert any(r.root.get("prefect.resource.name") == "accord-sync" for r in related)


# Prefect's notification blocks import apprise, which imports the stdlib's deprecated imghdr.
@pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")
def test_notify_red_automation_applies_with_a_notification_block(prefect_api: None) -> None:
    from prefect.blocks.notifications import SlackWebhook

    from flows.automations import apply_automation, load_automation

    path = REPO / "automations" / "notify-red.yaml"
    SlackWebhook(url="https://hooks.slack.invalid/services/T0/B0/x").save("accord-ops-test", overwrite=True)

    async def apply_twice() -> list[Any]:
        from prefect.client.orchestration import get_client

        await apply_automation(path, "slack-webhook/accord-ops-test")
        await apply_automation(path, "slack-webhook/accord-ops-test")
        async with get_client() as client:
            block = await client.read_block_document_by_name("accord-ops-test", block_type_slug="slack-webhook")
            found = await client.read_automations_by_name("accord-engagement-turned-red")
        assert all(str(a.actions[0].block_document_id) == str(block.id) for a in found)
        return found

    (automation,) = asyncio.run(apply_twice())
    trigger = automation.trigger
    assert trigger.expect == {"accord.engagement.health-changed"}
    assert trigger.match.root == {"prefect.resource.id": "accord.engagement.*", "accord.health": "red"}
    assert load_automation(path).actions[0].type == "send-notification"


async def _scheduled_runs(deployment_id: Any, start: datetime, runs: int) -> list[Any]:
    """Have the API schedule up to ``runs`` runs of a deployment from ``start``, as Prefect's
    scheduler service does for every deployment with an active schedule (``POST
    /deployments/{id}/schedule``: the same ``models.deployments.schedule_runs``), and read back the
    runs it made, earliest first. Through Prefect's own client, which retries the 503 its server
    answers while its SQLite database is busy (seen once under a full test run's load)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with get_client() as client:
        answer = await client.request(
            "POST",
            "/deployments/{id}/schedule",
            path_params={"id": deployment_id},
            json={"start_time": start.isoformat(), "min_runs": runs, "max_runs": runs},
        )
        answer.raise_for_status()
        found = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )
    return sorted(found, key=lambda run: run.expected_start_time)


def test_the_deployed_schedules_make_the_runs_they_promise(prefect_api: None, tmp_path: Path) -> None:
    """Not only declared: Prefect's scheduling of the deployed definitions gives accord-sync a run
    every 15 minutes with its parameters, the daily reminders at 07:00 UTC, the weekly digest on
    Monday 08:00 UTC, and accord-push (started by its trigger) none."""
    from prefect.client.schemas.objects import StateType

    _prefect("work-pool", "create", "accord-local", "--type", "process", "--overwrite", home=tmp_path)
    _prefect("deploy", "--all", home=tmp_path)
    deployments, _ = asyncio.run(_deployments())
    start = datetime(2031, 1, 1, 0, 7, tzinfo=UTC)  # a Wednesday, well ahead of any run made so far

    def when(name: str, runs: int) -> list[Any]:
        return asyncio.run(_scheduled_runs(deployments[name].id, start, runs))

    sync_runs = when("accord-sync", 4)
    assert [r.expected_start_time for r in sync_runs] == [
        datetime(2031, 1, 1, 0, minute, tzinfo=UTC) for minute in (15, 30, 45)
    ] + [datetime(2031, 1, 1, 1, 0, tzinfo=UTC)]
    for run in sync_runs:
        assert run.state_type == StateType.SCHEDULED and run.parameters == {"full": False}
        assert run.work_pool_name == "accord-local" and run.auto_scheduled
    daily = when("accord-reminders-daily", 2)
    assert [r.expected_start_time for r in daily] == [datetime(2031, 1, d, 7, tzinfo=UTC) for d in (1, 2)]
    weekly = when("accord-digest-weekly", 2)
    assert [r.expected_start_time for r in weekly] == [datetime(2031, 1, d, 8, tzinfo=UTC) for d in (6, 13)]
    assert weekly[0].parameters == {"days": 7}
    assert when("accord-push", 4) == []
