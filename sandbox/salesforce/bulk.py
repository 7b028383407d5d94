"""Bulk API 2.0 query jobs: create, poll, page through CSV results, abort, delete.

The query runs when the job is created (its result is a snapshot, like any Salesforce cursor);
the job then reports ``UploadComplete``, ``InProgress`` for ``in_progress_polls`` polls, and
``JobComplete``. Results come in pages of at most ``maxRecords`` rows, each a CSV document with
its own header row, every field quoted, parent fields as dotted columns; ``Sforce-Locator`` names
the next page and is the literal ``null`` on the last one.
"""

from __future__ import annotations

import base64
import csv
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sandbox.salesforce.ids import IdFactory
from sandbox.salesforce.query import CompiledQuery, Record
from sandbox.salesforce.values import format_datetime

DELIMITERS = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";", "CARET": "^", "BACKQUOTE": "`"}
LINE_ENDINGS = {"LF": "\n", "CRLF": "\r\n"}
DEFAULT_MAX_RECORDS = 50_000


class BulkError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class QueryJob:
    id: str
    operation: str  # "query" | "queryAll"
    object: str
    created_by: str
    created: datetime
    api_version: str
    column_delimiter: str
    line_ending: str
    compiled: CompiledQuery
    rows: list[Record]
    state: str = "UploadComplete"
    polls: int = 0

    def info(self, *, detailed: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "operation": self.operation,
            "object": self.object,
            "createdById": self.created_by,
            "createdDate": format_datetime(self.created),
            "systemModstamp": format_datetime(self.created),
            "state": self.state,
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": float(self.api_version),
            "lineEnding": self.line_ending,
            "columnDelimiter": self.column_delimiter,
        }
        if detailed:
            done = self.state == "JobComplete"
            data.update(
                {
                    "jobType": "V2Query",
                    "numberRecordsProcessed": len(self.rows) if done else 0,
                    "retries": 0,
                    "totalProcessingTime": 0,
                    "isPkChunkingSupported": True,
                }
            )
        return data


def _encode_locator(offset: int) -> str:
    return base64.b64encode(str(offset).encode("ascii")).decode("ascii").rstrip("=")


def _decode_locator(locator: str) -> int | None:
    try:
        padded = locator + "=" * (-len(locator) % 4)
        return int(base64.b64decode(padded.encode("ascii"), validate=True).decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None


class QueryJobs:
    """The org's Bulk API 2.0 query jobs; at most ``max_jobs`` are kept (oldest dropped first)."""

    def __init__(self, id_factory: IdFactory, *, in_progress_polls: int = 1, max_jobs: int = 50) -> None:
        self.in_progress_polls = in_progress_polls
        self.max_jobs = max_jobs
        self._ids = id_factory
        self._jobs: OrderedDict[str, QueryJob] = OrderedDict()
        self._lock = threading.Lock()

    def create(
        self,
        *,
        operation: str,
        compiled: CompiledQuery,
        rows: list[Record],
        column_delimiter: str,
        line_ending: str,
        api_version: str,
        user_id: str,
        now: datetime,
    ) -> QueryJob:
        job = QueryJob(
            id=self._ids.new("750"),
            operation=operation,
            object=compiled.root.name,
            created_by=user_id,
            created=now,
            api_version=api_version,
            column_delimiter=column_delimiter,
            line_ending=line_ending,
            compiled=compiled,
            rows=rows,
        )
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > self.max_jobs:
                self._jobs.popitem(last=False)
        return job

    def get(self, job_id: str) -> QueryJob:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise BulkError(404, "NOT_FOUND", "The requested resource does not exist")
        return job

    def poll(self, job_id: str) -> QueryJob:
        """Job info, moving the job on: UploadComplete -> InProgress -> JobComplete."""
        job = self.get(job_id)
        with self._lock:
            if job.state in ("UploadComplete", "InProgress"):
                job.polls += 1
                job.state = "JobComplete" if job.polls > self.in_progress_polls else "InProgress"
        return job

    def all(self) -> list[QueryJob]:
        with self._lock:
            return list(self._jobs.values())

    def abort(self, job_id: str) -> QueryJob:
        job = self.get(job_id)
        with self._lock:
            if job.state in ("JobComplete", "Failed", "Aborted"):
                raise BulkError(400, "INVALIDJOBSTATE", f"Job with state {job.state} cannot be aborted")
            job.state = "Aborted"
        return job

    def delete(self, job_id: str) -> None:
        job = self.get(job_id)
        with self._lock:
            if job.state in ("UploadComplete", "InProgress"):
                raise BulkError(400, "INVALIDJOBSTATE", "Job in progress cannot be deleted; abort it first")
            self._jobs.pop(job_id, None)

    def results(self, job_id: str, locator: str | None, max_records: int) -> tuple[str, str, int]:
        """(CSV page, next locator or ``"null"``, number of records in the page)."""
        job = self.get(job_id)
        if job.state != "JobComplete":
            raise BulkError(412, "JOB_NOT_COMPLETE", f"Job {job.id} is not complete; its state is {job.state}")
        offset = 0
        if locator:
            decoded = _decode_locator(locator)
            if decoded is None or not 0 <= decoded <= len(job.rows):
                raise BulkError(400, "INVALIDLOCATOR", f"Invalid locator: {locator}")
            offset = decoded
        page = job.rows[offset : offset + max_records]
        following = offset + len(page)
        buffer = io.StringIO()
        writer = csv.writer(
            buffer,
            delimiter=DELIMITERS[job.column_delimiter],
            lineterminator=LINE_ENDINGS[job.line_ending],
            quoting=csv.QUOTE_ALL,
        )
        writer.writerow(job.compiled.csv_header())
        for record in page:
            writer.writerow(job.compiled.csv_row(record))
        next_locator = _encode_locator(following) if following < len(job.rows) else "null"
        return buffer.getvalue(), next_locator, len(page)
