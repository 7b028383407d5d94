"""Credentials from Prefect Secret blocks named in the settings (``ACCORD_..._BLOCK``), read at run time."""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import flow

import accord.settings as accord_settings
from accord.settings import AccordSettings, SecretBlockError, load_settings
from sandbox.app import Sandbox, SandboxOptions

JIRA = {"ACCORD_JIRA__SERVER": "https://acme.atlassian.net", "ACCORD_JIRA__EMAIL": "accord@agency.example"}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("ACCORD_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def fake_blocks(clean_env: pytest.MonkeyPatch) -> dict[str, Any]:
    blocks: dict[str, Any] = {}

    def read(name: str) -> Any:
        if name not in blocks:
            raise ValueError(f"Unable to find block document named {name} for block type secret")
        return blocks[name]

    clean_env.setattr(accord_settings, "read_secret_block", read)
    return blocks


def test_a_credential_comes_from_the_block_its_setting_names(
    clean_env: pytest.MonkeyPatch, fake_blocks: dict[str, Any]
) -> None:
    fake_blocks["jira-token"] = "0123-token-from-block"  # text that parses as JSON stays text
    for name, value in {**JIRA, "ACCORD_JIRA__API_TOKEN_BLOCK": "jira-token"}.items():
        clean_env.setenv(name, value)
    settings = AccordSettings()
    assert settings.jira is not None
    assert settings.jira.api_token.get_secret_value() == "0123-token-from-block"
    assert settings.secret_blocks == {"jira.api_token": "jira-token"}
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "0123-token-from-block" not in text


def test_a_missing_block_names_the_setting_and_the_block_not_a_value(
    clean_env: pytest.MonkeyPatch, fake_blocks: dict[str, Any]
) -> None:
    for name, value in {**JIRA, "ACCORD_JIRA__API_TOKEN_BLOCK": "no-such-block"}.items():
        clean_env.setenv(name, value)
    with pytest.raises(SecretBlockError) as caught:
        AccordSettings()
    assert caught.value.variable == "ACCORD_JIRA__API_TOKEN_BLOCK"
    assert "no-such-block" in str(caught.value) and "prefect block ls" in str(caught.value)


def test_the_credential_and_its_block_together_is_an_error(
    clean_env: pytest.MonkeyPatch, fake_blocks: dict[str, Any]
) -> None:
    fake_blocks["jira-token"] = "from-block"
    env = {**JIRA, "ACCORD_JIRA__API_TOKEN_BLOCK": "jira-token", "ACCORD_JIRA__API_TOKEN": "from-env-secret"}
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(SecretBlockError, match="ACCORD_JIRA__API_TOKEN is set too") as caught:
        AccordSettings()
    assert "from-env-secret" not in str(caught.value) and "from-block" not in str(caught.value)


def test_a_block_holding_json_is_refused_for_a_token(
    clean_env: pytest.MonkeyPatch, fake_blocks: dict[str, Any]
) -> None:
    fake_blocks["jira-token"] = {"token": "nested-secret"}
    for name, value in {**JIRA, "ACCORD_JIRA__API_TOKEN_BLOCK": "jira-token"}.items():
        clean_env.setenv(name, value)
    with pytest.raises(SecretBlockError, match="holds a JSON dict") as caught:
        AccordSettings()
    assert "nested-secret" not in str(caught.value)


def test_a_service_account_key_block_becomes_a_private_file(
    clean_env: pytest.MonkeyPatch, fake_blocks: dict[str, Any]
) -> None:
    key = {"type": "service_account", "client_email": "accord@proj.iam.gserviceaccount.com", "private_key": "pk"}
    fake_blocks["gcal-sa"] = key
    clean_env.setenv("ACCORD_GOOGLE_CALENDAR__SERVICE_ACCOUNT_JSON_BLOCK", "gcal-sa")
    clean_env.setenv("ACCORD_GOOGLE_CALENDAR__SUBJECT", "ops@agency.example")
    settings = AccordSettings()
    assert settings.google_calendar is not None and settings.google_calendar.service_account_file
    path = Path(settings.google_calendar.service_account_file)
    assert json.loads(path.read_text()) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert settings.secret_blocks == {"google_calendar.service_account_json": "gcal-sa"}


def test_validation_errors_never_show_a_credential(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ACCORD_JIRA__EMAIL", "accord@agency.example")
    clean_env.setenv("ACCORD_JIRA__API_TOKEN", "plain-env-secret")  # ACCORD_JIRA__SERVER missing
    clean_env.setenv("ACCORD_SALESFORCE__AUTH", "password")
    clean_env.setenv("ACCORD_SALESFORCE__PASSWORD", "sf-env-secret")  # no username
    with pytest.raises(ValueError) as caught:
        AccordSettings()
    text = str(caught.value)
    assert "jira.server" in text and "salesforce" in text
    assert "plain-env-secret" not in text and "sf-env-secret" not in text


# -- against the session's Prefect API: real Secret blocks, read inside the flow run ----------------------
@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxOptions(size="small", seed=2)) as sb:
        yield sb


def _save_blocks(values: dict[tuple[str, str], str]) -> dict[tuple[str, str], str]:
    """Each value as a Prefect Secret block of a fresh name; returns (section, setting) -> block name."""
    from prefect.blocks.system import Secret

    names = {}
    for (section, setting), value in values.items():
        name = f"accord-test-{section}-{setting}-{uuid.uuid4().hex[:8]}".replace("_", "-")
        Secret(value=value).save(name)
        names[(section, setting)] = name
    return names


def _block_env(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """The sandbox's connection settings as environment variables, every credential from a block."""
    info = sandbox.info()
    sf, jira, gc = info["salesforce"], info["jira"], info["google_calendar"]
    blocks = _save_blocks(
        {
            ("salesforce", "password"): sf["password"],
            ("salesforce", "security_token"): sf["security_token"],
            ("salesforce", "consumer_secret"): sf["consumer_secret"],
            ("jira", "api_token"): jira["api_token"],
            ("google_calendar", "token"): gc["token"],
            ("google_calendar", "refresh_token"): gc["refresh_token"],
            ("google_calendar", "client_secret"): gc["client_secret"],
        }
    )
    env = {
        "ACCORD_DATABASE_URL": f"sqlite:///{tmp_path / 'blocks.sqlite'}",
        "ACCORD_SALESFORCE__AUTH": "oauth_password",
        "ACCORD_SALESFORCE__LOGIN_URL": sf["instance_url"],
        "ACCORD_SALESFORCE__INSTANCE_URL": sf["instance_url"],
        "ACCORD_SALESFORCE__USERNAME": sf["username"],
        "ACCORD_SALESFORCE__CONSUMER_KEY": sf["consumer_key"],
        "ACCORD_JIRA__SERVER": jira["server"],
        "ACCORD_JIRA__EMAIL": jira["email"],
        "ACCORD_GOOGLE_CALENDAR__API_ENDPOINT": gc["api_endpoint"],
        "ACCORD_GOOGLE_CALENDAR__TOKEN_URI": gc["token_uri"],
        "ACCORD_GOOGLE_CALENDAR__CLIENT_ID": gc["client_id"],
    }
    for (section, setting), block in blocks.items():
        env[f"ACCORD_{section.upper()}__{setting.upper()}_BLOCK"] = block
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


async def _flow_run_logs(flow_run_id: UUID) -> str:
    """Every log line of the flow run and its task runs, as the Prefect API holds them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    await APILogHandler.aflush()  # logs are shipped by a background worker
    async with get_client() as client:
        logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return "\n".join(log.message for log in logs)


def test_a_sync_reads_its_credentials_from_secret_blocks_at_run_time(
    prefect_api: None, sandbox: Sandbox, clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import asyncio

    from connectors.jira import JiraConnector
    from engagement.mapping import load_mapping
    from flows.sync import sync_flow

    env = _block_env(sandbox, clean_env, tmp_path)
    secrets = sandbox.credentials.secret_values()

    @flow(name="accord-test-settings-from-blocks")
    def settings_in_a_flow() -> tuple[str, str, dict[str, str], str | None]:
        settings = load_settings()
        assert settings.jira is not None
        connector = JiraConnector(settings.jira, load_mapping(settings.mapping))
        try:
            zone = connector.user_zone()  # an authenticated call with the token read from the block
        finally:
            connector.close()
        return repr(settings), str(settings), settings.secret_blocks, zone.key if zone else None

    shown, printed, blocks, zone = settings_in_a_flow()
    assert zone == sandbox.options.jira_timezone
    assert len(blocks) == 7 and blocks["jira.api_token"] == env["ACCORD_JIRA__API_TOKEN_BLOCK"]
    for secret in secrets:
        assert secret not in shown and secret not in printed

    state = sync_flow(full=True, return_state=True)
    report = state.result()
    assert all(source["error"] is None for source in report["sources"].values()), report["sources"]
    assert report["engagements"] > 0
    assert state.state_details.flow_run_id is not None
    logs = asyncio.run(_flow_run_logs(state.state_details.flow_run_id))
    assert "engagements by health" in logs
    for secret in secrets:
        assert secret not in logs
