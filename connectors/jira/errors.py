"""The jira library's exceptions mapped to Accord's connector errors (classified once, here).

Messages carry the operation and the HTTP status, never the response body: Jira's error texts
echo JQL values and people (``The value 'jane@client.com' does not exist for the field …``).
"""

from __future__ import annotations

import json

import requests
from jira.exceptions import JIRAError

from connectors.errors import (
    AuthError,
    ConfigError,
    ConnectorError,
    PermanentError,
    RateLimitedError,
    TransientError,
)

SOURCE = "jira"
TRANSIENT_STATUSES = frozenset({408, 500, 502, 503, 504})


def retry_after(exc: JIRAError) -> float | None:
    """Seconds from the ``Retry-After`` header (Jira sends an integer), None when absent or unreadable."""
    headers = getattr(exc.response, "headers", None) or {}
    value = headers.get("Retry-After")
    try:
        return max(0.0, float(int(str(value).strip()))) if value is not None else None
    except ValueError:
        return None


def _classify_http(exc: JIRAError, what: str) -> ConnectorError:
    status = int(exc.status_code or 0)
    text = exc.text or ""
    if status == 401:
        return AuthError(SOURCE, f"{what}: not authenticated (401); check the Jira email and API token", status=401)
    if status == 403:
        return AuthError(SOURCE, f"{what}: permission denied (403) for the API user", status=403)
    if status == 429:
        return RateLimitedError(SOURCE, f"{what}: rate limited (429)", status=429, retry_after=retry_after(exc))
    if status in TRANSIENT_STATUSES or status >= 500:
        return TransientError(SOURCE, f"{what}: server error ({status})", status=status, retry_after=retry_after(exc))
    if status == 400 and "page token" in text:
        return PermanentError(
            SOURCE,
            f"{what}: the search page token expired (400); the next run continues from the last stored page",
            status=400,
        )
    if status == 400:
        return ConfigError(
            SOURCE, f"{what}: Jira rejected the request (400); check the query and the mapping", status=400
        )
    if status == 404:
        return ConfigError(
            SOURCE, f"{what}: not found (404); check the Jira server URL and rest_api_version", status=404
        )
    if status == 410:
        return ConfigError(SOURCE, f"{what}: Jira answered 410 Gone: this API was removed", status=410)
    return PermanentError(SOURCE, f"{what}: Jira answered HTTP {status or 'without a status'}", status=status or None)


def classify(exc: BaseException, what: str) -> ConnectorError:
    """The connector error for ``exc`` raised while doing ``what`` (e.g. "search issues")."""
    if isinstance(exc, ConnectorError):
        return exc
    if isinstance(exc, JIRAError):
        return _classify_http(exc, what)
    if isinstance(exc, requests.exceptions.SSLError):
        return ConfigError(SOURCE, f"{what}: TLS verification failed; check the server URL and ca_cert")
    if isinstance(exc, requests.Timeout | requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
        return TransientError(SOURCE, f"{what}: {type(exc).__name__} talking to Jira")
    if isinstance(exc, json.JSONDecodeError | requests.exceptions.JSONDecodeError):
        return TransientError(SOURCE, f"{what}: unreadable response")
    return PermanentError(SOURCE, f"{what}: {type(exc).__name__}")
