"""Follow-up reminders as events on the owner's own Google Calendar, written exactly once.

Exactly once comes from the event id: ``reminder_event_id(key)`` derives it from the planned
write's idempotency key, and Google lets a client choose an event's id (base32hex, 5-1024
characters, unique per calendar; API-NOTES 3.3). Inserting a reminder that is already there answers
409 ``duplicate``, which is the outcome ``exists``: a write repeated after a crash, a lost answer or
a retried batch finds the first one instead of adding a second.

That includes reminders the owner deleted: Google keeps a deleted event's id reserved (the event
lives on as ``status: cancelled``), so the insert still answers 409 and the writer reports
``exists``. A reminder the owner removed is never recreated; that is deliberate (the owner said no),
and nothing here undeletes it.

Each reminder is a note to the owner alone: no attendees, ``sendUpdates=none`` (nobody is mailed),
``transparency: transparent`` (it does not block the owner's time), one popup at its start, and the
key again in ``extendedProperties.private.accordKey`` so a reader can tell Accord's events apart.

Requests are grouped per calendar and sent through Google batch requests of
``mapping.push.google_calendar.batch_size`` inserts (Google allows 1000 and recommends 50). Each
part answers on its own: 200 created, 409 duplicate exists, rate limits (403/429) and 5xx are sent
again in a follow-up batch holding only those parts, with backoff (``settings.retry``); 404 (the
calendar is unknown or not shared with us) and 400 fail that reminder for good. A batch that fails
as a whole (dropped connection, 5xx on the batch itself) is sent again: the ids make it idempotent.
Credentials that stop working raise ``AuthError`` for the whole call.

googleapiclient's ``service.new_batch_http_request()`` resolves the discovery document's
``batchPath`` against its ``rootUrl``, ignoring ``client_options["api_endpoint"]``: with an
endpoint set, the batch URI is derived from it (``batch_uri``).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import google_auth_httplib2
from googleapiclient.errors import BatchError, HttpError
from googleapiclient.http import BatchHttpRequest

from connectors.base import WriteRequest, WriteResult
from connectors.errors import AuthError, QuotaExhaustedError, TransientError
from connectors.google_calendar.connector import ServicePool
from connectors.google_calendar.credentials import EVENTS_SCOPE
from connectors.google_calendar.errors import SOURCE, classify, reasons
from connectors.retry import call_with_retry
from connectors.settings import GoogleCalendarSettings
from engagement.mapping import Mapping

log = logging.getLogger("accord.connectors.google_calendar.writer")

KIND = "calendar_event"
PROPERTY = "accordKey"  # extendedProperties.private key holding the idempotency key
ID_PREFIX = "acc"
ID_HASH_CHARS = 26  # 130 bits of the key's SHA-256
MAX_PROPERTY_VALUE = 1024  # Google's limit on an extended property value
BATCH_PATH = "batch/calendar/v3"
SCOPES = (EVENTS_SCOPE,)
INSERT = "insert reminder"


def reminder_event_id(key: str) -> str:
    """The Google event id of the reminder planned under ``key``: same key, same id, any process.

    ``acc`` + 26 characters of the base32hex (``0-9a-v``) SHA-256 of the key: 29 characters of
    Google's id alphabet, far inside its 5-1024 length.
    """
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return ID_PREFIX + base64.b32hexencode(digest).decode("ascii").lower()[:ID_HASH_CHARS]


def batch_uri(api_endpoint: str | None) -> str | None:
    """Where batches go for ``api_endpoint`` (None: the library's default, Google's own).

    ``https://host/calendar/v3/`` -> ``https://host/batch/calendar/v3``; a path before
    ``calendar/v3`` (a proxy's prefix) is kept, any other endpoint path uses the origin.
    """
    if not api_endpoint:
        return None
    parts = urlsplit(api_endpoint)
    path = parts.path.rstrip("/")
    prefix = path[: -len("/calendar/v3")] if path.endswith("/calendar/v3") else ""
    return urlunsplit((parts.scheme, parts.netloc, f"{prefix}/{BATCH_PATH}", "", ""))


class PayloadError(ValueError):
    """A calendar_event payload that cannot become an event; the message names the field only."""


def _moment(payload: dict[str, Any], name: str, zone: ZoneInfo) -> datetime:
    value = payload.get(name)
    if not isinstance(value, str):
        raise PayloadError(f"{name} must be an ISO datetime")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise PayloadError(f"{name} must be an ISO datetime") from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


def event_body(key: str, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(calendar id, events.insert body) for one reminder; ``PayloadError`` when it cannot be one."""
    calendar_id = payload.get("calendar_id")
    if not isinstance(calendar_id, str) or not calendar_id:
        raise PayloadError("calendar_id missing")
    summary = payload.get("summary")
    if not isinstance(summary, str):
        raise PayloadError("summary must be text")
    description = payload.get("description", "")
    if not isinstance(description, str):
        raise PayloadError("description must be text")
    zone_name = payload.get("time_zone") or "UTC"
    try:
        zone = ZoneInfo(str(zone_name))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise PayloadError("time_zone unknown") from exc
    start = _moment(payload, "start", zone)
    end = _moment(payload, "end", zone)
    if end < start:
        raise PayloadError("end before start")
    if not key or len(key) > MAX_PROPERTY_VALUE:
        raise PayloadError(f"key must be 1 to {MAX_PROPERTY_VALUE} characters")
    body = {
        "id": reminder_event_id(key),
        "summary": summary,
        "description": description,
        "start": {"dateTime": start.isoformat(), "timeZone": str(zone_name)},
        "end": {"dateTime": end.isoformat(), "timeZone": str(zone_name)},
        "transparency": "transparent",
        "reminders": {"useDefault": False, "overrides": [{"method": "popup", "minutes": 0}]},
        "extendedProperties": {"private": {PROPERTY: key}},
    }
    return calendar_id, body


@dataclass
class _Part:
    """One reminder on its way: where it sits in the call, and what became of it so far."""

    index: int
    key: str
    body: dict[str, Any]
    result: WriteResult | None = None
    status: int = 0  # of the last answer; 401 after googleapiclient's own refresh fails the call
    again: bool = False  # failed in a way worth another batch in this call
    retry_after: float | None = field(default=None, repr=False)

    @property
    def event_id(self) -> str:
        return str(self.body["id"])

    def fail(self, error: str, *, retriable: bool, again: bool, retry_after: float | None = None) -> None:
        self.result = WriteResult(self.key, False, "failed", error=error, retriable=retriable)
        self.again = again
        self.retry_after = retry_after


def _chunks(parts: list[_Part], size: int) -> Iterator[list[_Part]]:
    for start in range(0, len(parts), size):
        yield parts[start : start + size]


class CalendarWriter:
    """Writes ``calendar_event`` reminders; see the module docstring for the guarantees."""

    target = SOURCE

    def __init__(self, settings: GoogleCalendarSettings, mapping: Mapping) -> None:
        self.settings = settings
        self.mapping = mapping
        self.batch_uri = batch_uri(settings.api_endpoint)
        self._services = ServicePool(settings, scopes=SCOPES)
        self._local = threading.local()  # this thread's last service and its events resource

    # -- client ----------------------------------------------------------------------------------------
    def service(self, subject: str | None = None) -> Any:
        """This thread's Calendar service, per delegated user."""
        return self._services.get(subject)

    def _events(self, service: Any) -> Any:
        """``service.events()``, built once for the service this thread used last: googleapiclient
        builds all of a resource's methods (and their docstrings, from the discovery document) each
        time it is asked for one. Only the last service's is kept, so a closed one is not."""
        last = getattr(self._local, "events", None)
        if last is None or last[0] is not service:
            last = self._local.events = (service, service.events())
        return last[1]

    def _subject(self, calendar_id: str) -> str | None:
        return calendar_id if self.settings.delegate_per_calendar else None

    def close(self) -> None:
        self._services.close()

    # -- writes ----------------------------------------------------------------------------------------
    def write(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        results: list[WriteResult | None] = [None] * len(requests)
        calendars: dict[str, list[_Part]] = {}
        for index, request in enumerate(requests):
            if request.kind != KIND:
                results[index] = WriteResult(request.key, False, "failed", error=f"unsupported kind {request.kind!r}")
                continue
            try:
                calendar_id, body = event_body(request.key, request.payload)
            except PayloadError as exc:
                results[index] = WriteResult(request.key, False, "failed", error=f"invalid {KIND} payload: {exc}")
                continue
            calendars.setdefault(calendar_id, []).append(_Part(index, request.key, body))
        for calendar_id, parts in calendars.items():
            self._write_calendar(calendar_id, parts)
            for part in parts:
                results[part.index] = part.result
        done = [r for r in results if r is not None]
        assert len(done) == len(requests), "every request has a result"
        return done

    def _write_calendar(self, calendar_id: str, parts: list[_Part]) -> None:
        service = self.service(self._subject(calendar_id))
        size = self.mapping.push.google_calendar.batch_size
        batches = 0
        for chunk in _chunks(parts, size):
            batches += self._send_chunk(service, calendar_id, chunk)
        outcomes: dict[str, int] = {}
        for part in parts:
            outcome = part.result.outcome if part.result else "failed"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        log.info("calendar %s: %d reminders in %d batch calls: %s", calendar_id, len(parts), batches, outcomes)

    def _send_chunk(self, service: Any, calendar_id: str, chunk: list[_Part]) -> int:
        """One batch for ``chunk``, then follow-up batches of the parts worth another try."""
        calls = 0

        def attempt() -> None:
            nonlocal calls
            pending = [p for p in chunk if p.result is None or p.again]
            for part in pending:
                part.result, part.status, part.again, part.retry_after = None, 0, False, None
            calls += 1
            try:
                self._execute(service, calendar_id, pending)
            except TransientError as exc:
                for part in pending:
                    if part.result is None:
                        part.fail(str(exc), retriable=True, again=True, retry_after=exc.retry_after)
                raise
            if any(p.status == 401 for p in pending):
                raise AuthError(
                    SOURCE,
                    f"{INSERT}: the access token was refused and could not be renewed",
                    status=401,
                )
            again = [p for p in pending if p.again]
            if again:
                waits = [p.retry_after for p in again if p.retry_after is not None]
                raise TransientError(
                    SOURCE,
                    f"{INSERT}: {len(again)} of {len(pending)} parts throttled or failed",
                    retry_after=max(waits) if waits else None,
                )

        try:
            call_with_retry(self.settings.retry, attempt, api=SOURCE)
        except TransientError as exc:
            log.warning("calendar %s: giving up on a batch for now: %s", calendar_id, exc)
        return calls

    def _execute(self, service: Any, calendar_id: str, pending: list[_Part]) -> None:
        """One batch call; each part's answer lands on the part, a whole-batch failure is raised."""
        by_id = {str(n): part for n, part in enumerate(pending)}

        def answer(request_id: str, response: Any, exception: HttpError | None) -> None:
            self._settle(by_id[request_id], response, exception)

        if self.batch_uri is None:
            batch = service.new_batch_http_request(callback=answer)
        else:
            batch = BatchHttpRequest(callback=answer, batch_uri=self.batch_uri)
        http: Any = None  # the service's AuthorizedHttp, which every request it builds carries
        events = self._events(service)
        for request_id, part in by_id.items():
            insert = events.insert(calendarId=calendar_id, body=part.body, sendUpdates="none")
            http = insert.http
            # Parts without an http carry no Authorization of their own and inherit the outer
            # request's (Google's batch guide: outer headers apply to every part unless a part sets
            # them). So the one refresh AuthorizedHttp makes on a 401 covers them all; with their own
            # header they would be sent with the stale token, answer 401 again, and googleapiclient
            # would refresh a second time, on a connection it never closes.
            insert.http = None
            batch.add(insert, request_id=request_id)
        try:
            self._authorize(http)
            batch.execute(http=http)
        except BatchError as exc:  # an unreadable multipart answer (e.g. a proxy's page): resend
            raise TransientError(SOURCE, f"{INSERT}: unreadable batch response") from exc
        except Exception as exc:
            raise classify(exc, f"{INSERT} batch") from exc

    @staticmethod
    def _authorize(http: Any) -> None:
        """A first (or renewed) access token, fetched on the service's own connection.

        ``BatchHttpRequest.execute`` fetches a missing token itself, but on a throwaway
        ``httplib2.Http`` it never closes; a service account starts without one.
        """
        credentials = http.credentials
        if not credentials.valid:
            credentials.refresh(google_auth_httplib2.Request(http.http))

    @staticmethod
    def _settle(part: _Part, response: Any, exception: HttpError | None) -> None:
        if exception is None:
            part.status = 200
            target_id = response.get("id") if isinstance(response, dict) else None
            part.result = WriteResult(part.key, True, "created", target_id=str(target_id or part.event_id))
            return
        status = part.status = int(exception.status_code or 0)
        if status == 409:
            if "duplicate" in reasons(exception):
                # Ours from an earlier attempt (the id is derived from the key), possibly deleted by
                # the owner since: Google keeps the id reserved and so do we.
                part.result = WriteResult(part.key, True, "exists", target_id=part.event_id)
            else:  # "conflict": Google asks to retry the part
                part.fail(f"{SOURCE}: {INSERT}: conflict", retriable=True, again=True)
            return
        error = classify(exception, INSERT)
        if isinstance(error, TransientError):
            part.fail(str(error), retriable=True, again=True, retry_after=error.retry_after)
        elif isinstance(error, QuotaExhaustedError):
            part.fail(str(error), retriable=True, again=False)  # a daily quota: next run, not now
        else:  # 404 calendar, 400 invalid, 403 not allowed on this calendar
            part.fail(str(error), retriable=False, again=False)
