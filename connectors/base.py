"""The shape every connector has, so the sync flow can drive all three the same way."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

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

        Each batch carries the cursor value safe to commit with it. With ``reconcile`` (or a full
        read) the final batch carries ``live_ids``: every id that exists, so hard deletes show.
        """
        ...

    def close(self) -> None: ...
