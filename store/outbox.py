"""The outbox: every planned write, its idempotency key and its delivery state.

Rows are written before any write reaches a target, and marked after. Together with the keys kept
in the targets this makes a push exactly-once: a crash between a write and its mark leaves the row
pending, the re-run repeats the write, and the target recognises the key ("exists").
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, bindparam, func, or_, select, text, tuple_, update

from engagement.records import iso
from store.schema import outbox, pushed_status

STATES = ("pending", "delivered", "failed", "superseded")
DUE_PAGE = 1000  # due items read at a time
LOOKUP_BATCH = 500  # ids per IN (...): well under SQLite's variable limit


def batch_of(kind: str, payload: dict[str, Any]) -> str:
    """The target batch an item goes in: one kind and one calendar per batch (a Salesforce composite
    call takes one kind, a Calendar batch one calendar)."""
    return f"{kind}|{payload.get('calendar_id') or ''}"


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


_SUPERSEDE = (
    update(outbox)
    .where(
        outbox.c.engagement_id == bindparam("b_engagement"),
        outbox.c.kind == bindparam("b_kind"),
        outbox.c.target == bindparam("b_target"),
        or_(outbox.c.state == "pending", outbox.c.state == "failed"),  # no IN: it cannot go in an executemany
    )
    .values(state="superseded", updated_at=bindparam("b_now"))
)
# The same on SQLite, told to use the engagement index: without statistics SQLite otherwise walks
# ``ix_outbox_state`` (every pending write of the target) once per engagement, which made queueing
# a large org's push quadratic (the bench's large push: 45 s of CPU in these statements).
_SUPERSEDE_SQLITE = text(
    "UPDATE outbox INDEXED BY ix_outbox_engagement SET state = 'superseded', updated_at = :b_now"
    " WHERE engagement_id = :b_engagement AND kind = :b_kind AND target = :b_target"
    " AND state IN ('pending', 'failed')"
)
_MARK_DELIVERED = (
    update(outbox)
    .where(outbox.c.key == bindparam("b_key"))
    .values(
        state="delivered",
        outcome=bindparam("b_outcome"),
        target_id=bindparam("b_target_id"),
        delivered_at=bindparam("b_now"),
        last_error=None,
        updated_at=bindparam("b_now"),
        claimed_by=None,
        claimed_until=None,
    )
)
_MARK_FAILED = (
    update(outbox)
    .where(outbox.c.key == bindparam("b_key"))
    .values(
        state="failed",
        last_error=bindparam("b_error"),
        retriable=bindparam("b_retriable"),
        updated_at=bindparam("b_now"),
        claimed_by=None,
        claimed_until=None,
    )
)


def _held(name: str | None) -> bool:
    """Whether a lease's holder may still be writing: alive, or on another host (its lease runs)."""
    return name is not None and holder_alive(name) is not False


