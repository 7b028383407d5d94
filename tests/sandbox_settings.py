"""Accord settings pointed at an in-process sandbox, with retries that do not wait."""

from __future__ import annotations

from accord.settings import AccordSettings
from connectors.retry import RetrySettings
from sandbox.app import Sandbox
from sandbox.jira.app import JiraApp

FAST = RetrySettings(max_attempts=8, base_wait_s=0.0, max_wait_s=0.05)


def settings_for(sandbox: Sandbox, url: str) -> AccordSettings:
    s = AccordSettings(database_url=url).with_sandbox(sandbox.info())
    assert s.salesforce and s.jira and s.google_calendar
    return s.model_copy(
        update={
            "salesforce": s.salesforce.model_copy(update={"retry": FAST}),
            "jira": s.jira.model_copy(update={"retry": FAST}),
            "google_calendar": s.google_calendar.model_copy(update={"retry": FAST}),
        }
    )


def jira_app(sandbox: Sandbox) -> JiraApp:
    """The sandbox's Jira emulator, as its own type (``expire_credentials`` and the like)."""
    app = sandbox.apps["jira"]
    assert isinstance(app, JiraApp)
    return app


def reset_sandbox(sandbox: Sandbox) -> None:
    """Faults off and credentials back, after a test that changed them."""
    for app in sandbox.apps.values():
        app.faults.reset()
    jira_app(sandbox).restore_credentials()
