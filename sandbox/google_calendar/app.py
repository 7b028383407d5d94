"""Google Calendar v3 over HTTP, as google-api-python-client's shipped discovery document calls it.

Clients point ``client_options={"api_endpoint": base_url + "/calendar/v3/"}`` at the emulator.
Every request needs ``Authorization: Bearer <token>``: the sandbox's token, or one issued by
``POST /token`` (the refresh-token grant google-auth uses); anything else gets Google's 401 and no
data. Route names (``events.list``, ``events.insert``, ``batch``, ...) are the discovery method
names, so tests and benchmarks count calls by them.
"""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from sandbox.clock import Clock
from sandbox.credentials import GoogleCredentials
from sandbox.google_calendar import errors
from sandbox.google_calendar.batch import MAX_PARTS, BatchFormatError, parse_batch, render_batch
from sandbox.google_calendar.errors import CalendarError
from sandbox.google_calendar.store import CalendarStore, EventQuery
from sandbox.google_calendar.times import parse_datetime, zone
from sandbox.http import ApiApp, Request, Response

V3 = "/calendar/v3"
_CAL = r"/calendars/(?P<calendarId>[^/]+)"
_EVENT = _CAL + r"/events/(?P<eventId>[^/]+)"
SCOPE = "https://www.googleapis.com/auth/calendar"
EVENT_TYPES = ("birthday", "default", "focusTime", "fromGmail", "outOfOffice", "workingLocation")
ACCESS_ROLES = ("freeBusyReader", "reader", "writer", "owner")
_NO_EXPIRY = datetime.max


