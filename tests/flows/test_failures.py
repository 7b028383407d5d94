"""Failed runs explained for ops: real failures driven against the sandbox, explained by
``flows.failures`` (mostly at the function level), and a few whole flow runs against the session's
Prefect API (state message, ``accord-failure`` artifact, log)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import pytest
from pydantic import SecretStr, ValidationError

from accord.settings import DEFAULT_MAPPING, AccordSettings, SecretBlockError
from connectors.errors import ConnectorError
from connectors.jira import JiraConnector
from engagement.mapping import Mapping, MappingError, load_mapping
from flows.budget import BudgetUnavailableError
from flows.engine import MissingSettingsError, build_connector, pull_source, run_sync
from flows.failures import (
    FailedWrite,
    FailureContext,
    OpsMessage,
    explain,
    explain_failed_writes,
    failure_markdown,
    failure_text,
)
from flows.push_engine import FAILURES_KEPT, TargetReport, push
from sandbox.app import Sandbox, SandboxOptions
from store import Store
from tests.sandbox_settings import reset_sandbox, settings_for

TEMPLATES = DEFAULT_MAPPING.parent / "templates"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxOptions(size="small", seed=11)) as sb:
        yield sb


@pytest.fixture
def fresh(sandbox: Sandbox) -> Iterator[Sandbox]:
    """The module's sandbox, with its faults and credentials put back after the test."""
    yield sandbox
    reset_sandbox(sandbox)


def _mapping_file(tmp_path: Path, *replacements: tuple[str, str]) -> Path:
    """The default mapping with ``replacements``, as a file (its templates alongside)."""
    text = DEFAULT_MAPPING.read_text(encoding="utf-8")
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "acme.yaml"
    path.write_text(text, encoding="utf-8")
    if not (tmp_path / "templates").exists():
        shutil.copytree(TEMPLATES, tmp_path / "templates")
    return path


def _line_of(path: Path, fragment: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if fragment in line)


def _failure(fn: Callable[[], object]) -> BaseException:
    try:
        fn()
    except Exception as exc:
        return exc
    raise AssertionError("expected a failure")


def _pull(source: str, settings: AccordSettings, mapping: Mapping, tmp_path: Path) -> BaseException:
    store = Store(f"sqlite:///{tmp_path / 'pull.sqlite'}")
    store.create_all()
    try:
        return _failure(lambda: pull_source(source, settings, mapping, store, upper=datetime.now(UTC), full=True))
    finally:
        store.dispose()


def _clean(message: OpsMessage, sandbox: Sandbox) -> str:
    text = message.text() + failure_markdown("t", [message])
    for secret in sandbox.credentials.secret_values():
        assert secret not in text
    return text


# -- credentials -------------------------------------------------------------------------------------------
def test_a_revoked_jira_token_names_the_token_and_email_variables(fresh: Sandbox, tmp_path: Path) -> None:
    settings = settings_for(fresh, "sqlite://")
    fresh.apps["jira"].expire_credentials()
    error = _pull("jira", settings, load_mapping(DEFAULT_MAPPING), tmp_path)
    message = explain(error, FailureContext("sync", settings), source="jira")
    text = _clean(message, fresh)
    assert message.where == "jira" and "did not accept" in message.what
    assert "`ACCORD_JIRA__API_TOKEN`" in text and "`ACCORD_JIRA__EMAIL`" in text
    assert "cursors stay at its last stored page" in message.kept


def test_a_jira_token_from_a_block_names_the_block(fresh: Sandbox, tmp_path: Path) -> None:
    settings = settings_for(fresh, "sqlite://").model_copy(update={"secret_blocks": {"jira.api_token": "jira-token"}})
    fresh.apps["jira"].expire_credentials()
    error = _pull("jira", settings, load_mapping(DEFAULT_MAPPING), tmp_path)
    text = _clean(explain(error, FailureContext("sync", settings)), fresh)
    assert "Prefect Secret block `jira-token` (ACCORD_JIRA__API_TOKEN_BLOCK)" in text


