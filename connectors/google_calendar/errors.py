"""google-api-python-client's and google-auth's exceptions mapped to Accord's connector errors.

Classified once, here. Google's error body names a ``reason`` per error (API-NOTES 3.4); it is
read from ``HttpError.error_details``, never from the raw ``content`` (which may echo contact data).
"""

from __future__ import annotations

import http.client
import json
import ssl
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httplib2
from google.auth import exceptions as auth_exceptions
from googleapiclient.errors import HttpError

from connectors.errors import (
    AuthError,
    ConfigError,
    ConnectorError,
    PermanentError,
    QuotaExhaustedError,
    RateLimitedError,
    TransientError,
)

SOURCE = "google_calendar"
RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
QUOTA_REASONS = frozenset({"quotaExceeded", "dailyLimitExceeded"})


class FullSyncRequiredError(PermanentError):
    """410 ``fullSyncRequired``: the sync token expired or was invalidated; sync the calendar afresh."""


def reasons(exc: HttpError) -> frozenset[str]:
    """The ``reason`` of every entry of Google's ``error.errors`` list."""
    details: Any = exc.error_details
    if not isinstance(details, list):
        return frozenset()
    return frozenset(str(d["reason"]) for d in details if isinstance(d, dict) and d.get("reason"))


def retry_after(exc: HttpError) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), if the answer had one."""
    value = exc.resp.get("retry-after") if exc.resp is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _classify_http(exc: HttpError, what: str) -> ConnectorError:
    status = int(exc.status_code or 0)
    why = reasons(exc)
    named = ",".join(sorted(why)) or str(status)
    if status == 410 and "fullSyncRequired" in why:
        return FullSyncRequiredError(SOURCE, f"{what}: sync token no longer valid", status=410)
    if status in (403, 429) and (why & RATE_LIMIT_REASONS or status == 429):
        return RateLimitedError(SOURCE, f"{what}: throttled ({named})", status=status, retry_after=retry_after(exc))
    if status == 403 and why & QUOTA_REASONS:
        return QuotaExhaustedError(SOURCE, f"{what}: Calendar API quota used up ({named})", status=403)
    if status in (401, 403):
        return AuthError(
            SOURCE, f"{what}: not allowed ({named}); check the credentials and their scopes", status=status
        )
    if status == 404:
        return ConfigError(
            SOURCE,
            f"{what}: not found; check the calendar id and that it is shared with the connector's account",
            status=404,
        )
    if status >= 500 or status == 408:
        return TransientError(SOURCE, f"{what}: server error {status} ({named})", status=status)
    return PermanentError(SOURCE, f"{what}: HTTP {status} ({named})", status=status)


def classify(exc: BaseException, what: str) -> ConnectorError:
    """The connector error for ``exc`` raised while doing ``what`` (e.g. "list events of X")."""
    if isinstance(exc, ConnectorError):
        return exc
    if isinstance(exc, HttpError):
        return _classify_http(exc, what)
    if isinstance(exc, auth_exceptions.RefreshError):
        # google-auth marks refreshes that failed on a 5xx or a dropped connection as retryable.
        if exc.retryable:
            return TransientError(SOURCE, f"{what}: token refresh failed for now ({type(exc).__name__})")
        return AuthError(
            SOURCE,
            f"{what}: the access token was refused and could not be renewed; "
            "configure refresh_token + client_id/client_secret or a service account",
            status=401,
        )
    if isinstance(exc, auth_exceptions.TransportError):
        return TransientError(SOURCE, f"{what}: token endpoint unreachable")
    if isinstance(exc, auth_exceptions.GoogleAuthError):  # InvalidOperation, DefaultCredentialsError, ...
        return AuthError(SOURCE, f"{what}: credentials unusable ({type(exc).__name__})")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConfigError(SOURCE, f"{what}: TLS certificate not trusted; set ca_cert")
    if isinstance(exc, TimeoutError | ConnectionError | http.client.HTTPException | httplib2.HttpLib2Error):
        return TransientError(SOURCE, f"{what}: {type(exc).__name__} talking to Google Calendar")
    if isinstance(exc, OSError):
        return TransientError(SOURCE, f"{what}: {type(exc).__name__} talking to Google Calendar")
    if isinstance(exc, json.JSONDecodeError):
        return TransientError(SOURCE, f"{what}: unreadable response")
    return PermanentError(SOURCE, f"{what}: {type(exc).__name__}: {exc}")
