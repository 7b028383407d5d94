"""The outbox: every planned write, its idempotency key and its delivery state.

Rows are written before any write reaches a target, and marked after. Together with the keys kept
in the targets this makes a push exactly-once: a crash between a write and its mark leaves the row
pending, the re-run repeats the write, and the target recognises the key ("exists").
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select, update

from engagement.records import iso
from store.schema import outbox, pushed_status

STATES = ("pending", "delivered", "failed", "superseded")


@dataclass(frozen=True)
class OutboxItem:
    key: str
    target: str
    kind: str
    engagement_id: str
    reason: str
    payload: dict[str, Any]
    state: str = "pending"
    attempts: int = 0
    retriable: bool = True
    last_error: str | None = None
    outcome: str | None = None
    target_id: str | None = None
    planned_at: str | None = None
    delivered_at: str | None = None


@dataclass(frozen=True)
class Delivery:
    key: str
    ok: bool
    outcome: str
    target_id: str | None = None
    error: str | None = None
    retriable: bool = False


def _now() -> str:
    return iso(datetime.now(UTC)) or ""


# -- who holds an attempt ------------------------------------------------------------------------------
# A claim leases the item to the run that made it. Another run reading the outbox meanwhile leaves the
# item alone (the holder may be writing it right now), unless the holder is known to be gone: a run of
# this process that has ended, or a process of this host that no longer exists (kill -9). A holder on
# another host is waited for until the lease ends.
LEASE = timedelta(minutes=15)  # longer than one chunk's write with all its retries
_HOST = socket.gethostname().replace("/", "_")
_live_holders: set[str] = set()
_holders_lock = threading.Lock()


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot): a reused pid has another one."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@contextmanager
def holder() -> Iterator[str]:
    """A run's name for the attempts it claims, live until the block ends (however it ends)."""
    pid = os.getpid()
    name = f"{_HOST}/{pid}/{_process_start(pid)}/{uuid.uuid4().hex}"
    with _holders_lock:
        _live_holders.add(name)
    try:
        yield name
    finally:
        with _holders_lock:
            _live_holders.discard(name)


def holder_alive(name: str) -> bool | None:
    """True or False where this host can tell; None for a holder on another host."""
    parts = name.rsplit("/", 3)
    if len(parts) != 4 or not parts[1].isdigit():
        return False  # not a holder's name: nothing can be waiting on it
    host, pid, start, _ = parts
    if host != _HOST:
        return None
    if int(pid) == os.getpid():
        with _holders_lock:
            return name in _live_holders
    return start != "None" and _process_start(int(pid)) == start


def _item(row: Any) -> OutboxItem:
    return OutboxItem(
        key=row.key,
        target=row.target,
        kind=row.kind,
        engagement_id=row.engagement_id,
        reason=row.reason,
        payload=row.payload,
        state=row.state,
        attempts=row.attempts,
        retriable=row.retriable,
        last_error=row.last_error,
        outcome=row.outcome,
        target_id=row.target_id,
        planned_at=row.planned_at,
        delivered_at=row.delivered_at,
    )


def _held(name: str | None) -> bool:
    """Whether a lease's holder may still be writing: alive, or on another host (its lease runs)."""
    return name is not None and holder_alive(name) is not False


