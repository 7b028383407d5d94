"""Salesforce write-back: reminder Tasks and Opportunity status fields, through sObject Collections.

Two kinds of ``WriteRequest``:

- ``task``: a reminder Task whose External ID field (``push.salesforce.task_external_id``) holds
  the request key. Per batch of ``push.salesforce.batch_size`` (at most 200) the writer first asks
  which keys exist, with one ``queryAll`` (``SELECT Id, <ExtField> FROM Task WHERE <ExtField> IN
  (...)``), and then upserts only the missing ones by External ID through ``PATCH
  composite/sobjects/Task/<ExtField>``. A key that is found answers ``exists`` and nothing is sent
  for it. Why look first: an upsert of a Task that exists overwrites every field sent, so a re-run
  after a crash (the outbox never learned the first result) would reopen a Task the user completed
  and re-date one they snoozed; Salesforce has no create-only fields in an upsert. The lookup makes
  a repeated write a no-op, at the price of one query per batch (450 reminders: 3 queries + 3
  upserts the first time, 3 queries the second). ``queryAll`` also sees Tasks in the Recycle Bin:
  a reminder the user deleted is not recreated. The missing ones still go through an upsert rather
  than a create, so a Task that appears between the lookup and the write (our own earlier attempt
  whose answer was lost) is matched instead of duplicated; it then answers ``updated``, with the
  values it was created with moments before.
- ``opportunity_status``: the mapped status fields of an Opportunity, through ``PATCH
  composite/sobjects`` (collections update by Id). The same values written twice are the same
  record, so retries and re-runs are harmless; the outcome is ``updated``. Only fields named in
  ``push.salesforce.status_fields`` may be written.

Whole calls are retried under the connector's policy (throttling, 5xx, dropped connections): both
writes are idempotent by key or by Id. A session that expires is renewed by simple-salesforce in
password and OAuth modes. Per-record failures are results with Salesforce's ``statusCode`` and
the fields named, never the values sent.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from functools import partial
from typing import Any
from urllib.parse import quote_plus, urlencode

from connectors.base import WriteRequest, WriteResult
from connectors.errors import AuthError, ConfigError, ConnectorError, QuotaExhaustedError, TransientError
from connectors.salesforce import soql
from connectors.salesforce.connector import SalesforceClient
from connectors.salesforce.errors import SOURCE
from connectors.settings import SalesforceSettings
from engagement.mapping import Mapping

log = logging.getLogger("accord.connectors.salesforce.writer")

TASK = "task"
OPPORTUNITY_STATUS = "opportunity_status"
SUBJECT_MAX = 255  # Task.Subject (object reference, sforce_api_objects_task.htm)
DESCRIPTION_MAX = 32_000  # Task.Description, a 32K text area
ELLIPSIS = "…"
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")  # Salesforce's date form; Python alone also takes 20260504
# The lookup is a GET: Salesforce caps URI plus headers at 16,384 bytes (431/414 beyond; Help
# article 000386264). Keys are split over several queries when one would pass this many bytes of
# path and query string, leaving room for simple-salesforce's headers (Authorization and a few more).
MAX_LOOKUP_URI = 15_000
# Record-level status codes that a later attempt can clear (Salesforce "Core Data Types Used in API
# Calls": StatusCode): lock contention, a busy or failing server, throttling, an all-or-none partner.
RETRIABLE_CODES = frozenset(
    {
        "UNABLE_TO_LOCK_ROW",
        "SERVER_UNAVAILABLE",
        "UNKNOWN_EXCEPTION",
        "REQUEST_LIMIT_EXCEEDED",
        "REQUEST_RUNNING_TOO_LONG",
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    }
)


class PayloadError(ValueError):
    """A request the writer cannot turn into a record (a planner bug): failed, not retriable."""


@dataclass(frozen=True)
class _Pending:
    index: int  # position among the requests of this kind
    key: str
    record: dict[str, Any]
    fresh: bool = False  # first attempt ever (see WriteRequest.fresh)


def fit(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis as the last one, when it is longer.

    Lengths count UTF-16 code units, as Salesforce (Java) counts them, so a text with emoji or other
    characters outside the BMP never overflows; for all other text that is the number of characters.
    """
    if len(text.encode("utf-16-le")) // 2 <= limit:
        return text
    budget = limit - 1  # the ellipsis is one unit
    out: list[str] = []
    for ch in text:
        units = 2 if ord(ch) > 0xFFFF else 1
        if units > budget:
            break
        out.append(ch)
        budget -= units
    return "".join(out) + ELLIPSIS