def test_an_expired_salesforce_session_names_the_auth_setting(fresh: Sandbox, tmp_path: Path) -> None:
    settings = settings_for(fresh, "sqlite://")
    assert settings.salesforce is not None
    settings = settings.model_copy(update={"salesforce": settings.salesforce.model_copy(update={"auth": "session"})})
    fresh.apps["salesforce"].expire_credentials()  # every session issued so far ends
    error = _pull("salesforce", settings, load_mapping(DEFAULT_MAPPING), tmp_path)
    message = explain(error, FailureContext("sync", settings))
    text = _clean(message, fresh)
    assert "`ACCORD_SALESFORCE__AUTH` (now `session`)" in text and "ACCORD_SALESFORCE__SESSION_ID" in text


def test_a_wrong_salesforce_password_names_the_login_settings(fresh: Sandbox, tmp_path: Path) -> None:
    settings = settings_for(fresh, "sqlite://")
    assert settings.salesforce is not None
    wrong = settings.salesforce.model_copy(update={"password": SecretStr("not-the-password")})
    settings = settings.model_copy(update={"salesforce": wrong})
    error = _pull("salesforce", settings, load_mapping(DEFAULT_MAPPING), tmp_path)
    text = _clean(explain(error, FailureContext("sync", settings)), fresh)
    for variable in ("USERNAME", "PASSWORD", "SECURITY_TOKEN", "CONSUMER_KEY", "CONSUMER_SECRET"):
        assert f"`ACCORD_SALESFORCE__{variable}`" in text
    assert "not-the-password" not in text


def test_an_expired_google_token_without_refresh_names_the_token_settings(fresh: Sandbox, tmp_path: Path) -> None:
    settings = settings_for(fresh, "sqlite://")
    assert settings.google_calendar is not None
    token_only = settings.google_calendar.model_copy(
        update={"refresh_token": None, "client_id": None, "client_secret": None}
    )
    settings = settings.model_copy(update={"google_calendar": token_only})
    fresh.apps["google_calendar"].expire_credentials()
    error = _pull("google_calendar", settings, load_mapping(DEFAULT_MAPPING), tmp_path)
    text = _clean(explain(error, FailureContext("sync", settings)), fresh)
    assert "`ACCORD_GOOGLE_CALENDAR__TOKEN`" in text and "ACCORD_GOOGLE_CALENDAR__REFRESH_TOKEN" in text


# -- the mapping against the org ---------------------------------------------------------------------------
def test_a_salesforce_field_missing_in_the_org_names_the_mapping_key_line_and_field(
    fresh: Sandbox, tmp_path: Path
) -> None:
    path = _mapping_file(tmp_path, ("jira_project: Jira_Project_Key__c", "jira_project: Jira_Key_Missing__c"))
    settings = settings_for(fresh, "sqlite://")
    mapping = load_mapping(path)
    error = _pull("salesforce", settings, mapping, tmp_path)
    message = explain(error, FailureContext("sync", settings, mapping, str(path)))
    text = _clean(message, fresh)
    line = _line_of(path, "Jira_Key_Missing__c")
    assert f"mapping key `salesforce.opportunities.fields.jira_project` ({path} line {line})" in text
    assert "Opportunity.Jira_Key_Missing__c" in message.what
    assert "Object Manager → Opportunity" in text


def test_a_salesforce_object_missing_in_the_org_names_its_mapping_key(fresh: Sandbox, tmp_path: Path) -> None:
    path = _mapping_file(tmp_path, ("object: Task", "object: Accord_Reminder__c"))
    settings = settings_for(fresh, "sqlite://")
    mapping = load_mapping(path)
    error = _pull("salesforce", settings, mapping, tmp_path)
    text = _clean(explain(error, FailureContext("sync", settings, mapping, str(path))), fresh)
    assert f"`salesforce.reminders.object` ({path} line {_line_of(path, 'Accord_Reminder__c')})" in text


