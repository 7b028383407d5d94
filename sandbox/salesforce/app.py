"""The Salesforce REST emulator: logins, SOQL with cursors, sObject CRUD and upsert, collections,
Bulk API 2.0 queries, replication (getUpdated/getDeleted), limits — in Salesforce's own wire shapes.

Every data call needs a valid session (``Authorization: Bearer``); a missing, wrong or expired one
gets Salesforce's 401 ``INVALID_SESSION_ID`` list and no data. Data calls are counted per rolling
24 hours and reported in ``Sforce-Limit-Info``; past the daily limit they get 403
``REQUEST_LIMIT_EXCEEDED``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from sandbox.clock import Clock
from sandbox.credentials import SalesforceCredentials
from sandbox.http import ApiApp, ApiError, Request, Response
from sandbox.salesforce import ids
from sandbox.salesforce.bulk import DEFAULT_MAX_RECORDS, DELIMITERS, LINE_ENDINGS, BulkError, QueryJobs
from sandbox.salesforce.query import CompiledQuery, QueryError, Record
from sandbox.salesforce.soql import SoqlSyntaxError, error_message
from sandbox.salesforce.store import AmbiguousExternalId, RecordError, SalesforceStore
from sandbox.salesforce.values import format_datetime, parse_datetime, to_json

V = r"/services/data/v(?P<version>\d{1,3}\.\d)"
DEFAULT_BATCH_SIZE = 2000
MIN_BATCH_SIZE = 200
MAX_COLLECTION_SIZE = 200
LOWEST_VERSION, HIGHEST_VERSION = 20, 66
_SEASONS = ("Winter", "Spring", "Summer")  # v59.0 is Winter '24, three releases a year
_ROLLED_BACK = {
    "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "message": ("Record rolled back because not all records were valid and the request was using AllOrNone header"),
    "fields": [],
}


def errors(status: int, code: str, message: str, fields: list[str] | None = None) -> Response:
    """Salesforce's REST error body: always a JSON list of ``{message, errorCode[, fields]}``."""
    item: dict[str, Any] = {"message": message, "errorCode": code}
    if fields is not None:
        item["fields"] = fields
    return Response.json([item], status)


def fail(status: int, code: str, message: str, fields: list[str] | None = None) -> ApiError:
    return ApiError(errors(status, code, message, fields))


@dataclass
class _Session:
    user_id: str
    last_used: datetime


@dataclass
class _Cursor:
    """A query result behind a locator: computed once, served page by page."""

    compiled: CompiledQuery
    rows: list[Record]
    batch_size: int
    last_used: datetime


