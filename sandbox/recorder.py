"""Every request the emulators answer, so tests and benchmarks can assert the calls a sync made.

Only the method, path, query, status and the route's name are kept: never headers or bodies,
which carry credentials and contact data.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class RecordedRequest:
    seq: int
    api: str
    method: str
    path: str
    query: dict[str, list[str]]
    status: int  # 0 when the connection was dropped on purpose (no answer was sent)
    endpoint: str  # route name, e.g. "query", "search_jql", "events.list"
    fault: str | None = None  # "429", "5xx", "drop", "drop_after", "expired" when injected
    duration_ms: float = 0.0
    body_keys: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["body_keys"] = list(self.body_keys)
        return data


class RequestLog:
    """Thread-safe, append-only log of answered requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RecordedRequest] = []
        self._seq = 0

    def append(self, **fields: Any) -> RecordedRequest:
        with self._lock:
            self._seq += 1
            record = RecordedRequest(seq=self._seq, **fields)
            self._records.append(record)
            return record

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def records(
        self,
        api: str | None = None,
        method: str | None = None,
        endpoint: str | None = None,
        path: str | None = None,
        since_seq: int = 0,
    ) -> list[RecordedRequest]:
        """Requests matching every given filter; ``path`` is a regular expression searched in the path."""
        pattern = re.compile(path) if path else None
        with self._lock:
            snapshot = list(self._records)
        return [
            r
            for r in snapshot
            if r.seq > since_seq
            and (api is None or r.api == api)
            and (method is None or r.method == method)
            and (endpoint is None or r.endpoint == endpoint)
            and (pattern is None or pattern.search(r.path))
        ]

    def count(self, **filters: Any) -> int:
        return len(self.records(**filters))

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._seq

    def summary(self, since_seq: int = 0) -> dict[str, dict[str, int]]:
        """Counts per API and endpoint, e.g. ``{"jira": {"GET search_jql": 3}}``."""
        counts: dict[str, Counter[str]] = {}
        for r in self.records(since_seq=since_seq):
            counts.setdefault(r.api, Counter())[f"{r.method} {r.endpoint}"] += 1
        return {api: dict(sorted(c.items())) for api, c in sorted(counts.items())}
