"""The pulls' client libraries are imported before the pull threads start.

Lazily importing them in each pull thread of a fresh process made CPython's per-module import locks
deadlock (``_DeadlockError`` on ``html.entities``; one source's pull failed). Checked in a fresh
interpreter, where nothing has imported the connectors yet.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import json, sys
from datetime import UTC, datetime
from accord.settings import AccordSettings, DEFAULT_MAPPING
from engagement.mapping import load_mapping
from flows.engine import SOURCES, SourceReport, run_sync
from store import Store

seen = {}

def pull_all(sources, upper, full, reconcile):
    seen.update({s: f"connectors.{s}" in sys.modules for s in sources})
    return {s: (lambda s=s: SourceReport(s)) for s in sources}

before = {s: f"connectors.{s}" in sys.modules for s in SOURCES}
store = Store("sqlite://")
store.create_all()
run_sync(AccordSettings(database_url="sqlite://"), load_mapping(DEFAULT_MAPPING), store,
         pull_all=pull_all, unify=False)
print(json.dumps({"before": before, "at_pull": seen}))
"""


def test_connector_packages_are_imported_before_the_pulls_start() -> None:
    done = subprocess.run(  # noqa: S603  # our own interpreter
        [sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["before"] == {"salesforce": False, "jira": False, "google_calendar": False}
    assert figures["at_pull"] == {"salesforce": True, "jira": True, "google_calendar": True}