def test_a_jira_custom_field_unknown_to_the_site_names_the_mapping_key(fresh: Sandbox, tmp_path: Path) -> None:
    """Jira's search ignores unknown ids in ``fields`` (the attribute just stays empty); a query that
    names the field is refused with a 400 naming it. That 400, from the sandbox, is explained."""
    path = _mapping_file(
        tmp_path,
        ("  lookback_seconds: 120\n", "  lookback_seconds: 120\n  extra_fields: {story_points: customfield_99999}\n"),
    )
    settings = settings_for(fresh, "sqlite://")
    assert settings.jira is not None
    mapping = load_mapping(path)
    connector = JiraConnector(settings.jira, mapping)
    try:
        error = _failure(
            lambda: list(
                connector.search_pages(
                    "cf[99999] is not EMPTY", fields=["id"], page_size=10, reconcile=[], what="search issues"
                )
            )
        )
    finally:
        connector.close()
    assert isinstance(error, ConnectorError) and error.status == 400
    message = explain(error, FailureContext("sync", settings, mapping, str(path)))
    text = _clean(message, fresh)
    assert "`cf[99999]`" in message.what
    line = _line_of(path, "customfield_99999")
    assert f"mapping key `jira.extra_fields.story_points` ({path} line {line}) = `customfield_99999`" in text


def test_a_listed_calendar_that_does_not_exist_names_its_entry(fresh: Sandbox, tmp_path: Path) -> None:
    path = _mapping_file(
        tmp_path, ("calendars: internal ", "calendars: listed\n  calendar_ids: [gone@agency.example]\n ")
    )
    settings = settings_for(fresh, "sqlite://")
    mapping = load_mapping(path)
    error = _pull("google_calendar", settings, mapping, tmp_path)
    text = _clean(explain(error, FailureContext("sync", settings, mapping, str(path))), fresh)
    assert f"`google_calendar.calendar_ids[0]` ({path} line {_line_of(path, 'gone@agency.example')})" in text
    assert "shared with the connector's account" in text


# -- pace and reach ------------------------------------------------------------------------------------------
def test_rate_limits_that_outlast_the_retries_name_the_budget_and_retry_settings(
    fresh: Sandbox, tmp_path: Path
) -> None:
    fresh.apps["jira"].faults.configure(rate_429=1.0, retry_after_s=0)
    settings = settings_for(fresh, "sqlite://")
    error = _pull("jira", settings, load_mapping(DEFAULT_MAPPING), tmp_path)
    text = _clean(explain(error, FailureContext("sync", settings)), fresh)
    assert "kept throttling" in text
    assert "`ACCORD_BUDGET__JIRA_PER_SECOND`" in text and "`ACCORD_JIRA__RETRY__MAX_ATTEMPTS` (now 8)" in text


def test_an_unreachable_api_names_its_url_setting(fresh: Sandbox, tmp_path: Path) -> None:
    settings = settings_for(fresh, "sqlite://")
    assert settings.jira is not None
    nowhere = settings.jira.model_copy(update={"server": "http://127.0.0.1:9"})
    settings = settings.model_copy(update={"jira": nowhere})
    error = _pull("jira", settings, load_mapping(DEFAULT_MAPPING), tmp_path)
    text = _clean(explain(error, FailureContext("sync", settings)), fresh)
    assert "could not be reached" in text and "`ACCORD_JIRA__SERVER` (now http://127.0.0.1:9)" in text


# -- settings, mapping file, budget, the unexpected ------------------------------------------------------
def test_missing_connection_settings_name_the_variables() -> None:
    settings = AccordSettings(database_url="sqlite://")
    error = _failure(lambda: build_connector("jira", settings, load_mapping(DEFAULT_MAPPING)))
    assert isinstance(error, MissingSettingsError)
    message = explain(error, FailureContext("sync", settings), source="jira")
    assert message.where == "jira" and "ACCORD_JIRA__API_TOKEN" in message.text()


def test_invalid_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCORD_JIRA__EMAIL", "accord@agency.example")
    monkeypatch.setenv("ACCORD_JIRA__API_TOKEN", "a-secret-token")
    error = _failure(lambda: AccordSettings(database_url="sqlite://"))
    assert isinstance(error, ValidationError)
    text = explain(error, FailureContext("sync")).text()
    assert "`ACCORD_JIRA__SERVER`: Field required" in text and "a-secret-token" not in text
    assert "nothing was read or written" in text


