"""Accord's settings: environment variables (``ACCORD_...``, nested with ``__``) or a sandbox.

Examples: ``ACCORD_DATABASE_URL=postgresql+psycopg2://...``, ``ACCORD_JIRA__SERVER=https://acme.atlassian.net``,
``ACCORD_JIRA__API_TOKEN=...``, ``ACCORD_SALESFORCE__AUTH=client_credentials``. With
``ACCORD_SANDBOX_CONTROL`` set (the ``control`` URL that ``accord sandbox up`` prints), the API
settings come from the running sandbox instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from connectors.settings import GoogleCalendarSettings, JiraSettings, SalesforceSettings
from store import default_database_url

DEFAULT_MAPPING = Path(__file__).resolve().parent.parent / "mappings" / "default.yaml"


class AccordSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ACCORD_", env_nested_delimiter="__", extra="forbid", frozen=True)

    database_url: str = Field(default_factory=default_database_url)
    mapping: Path = Field(default=DEFAULT_MAPPING, description="The mapping YAML")
    sandbox_control: str | None = Field(default=None, description="Control URL of a running sandbox")
    salesforce: SalesforceSettings | None = None
    jira: JiraSettings | None = None
    google_calendar: GoogleCalendarSettings | None = None

    def with_sandbox(self, info: dict[str, Any]) -> AccordSettings:
        """These settings pointed at a sandbox described by ``info`` (``accord sandbox up`` output)."""
        sf, jira, gc = info["salesforce"], info["jira"], info["google_calendar"]
        ca = info.get("ca_cert")
        return self.model_copy(
            update={
                "salesforce": SalesforceSettings(
                    # OAuth password flow: a session that expires is renewed by logging in again.
                    auth="oauth_password",
                    login_url=sf["instance_url"],
                    instance_url=sf["instance_url"],
                    session_id=SecretStr(sf["session_id"]),
                    username=sf["username"],
                    password=SecretStr(sf["password"]),
                    security_token=SecretStr(sf["security_token"]),
                    consumer_key=sf["consumer_key"],
                    consumer_secret=SecretStr(sf["consumer_secret"]),
                    ca_cert=ca,
                ),
                "jira": JiraSettings(
                    server=jira["server"],
                    email=jira["email"],
                    api_token=SecretStr(jira["api_token"]),
                    ca_cert=ca,
                ),
                "google_calendar": GoogleCalendarSettings(
                    api_endpoint=gc["api_endpoint"],
                    token=SecretStr(gc["token"]),
                    refresh_token=SecretStr(gc["refresh_token"]) if gc.get("refresh_token") else None,
                    token_uri=gc.get("token_uri"),
                    client_id=gc.get("client_id"),
                    client_secret=SecretStr(gc["client_secret"]) if gc.get("client_secret") else None,
                    ca_cert=ca,
                ),
            }
        )


def load_settings() -> AccordSettings:
    """Settings from the environment; API settings from the sandbox when ACCORD_SANDBOX_CONTROL is set."""
    settings = AccordSettings()
    if settings.sandbox_control:
        from sandbox.client import SandboxControl

        settings = settings.with_sandbox(SandboxControl(settings.sandbox_control).info())
    return settings
