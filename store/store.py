"""Persistence of source records, cursors, engagements and runs: the only module that knows SQL.

SQLite by default, PostgreSQL by URL. The guarantee the sync relies on: a batch of records and
the cursor that covers them are committed in one transaction (``apply_batch``), so a crash at any
point leaves the cursor behind the records it covers and a re-run continues without loss.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Mapping as MappingType
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    String,
    Text,
    any_,
    bindparam,
    cast,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    inspect,
    literal,
    or_,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from connectors.jsonbody import NOT_DECODED, fast_loads
from engagement.model import Engagement, UnifiedView
from engagement.records import (
    EVERY_CLIENT,
    LOOKUP_STREAMS,
    UNIFY_STREAMS,
    SourceRecord,
    iso,
    lookup_keys,
    parse_datetime,
    touch_keys,
)
from store.outbox import Outbox
from store.schema import (
    client_counts,
    cursors,
    engagements,
    health_journal,
    metadata,
    outbox_due,
    outbox_engagement,
    record_keys,
    record_keys_by_key,
    records,
    records_by_partition,
    seen_ids,
    sync_runs,
    touched,
)

READ_PAGE = 1000  # rows fetched at once when reading records
BATCH_LOOKUP = 500  # ids per IN (...) lookup: well under SQLite's variable limit
# The lengths an IN (...) list of the pull's statements is padded to (with NULLs, which match
# nothing). SQLite's driver keeps up to 128 prepared statements per connection, one per distinct
# SQL text, and a statement with n placeholders holds about 100 n bytes: with a list of every
# length up to 500 (each calendar's last page has its own) the caches held 5-6 MB per pooled
# connection on the large org (0.7 MB on the medium one). Padded, a pull prepares at most
# ``len(IN_LENGTHS)`` shapes of each.
IN_LENGTHS = (8, 16, 32, 64, 128, 256, BATCH_LOOKUP)


def padded(ids: Sequence[str]) -> list[str | None]:
    """``ids`` (at most ``BATCH_LOOKUP``) and NULLs up to the next of ``IN_LENGTHS``: the same
    ``IN (...)`` matches, and few distinct statement texts."""
    if len(ids) > BATCH_LOOKUP:
        raise ValueError(f"{len(ids)} ids in one IN list; at most {BATCH_LOOKUP}")
    length = next(n for n in IN_LENGTHS if n >= len(ids))
    return [*ids, *([None] * (length - len(ids)))]


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _json_plain(value: Any) -> bool:
    """True when ``value`` holds only str, int, bool, None, lists and dicts with str keys: the values
    for which orjson with sorted keys writes exactly ``_digest``'s text (same escapes, keys in code
    point order, which is UTF-8 byte order). Floats are not: they differ in the exponent form
    (``1e-05`` against ``0.00001``) and NaN; anything else goes through ``default=str`` there."""
    pending = [value]
    while pending:
        container = pending.pop()
        if container.__class__ is dict:
            for key in container:
                if key.__class__ is not str:
                    return False
            items: Iterable[Any] = container.values()
        elif container.__class__ is list:
            items = container
        else:
            return False
        for item in items:
            kind = item.__class__
            if kind is str or item is None or kind is bool or kind is int:
                continue
            if kind is dict or kind is list:
                pending.append(item)
                continue
            return False
    return True


def record_digest(record: SourceRecord) -> str:
    """``_digest([data, deleted, partition])``, through orjson when that is provably the same text
    (``_json_plain``; ``tests/store/test_json_columns.py`` holds the two together): records never change
    digest, so a store written by an earlier version sees its unchanged records as unchanged."""
    payload = [record.data, record.deleted, record.partition]
    if record.deleted.__class__ is bool and record.partition.__class__ is str and _json_plain(record.data):
        try:
            return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()
        except TypeError:  # orjson.JSONEncodeError: integers beyond 64 bits, lone surrogates
            pass
    return _digest(payload)


def engagement_digest(engagement: Engagement) -> str:
    """A digest of everything an engagement holds, from orjson's form of the dataclass itself: the
    stored payload (``summary_json``, ``to_json``) is derived from these fields alone, so it changes
    exactly when this does, and an unchanged engagement is never turned into JSON (medium org: 0.2 s
    of an incremental sync). What orjson cannot write goes through the payload and ``_digest``.
    Stores written before hold digests of the payload: each of their engagements is rewritten once,
    with no health change unless its health did change."""
    try:
        text = orjson.dumps(engagement, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError: a value it has no form for (never seen; kept safe)
        return _digest({"summary": engagement.summary_json(), "detail": engagement.to_json()})
    return hashlib.sha256(text).hexdigest()


NEVER = "never"  # the stored horizon of an engagement that time alone never changes
UNKNOWN_HORIZON = object()  # an engagement the view has no horizon for


def horizon_text(horizon: datetime | object | None) -> str | None:
    """An engagement's ``valid_until`` as stored: its UTC stamp in milliseconds (cut down, never up:
    at worst recomputed a moment early), ``NEVER`` for None, NULL for ``UNKNOWN_HORIZON``."""
    if horizon is UNKNOWN_HORIZON:
        return None
    if horizon is None:
        return NEVER
    assert isinstance(horizon, datetime)
    return iso(horizon.astimezone(UTC))


def json_text(value: Any) -> str:
    """JSON columns written by orjson (about 10x faster than json; read back by json as before);
    what orjson refuses (integers beyond 64 bits, non-string keys, lone surrogates) the way
    SQLAlchemy always wrote it. A NaN, which json wrote as a bare NaN that PostgreSQL refuses, is null."""
    try:
        return orjson.dumps(value).decode("utf-8")
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(value)


def json_value(text: str | bytes) -> Any:
    """JSON columns read by orjson (about 3x faster than json) when that is exactly what
    ``json.loads`` gives (``connectors.jsonbody.fast_loads``), else by json, as before."""
    try:
        body = text.encode("utf-8") if isinstance(text, str) else text
    except UnicodeEncodeError:  # a lone surrogate: only json reads it
        return json.loads(text)
    value = fast_loads(body)
    return json.loads(text) if value is NOT_DECODED else value


def _now() -> str:
    return iso(datetime.now(UTC)) or ""


@dataclass(frozen=True)
class CursorUpdate:
    source: str
    stream: str
    partition: str
    value: str | None


@dataclass(frozen=True)
class SeenScope:
    """Where one reconciling read of one unit stages the ids it saw (table ``seen_ids``).

    ``run`` is unique to the read (``SeenScope.new``), so ids a crashed read staged never count for
    a later one. ``partition`` "" reconciles the whole stream; any other value that partition only
    (one calendar).
    """

    source: str
    stream: str
    partition: str
    run: str

    @classmethod
    def new(cls, source: str, stream: str, partition: str = "") -> SeenScope:
        return cls(source, stream, partition, uuid.uuid4().hex)


class StagingLostError(RuntimeError):
    """Ids a read staged are gone (another pull of the same unit cleared them as stale): reconciling
    without them would mark live records deleted, so nothing is marked and the cursor stays."""


# A cursor row saying which version of ``lookup_keys`` the stored keys were made by (2: issues and
# meetings; 3: contacts and contact roles too).
KEYS_VERSION = CursorUpdate("accord", "lookup_keys", "", "4")


@dataclass
class BatchResult:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0  # records newly marked deleted

    def add(self, other: BatchResult) -> None:
        self.inserted += other.inserted
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.deleted += other.deleted

    @property
    def changed(self) -> int:
        return self.inserted + self.updated


@dataclass(frozen=True)
class HealthChange:
    engagement_id: str
    name: str
    previous: str | None  # None: a new engagement
    current: str | None  # None: the engagement is gone
    reasons: tuple[str, ...] = field(default_factory=tuple)
    reason_codes: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class HealthEvent:
    """A journaled health transition (``health_journal``) waiting for its event to be sent."""

    seq: int
    event_id: uuid.UUID
    engagement_id: str
    previous: str
    current: str
    reason_codes: tuple[str, ...]
    occurred: datetime


def default_database_url(directory: Path | None = None) -> str:
    base = directory or Path.cwd() / ".accord"
    base.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{base / 'accord.sqlite'}"


class Store:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {
            "echo": echo,
            "future": True,
            "json_serializer": json_text,
            "json_deserializer": json_value,
        }
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"timeout": 30}
        self.engine: Engine = create_engine(url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        # Records are read with ``data`` as JSON text, decoded in ``_rows_to_records`` without
        # SQLAlchemy's JSON type processing (medium org: 50,000 issues in 0.45 s, not 0.8 s).
        # SQLite keeps the text as written; PostgreSQL prints its jsonb, which reads back equal.
        text_data = cast(records.c.data, Text) if self.dialect == "postgresql" else type_coerce(records.c.data, Text)
        self._record_columns = [  # in the order ``_rows_to_records`` unpacks
            records.c.source,
            records.c.stream,
            records.c.id,
            records.c.partition,
            records.c.updated_at,
            records.c.deleted,
            text_data.label("data"),
        ]
        self.outbox = Outbox(self.engine, self._insert())
        self._page = _PageStatements(self.engine, self._insert())

    def create_all(self) -> None:
        """Create missing tables; bring a store made by an earlier version up to date."""
        metadata.create_all(self.engine)
        columns = {c["name"] for c in inspect(self.engine).get_columns("engagements")}
        for column, kind in (("client_id", "VARCHAR(255)"), ("valid_until", "VARCHAR(32)")):
            if column not in columns:
                with self.engine.begin() as conn:
                    conn.execute(text(f"ALTER TABLE engagements ADD COLUMN {column} {kind}"))
        claims = {c["name"] for c in inspect(self.engine).get_columns("outbox")}
        added = (("claimed_by", "VARCHAR(255)"), ("claimed_until", "VARCHAR(32)"), ("batch", "VARCHAR(320)"))
        for column, kind in added:
            if column not in claims:
                with self.engine.begin() as conn:
                    conn.execute(text(f"ALTER TABLE outbox ADD COLUMN {column} {kind}"))
        indexes = {i["name"] for i in inspect(self.engine).get_indexes("outbox")}
        for index in (outbox_due, outbox_engagement):
            if index.name not in indexes:
                with self.engine.begin() as conn:
                    index.create(conn)
        if "batch" not in claims:
            self.outbox.fill_batches()
        if records_by_partition.name not in {i["name"] for i in inspect(self.engine).get_indexes("records")}:
            with self.engine.begin() as conn:
                conn.execute(text("DROP INDEX IF EXISTS ix_records_partition"))  # its prefix, without the id
                records_by_partition.create(conn)
        if self.get_cursor(KEYS_VERSION.source, KEYS_VERSION.stream) != KEYS_VERSION.value:
            self.rebuild_lookup_keys()

    def rebuild_lookup_keys(self) -> None:
        """Recompute the lookup keys of every live record of ``LOOKUP_STREAMS`` (a store from before them)."""
        with self.engine.begin() as conn:
            conn.execute(delete(record_keys))
            record_keys_by_key.drop(conn, checkfirst=True)  # version 1's index did not cover the id
            record_keys_by_key.create(conn)
            for source, stream in LOOKUP_STREAMS:
                keyed: dict[str, set[str]] = {}
                for record in self.iter_records(source, stream):  # read on its own connection, streamed
                    keyed[record.id] = lookup_keys(record)
                    if len(keyed) >= BATCH_LOOKUP * 4:
                        self._replace_keys(conn, source, stream, (), keyed)
                        keyed = {}
                self._replace_keys(conn, source, stream, (), keyed)
            self._write_cursor(conn, KEYS_VERSION)

    def dispose(self) -> None:
        self.engine.dispose()

    @property
    def shared_across_processes(self) -> bool:
        """Whether another process opening ``url`` sees this store: not an in-memory SQLite database
        (``sqlite://``, ``sqlite:///:memory:``, ``mode=memory``), which is private to its connection."""
        if self.dialect != "sqlite":
            return True
        parsed = make_url(self.url)
        database = parsed.database or ""
        return database not in ("", ":memory:") and "mode=memory" not in self.url and ":memory:" not in database

    def describe(self) -> str:
        """The URL without its password, for logs."""
        return make_url(self.url).render_as_string(hide_password=True)

    # -- records and cursors -------------------------------------------------------------------------
    def _insert(self) -> Any:
        return postgresql.insert if self.dialect == "postgresql" else sqlite.insert

    def _upsert_records(self, conn: Connection, batch: Sequence[SourceRecord], track: bool) -> BatchResult:
        result = BatchResult()
        if not batch:
            return result
        streams: dict[tuple[str, str], dict[str, SourceRecord]] = {}
        for record in batch:  # the last version of an id within a batch wins
            streams.setdefault((record.source, record.stream), {})[record.id] = record
        stored_at = _now()
        for (source, stream), latest in streams.items():
            existing = self._existing(conn, source, stream, list(latest))
            rows_to_write: list[tuple[Any, ...]] = []
            written: list[SourceRecord] = []
            keyed: dict[str, set[str]] = {}
            refresh: list[str] = []  # stored ids whose lookup keys are replaced
            for record_id, record in latest.items():
                digest = record_digest(record)
                before = existing.get(record_id)
                if before is not None and before[0] == digest:
                    result.unchanged += 1
                    continue
                if before is None:
                    if record.deleted:
                        result.unchanged += 1  # a tombstone for something never stored: keep it, count nothing
                    else:
                        result.inserted += 1
                elif record.deleted and not before[1]:
                    result.deleted += 1
                else:
                    result.updated += 1
                if before is not None:
                    refresh.append(record_id)
                keyed[record_id] = lookup_keys(record)
                written.append(record)
                rows_to_write.append(
                    (
                        source,
                        stream,
                        record_id,
                        record.partition,
                        iso(record.updated_at),
                        record.deleted,
                        digest,
                        record.data,
                        stored_at,
                    )
                )
            if not rows_to_write:
                continue
            if (source, stream) in UNIFY_STREAMS:  # before the upsert: the stored versions are read
                self._touch(conn, source, stream, written, refresh if track else None)
            self._page.upsert(conn, rows_to_write)
            if (source, stream) in LOOKUP_STREAMS:
                self._replace_keys(conn, source, stream, refresh, keyed)
        return result

    def _touch(
        self, conn: Connection, source: str, stream: str, changed: Sequence[SourceRecord], stored: Sequence[str] | None
    ) -> None:
        """Note what ``changed`` records touch (``touched``): the ``touch_keys`` of each new version and
        of the stored versions of ``stored`` (ids), read before they are replaced. ``stored`` None:
        not tracked (a full read, where nearly everything is new): every client, one row."""
        keys: set[str] = set()
        if stored is None:
            keys.add(EVERY_CLIENT)
        else:
            for record in changed:
                keys |= touch_keys(record)
            for record in self._stored(conn, source, stream, stored):
                keys |= touch_keys(record)
        if keys:
            conn.execute(touched.insert(), [{"key": key} for key in sorted(keys)])

    def _stored(self, conn: Connection, source: str, stream: str, ids: Sequence[str]) -> Iterator[SourceRecord]:
        """The stored versions of ``ids`` (deleted ones too), on ``conn``."""
        for start in range(0, len(ids), BATCH_LOOKUP):
            query = select(*self._record_columns).where(
                records.c.source == source,
                records.c.stream == stream,
                records.c.id.in_(padded(ids[start : start + BATCH_LOOKUP])),
            )
            yield from _rows_to_records(conn.execute(query).tuples().fetchall())

    def _existing(self, conn: Connection, source: str, stream: str, ids: list[str]) -> dict[str, tuple[str, bool]]:
        """Digest and deleted flag of the stored ones among ``ids``."""
        existing: dict[str, tuple[str, bool]] = {}
        for start in range(0, len(ids), BATCH_LOOKUP):
            for record_id, digest, deleted in self._page.existing(
                conn, source, stream, ids[start : start + BATCH_LOOKUP]
            ):
                existing[record_id] = (digest, bool(deleted))
        return existing

    def _replace_keys(
        self, conn: Connection, source: str, stream: str, stale: Sequence[str], keyed: dict[str, set[str]]
    ) -> None:
        for start in range(0, len(stale), BATCH_LOOKUP):
            conn.execute(
                delete(record_keys).where(
                    record_keys.c.source == source,
                    record_keys.c.stream == stream,
                    record_keys.c.id.in_(padded(stale[start : start + BATCH_LOOKUP])),
                )
            )
        rows = [
            (source, stream, record_id, key)
            for record_id, keys in keyed.items()
            for key in (sorted(keys) if len(keys) > 1 else keys)
        ]
        if rows:
            self._page.insert_keys(conn, rows)

    def _write_cursor(self, conn: Connection, cursor: CursorUpdate) -> None:
        statement = self._insert()(cursors).values(
            source=cursor.source,
            stream=cursor.stream,
            partition=cursor.partition,
            value=cursor.value,
            updated_at=_now(),
        )
        statement = statement.on_conflict_do_update(
            index_elements=[cursors.c.source, cursors.c.stream, cursors.c.partition],
            set_={"value": statement.excluded.value, "updated_at": statement.excluded.updated_at},
        )
        conn.execute(statement)

    def apply_batch(
        self,
        batch: Sequence[SourceRecord],
        cursor: CursorUpdate | None = None,
        *,
        seen: SeenScope | None = None,
        seen_ids: Sequence[str] = (),
        track: bool = False,
    ) -> BatchResult:
        """Upsert ``batch``, stage ``seen_ids`` (ids a reconciling read saw) under ``seen`` and move
        ``cursor``, in one transaction. ``track``: note which clients the changed records touch
        (``touched``), so that the next unify recomputes those only; else a change touches every client
        (a full read: nearly every record is new)."""
        if seen_ids and seen is None:
            raise ValueError("seen_ids need the SeenScope of the read that saw them")
        with self.engine.begin() as conn:
            result = self._upsert_records(conn, batch, track)
            if seen is not None and seen_ids:
                self._stage(conn, seen, seen_ids)
            if cursor is not None:
                self._write_cursor(conn, cursor)
        return result

    def _stage(self, conn: Connection, seen: SeenScope, ids: Sequence[str]) -> None:
        """One statement per page, the ids as one parameter (an array on PostgreSQL, a JSON array
        read by ``json_each`` on SQLite): a fifth of the CPU of a row-by-row executemany on SQLite,
        a thirteenth on PostgreSQL (``benchmarks/reconcile_staging.py``)."""
        if self.dialect == "postgresql":
            page: Any = bindparam("ids", list(ids), type_=postgresql.ARRAY(String))
            each: Any = func.unnest(page)
        else:
            page = bindparam("ids", json_text(list(ids)), type_=String)
            each = func.json_each(page).table_valued("value").c.value
        scope = (seen.run, seen.source, seen.stream, seen.partition)
        values = select(*(literal(value, String) for value in scope), each)
        conn.execute(seen_ids.insert().from_select(["run", "source", "stream", "partition", "id"], values))

    @staticmethod
    def _staged_by(seen: SeenScope) -> tuple[Any, ...]:
        """The ``seen_ids`` rows of one read (all four columns: the index's prefix)."""
        return (
            seen_ids.c.source == seen.source,
            seen_ids.c.stream == seen.stream,
            seen_ids.c.partition == seen.partition,
            seen_ids.c.run == seen.run,
        )

    def clear_seen(self, seen: SeenScope) -> int:
        """Drop what other reads staged for this stream (partition): the leftovers of a crashed
        run. Called when a reconciling read starts staging. Returns the rows dropped."""
        with self.engine.begin() as conn:
            return conn.execute(
                delete(seen_ids).where(
                    seen_ids.c.source == seen.source,
                    seen_ids.c.stream == seen.stream,
                    seen_ids.c.partition == seen.partition,
                    seen_ids.c.run != seen.run,
                )
            ).rowcount

    def reconcile(
        self,
        seen: SeenScope,
        *,
        staged: int,
        cursors: Sequence[CursorUpdate] = (),
        stamp: datetime | None = None,
        track: bool = False,
    ) -> int:
        """Mark the stored live records of the read's stream (partition) that it did not stage as
        deleted (hard deletes, or a calendar re-synced from scratch), drop its staged ids and move
        ``cursors``, in one transaction. Returns how many were marked. ``track``: as ``apply_batch``;
        records of the directory streams (accounts, users, Opportunities) marked deleted touch every client.

        An anti-join in SQL: nothing of the stream is loaded, however large. ``staged`` is how many
        ids the read staged; when fewer are there, another pull cleared them and ``StagingLostError``
        is raised before anything is marked.
        """
        source, stream = seen.source, seen.stream
        unseen = [
            records.c.source == source,
            records.c.stream == stream,
            records.c.deleted.is_(False),
            ~exists().where(*self._staged_by(seen), seen_ids.c.id == records.c.id),
        ]
        if seen.partition:
            unseen.append(records.c.partition == seen.partition)
        marked = 0
        with self.engine.begin() as conn:
            found = conn.execute(select(func.count()).select_from(seen_ids).where(*self._staged_by(seen))).scalar_one()
            if found != staged:
                raise StagingLostError(
                    f"{source}.{stream}: {found} of the {staged} ids this read staged are left; nothing marked deleted"
                )
            if self.dialect == "postgresql":
                # Statistics of what is staged now: without them (a table filled since autovacuum last
                # looked, or holding another run then) PostgreSQL estimates one staged row and probes
                # by scanning the run's rows for each record, which took minutes for 500k ids. About
                # 50 ms for 500k rows (a sample); transactional, so it commits with the reconcile.
                conn.execute(text("ANALYZE seen_ids"))
            mark = {
                "deleted": True,
                "updated_at": iso(stamp or datetime.now(UTC)),
                "digest": "reconciled-deleted",
                "stored_at": _now(),
            }
            if (source, stream) not in LOOKUP_STREAMS:
                marked = conn.execute(update(records).where(*unseen).values(mark)).rowcount
                if marked and (source, stream) in UNIFY_STREAMS:
                    self._touch(conn, source, stream, (), None)
            else:
                # The lookup keys of the marked ones go too: by chunks of ids, in id order from
                # where the last chunk ended (the primary key's order, so no chunk rescans).
                after = ""
                while True:
                    query = select(records.c.id).where(*unseen, records.c.id > after).order_by(records.c.id)
                    chunk = list(conn.execute(query.limit(BATCH_LOOKUP)).scalars())
                    if not chunk:
                        break
                    if (source, stream) in UNIFY_STREAMS:
                        self._touch(conn, source, stream, (), chunk if track else None)
                    conn.execute(
                        update(records)
                        .where(records.c.source == source, records.c.stream == stream, records.c.id.in_(padded(chunk)))
                        .values(mark)
                    )
                    self._replace_keys(conn, source, stream, chunk, {})
                    marked += len(chunk)
                    after = chunk[-1]
            conn.execute(delete(seen_ids).where(*self._staged_by(seen)))
            for cursor in cursors:
                self._write_cursor(conn, cursor)
        return marked

    def staged_count(self, seen: SeenScope | None = None) -> int:
        """Rows in ``seen_ids``: of one read, or all of them."""
        query = select(func.count()).select_from(seen_ids)
        if seen is not None:
            query = query.where(*self._staged_by(seen))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def set_cursor(self, cursor: CursorUpdate) -> None:
        with self.engine.begin() as conn:
            self._write_cursor(conn, cursor)

    def get_cursor(self, source: str, stream: str, partition: str = "") -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(
                select(cursors.c.value).where(
                    cursors.c.source == source, cursors.c.stream == stream, cursors.c.partition == partition
                )
            ).scalar_one_or_none()

    def cursors(self, source: str | None = None) -> dict[tuple[str, str, str], str | None]:
        query = select(cursors.c.source, cursors.c.stream, cursors.c.partition, cursors.c.value)
        if source is not None:
            query = query.where(cursors.c.source == source)
        with self.engine.connect() as conn:
            return {(r.source, r.stream, r.partition): r.value for r in conn.execute(query)}

    def clear_cursors(self, source: str | None = None) -> None:
        with self.engine.begin() as conn:
            statement = delete(cursors)
            if source is not None:
                statement = statement.where(cursors.c.source == source)
            conn.execute(statement)

    def iter_records(
        self,
        source: str | None = None,
        stream: str | None = None,
        *,
        include_deleted: bool = False,
    ) -> Iterator[SourceRecord]:
        """Stream stored records in key order without loading them all at once."""
        query = select(*self._record_columns).order_by(records.c.source, records.c.stream, records.c.id)
        if source is not None:
            query = query.where(records.c.source == source)
        if stream is not None:
            query = query.where(records.c.stream == stream)
        if not include_deleted:
            query = query.where(records.c.deleted.is_(False))
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=2000).execute(query).tuples()
            for rows in result.partitions():
                yield from _rows_to_records(rows)

    def records_by_keys(self, source: str, stream: str, keys: Iterable[str]) -> Iterator[SourceRecord]:
        """Live records of one stream with any of ``keys`` (``engagement.records.lookup_keys``), each once.

        One statement whatever the number of keys, the keys as one parameter (a JSON array read by
        ``json_each`` on SQLite, an array on PostgreSQL); ``IN`` yields each record once. On SQLite the
        driver's cursor is read directly, a page at a time: half the CPU of SQLAlchemy's rows (medium
        org, every group's issues: 0.83 s -> 0.44 s)."""
        wanted = sorted(set(keys))
        if not wanted:
            return
        with self.engine.connect() as conn:
            if self.dialect == "sqlite":
                cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]  # sqlite3's own
                try:
                    cursor.execute(_BY_KEYS_SQLITE, (source, stream, source, stream, json_text(wanted)))
                    while rows := cursor.fetchmany(READ_PAGE):
                        yield from _rows_to_records(rows)
                finally:
                    cursor.close()
                return
            keys_param: Any = bindparam("keys", wanted, type_=postgresql.ARRAY(String))
            matching = select(record_keys.c.id).where(
                record_keys.c.source == source,
                record_keys.c.stream == stream,
                record_keys.c.key == any_(keys_param),
            )  # no DISTINCT: IN dedupes
            query = select(*self._record_columns).where(
                records.c.source == source,
                records.c.stream == stream,
                records.c.deleted.is_(False),
                records.c.id.in_(matching),
            )
            result = conn.execution_options(yield_per=READ_PAGE).execute(query).tuples()
            for rows in result.partitions():
                yield from _rows_to_records(rows)

    def record_by_id(self, source: str, stream: str, record_id: str) -> SourceRecord | None:
        query = select(*self._record_columns).where(
            records.c.source == source, records.c.stream == stream, records.c.id == record_id
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).tuples().fetchall()
        return next(_rows_to_records(rows), None)

    def iter_keys(self, source: str, stream: str, prefixes: tuple[str, ...]) -> Iterator[tuple[str, str]]:
        """(record id, key) of one stream for keys starting with any of ``prefixes``, by record id."""
        query = (
            select(record_keys.c.id, record_keys.c.key)
            .where(
                record_keys.c.source == source,
                record_keys.c.stream == stream,
                or_(*(record_keys.c.key.startswith(p, autoescape=True) for p in prefixes)),
            )
            .order_by(record_keys.c.id, record_keys.c.key)
        )
        with self.engine.connect() as conn:
            for rows in conn.execution_options(yield_per=5000).execute(query).tuples().partitions():
                yield from rows

    def key_counts(self, source: str, stream: str, prefix: str) -> dict[str, int]:
        """Records per key, for keys starting with ``prefix``."""
        query = (
            select(record_keys.c.key, func.count())
            .where(
                record_keys.c.source == source,
                record_keys.c.stream == stream,
                record_keys.c.key.startswith(prefix, autoescape=True),
            )
            .group_by(record_keys.c.key)
        )
        with self.engine.connect() as conn:
            return {key: int(n) for key, n in conn.execute(query)}

    def record_ids(self, source: str, stream: str, partition: str | None = None) -> set[str]:
        query = select(records.c.id).where(
            records.c.source == source, records.c.stream == stream, records.c.deleted.is_(False)
        )
        if partition is not None:
            query = query.where(records.c.partition == partition)
        with self.engine.connect() as conn:
            return {row.id for row in conn.execute(query)}

    def records_mentioning(self, source: str, stream: str, needle: str) -> Iterator[SourceRecord]:
        """Live records of one stream, in key order (as ``iter_records``), that may mention ``needle``:
        every record whose data holds a string (a key or a value) containing ``needle``, with ASCII
        letters compared without regard to case, is among them. A superset: the caller checks each
        record it gets. The filter runs in the database, on the stored JSON text, so records that
        cannot match are never read into Python.

        ``needle``: printable, without ``"`` or ``\\`` (those are escaped in JSON text): ValueError
        otherwise, raised by the call (not when the records are first read).
        On SQLite the text is as written, where any character may have been escaped (``\\u0041``, or
        ``\\/``): records with escapes are kept too. PostgreSQL prints its jsonb with only quotes,
        backslashes and control characters escaped.
        """
        if not needle or not needle.isprintable() or '"' in needle or "\\" in needle:
            raise ValueError("the needle must be printable text without quotes or backslashes")
        query = select(*self._record_columns).where(
            records.c.source == source, records.c.stream == stream, records.c.deleted.is_(False)
        )
        if self.dialect == "postgresql":
            query = query.where(cast(records.c.data, Text).icontains(needle, autoescape=True))
        else:
            data_text = type_coerce(records.c.data, Text)
            # A letter or digit can only be escaped as \uXXXX; a slash also as \/ (so: any backslash).
            escape = "\\" if "/" in needle else "\\u"
            # SQLite's LIKE ignores the case of ASCII letters (``case_sensitive_like`` is never set).
            query = query.where(data_text.contains(needle, autoescape=True) | (func.instr(data_text, escape) > 0))
        return self._stream_records(query.order_by(records.c.source, records.c.stream, records.c.id))

    def _stream_records(self, query: Any) -> Iterator[SourceRecord]:
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=2000).execute(query).tuples()
            for rows in result.partitions():
                yield from _rows_to_records(rows)

    def record_counts(self) -> dict[str, int]:
        """Live records per "source.stream"."""
        query = (
            select(records.c.source, records.c.stream, func.count())
            .where(records.c.deleted.is_(False))
            .group_by(records.c.source, records.c.stream)
        )
        with self.engine.connect() as conn:
            return {f"{s}.{t}": int(n) for s, t, n in conn.execute(query)}

    # -- engagements -------------------------------------------------------------------------------
    def save_view(self, view: UnifiedView, computed_at: datetime) -> list[HealthChange]:
        """Store all engagements of ``view`` and drop the stored ones it does not have."""
        changes = self.save_engagements(view.engagements, computed_at, view.valid_until)
        return changes + self.drop_engagements_except({e.id for e in view.engagements})

    def save_engagements(
        self,
        group: Sequence[Engagement],
        computed_at: datetime,
        valid_until: MappingType[str, datetime | None] | None = None,
    ) -> list[HealthChange]:
        """Store the engagements of one group (only those that changed) and, from ``valid_until``
        (``UnifiedView.valid_until``), until when each holds, also where it did not change (a later
        computation may see a later horizon). Returns the health transitions, for events and
        notifications. Without ``valid_until``, the horizons written are unknown (NULL)."""
        changes: list[HealthChange] = []
        stamp = iso(computed_at)
        ids = [e.id for e in group]
        horizons = (
            {i: horizon_text(valid_until.get(i, UNKNOWN_HORIZON)) for i in ids} if valid_until is not None else {}
        )
        with self.engine.begin() as conn:
            before: dict[str, tuple[str, str, str | None]] = {}
            for start in range(0, len(ids), BATCH_LOOKUP):
                query = select(
                    engagements.c.id, engagements.c.digest, engagements.c.health, engagements.c.valid_until
                ).where(engagements.c.id.in_(padded(ids[start : start + BATCH_LOOKUP])))
                before.update((row.id, (row.digest, row.health, row.valid_until)) for row in conn.execute(query))
            rows = []
            moved: list[dict[str, Any]] = []  # unchanged engagements whose horizon is not the stored one
            for e in group:
                digest = engagement_digest(e)
                previous = before.get(e.id)
                if previous is not None and previous[0] == digest:
                    if e.id in horizons and previous[2] != horizons[e.id]:
                        moved.append({"key": e.id, "horizon": horizons[e.id]})
                    continue
                payload = {"summary": e.summary_json(), "detail": e.to_json()}
                if previous is None or previous[1] != e.health.level:
                    changes.append(
                        HealthChange(
                            e.id,
                            e.name,
                            previous[1] if previous else None,
                            e.health.level,
                            tuple(r.text for r in e.health.reasons),
                            tuple(r.code for r in e.health.reasons),
                        )
                    )
                rows.append(
                    {
                        "id": e.id,
                        "name": e.name,
                        "client": e.client,
                        "client_id": e.client_id,
                        "health": e.health.level,
                        "stage": e.stage,
                        "digest": digest,
                        "payload": payload,
                        "updated_at": stamp,
                        "valid_until": horizons.get(e.id),
                    }
                )
            if rows:
                statement = self._insert()(engagements)
                written = ("name", "client", "client_id", "health", "stage", "digest", "payload", "updated_at")
                statement = statement.on_conflict_do_update(
                    index_elements=[engagements.c.id],
                    set_={c: statement.excluded[c] for c in (*written, "valid_until")},
                )
                conn.execute(statement, rows)
            if moved:
                conn.execute(
                    update(engagements)
                    .where(engagements.c.id == bindparam("key"))
                    .values(valid_until=bindparam("horizon")),
                    moved,
                )
            journal = [
                {
                    "event_id": str(uuid.uuid4()),
                    "engagement_id": c.engagement_id,
                    "previous": c.previous,
                    "current": c.current,
                    "reason_codes": list(c.reason_codes),
                    "occurred": stamp,
                }
                for c in changes
                if c.previous is not None and c.current is not None
            ]
            if journal:
                conn.execute(insert(health_journal), journal)
        return changes

    def health_events(self, limit: int = 500, after: int = 0) -> list[HealthEvent]:
        """The oldest ``limit`` journaled health transitions whose event is not sent yet (of those
        after journal row ``after``)."""
        query = select(health_journal).where(health_journal.c.seq > after).order_by(health_journal.c.seq).limit(limit)
        with self.engine.connect() as conn:
            return [
                HealthEvent(
                    r.seq,
                    uuid.UUID(r.event_id),
                    r.engagement_id,
                    r.previous,
                    r.current,
                    tuple(r.reason_codes),
                    datetime.fromisoformat(r.occurred),
                )
                for r in conn.execute(query)
            ]

    def forget_health_events(self, before: datetime) -> int:
        """Drop journaled transitions computed before ``before`` that were never sent (events off
        for that long): how many. Keeps the journal bounded where nothing sends it."""
        with self.engine.begin() as conn:
            result = conn.execute(delete(health_journal).where(health_journal.c.occurred < iso(before)))
            return int(result.rowcount or 0)

    def health_events_sent(self, seqs: Sequence[int]) -> None:
        """Drop journaled transitions whose events went out."""
        with self.engine.begin() as conn:
            for start in range(0, len(seqs), BATCH_LOOKUP):
                conn.execute(delete(health_journal).where(health_journal.c.seq.in_(seqs[start : start + BATCH_LOOKUP])))

    def engagements_due(self, now: datetime) -> dict[str, str | None]:
        """Stored engagements that may no longer be what their records give at ``now`` with no new
        records, id to client: their horizon has passed, or is not known (NULL: saved without one)."""
        stamp = iso(now)
        due = engagements.c.valid_until.is_(None) | (
            (engagements.c.valid_until != NEVER) & (engagements.c.valid_until <= stamp)
        )
        with self.engine.connect() as conn:
            return {
                row.id: row.client_id
                for row in conn.execute(select(engagements.c.id, engagements.c.client_id).where(due))
            }

    def touched_keys(self, after: int = 0) -> tuple[int, set[str]]:
        """What the pulls changed since the engagements were last computed: the largest ``touched`` id
        and every key up to it (``clear_touched`` drops those once the engagements are stored);
        ``after``: only the touches with a larger id (those written after an earlier look)."""
        with self.engine.connect() as conn:
            upto = conn.execute(select(func.max(touched.c.id))).scalar_one_or_none()
            if upto is None or upto <= after:
                return max(after, upto or 0), set()
            query = select(touched.c.key).where(touched.c.id > after, touched.c.id <= upto).distinct()
            return int(upto), set(conn.execute(query).scalars())

    def touched_upto(self) -> int:
        """The largest ``touched`` id (0: none)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.max(touched.c.id))).scalar_one_or_none() or 0)

    def touched_since(self, after: int) -> dict[str, int]:
        """Each key touched after id ``after``, with the largest id it was touched at."""
        query = select(touched.c.key, func.max(touched.c.id)).where(touched.c.id > after).group_by(touched.c.key)
        with self.engine.connect() as conn:
            return {key: int(last) for key, last in conn.execute(query)}

    def clear_touched(self, upto: int | None = None) -> None:
        """Forget the touches up to id ``upto`` (the engagements they name are stored; later ones
        stay), or all of them."""
        statement = delete(touched) if upto is None else delete(touched).where(touched.c.id <= upto)
        with self.engine.begin() as conn:
            conn.execute(statement)

    def save_client_counts(
        self, counts: MappingType[str, tuple[int, int]], replacing: Callable[[str], bool] | None = None
    ) -> None:
        """Store each client's (unknown stakeholders, ambiguous meetings reported); ``replacing``: the
        stored clients it says belong to this computation and ``counts`` does not have are dropped
        (every client of a partition was computed: the others are gone)."""
        with self.engine.begin() as conn:
            if replacing is not None:
                stored = conn.execute(select(client_counts.c.client_id)).scalars().all()
                gone = [c for c in stored if c not in counts and replacing(c)]
                for start in range(0, len(gone), BATCH_LOOKUP):
                    chunk = gone[start : start + BATCH_LOOKUP]
                    conn.execute(delete(client_counts).where(client_counts.c.client_id.in_(chunk)))
            if counts:
                statement = self._insert()(client_counts)
                statement = statement.on_conflict_do_update(
                    index_elements=[client_counts.c.client_id],
                    set_={c: statement.excluded[c] for c in ("unknown_stakeholders", "ambiguous_meetings")},
                )
                rows = [
                    {"client_id": c, "unknown_stakeholders": u, "ambiguous_meetings": a}
                    for c, (u, a) in sorted(counts.items())
                ]
                conn.execute(statement, rows)

    def client_count_totals(self) -> tuple[int, int]:
        """(unknown stakeholders, ambiguous meetings) over every client, as stored."""
        query = select(
            func.coalesce(func.sum(client_counts.c.unknown_stakeholders), 0),
            func.coalesce(func.sum(client_counts.c.ambiguous_meetings), 0),
        )
        with self.engine.connect() as conn:
            unknown, ambiguous = conn.execute(query).one()
        return int(unknown), int(ambiguous)

    def engagement_rows(self, order: Callable[[dict[str, Any]], Any], limit: int) -> list[dict[str, Any]]:
        """The short rows (``Engagement.summary_json``) of the first ``limit`` stored engagements in
        ``order`` (a key of the row's ``health``, ``client`` and ``id``), sorted here: the same order
        on every database, whatever its collation."""
        with self.engine.connect() as conn:
            keys = [
                {"health": r.health, "client": r.client, "id": r.id}
                for r in conn.execute(select(engagements.c.id, engagements.c.client, engagements.c.health))
            ]
            first = [row["id"] for row in sorted(keys, key=order)[:limit]]
            payloads: dict[str, Any] = {}
            for start in range(0, len(first), BATCH_LOOKUP):
                query = select(engagements.c.id, engagements.c.payload).where(
                    engagements.c.id.in_(first[start : start + BATCH_LOOKUP])
                )
                payloads.update((r.id, r.payload["summary"]) for r in conn.execute(query))
        return [payloads[i] for i in first]

    def drop_engagements_except(
        self, live: set[str], in_partition: Callable[[str | None], bool] | None = None
    ) -> list[HealthChange]:
        """Delete stored engagements whose Opportunity is gone (``live``: every live one, org-wide),
        among those whose client ``in_partition`` says belongs to this run."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(engagements.c.id, engagements.c.name, engagements.c.health, engagements.c.client_id)
            ).fetchall()
            vanished = [r for r in rows if r.id not in live and (in_partition is None or in_partition(r.client_id))]
            ids = [r.id for r in vanished]
            for start in range(0, len(ids), BATCH_LOOKUP):
                conn.execute(delete(engagements).where(engagements.c.id.in_(ids[start : start + BATCH_LOOKUP])))
        return [HealthChange(r.id, r.name, r.health, None) for r in vanished]

    def engagement_clients(self) -> dict[str, str | None]:
        """Engagement id -> its client's account id, as last stored."""
        with self.engine.connect() as conn:
            return {r.id: r.client_id for r in conn.execute(select(engagements.c.id, engagements.c.client_id))}

    def load_engagements(self) -> list[dict[str, Any]]:
        """Stored engagements: each ``{"summary": {...}, "detail": {...}}``, by id."""
        with self.engine.connect() as conn:
            return [row.payload for row in conn.execute(select(engagements.c.payload).order_by(engagements.c.id))]

    def engagement_count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(engagements)).scalar_one())

    def health_counts(self) -> dict[str, int]:
        counts = Counter({"green": 0, "amber": 0, "red": 0})
        with self.engine.connect() as conn:
            for health, n in conn.execute(select(engagements.c.health, func.count()).group_by(engagements.c.health)):
                counts[health] = int(n)
        return dict(counts)

    # -- runs ---------------------------------------------------------------------------------------
    def start_run(self, full: bool) -> int:
        with self.engine.begin() as conn:
            run_id = conn.execute(
                sync_runs.insert()
                .values(started_at=_now(), status="running", full=full, stats={})
                .returning(sync_runs.c.id)
            ).scalar_one()
            return int(run_id)

    def finish_run(self, run_id: int, status: str, stats: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(sync_runs).where(sync_runs.c.id == run_id).values(finished_at=_now(), status=status, stats=stats)
            )

    def last_runs(self, limit: int = 10) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(sync_runs).order_by(sync_runs.c.id.desc()).limit(limit))
            return [dict(row._mapping) for row in rows]


