"""Salesforce through simple-salesforce: incremental on SystemModstamp, soft deletes via queryAll,
hard deletes via id-set reconciliation.

Each mapped object is one stream. A read asks for ``SystemModstamp`` in ``[cursor - lookback,
upper)`` ordered by ``SystemModstamp, Id`` through ``queryAll`` (so soft-deleted rows arrive with
``IsDeleted = true``), follows ``nextRecordsUrl`` page by page, and hands each page over with the
last stamp as the cursor that is safe to commit with it. A full read uses ``query`` (live rows
only): its pages are what exists, so the final batch reconciles and anything else stored is marked
deleted. An incremental read with ``reconcile`` lists the ids that exist (``live_id_pages``) page
by page after its changes, and reconciles on those alone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import requests
from pydantic import SecretStr
from simple_salesforce.api import Salesforce

from connectors.base import WorkUnit
from connectors.errors import ConfigError
from connectors.incremental import Batch, PageGuard, Window, progressive_cursor
from connectors.jsonbody import NOT_DECODED, fast_loads
from connectors.retry import call_with_retry
from connectors.salesforce import soql
from connectors.salesforce.errors import SOURCE, classify
from connectors.salesforce.transport import build_session
from connectors.settings import SalesforceSettings
from connectors.stamps import iso_stamp
from engagement.mapping import Mapping, SalesforceStream
from engagement.records import SourceRecord, iso, parse_datetime

log = logging.getLogger("accord.connectors.salesforce")
T = TypeVar("T")

STREAMS = ("accounts", "contacts", "opportunities", "contact_roles", "users", "reminders")
# Objects without IsDeleted: users are deactivated, never deleted (they cannot be soft-deleted).
NO_IS_DELETED = frozenset({"User"})
CURSOR_FIELD = "SystemModstamp"


def _normalize(value: Any) -> Any:
    """Salesforce datetimes ("2024-04-25T15:50:37.000+0000") become Accord's ISO Z form."""
    if isinstance(value, str) and len(value) == 28 and value[10] == "T" and value[-5] in "+-":
        try:
            return iso_stamp(value)  # iso(parse_datetime(value)); never None for a non-empty text
        except ValueError:
            return value  # a text field that only looks like a datetime stays as written
    return value


def _field(record: dict[str, Any], path: str) -> Any:
    """A dotted path through parent relationships: "Account.Owner.Email"."""
    return _walk(record, tuple(path.split(".")))


def _walk(record: dict[str, Any], parts: tuple[str, ...]) -> Any:
    value: Any = record
    for part in parts:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return _normalize(value)


Paths = tuple[tuple[str, tuple[str, ...]], ...]


def _paths(stream: SalesforceStream) -> Paths:
    """(attribute, path split at the dots) in attribute order: worked out once per page, not per row."""
    return tuple((attribute, tuple(path.split("."))) for attribute, path in sorted(stream.fields.items()))


class _Salesforce(Salesforce):
    """simple-salesforce's client with its answers decoded by orjson from the body's bytes where
    that is exactly what ``json`` makes of them (``connectors.jsonbody``), as plain dicts; anything
    else the library's own way (``json`` on the decoded text, ``OrderedDict`` objects). A page of
    2,000 rows no longer passes through a copy as text and ordered dicts: the large org's full
    pull held 4 such pages at once (``benchmarks/probe_pull.py``)."""

    def parse_result_to_json(self, result: requests.Response) -> Any:
        if getattr(self, "_parse_float", None) is None:  # floats as json reads them, which orjson matches
            decoded = fast_loads(result.content)
            if decoded is not NOT_DECODED:
                return decoded
        return super().parse_result_to_json(result)


def secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


