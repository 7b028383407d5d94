"""Helpers shared by the fault suite: fault settings, a mid-run credential expiry, write tallies."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from types import TracebackType
from typing import Any

from engagement.mapping import Mapping
from sandbox.app import Sandbox
from store import Store
from tests.chaos.figures import FIGURES
from tests.flows.test_push import queued_keys, target_counts

# The mix: 10% 429 (Retry-After 0 keeps the suite fast), 3% 5xx, 1% dropped connections, jitter.
FAULTS: dict[str, Any] = {"rate_429": 0.10, "rate_5xx": 0.03, "rate_drop": 0.01, "jitter_ms": 5.0, "retry_after_s": 0}
MAX_RUNS = 10  # a faulted run may leave work for the next; more than this many runs is a failure


def inject(sandbox: Sandbox, seed: int, **overrides: Any) -> None:
    for i, name in enumerate(sorted(sandbox.apps)):
        sandbox.apps[name].faults.configure(**{**FAULTS, **overrides, "seed": seed + i})


def clear_faults(sandbox: Sandbox) -> None:
    for app in sandbox.apps.values():
        app.faults.reset()


class ExpireMidway:
    """Expires every session of ``api`` once the run made ``after`` requests to it (a watcher thread)."""

    def __init__(self, sandbox: Sandbox, api: str, after: int) -> None:
        self.sandbox, self.api, self.after = sandbox, api, after
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"expire-{api}", daemon=True)

    def _watch(self) -> None:
        since = self.sandbox.log.last_seq
        while not self._stop.is_set():
            if self.sandbox.log.count(api=self.api, since_seq=since) >= self.after:
                self.sandbox.apps[self.api].expire_credentials()
                self.fired = True
                FIGURES.add(f"expired_sessions_{self.api}")
                return
            time.sleep(0.002)

    def __enter__(self) -> ExpireMidway:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()


def converge(run: Callable[[int], bool], what: str) -> int:
    """Calls ``run(attempt)`` until it reports success; returns how many runs that took."""
    for attempt in range(MAX_RUNS):
        if run(attempt):
            FIGURES.add(f"{what}_runs", attempt + 1)
            FIGURES.add(f"{what}_reruns_needed", attempt)
            return attempt + 1
    raise AssertionError(f"{what} did not converge in {MAX_RUNS} runs")


def tally_writes(sandbox: Sandbox, mapping: Mapping, expected: dict[str, set[str]]) -> tuple[int, int]:
    """(duplicates, losses) of the writes the targets hold, counted from the sandbox's own records."""
    held = target_counts(sandbox, mapping)
    duplicates = sum(n - 1 for counts in held.values() for n in counts.values() if n > 1)
    losses = sum(len(keys - set(held[target])) for target, keys in expected.items())
    FIGURES.add("writes_checked", sum(len(keys) for keys in expected.values()))
    FIGURES.add("duplicates", duplicates)
    FIGURES.add("losses", losses)
    return duplicates, losses


def expected_after_pushes(store: Store, planned: dict[str, set[str]], planned_on: date) -> dict[str, set[str]]:
    """The writes the pushes queued and did not supersede: what the targets must hold exactly once.

    ``planned`` is a plan made before the pushes, on ``planned_on`` (UTC). The pushes run on the real
    clock, and a status update says how many days things took: one planned before midnight (UTC) and
    pushed after it is planned again with the new count under a new key, superseding the old (a run
    across the boundary once counted that as a loss). So only across a day boundary, and only status
    updates, may the plan and the queued writes differ."""
    expected = queued_keys(store)
    replanned = {key for target, keys in planned.items() for key in keys - expected[target]}
    if datetime.now(UTC).date() == planned_on:
        assert replanned == set()
    assert all(key.startswith("status-") for key in replanned), sorted(replanned)[:5]
    return expected
