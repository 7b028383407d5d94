"""Faults on demand, per API: latency, rate limiting, server errors and dropped connections.

A dropped connection comes in two kinds: ``drop`` closes it before the request is handled (nothing
happened), ``drop_after`` (write requests only: POST, PUT, PATCH, DELETE) handles the request in full
and then closes it without an answer: the write landed, its answer is lost. Decisions come from a
seeded generator so a fault run can be replayed. Credential expiry is not a rate but an action on
the emulator (``expire_credentials``), see ``sandbox.http.ApiApp``.
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

FaultKind = Literal["429", "5xx", "drop", "drop_after"]
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
RATES = ("rate_429", "rate_5xx", "rate_drop", "rate_drop_after")


@dataclass
class FaultSettings:
    latency_ms: float = 0.0  # added to every request
    jitter_ms: float = 0.0  # uniform extra latency in [0, jitter_ms]
    rate_429: float = 0.0  # share of requests answered with the API's rate-limit response
    rate_5xx: float = 0.0  # share answered with a server error (500/502/503)
    rate_drop: float = 0.0  # share whose connection is closed without an answer (before handling)
    rate_drop_after: float = 0.0  # share of writes handled in full, then closed without an answer
    retry_after_s: int = 1  # Retry-After sent with 429s (an integer: the jira library parses it with int())
    seed: int = 0

    def validate(self) -> None:
        for name in RATES:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fault {name} must be a share between 0 and 1, got {value!r}")
        if sum(getattr(self, name) for name in RATES) > 1.0:
            raise ValueError("fault shares " + " + ".join(RATES) + " must not exceed 1")
        if self.latency_ms < 0 or self.jitter_ms < 0:
            raise ValueError("latency_ms and jitter_ms must not be negative")
        if self.retry_after_s < 0:
            raise ValueError("retry_after_s must not be negative")


class FaultInjector:
    """Thread-safe fault decisions for one API."""

    def __init__(self, settings: FaultSettings | None = None) -> None:
        self._lock = threading.Lock()
        self.settings = settings or FaultSettings()
        self._rng = random.Random(self.settings.seed)
        self.injected: dict[str, int] = {"429": 0, "5xx": 0, "drop": 0, "drop_after": 0}

    def configure(self, **changes: Any) -> FaultSettings:
        known = {f.name for f in fields(FaultSettings)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown fault setting(s) {sorted(unknown)}; expected some of {sorted(known)}")
        with self._lock:
            merged = FaultSettings(**{**asdict(self.settings), **changes})
            merged.validate()
            if "seed" in changes:
                self._rng = random.Random(merged.seed)
            self.settings = merged
            return merged

    def reset(self) -> None:
        with self._lock:
            self.settings = FaultSettings()
            self._rng = random.Random(0)

    def delay_seconds(self) -> float:
        with self._lock:
            s = self.settings
            extra = self._rng.uniform(0.0, s.jitter_ms) if s.jitter_ms else 0.0
            return (s.latency_ms + extra) / 1000.0

    def decide(self, method: str = "GET") -> FaultKind | None:
        """The fault for one request (``method`` matters to ``drop_after``, which only writes get);
        one roll per request whenever any share is set."""
        with self._lock:
            s = self.settings
            if not (s.rate_429 or s.rate_5xx or s.rate_drop or s.rate_drop_after):
                return None
            roll = self._rng.random()
            kind: FaultKind | None = None
            if roll < s.rate_429:
                kind = "429"
            elif roll < s.rate_429 + s.rate_5xx:
                kind = "5xx"
            elif roll < s.rate_429 + s.rate_5xx + s.rate_drop:
                kind = "drop"
            elif roll < s.rate_429 + s.rate_5xx + s.rate_drop + s.rate_drop_after and method in WRITE_METHODS:
                kind = "drop_after"
            if kind is not None:
                self.injected[kind] += 1
            return kind

    def pick_5xx(self) -> int:
        with self._lock:
            return self._rng.choice((500, 502, 503))

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"settings": asdict(self.settings), "injected": dict(self.injected)}
