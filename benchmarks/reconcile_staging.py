"""Reconciliation of one large stream: its peak memory, and what staging the seen ids costs.

A store is filled with ``--ids`` live Jira issues (rows written directly, one lookup key each).
A fresh process then does what a reconciling read does through ``flows.engine.pull_unit``: the ids
arrive in pages of 5000 (as Jira's id listing pages them), each page is staged in its own
transaction, one issue in a hundred is left out, and the stream is reconciled. Reported: the peak
RSS over the process's RSS before the read (``/proc/self/status`` VmHWM, reset through
``clear_refs``), the tracemalloc peak (a second pass), the staging's wall and CPU seconds per
100,000 ids (CPU of this process: PostgreSQL's own work shows in the wall time only) and the
reconcile's seconds.

    python -m benchmarks.reconcile_staging --ids 500000 --url sqlite:////tmp/reconcile.sqlite
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete

from store import SeenScope, Store
from store.schema import record_keys, records, seen_ids

PAGE = 5000  # ids per page of Jira's id listing (connectors.jira.connector.ID_PAGE_SIZE)
GONE_EVERY = 100  # one issue in a hundred was deleted in the source
WRITE_CHUNK = 10_000
STAMP = "2026-11-01T12:00:00.000Z"


def issue_id(n: int) -> str:
    return str(10_000_000 + n)


def fill(url: str, count: int) -> None:
    """``count`` live issues in 100 projects, with their lookup keys; nothing staged."""
    store = Store(url)
    store.create_all()
    with store.engine.begin() as conn:
        for table in (records, record_keys, seen_ids):
            conn.execute(delete(table))
        for start in range(0, count, WRITE_CHUNK):
            rows = []
            keys = []
            for n in range(start, min(start + WRITE_CHUNK, count)):
                project = f"P{n % 100}"
                rows.append(
                    {
                        "source": "jira",
                        "stream": "issues",
                        "id": issue_id(n),
                        "partition": project,
                        "updated_at": STAMP,
                        "deleted": False,
                        "digest": "x" * 64,
                        "data": {"project": project},
                        "stored_at": STAMP,
                    }
                )
                keys.append({"source": "jira", "stream": "issues", "id": issue_id(n), "key": f"p:{project}"})
            conn.execute(records.insert(), rows)
            conn.execute(record_keys.insert(), keys)
    store.dispose()


def pages(count: int) -> Iterator[list[str]]:
    """What the id listing hands over: fresh strings, a page at a time, the gone ones left out."""
    for start in range(0, count, PAGE):
        yield [issue_id(n) for n in range(start, min(start + PAGE, count)) if n % GONE_EVERY]


def staged_read(store: Store, count: int) -> dict[str, float]:
    """The engine's way: every page staged as it comes, then one anti-join."""
    seen = SeenScope.new("jira", "issues")
    staged = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for n, page in enumerate(pages(count)):
        if n == 0:
            store.clear_seen(seen)
        store.apply_batch([], seen=seen, seen_ids=page)
        staged += len(page)
    stage_wall, stage_cpu = time.perf_counter() - wall, time.process_time() - cpu
    wall = time.perf_counter()
    marked = store.reconcile(seen, staged=staged, stamp=datetime.now(UTC))
    return {
        "staged": staged,
        "marked": marked,
        "stage_wall_s_per_100k": round(stage_wall / staged * 100_000, 3),
        "stage_cpu_s_per_100k": round(stage_cpu / staged * 100_000, 3),
        "reconcile_wall_s": round(time.perf_counter() - wall, 3),
    }


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
        refs.write("5")  # resets VmHWM to the current RSS (Linux 4.0+)


def measure(url: str, count: int, read: Callable[[Store, int], dict[str, Any]], *, traced: bool) -> dict[str, Any]:
    """One reconciling read in this process, after a warm-up connection; memory relative to before it."""
    store = Store(url)
    store.create_all()
    store.record_counts()  # connections and statements warmed up
    before = _status_kb("VmRSS")
    _reset_peak()
    if traced:
        tracemalloc.start()
    figures = read(store, count)
    if traced:
        figures = {"tracemalloc_peak_mb": round(tracemalloc.get_traced_memory()[1] / 2**20, 1)}
        tracemalloc.stop()
    else:
        figures["rss_before_mb"] = round(before / 1024, 1)
        figures["peak_rss_over_before_mb"] = round((_status_kb("VmHWM") - before) / 1024, 1)
    store.dispose()
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=500_000)
    parser.add_argument("--url", required=True)
    parser.add_argument("--phase", choices=("all", "measure", "traced"), default="all")
    args = parser.parse_args(argv)
    if args.phase != "all":
        print(json.dumps(measure(args.url, args.ids, staged_read, traced=args.phase == "traced")))
        return
    result: dict[str, Any] = {"ids": args.ids, "backend": Store(args.url).dialect}
    for phase in ("measure", "traced"):
        fill(args.url, args.ids)  # each pass reconciles the same store: 1% marked
        command = [sys.executable, "-m", "benchmarks.reconcile_staging", "--ids", str(args.ids), "--url", args.url]
        out = subprocess.run(  # noqa: S603  # our own interpreter and module
            [*command, "--phase", phase],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        result.update(json.loads(out.strip().splitlines()[-1]))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
