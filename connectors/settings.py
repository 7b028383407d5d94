"""Connection settings of the three connectors. Secrets are ``SecretStr``: never printed.

Composed into ``accord.settings.AccordSettings`` (environment variables ``ACCORD_SALESFORCE__...``
and so on) and built directly from ``accord sandbox up`` output for the sandbox.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from connectors.retry import RetrySettings


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SalesforceSettings(_Settings):
    auth: Literal["session", "password", "oauth_password", "client_credentials"] = Field(
        default="session",
        description="session: session_id + instance_url; password: SOAP login with security token; "
        "oauth_password / client_credentials: OAuth2 with a connected app",
    )
    instance_url: str | None = None
    session_id: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    security_token: SecretStr | None = None
    consumer_key: str | None = None
    consumer_secret: SecretStr | None = None
    domain: str = Field(default="login", description="login, test, or your My Domain (e.g. acme.my)")
    login_url: str | None = Field(
        default=None,
        description="Where logins go instead of https://{domain}.salesforce.com (a proxy or the sandbox)",
    )
    api_version: str = "59.0"
    ca_cert: str | None = Field(default=None, description="CA bundle for a private or sandbox certificate")
    timeout_s: float = Field(default=60.0, gt=0)
    concurrency: int = Field(default=4, ge=1, le=25, description="Parallel requests to Salesforce")
    page_size: int = Field(default=2000, ge=200, le=2000, description="Sforce-Query-Options batchSize")
    retry: RetrySettings = Field(default_factory=RetrySettings)

    @model_validator(mode="after")
    def _credentials_for_auth(self) -> SalesforceSettings:
        needed = {
            "session": ("instance_url", "session_id"),
            "password": ("username", "password"),
            "oauth_password": ("username", "password", "consumer_key", "consumer_secret"),
            "client_credentials": ("consumer_key", "consumer_secret"),
        }[self.auth]
        missing = [name for name in needed if getattr(self, name) in (None, "")]
        if missing:
            raise ValueError(f"salesforce auth {self.auth!r} needs {', '.join(missing)}")
        return self


class JiraSettings(_Settings):
    server: str
    email: str
    api_token: SecretStr
    rest_api_version: Literal["2", "3"] = "3"
    ca_cert: str | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    concurrency: int = Field(default=4, ge=1, le=20)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    library_max_retries: int = Field(
        default=0,
        ge=0,
        le=5,
        description="Retries the jira library's own session makes on 429/503/connection errors, with "
        "sleeps of its own (up to 60 s each), before Accord's policy (`retry`) sees the error. 0 keeps "
        "one retry layer: Accord's, which honours Retry-After within retry.max_wait_s",
    )


class GoogleCalendarSettings(_Settings):
    api_endpoint: str | None = Field(
        default=None, description="Override of https://www.googleapis.com/calendar/v3/ (sandbox, proxies)"
    )
    token: SecretStr | None = None
    refresh_token: SecretStr | None = None
    token_uri: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    service_account_file: str | None = Field(
        default=None, description="Service account JSON key with domain-wide delegation"
    )
    subject: str | None = Field(
        default=None,
        description="Service account: the user to act as (domain-wide delegation), e.g. to list calendars",
    )
    delegate_per_calendar: bool = Field(
        default=False,
        description="Service account: act as each calendar's owner (the calendar id) when reading it",
    )
    ca_cert: str | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    concurrency: int = Field(default=4, ge=1, le=20)
    page_size: int = Field(default=2500, ge=1, le=2500)
    retry: RetrySettings = Field(default_factory=RetrySettings)

    @model_validator(mode="after")
    def _some_credential(self) -> GoogleCalendarSettings:
        if not (self.token or self.refresh_token or self.service_account_file):
            raise ValueError("google_calendar needs token, refresh_token (+ client) or service_account_file")
        return self

    @model_validator(mode="after")
    def _complete_credential(self) -> GoogleCalendarSettings:
        if self.refresh_token and not (self.client_id and self.client_secret):
            raise ValueError("google_calendar refresh_token needs client_id and client_secret")
        if (self.subject or self.delegate_per_calendar) and not self.service_account_file:
            raise ValueError("google_calendar subject / delegate_per_calendar need service_account_file")
        return self