class Outbox:
    def __init__(self, engine: Engine, insert: Any) -> None:
        self.engine = engine
        self._insert = insert  # the dialect's insert (ON CONFLICT support)
        self._supersede = _SUPERSEDE_SQLITE if engine.dialect.name == "sqlite" else _SUPERSEDE

    def enqueue(self, items: Sequence[OutboxItem], statuses: Iterable[tuple[str, dict[str, Any], str]] = ()) -> int:
        """``add``, returning how many items were new."""
        return self.add(items, statuses)[0]

    def add(
        self, items: Sequence[OutboxItem], statuses: Iterable[tuple[str, dict[str, Any], str]] = ()
    ) -> tuple[int, set[str]]:
        """Add new items (keys already known are left as they are) and record the status
        fingerprints they carry, in one transaction. Older pending writes of the same kind for the
        same engagement and target are superseded by the new ones. Returns how many were new, and
        the keys that were already known."""
        now = _now()
        added = 0
        existing: set[str] = set()
        with self.engine.begin() as conn:
            keys = [i.key for i in items]
            for start in range(0, len(keys), LOOKUP_BATCH):
                batch = keys[start : start + LOOKUP_BATCH]
                existing.update(row.key for row in conn.execute(select(outbox.c.key).where(outbox.c.key.in_(batch))))
            fresh = [i for i in items if i.key not in existing]
            # Each (engagement, kind, target) once: superseding is the same however often it is asked.
            superseding = {
                (i.engagement_id, i.kind, i.target): None
                for i in fresh
                if i.kind in ("opportunity_status", "jira_status_comment")
            }
            if superseding:
                conn.execute(
                    self._supersede,
                    [{"b_engagement": e, "b_kind": k, "b_target": t, "b_now": now} for e, k, t in superseding],
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
                            "batch": batch_of(i.kind, i.payload),
                        }
                        for i in fresh
                    ],
                )
                added = len(fresh)
            # The last status of each engagement is the one kept (as when they were upserted in turn);
            # one statement with a row per engagement (PostgreSQL refuses a row twice in one).
            latest = {engagement_id: (fingerprint, key) for engagement_id, fingerprint, key in statuses}
            if latest:
                statement = self._insert(pushed_status)
                conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=[pushed_status.c.engagement_id],
                        set_={
                            "fingerprint": statement.excluded.fingerprint,
                            "key": statement.excluded.key,
                            "planned_at": statement.excluded.planned_at,
                        },
                    ),
                    [
                        {"engagement_id": e, "fingerprint": fingerprint, "key": key, "planned_at": now}
                        for e, (fingerprint, key) in latest.items()
                    ],
                )
        return added, existing

    def due(
        self, target: str | None = None, max_attempts: int = 10, engagements: Callable[[str], bool] | None = None
    ) -> list[OutboxItem]:
        """Writes to make now (all of them: see ``iter_due`` to read them page by page)."""
        return list(self.iter_due(target, max_attempts, engagements))

    def iter_due(
        self,
        target: str | None = None,
        max_attempts: int = 10,
        engagements: Callable[[str], bool] | None = None,
        *,
        planned_before: str | None = None,
        planned_since: str | None = None,
        page: int | None = None,
    ) -> Iterator[OutboxItem]:
        """Writes to make now: pending ones, and failed ones worth another attempt (of the
        engagements ``engagements`` accepts, when given: one partition's; planned before
        ``planned_before``, or since ``planned_since``, when given). Batch by batch (``batch_of``),
        in planned order within a batch; read ``page`` rows (``DUE_PAGE``) at a time, so a large
        outbox is never held whole."""
        page = page or DUE_PAGE
        query = select(outbox).where(
            (outbox.c.state == "pending")
            | ((outbox.c.state == "failed") & outbox.c.retriable.is_(True) & (outbox.c.attempts < max_attempts))
        )
        if target is not None:
            query = query.where(outbox.c.target == target)
        if planned_before is not None:
            query = query.where(outbox.c.planned_at < planned_before)
        if planned_since is not None:
            query = query.where(outbox.c.planned_at >= planned_since)
        order = (outbox.c.target, outbox.c.batch, outbox.c.planned_at, outbox.c.key)
        after: tuple[Any, ...] | None = None
        while True:
            paged = query if after is None else query.where(tuple_(*order) > tuple_(*after))
            now = _now()
            with self.engine.connect() as conn:
                rows = conn.execute(paged.order_by(*order).limit(page)).fetchall()
            for r in rows:
                if r.claimed_until and r.claimed_until > now and _held(r.claimed_by):
                    continue  # another run is writing it
                if engagements is None or engagements(r.engagement_id):
                    yield _item(r)
            if len(rows) < page:
                return
            last = rows[-1]
            after = (last.target, last.batch, last.planned_at, last.key)

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
        """Record what became of each delivery, in one transaction: delivered, or failed (with the
        error and whether it is worth another attempt); the lease ends either way. One statement
        executed for many rows per run of deliveries with the same outcome (in the order given)."""
        now = _now()
        with self.engine.begin() as conn:
            for ok, run in itertools.groupby(deliveries, key=lambda d: d.ok):
                rows: list[dict[str, Any]]
                if ok:
                    rows = [
                        {"b_key": d.key, "b_outcome": d.outcome, "b_target_id": d.target_id, "b_now": now} for d in run
                    ]
                    conn.execute(_MARK_DELIVERED, rows)
                else:
                    rows = [{"b_key": d.key, "b_error": d.error, "b_retriable": d.retriable, "b_now": now} for d in run]
                    conn.execute(_MARK_FAILED, rows)

    def items(self, state: str | None = None, engagement_id: str | None = None) -> list[OutboxItem]:
        query = select(outbox)
        if state is not None:
            query = query.where(outbox.c.state == state)
        if engagement_id is not None:
            query = query.where(outbox.c.engagement_id == engagement_id)
        with self.engine.connect() as conn:
            return [_item(r) for r in conn.execute(query.order_by(outbox.c.planned_at, outbox.c.key))]

    def keys(self, kinds: Sequence[str], engagements: Iterable[str] | None = None) -> dict[str, OutboxItem]:
        """Items of ``kinds`` that are not superseded (of ``engagements`` only, when given)."""
        query = select(outbox).where(outbox.c.kind.in_(kinds), outbox.c.state != "superseded")
        with self.engine.connect() as conn:
            if engagements is None:
                return {r.key: _item(r) for r in conn.execute(query)}
            wanted = sorted(set(engagements))
            found: dict[str, OutboxItem] = {}
            for start in range(0, len(wanted), LOOKUP_BATCH):
                rows = conn.execute(query.where(outbox.c.engagement_id.in_(wanted[start : start + LOOKUP_BATCH])))
                found.update((r.key, _item(r)) for r in rows)
            return found

    def retriable(self, keys: Sequence[str]) -> dict[str, bool]:
        """Whether the next push retries each of ``keys`` that failed (failed keys only)."""
        found: dict[str, bool] = {}
        query = select(outbox.c.key, outbox.c.retriable).where(outbox.c.state == "failed")
        with self.engine.connect() as conn:
            for start in range(0, len(keys), LOOKUP_BATCH):
                batch = keys[start : start + LOOKUP_BATCH]
                rows = conn.execute(query.where(outbox.c.key.in_(batch)))
                found.update((row.key, bool(row.retriable)) for row in rows)
        return found

    def existing(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` the outbox holds, in any state."""
        found: set[str] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(keys), LOOKUP_BATCH):
                batch = keys[start : start + LOOKUP_BATCH]
                found.update(row.key for row in conn.execute(select(outbox.c.key).where(outbox.c.key.in_(batch))))
        return found

    def fill_batches(self) -> int:
        """Give due items written before the ``batch`` column theirs; returns how many."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(outbox.c.key, outbox.c.kind, outbox.c.payload).where(
                    outbox.c.batch.is_(None), outbox.c.state.in_(("pending", "failed"))
                )
            ).fetchall()
            for row in rows:
                conn.execute(
                    update(outbox).where(outbox.c.key == row.key).values(batch=batch_of(row.kind, row.payload))
                )
        return len(rows)

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

    def last_status(self, engagements: Iterable[str] | None = None) -> dict[str, tuple[dict[str, Any], str]]:
        """Engagement id -> the fingerprint and key of its last planned status update (of
        ``engagements`` only, when given)."""
        query = select(pushed_status.c.engagement_id, pushed_status.c.fingerprint, pushed_status.c.key)
        with self.engine.connect() as conn:
            if engagements is None:
                return {r.engagement_id: (r.fingerprint, r.key) for r in conn.execute(query)}
            wanted = sorted(set(engagements))
            found: dict[str, tuple[dict[str, Any], str]] = {}
            for start in range(0, len(wanted), LOOKUP_BATCH):
                batch = wanted[start : start + LOOKUP_BATCH]
                rows = conn.execute(query.where(pushed_status.c.engagement_id.in_(batch)))
                found.update((r.engagement_id, (r.fingerprint, r.key)) for r in rows)
            return found
