"""The shape every connector has, so the sync flow can drive all three the same way."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from connectors.incremental import Batch


@dataclass(frozen=True)
class WorkUnit:
    """One independently resumable piece of a pull: a stream, optionally one partition of it."""

    stream: str
    partition: str = ""


class SourceConnector(Protocol):
    source: str  # "salesforce" | "jira" | "google_calendar"

    def work_units(self) -> list[WorkUnit]:
        """What to pull this run (e.g. one unit per Salesforce object, one per calendar)."""
        ...

    def read(
        self, unit: WorkUnit, cursor: str | None, *, upper: datetime, full: bool, reconcile: bool
    ) -> Iterator[Batch]:
        """Pages of records since ``cursor`` (all of them when ``full`` or no cursor), up to ``upper``.

        Each batch carries the cursor value safe to commit with it. A reconciling read (a full
        read, or ``reconcile``; a connector may also fall back to one, as a calendar does on a
        stale sync token) finds hard deletes without holding an id set: its batches say which ids
        exist, page by page (``Batch.records_seen`` for pages of records, ``Batch.seen_ids`` for
        pages of an id-only listing), the engine stages them in the store, and the final batch
        has ``reconcile``: the stored records of the stream (of the batch's partition, when it has
        one) that the read did not see are then marked deleted, together with the final cursor.
        A read that stops before its final batch marks nothing deleted.
        """
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class WriteRequest:
    """One planned write. ``key`` is the idempotency key: it is stored in the target (Salesforce
    External ID, Jira comment marker and entity property, Calendar event id) so that a write
    repeated after a crash finds the first one instead of duplicating it."""

    key: str
    kind: str  # "task" | "opportunity_status" | "jira_status_comment" | "calendar_event"
    payload: dict[str, Any]
    # True when no earlier attempt of this key can have reached the target (the outbox claims every
    # attempt before it is made): writers may then skip the look-up that finds an earlier write.
    fresh: bool = False


@dataclass(frozen=True)
class WriteResult:
    key: str
    ok: bool
    outcome: str  # "created" | "updated" | "exists" (found from an earlier attempt) | "failed"
    target_id: str | None = None  # the record's id in the target, when known
    error: str | None = None  # short, no record contents
    retriable: bool = False  # a failed write worth retrying next run (throttled, 5xx)


class TargetWriter(Protocol):
    """Applies planned writes. One result per request, in order. Record-level failures are results
    (ok=False), never exceptions; a failure of the whole call (auth, config) raises ConnectorError."""

    target: str  # "salesforce" | "jira" | "google_calendar"

    def write(self, requests: Sequence[WriteRequest]) -> list[WriteResult]: ...

    def close(self) -> None: ...
