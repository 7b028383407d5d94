"""Jira write-back: status comments on each project's status issue, each posted exactly once.

One kind of ``WriteRequest``, ``jira_status_comment``, with the payload ``{"issue_key", "body",
"property_key", "property_value"}``. A comment is not idempotent by itself (Jira has no client key
for comments and no batch comment API), so the key lives in the target twice:

- Every comment ends with a marker line, ``— posted by Accord · ref <WriteRequest.key>``. Before
  posting, the writer reads the issue's comments newest first (``orderBy=-created``, pages of
  ``COMMENT_PAGE``) and looks for that line. Found: the comment was posted by an earlier attempt
  (a crash after the comment and before the outbox learned of it, a response lost on the way), and
  nothing is posted again (``exists``). The scan ends once it has passed ``STATUS_LOOKBACK``
  status comments of other keys: requests for one issue are applied in the order given, so an
  earlier attempt of this request is newer than those, unless it was re-sent after that many
  newer statuses (the outbox re-sends a pending request before newer ones). In the usual case
  this is one page.
- After the comment, the entity property ``property_key`` is set to ``property_value`` (what was
  last posted); ``last_posted`` reads it back for the planner. When the comment exists but the
  property does not hold this value (the crash came between the two), the property is set then,
  unless it holds the value of a status posted after this comment (``property_value["key"]`` is a
  marker seen above it): a request re-sent late never turns the property back to an older status.

The check, the post and the property are one unit under the connector's retry policy (throttling,
5xx, dropped connections, Retry-After honoured): repeating the unit is safe because of the marker
check, while repeating the post alone is not. Each HTTP call inside the unit is made once.

The body is text. REST v3 takes an Atlassian Document: paragraphs (blank-line separated blocks)
with text nodes and hard breaks, built from the text, never markup pasted in; v2 takes the string.

Failures: a missing issue (404), a body Jira rejects (400) and a permission refusal on one issue
(403) are failed results, not retriable; throttling and 5xx that outlast the retries are failed
results marked retriable; 401 and configuration errors raise (the whole call cannot succeed).
Issues are written concurrently (at most ``settings.concurrency``), the requests of one issue in
order, one after the other.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jira import JIRA
from jira.utils import json_loads

from connectors.base import WriteRequest, WriteResult
from connectors.errors import AuthError, ConfigError, ConnectorError, PermanentError, TransientError
from connectors.jira import jql
from connectors.jira.connector import ID_PAGE_SIZE, JiraConnector, get_json
from connectors.jira.errors import SOURCE
from connectors.retry import call_with_retry
from connectors.settings import JiraSettings
from engagement.mapping import Mapping

log = logging.getLogger("accord.connectors.jira.writer")

STATUS_COMMENT = "jira_status_comment"
MARKER_PREFIX = "— posted by Accord · ref "
COMMENT_PAGE = 50  # comments per page of the marker scan, newest first
STATUS_LOOKBACK = 5  # the scan passes at most this many status comments of other keys
# Jira Cloud caps a comment at 32,767 characters ("jira.text.field.character.limit"); the text is
# cut well below that so the marker line and, on v3, the document's structure always fit.
MAX_TEXT_CHARS = 30_000
ELLIPSIS = "…"
MAX_KEY_CHARS = 200
MAX_PROPERTY_VALUE_CHARS = 32_768  # Jira's limit for an entity property value (serialized JSON)
# Project keys per status-issue search: the search asks for keys only (pages of up to 5000), and the
# GET URL stays near 2 KB with quoted, URL-encoded keys.
PROJECTS_PER_QUERY = 100
ISSUE_KEY = re.compile(r"[A-Z][A-Z0-9_]*-[1-9][0-9]*")
PROPERTY_KEY = re.compile(r"[A-Za-z0-9._-]{1,255}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # C0 controls and DEL, except tab and newline
_BLOCKS = re.compile(r"\n[ \t]*\n")
_MARKER_LINE = re.compile(re.escape(MARKER_PREFIX) + r"(\S+)")


# -- the comment body ------------------------------------------------------------------------------
def marker(key: str) -> str:
    """The last line of every status comment: short, human-readable, and what a re-run looks for."""
    return MARKER_PREFIX + key


def comment_text(body: str, key: str) -> str:
    """The text of the comment: ``body`` cleaned (no control characters, at most ``MAX_TEXT_CHARS``)
    and the marker line as its own paragraph."""
    text = _CONTROL.sub("", body.replace("\r\n", "\n").replace("\r", "\n")).strip("\n")
    if len(text) > MAX_TEXT_CHARS:
        text = text[: MAX_TEXT_CHARS - len(ELLIPSIS)].rstrip() + ELLIPSIS
    return f"{text}\n\n{marker(key)}" if text.strip() else marker(key)


def to_adf(text: str) -> dict[str, Any]:
    """``text`` as an Atlassian Document: a paragraph per blank-line separated block, a hard break per
    line break, every character kept as text (nothing in it is read as markup)."""
    paragraphs: list[dict[str, Any]] = []
    for block in _BLOCKS.split(text):
        if not block.strip():
            continue
        inline: list[dict[str, Any]] = []
        for i, line in enumerate(block.split("\n")):
            if i:
                inline.append({"type": "hardBreak"})
            if line:
                inline.append({"type": "text", "text": line})
        paragraphs.append({"type": "paragraph", "content": inline})
    return {"type": "doc", "version": 1, "content": paragraphs}


def _adf_text(node: Any, out: list[str]) -> None:
    if isinstance(node, list):
        for child in node:
            _adf_text(child, out)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind == "text":
        out.append(str(node.get("text", "")))
    elif kind == "hardBreak":
        out.append("\n")
    else:
        _adf_text(node.get("content"), out)
        if kind != "doc":
            out.append("\n")


def body_lines(body: Any) -> list[str]:
    """The lines of a comment body as Jira returns it: a v2 string or a v3 document."""
    if isinstance(body, str):
        return body.splitlines()
    parts: list[str] = []
    _adf_text(body, parts)
    return "".join(parts).splitlines()


def markers_in(body: Any) -> list[str]:
    """The request keys of the marker lines in a comment body."""
    found = (_MARKER_LINE.fullmatch(line.strip()) for line in body_lines(body))
    return [m.group(1) for m in found if m]


# -- requests ---------------------------------------------------------------------------------------
def _payload_problem(request: WriteRequest) -> str | None:
    """Why a request cannot be sent, in words free of its contents; None when it can."""
    if request.kind != STATUS_COMMENT:
        return f"kind {request.kind!r} is not written to Jira"
    key = request.key
    if not key or len(key) > MAX_KEY_CHARS or any(ch.isspace() or not ch.isprintable() for ch in key):
        return f"the request key must be 1-{MAX_KEY_CHARS} printable characters without spaces"
    p = request.payload
    if not isinstance(p.get("issue_key"), str) or not ISSUE_KEY.fullmatch(p["issue_key"]):
        return "payload.issue_key is not a Jira issue key"
    if not isinstance(p.get("body"), str) or not p["body"].strip():
        return "payload.body is missing or empty"
    if not isinstance(p.get("property_key"), str) or not PROPERTY_KEY.fullmatch(p["property_key"]):
        return "payload.property_key is not a valid entity property key"
    value = p.get("property_value")
    if not isinstance(value, dict) or not value:
        return "payload.property_value must be a non-empty JSON object"
    try:
        size = len(json.dumps(value))
    except (TypeError, ValueError):
        return "payload.property_value is not JSON"
    if size > MAX_PROPERTY_VALUE_CHARS:
        return f"payload.property_value is longer than {MAX_PROPERTY_VALUE_CHARS} characters as JSON"
    return None


def _failed(request: WriteRequest, error: str, *, retriable: bool = False) -> WriteResult:
    return WriteResult(request.key, ok=False, outcome="failed", error=error, retriable=retriable)


def _record_failure(request: WriteRequest, exc: ConnectorError) -> WriteResult:
    """The result for an error that concerns this request alone; re-raises one that concerns the call."""
    if isinstance(exc, TransientError):
        return _failed(request, str(exc), retriable=True)
    if exc.status == 404:
        return _failed(request, "issue not found (404)")
    if exc.status == 403:
        return _failed(request, "permission denied on the issue (403)")
    if exc.status == 400:
        # A document or value Jira refuses is a bug here, not data to log: the key says which.
        log.error("jira: status comment %s rejected by Jira (400)", request.key)
        return _failed(request, "Jira rejected the comment or property (400)")
    if isinstance(exc, PermanentError):
        return _failed(request, str(exc))
    raise exc


def _by_issue(requests: Sequence[WriteRequest], todo: Iterable[int]) -> list[list[int]]:
    groups: dict[str, list[int]] = {}
    for i in todo:
        groups.setdefault(requests[i].payload["issue_key"], []).append(i)
    return list(groups.values())


class JiraWriter:
    """Status comments and their entity property (see the module docstring), plus the reads the
    planner needs: which issue carries a project's status (``status_issue_keys``) and what was last
    posted there (``last_posted``)."""

    target = SOURCE

    def __init__(self, settings: JiraSettings, mapping: Mapping) -> None:
        self.settings = settings
        self.mapping = mapping
        self.push = mapping.push.jira
        # The read connector's pooled clients, error classification and retry policy.
        self._jira = JiraConnector(settings, mapping)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self._jira.close()

    def _writers(self) -> ThreadPoolExecutor:
        """The writer's ``settings.concurrency`` threads, kept from one ``write`` to the next (a push
        calls it once per chunk of ten: starting threads for each cost more CPU than the writes'
        own bookkeeping). A call's groups run on as many of them as there are groups."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="jira-write")
            return self._pool

    # -- writing ------------------------------------------------------------------------------------
    def write(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        results: dict[int, WriteResult] = {}
        todo: list[int] = []
        for i, request in enumerate(requests):
            problem = _payload_problem(request)
            if problem is None:
                todo.append(i)
            else:
                results[i] = _failed(request, problem)
        stop = threading.Event()

        def apply(indexes: list[int]) -> None:
            for i in indexes:
                if stop.is_set():
                    return
                try:
                    results[i] = self._write_one(requests[i])
                except BaseException:
                    stop.set()
                    raise

        groups = _by_issue(requests, todo)
        workers = min(self.settings.concurrency, len(groups))
        if workers <= 1:
            for group in groups:
                apply(group)
        else:
            pool = self._writers()
            futures = [pool.submit(apply, group) for group in groups]
            errors = [f.exception() for f in futures]  # waits for every group, as leaving a pool did
            first = next((e for e in errors if e is not None), None)
            if first is not None:
                raise first
        ordered = [results[i] for i in range(len(requests))]
        counts = Counter(r.outcome for r in ordered)
        log.info("jira: %d status comments: %s", len(ordered), dict(sorted(counts.items())))
        return ordered

    def _write_one(self, request: WriteRequest) -> WriteResult:
        p = request.payload
        issue, prop_key, value = p["issue_key"], p["property_key"], p["property_value"]
        text = comment_text(p["body"], request.key)
        body: str | dict[str, Any] = to_adf(text) if self.settings.rest_api_version == "3" else text
        sent = False  # a post left this call: finding the marker later means it landed

        def attempt() -> WriteResult:
            nonlocal sent
            if request.fresh and not sent:  # first attempt ever: no earlier comment can carry the marker
                comment_id, newer = None, set[str]()
            else:
                comment_id, newer = self._find_marker(issue, request.key)
            if comment_id is None:
                sent = True
                comment_id = self._post_comment(issue, body)
                self._put_property(issue, prop_key, value)
                return WriteResult(request.key, ok=True, outcome="created", target_id=comment_id)
            current = self._get_property(issue, prop_key)
            superseded = current is not None and current.get("key") in newer
            if current != value and not superseded:
                self._put_property(issue, prop_key, value)
            outcome = "created" if sent else "exists"
            return WriteResult(request.key, ok=True, outcome=outcome, target_id=comment_id)

        try:
            return call_with_retry(self.settings.retry, attempt, api=SOURCE)
        except AuthError as exc:
            if exc.status == 403:
                return _record_failure(request, exc)
            raise
        except ConnectorError as exc:
            return _record_failure(request, exc)

    # Each step is one HTTP call, made once: the caller retries the whole check-post-property unit.
    def _find_marker(self, issue: str, key: str) -> tuple[str | None, set[str]]:
        """The id of the comment carrying ``key``'s marker (None when the scan ends without it) and
        the keys of the status comments newer than it."""
        newer: set[str] = set()
        start = 0
        while True:
            params = {"orderBy": "-created", "startAt": start, "maxResults": COMMENT_PAGE}
            page = self._jira.call_once(
                "read the comments of a status issue", get_json(f"issue/{issue}/comment", params)
            )
            comments = page.get("comments") or []
            for comment in comments:
                keys = markers_in(comment.get("body"))
                if key in keys:
                    return str(comment.get("id")), newer
                newer.update(keys)
                if len(newer) >= STATUS_LOOKBACK:
                    return None, newer
            start += len(comments)
            if not comments or start >= int(page.get("total") or 0):
                return None, newer

    def _post_comment(self, issue: str, body: str | dict[str, Any]) -> str:
        def post(client: JIRA) -> str:
            # The request ``client.add_comment`` sends (the body as given, by json.dumps: a string for
            # v2, a document for v3), without building the library's Comment resource from the answer
            # (a tree of objects per comment, of which only the id is read).
            response = client._session.post(client._get_url(f"issue/{issue}/comment"), data=json.dumps({"body": body}))
            return str(json_loads(response)["id"])

        return self._jira.call_once("post a status comment", post)

    def _put_property(self, issue: str, key: str, value: dict[str, Any]) -> None:
        self._jira.call_once("set the status property", lambda c: c.add_issue_property(issue, key, value))

    def _get_property(self, issue: str, key: str, *, retry: bool = False) -> dict[str, Any] | None:
        """The property's value, None when it is not set (404) or not a JSON object."""
        call = self._jira.call if retry else self._jira.call_once
        try:
            found = call("read the status property", get_json(f"issue/{issue}/properties/{key}", {}))
        except ConnectorError as exc:
            if exc.status == 404:
                return None
            raise
        value = found.get("value")
        return value if isinstance(value, dict) else None

    # -- reads for the planner -------------------------------------------------------------------
    def last_posted(self, issue_keys: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """What was last posted on each issue: the value of ``push.jira.property_key``, None when it
        was never set or the issue is gone. One GET per issue, at most ``concurrency`` at a time."""
        keys = list(dict.fromkeys(issue_keys))
        bad = [k for k in keys if not ISSUE_KEY.fullmatch(k)]
        if bad:
            raise ValueError(f"not Jira issue keys: {bad[:3]!r}")
        prop = self.push.property_key

        def read(issue: str) -> dict[str, Any] | None:
            try:
                return self._get_property(issue, prop, retry=True)
            except ConnectorError as exc:
                if exc.status == 404:
                    return None
                raise

        workers = max(1, min(self.settings.concurrency, len(keys)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="jira-read") as pool:
            return dict(zip(keys, pool.map(read, keys), strict=True))

    def status_issue_keys(self, project_keys: Sequence[str]) -> dict[str, str | None]:
        """For each project, the issue that carries its status comments, per ``push.jira.status_issue``:
        ``first_epic`` the epic with the lowest number, ``labelled`` the issue labelled
        ``push.jira.status_label`` with the lowest number. None when the project has none, or when
        Jira does not know the project.

        One key-only search per ``PROJECTS_PER_QUERY`` projects. A project Jira does not know makes
        its whole query fail (400): then the projects the API user can see are listed once and the
        query runs again without the unknown ones. A query that fails without an unknown project
        raises (the query itself is wrong; nothing is reported as "no status issue").
        """
        wanted = list(dict.fromkeys(project_keys))
        if self.push.status_issue == "first_epic":
            clause = "issuetype = Epic"
        else:
            clause = f"labels = {jql.quote(self.push.status_label)}"
        known: set[str] | None = None
        lowest: dict[str, tuple[int, str]] = {}
        for start in range(0, len(wanted), PROJECTS_PER_QUERY):
            chunk = wanted[start : start + PROJECTS_PER_QUERY]
            try:
                found = self._status_search(chunk, clause)
            except ConfigError as exc:
                if exc.status != 400:
                    raise
                if known is None:
                    known = {k.upper() for k in self._jira.project_keys()}
                present = [p for p in chunk if p.upper() in known]
                if len(present) == len(chunk):
                    raise
                log.warning(
                    "jira: %d of %d projects are unknown to Jira: no status issue",
                    len(chunk) - len(present),
                    len(chunk),
                )
                found = self._status_search(present, clause) if present else []
            for issue in found:
                project, _, number = issue.rpartition("-")
                if not number.isdigit():
                    continue
                entry = (int(number), issue)
                if project not in lowest or entry < lowest[project]:
                    lowest[project] = entry
        return {p: lowest[p.upper()][1] if p.upper() in lowest else None for p in wanted}

    def _status_search(self, projects: list[str], clause: str) -> list[str]:
        """Keys of the candidate issues of ``projects`` (every page)."""
        pages = self._jira.search_pages(
            f"{jql.project_in(projects)} AND {clause} ORDER BY key ASC",
            fields=("key",),
            page_size=ID_PAGE_SIZE,
            reconcile=(),
            what=f"find the status issues of {len(projects)} projects",
        )
        return [str(issue["key"]) for page in pages for issue in page]
