"""Jira Cloud REST v2/v3 over HTTP: the routes the ``jira`` library and Accord's connector use.

Authentication is preemptive Basic ``email:api_token``; a missing, wrong or revoked credential gets
Jira Cloud's 401 and no data (``serverInfo`` alone is served anonymously, as on a real site). Error
bodies are Jira's ``{"errorMessages": [...], "errors": {...}}``. What is simplified or not supported
is listed in ``sandbox/jira/README.md``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from datetime import date, timedelta
from typing import Any
from urllib.parse import quote

from sandbox.clock import Clock
from sandbox.credentials import JiraCredentials
from sandbox.http import ApiApp, ApiError, Request, Response
from sandbox.jira import adf
from sandbox.jira.jql import JqlError
from sandbox.jira.model import (
    ISSUE_TYPE_BY_ID,
    ISSUE_TYPES,
    PRIORITIES,
    PRIORITY_BY_ID,
    TRANSITION_IDS,
    TRANSITIONS,
    IssueVersion,
    Project,
)
from sandbox.jira.render import Renderer, encode, select_fields, split_list
from sandbox.jira.store import JiraStore, StoreError

API = r"/rest/api/(?P<v>2|3|latest)"  # "latest" is v2, as on Jira Cloud
ISSUE = API + r"/issue/(?P<issue>[^/]+)"
UNAUTHENTICATED = "Client must be authenticated to access this resource."
SEARCH_REMOVED = (
    "The requested API has been removed. Please migrate to the /rest/api/3/search/jql API. "
    "A full migration guideline is available at https://developer.atlassian.com/changelog/#CHANGE-2046"
)
BODY_EMPTY = "No content to map to Object due to end of input"
BODY_UNPARSEABLE = "There was an error parsing JSON. Check that your request body is valid."
BODY_INVALID = "Invalid request payload. Refer to the REST API documentation and try again."
SEARCH_BODY_KEYS = frozenset(
    {
        "jql",
        "nextPageToken",
        "maxResults",
        "fields",
        "expand",
        "properties",
        "fieldsByKeys",
        "failFast",
        "reconcileIssues",
    }
)
MAX_RECONCILE = 50
MAX_PROPERTY_VALUE = 32768
MAX_PROPERTY_KEY = 255
CANNOT_SET = "Field '{}' cannot be set. It is not on the appropriate screen, or unknown."


def jira_error(
    status: int,
    messages: list[str] | None = None,
    errors: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return Response.json({"errorMessages": messages or [], "errors": errors or {}}, status, headers)


def _fail(status: int, messages: list[str] | None = None, errors: dict[str, str] | None = None) -> ApiError:
    return ApiError(jira_error(status, messages, errors))


class JiraApp(ApiApp):
    """The Jira Cloud emulator; ``expire_credentials`` revokes the token until ``restore_credentials``."""

    api_name = "jira"

    def __init__(self, store: JiraStore, clock: Clock, credentials: JiraCredentials) -> None:
        super().__init__()
        self.store = store
        self.clock = clock
        self.credentials = credentials
        self.revoked = False
        store.set_integration_user(credentials.email)
        route = self.add_route
        route("GET", API + r"/serverInfo", "serverInfo", self.server_info, authenticated=False)
        route("GET", API + r"/myself", "myself", self.myself)
        route("GET", API + r"/field", "field", self.fields)
        route("GET", API + r"/issuetype", "issuetype.list", self.issue_types)
        route("GET", API + r"/user", "user.get", self.user)
        route("GET", API + r"/user/search", "user.search", self.user_search)
        route("GET", API + r"/project", "project.list", self.project_list)
        route("GET", API + r"/project/search", "project.search", self.project_search)
        route("GET", API + r"/project/(?P<project>[^/]+)", "project.get", self.project_get)
        route("GET", API + r"/search/jql", "search_jql", self.search_jql)
        route("POST", API + r"/search/jql", "search_jql", self.search_jql)
        route("POST", API + r"/search/approximate-count", "search_count", self.search_count)
        route("GET", API + r"/search", "search", self.search_removed)
        route("POST", API + r"/search", "search", self.search_removed)
        route("POST", API + r"/issue", "issue.create", self.issue_create)
        route("GET", ISSUE, "issue.get", self.issue_get)
        route("PUT", ISSUE, "issue.edit", self.issue_edit)
        route("DELETE", ISSUE, "issue.delete", self.issue_delete)
        route("PUT", ISSUE + r"/assignee", "issue.assign", self.issue_assign)
        route("GET", ISSUE + r"/transitions", "transitions.list", self.transitions)
        route("POST", ISSUE + r"/transitions", "transitions.do", self.transition)
        route("GET", ISSUE + r"/changelog", "issue.changelog", self.changelog)
        route("GET", ISSUE + r"/comment", "comments.list", self.comments)
        route("POST", ISSUE + r"/comment", "comments.add", self.comment_add)
        route("GET", ISSUE + r"/comment/(?P<comment>[^/]+)", "comments.get", self.comment_get)
        route("GET", ISSUE + r"/properties", "properties.list", self.properties)
        route("GET", ISSUE + r"/properties/(?P<key>[^/]+)", "properties.get", self.property_get)
        route("PUT", ISSUE + r"/properties/(?P<key>[^/]+)", "properties.put", self.property_put)
        route("DELETE", ISSUE + r"/properties/(?P<key>[^/]+)", "properties.delete", self.property_delete)

    # -- auth, faults, errors ------------------------------------------------------------------------
    def authenticate(self, request: Request) -> Response | None:
        header = request.header("Authorization") or ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic" and not self.revoked:
            try:
                email, _, token = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                email, token = "", ""
            email_ok = hmac.compare_digest(email.casefold().encode(), self.credentials.email.casefold().encode())
            token_ok = hmac.compare_digest(token.encode(), self.credentials.api_token.encode())
            if email_ok and token_ok:
                return None
        headers = {"WWW-Authenticate": f'OAuth realm="{quote(self.base_url, safe="")}"'}
        if header:
            headers["X-Seraph-LoginReason"] = "AUTHENTICATED_FAILED"
        # Jira Cloud answers a plain-text line here, not the JSON error body.
        return Response.text(UNAUTHENTICATED, 401, **headers)

    def expire_credentials(self) -> None:
        """Revoke the API token: every authenticated call answers 401 until ``restore_credentials``."""
        self.revoked = True

    def restore_credentials(self) -> None:
        self.revoked = False

    def not_found(self, request: Request) -> Response:
        return jira_error(404, [f"No endpoint {request.method} {request.path}."])

    def method_not_allowed(self, request: Request) -> Response:
        return jira_error(405, ["Method Not Allowed"])

    def bad_request(self, request: Request, message: str) -> Response:
        return jira_error(400, [message])

    def rate_limited(self, request: Request, retry_after_s: int) -> Response:
        reset = (self.clock.now() + timedelta(seconds=max(retry_after_s, 1))).strftime("%Y-%m-%dT%H:%MZ")
        headers = {
            "Retry-After": str(int(retry_after_s)),
            "X-RateLimit-Limit": "350",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": reset,
            "X-RateLimit-NearLimit": "true",
            "RateLimit-Reason": "jira-burst-based",
        }
        return jira_error(429, ["Rate limit exceeded."], headers=headers)

    def server_error(self, request: Request, status: int) -> Response:
        if status == 503:
            retry = str(int(self.faults.settings.retry_after_s))
            return jira_error(503, ["Service Unavailable"], headers={"Retry-After": retry})
        if status == 502:
            return jira_error(502, ["Bad Gateway"])
        return jira_error(status, ["Internal server error"])

    # -- helpers -------------------------------------------------------------------------------------
    @staticmethod
    def version(request: Request) -> str:
        """The API version of the path: "3", or "2" for both /2 and /latest."""
        return "3" if request.params["v"] == "3" else "2"

    def renderer(self, request: Request) -> Renderer:
        return Renderer(self.store, self.base_url, self.version(request))

    def _json_body(self, request: Request) -> Any:
        if not request.body.strip():
            raise _fail(400, [BODY_EMPTY])
        try:
            return request.json()
        except ValueError:
            raise _fail(400, [BODY_UNPARSEABLE]) from None

    def _object_body(self, request: Request) -> dict[str, Any]:
        body = self._json_body(request)
        if not isinstance(body, dict):
            raise _fail(400, [BODY_INVALID])
        return body

    def _issue(self, request: Request, *, write: bool = False) -> IssueVersion:
        try:
            return self.store.get_issue(request.params["issue"], for_write=write)
        except StoreError as exc:
            raise _fail(exc.status, exc.messages, exc.errors) from None

    def _int_arg(self, request: Request, name: str, default: int, low: int = 0, high: int = 1 << 31) -> int:
        raw = request.arg(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise _fail(400, [f"The value '{raw}' of the parameter '{name}' is not a valid number."]) from None
        return max(low, min(high, value))

    # -- site ----------------------------------------------------------------------------------------
    def server_info(self, request: Request) -> Response:
        with self.store.lock:
            now = self.store.format_time(self.clock.now())
        return Response.json(
            {
                "baseUrl": self.base_url,
                "displayUrl": self.base_url,
                "version": "1001.0.0-SNAPSHOT",
                "versionNumbers": [1001, 0, 0],
                "deploymentType": "Cloud",
                "buildNumber": 100280,
                "buildDate": "2025-06-30T00:00:00.000+0000",
                "serverTime": now,
                "scmInfo": "3f4d1e0a5b2c7d9e8f6a1b3c5d7e9f0a2b4c6d8e",
                "serverTitle": "Jira",
                "defaultLocale": {"locale": "en_US"},
            }
        )

    def myself(self, request: Request) -> Response:
        with self.store.lock:
            data = self.renderer(request).user_of(self.store.bot)
        data.update(
            {
                "timeZone": self.store.timezone,
                "locale": "en_US",
                "groups": {"size": 1, "items": []},
                "applicationRoles": {"size": 1, "items": []},
                "expand": "groups,applicationRoles",
            }
        )
        return Response.json(data)

    def fields(self, request: Request) -> Response:
        return Response.json(self.renderer(request).fields())

    def issue_types(self, request: Request) -> Response:
        r = self.renderer(request)
        return Response.json([r.issue_type(name) for name in ISSUE_TYPES])

    def user(self, request: Request) -> Response:
        account = request.arg("accountId") or ""
        with self.store.lock:
            user = self.store.users.get(account)
            if user is None:
                return jira_error(404, ["Specified user does not exist or you do not have access to it."])
            return Response.json(self.renderer(request).user_of(user))

    def user_search(self, request: Request) -> Response:
        """Cloud's user search: ``query`` matches the start of a display-name word or a visible email,
        or an exact accountId."""
        query = (request.arg("query") or request.arg("accountId") or "").strip().casefold()
        if not query:
            return jira_error(400, ["The query parameter 'query' is required."])
        start = self._int_arg(request, "startAt", 0)
        size = self._int_arg(request, "maxResults", 50, 1, 1000)
        with self.store.lock:
            found = [
                u
                for u in sorted(self.store.users.values(), key=lambda u: u.display_name)
                if u.account_id.casefold() == query
                or any(word.startswith(query) for word in u.display_name.casefold().split())
                or u.display_name.casefold().startswith(query)
                or (u.email_visible and u.email.casefold().startswith(query))
            ]
            r = self.renderer(request)
            return Response.json([r.user_of(u) for u in found[start : start + size]])

    def project_list(self, request: Request) -> Response:
        expand = split_list(request.arg("expand"))
        with self.store.lock:
            r = self.renderer(request)
            return Response.json([r.project(p, expand) for p in self._ordered_projects()])

    def _ordered_projects(self) -> list[Project]:
        return sorted(self.store.projects.values(), key=lambda p: p.key)

    def project_search(self, request: Request) -> Response:
        start = self._int_arg(request, "startAt", 0)
        size = self._int_arg(request, "maxResults", 50, 1, 100)
        expand = split_list(request.arg("expand"))
        keys = {k.upper() for k in split_list(request.args("keys"))}
        with self.store.lock:
            r = self.renderer(request)
            projects = [p for p in self._ordered_projects() if not keys or p.key in keys]
            page = projects[start : start + size]
            last = start + size >= len(projects)
            data: dict[str, Any] = {
                "self": f"{r.api}/project/search?startAt={start}&maxResults={size}",
                "maxResults": size,
                "startAt": start,
                "total": len(projects),
                "isLast": last,
                "values": [r.project(p, expand) for p in page],
            }
            if not last:
                data["nextPage"] = f"{r.api}/project/search?startAt={start + size}&maxResults={size}"
            return Response.json(data)

    def project_get(self, request: Request) -> Response:
        with self.store.lock:
            try:
                project = self.store.get_project(request.params["project"])
            except StoreError as exc:
                return jira_error(exc.status, exc.messages)
            return Response.json(self.renderer(request).project(project, split_list(request.arg("expand")), full=True))

    # -- search --------------------------------------------------------------------------------------
    def search_removed(self, request: Request) -> Response:
        return jira_error(410, [SEARCH_REMOVED])

    def search_jql(self, request: Request) -> Response:
        if request.method == "POST":
            body = self._object_body(request)
            unknown = set(body) - SEARCH_BODY_KEYS
            if unknown:  # e.g. startAt: the bean has no such property (CHANGE-2046 migration guide)
                raise _fail(400, [BODY_INVALID])
            jql_text = body.get("jql")
            fields = body.get("fields")
            expand = split_list(body.get("expand"))
            properties = split_list(body.get("properties"))
            reconcile_raw = body.get("reconcileIssues") or []
            max_raw = body.get("maxResults")
            token = body.get("nextPageToken")
            if not isinstance(reconcile_raw, list) or (fields is not None and not isinstance(fields, list | str)):
                raise _fail(400, [BODY_INVALID])
            if (jql_text is not None and not isinstance(jql_text, str)) or (
                token is not None and not isinstance(token, str)
            ):
                raise _fail(400, [BODY_INVALID])
        else:
            jql_text = request.arg("jql")
            fields = request.args("fields")
            expand = split_list(request.args("expand"))
            properties = split_list(request.args("properties"))
            reconcile_raw = split_list(request.args("reconcileIssues"))
            max_raw = request.arg("maxResults")
            token = request.arg("nextPageToken")
        selection = select_fields(fields if not isinstance(fields, str) else [fields], default="id")
        max_results = self._max_results(max_raw)
        reconcile = self._reconcile(reconcile_raw)
        cap = 5000 if selection.ids_only and not expand and not properties else 100
        page_size = min(max_results, cap)
        text = (jql_text or "").strip()
        with self.store.lock:
            if token:
                try:
                    result, offset = self.store.resolve_token(token, text)
                except StoreError as exc:
                    return jira_error(exc.status, exc.messages)
                ids = result.ids
                reconcile = reconcile | result.reconcile
            else:
                try:
                    ids = self.store.search(text, reconcile)
                except JqlError as exc:
                    return jira_error(400, [str(exc)])
                offset = 0
                result = None
            page = ids[offset : offset + page_size]
            cutoff = self.store.search_cutoff()
            r = self.renderer(request)
            issues = []
            for issue_id in page:
                version = self.store.search_view(issue_id, reconcile, cutoff)
                if version is not None:  # deleted since the query ran
                    issues.append(r.issue_json(version, selection, expand, properties, in_search=True))
            data: dict[str, Any] = {}
            following = offset + page_size
            if following < len(ids):
                if result is None:
                    result = self.store.keep_result(text, ids, reconcile)
                data["nextPageToken"] = self.store.page_token(result, following)
                data["isLast"] = False
            else:
                data["isLast"] = True
            # {"issues": [...], **data}, with the issues already encoded
            # {"issues": [...], **data}, the issues already encoded
            return Response.json_bytes(b'{"issues":[' + b",".join(issues) + b"]," + encode(data)[1:].encode())

    def _max_results(self, raw: Any) -> int:
        if raw is None or raw == "":
            return 50
        try:
            value = int(raw)
            if isinstance(raw, bool) or (isinstance(raw, float | str) and str(raw).strip() != str(value)):
                raise ValueError
        except (TypeError, ValueError):
            raise _fail(400, [BODY_INVALID]) from None
        if not 1 <= value <= 5000:
            raise _fail(400, ["The maxResults parameter must be between 1 and 5000."])
        return value

    def _reconcile(self, raw: list[Any]) -> frozenset[int]:
        ids: set[int] = set()
        for item in raw:
            try:
                if isinstance(item, bool):
                    raise ValueError
                ids.add(int(item))
            except (TypeError, ValueError):
                raise _fail(400, [BODY_INVALID]) from None
        if len(ids) > MAX_RECONCILE:
            raise _fail(400, [f"The number of issues to reconcile cannot exceed {MAX_RECONCILE}."])
        return frozenset(ids)

    def search_count(self, request: Request) -> Response:
        body = self._object_body(request)
        text = body.get("jql")
        if not isinstance(text, str):
            raise _fail(400, [BODY_INVALID])
        try:
            ids = self.store.search(text.strip())
        except JqlError as exc:
            return jira_error(400, [str(exc)])
        return Response.json({"count": len(ids)})

    # -- issues --------------------------------------------------------------------------------------
    def issue_get(self, request: Request) -> Response:
        selection = select_fields(request.args("fields"), default="*all")
        expand = split_list(request.args("expand"))
        properties = split_list(request.args("properties"))
        with self.store.lock:
            version = self._issue(request)
            return Response.json(self.renderer(request).issue(version, selection, expand, properties))

    def issue_create(self, request: Request) -> Response:
        body = self._object_body(request)
        fields = body.get("fields")
        if not isinstance(fields, dict):
            return jira_error(400, [], {"summary": "You must specify a summary of the issue."})
        v = self.version(request)
        with self.store.lock:
            parsed, errors = self._parse_fields(fields, v, current=None)
            project = parsed.pop("project", None)
            if project is None and "project" not in errors:
                errors["project"] = "Specify a valid project ID or key"
            if "issue_type" not in parsed and "issuetype" not in errors:
                errors["issuetype"] = "Specify an issue type"
            if not parsed.get("summary") and "summary" not in errors:
                errors["summary"] = "You must specify a summary of the issue."
            if not errors:
                self._check_parent(parsed.get("parent_id"), parsed["issue_type"], project, errors)
            comments = self._create_comments(body.get("update"), v, errors)
            if errors:
                return jira_error(400, [], errors)
            assert isinstance(project, Project)
            version = self.store.create_issue(
                project=project,
                issue_type=parsed["issue_type"],
                summary=parsed["summary"],
                description=parsed.get("description"),
                parent_id=parsed.get("parent_id"),
                assignee=parsed.get("assignee"),
                reporter=parsed.get("reporter"),
                labels=list(parsed.get("labels", ())),
                priority=parsed.get("priority", "Medium"),
                due_date=parsed.get("due_date"),
                story_points=parsed.get("story_points"),
            )
            for comment in comments:
                self.store.add_comment(version.id, comment)
            api = f"{self.base_url}/rest/api/{v}"
            return Response.json({"id": str(version.id), "key": version.key, "self": f"{api}/issue/{version.id}"}, 201)

    def _create_comments(self, update: Any, v: str, errors: dict[str, str]) -> list[Any]:
        """Comments of ``update.comment[].add`` on create, the only update verb create takes here."""
        if update is None:
            return []
        if not isinstance(update, dict) or set(update) - {"comment"} or not isinstance(update.get("comment", []), list):
            errors["update"] = "Only comment additions are supported when creating an issue."
            return []
        comments = []
        for op in update.get("comment", []):
            add = op.get("add") if isinstance(op, dict) else None
            problem = self._comment_problem(add.get("body") if isinstance(add, dict) else None, v)
            if problem:
                errors["comment"] = problem
            else:
                assert isinstance(add, dict)
                comments.append(add["body"])
        return comments

    def issue_edit(self, request: Request) -> Response:
        body = self._object_body(request)
        v = self.version(request)
        with self.store.lock:
            version = self._issue(request, write=True)
            fields = body.get("fields") or {}
            update = body.get("update") or {}
            if not isinstance(fields, dict) or not isinstance(update, dict):
                raise _fail(400, [BODY_INVALID])
            parsed, errors = self._parse_fields(fields, v, current=version)
            if "project" in parsed:
                errors["project"] = CANNOT_SET.format("project")
            comments: list[Any] = []
            self._apply_updates(update, v, version, parsed, errors, comments)
            if not errors and "parent_id" in parsed:
                project = self.store.projects[version.project_id]
                self._check_parent(parsed["parent_id"], parsed.get("issue_type", version.issue_type), project, errors)
            if errors:
                return jira_error(400, [], errors)
            changes = {k: v for k, v in parsed.items() if getattr(version, k) != v}
            if changes:
                self.store.edit_issue(version.id, changes)
            for comment in comments:
                self.store.add_comment(version.id, comment)
            return Response.empty(204)

    def _apply_updates(
        self,
        update: dict[str, Any],
        v: str,
        version: IssueVersion,
        parsed: dict[str, Any],
        errors: dict[str, str],
        comments: list[Any],
    ) -> None:
        """Jira's ``update`` verbs: labels add/remove/set, set on simple fields, comment add."""
        for name, operations in update.items():
            if not isinstance(operations, list):
                errors[name] = BODY_INVALID
                continue
            for op in operations:
                if not isinstance(op, dict) or len(op) != 1:
                    errors[name] = BODY_INVALID
                    continue
                verb, value = next(iter(op.items()))
                if name == "labels" and verb in ("add", "remove", "set"):
                    labels = list(parsed.get("labels", version.labels))
                    if verb == "add" and isinstance(value, str):
                        if " " in value:
                            errors["labels"] = f"The label '{value}' contains spaces which is invalid."
                        elif value not in labels:
                            labels.append(value)
                    elif verb == "remove" and isinstance(value, str):
                        labels = [label for label in labels if label != value]
                    elif verb == "set":
                        more, more_errors = self._parse_fields({"labels": value}, v, current=version)
                        errors.update(more_errors)
                        labels = list(more.get("labels", labels))
                    parsed["labels"] = tuple(labels)
                elif name == "comment" and verb == "add" and isinstance(value, dict):
                    problem = self._comment_problem(value.get("body"), v)
                    if problem:
                        errors["comment"] = problem
                    else:
                        comments.append(value["body"])
                elif verb == "set":
                    more, more_errors = self._parse_fields({name: value}, v, current=version)
                    errors.update(more_errors)
                    parsed.update(more)
                else:
                    errors[name] = CANNOT_SET.format(name)

    def _parse_fields(
        self, fields: dict[str, Any], v: str, *, current: IssueVersion | None
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Issue input fields -> store attribute values, plus Jira's per-field errors."""
        store = self.store
        parsed: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for name, value in fields.items():
            if name == "project":
                ref = value if isinstance(value, dict) else {"key": value}
                found = None
                for key in ("id", "key"):
                    if ref.get(key) is not None:
                        try:
                            found = store.get_project(str(ref[key]))
                        except StoreError:
                            found = None
                if found is None:
                    errors["project"] = "Specify a valid project ID or key"
                else:
                    parsed["project"] = found
            elif name == "issuetype":
                ref = value if isinstance(value, dict) else {}
                type_name = ISSUE_TYPE_BY_ID.get(str(ref.get("id"))) if ref.get("id") is not None else None
                if type_name is None and isinstance(ref.get("name"), str):
                    type_name = next((t for t in ISSUE_TYPES if t.casefold() == ref["name"].casefold()), None)
                if type_name is None:
                    errors["issuetype"] = "The issue type selected is invalid."
                elif current is not None and type_name != current.issue_type:
                    errors["issuetype"] = CANNOT_SET.format("issuetype")
                else:
                    parsed["issue_type"] = type_name
            elif name == "summary":
                if not isinstance(value, str):
                    errors["summary"] = "Operation value must be a string"
                elif not value.strip():
                    errors["summary"] = "You must specify a summary of the issue."
                elif "\n" in value or "\r" in value:
                    errors["summary"] = "The summary is invalid because it contains newline characters."
                elif len(value) > 255:
                    errors["summary"] = "Summary must be less than 255 characters."
                else:
                    parsed["summary"] = value
            elif name == "description":
                problem = _rich_text_problem(value, v)
                if problem:
                    errors["description"] = problem
                else:
                    parsed["description"] = value
            elif name in ("assignee", "reporter"):
                if value is None and name == "assignee":
                    parsed["assignee"] = None
                    continue
                account = value.get("accountId", value.get("id")) if isinstance(value, dict) else None
                if not isinstance(account, str) or account not in store.users:
                    errors[name] = (
                        f"User '{account}' does not exist."
                        if isinstance(account, str)
                        else "Specify the user by accountId."
                    )
                else:
                    parsed[name] = account
            elif name == "labels":
                if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                    errors["labels"] = "Operation value must be an array of strings"
                elif bad := next((x for x in value if " " in x or not x), None):
                    errors["labels"] = f"The label '{bad}' contains spaces which is invalid."
                else:
                    parsed["labels"] = tuple(dict.fromkeys(value))
            elif name == "priority":
                ref = value if isinstance(value, dict) else {}
                level = PRIORITY_BY_ID.get(str(ref.get("id"))) if ref.get("id") is not None else None
                if level is None and isinstance(ref.get("name"), str):
                    level = next((p for p in PRIORITIES if p.casefold() == ref["name"].casefold()), None)
                if level is None:
                    errors["priority"] = "Specify a valid priority."
                else:
                    parsed["priority"] = level
            elif name == "duedate":
                if value is None:
                    parsed["due_date"] = None
                    continue
                try:
                    parsed["due_date"] = date.fromisoformat(value) if isinstance(value, str) else None
                except ValueError:
                    parsed["due_date"] = None
                if parsed["due_date"] is None:
                    parsed.pop("due_date")
                    errors["duedate"] = f"Error parsing date string: {value}"
            elif name == "parent":
                if value is None:
                    parsed["parent_id"] = None
                    continue
                ref = value if isinstance(value, dict) else {}
                target = ref.get("key", ref.get("id"))
                try:
                    parsed["parent_id"] = store.get_issue(str(target)).id if target is not None else None
                except StoreError:
                    parsed["parent_id"] = None
                if parsed["parent_id"] is None:
                    parsed.pop("parent_id")
                    errors["parent"] = "Could not find issue by id or key."
            elif name == "customfield_10016":
                if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                    errors[name] = "Operation value must be a number"
                else:
                    parsed["story_points"] = None if value is None else float(value)
            else:
                errors[name] = CANNOT_SET.format(name)
        return parsed, errors

    def _check_parent(self, parent_id: int | None, issue_type: str, project: Project, errors: dict[str, str]) -> None:
        if parent_id is None:
            return
        parent = self.store.issues[parent_id]
        if issue_type == "Epic" or parent.issue_type != "Epic" or parent.project_id != project.id:
            errors["parent"] = "Given parent work item does not belong to appropriate hierarchy."

    def issue_delete(self, request: Request) -> Response:
        with self.store.lock:
            version = self._issue(request, write=True)
            self.store.delete_issue(version.id)
        return Response.empty(204)

    def issue_assign(self, request: Request) -> Response:
        body = self._object_body(request)
        with self.store.lock:
            version = self._issue(request, write=True)
            account = body.get("accountId")
            if account is not None and account not in self.store.users:
                return jira_error(404, [f"User '{account}' does not exist."])
            if account != version.assignee:
                self.store.edit_issue(version.id, {"assignee": account})
        return Response.empty(204)

    def transitions(self, request: Request) -> Response:
        with self.store.lock:
            version = self._issue(request)
            r = self.renderer(request)
            return Response.json(
                {
                    "expand": "transitions",
                    "transitions": [
                        {
                            "id": TRANSITION_IDS[target],
                            "name": target,
                            "to": r.status(target),
                            "hasScreen": False,
                            "isGlobal": False,
                            "isInitial": False,
                            "isAvailable": True,
                            "isConditional": False,
                            "isLooped": False,
                        }
                        for target in TRANSITIONS[version.status]
                    ],
                }
            )

    def transition(self, request: Request) -> Response:
        body = self._object_body(request)
        wanted = body.get("transition")
        transition_id = str(wanted.get("id", "")) if isinstance(wanted, dict) else ""
        fields = body.get("fields") or {}
        update = body.get("update") or {}
        if not isinstance(fields, dict) or not isinstance(update, dict):
            raise _fail(400, [BODY_INVALID])
        v = self.version(request)
        with self.store.lock:
            version = self._issue(request, write=True)
            target = next((t for t in TRANSITIONS[version.status] if TRANSITION_IDS[t] == transition_id), None)
            if target is None:
                return jira_error(400, [f"Transition id '{transition_id}' is not valid for this issue."])
            parsed, errors = self._parse_fields(fields, v, current=version)
            comments: list[Any] = []
            self._apply_updates(update, v, version, parsed, errors, comments)
            if errors:
                return jira_error(400, [], errors)
            changes = {k: value for k, value in parsed.items() if getattr(version, k) != value}
            self.store.edit_issue(version.id, {**changes, "status": target})
            for comment in comments:
                self.store.add_comment(version.id, comment)
        return Response.empty(204)

    def changelog(self, request: Request) -> Response:
        start = self._int_arg(request, "startAt", 0)
        size = self._int_arg(request, "maxResults", 100, 1, 100)
        with self.store.lock:
            version = self._issue(request)
            r = self.renderer(request)
            histories = self.store.history_of(version)
            page = histories[start : start + size]
            last = start + size >= len(histories)
            base = f"{r.api}/issue/{version.key}/changelog"
            data: dict[str, Any] = {
                "self": f"{base}?maxResults={size}&startAt={start}",
                "maxResults": size,
                "startAt": start,
                "total": len(histories),
                "isLast": last,
                "values": [r.history(h) for h in page],
            }
            if not last:
                data["nextPage"] = f"{base}?maxResults={size}&startAt={start + size}"
            return Response.json(data)

    # -- comments ------------------------------------------------------------------------------------
    def comments(self, request: Request) -> Response:
        start = self._int_arg(request, "startAt", 0)
        size = self._int_arg(request, "maxResults", 5000, 0, 5000)
        order = (request.arg("orderBy") or "created").strip()
        with self.store.lock:
            version = self._issue(request)
            r = self.renderer(request)
            comments = list(self.store.comments_of(version.id))
            if order.startswith("-"):
                comments.reverse()
            page = comments[start : start + size]
            return Response.json(
                {
                    "self": f"{r.api}/issue/{version.id}/comment",
                    "startAt": start,
                    "maxResults": size,
                    "total": len(comments),
                    "comments": [r.comment(c) for c in page],
                }
            )

    def comment_get(self, request: Request) -> Response:
        with self.store.lock:
            version = self._issue(request)
            wanted = request.params["comment"]
            for comment in self.store.comments_of(version.id):
                if str(comment.id) == wanted:
                    return Response.json(self.renderer(request).comment(comment))
        return jira_error(404, [f"Can not find a comment for the id: {wanted}."])

    def _comment_problem(self, body: Any, v: str) -> str | None:
        if v == "3":
            if not adf.is_valid_document(body):
                return "Comment body is not valid!"
            return None if adf.document_to_text(body).strip() else "Comment body can not be empty!"
        if not isinstance(body, str):
            return "Comment body is not valid!"
        return None if body.strip() else "Comment body can not be empty!"

    def comment_add(self, request: Request) -> Response:
        body = self._object_body(request)
        v = self.version(request)
        with self.store.lock:
            version = self._issue(request, write=True)
            problem = self._comment_problem(body.get("body"), v)
            if problem:
                return jira_error(400, [], {"comment": problem})
            comment = self.store.add_comment(version.id, body["body"])
            return Response.json(self.renderer(request).comment(comment), 201)

    # -- entity properties ---------------------------------------------------------------------------
    def properties(self, request: Request) -> Response:
        with self.store.lock:
            version = self._issue(request)
            r = self.renderer(request)
            keys = sorted(self.store.properties.get(version.id, {}))
            return Response.json(
                {
                    "keys": [
                        {"self": f"{r.api}/issue/{version.id}/properties/{quote(k, safe='')}", "key": k} for k in keys
                    ]
                }
            )

    def property_get(self, request: Request) -> Response:
        key = request.params["key"]
        with self.store.lock:
            version = self._issue(request)
            bag = self.store.properties.get(version.id, {})
            if key not in bag:
                return jira_error(404, [f"The property with key '{key}' does not exist."])
            return Response.json({"key": key, "value": bag[key]})

    def property_put(self, request: Request) -> Response:
        key = request.params["key"]
        if len(key) > MAX_PROPERTY_KEY:
            return jira_error(400, [f"The property key cannot be longer than {MAX_PROPERTY_KEY} characters."])
        try:
            text = request.body.decode("utf-8")
            value = json.loads(text)
        except (UnicodeDecodeError, ValueError):
            return jira_error(400, ["The property value must be a valid, non-empty JSON."])
        if len(text) > MAX_PROPERTY_VALUE:
            return jira_error(400, [f"The property value is too long. The maximum length is {MAX_PROPERTY_VALUE}."])
        with self.store.lock:
            version = self._issue(request, write=True)
            created = self.store.set_property(version.id, key, value)
        return Response.empty(201 if created else 200)

    def property_delete(self, request: Request) -> Response:
        key = request.params["key"]
        with self.store.lock:
            version = self._issue(request, write=True)
            if not self.store.delete_property(version.id, key):
                return jira_error(404, [f"The property with key '{key}' does not exist."])
        return Response.empty(204)


def _rich_text_problem(value: Any, v: str) -> str | None:
    """Why a description/comment value is not acceptable on this API version, or None."""
    if value is None:
        return None
    if v == "3":
        if not adf.is_valid_document(value):
            return "Operation value must be an Atlassian Document (see the Atlassian Document Format)"
        return None
    return None if isinstance(value, str) else "Operation value must be a string"
