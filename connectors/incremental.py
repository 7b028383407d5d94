"""What every incremental stream shares: the read window, page guards, and batches with cursors.

A window is half-open, ``[cursor - lookback, upper)``, with ``upper`` frozen when the run starts
(meltano's replication-key signpost, dlt's lag). Records inside the lookback are read again and
de-duplicated by primary key in the store. The cursor moves only with the records it covers: each
``Batch`` carries the cursor value that is safe to commit together with its records.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from engagement.records import SourceRecord, iso, parse_datetime


@dataclass(frozen=True)
class Window:
    lower: datetime | None  # None: full read
    upper: datetime  # exclusive, frozen at run start

    @classmethod
    def from_cursor(cls, cursor: str | None, lookback: timedelta, upper: datetime) -> Window:
        start = parse_datetime(cursor) if cursor else None
        return cls(None if start is None else start - lookback, upper)

    @property
    def full(self) -> bool:
        return self.lower is None


@dataclass
class Batch:
    """Records of one page, and the cursor value to commit with them (None: leave it).

    A reconciling read (hard deletes) says which ids exist page by page, never as one set: the
    store stages them as they come, so memory stays flat however large the org. A batch with
    ``records_seen`` counts its live (not deleted) records as existing; ``seen_ids`` is a page of
    an id-only listing (a batch without records). The batch with ``reconcile`` (the final one)
    closes the read: every stored live record of the stream, or of the batch's partition when it
    has one, that the read did not see is marked deleted.
    """

    stream: str
    partition: str
    records: list[SourceRecord]
    cursor: str | None = None
    final: bool = False  # the last batch of this stream/partition in this run
    records_seen: bool = False  # this batch's live records exist (they count for ``reconcile``)
    seen_ids: list[str] = field(default_factory=list)  # more ids that exist (an id-only listing)
    reconcile: bool = False  # with final=True: what the read saw is all that exists
    meta: dict[str, int] = field(default_factory=dict)  # e.g. {"pages": 3}
    # Said by a read that settles its records progressively (Jira's full read, project by project):
    # once this batch is stored, the records this read may still write touch only these keys
    # (``engagement.records.touch_keys``, ``p:`` keys); any other key is settled for the rest of the
    # read. None: not said. The sync unifies the clients whose keys are settled while the read goes
    # on (``flows.engine.EarlyUnify``); such a read's writes are tracked (``Store.apply_batch``).
    pending: frozenset[str] | None = None

    def existing_ids(self) -> list[str]:
        """The ids this batch says exist: its live records' (with ``records_seen``) and ``seen_ids``."""
        if not self.records_seen:
            return self.seen_ids
        return [r.id for r in self.records if not r.deleted] + self.seen_ids


class RepeatedPageError(RuntimeError):
    """The API handed back a page token it already gave: following it would loop forever."""


class PageGuard:
    def __init__(self, what: str) -> None:
        self.what = what
        self._seen: set[Hashable] = set()
        self.pages = 0

    def check(self, token: Hashable) -> None:
        if token in self._seen:
            raise RepeatedPageError(f"{self.what}: page token repeated after {self.pages} pages; stopping")
        self._seen.add(token)
        self.pages += 1


def progressive_cursor(stamp: datetime | None, window: Window) -> str | None:
    """A safe cursor after a page sorted by stamp ascending: the last stamp, never beyond ``upper``."""
    if stamp is None:
        return None
    return iso(min(stamp, window.upper))


def minute_floor(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def ceil_to_minute(moment: datetime) -> datetime:
    floor = minute_floor(moment)
    return floor if floor == moment else floor + timedelta(minutes=1)
