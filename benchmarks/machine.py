"""How fast this machine is: the CPU seconds of a fixed workload, measured once per ``make bench``.

The machine the benchmark runs on changes, and its CPU speed with it (up to 2x between sessions).
``reference_cpu_s`` times the same single-threaded pure-Python work every time, made of what Accord
spends its CPU on: building small JSON-like records, ``orjson.dumps`` with sorted keys, sha256 of each,
``orjson.loads`` back, ``datetime.fromisoformat`` and a sort of tuples. Figures of CPU and wall of two
runs compare by it: a run on a machine with a reference of 2 s is expected to take about twice the
CPU of one on a machine of 1 s, for the same code.

``CHECKSUM`` pins the work: if the workload changes, its result changes, ``reference_cpu_s`` refuses
to report a figure until ``CHECKSUM`` is updated, and figures from before are no longer comparable.
"""

from __future__ import annotations

import gc
import hashlib
import os
import platform
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

RECORDS = 100_000
STATUSES = ("To Do", "In Progress", "In Review", "Done", "Won't Do")
# sha256 of the workload's result (see ``workload``); update it only with the workload.
CHECKSUM = "12e836d5cbcea5977cdfb826a4ee03940d936b52183d8f8cc8f52093060d9d60"


def _record(i: int) -> dict[str, Any]:
    """The ``i``-th record: a Jira-issue-like dict of strings, ints, a list and a nested dict (no floats,
    whose text could differ between orjson versions)."""
    day = f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}"
    return {
        "id": f"{10_000 + i}",
        "key": f"PROJ-{i % 997}",
        "summary": f"Record {i} of the reference workload",
        "status": STATUSES[i % len(STATUSES)],
        "updated": f"{day}T{i % 24:02d}:{i % 60:02d}:{i * 7 % 60:02d}.{i % 1000:03d}+00:00",
        "points": i % 13,
        "labels": [f"label-{i % 7}", f"team-{i % 5}"],
        "assignee": {"accountId": f"acc-{i % 211}", "displayName": f"User {i % 211}", "active": i % 2 == 0},
    }


def workload(records: int = RECORDS) -> str:
    """The fixed work; returns the sha256 of its result (the sorted rows), the same every time."""
    rows = []
    for i in range(records):
        raw = orjson.dumps(_record(i), option=orjson.OPT_SORT_KEYS)
        digest = hashlib.sha256(raw).hexdigest()
        back = orjson.loads(raw)
        rows.append((datetime.fromisoformat(back["updated"]), back["key"], digest))
    rows.sort()
    total = hashlib.sha256()
    for when, key, digest in rows:
        total.update(f"{when.isoformat()} {key} {digest}\n".encode())
    return total.hexdigest()


def reference_cpu_s(runs: int = 3) -> float:
    """The CPU seconds (``time.process_time``) of ``workload``, the best of ``runs``; raises if the work
    is not the one ``CHECKSUM`` pins."""
    best = float("inf")
    for _ in range(runs):
        gc.collect()
        started = time.process_time()
        checksum = workload()
        took = time.process_time() - started
        if checksum != CHECKSUM:
            raise RuntimeError(f"the reference workload changed (checksum {checksum}, expected {CHECKSUM})")
        best = min(best, took)
    return round(best, 3)


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The CPU's "model name" from /proc/cpuinfo; None where there is none (not Linux, some ARM)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "model name" and value.strip():
            return value.strip()
    return None


def describe() -> dict[str, Any]:
    """This machine: the reference figure, its cores, CPU model and Python version."""
    return {
        "reference_cpu_s": reference_cpu_s(),
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
    }