class _Params:
    """Typed access to query parameters, answering Google's 400 for malformed values."""

    def __init__(self, request: Request) -> None:
        self.request = request

    def text(self, name: str) -> str | None:
        return self.request.arg(name)

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.request.arg(name)
        if value is None:
            return default
        if value.lower() not in ("true", "false"):
            raise errors.invalid_parameter(name, value)
        return value.lower() == "true"

    def integer(self, name: str, default: int | None, *, minimum: int = 1) -> int | None:
        value = self.request.arg(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError as exc:
            raise errors.invalid_parameter(name, value) from exc
        if number < minimum:
            raise errors.invalid_parameter(name, value)
        return number

    def moment(self, name: str) -> datetime | None:
        value = self.request.arg(name)
        if value is None:
            return None
        try:
            return parse_datetime(value)
        except ValueError as exc:
            raise errors.bad_request() from exc

    def zone_name(self, name: str) -> str | None:
        value = self.request.arg(name)
        if value is None:
            return None
        try:
            zone(value)
        except ValueError as exc:
            raise errors.invalid_parameter(name, value) from exc
        return value

    def pairs(self, name: str) -> tuple[tuple[str, str], ...]:
        out = []
        for value in self.request.args(name):
            key, sep, wanted = value.partition("=")
            if not sep or not key:
                raise errors.invalid_parameter(name, value)
            out.append((key, wanted))
        return tuple(out)

    def choice(self, name: str, allowed: tuple[str, ...]) -> str | None:
        value = self.request.arg(name)
        if value is not None and value not in allowed:
            raise errors.invalid_parameter(name, value)
        return value


class CalendarApp(ApiApp):
    """The emulator's HTTP surface. Settings a test or the control API may change:

    - ``rate_limit_status``: 429 (default, ``rateLimitExceeded``) or 403 (``userRateLimitExceeded``)
      for injected rate limits; Google uses both.
    - ``access_token_lifetime``: how long tokens issued by ``/token`` stay valid (sandbox clock).
    """

    api_name = "google_calendar"

    def __init__(self, store: CalendarStore, clock: Clock, credentials: GoogleCredentials) -> None:
        super().__init__()
        self.store = store
        self.clock = clock
        self.credentials = credentials
        self.rate_limit_status = 429
        self.access_token_lifetime = timedelta(seconds=3599)
        self._auth_lock = threading.Lock()
        self._tokens: dict[str, datetime] = {credentials.token: _NO_EXPIRY}
        self._batch_parts: Counter[str] = Counter()
        self.add_route("POST", r"/token", "token", self._token, authenticated=False)
        self.add_route("GET", V3 + r"/users/me/calendarList", "calendarList.list", self._api(self._calendar_list))
        self.add_route(
            "GET",
            V3 + r"/users/me/calendarList/(?P<calendarId>[^/]+)",
            "calendarList.get",
            self._api(self._list_entry),
        )
        self.add_route("GET", V3 + _CAL, "calendars.get", self._api(self._calendar))
        self.add_route("GET", V3 + _CAL + "/events", "events.list", self._api(self._events_list))
        self.add_route("POST", V3 + _CAL + "/events", "events.insert", self._api(self._insert))
        self.add_route("GET", V3 + _EVENT, "events.get", self._api(self._get))
        self.add_route("PATCH", V3 + _EVENT, "events.patch", self._api(self._patch))
        self.add_route("PUT", V3 + _EVENT, "events.update", self._api(self._update))
        self.add_route("DELETE", V3 + _EVENT, "events.delete", self._api(self._delete))
        self.add_route("GET", V3 + _EVENT + "/instances", "events.instances", self._api(self._instances))
        self.add_route("POST", r"/batch/calendar/v3", "batch", self._batch)
        self.add_route("POST", r"/batch", "batch", self._batch)

    # -- plumbing ----------------------------------------------------------------------------------
    @staticmethod
    def _api(handler: Callable[[Request], Any]) -> Callable[[Request], Response]:
        def run(request: Request) -> Response:
            try:
                result = handler(request)
            except CalendarError as exc:
                return Response.json(exc.body(), exc.code)
            if result is None:
                return Response.empty(204)
            return Response.json(result)

        return run

    @staticmethod
    def _body(request: Request) -> Any:
        try:
            return request.json()
        except ValueError as exc:
            raise CalendarError(400, "parseError", "Parse Error") from exc

    # -- authentication ------------------------------------------------------------------------------
    def authenticate(self, request: Request) -> Response | None:
        header = request.header("Authorization")
        token: str | None = None
        if header is not None:
            scheme, _, value = header.partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else ""
        else:
            token = request.arg("access_token") or request.arg("oauth_token")
        if not token:
            return self._unauthorized(missing=token is None)
        with self._auth_lock:
            expiry = self._tokens.get(token)
        if expiry is None or (expiry is not _NO_EXPIRY and expiry <= self.clock.now()):
            return self._unauthorized(missing=False)
        return None

    @staticmethod
    def _unauthorized(*, missing: bool) -> Response:
        challenge = 'Bearer realm="https://accounts.google.com/"'
        if not missing:
            challenge += ', error="invalid_token"'
        return Response.json(errors.unauthenticated_body(missing=missing), 401, {"WWW-Authenticate": challenge})

    def expire_credentials(self) -> None:
        """Every access token issued so far stops working; the refresh token keeps working."""
        with self._auth_lock:
            self._tokens.clear()

    def _token(self, request: Request) -> Response:
        """OAuth 2.0 refresh-token grant, as google.oauth2.credentials.Credentials.refresh() sends it."""
        form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items() if v}
        if form.get("grant_type") != "refresh_token":
            return Response.json({"error": "unsupported_grant_type", "error_description": "Invalid grant_type"}, 400)
        creds = self.credentials
        if not (
            secrets.compare_digest(form.get("client_id", ""), creds.client_id)
            and secrets.compare_digest(form.get("client_secret", ""), creds.client_secret)
        ):
            return Response.json({"error": "invalid_client", "error_description": "Unauthorized"}, 401)
        if not secrets.compare_digest(form.get("refresh_token", ""), creds.refresh_token):
            return Response.json({"error": "invalid_grant", "error_description": "Bad Request"}, 400)
        token = "ya29." + secrets.token_urlsafe(40)
        now = self.clock.now()
        with self._auth_lock:
            for stale in [t for t, expiry in self._tokens.items() if expiry is not _NO_EXPIRY and expiry <= now]:
                del self._tokens[stale]
            self._tokens[token] = now + self.access_token_lifetime
        return Response.json(
            {
                "access_token": token,
                "expires_in": int(self.access_token_lifetime.total_seconds()),
                "scope": SCOPE,
                "token_type": "Bearer",
            },
            headers={"Cache-Control": "no-cache, no-store, max-age=0, must-revalidate"},
        )

    # -- error hooks ---------------------------------------------------------------------------------
    def not_found(self, request: Request) -> Response:
        return Response.json(errors.not_found().body(), 404)

    def method_not_allowed(self, request: Request) -> Response:
        err = CalendarError(405, "httpMethodNotAllowed", "Method Not Allowed")
        return Response.json(err.body(), 405)

    def bad_request(self, request: Request, message: str) -> Response:
        return Response.json(errors.bad_request(message).body(), 400)

    def rate_limited(self, request: Request, retry_after_s: int) -> Response:
        if self.rate_limit_status == 403:
            return Response.json(errors.rate_limited(status=403), 403)
        return Response.json(errors.rate_limited(), 429, {"Retry-After": str(retry_after_s)})

    def server_error(self, request: Request, status: int) -> Response:
        return Response.json(errors.backend_error(status), status)

    # -- calendars -----------------------------------------------------------------------------------
    def _calendar_list(self, request: Request) -> Any:
        p = _Params(request)
        max_results = min(p.integer("maxResults", 100) or 100, 250)
        return self.store.calendar_list(
            max_results=max_results,
            page_token=p.text("pageToken"),
            sync_token=p.text("syncToken"),
            min_access_role=p.choice("minAccessRole", ACCESS_ROLES),
        )

    def _list_entry(self, request: Request) -> Any:
        return self.store.calendar_list_entry(request.params["calendarId"])

    def _calendar(self, request: Request) -> Any:
        return self.store.calendar_resource(request.params["calendarId"])

    # -- events --------------------------------------------------------------------------------------
    def _query(self, request: Request, *, series_id: str | None = None) -> EventQuery:
        p = _Params(request)
        max_results = p.integer("maxResults", 250) or 250
        return EventQuery(
            calendar_id=request.params["calendarId"],
            single_events=p.flag("singleEvents"),
            show_deleted=p.flag("showDeleted"),
            order_by=p.choice("orderBy", ("startTime", "updated")),
            time_min=p.moment("timeMin"),
            time_max=p.moment("timeMax"),
            updated_min=p.moment("updatedMin"),
            q=p.text("q"),
            ical_uid=p.text("iCalUID"),
            private_properties=p.pairs("privateExtendedProperty"),
            shared_properties=p.pairs("sharedExtendedProperty"),
            event_types=self._event_types(request),
            sync_token=p.text("syncToken"),
            page_token=p.text("pageToken"),
            max_results=min(max_results, 2500),  # Google clamps larger page sizes to 2500
            time_zone=p.zone_name("timeZone"),
            max_attendees=p.integer("maxAttendees", None),
            series_id=series_id,
            original_start=p.moment("originalStart"),
            given=frozenset(request.query),
        )

    @staticmethod
    def _event_types(request: Request) -> tuple[str, ...]:
        values = request.args("eventTypes")
        for value in values:
            if value not in EVENT_TYPES:
                raise errors.invalid_parameter("eventTypes", value)
        return tuple(values)

    def _events_list(self, request: Request) -> Any:
        return self.store.list_events(self._query(request))

    def _instances(self, request: Request) -> Any:
        return self.store.list_events(self._query(request, series_id=request.params["eventId"]))

    def _get(self, request: Request) -> Any:
        p = _Params(request)
        return self.store.get_event(
            request.params["calendarId"],
            request.params["eventId"],
            time_zone=p.zone_name("timeZone"),
            max_attendees=p.integer("maxAttendees", None),
        )

    def _insert(self, request: Request) -> Any:
        return self.store.insert_event(request.params["calendarId"], self._body(request))

    def _patch(self, request: Request) -> Any:
        return self.store.patch_event(request.params["calendarId"], request.params["eventId"], self._body(request))

    def _update(self, request: Request) -> Any:
        return self.store.update_event(request.params["calendarId"], request.params["eventId"], self._body(request))

    def _delete(self, request: Request) -> Any:
        self.store.delete_event(request.params["calendarId"], request.params["eventId"])
        return None

    # -- batch ---------------------------------------------------------------------------------------
    def _batch(self, request: Request) -> Response:
        """Runs each part as its own request, in order; the outer call is logged as ``batch``.

        The request log (sandbox.recorder) sees only the outer HTTP call; inner calls are counted
        per route name in ``batch_part_counts()`` (Google bills each inner call against quota).
        """
        try:
            parts = parse_batch(request.header("Content-Type") or "", request.body)
        except BatchFormatError as exc:
            return Response.json(errors.bad_request(str(exc)).body(), 400)
        if not parts:
            return Response.json(errors.bad_request("A batch must contain at least one request.").body(), 400)
        if len(parts) > MAX_PARTS:
            err = errors.invalid(f"A batch may contain at most {MAX_PARTS} requests.")
            return Response.json(err.body(), 400)
        outer_auth = request.header("Authorization")
        answers: list[tuple[str | None, Response]] = []
        for part in parts:
            split = urlsplit(part.target)
            if part.headers.get("Authorization") is None and outer_auth is not None:
                part.headers["Authorization"] = outer_auth
            inner = Request(
                method=part.method,
                raw_path=split.path,
                path=unquote(split.path),
                query=parse_qs(split.query, keep_blank_values=True),
                headers=part.headers,
                body=part.body,
            )
            route, params, known = self.match(inner.method, inner.path)
            if route is not None and route.name in ("batch", "token"):
                route, known = None, False
            inner.params = params
            answer = self.dispatch(inner, route, known)
            with self._auth_lock:
                self._batch_parts[route.name if route is not None else "unknown"] += 1
            answers.append((part.content_id, answer))
        return render_batch(answers)

    def batch_part_counts(self) -> dict[str, int]:
        """Inner requests answered inside batches, per route name, since the app started."""
        with self._auth_lock:
            return dict(self._batch_parts)