class SalesforceApp(ApiApp):
    """Routes and handlers; state beyond the records (sessions, usage, cursors, jobs) lives here."""

    api_name = "salesforce"

    def __init__(self, store: SalesforceStore, clock: Clock, credentials: SalesforceCredentials) -> None:
        super().__init__()
        self.store = store
        self.clock = clock
        self.credentials = credentials
        self.user_id = store.ensure_user(credentials.username)
        self.daily_api_limit = 100_000
        self.session_ttl_seconds: float | None = None  # idle time after which a session expires
        self.max_open_cursors = 200
        self.max_cursor_rows = 2_000_000  # rows all open cursors may hold together
        self.cursor_idle_seconds = 15 * 60  # Salesforce drops an unused query cursor after 15 minutes
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {credentials.session_id: _Session(self.user_id, clock.now())}
        self._calls: deque[datetime] = deque()
        self._cursors: OrderedDict[str, _Cursor] = OrderedDict()
        self._ids = ids.IdFactory(store.schema.pod)
        self.jobs = QueryJobs(self._ids)
        self._routes()

    # -- settings the control API and tests use --------------------------------------------------------------
    def set_daily_api_limit(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("the daily API limit cannot be negative")
        self.daily_api_limit = limit

    def api_usage(self) -> int:
        """Data API calls counted in the last 24 hours."""
        with self._lock:
            self._prune_calls(self.clock.now())
            return len(self._calls)

    def expire_credentials(self) -> None:
        """Every session ends, the printed one included; password and OAuth clients log in again."""
        with self._lock:
            self._sessions.clear()

    def open_cursors(self) -> int:
        with self._lock:
            return len(self._cursors)

    # -- routing ---------------------------------------------------------------------------------------------
    def _routes(self) -> None:
        add = self.add_route
        add(
            "POST",
            r"/services/Soap/u/(?P<version>\d{1,3}\.\d)(?:/.*)?",
            "login.soap",
            self.soap_login,
            authenticated=False,
        )
        add("POST", r"/services/oauth2/token/?", "oauth2.token", self.oauth_token, authenticated=False)
        add("GET", r"/services/data/?", "versions", self.versions, authenticated=False)
        add("GET", V + r"/?", "resources", self.resources)
        add("GET", V + r"/limits/?", "limits", self.limits)
        add("GET", V + r"/sobjects/?", "describe_global", self.describe_global)
        obj = V + r"/sobjects/(?P<object>\w+)"
        add("GET", obj + r"/describe/?", "sobject.describe", self.describe)
        add("GET", obj + r"/updated/?", "sobject.updated", self.get_updated)
        add("GET", obj + r"/deleted/?", "sobject.deleted", self.get_deleted)
        add("GET", obj + r"/?", "sobject.info", self.sobject_info)
        add("POST", obj + r"/?", "sobject.create", self.create)
        add("GET", obj + r"/(?P<id>\w+)/?", "sobject.get", self.get_record)
        add("PATCH", obj + r"/(?P<id>\w+)/?", "sobject.update", self.update)
        add("DELETE", obj + r"/(?P<id>\w+)/?", "sobject.delete", self.delete)
        add(
            "GET",
            obj + r"/(?P<field>\w+)/(?P<value>.+)",
            "sobject.get_by_external_id",
            self.get_by_external_id,
        )
        add("PATCH", obj + r"/(?P<field>\w+)/(?P<value>.+)", "sobject.upsert", self.upsert)
        add(
            "DELETE",
            obj + r"/(?P<field>\w+)/(?P<value>.+)",
            "sobject.delete_by_external_id",
            self.delete_by_external_id,
        )
        add("GET", V + r"/query/?", "query", self.query)
        add("GET", V + r"/queryAll/?", "query_all", self.query_all)
        add(
            "GET",
            V + r"/(?:query|queryAll)/(?P<locator>\w{15,18})-(?P<offset>\d+)/?",
            "query_more",
            self.query_more,
        )
        add("POST", V + r"/composite/sobjects/?", "composite.create", self.collection_create)
        add("PATCH", V + r"/composite/sobjects/?", "composite.update", self.collection_update)
        add("DELETE", V + r"/composite/sobjects/?", "composite.delete", self.collection_delete)
        add(
            "GET",
            V + r"/composite/sobjects/(?P<object>\w+)/?",
            "composite.retrieve",
            self.collection_retrieve,
        )
        add(
            "PATCH",
            V + r"/composite/sobjects/(?P<object>\w+)/(?P<field>\w+)/?",
            "composite.upsert",
            self.collection_upsert,
        )
        jobs = V + r"/jobs/query"
        add("POST", jobs + r"/?", "bulk2.query.create", self.bulk_create)
        add("GET", jobs + r"/?", "bulk2.query.list", self.bulk_list)
        add("GET", jobs + r"/(?P<job>\w+)/?", "bulk2.query.get", self.bulk_get)
        add("PATCH", jobs + r"/(?P<job>\w+)/?", "bulk2.query.abort", self.bulk_abort)
        add("DELETE", jobs + r"/(?P<job>\w+)/?", "bulk2.query.delete", self.bulk_delete)
        add("GET", jobs + r"/(?P<job>\w+)/results/?", "bulk2.query.results", self.bulk_results)

    # -- hooks: auth, limits, errors in Salesforce's words ---------------------------------------------------
    def _token(self, request: Request) -> str | None:
        header = request.header("Authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() not in ("bearer", "oauth") or not token.strip():
            return None
        return token.strip()

    def _session(self, token: str | None, now: datetime) -> _Session | None:
        """The live session for ``token`` (caller holds the lock); an idle-expired one is dropped."""
        if token is None or token not in self._sessions:
            return None
        session = self._sessions[token]
        ttl = self.session_ttl_seconds
        if ttl is not None and now - session.last_used > timedelta(seconds=ttl):
            del self._sessions[token]
            return None
        return session

    def authenticate(self, request: Request) -> Response | None:
        now = self.clock.now()
        with self._lock:
            session = self._session(self._token(request), now)
            if session is None:
                return errors(401, "INVALID_SESSION_ID", "Session expired or invalid")
            session.last_used = now
            self._prune_calls(now)
            if len(self._calls) >= self.daily_api_limit:
                return errors(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
            self._calls.append(now)
        return None

    def _prune_calls(self, now: datetime) -> None:
        horizon = now - timedelta(hours=24)
        while self._calls and self._calls[0] <= horizon:
            self._calls.popleft()

    def decorate(self, request: Request, response: Response) -> None:
        if request.path.startswith("/services/data/v"):
            with self._lock:
                used = len(self._calls)
            response.headers["Sforce-Limit-Info"] = f"api-usage={used}/{self.daily_api_limit}"

    def not_found(self, request: Request) -> Response:
        return errors(404, "NOT_FOUND", "The requested resource does not exist")

    def method_not_allowed(self, request: Request) -> Response:
        allowed = sorted({r.method for r in self.routes if r.pattern.match(request.path)})
        return errors(
            405,
            "METHOD_NOT_ALLOWED",
            f"HTTP Method '{request.method}' not allowed. Allowed are {','.join(allowed)}",
        )

    def bad_request(self, request: Request, message: str) -> Response:
        return errors(400, "JSON_PARSER_ERROR", message)

    def _login_unavailable(self, request: Request, status: int) -> Response | None:
        """A login endpoint's own "try again later": an OAuth error or a SOAP fault, not a data error list."""
        if request.path.startswith("/services/oauth2/"):
            description = "the service is temporarily unavailable, please try again later"
            return Response.json({"error": "temporarily_unavailable", "error_description": description}, status)
        if request.path.startswith("/services/Soap/"):
            return _soap_fault("SERVER_UNAVAILABLE", "Server temporarily unavailable, please try again later.")
        return None

    def rate_limited(self, request: Request, retry_after_s: int) -> Response:
        # Salesforce throttles concurrent long-running requests with this 403 and no Retry-After; the
        # sandbox adds one so well-behaved clients can back off (see README).
        response = self._login_unavailable(request, 503) or errors(
            403, "REQUEST_LIMIT_EXCEEDED", "ConcurrentPerOrgLongTxn Limit exceeded."
        )
        response.headers["Retry-After"] = str(retry_after_s)
        return response

    def server_error(self, request: Request, status: int) -> Response:
        login = self._login_unavailable(request, status)
        if login is not None:
            return login
        if status == 500:
            return errors(
                500,
                "UNKNOWN_EXCEPTION",
                "An unexpected error occurred. Please include this ErrorId if you contact support: "
                f"{secrets.randbelow(10**9)}-{secrets.randbelow(10**5)} (-{secrets.randbelow(10**9)})",
            )
        return errors(status, "SERVER_UNAVAILABLE", "Server temporarily unavailable, please try again later.")

    # -- helpers ---------------------------------------------------------------------------------------------
    def _user(self, request: Request) -> str:
        with self._lock:
            session = self._sessions.get(self._token(request) or "")
        return session.user_id if session else self.user_id

    def _base_url(self, request: Request) -> str:
        if self.base_url:
            return self.base_url
        return f"https://{request.header('Host') or '127.0.0.1'}"

    @staticmethod
    def _body(request: Request) -> Any:
        try:
            return request.json()
        except ValueError as exc:
            raise fail(400, "JSON_PARSER_ERROR", str(exc)) from None

    def _body_object(self, request: Request) -> dict[str, Any]:
        body = self._body(request)
        if not isinstance(body, dict):
            raise fail(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of SObject from START_ARRAY value")
        return body

    @staticmethod
    def _record_error(exc: RecordError) -> ApiError:
        item = exc.item
        return fail(exc.status, item.code, item.message, list(item.fields))

    def _render(self, record: Record, version: str, fields: list[str] | None = None) -> dict[str, Any]:
        obj = self.store.schema.object_for_id(record["Id"])
        assert obj is not None  # stored records always have a known prefix
        names = fields if fields is not None else list(obj.fields)
        out: dict[str, Any] = {"attributes": {"type": obj.name, "url": self._url(version, obj.name, record["Id"])}}
        for name in names:
            out[name] = to_json(record.get(name))
        return out

    @staticmethod
    def _url(version: str, object_name: str, record_id: str) -> str:
        return f"/services/data/v{version}/sobjects/{object_name}/{record_id}"

    def _compile(self, soql: str) -> CompiledQuery:
        try:
            return self.store.compile(soql)
        except SoqlSyntaxError as exc:
            raise fail(400, "MALFORMED_QUERY", error_message(soql, exc.position, exc.detail)) from None
        except QueryError as exc:
            raise fail(400, exc.code, error_message(soql, exc.position, exc.detail)) from None

    # -- logins ----------------------------------------------------------------------------------------------
    def _new_session(self) -> str:
        token = f"{self.store.schema.org_id[:15]}!{secrets.token_urlsafe(72)}"
        with self._lock:
            self._sessions[token] = _Session(self.user_id, self.clock.now())
        return token

    def soap_login(self, request: Request) -> Response:
        """Partner SOAP ``login``: username and password+security token -> sessionId and serverUrl."""
        version = request.params["version"]
        try:
            # Expat (>= 2.4.1) bounds entity expansion and ElementTree resolves no external entities.
            root = ElementTree.fromstring(request.body)  # noqa: S314 (see the line above)
        except ElementTree.ParseError:
            return _soap_fault("INVALID_LOGIN", "Invalid username, password, security token; or user locked out.")
        username = root.findtext(".//{*}username") or ""
        password = root.findtext(".//{*}password") or ""
        creds = self.credentials
        expected = creds.password + creds.security_token
        if username.lower() != creds.username.lower() or not hmac.compare_digest(password, expected):
            return _soap_fault("INVALID_LOGIN", "Invalid username, password, security token; or user locked out.")
        token = self._new_session()
        base = self._base_url(request)
        org15 = self.store.schema.org_id[:15]
        user = self.store.lookup(self.user_id) or {}
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns="urn:partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
            "<soapenv:Body><loginResponse><result>"
            f"<metadataServerUrl>{escape(base)}/services/Soap/m/{version}/{org15}</metadataServerUrl>"
            "<passwordExpired>false</passwordExpired><sandbox>true</sandbox>"
            f"<serverUrl>{escape(base)}/services/Soap/u/{version}/{org15}</serverUrl>"
            f"<sessionId>{escape(token)}</sessionId><userId>{self.user_id}</userId>"
            "<userInfo>"
            f"<organizationId>{self.store.schema.org_id}</organizationId>"
            f"<organizationName>{escape(self.store.schema.org_name)}</organizationName>"
            f"<userEmail>{escape(str(user.get('Email', '')))}</userEmail>"
            f"<userFullName>{escape(str(user.get('Name', '')))}</userFullName>"
            f"<userId>{self.user_id}</userId><userName>{escape(creds.username)}</userName>"
            "<userTimeZone>Etc/UTC</userTimeZone>"
            "</userInfo></result></loginResponse></soapenv:Body></soapenv:Envelope>"
        )
        return Response.text(body, 200, content_type="text/xml;charset=UTF-8")

    def oauth_token(self, request: Request) -> Response:
        """OAuth 2.0 token endpoint: the username-password and client-credentials flows."""
        form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
        creds = self.credentials
        grant = form.get("grant_type", "")
        client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
        auth = request.header("Authorization") or ""
        if auth.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(auth[6:].strip()).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                decoded = ""
            client_id, _, client_secret = decoded.partition(":")
        if grant not in ("password", "client_credentials"):
            return _oauth_error("unsupported_grant_type", "grant type not supported")
        if not hmac.compare_digest(client_id, creds.consumer_key):
            return _oauth_error("invalid_client_id", "client identifier invalid")
        if not hmac.compare_digest(client_secret, creds.consumer_secret):
            return _oauth_error("invalid_client", "invalid client credentials")
        if grant == "password":
            username, password = form.get("username", ""), form.get("password", "")
            # The sandbox trusts the caller's IP range: the password alone or password+token both work.
            accepted = (creds.password, creds.password + creds.security_token)
            if username.lower() != creds.username.lower() or not any(
                hmac.compare_digest(password, p) for p in accepted
            ):
                return _oauth_error("invalid_grant", "authentication failure")
        token = self._new_session()
        base = self._base_url(request)
        issued = str(int(self.clock.now().timestamp() * 1000))
        signature = base64.b64encode(
            hmac.new(creds.consumer_secret.encode(), (base + issued).encode(), hashlib.sha256).digest()
        ).decode()
        return Response.json(
            {
                "access_token": token,
                "instance_url": base,
                "id": f"{base}/id/{self.store.schema.org_id}/{self.user_id}",
                "token_type": "Bearer",
                "issued_at": issued,
                "signature": signature,
                "scope": "api",
            }
        )

    # -- metadata --------------------------------------------------------------------------------------------
    def versions(self, request: Request) -> Response:
        out = []
        for major in range(LOWEST_VERSION, HIGHEST_VERSION + 1):
            index = major - 59
            label = f"{_SEASONS[index % 3]} '{24 + index // 3:02d}"
            out.append({"label": label, "url": f"/services/data/v{major}.0", "version": f"{major}.0"})
        return Response.json(out)

    def resources(self, request: Request) -> Response:
        base = f"/services/data/v{request.params['version']}"
        names = ("sobjects", "query", "queryAll", "limits", "composite", "jobs")
        return Response.json({name: f"{base}/{name}" for name in names})

    def limits(self, request: Request) -> Response:
        used = self.api_usage()
        limit = self.daily_api_limit
        jobs = len(self.jobs.all())
        return Response.json(
            {
                "DailyApiRequests": {"Max": limit, "Remaining": max(0, limit - used)},
                "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": max(0, 10000 - jobs)},
                "DailyBulkV2QueryFileStorageMB": {"Max": 976562, "Remaining": 976562},
                "DataStorageMB": {"Max": 1024, "Remaining": 1000},
            }
        )

    def describe_global(self, request: Request) -> Response:
        version = request.params["version"]
        return Response.json(
            {
                "encoding": "UTF-8",
                "maxBatchSize": MAX_COLLECTION_SIZE,
                "sobjects": [o.summary(version) for o in self.store.schema.objects.values()],
            }
        )

    def _object_name(self, request: Request) -> str:
        obj = self.store.schema.object(request.params["object"])
        if obj is None:
            raise fail(404, "NOT_FOUND", "The requested resource does not exist")
        return obj.name

    def describe(self, request: Request) -> Response:
        name = self._object_name(request)
        return Response.json(self.store.schema.objects[name].describe(request.params["version"]))

    def sobject_info(self, request: Request) -> Response:
        name = self._object_name(request)
        summary = self.store.schema.objects[name].summary(request.params["version"])
        return Response.json({"objectDescribe": summary, "recentItems": []})

    # -- replication -----------------------------------------------------------------------------------------
    def _window(self, request: Request) -> tuple[datetime, datetime]:
        parsed = []
        for name in ("start", "end"):
            raw = request.arg(name)
            value = parse_datetime(raw) if raw else None
            if value is None:
                raise fail(400, "INVALID_REPLICATION_DATE", f"Invalid {name} date/time: {raw!r}")
            parsed.append(value)
        return parsed[0], parsed[1]

    def get_updated(self, request: Request) -> Response:
        name = self._object_name(request)
        start, end = self._window(request)
        try:
            result = self.store.updated(name, start, end)
        except RecordError as exc:
            raise self._record_error(exc) from None
        return Response.json({"ids": result.ids, "latestDateCovered": format_datetime(result.latest_date_covered)})

    def get_deleted(self, request: Request) -> Response:
        name = self._object_name(request)
        start, end = self._window(request)
        try:
            result = self.store.deleted(name, start, end)
        except RecordError as exc:
            raise self._record_error(exc) from None
        return Response.json(
            {
                "deletedRecords": [
                    {"id": record_id, "deletedDate": format_datetime(moment)} for record_id, moment in result.records
                ],
                "earliestDateAvailable": format_datetime(result.earliest_date_available),
                "latestDateCovered": format_datetime(result.latest_date_covered),
            }
        )

    # -- single records --------------------------------------------------------------------------------------
    def _fields_param(self, request: Request, object_name: str) -> list[str] | None:
        raw = request.arg("fields")
        if not raw:
            return None
        obj = self.store.schema.objects[object_name]
        out = []
        for name in (n.strip() for n in raw.split(",") if n.strip()):
            f = obj.field(name)
            if f is None:
                raise fail(400, "INVALID_FIELD", f"No such column '{name}' on sobject of type {object_name}")
            out.append(f.name)
        return out

    def get_record(self, request: Request) -> Response:
        name = self._object_name(request)
        try:
            record = self.store.get(name, request.params["id"])
        except RecordError as exc:
            raise self._record_error(exc) from None
        fields = self._fields_param(request, name)
        return Response.json(self._render(record, request.params["version"], fields))

    def create(self, request: Request) -> Response:
        name = self._object_name(request)
        body = self._body_object(request)
        try:
            record_id = self.store.create(name, body, user_id=self._user(request))
        except RecordError as exc:
            raise self._record_error(exc) from None
        return Response.json({"id": record_id, "success": True, "errors": []}, 201)

    def update(self, request: Request) -> Response:
        name = self._object_name(request)
        body = self._body_object(request)
        try:
            self.store.update(name, request.params["id"], body, user_id=self._user(request))
        except RecordError as exc:
            raise self._record_error(exc) from None
        return Response.empty(204)

    def delete(self, request: Request) -> Response:
        name = self._object_name(request)
        try:
            self.store.delete(name, request.params["id"], user_id=self._user(request))
        except RecordError as exc:
            raise self._record_error(exc) from None
        return Response.empty(204)

    def _matches(self, request: Request) -> list[Record]:
        name = self._object_name(request)
        try:
            return self.store.find_by_external_id(name, request.params["field"], request.params["value"])
        except RecordError as exc:
            raise self._record_error(exc) from None

    def _ambiguous(self, version: str, object_name: str, record_ids: list[str]) -> Response:
        return Response.json([self._url(version, object_name, i) for i in record_ids], 300)

    def get_by_external_id(self, request: Request) -> Response:
        matches = self._matches(request)
        version = request.params["version"]
        if not matches:
            raise fail(404, "NOT_FOUND", "The requested resource does not exist")
        if len(matches) > 1:
            raise ApiError(self._ambiguous(version, self._object_name(request), [r["Id"] for r in matches]))
        return Response.json(self._render(matches[0], version, self._fields_param(request, self._object_name(request))))

    def delete_by_external_id(self, request: Request) -> Response:
        matches = self._matches(request)
        name = self._object_name(request)
        if not matches:
            raise fail(404, "NOT_FOUND", "The requested resource does not exist")
        if len(matches) > 1:
            raise ApiError(self._ambiguous(request.params["version"], name, [r["Id"] for r in matches]))
        try:
            self.store.delete(name, matches[0]["Id"], user_id=self._user(request))
        except RecordError as exc:
            raise self._record_error(exc) from None
        return Response.empty(204)

    def upsert(self, request: Request) -> Response:
        """Upsert by External ID: 201 created, 200 updated (204 before API 46.0), 300 when ambiguous."""
        name = self._object_name(request)
        version = request.params["version"]
        body = self._body_object(request)
        try:
            record_id, created = self.store.upsert(
                name, request.params["field"], request.params["value"], body, user_id=self._user(request)
            )
        except AmbiguousExternalId as exc:
            raise ApiError(self._ambiguous(version, name, exc.record_ids)) from None
        except RecordError as exc:
            raise self._record_error(exc) from None
        if created:
            return Response.json({"id": record_id, "success": True, "errors": [], "created": True}, 201)
        if float(version) < 46.0:
            return Response.empty(204)
        return Response.json({"id": record_id, "success": True, "errors": [], "created": False}, 200)

    # -- SOQL ------------------------------------------------------------------------------------------------
    def _batch_size(self, request: Request) -> int:
        options = request.header("Sforce-Query-Options") or ""
        for option in options.split(","):
            key, _, value = option.strip().partition("=")
            if key.strip().lower() == "batchsize" and value.strip().isdigit():
                return max(MIN_BATCH_SIZE, min(DEFAULT_BATCH_SIZE, int(value)))
        return DEFAULT_BATCH_SIZE

    def query(self, request: Request) -> Response:
        return self._run_query(request, include_deleted=False)

    def query_all(self, request: Request) -> Response:
        return self._run_query(request, include_deleted=True)

    def _run_query(self, request: Request, *, include_deleted: bool) -> Response:
        soql = request.arg("q")
        if not soql:
            raise fail(400, "MALFORMED_QUERY", "A query string has to be specified")
        compiled = self._compile(soql)
        rows = self.store.run(compiled, include_deleted=include_deleted)
        if compiled.is_count:
            return Response.json({"totalSize": len(rows), "done": True, "records": []})
        cursor = _Cursor(compiled, rows, self._batch_size(request), self.clock.now())
        locator = ""
        if len(rows) > cursor.batch_size:
            locator = self._ids.new("01g")
            self._keep_cursor(locator, cursor)
        return Response.json(self._page(request.params["version"], locator, cursor, 0))

    def _keep_cursor(self, locator: str, cursor: _Cursor) -> None:
        with self._lock:
            now = self.clock.now()
            idle = timedelta(seconds=self.cursor_idle_seconds)
            for key in [k for k, c in self._cursors.items() if now - c.last_used > idle]:
                del self._cursors[key]
            self._cursors[locator] = cursor
            held = sum(len(c.rows) for c in self._cursors.values())
            while len(self._cursors) > 1 and (
                len(self._cursors) > self.max_open_cursors or held > self.max_cursor_rows
            ):
                _, dropped = self._cursors.popitem(last=False)
                held -= len(dropped.rows)

    def _page(self, version: str, locator: str, cursor: _Cursor, offset: int) -> dict[str, Any]:
        end = min(offset + cursor.batch_size, len(cursor.rows))
        with self.store.lock:
            records = [cursor.compiled.to_json(r, version) for r in cursor.rows[offset:end]]
        page: dict[str, Any] = {"totalSize": len(cursor.rows), "done": end >= len(cursor.rows)}
        if not page["done"]:
            page["nextRecordsUrl"] = f"/services/data/v{version}/query/{locator}-{end}"
        page["records"] = records
        return page

    def query_more(self, request: Request) -> Response:
        locator = request.params["locator"]
        offset = int(request.params["offset"])
        now = self.clock.now()
        with self._lock:
            cursor = self._cursors.get(locator)
            if cursor is not None and now - cursor.last_used > timedelta(seconds=self.cursor_idle_seconds):
                del self._cursors[locator]
                cursor = None
            if cursor is not None:
                cursor.last_used = now
                self._cursors.move_to_end(locator)
        if cursor is None or offset > len(cursor.rows):
            raise fail(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return Response.json(self._page(request.params["version"], locator, cursor, offset))

    # -- sObject Collections ---------------------------------------------------------------------------------
    def _collection(self, request: Request) -> tuple[list[Any], bool]:
        body = self._body_object(request)
        records = body.get("records")
        if not isinstance(records, list):
            raise fail(400, "JSON_PARSER_ERROR", "The request body must hold a list of records")
        if len(records) > MAX_COLLECTION_SIZE:
            raise fail(
                400,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
            )
        return records, bool(body.get("allOrNone", False))

    @staticmethod
    def _type_of(item: Any) -> str | None:
        if isinstance(item, dict) and isinstance(item.get("attributes"), dict):
            value = item["attributes"].get("type")
            return str(value) if value else None
        return None

    def _save_all(self, items: list[Any], all_or_none: bool, save: Callable[[Any], dict[str, Any]]) -> Response:
        """Run ``save(item) -> result`` per item; with all-or-none, undo everything when one fails."""
        results: list[dict[str, Any]] = []
        with self.store.journal() as journal:
            for item in items:
                given_id = item if isinstance(item, str) else item.get("Id") if isinstance(item, dict) else None
                try:
                    results.append(save(item))
                except RecordError as exc:
                    results.append(_failure(exc, given_id))
            if all_or_none and any(not r["success"] for r in results):
                self.store.rollback(journal)
                results = [r if not r["success"] else _rolled_back(r, items[i]) for i, r in enumerate(results)]
        return Response.json(results)

    def collection_create(self, request: Request) -> Response:
        records, all_or_none = self._collection(request)
        user = self._user(request)

        def save(item: Any) -> dict[str, Any]:
            object_name = self._type_of(item)
            if object_name is None:
                raise RecordError("INVALID_TYPE", "Must specify a type in the attributes of every record")
            fields = {k: v for k, v in item.items() if k != "attributes"}
            record_id = self.store.create(object_name, fields, user_id=user)
            return {"id": record_id, "success": True, "errors": []}

        return self._save_all(records, all_or_none, save)

    def collection_update(self, request: Request) -> Response:
        records, all_or_none = self._collection(request)
        user = self._user(request)

        def save(item: Any) -> dict[str, Any]:
            object_name = self._type_of(item)
            if object_name is None:
                raise RecordError("INVALID_TYPE", "Must specify a type in the attributes of every record")
            record_id = item.get("Id") or item.get("id")
            if not record_id:
                raise RecordError("MISSING_ARGUMENT", "Id not specified in an update call", ("Id",))
            fields = {k: v for k, v in item.items() if k not in ("attributes", "Id", "id")}
            self.store.update(object_name, str(record_id), fields, user_id=user)
            return {"id": ids.normalize(str(record_id)) or record_id, "success": True, "errors": []}

        return self._save_all(records, all_or_none, save)

    def collection_delete(self, request: Request) -> Response:
        raw = request.arg("ids") or ""
        record_ids = [i.strip() for i in raw.split(",") if i.strip()]
        if not record_ids:
            raise fail(400, "MISSING_ARGUMENT", "ids parameter is required")
        if len(record_ids) > MAX_COLLECTION_SIZE:
            raise fail(
                400,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
            )
        all_or_none = (request.arg("allOrNone") or "false").lower() == "true"
        user = self._user(request)

        def save(record_id: str) -> dict[str, Any]:
            self.store.delete(None, record_id, user_id=user)
            return {"id": ids.normalize(record_id), "success": True, "errors": []}

        return self._save_all(record_ids, all_or_none, save)

    def collection_retrieve(self, request: Request) -> Response:
        name = self._object_name(request)
        record_ids = [i.strip() for i in (request.arg("ids") or "").split(",") if i.strip()]
        if len(record_ids) > 2000:
            raise fail(400, "EXCEEDED_ID_LIMIT", "record limit reached. cannot retrieve more than 2000 records")
        fields = self._fields_param(request, name)
        if fields is None:
            raise fail(400, "MISSING_ARGUMENT", "fields parameter is required")
        out: list[Any] = []
        for record_id in record_ids:
            try:
                record = self.store.get(name, record_id)
            except RecordError:
                out.append(None)
                continue
            out.append(self._render(record, request.params["version"], fields))
        return Response.json(out)

    def collection_upsert(self, request: Request) -> Response:
        name = self._object_name(request)
        field_name = request.params["field"]
        records, all_or_none = self._collection(request)
        user = self._user(request)
        external = self.store.schema.objects[name].field(field_name)
        if external is None or not (external.external_id or external.type == "id"):
            raise fail(
                404,
                "NOT_FOUND",
                f"Provided external ID field does not exist or is not accessible: {field_name}",
            )

        def save(item: Any) -> dict[str, Any]:
            object_name = self._type_of(item)
            if object_name is None or object_name.lower() != name.lower():
                raise RecordError("INVALID_TYPE", f"Every record must have attributes.type {name}")
            value = next((v for k, v in item.items() if k.lower() == external.name.lower()), None)
            if value in (None, ""):
                raise RecordError("MISSING_ARGUMENT", f"{external.name} not specified", (external.name,))
            fields = {k: v for k, v in item.items() if k != "attributes"}
            try:
                record_id, created = self.store.upsert(name, external.name, str(value), fields, user_id=user)
            except AmbiguousExternalId as exc:
                raise RecordError(
                    "DUPLICATE_EXTERNAL_ID",
                    f"{external.name}: more than one record found for external id field: [{', '.join(exc.record_ids)}]",
                    (external.name,),
                ) from None
            return {"id": record_id, "success": True, "errors": [], "created": created}

        return self._save_all(records, all_or_none, save)

    # -- Bulk API 2.0 queries --------------------------------------------------------------------------------
    @staticmethod
    def _bulk_error(exc: BulkError) -> ApiError:
        return fail(exc.status, exc.code, exc.message)

    def bulk_create(self, request: Request) -> Response:
        body = self._body_object(request)
        operation = body.get("operation")
        if operation not in ("query", "queryAll"):
            raise fail(400, "INVALIDJOB", f"Invalid operation for a query job: {operation!r}")
        soql = body.get("query")
        if not isinstance(soql, str) or not soql.strip():
            raise fail(400, "INVALIDJOB", "A query job needs a query")
        delimiter = str(body.get("columnDelimiter", "COMMA"))
        line_ending = str(body.get("lineEnding", "LF"))
        if delimiter not in DELIMITERS or line_ending not in LINE_ENDINGS:
            raise fail(400, "INVALIDJOB", "Invalid columnDelimiter or lineEnding")
        compiled = self._compile(soql)
        parsed_offset = compiled.offset is not None
        if compiled.is_count or parsed_offset:
            raise fail(
                400,
                "API_ERROR",
                "Bulk API 2.0 query jobs support neither aggregate functions such as COUNT() nor OFFSET",
            )
        rows = self.store.run(compiled, include_deleted=operation == "queryAll")
        job = self.jobs.create(
            operation=operation,
            compiled=compiled,
            rows=rows,
            column_delimiter=delimiter,
            line_ending=line_ending,
            api_version=request.params["version"],
            user_id=self._user(request),
            now=self.clock.now(),
        )
        return Response.json(job.info(detailed=False))

    def bulk_list(self, request: Request) -> Response:
        jobs = [job.info(detailed=False) for job in self.jobs.all()]
        return Response.json({"done": True, "records": jobs, "nextRecordsUrl": None})

    def bulk_get(self, request: Request) -> Response:
        try:
            return Response.json(self.jobs.poll(request.params["job"]).info(detailed=True))
        except BulkError as exc:
            raise self._bulk_error(exc) from None

    def bulk_abort(self, request: Request) -> Response:
        body = self._body_object(request)
        if body.get("state") != "Aborted":
            raise fail(400, "INVALIDJOBSTATE", "A query job can only be set to Aborted")
        try:
            return Response.json(self.jobs.abort(request.params["job"]).info(detailed=False))
        except BulkError as exc:
            raise self._bulk_error(exc) from None

    def bulk_delete(self, request: Request) -> Response:
        try:
            self.jobs.delete(request.params["job"])
        except BulkError as exc:
            raise self._bulk_error(exc) from None
        return Response.empty(204)

    def bulk_results(self, request: Request) -> Response:
        raw_max = request.arg("maxRecords")
        if raw_max is not None and (not raw_max.isdigit() or int(raw_max) < 1):
            raise fail(400, "INVALIDREQUEST", f"Invalid maxRecords: {raw_max}")
        max_records = int(raw_max) if raw_max else DEFAULT_MAX_RECORDS
        try:
            with self.store.lock:
                text, locator, count = self.jobs.results(request.params["job"], request.arg("locator"), max_records)
        except BulkError as exc:
            raise self._bulk_error(exc) from None
        return Response.text(
            text,
            200,
            content_type="text/csv",
            **{"Sforce-NumberOfRecords": str(count), "Sforce-Locator": locator},
        )


def _failure(exc: RecordError, given_id: Any) -> dict[str, Any]:
    """A collection item's failure; a missing record reads as a bad cross reference, as Salesforce says."""
    error = exc.item
    missing = error.code == "NOT_FOUND"
    failed: dict[str, Any] = {
        "success": False,
        "errors": [
            {
                "statusCode": "INVALID_CROSS_REFERENCE_KEY" if missing else error.code,
                "message": "invalid cross reference id" if missing else error.message,
                "fields": list(error.fields),
            }
        ],
    }
    return {"id": given_id, **failed} if given_id else failed


def _rolled_back(result: dict[str, Any], item: Any) -> dict[str, Any]:
    """A success undone because another item of an all-or-none request failed."""
    out: dict[str, Any] = {"success": False, "errors": [dict(_ROLLED_BACK)]}
    if isinstance(item, str) or (isinstance(item, dict) and item.get("Id")):
        out = {"id": result.get("id"), **out}
    return out


def _soap_fault(code: str, message: str) -> Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:sf="urn:fault.partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        "<soapenv:Body><soapenv:Fault>"
        f"<faultcode>sf:{code}</faultcode><faultstring>{code}: {escape(message)}</faultstring>"
        f'<detail><sf:LoginFault xsi:type="sf:LoginFault"><sf:exceptionCode>{code}</sf:exceptionCode>'
        f"<sf:exceptionMessage>{escape(message)}</sf:exceptionMessage></sf:LoginFault></detail>"
        "</soapenv:Fault></soapenv:Body></soapenv:Envelope>"
    )
    return Response.text(body, 500, content_type="text/xml;charset=UTF-8")


def _oauth_error(error: str, description: str) -> Response:
    return Response.json({"error": error, "error_description": description}, 400)
