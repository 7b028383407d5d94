"""Jira Cloud through the jira library: issues from ``/search/jql`` with ``nextPageToken``, incremental
on ``updated``, hard deletes by id-set reconciliation.

One stream, ``issues``, one unit. An incremental read asks for ``updated >= "<minute>" ORDER BY
updated ASC, key ASC`` across every project in one query, where the minute is ``cursor - lookback``
rounded down in the API user's own time zone (JQL date literals have minute resolution and are read
in that zone; API-NOTES 2.2). Each page is handed over with the latest stamp it holds as the cursor
safe to commit with it; records read twice inside the lookback are de-duplicated by issue id in the
store. A full read lists the projects and reads them in chunks of keys, concurrently (at most
``settings.concurrency`` requests in flight); every issue it reads counts as existing, so the
final batch reconciles and issues deleted in Jira are marked deleted. An incremental read with
``reconcile`` adds the pages of id-only searches (``live_id_pages``) to the issues it read.

``/search/jql`` is eventually consistent: an issue written a moment ago may be missing from a
search. Ids known to have changed (``note_changed``, called after Accord writes to an issue) are sent
as ``reconcileIssues`` so the search reads them at their current state.

Retries happen in one layer only. The jira library's ``ResilientSession`` retries 429 and 503 by
itself, with sleeps of its own of up to a minute and a half-jittered ``2 * Retry-After``, and
connection errors after ``10 * 2**n`` seconds (API-NOTES 2.4). ``settings.library_max_retries``
defaults to 0, so every failure reaches ``classify`` at once and Accord's tenacity policy
(``settings.retry``: Retry-After honoured, capped by ``max_wait_s``) is the only one that waits.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import requests
from jira import JIRA
from jira.exceptions import JIRAError
from jira.resilientsession import raise_on_error
from jira.utils import json_loads

from connectors.base import WorkUnit
from connectors.errors import ConfigError, ConnectorError, PermanentError
from connectors.incremental import Batch, PageGuard, Window, progressive_cursor
from connectors.jira import jql
from connectors.jira.errors import SOURCE, classify
from connectors.jsonbody import NOT_DECODED, fast_loads
from connectors.retry import call_with_retry
from connectors.settings import JiraSettings
from connectors.stamps import iso_stamp
from engagement.mapping import Mapping
from engagement.records import SourceRecord, iso, parse_datetime, project_key

log = logging.getLogger("accord.connectors.jira")
T = TypeVar("T")

STREAM = "issues"
ORDER = "ORDER BY updated ASC, key ASC"  # the key breaks ties between issues sharing a stamp
# Issue fields the record is built from; extra_fields of the mapping are added. Never *all.
FIELDS = (
    "project",
    "summary",
    "issuetype",
    "status",
    "assignee",
    "duedate",
    "labels",
    "parent",
    "created",
    "updated",
    "resolutiondate",
    "priority",
)
ATTRIBUTES = frozenset(
    {
        "key",
        "project",
        "summary",
        "issue_type",
        "status",
        "status_category",
        "assignee_email",
        "assignee_name",
        "assignee_account_id",
        "due_date",
        "labels",
        "parent",
        "created",
        "resolved",
        "priority",
    }
)
STATUS_CATEGORIES = frozenset({"new", "indeterminate", "done"})
MAX_RECONCILE_IDS = 50  # Jira's limit for reconcileIssues per request
ID_PAGE_SIZE = 5000  # /search/jql pages up to 5000 issues when only ids are asked for
PROJECT_PAGE_SIZE = 50
MAX_KEYS_PER_QUERY = 50
FULL_BATCH_PAGES = 5  # a full read hands its pages to the store this many at a time
UTF8_NAMES = frozenset({"utf-8", "utf8", "utf_8"})


def _name(value: Any, key: str = "name") -> str | None:
    if isinstance(value, dict):
        found = value.get(key)
        return None if found is None or found == "" else str(found)
    return None


def _plain(value: Any) -> Any:
    """A custom field's value as JSON an ops person would expect: options by value, users by account."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        for key in ("value", "key", "name", "accountId", "id"):
            if key in value:
                return value[key]
    return value


