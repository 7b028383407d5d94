"""Google's JSON error bodies, as ``googleapiclient.errors.HttpError`` reads them.

The client takes ``error.message`` as ``HttpError.reason`` and ``error.errors`` as
``error_details``; its retry logic reads ``error.errors[0].reason`` (rateLimitExceeded,
userRateLimitExceeded). Texts marked [DOC] are quoted from Google's documentation; the others are
modelled on it (API-NOTES section 5 lists what could not be verified).
"""

from __future__ import annotations

from typing import Any

AUTH_MESSAGE = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
    "other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
MISSING_AUTH_MESSAGE = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)


class CalendarError(Exception):
    """An API error: raised by the store and the app, answered as Google's error body."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        domain: str = "global",
        location: str | None = None,
        location_type: str | None = None,
        status: str | None = None,
    ) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.domain = domain
        self.location = location
        self.location_type = location_type
        self.status = status

    def body(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"domain": self.domain, "reason": self.reason, "message": self.message}
        if self.location_type is not None:
            detail["locationType"] = self.location_type
        if self.location is not None:
            detail["location"] = self.location
        error: dict[str, Any] = {"errors": [detail], "code": self.code, "message": self.message}
        if self.status is not None:
            error["status"] = self.status
        return {"error": error}


def not_found() -> CalendarError:
    return CalendarError(404, "notFound", "Not Found")


def bad_request(message: str = "Bad Request") -> CalendarError:
    return CalendarError(400, "badRequest", message)


def invalid(message: str, *, location: str | None = None) -> CalendarError:
    return CalendarError(400, "invalid", message, location=location, location_type="parameter" if location else None)


def required(message: str, *, location: str | None = None) -> CalendarError:
    return CalendarError(400, "required", message, location=location)


def invalid_parameter(name: str, value: str) -> CalendarError:
    return CalendarError(
        400,
        "invalidParameter",
        f"Invalid value '{value[:60]}' for parameter {name}.",
        location=name,
        location_type="parameter",
    )


def time_range_empty(location: str = "timeMax") -> CalendarError:
    """[DOC] events.list with timeMax <= timeMin, or an event whose end precedes its start."""
    return CalendarError(
        400,
        "timeRangeEmpty",
        "The specified time range is empty.",
        domain="calendar",
        location=location,
        location_type="parameter",
    )


def full_sync_required() -> CalendarError:
    """[DOC] a sync token that expired or was invalidated: the client must wipe and resync."""
    return CalendarError(
        410,
        "fullSyncRequired",
        "Sync token is no longer valid, a full sync is required.",
        domain="calendar",
    )


def updated_min_too_long_ago() -> CalendarError:
    """[DOC] updatedMin further back than the server keeps deletions."""
    return CalendarError(
        410,
        "updatedMinTooLongAgo",
        "The requested minimum modification time lies too far in the past.",
        domain="calendar",
    )


def deleted() -> CalendarError:
    return CalendarError(410, "deleted", "Resource has been deleted")


def duplicate() -> CalendarError:
    return CalendarError(409, "duplicate", "The requested identifier already exists.")


def unauthenticated(*, missing: bool = False) -> CalendarError:
    if missing:
        return CalendarError(
            401,
            "required",
            MISSING_AUTH_MESSAGE,
            location="Authorization",
            location_type="header",
            status="UNAUTHENTICATED",
        )
    return CalendarError(
        401,
        "authError",
        AUTH_MESSAGE,
        location="Authorization",
        location_type="header",
        status="UNAUTHENTICATED",
    )


def unauthenticated_body(*, missing: bool = False) -> dict[str, Any]:
    """The 401 body in the field order Google sends (code, message, errors, status)."""
    err = unauthenticated(missing=missing)
    detail = {
        "message": "Login Required." if missing else "Invalid Credentials",
        "domain": "global",
        "reason": err.reason,
        "location": "Authorization",
        "locationType": "header",
    }
    return {"error": {"code": 401, "message": err.message, "errors": [detail], "status": "UNAUTHENTICATED"}}


def rate_limited(*, status: int = 429) -> dict[str, Any]:
    """429 rateLimitExceeded, or the 403 userRateLimitExceeded Google also uses for per-user quota."""
    if status == 403:
        return {
            "error": {
                "errors": [
                    {
                        "domain": "usageLimits",
                        "reason": "userRateLimitExceeded",
                        "message": "Rate Limit Exceeded",
                    }
                ],
                "code": 403,
                "message": "Rate Limit Exceeded",
            }
        }
    return {
        "error": {
            "code": 429,
            "message": "Rate Limit Exceeded",
            "errors": [{"message": "Rate Limit Exceeded", "domain": "usageLimits", "reason": "rateLimitExceeded"}],
            "status": "RESOURCE_EXHAUSTED",
        }
    }


def backend_error(status: int) -> dict[str, Any]:
    message = "Backend Error" if status != 503 else "The service is currently unavailable."
    return {
        "error": {
            "errors": [{"domain": "global", "reason": "backendError", "message": message}],
            "code": status,
            "message": message,
        }
    }