class SalesforceClient:
    """One simple-salesforce client for one org: logged in on first use, shared by the worker threads,
    every call run under the retry policy with errors classified once (``errors.classify``).

    The reader (``SalesforceConnector``) and the writer (``SalesforceWriter``) both talk through it.
    """

    def __init__(self, settings: SalesforceSettings) -> None:
        self.settings = settings
        self._sf: Salesforce | None = None
        self._lock = threading.RLock()

    def _connect(self) -> Salesforce:
        s = self.settings
        domain = s.domain if s.auth != "client_credentials" or s.domain not in ("login", "test") else "login"
        session = build_session(
            instance_url=s.instance_url,
            login_url=s.login_url,
            login_host=f"https://{domain}.salesforce.com",
            ca_cert=s.ca_cert,
            timeout=s.timeout_s,
            pool_size=s.concurrency,
        )
        common: dict[str, Any] = {"session": session, "version": s.api_version}
        if s.auth == "session":
            return _Salesforce(instance_url=s.instance_url, session_id=secret(s.session_id), **common)
        if s.auth == "password":
            return _Salesforce(
                username=s.username,
                password=secret(s.password),
                security_token=secret(s.security_token) or "",
                domain=domain,
                **common,
            )
        if s.auth == "oauth_password":
            password = (secret(s.password) or "") + (secret(s.security_token) or "")
            return _Salesforce(
                username=s.username,
                password=password,
                consumer_key=s.consumer_key,
                consumer_secret=secret(s.consumer_secret),
                domain=domain,
                **common,
            )
        return _Salesforce(
            consumer_key=s.consumer_key,
            consumer_secret=secret(s.consumer_secret),
            domain=s.domain if s.domain not in ("login", "test") else "login",
            **common,
        )

    @property
    def client(self) -> Salesforce:
        """One client, logged in once, shared by the worker threads (urllib3's pool is thread-safe
        and sized to the concurrency setting); a renewed session is seen by all of them."""
        with self._lock:
            if self._sf is None:
                self._sf = self.call("log in", self._connect)
            return self._sf

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` under the retry policy; library exceptions come out as connector errors."""

        def attempt() -> T:
            try:
                return fn()
            except Exception as exc:
                raise classify(exc, what) from exc

        return call_with_retry(self.settings.retry, attempt, api=SOURCE)

    def close(self) -> None:
        with self._lock:
            if self._sf is not None:
                self._sf.session.close()
                self._sf = None


class SalesforceConnector(SalesforceClient):
    source = SOURCE

    def __init__(self, settings: SalesforceSettings, mapping: Mapping) -> None:
        super().__init__(settings)
        self.mapping = mapping
        self.api_usage: dict[str, Any] = {}

    # -- streams -------------------------------------------------------------------------------------------
    def stream(self, name: str) -> SalesforceStream:
        stream: SalesforceStream | None = getattr(self.mapping.salesforce, name)
        if stream is None:
            raise ConfigError(SOURCE, f"the mapping has no salesforce.{name} stream")
        return stream

    def work_units(self) -> list[WorkUnit]:
        """One unit per mapped object (``reminders`` only when the mapping reads them back)."""
        return [WorkUnit(name) for name in STREAMS if getattr(self.mapping.salesforce, name) is not None]

    def _fields(self, stream: SalesforceStream) -> list[str]:
        system = ["Id", CURSOR_FIELD] + ([] if stream.object in NO_IS_DELETED else ["IsDeleted"])
        return system + list(stream.fields.values())

    def build_query(self, stream: SalesforceStream, window: Window) -> str:
        where = [soql.condition(f) for f in stream.filters]
        if window.lower is not None:
            where.append(f"{CURSOR_FIELD} >= {soql.literal(window.lower)}")
        where.append(f"{CURSOR_FIELD} < {soql.literal(window.upper)}")
        return soql.select(stream.object, self._fields(stream), where=where, order_by=[f"{CURSOR_FIELD} ASC", "Id ASC"])

    def _pages(self, query: str, *, include_deleted: bool, what: str) -> Iterator[list[dict[str, Any]]]:
        headers = {"Sforce-Query-Options": f"batchSize={self.settings.page_size}"}
        guard = PageGuard(what)
        result = self.call(what, lambda: self.client.query(query, include_deleted=include_deleted, headers=headers))
        while True:
            rows = list(result.get("records") or [])
            next_url = result.get("nextRecordsUrl")
            last = result.get("done", True) or not next_url
            # Neither the answer nor its rows are held while the next page is fetched and decoded:
            # one page per thread at a time, not two.
            del result
            yield rows
            del rows
            if last:
                break
            guard.check(next_url)
            result = self.call(what, partial(self.client.query_more, next_url, identifier_is_url=True, headers=headers))
        usage = getattr(self.client, "api_usage", None)
        if usage:
            with self._lock:
                self.api_usage = dict(usage)

    def _to_record(self, name: str, stream: SalesforceStream, row: dict[str, Any]) -> SourceRecord:
        return self._row_record(name, stream, _paths(stream), row)

    @staticmethod
    def _row_record(name: str, stream: SalesforceStream, paths: Paths, row: dict[str, Any]) -> SourceRecord:
        """One row as a record (pinned by ``tests/connectors/test_to_record_pinned.py``)."""
        stamp = parse_datetime(row.get(CURSOR_FIELD))
        if stamp is None:
            raise ConfigError(SOURCE, f"{stream.object} {row.get('Id')}: no {CURSOR_FIELD} in the answer")
        get = row.get
        data = {
            # A field of the row itself (most of them) without walking a path.
            attribute: _normalize(get(parts[0])) if len(parts) == 1 else _walk(row, parts)
            for attribute, parts in paths
        }
        return SourceRecord(SOURCE, name, str(row["Id"]), stamp, data, deleted=bool(get("IsDeleted")))

    def read(
        self, unit: WorkUnit, cursor: str | None, *, upper: datetime, full: bool, reconcile: bool
    ) -> Iterator[Batch]:
        stream = self.stream(unit.stream)
        lookback = timedelta(seconds=self.mapping.salesforce.lookback_seconds)
        window = Window(None, upper) if full or cursor is None else Window.from_cursor(cursor, lookback, upper)
        what = f"read {stream.object}"
        query = self.build_query(stream, window)
        pages = 0
        paths = _paths(stream)
        for rows in self._pages(query, include_deleted=not window.full, what=what):
            pages += 1
            records = [self._row_record(unit.stream, stream, paths, row) for row in rows]
            rows.clear()  # made records: the page's decoded rows go before the records are stored, not after
            last = records[-1].updated_at if records else None
            cursor_after = progressive_cursor(last, window)
            # A full read sees every live row: its pages are what exists.
            yield Batch(unit.stream, "", records, cursor=cursor_after, records_seen=window.full, meta={"pages": 1})
            del rows, records  # not held while the next page is fetched
        if not window.full and reconcile:
            # What exists comes from the id listing alone (the changed rows above do not count).
            for ids in self.live_id_pages(stream):
                yield Batch(unit.stream, "", [], seen_ids=ids, meta={"pages": 0})
        log.info("%s: %d pages (%s)", what, pages, "full" if window.full else "incremental")
        closes = window.full or reconcile
        yield Batch(unit.stream, "", [], cursor=iso(upper), final=True, reconcile=closes, meta={"pages": 0})

    def live_id_pages(self, stream: SalesforceStream) -> Iterator[list[str]]:
        """Every id that exists now, a page at a time (no time bound: records created since are
        harmless here)."""
        where = [soql.condition(f) for f in stream.filters]
        query = soql.select(stream.object, ["Id"], where=where)
        for rows in self._pages(query, include_deleted=False, what=f"list {stream.object} ids"):
            yield [str(r["Id"]) for r in rows]
