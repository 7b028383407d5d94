"""SQLAlchemy persistence: records, cursors, engagements, runs (and the outbox)."""

from store.store import BatchResult, CursorUpdate, HealthChange, Store, default_database_url

__all__ = ["BatchResult", "CursorUpdate", "HealthChange", "Store", "default_database_url"]
