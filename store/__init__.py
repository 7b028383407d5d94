"""SQLAlchemy persistence: records, cursors, engagements, runs (and the outbox)."""

from store.outbox import Delivery, Outbox, OutboxItem
from store.store import (
    BatchResult,
    CursorUpdate,
    HealthChange,
    HealthEvent,
    SeenScope,
    StagingLostError,
    Store,
    default_database_url,
)

__all__ = [
    "BatchResult",
    "CursorUpdate",
    "Delivery",
    "HealthChange",
    "HealthEvent",
    "Outbox",
    "OutboxItem",
    "SeenScope",
    "StagingLostError",
    "Store",
    "default_database_url",
]
