"""The Prefect-free engine in a process of its own, for the kill -9 trials.

``python -m tests.chaos.runner sync|push`` reads ACCORD_SANDBOX_CONTROL and ACCORD_DATABASE_URL
like ``accord sync`` / ``accord push`` do, and runs ``flows.engine.run_sync`` /
``flows.push_engine.push`` without Prefect's ephemeral API (which costs ~10 s per process start).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

from accord.settings import load_settings
from connectors.retry import RetrySettings
from engagement.mapping import load_mapping
from flows.engine import run_sync
from flows.push_engine import push
from store import Store

MAPPING_PATH = Path("mappings/default.yaml")
FAST = RetrySettings(max_attempts=8, base_wait_s=0.0, max_wait_s=0.05)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    settings = load_settings()
    assert settings.salesforce and settings.jira and settings.google_calendar
    settings = settings.model_copy(
        update={
            "salesforce": settings.salesforce.model_copy(update={"retry": FAST}),
            "jira": settings.jira.model_copy(update={"retry": FAST}),
            "google_calendar": settings.google_calendar.model_copy(update={"retry": FAST}),
        }
    )
    mapping = load_mapping(MAPPING_PATH)
    store = Store(settings.database_url)
    store.create_all()
    try:
        if command == "sync":
            # --now ISO: the sync's time (its pulls' upper bound, the unify's clock), the same for a
            # run that is killed and the runs after it
            now = datetime.fromisoformat(argv[argv.index("--now") + 1]) if "--now" in argv else None
            report = run_sync(
                settings, mapping, store, full="--full" in argv, reconcile="--reconcile" in argv or None, now=now
            )
            print(json.dumps({"failed": [s.error for s in report.failed]}))
            return 1 if report.failed else 0
        if command == "push":
            result = push(store, settings, mapping, MAPPING_PATH)
            print(json.dumps({"failed": result.failed, "queued": result.queued}))
            return 1 if result.failed else 0
    finally:
        store.dispose()
    usage = "python -m tests.chaos.runner sync [--full] [--reconcile] [--now ISO] | push"
    print(f"usage: {usage} (got {argv})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