RECORD_COLUMNS = ("source", "stream", "id", "partition", "updated_at", "deleted", "digest", "data", "stored_at")
KEY_COLUMNS = ("source", "stream", "id", "key")


class _PageStatements:
    """The statements of every stored page: which records exist, the upsert, the lookup keys. Rows
    are tuples in ``RECORD_COLUMNS`` / ``KEY_COLUMNS`` order.

    On SQLite they are compiled once and the rows go to the driver's ``executemany`` as they are, the
    JSON written by ``json_text`` and the flag as 1 or 0, as SQLAlchemy binds them: the same stored
    bytes without SQLAlchemy's per-row parameter processing, which cost more CPU than SQLite's own
    work (``tests/store/test_json_columns.py`` compares the rows). Elsewhere (PostgreSQL) SQLAlchemy
    executes them, batched by its insertmanyvalues.
    """

    def __init__(self, engine: Engine, insert: Any) -> None:
        upsert = insert(records)
        self._upsert = upsert.on_conflict_do_update(
            index_elements=[records.c.source, records.c.stream, records.c.id],
            set_={c: upsert.excluded[c] for c in RECORD_COLUMNS[3:]},
        )
        self._insert_keys = record_keys.insert()
        self._driver = engine.dialect.name == "sqlite"
        if self._driver:
            self._upsert_sql = _positional(self._upsert, engine, RECORD_COLUMNS)
            self._insert_keys_sql = _positional(self._insert_keys, engine, KEY_COLUMNS)

    def existing(self, conn: Connection, source: str, stream: str, ids: list[str]) -> Iterable[tuple[str, str, Any]]:
        """(id, digest, deleted) of the stored ones among ``ids`` (at most ``BATCH_LOOKUP``; the list
        padded, ``padded``)."""
        listed = padded(ids)
        if self._driver:
            marks = ", ".join("?" * len(listed))
            sql = f"SELECT id, digest, deleted FROM records WHERE source = ? AND stream = ? AND id IN ({marks})"  # noqa: S608  # only placeholders in the text; every value is bound
            return conn.exec_driver_sql(sql, (source, stream, *listed)).tuples()
        query = select(records.c.id, records.c.digest, records.c.deleted).where(
            records.c.source == source, records.c.stream == stream, records.c.id.in_(listed)
        )
        return conn.execute(query).tuples()

    def upsert(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        if self._driver:
            bound = [(s, t, i, p, u, int(d), g, json_text(data), at) for s, t, i, p, u, d, g, data, at in rows]
            conn.exec_driver_sql(self._upsert_sql, bound)
        else:
            conn.execute(self._upsert, [dict(zip(RECORD_COLUMNS, row, strict=True)) for row in rows])

    def insert_keys(self, conn: Connection, rows: list[tuple[str, str, str, str]]) -> None:
        if self._driver:
            conn.exec_driver_sql(self._insert_keys_sql, rows)
        else:
            conn.execute(self._insert_keys, [dict(zip(KEY_COLUMNS, row, strict=True)) for row in rows])


def _positional(statement: Any, engine: Engine, columns: tuple[str, ...]) -> str:
    """``statement`` as the driver's SQL text, its parameters in the order of ``columns``."""
    compiled = statement.compile(dialect=engine.dialect, column_keys=list(columns))
    if tuple(compiled.positiontup or ()) != columns:
        raise RuntimeError(f"unexpected parameter order {compiled.positiontup} for {columns}")
    return str(compiled.string)


# A stream's live records with any of a JSON array of keys; the columns of ``Store._record_columns``.
_BY_KEYS_SQLITE = (
    "SELECT source, stream, id, partition, updated_at, deleted, data FROM records"
    " WHERE source = ? AND stream = ? AND deleted = 0 AND id IN (SELECT id FROM record_keys"
    " WHERE source = ? AND stream = ? AND key IN (SELECT value FROM json_each(?)))"
)
_NO_STAMP = datetime.min.replace(tzinfo=UTC)


def _rows_to_records(rows: Iterable[tuple[Any, ...]]) -> Iterator[SourceRecord]:
    """Records from tuples of ``Store._record_columns``: ``data`` arrives as JSON text (``json_value``)."""
    loads = json_value
    for source, stream, record_id, partition, updated_at, deleted, data in rows:
        yield SourceRecord(
            source, stream, record_id, parse_datetime(updated_at) or _NO_STAMP, loads(data), bool(deleted), partition
        )


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