def to_record(issue: dict[str, Any], extra_fields: dict[str, str]) -> SourceRecord:
    """One search result as Accord's normalized issue record (see ``engagement.records.WorkItem``)."""
    return _to_record(issue, tuple(sorted(extra_fields.items())))


def _to_record(issue: dict[str, Any], extra: tuple[tuple[str, str], ...]) -> SourceRecord:
    """``to_record`` with the extra fields sorted once per page instead of once per issue.

    Runs once per issue: the fields are read once, the stamps written through ``connectors.stamps``;
    the records it makes are pinned by ``tests/connectors/test_to_record_pinned.py``.
    """
    issue_id = str(issue.get("id") or "")
    fields: dict[str, Any] = issue.get("fields") or {}
    get = fields.get
    stamp = parse_datetime(get("updated"))
    if not issue_id.isdigit() or stamp is None:
        raise PermanentError(SOURCE, f"issue {issue_id or '?'}: the search answer has no id or updated stamp")
    key = str(issue.get("key") or "")
    project = _name(get("project"), "key") or key.rsplit("-", 1)[0]
    status = get("status") or {}
    category = _name(status.get("statusCategory"), "key")
    assignee = get("assignee") or {}
    labels = get("labels") or []
    # Atlassian privacy settings may hide emailAddress (absent or empty): the email is then unknown.
    data: dict[str, Any] = {
        "key": key,
        "project": project,
        "summary": get("summary") or "",
        "issue_type": _name(get("issuetype")),
        "status": _name(status),
        "status_category": category if category in STATUS_CATEGORIES else "new",
        "assignee_email": _name(assignee, "emailAddress"),
        "assignee_name": _name(assignee, "displayName"),
        "assignee_account_id": _name(assignee, "accountId"),
        "due_date": get("duedate") or None,
        "labels": [str(label) for label in labels] if labels else [],
        "parent": _name(get("parent"), "key"),
        "created": iso_stamp(get("created")),
        "resolved": iso_stamp(get("resolutiondate")),
        "priority": _name(get("priority")),
    }
    for attribute, field_id in extra:
        data[attribute] = _plain(get(field_id))
    return SourceRecord(SOURCE, STREAM, issue_id, stamp, data, partition=project)


def get_json(path: str, params: dict[str, Any]) -> Callable[[JIRA], dict[str, Any]]:
    """GET ``path`` under ``/rest/api/{v}/`` and answer its raw JSON.

    This is the library's own helper (``JIRA._get_json``: its ResilientSession, URL building and
    ``JIRAError`` on failure). No public method hands back a ``/search/jql`` page with its
    ``nextPageToken`` without also fetching the whole field catalogue once per client, and
    ``projects()`` uses the unpaged ``GET project``.
    """

    def get(client: JIRA) -> dict[str, Any]:
        result: dict[str, Any] = client._get_json(path, params=params)
        return result

    return get


def get_page(path: str, params: dict[str, Any]) -> Callable[[JIRA], dict[str, Any]]:
    """``get_json`` for the reader's pages, which are large: the same request through the same
    session, the same answer, ``JIRAError`` and log line, with the body read in one piece and decoded
    by orjson where that is exact (``connectors.jsonbody``) instead of ``Response.json``."""

    def get(client: JIRA) -> dict[str, Any]:
        response = client._session.get(
            client._get_url(path), params=params, stream=True, hooks={"response": [_read_body]}
        )
        try:
            result: dict[str, Any] = _decode(client, response)
        finally:
            response.close()  # the connection goes back to the pool (or away, after an error)
        return result

    return get


