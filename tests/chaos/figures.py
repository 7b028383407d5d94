"""The fault suite's figures: what was injected, killed and checked, and what went wrong.

Every test adds to one session-wide tally; ``conftest.py`` prints it at the end of the run (with or
without ``-s``) and ``test_zz_summary.py`` writes it as JSON and fails on any duplicate, loss or leak.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sandbox.app import Sandbox
from store import Store

FULL = os.environ.get("ACCORD_CHAOS", "") == "full"
MODE = "full" if FULL else "reduced"


class Figures:
    """Thread-safe counters; the names are the report's rows."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            counts = dict(sorted(self.counts.items()))
        for name in ("duplicates", "losses", "leak_hits"):
            counts.setdefault(name, 0)
        return {"mode": MODE, **counts}

    def line(self) -> str:
        return "accord chaos figures: " + json.dumps(self.to_json(), sort_keys=True)


FIGURES = Figures()


def count_injected(sandbox: Sandbox) -> dict[str, int]:
    """Faults the sandbox injected so far, per kind, over all APIs (also added to the figures)."""
    total: Counter[str] = Counter()
    for app in sandbox.apps.values():
        total.update(app.faults.snapshot()["injected"])
    for kind, n in total.items():
        FIGURES.add(f"faults_injected_{kind}", n)
    return dict(total)


def store_texts(store: Store) -> dict[str, str]:
    """Everything a store holds, as text: records, outbox items with their payloads and errors."""
    records = [json.dumps([r.source, r.stream, r.id, r.data], default=str) for r in store.iter_records()]
    outbox = [
        json.dumps([i.key, i.target, i.kind, i.payload, i.reason, i.last_error], default=str)
        for i in store.outbox.items()
    ]
    texts = {"store records": "\n".join(records), "store outbox": "\n".join(outbox)}
    if store.url.startswith("sqlite:///"):
        raw = Path(store.url.removeprefix("sqlite:///")).read_bytes()
        texts["store file"] = raw.decode("utf-8", errors="replace")
    return texts


def request_log_text(sandbox: Sandbox) -> str:
    return "\n".join(json.dumps(r.to_json(), default=str) for r in sandbox.log.records())


def leak_hits(sandbox: Sandbox, texts: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[str]:
    """Where any of the sandbox's credentials appears in ``texts`` (name -> text); adds to the figures."""
    secrets = [s for s in sandbox.credentials.secret_values() if s]
    items = list(texts.items()) if isinstance(texts, Mapping) else list(texts)
    hits = [f"{name}: secret #{i}" for name, text in items for i, secret in enumerate(secrets) if secret in text]
    FIGURES.add("leak_scans", len(items))
    FIGURES.add("leak_scanned_chars", sum(len(text) for _, text in items))
    FIGURES.add("leak_hits", len(hits))
    return hits