def test_a_broken_mapping_file_lists_its_lines(tmp_path: Path) -> None:
    path = _mapping_file(tmp_path, ("lookback_seconds: 300", "lookback_seconds: soon"))
    error = _failure(lambda: load_mapping(path))
    assert isinstance(error, MappingError)
    message = explain(error, FailureContext("sync", mapping_path=str(path)))
    assert message.where == "mapping" and f"line {_line_of(path, 'soon')}:" in message.text()


def test_secret_block_and_budget_failures_name_what_to_check() -> None:
    block = explain(SecretBlockError("jira", "api_token", "jira-token", "no such block"), FailureContext())
    assert "`ACCORD_JIRA__API_TOKEN_BLOCK` (now `jira-token`)" in block.text()
    budget = explain(BudgetUnavailableError("google_calendar", "waited longer than 600 s"), FailureContext())
    assert "accord-api-google-calendar" in budget.text() and "ACCORD_BUDGET__WAIT_TIMEOUT_S" in budget.text()


def test_a_target_report_keeps_the_first_failures_and_counts_them_all() -> None:
    report = TargetReport("salesforce")
    for n in range(FAILURES_KEPT + 50):
        report.fail(f"k{n}", "REQUIRED_FIELD_MISSING", refused=n % 2 == 0, retriable=n % 4 != 0)
    report.fail("whole", "401 Unauthorized")
    assert len(report.failures) == FAILURES_KEPT and report.failures[0] == ("k0", "REQUIRED_FIELD_MISSING")
    assert (report.failed, report.refused, report.refused_final) == (FAILURES_KEPT + 51, 125, 63)


def test_an_unexpected_error_is_named_by_its_type_only() -> None:
    message = explain(KeyError("jane.doe@client.example"), FailureContext("sync"), source="jira")
    assert "KeyError" in message.what and "jane.doe" not in failure_text("sync", [message])


# -- refused writes ----------------------------------------------------------------------------------------
def test_writes_refused_for_a_missing_field_name_the_push_mapping_key_and_record_keys(
    fresh: Sandbox, tmp_path: Path
) -> None:
    path = _mapping_file(tmp_path, ("health: Accord_Health__c", "health: Accord_Helth__c"))
    store = Store(f"sqlite:///{tmp_path / 'push.sqlite'}")
    store.create_all()
    try:
        settings = settings_for(fresh, store.url)
        assert not run_sync(settings, load_mapping(DEFAULT_MAPPING), store, full=True).failed
        mapping = load_mapping(path)
        report = push(store, settings, mapping, path)
        sf = report.targets["salesforce"]
        failures = sf.failures
        assert failures and report.targets["jira"].failed == 0
        retriable = {i.key: i.retriable for i in store.outbox.items(state="failed")}
        assert store.outbox.retriable([key for key, _ in failures]) == retriable
    finally:
        store.dispose()
    assert sf.refused == sf.failed == len(failures) and sf.refused_final == sum(not r for r in retriable.values())
    writes = [FailedWrite("salesforce", key, error, retriable[key]) for key, error in failures]
    context = FailureContext("push", settings, mapping, str(path))
    message = explain_failed_writes("salesforce", writes, context)
    # A report keeps the first failures only; the counts say how many there were.
    first = explain_failed_writes("salesforce", writes[:1], context, total=sf.refused, final=sf.refused_final)
    assert first.what == message.what and first.kept == message.kept
    text = _clean(message, fresh)
    line = _line_of(path, "Accord_Helth__c")
    assert f"`push.salesforce.status_fields.health` ({path} line {line}) = `Accord_Helth__c`" in text
    assert "`Opportunity.Accord_Helth__c`" in text and f"{len(writes)} writes to Salesforce failed" in text
    assert "not retried automatically" in message.kept
    markdown = failure_markdown("Accord push failed", [message], writes)
    for write in writes:
        assert f"`{write.key}`" in markdown