def _text(payload: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = payload.get(name)
    if value is None or value == "":
        if required:
            raise PayloadError(f"payload lacks {name}")
        return None
    if not isinstance(value, str):
        raise PayloadError(f"payload {name} must be a string, got {type(value).__name__}")
    return value


def _sent_values(record: dict[str, Any]) -> list[str]:
    return [v for k, v in record.items() if k != "attributes" and isinstance(v, str) and len(v) >= 3]


def _scrubbed(message: str, sent: Sequence[str]) -> str:
    """Salesforce's message, or nothing when it echoes a value we sent (``data value too large: <the
    value>``, ``id value of incorrect type: <the id>``): errors carry no record contents."""
    text = " ".join(message.split())
    if any((v[:8] if len(v) >= 8 else v) in text for v in sent):
        return ""
    return text[:160]


def _item_result(key: str, answer: Any, record: dict[str, Any], success_outcome: str | None) -> WriteResult:
    """One SaveResult of a collection call. ``success_outcome`` None: created/updated from ``created``."""
    if not isinstance(answer, dict):
        return WriteResult(key, False, "failed", error="unreadable answer from Salesforce", retriable=True)
    target_id = str(answer["id"]) if answer.get("id") else None
    if answer.get("success"):
        outcome = success_outcome or ("created" if answer.get("created") else "updated")
        return WriteResult(key, True, outcome, target_id=target_id)
    errors = answer.get("errors") or [{}]
    first = errors[0] if isinstance(errors[0], dict) else {}
    code = str(first.get("statusCode") or first.get("errorCode") or "UNKNOWN_ERROR")
    fields = [str(f) for f in first.get("fields") or []]
    message = _scrubbed(str(first.get("message") or ""), _sent_values(record))
    error = code + (f" on {', '.join(fields)}" if fields else "") + (f": {message}" if message else "")
    return WriteResult(key, False, "failed", target_id=target_id, error=error, retriable=code in RETRIABLE_CODES)


def _whole_call_failure(key: str, what: str, exc: ConnectorError) -> WriteResult:
    """A batch whose call failed as a whole: the error type and status, not the library's message (a
    400's body may quote a value we sent). Throttling, 5xx and a spent daily quota are retriable: the
    next run may write it."""
    status = f" (HTTP {exc.status})" if exc.status else ""
    retriable = isinstance(exc, TransientError | QuotaExhaustedError)
    return WriteResult(key, False, "failed", error=f"{what}: {type(exc).__name__}{status}", retriable=retriable)


class SalesforceWriter:
    """``TargetWriter`` for Salesforce. One client per writer, logged in on the first write; one
    ``write`` at a time per writer (the push flow applies a target's chunks in turn)."""

    target = SOURCE

    def __init__(self, settings: SalesforceSettings, mapping: Mapping) -> None:
        self.settings = settings
        self.push = mapping.push.salesforce
        self.external_id = soql.name(self.push.task_external_id)
        self._sf = SalesforceClient(settings)
        self.calls: Counter[str] = Counter()  # "lookup" | "upsert" | "update": calls made, retries apart
        self._blocked: str | None = None  # set when a call failed for good: later batches are not tried

    def close(self) -> None:
        self._sf.close()

    # -- the protocol ----------------------------------------------------------------------------------------
    def write(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        """One result per request, in request order; kinds are grouped and written kind by kind.

        A key given twice is written once and both requests get its result. Raises ``AuthError`` or
        ``ConfigError`` when no write can succeed (credentials, an External ID field the org lacks);
        batches already written stay written, and a re-run finds them (``exists``).
        """
        self._blocked = None
        handlers: dict[str, Callable[[list[WriteRequest]], list[WriteResult]]] = {
            TASK: self._write_tasks,
            OPPORTUNITY_STATUS: self._write_statuses,
        }
        results: list[WriteResult | None] = [None] * len(requests)
        groups: dict[str, dict[str, list[int]]] = {}
        for i, request in enumerate(requests):
            if request.kind not in handlers:
                results[i] = WriteResult(request.key, False, "failed", error=f"unsupported kind {request.kind!r}")
            elif not request.key:
                results[i] = WriteResult(request.key, False, "failed", error="empty key")
            else:
                groups.setdefault(request.kind, {}).setdefault(request.key, []).append(i)
        for kind, by_key in groups.items():
            firsts = [requests[indexes[0]] for indexes in by_key.values()]
            for indexes, result in zip(by_key.values(), handlers[kind](firsts), strict=True):
                for i in indexes:
                    results[i] = result
        done = [r for r in results if r is not None]
        assert len(done) == len(requests)  # every request got exactly one result above
        tally = Counter(r.outcome for r in done)
        log.info(
            "salesforce write: %d requests, %s; calls %s",
            len(done),
            ", ".join(f"{n} {o}" for o, n in sorted(tally.items())) or "nothing",
            dict(self.calls),
        )
        return done

    # -- shared ----------------------------------------------------------------------------------------------
    def _batches(self, pending: list[_Pending], *, distinct: Callable[[_Pending], str]) -> Iterator[list[_Pending]]:
        """Runs of at most ``batch_size``, never holding one ``distinct`` value twice: an upsert list with
        the same External ID twice fails those items (DUPLICATE_EXTERNAL_ID), DML refuses the same Id
        twice in one list (Apex "Duplicate id in list"; not verified for REST collections), and a run of
        its own keeps the later request applied last."""
        batch: list[_Pending] = []
        seen: set[str] = set()
        for item in pending:
            value = distinct(item).lower()
            if len(batch) >= self.push.batch_size or value in seen:
                yield batch
                batch, seen = [], set()
            batch.append(item)
            seen.add(value)
        if batch:
            yield batch

    def _run_batches(
        self,
        kind: str,
        requests: list[WriteRequest],
        build: Callable[[WriteRequest], dict[str, Any]],
        distinct: Callable[[_Pending], str],
        send: Callable[[list[_Pending]], dict[int, WriteResult]],
    ) -> list[WriteResult]:
        results: dict[int, WriteResult] = {}
        pending: list[_Pending] = []
        for i, request in enumerate(requests):
            try:
                pending.append(_Pending(i, request.key, build(request), request.fresh))
            except PayloadError as exc:
                results[i] = WriteResult(request.key, False, "failed", error=str(exc))
        for batch in self._batches(pending, distinct=distinct):
            if self._blocked is not None:
                for p in batch:
                    results[p.index] = WriteResult(
                        p.key, False, "failed", error=f"not attempted: {self._blocked}", retriable=True
                    )
                continue
            try:
                results.update(send(batch))
            except (AuthError, ConfigError):
                raise
            except ConnectorError as exc:
                what = f"write {len(batch)} {kind}"
                log.warning("%s failed: %s (HTTP %s)", what, type(exc).__name__, exc.status)
                if isinstance(exc, TransientError | QuotaExhaustedError):
                    # Retries are spent (or the daily quota is): later calls would fare no better now.
                    self._blocked = f"an earlier call failed ({type(exc).__name__})"
                for p in batch:
                    if p.index not in results:
                        results[p.index] = _whole_call_failure(p.key, what, exc)
        return [results[i] for i in range(len(requests))]

    def _collection(self, path: str, records: list[dict[str, Any]], what: str, counter: str) -> list[Any]:
        body = {"allOrNone": False, "records": records}
        self.calls[counter] += 1
        # restful() sends to base_url + path: /services/data/vXX.X/<path>
        answers = self._sf.call(what, lambda: self._sf.client.restful(path, method="PATCH", json=body))
        if not isinstance(answers, list) or len(answers) != len(records):
            raise TransientError(SOURCE, f"{what}: expected {len(records)} results from Salesforce")
        return answers

    # -- reminder Tasks --------------------------------------------------------------------------------------
    def _task_record(self, request: WriteRequest) -> dict[str, Any]:
        """The Task to create. Subject longer than 255 characters (and Description longer than 32,000)
        is cut with an ellipsis instead of failing the record: a reminder with a shortened title is
        more useful than none."""
        p = request.payload
        subject = _text(p, "subject") or ""
        due = _text(p, "due_date") or ""
        try:
            if not ISO_DATE.fullmatch(due):
                raise ValueError(due)
            date.fromisoformat(due)
        except ValueError:
            raise PayloadError("payload due_date must be YYYY-MM-DD") from None
        record: dict[str, Any] = {
            "attributes": {"type": "Task"},
            self.external_id: request.key,
            "Subject": fit(subject, SUBJECT_MAX),
            "ActivityDate": due,
            "OwnerId": _text(p, "owner_id"),
            "WhatId": _text(p, "what_id"),
            "Priority": _text(p, "priority", required=False) or "Normal",
            "Status": _text(p, "status", required=False) or self.push.task_open_status,
        }
        description = _text(p, "description", required=False)
        if description:
            record["Description"] = fit(description, DESCRIPTION_MAX)
        who = _text(p, "who_id", required=False)
        if who:
            record["WhoId"] = who
        return record

    def _write_tasks(self, requests: list[WriteRequest]) -> list[WriteResult]:
        return self._run_batches("Tasks", requests, self._task_record, lambda p: p.key, self._send_tasks)

    def _send_tasks(self, batch: list[_Pending]) -> dict[int, WriteResult]:
        # A key never attempted before cannot exist yet: the look-up is only for repeated attempts.
        existing = {} if all(p.fresh for p in batch) else self._existing_tasks([p.key for p in batch])
        results: dict[int, WriteResult] = {}
        missing: list[_Pending] = []
        for p in batch:
            found = existing.get(p.key.lower())
            if found is not None:
                results[p.index] = WriteResult(p.key, True, "exists", target_id=found)
            else:
                missing.append(p)
        if missing:
            path = f"composite/sobjects/Task/{self.external_id}"
            records = [p.record for p in missing]
            answers = self._collection(path, records, f"upsert {len(records)} Tasks", "upsert")
            for p, answer in zip(missing, answers, strict=True):
                results[p.index] = _item_result(p.key, answer, p.record, None)
        return results

    def lookup_queries(self, keys: Sequence[str]) -> list[str]:
        """The SOQL that finds ``keys``: as few queries as fit Salesforce's URI limit (one for a batch
        of 200 keys of up to about 60 characters)."""
        ext = self.external_id

        def text(values: list[str]) -> str:
            condition = f"{ext} IN ({', '.join(soql.literal(v) for v in values)})"
            return soql.select("Task", ["Id", ext], where=[condition])

        # URL encoding works character by character, so the encoded length of the query string is the
        # sum of its parts': the fixed text, each literal, and the separators between them.
        path = f"/services/data/v{self.settings.api_version}/queryAll/?"
        fixed = len(path) + len(urlencode({"q": text([""])})) - len(quote_plus(soql.literal("")))
        separator = len(quote_plus(", "))
        queries: list[str] = []
        chunk: list[str] = []
        size = fixed
        for key in keys:
            cost = len(quote_plus(soql.literal(key))) + (separator if chunk else 0)
            if chunk and size + cost > MAX_LOOKUP_URI:
                queries.append(text(chunk))
                chunk, size, cost = [], fixed, cost - separator
            chunk.append(key)
            size += cost
        if chunk:
            queries.append(text(chunk))
        return queries

    def _existing_tasks(self, keys: list[str]) -> dict[str, str]:
        """External ID (lower case: Salesforce matches them case-insensitively) -> Task Id, for the
        ``keys`` that exist, including Tasks in the Recycle Bin."""
        found: dict[str, str] = {}
        for query in self.lookup_queries(keys):
            self.calls["lookup"] += 1
            answer = self._sf.call(f"look up {len(keys)} Task keys", partial(self._query_all, query))
            for row in answer.get("records") or []:
                value = row.get(self.external_id)
                if isinstance(value, str):
                    found.setdefault(value.lower(), str(row["Id"]))
        return found

    def _query_all(self, query: str) -> Any:
        """Every page of a ``queryAll`` (Recycle Bin included)."""
        return self._sf.client.query_all(query, include_deleted=True)

    # -- Opportunity status ----------------------------------------------------------------------------------
    def _status_record(self, request: WriteRequest) -> dict[str, Any]:
        p = request.payload
        opportunity = _text(p, "opportunity_id")
        fields = p.get("fields")
        if not isinstance(fields, dict) or not fields:
            raise PayloadError("payload lacks fields")
        allowed = {name.lower() for name in self.push.status_fields.values()}
        for name in fields:
            if not isinstance(name, str) or name.lower() not in allowed:
                raise PayloadError(f"{name!r} is not one of push.salesforce.status_fields")
        return {"attributes": {"type": "Opportunity"}, "Id": opportunity, **fields}

    def _write_statuses(self, requests: list[WriteRequest]) -> list[WriteResult]:
        return self._run_batches(
            "Opportunity statuses",
            requests,
            self._status_record,
            lambda p: str(p.record["Id"]),
            self._send_statuses,
        )

    def _send_statuses(self, batch: list[_Pending]) -> dict[int, WriteResult]:
        records = [p.record for p in batch]
        answers = self._collection("composite/sobjects", records, f"update {len(records)} Opportunities", "update")
        return {
            p.index: _item_result(p.key, answer, p.record, "updated") for p, answer in zip(batch, answers, strict=True)
        }
