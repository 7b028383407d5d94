"""prefect.yaml: `prefect deploy --all` from the repository, against the session's temporary API."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
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