# -- whole flow runs: the state message, the artifact, the log ----------------------------------------------
@pytest.fixture
def flow_env(fresh: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Sandbox:
    monkeypatch.setenv("ACCORD_SANDBOX_CONTROL", str(fresh.info()["control"]))
    monkeypatch.setenv("ACCORD_DATABASE_URL", f"sqlite:///{tmp_path / 'flow.sqlite'}")
    monkeypatch.setenv("ACCORD_MAPPING", str(DEFAULT_MAPPING))
    return fresh


async def _run_outputs(flow_run_id: UUID) -> tuple[str, str]:
    """The ``accord-failure`` artifact and the log of a flow run (its task runs' included)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    await APILogHandler.aflush()
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["accord-failure"]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
            )
        )
        logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    assert len(artifacts) == 1
    return str(artifacts[0].data), "\n".join(log.message for log in logs)


def _failed_run(state: object, sandbox: Sandbox) -> tuple[str, str, str]:
    from prefect.client.schemas.objects import State

    assert isinstance(state, State) and state.is_failed()
    assert state.state_details.flow_run_id is not None
    artifact, logs = asyncio.run(_run_outputs(state.state_details.flow_run_id))
    message = state.message or ""
    for secret in sandbox.credentials.secret_values():
        assert secret not in message and secret not in artifact and secret not in logs
    return message, artifact, logs


def test_a_sync_with_a_revoked_token_fails_saying_which_variable(prefect_api: None, flow_env: Sandbox) -> None:
    from flows.sync import sync_flow

    flow_env.apps["jira"].expire_credentials()
    state = sync_flow(full=True, return_state=True)
    message, artifact, logs = _failed_run(state, flow_env)
    assert "Accord sync failed: jira: Jira did not accept Accord's credentials" in message
    assert "`ACCORD_JIRA__API_TOKEN`" in message and "the sources that could be pulled were stored" in message
    assert "| jira | Jira did not accept" in artifact and "ACCORD_JIRA__API_TOKEN" in artifact
    assert "ACCORD_JIRA__API_TOKEN" in logs


def test_a_sync_with_a_field_missing_in_the_org_fails_naming_the_mapping_key(
    prefect_api: None, flow_env: Sandbox, tmp_path: Path
) -> None:
    from flows.sync import sync_flow

    path = _mapping_file(tmp_path, ("jira_project: Jira_Project_Key__c", "jira_project: Jira_Key_Missing__c"))
    state = sync_flow(full=True, mapping_path=str(path), return_state=True)
    message, artifact, _ = _failed_run(state, flow_env)
    line = _line_of(path, "Jira_Key_Missing__c")
    assert f"`salesforce.opportunities.fields.jira_project` ({path} line {line})" in message
    assert "Opportunity.Jira_Key_Missing__c" in artifact


def test_a_sync_whose_secret_block_is_missing_fails_naming_the_block_variable(
    prefect_api: None, flow_env: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.sync import sync_flow

    monkeypatch.delenv("ACCORD_SANDBOX_CONTROL")
    monkeypatch.setenv("ACCORD_JIRA__SERVER", "https://acme.atlassian.net")
    monkeypatch.setenv("ACCORD_JIRA__EMAIL", "accord@agency.example")
    monkeypatch.setenv("ACCORD_JIRA__API_TOKEN_BLOCK", "accord-test-no-such-block")
    message, artifact, _ = _failed_run(sync_flow(return_state=True), flow_env)
    assert "ACCORD_JIRA__API_TOKEN_BLOCK" in message and "accord-test-no-such-block" in message
    assert "nothing was read or written" in message and "| settings |" in artifact


def test_a_push_with_a_field_missing_in_the_org_lists_the_refused_records(
    prefect_api: None, flow_env: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.push import push_flow
    from flows.sync import sync_flow

    sync_flow(full=True)
    path = _mapping_file(tmp_path, ("health: Accord_Health__c", "health: Accord_Helth__c"))
    monkeypatch.setenv("ACCORD_MAPPING", str(path))
    message, artifact, logs = _failed_run(push_flow(return_state=True), flow_env)
    assert "Accord push failed: push → salesforce:" in message
    assert "`push.salesforce.status_fields.health`" in message
    assert "## Failed writes" in artifact and "| salesforce | `status-" in artifact
    assert "Accord_Helth__c" in logs
