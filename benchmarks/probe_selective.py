"""What an incremental sync's unify costs against how much changed: ``python -m benchmarks.probe_selective``.

On a copy of the stored org ``benchmarks.probe_unify`` builds (a full sync at 0 ms, cached under
``--cache``), after one unify of every client: ``--changes`` records (issues, meetings, contacts,
contact roles, Opportunities, drawn uniformly with ``--seed``) are stored again with one field
added, as an incremental pull stores a change (the store notes what they touch), and the sync's
unify (``flows.engine.recompute``, in this process) runs at the sync's ``now``. ``all`` forgets the
unify basis instead: every client is recomputed, as every sync did before. Reported per count: the
clients recomputed, the unify's CPU (``time.process_time``) and wall, each the best of ``--repeat``
runs on fresh copies. CPU, not wall, is the figure to compare on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.probe_unify import cached_store, store_copy
from flows.engine import UNIFY_BASIS, fewer_collections, recompute

EDITED = (
    ("jira", "issues"),
    ("google_calendar", "events"),
    ("salesforce", "contacts"),
    ("salesforce", "contact_roles"),
    ("salesforce", "opportunities"),
)


def measure(path: Path, changes: str, seed: int) -> dict[str, Any]:
    with store_copy(path) as (store, now, mapping), fewer_collections():
        recompute(store, mapping, now)  # every client, and the basis noted
        if changes == "all":
            store.set_cursor(UNIFY_BASIS)
        else:
            rng = random.Random(seed)
            ids = [(s, t, r.id) for s, t in EDITED for r in store.iter_records(s, t)]
            for source, stream, record_id in rng.sample(ids, int(changes)):
                record = store.record_by_id(source, stream, record_id)
                assert record is not None
                store.apply_batch([replace(record, data={**record.data, "probe": seed})], track=True)
        clock, cpu = time.perf_counter(), time.process_time()
        summary, _, _ = recompute(store, mapping, now)
        return {
            "changes": changes,
            "clients_recomputed": summary.clients_recomputed,
            "cpu_s": round(time.process_time() - cpu, 3),
            "wall_s": round(time.perf_counter() - clock, 3),
        }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe_selective", description=__doc__)
    parser.add_argument("--size", default="medium")
    parser.add_argument("--changes", default="0,10,100,830,all", help="comma-separated counts, or all")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    path = cached_store(args.size, args.cache, args.seed)
    rows = []
    for changes in (c.strip() for c in args.changes.split(",") if c.strip()):
        runs = [measure(path, changes, args.seed + k) for k in range(args.repeat)]
        best = {
            "changes": changes,
            "clients_recomputed": [r["clients_recomputed"] for r in runs],
            "cpu_s": min(r["cpu_s"] for r in runs),
            "wall_s": min(r["wall_s"] for r in runs),
        }
        rows.append(best)
        print(json.dumps(best), flush=True)


if __name__ == "__main__":
    main()