def _read_body(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
    """A response hook (run inside ``Session.send``): the body read in one piece, before the jira
    library's ``ResilientSession`` asks for ``response.content``, which requests reads 10 KB at a
    time: a 300 KB page was 30 reads, each a Python round of urllib3 and a release and re-take of
    the GIL, which a reader waits for while other threads parse. ``Response.content``'s own steps
    (``iter_content``: the same bytes, the same exceptions, raised where ``content`` raised them)."""
    consumed = response._content_consumed  # type: ignore[attr-defined]  # requests' own flag; not in its stubs
    if not consumed and response.status_code != 0 and response.raw is not None:
        response._content = b"".join(response.iter_content(chunk_size=None))
    return response


def _decode(client: JIRA, response: requests.Response) -> Any:
    """What ``JIRA._get_json`` makes of ``response`` (``jira.utils.json_loads``, its log line on an
    unreadable body), through ``fast_loads`` when requests would read the body as UTF-8."""
    raise_on_error(response)
    body = response.content
    encoding = response.encoding
    if encoding is None:
        # requests reads a body without a charset as UTF-8 unless it starts with a BOM or NUL bytes
        # (which orjson refuses), and a body of up to 3 bytes by guessing: that one goes its way.
        utf8 = len(body) > 3
    else:
        utf8 = encoding.lower() in UTF8_NAMES
    if utf8:
        decoded = fast_loads(body)
        if decoded is not NOT_DECODED:
            return decoded
    try:
        return json_loads(response)
    except ValueError as exc:
        client.log.error(f"{exc}\n{response.text if response else response}")
        raise


def read_environment_once(session: requests.Session) -> None:
    """Make ``session`` read the environment (proxy variables, ``REQUESTS_CA_BUNDLE``) once per
    server and settings instead of on every request.

    requests merges the environment into every request's settings (``merge_environment_settings``),
    walking ``os.environ`` twice for the proxies: about a fifth of the CPU a Jira write costs. A
    client talks to one server, so the merged settings are kept per scheme, host and port, and the
    request's and the session's own settings; a request that brings proxies of its own is merged as
    before. What the environment says is then what it said when the client first called that server
    (a process does not change its proxy variables while it runs)."""
    merge: Callable[..., Any] = session.merge_environment_settings
    merged: dict[tuple[Any, ...], Any] = {}

    def merge_once(url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        if proxies or not isinstance(proxies, dict) or not isinstance(url, str):  # its own proxies: as before
            return merge(url, proxies, stream, verify, cert)
        parts = urlsplit(url)
        own = (tuple(sorted(session.proxies.items())), session.stream, session.verify, session.cert)
        try:
            key = (parts.scheme, parts.netloc, stream, verify, cert, session.trust_env, own)
            hash(key)
        except TypeError:  # settings that cannot be a key (a list of certificates, say): as before
            return merge(url, proxies, stream, verify, cert)
        found = merged.get(key)
        if found is None:
            found = merged[key] = merge(url, {}, stream, verify, cert)
        return {**found, "proxies": dict(found["proxies"])}

    session.merge_environment_settings = merge_once  # type: ignore[method-assign]  # this session's own


@dataclass(frozen=True)
class _Failed:
    error: BaseException


_DONE = object()


class _ClientPool:
    """Clients of one connector. A call checks one out, so no two threads ever share a session, and
    there are never more clients than calls that ran at the same time."""

    def __init__(self, connect: Callable[[], JIRA]) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._idle: list[JIRA] = []
        self._all: list[JIRA] = []

    @contextmanager
    def client(self) -> Iterator[JIRA]:
        with self._lock:
            client = self._idle.pop() if self._idle else None
        if client is None:
            client = self._connect()
            with self._lock:
                self._all.append(client)
        try:
            yield client
        finally:
            with self._lock:
                kept = any(c is client for c in self._all)
                if kept:
                    self._idle.append(client)
            if not kept:  # the pool was closed while this call ran
                client.close()  # type: ignore[no-untyped-call]  # jira's close() is not annotated

    def close(self) -> None:
        with self._lock:
            clients, self._all, self._idle = self._all, [], []
        for client in clients:
            client.close()  # type: ignore[no-untyped-call]  # jira's close() is not annotated


class JiraConnector:
    source = SOURCE

    def __init__(
        self, settings: JiraSettings, mapping: Mapping, *, known_changed_ids: Iterable[str | int] = ()
    ) -> None:
        self.settings = settings
        self.mapping = mapping
        clash = ATTRIBUTES & set(mapping.jira.extra_fields)
        if clash:
            raise ConfigError(SOURCE, f"jira.extra_fields {sorted(clash)} would replace built-in attributes")
        self.fields = tuple(dict.fromkeys((*FIELDS, *mapping.jira.extra_fields.values())))
        self._pool = _ClientPool(self._connect)
        self._lock = threading.Lock()
        self._zone: ZoneInfo | None = None
        self._zone_known = False
        self._known: set[str] = set()
        self.note_changed(known_changed_ids)

    # -- client ----------------------------------------------------------------------------------------
    def _connect(self) -> JIRA:
        s = self.settings
        client = JIRA(
            server=s.server,
            basic_auth=(s.email, s.api_token.get_secret_value()),
            options={"rest_api_version": s.rest_api_version, "verify": s.ca_cert or True},
            max_retries=s.library_max_retries,
            timeout=s.timeout_s,
            get_server_info=True,
            # The library logs response bodies on unreadable answers (contact data): keep it quiet.
            logging=False,
        )
        read_environment_once(client._session)
        if client.deploymentType != "Cloud":
            client.close()  # type: ignore[no-untyped-call]  # jira's close() is not annotated
            raise ConfigError(
                SOURCE,
                f"the server reports deploymentType {client.deploymentType!r}, not 'Cloud': Accord reads "
                "Jira Cloud's /search/jql (the library answers None there for other deployments)",
            )
        return client

    def call_once(self, what: str, fn: Callable[[JIRA], T]) -> T:
        """``fn`` on a pooled client, once, its failure classified. For steps that are only safe to
        repeat together (the writer's check-then-post): the caller retries the whole sequence."""
        try:
            with self._pool.client() as client:
                return fn(client)
        except ConnectorError:
            raise
        except JIRAError as exc:
            # Its str() carries the response headers and body: keep it out of tracebacks.
            raise classify(exc, what) from None
        except Exception as exc:
            raise classify(exc, what) from exc

    def call(self, what: str, fn: Callable[[JIRA], T]) -> T:
        """``fn`` on a pooled client under the retry policy: for idempotent requests only."""
        return call_with_retry(self.settings.retry, partial(self.call_once, what, fn), api=SOURCE)

    def close(self) -> None:
        self._pool.close()

    # -- ids known to have changed (read-after-write) -------------------------------------------------
    def note_changed(self, issue_ids: Iterable[str | int]) -> None:
        """Issues Accord just wrote to: the next read asks for them with ``reconcileIssues``."""
        ids = {str(i) for i in issue_ids}
        bad = sorted(i for i in ids if not i.isdigit())
        if bad:
            raise ValueError(f"Jira issue ids are numeric, got {bad[:3]!r}")
        with self._lock:
            self._known.update(ids)

    def _known_groups(self) -> list[list[str]]:
        with self._lock:
            known = sorted(self._known, key=int)
        return [known[i : i + MAX_RECONCILE_IDS] for i in range(0, len(known), MAX_RECONCILE_IDS)]

    def _forget(self, groups: list[list[str]]) -> None:
        with self._lock:
            self._known.difference_update(i for group in groups for i in group)

    # -- site facts ---------------------------------------------------------------------------------------
    def user_zone(self) -> ZoneInfo | None:
        """The API user's time zone (JQL dates are read in it); None when Jira does not say."""
        with self._lock:
            if self._zone_known:
                return self._zone
        me: dict[str, Any] = self.call("read the API user's time zone", lambda c: c.myself())
        name = me.get("timeZone")
        try:
            zone = ZoneInfo(str(name)) if name else None
        except (ZoneInfoNotFoundError, ValueError):
            zone = None
        if zone is None:
            log.warning("jira: the API user's time zone is unknown; incremental bounds widened by 14 hours")
        with self._lock:
            self._zone, self._zone_known = zone, True
        return zone

    def project_keys(self) -> list[str]:
        """Every project the API user can browse (``project/search``, paged), sorted.

        The first page says how many there are (``total``); the other pages are then asked for at
        once, ``concurrency`` at a time (medium org, 14 pages at 50 ms: 0.8 -> 0.25 s before the first
        search). Without a total, or when the last page says more came meanwhile, it goes on page by
        page from there."""
        first = self._project_page(0)
        values = first.get("values") or []
        keys = [str(p["key"]) for p in values]
        start = len(values)
        last = bool(first.get("isLast", True)) or not values
        total = first.get("total")
        if not last and isinstance(total, int) and total > start:
            starts = list(range(start, total, len(values)))
            tasks: list[Callable[[], Iterator[tuple[int, dict[str, Any]]]]] = [
                partial(self._project_pages, at, len(values)) for at in starts
            ]
            pages = sorted(self._parallel(tasks), key=lambda found: found[0])
            for _, page in pages:
                keys.extend(str(p["key"]) for p in page.get("values") or [])
            at, tail = pages[-1]
            start = at + len(tail.get("values") or [])
            last = bool(tail.get("isLast", True)) or not tail.get("values")
        guard = PageGuard("list projects")
        while not last:
            guard.check(start)
            page = self._project_page(start)
            values = page.get("values") or []
            keys.extend(str(p["key"]) for p in values)
            start += len(values)
            last = bool(page.get("isLast", True)) or not values
        if not keys:
            raise ConfigError(SOURCE, "no projects visible to the API user; check its Browse Projects permission")
        return sorted(set(keys))

    def _project_page(self, start: int, size: int | None = None) -> dict[str, Any]:
        params = {"startAt": start, "maxResults": size or PROJECT_PAGE_SIZE}
        page: dict[str, Any] = self.call("list projects", get_page("project/search", params))
        return page

    def _project_pages(self, start: int, size: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """One page, as a stream of one for ``_parallel``, with where it starts."""
        yield start, self._project_page(start, size)

    # -- search ---------------------------------------------------------------------------------------------
    def search_pages(
        self, query: str, *, fields: Sequence[str], page_size: int, reconcile: Sequence[str], what: str
    ) -> Iterator[list[dict[str, Any]]]:
        """The issues of one query, page by page, following ``nextPageToken`` on ``/search/jql``.

        GET with the raw JSON answer: the page boundaries and the token stay visible (the library's
        ``enhanced_search_issues`` would also fetch the whole field catalogue once per client).
        """
        params: dict[str, Any] = {"jql": query, "fields": ",".join(fields), "maxResults": page_size}
        if reconcile:
            params["reconcileIssues"] = list(reconcile)
        guard = PageGuard(what)
        token: str | None = None
        while True:
            sent = params if token is None else {**params, "nextPageToken": token}
            result = self.call(what, get_page("search/jql", sent))
            # Taken out of the answer: this frame keeps no page alive while the caller holds it.
            yield list(result.pop("issues", None) or [])
            token = result.get("nextPageToken")
            if not token or result.get("isLast") is True:
                return
            guard.check(token)

    def _parallel(self, tasks: list[Callable[[], Iterator[T]]]) -> Iterator[T]:
        """Items of several page streams as they arrive, at most ``concurrency`` streams at a time.

        A bounded queue sits between the workers and the caller, so at most a few pages wait in
        memory however large the org; the first error stops every worker and is raised here.
        """
        workers = min(self.settings.concurrency, len(tasks))
        if workers <= 1:
            for task in tasks:
                yield from task()
            return
        # One waiting item per worker keeps every worker busy while the caller works on another;
        # a worker whose item does not fit waits with it (at most 2 * workers + 1 items in memory).
        out: queue.Queue[object] = queue.Queue(maxsize=workers)
        stop = threading.Event()

        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def run(task: Callable[[], Iterator[T]]) -> None:
            try:
                for item in task():
                    if not put(item):
                        return
            except BaseException as exc:  # handed to the reading thread, which raises it
                put(_Failed(exc))
            finally:
                put(_DONE)

        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="jira-read")
        try:
            for task in tasks:
                pool.submit(run, task)
            remaining = len(tasks)
            while remaining:
                item = out.get()
                if item is _DONE:
                    remaining -= 1
                elif isinstance(item, _Failed):
                    raise item.error
                else:
                    yield item  # type: ignore[misc]  # only run() puts here: items of Iterator[T]
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def _chunks(self, keys: list[str], *, spread: bool) -> list[list[str]]:
        """Project keys per query: at most 50. With ``spread``, the keys are dealt into a multiple of
        ``concurrency`` chunks (at least two per worker, as many as the limit of 50 needs), whose
        sizes differ by one key at most: every worker reads as many chunks of about the same size
        and they finish together. Cut in chunks of 50, the medium org's 689 projects made 14 chunks
        for 4 workers: two workers read a fourth chunk alone for the last 2 of 10 s (at 50 ms).

        Then the last wave (one chunk per worker) is cut in halves: the projects the workers settle
        together at the very end are half as many (the sync unifies the clients of settled projects
        while the read goes on, ``Batch.pending``), for one more partial page per worker."""
        if not spread:
            return [keys[i : i + MAX_KEYS_PER_QUERY] for i in range(0, len(keys), MAX_KEYS_PER_QUERY)]
        workers = self.settings.concurrency
        count = max(math.ceil(len(keys) / MAX_KEYS_PER_QUERY), 2 * workers)
        count = min(len(keys), math.ceil(count / workers) * workers)
        if count == 0:
            return []
        size, larger = divmod(len(keys), count)
        chunks: list[list[str]] = []
        start = 0
        for index in range(count):
            end = start + size + (1 if index < larger else 0)
            chunks.append(keys[start:end])
            start = end
        if workers > 1 and count >= 2 * workers and size >= 2:
            last = chunks[-workers:]
            chunks[-workers:] = [
                half for chunk in last for half in (chunk[: len(chunk) // 2], chunk[len(chunk) // 2 :])
            ]
        return chunks

    def _records(self, page: list[dict[str, Any]]) -> list[SourceRecord]:
        extra = tuple(sorted(self.mapping.jira.extra_fields.items()))
        return [_to_record(issue, extra) for issue in page]

    def _targeted(self, groups: list[list[str]]) -> Iterator[list[SourceRecord]]:
        """Known-changed ids beyond the first 50 (those ride along with the main query)."""
        for group in groups[1:]:
            for page in self.search_pages(
                f"{jql.issue_ids(group)} {ORDER}",
                fields=self.fields,
                page_size=self.mapping.jira.page_size,
                reconcile=group,
                what="read issues known to have changed",
            ):
                yield self._records(page)

    # -- reading -----------------------------------------------------------------------------------------
    def work_units(self) -> list[WorkUnit]:
        return [WorkUnit(STREAM)]

    def read(
        self, unit: WorkUnit, cursor: str | None, *, upper: datetime, full: bool, reconcile: bool
    ) -> Iterator[Batch]:
        if unit.stream != STREAM:
            raise ConfigError(SOURCE, f"unknown stream {unit.stream!r}; the Jira connector reads {STREAM!r}")
        lookback = timedelta(seconds=self.mapping.jira.lookback_seconds)
        window = Window(None, upper) if full or cursor is None else Window.from_cursor(cursor, lookback, upper)
        groups = self._known_groups()
        first = groups[0] if groups else []
        # Issues this read saw count as existing, in an incremental reconcile too: the id search
        # may trail them (search lag).
        closes = window.full or reconcile
        batches = self._read_full(first) if window.full else self._read_incremental(window, first, seen=closes)
        issues = pages = 0
        for batch in batches:
            pages += batch.meta.get("pages", 1)
            issues += len(batch.records)
            yield batch
        for records in self._targeted(groups):
            pages += 1
            issues += len(records)
            yield Batch(STREAM, "", records, records_seen=closes, meta={"pages": 1})
        if not window.full and reconcile:
            for ids in self.live_id_pages(first):
                yield Batch(STREAM, "", [], seen_ids=ids, meta={"pages": 0})
        self._forget(groups)
        log.info("jira: %d pages, %d issues (%s)", pages, issues, "full" if window.full else "incremental")
        yield Batch(STREAM, "", [], cursor=iso(upper), final=True, reconcile=closes, meta={"pages": 0})

    def _read_full(self, reconcile: list[str]) -> Iterator[Batch]:
        """Every issue of every project, ``concurrency`` chunks of projects at a time. The first batch
        names the projects still to read (``Batch.pending``, as ``p:`` keys); the batch that holds a
        chunk's last page names them without that chunk's: its projects are settled, and the sync
        may unify their clients while the other chunks are read (``flows.engine.EarlyUnify``)."""
        keys = self.project_keys()
        chunks = self._chunks(keys, spread=True)
        pending = {project_key(key) for key in keys}
        yield Batch(STREAM, "", [], records_seen=True, pending=frozenset(pending), meta={"pages": 0})
        tasks: list[Callable[[], Iterator[tuple[list[SourceRecord], tuple[str, ...]]]]] = [
            partial(self._chunk_pages, chunk, reconcile) for chunk in chunks
        ]
        # Pages of several projects interleave: no cursor until the whole read is stored, so pages
        # go to the store several at a time (at most FULL_BATCH_PAGES more pages of records held).
        # Each batch is a transaction with statements of its own (which exist, upsert, keys, staged
        # ids, commit): in batches of 5 pages instead of 1, the medium org's full pull of Jira took
        # 2.8-3.1 s of store CPU instead of 3.9-4.7 s, 7.3-8.2 s in all instead of 8.9-10.6 s
        # (``benchmarks.profile_pull --sources jira``, 0 ms, medians of 3 in two interleaved pairs).
        # A chunk that ends sends what is held at once, with the projects it settles.
        held: list[SourceRecord] = []
        pages = 0
        for records, done in self._parallel(tasks):
            if records:
                held.extend(records)
                pages += 1
            if done:
                pending.difference_update(project_key(key) for key in done)
            if pages >= FULL_BATCH_PAGES or done:
                yield Batch(
                    STREAM,
                    "",
                    held,
                    records_seen=True,
                    meta={"pages": pages},
                    pending=frozenset(pending) if done else None,
                )
                held, pages = [], 0
        if pages:
            yield Batch(STREAM, "", held, records_seen=True, meta={"pages": pages})

    def _chunk_pages(
        self, chunk: list[str], reconcile: Sequence[str]
    ) -> Iterator[tuple[list[SourceRecord], tuple[str, ...]]]:
        """One chunk's pages of records, then the chunk's project keys: every issue of those projects
        has been handed over."""
        pages = self._record_pages(
            f"{jql.project_in(chunk)} ORDER BY key ASC",
            fields=self.fields,
            page_size=self.mapping.jira.page_size,
            reconcile=reconcile,
            what=f"read issues of {len(chunk)} projects",
        )
        for records in pages:
            yield records, ()
        yield [], tuple(chunk)

    def _record_pages(
        self, query: str, *, fields: Sequence[str], page_size: int, reconcile: Sequence[str], what: str
    ) -> Iterator[list[SourceRecord]]:
        """``search_pages`` as records, made by the worker that read the page: what waits for the
        caller is a page of records, not the answer's much larger JSON."""
        pages = self.search_pages(query, fields=fields, page_size=page_size, reconcile=reconcile, what=what)
        for page in pages:
            records = self._records(page)
            del page  # gone before the records wait in the queue
            yield records

    def _read_incremental(self, window: Window, reconcile: list[str], *, seen: bool) -> Iterator[Batch]:
        if window.lower is None:
            raise ValueError("an incremental read needs a lower bound")
        query = f"{jql.updated_since(window.lower, self.user_zone())} {ORDER}"
        for page in self.search_pages(
            query,
            fields=self.fields,
            page_size=self.mapping.jira.page_size,
            reconcile=reconcile,
            what="read changed issues",
        ):
            records = self._records(page)
            latest = max((r.updated_at for r in records), default=None)
            cursor = progressive_cursor(latest, window)
            yield Batch(STREAM, "", records, cursor=cursor, records_seen=seen, meta={"pages": 1})

    def live_id_pages(self, reconcile: Sequence[str] = ()) -> Iterator[list[str]]:
        """Every issue id that exists now, a page at a time (id-only searches, up to 5000 per page)."""
        keys = self.project_keys()
        tasks: list[Callable[[], Iterator[list[dict[str, Any]]]]] = [
            partial(
                self.search_pages,
                jql.project_in(chunk),
                fields=("id",),
                page_size=ID_PAGE_SIZE,
                reconcile=reconcile,
                what="list issue ids",
            )
            for chunk in self._chunks(keys, spread=False)
        ]
        for page in self._parallel(tasks):
            yield [str(issue["id"]) for issue in page]
