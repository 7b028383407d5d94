"""Credentials the sandbox issues: fresh random values on every start, never written to fixtures."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field


def _token(prefix: str, nbytes: int = 24) -> str:
    return f"{prefix}{secrets.token_urlsafe(nbytes)}"


@dataclass(frozen=True)
class SalesforceCredentials:
    username: str = "integration@agency.example.sandbox"
    password: str = field(default_factory=lambda: _token("pw-", 12))
    security_token: str = field(default_factory=lambda: _token("st", 12))
    consumer_key: str = field(default_factory=lambda: _token("3MVG9", 30))
    consumer_secret: str = field(default_factory=lambda: _token("", 32))
    # The session printed by `accord sandbox up`; later logins get sessions of their own.
    session_id: str = field(default_factory=lambda: "00D5g000004SbXE!" + secrets.token_urlsafe(48))


@dataclass(frozen=True)
class JiraCredentials:
    email: str = "accord-bot@agency.example"
    api_token: str = field(default_factory=lambda: _token("ATATT3x", 32))


@dataclass(frozen=True)
class GoogleCredentials:
    token: str = field(default_factory=lambda: _token("ya29.", 40))
    refresh_token: str = field(default_factory=lambda: _token("1//", 32))
    client_id: str = "accord-sandbox.apps.googleusercontent.com"
    client_secret: str = field(default_factory=lambda: _token("GOCSPX-", 20))


@dataclass(frozen=True)
class SandboxCredentials:
    salesforce: SalesforceCredentials = field(default_factory=SalesforceCredentials)
    jira: JiraCredentials = field(default_factory=JiraCredentials)
    google: GoogleCredentials = field(default_factory=GoogleCredentials)

    def secret_values(self) -> list[str]:
        """Every secret string, for leak scans of logs and artifacts."""
        sf, j, g = self.salesforce, self.jira, self.google
        return [
            sf.password,
            sf.security_token,
            sf.consumer_secret,
            sf.session_id,
            j.api_token,
            g.token,
            g.refresh_token,
            g.client_secret,
        ]
