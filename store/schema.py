"""Tables. Timestamps are ISO-8601 UTC text with milliseconds and a Z (``engagement.records.iso``):
sortable as text, identical on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, Index, Integer, MetaData, String, Table, Text
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

JsonType = JSON().with_variant(JSONB(), "postgresql")

records = Table(
    "records",
    metadata,
    Column("source", String(32), primary_key=True),
    Column("stream", String(64), primary_key=True),
    Column("id", String(255), primary_key=True),
    Column("partition", String(255), nullable=False, default=""),
    Column("updated_at", String(32), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("digest", String(64), nullable=False),
    Column("data", JsonType, nullable=False),
    Column("stored_at", String(32), nullable=False),
)
# With the id: a calendar's reconcile walks its partition in id order (``Store.reconcile``) instead of
# the whole stream. Stores made before it had ``ix_records_partition`` without the id
# (``Store.create_all`` replaces it).
records_by_partition = Index(
    "ix_records_partition_id", records.c.source, records.c.stream, records.c.partition, records.c.id
)

# Lookup keys of live records (``engagement.records.lookup_keys``): issues by project, events by
# attendee address and domain, so unify reads one group of clients' records, never the whole store.
record_keys = Table(
    "record_keys",
    metadata,
    Column("source", String(32), primary_key=True),
    Column("stream", String(64), primary_key=True),
    Column("id", String(255), primary_key=True),
    Column("key", String(400), primary_key=True),
)
# Covering (id included): without statistics SQLite otherwise prefers the covering primary key and
# walks every key of the stream for each lookup, which made unify quadratic in a large org.
record_keys_by_key = Index(
    "ix_record_keys_key", record_keys.c.source, record_keys.c.stream, record_keys.c.key, record_keys.c.id
)

# Ids a reconciling read saw, staged page by page (``Store.stage_seen``) so that hard deletes are
# found by an anti-join in SQL instead of an id set in memory. ``run`` is unique to one pull of one
# unit: rows a crashed run left behind never count for another. No primary key: an id staged twice
# (a Jira issue read and listed) is harmless, and plain inserts let the count check in
# ``Store.reconcile`` know exactly how many rows the read staged.
seen_ids = Table(
    "seen_ids",
    metadata,
    Column("run", String(32), nullable=False),
    Column("source", String(32), nullable=False),
    Column("stream", String(64), nullable=False),
    Column("partition", String(255), nullable=False),
    Column("id", String(255), nullable=False),
)
# Every lookup is by the whole scope and run, then the id: the anti-join's probe is one seek.
Index("ix_seen_ids", seen_ids.c.source, seen_ids.c.stream, seen_ids.c.partition, seen_ids.c.run, seen_ids.c.id)

cursors = Table(
    "cursors",
    metadata,
    Column("source", String(32), primary_key=True),
    Column("stream", String(64), primary_key=True),
    Column("partition", String(255), primary_key=True),
    Column("value", Text, nullable=True),
    Column("updated_at", String(32), nullable=False),
)

engagements = Table(
    "engagements",
    metadata,
    Column("id", String(255), primary_key=True),
    Column("name", Text, nullable=False),
    Column("client", Text, nullable=False),
    Column("client_id", String(255), nullable=True),  # the Account: which partition the engagement is in
    Column("health", String(8), nullable=False),
    Column("stage", String(16), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("payload", JsonType, nullable=False),
    Column("updated_at", String(32), nullable=False),
    # Until when the engagement holds with no new records (``UnifiedView.valid_until``, engagement.horizon):
    # a UTC stamp, "never" (time alone never changes it), or NULL (not known: saved without one).
    Column("valid_until", String(32), nullable=True),
)

# What the pulls changed since the engagements were last computed (``engagement.records.touch_keys``
# of each changed record's stored and new version): the next unify recomputes only the clients these
# name (``engagement.partition.touched_clients``), then deletes the rows it read (up to its largest id).
touched = Table(
    "touched",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(400), nullable=False),
)

# Per client, the counts of the run summary that come from its group's unify: its unknown
# stakeholders and the ambiguous meetings it reports. A unify that recomputes some clients adds the
# stored counts of the others.
client_counts = Table(
    "client_counts",
    metadata,
    Column("client_id", String(255), primary_key=True),  # "": the engagements without a client
    Column("unknown_stakeholders", Integer, nullable=False),
    Column("ambiguous_meetings", Integer, nullable=False),
)

# Health transitions of engagements (known before and after), written in the transaction that
# stores the engagement and deleted once their Prefect event is sent (``flows.sync.emit_health_events``):
# a run that dies or fails after storing an engagement leaves its event here for the next run, where
# an in-memory list lost it (the next unify sees the new health as stored and no change). ``event_id``
# is the event's id, so an event sent twice (a crash between sending and deleting) is one event to
# Prefect (stored once, its triggers evaluated once).
health_journal = Table(
    "health_journal",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False),
    Column("engagement_id", String(255), nullable=False),
    Column("previous", String(16), nullable=False),
    Column("current", String(16), nullable=False),
    Column("reason_codes", JsonType, nullable=False),
    Column("occurred", String(32), nullable=False),  # when the unify computed it (its ``now``)
)

sync_runs = Table(
    "sync_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("started_at", String(32), nullable=False),
    Column("finished_at", String(32), nullable=True),
    Column("status", String(16), nullable=False),
    Column("full", Boolean, nullable=False),
    Column("stats", JsonType, nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("key", String(255), primary_key=True),  # idempotency key, also stored in the target
    Column("target", String(32), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("engagement_id", String(255), nullable=False),
    Column("reason", Text, nullable=False),
    Column("payload", JsonType, nullable=False),
    Column("state", String(16), nullable=False),  # pending | delivered | failed | superseded
    Column("attempts", Integer, nullable=False, default=0),
    Column("retriable", Boolean, nullable=False, default=True),
    Column("last_error", Text, nullable=True),
    Column("outcome", String(16), nullable=True),  # created | updated | exists
    Column("target_id", String(255), nullable=True),
    Column("planned_at", String(32), nullable=False),
    Column("updated_at", String(32), nullable=False),
    Column("delivered_at", String(32), nullable=True),
    # The run holding the item's current attempt (``store.outbox.holder``) and until when: another
    # run leaves it alone meanwhile, unless that holder is known to be gone. Cleared when marked.
    Column("claimed_by", String(255), nullable=True),
    Column("claimed_until", String(32), nullable=True),
    # The target batch the item goes in (``store.outbox.batch_of``): due items are read in this order,
    # page by page, so every batch but a group's last is full without holding all due items at once.
    Column("batch", String(320), nullable=True),
)
Index("ix_outbox_state", outbox.c.target, outbox.c.state)
outbox_due = Index("ix_outbox_due", outbox.c.target, outbox.c.batch, outbox.c.planned_at, outbox.c.key)
outbox_engagement = Index("ix_outbox_engagement", outbox.c.engagement_id, outbox.c.kind)

pushed_status = Table(
    "pushed_status",
    metadata,
    Column("engagement_id", String(255), primary_key=True),
    Column("fingerprint", JsonType, nullable=False),
    Column("key", String(255), nullable=False),
    Column("planned_at", String(32), nullable=False),
)