class Outbox:
    def __init__(self, engine: Engine, insert: Any) -> None:
        self.engine = engine
        self._insert = insert  # the dialect's insert (ON CONFLICT support)

    def enqueue(self, items: Sequence[OutboxItem], statuses: Iterable[tuple[str, dict[str, Any], str]] = ()) -> int:
        """Add new items (keys already known are left as they are) and record the status
        fingerprints they carry, in one transaction. Older pending writes of the same kind for the
        same engagement and target are superseded by the new ones. Returns how many were new."""
        now = _now()
        added = 0
        with self.engine.begin() as conn:
            existing = (
                {row.key for row in conn.execute(select(outbox.c.key).where(outbox.c.key.in_([i.key for i in items])))}
                if items
                else set()
            )
            fresh = [i for i in items if i.key not in existing]
            for item in fresh:
                if item.kind in ("opportunity_status", "jira_status_comment"):
                    conn.execute(
                        update(outbox)
                        .where(
                            outbox.c.engagement_id == item.engagement_id,
                            outbox.c.kind == item.kind,
                            outbox.c.target == item.target,
                            outbox.c.state.in_(("pending", "failed")),
                        )
                        .values(state="superseded", updated_at=now)
                    )
            if fresh:
                conn.execute(
                    outbox.insert(),
                    [
                        {
                            "key": i.key,
                            "target": i.target,
                            "kind": i.kind,
                            "engagement_id": i.engagement_id,
                            "reason": i.reason,
                            "payload": i.payload,
                            "state": "pending",
                            "attempts": 0,
                            "retriable": True,
                            "planned_at": now,
                            "updated_at": now,
                        }
                        for i in fresh
                    ],
                )
                added = len(fresh)
            for engagement_id, fingerprint, key in statuses:
                statement = self._insert(pushed_status).values(
                    engagement_id=engagement_id, fingerprint=fingerprint, key=key, planned_at=now
                )
                conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=[pushed_status.c.engagement_id],
                        set_={"fingerprint": fingerprint, "key": key, "planned_at": now},
                    )
                )
        return added

    def due(
        self, target: str | None = None, max_attempts: int = 10, engagements: Callable[[str], bool] | None = None
    ) -> list[OutboxItem]:
        """Writes to make now: pending ones, and failed ones worth another attempt (of the
        engagements ``engagements`` accepts, when given: one partition's)."""
        query = select(outbox).where(
            (outbox.c.state == "pending")
            | ((outbox.c.state == "failed") & outbox.c.retriable.is_(True) & (outbox.c.attempts < max_attempts))
        )
        if target is not None:
            query = query.where(outbox.c.target == target)
        now = _now()
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(outbox.c.planned_at, outbox.c.key)).fetchall()
        free = [r for r in rows if not r.claimed_until or r.claimed_until <= now or not _held(r.claimed_by)]
        due = [_item(r) for r in free]
        return [i for i in due if engagements is None or engagements(i.engagement_id)]

    def claim(self, items: Sequence[OutboxItem], *, by: str | None = None) -> list[OutboxItem]:
        """Count an attempt before it is made, so a crash during the write leaves a trace: the next
        attempt is then not ``fresh`` and the writers look for what the first one may have written.

        Exclusive: an item is claimed only if nobody counted an attempt since it was read (compare
        and set on ``attempts``), and it is leased to ``by`` (a ``holder()``) until marked, so a run
        reading the outbox later leaves it alone while the holder lives: two runs applying at once
        never both write it. Returns the items this caller now holds, with their attempt count as it
        was before this claim. Without ``by`` the lease has no live holder (a crashed run's)."""
        until = iso(datetime.now(UTC) + LEASE)
        name = by or f"{_HOST}/{os.getpid()}/{_process_start(os.getpid())}/gone"
        by_attempts: dict[int, list[OutboxItem]] = {}
        for item in items:
            by_attempts.setdefault(item.attempts, []).append(item)
        won: set[str] = set()
        with self.engine.begin() as conn:
            for attempts, group in by_attempts.items():
                rows = conn.execute(
                    update(outbox)
                    .where(
                        outbox.c.key.in_([i.key for i in group]),
                        outbox.c.attempts == attempts,
                        outbox.c.state.in_(("pending", "failed")),
                    )
                    .values(attempts=outbox.c.attempts + 1, updated_at=_now(), claimed_by=name, claimed_until=until)
                    .returning(outbox.c.key)
                )
                won.update(row.key for row in rows)
        return [i for i in items if i.key in won]

    def mark(self, deliveries: Sequence[Delivery]) -> None:
        now = _now()
        with self.engine.begin() as conn:
            for d in deliveries:
                values: dict[str, Any] = {"updated_at": now, "claimed_by": None, "claimed_until": None}
                if d.ok:
                    values |= {
                        "state": "delivered",
                        "outcome": d.outcome,
                        "target_id": d.target_id,
                        "delivered_at": now,
                        "last_error": None,
                    }
                else:
                    values |= {"state": "failed", "last_error": d.error, "retriable": d.retriable}
                conn.execute(update(outbox).where(outbox.c.key == d.key).values(**values))

    def items(self, state: str | None = None, engagement_id: str | None = None) -> list[OutboxItem]:
        query = select(outbox)
        if state is not None:
            query = query.where(outbox.c.state == state)
        if engagement_id is not None:
            query = query.where(outbox.c.engagement_id == engagement_id)
        with self.engine.connect() as conn:
            return [_item(r) for r in conn.execute(query.order_by(outbox.c.planned_at, outbox.c.key))]

    def keys(self, kinds: Sequence[str]) -> dict[str, OutboxItem]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(outbox).where(outbox.c.kind.in_(kinds), outbox.c.state != "superseded"))
            return {r.key: _item(r) for r in rows}

    def counts(self) -> dict[str, dict[str, int]]:
        """{target: {state: n}}"""
        out: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(outbox.c.target, outbox.c.state, func.count()).group_by(outbox.c.target, outbox.c.state)
            )
            for target, state, n in rows:
                out.setdefault(target, {})[state] = int(n)
        return out

    def last_status(self) -> dict[str, tuple[dict[str, Any], str]]:
        with self.engine.connect() as conn:
            return {
                r.engagement_id: (r.fingerprint, r.key)
                for r in conn.execute(
                    select(pushed_status.c.engagement_id, pushed_status.c.fingerprint, pushed_status.c.key)
                )
            }
