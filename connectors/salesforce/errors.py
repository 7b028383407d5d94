"""simple-salesforce's exceptions mapped to Accord's connector errors (classified once, here)."""

from __future__ import annotations

from typing import Any

import requests
from simple_salesforce import exceptions as sfe

from connectors.errors import (
    AuthError,
    ConfigError,
    ConnectorError,
    PermanentError,
    QuotaExhaustedError,
    RateLimitedError,
    TransientError,
)

SOURCE = "salesforce"
# OAuth 2.0 error codes that mean "try again later" (RFC 6749 section 5.2 and 4.1.2.1).
# SOAP login faults with the same meaning: SERVER_UNAVAILABLE, UNKNOWN_EXCEPTION (Salesforce's 500).
TRANSIENT_LOGIN_CODES = frozenset(
    {
        "server_error",
        "temporarily_unavailable",
        "SERVER_UNAVAILABLE",
        "UNKNOWN_EXCEPTION",
        "REQUEST_LIMIT_EXCEEDED",
    }
)


def _first_error(content: Any) -> tuple[str, str]:
    """(errorCode, message) of Salesforce's JSON error list; never the raw body."""
    if isinstance(content, list) and content and isinstance(content[0], dict):
        first = content[0]
        message = str(first.get("message") or "")
        if "ERROR at Row" in message:  # query errors echo the SOQL, then the reason after the position
            message = message.split("ERROR at Row", 1)[1].partition("\n")[2]
        return str(first.get("errorCode") or first.get("statusCode") or ""), " ".join(message.split())[:300]
    return "", ""


def classify(exc: BaseException, what: str) -> ConnectorError:
    """The connector error for ``exc`` raised while doing ``what`` (e.g. "query Contact")."""
    if isinstance(exc, ConnectorError):
        return exc
    if isinstance(exc, sfe.SalesforceAuthenticationFailed):
        code = exc.code
        if code in TRANSIENT_LOGIN_CODES or (isinstance(code, int) and code >= 500):
            return TransientError(SOURCE, f"{what}: login endpoint unavailable ({code})")
        return AuthError(SOURCE, f"{what}: login failed ({code}); check the Salesforce credentials")
    if isinstance(exc, sfe.SalesforceExpiredSession):
        return AuthError(
            SOURCE,
            f"{what}: session expired or invalid; use password or OAuth auth to renew it automatically",
            status=401,
        )
    if isinstance(exc, sfe.SalesforceRefusedRequest):
        code, message = _first_error(exc.content)
        if code == "REQUEST_LIMIT_EXCEEDED" and "TotalRequests" in message:
            return QuotaExhaustedError(SOURCE, f"{what}: the org's daily API request limit is used up", status=403)
        if code == "REQUEST_LIMIT_EXCEEDED":
            return RateLimitedError(SOURCE, f"{what}: throttled ({message or code})", status=403)
        return AuthError(SOURCE, f"{what}: refused ({code or 403}): {message}", status=403)
    if isinstance(exc, sfe.SalesforceMalformedRequest):
        code, message = _first_error(exc.content)
        if code in ("INVALID_FIELD", "MALFORMED_QUERY", "INVALID_TYPE", "INVALID_QUERY_FILTER_OPERATOR"):
            return ConfigError(SOURCE, f"{what}: {code}: {message} (check the mapping)", status=400)
        if code == "INVALID_QUERY_LOCATOR":
            return PermanentError(
                SOURCE,
                f"{what}: query locator expired; the next run continues from the last stored page",
                status=400,
            )
        return PermanentError(SOURCE, f"{what}: {code or 400}: {message}", status=400)
    if isinstance(exc, sfe.SalesforceResourceNotFound):
        code, message = _first_error(exc.content)
        return ConfigError(SOURCE, f"{what}: not found ({code}): {message}", status=404)
    if isinstance(exc, sfe.SalesforceError):
        status = int(getattr(exc, "status", 0) or 0)
        code, message = _first_error(exc.content)
        if status >= 500 or status in (408, 429):
            return TransientError(SOURCE, f"{what}: server error {status} {code}".strip(), status=status)
        return PermanentError(SOURCE, f"{what}: HTTP {status} {code}: {message}", status=status)
    if isinstance(exc, requests.Timeout | requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
        return TransientError(SOURCE, f"{what}: {type(exc).__name__} talking to Salesforce")
    if isinstance(exc, ValueError) and "JSON" in str(exc):
        return TransientError(SOURCE, f"{what}: unreadable response")
    return PermanentError(SOURCE, f"{what}: {type(exc).__name__}: {exc}")
