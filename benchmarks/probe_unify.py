"""The unify tail of a sync alone, measured in a fresh process: ``python -m benchmarks.probe_unify``.

``--sizes medium,large`` builds (once, cached under ``--cache``, default /tmp) a stored org by a full
sync against a sandbox at 0 ms latency, then runs ``flows.engine.unify_and_store`` on a copy of it,
each run in a child process of its own, as the sync does after its pull (same malloc arena cap,
same garbage-collector settings, the sync's ``now``). Three kinds of run:

- ``plain``: CPU (``time.process_time``) and peak RSS (VmHWM, from just before the unify) and RSS
  before it (imports, settings): what the unify adds is the difference;
- ``tracemalloc``: the Python heap's peak during the unify (slower: traced separately);
- ``profile``: cProfile's top entries by own time and by cumulative time.

``--saved`` chooses what the store holds before the run: ``same`` (the engagements the sync saved:
an incremental sync with nothing changed) or ``none`` (a full sync's first save). Every figure is
repeated ``--repeat`` times; the report gives each run and the minimum.

``--processes 2`` runs the tail as a sync with ``ACCORD_UNIFY_PROCESSES=2`` does (``plain`` only):
the child process is started and warmed before the clock starts (the sync does it during the pull),
then partition 0 runs here and partition 1 in the child. ``wall_s`` is the tail's wall clock;
``cpu_s`` this process's CPU, ``children_cpu_s`` the child's whole life (start-up and imports
included, from ``RUSAGE_CHILDREN`` once it has exited) and ``child_unify_cpu_s`` its unify alone;
``children_peak_rss_mb`` the child's VmHWM.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import pstats
import resource
import shutil
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete

from accord.settings import DEFAULT_MAPPING, AccordSettings
from benchmarks.child import run_json
from benchmarks.measure import peak_rss_mb, reset_peak_rss
from benchmarks.sandbox_process import SandboxProcess
from engagement.mapping import Mapping, load_mapping
from engagement.records import iso, parse_datetime
from flows.engine import UnifyPool, fewer_collections, run_sync, unify_and_store
from flows.memory import limit_malloc_arenas, release_free_memory
from store import Store
from store.schema import engagements

KINDS = ("plain", "tracemalloc", "profile")


def cached_store(size: str, cache: Path, seed: int) -> Path:
    """The SQLite file of a fully synced org of ``size`` (built once), with the sync's ``now`` beside it."""
    path = cache / f"accord-probe-{size}-{seed}.sqlite"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return path
    mapping = load_mapping(DEFAULT_MAPPING)
    with SandboxProcess(size, seed=seed, latency_ms=0.0) as sandbox, tempfile.TemporaryDirectory() as tmp:
        building = Path(tmp) / path.name
        store = Store(f"sqlite:///{building}")
        store.create_all()
        settings = AccordSettings(database_url=store.url, sandbox_control=None).with_sandbox(sandbox.info)
        report = run_sync(settings, mapping, store, full=True)
        if report.failed:
            raise RuntimeError("; ".join(f"{s.source}: {s.error}" for s in report.failed))
        counts = store.record_counts()
        store.dispose()
        shutil.copyfile(building, path)
    meta.write_text(json.dumps({"now": iso(report.started_at), "records": counts}), encoding="utf-8")
    return path


@contextmanager
def store_copy(path: Path) -> Iterator[tuple[Store, datetime, Mapping]]:
    """A store on a fresh copy of the cached org ``path`` (``cached_store``), brought up to date, with
    the sync's ``now`` and the default mapping; the copy goes when the block ends."""
    now = parse_datetime(json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))["now"])
    assert isinstance(now, datetime)
    mapping = load_mapping(DEFAULT_MAPPING)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / path.name
        shutil.copyfile(path, copy)
        store = Store(f"sqlite:///{copy}")
        store.create_all()  # as a sync does: a cached org from an earlier version gets the tables it lacks
        try:
            yield store, now, mapping
        finally:
            store.dispose()


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_once(path: Path, kind: str, saved: str, processes: int = 1) -> dict[str, Any]:
    """One run of the unify tail on a copy of ``path`` (in this process: call it in a fresh one)."""
    if processes > 1 and kind != "plain":
        raise ValueError(f"--processes {processes} measures the plain kind only, not {kind}")
    with store_copy(path) as (store, now, mapping):
        if saved == "none":
            with store.engine.begin() as conn:
                conn.execute(delete(engagements))
        limit_malloc_arenas()
        release_free_memory()
        rss_before = _rss_mb()
        reset_peak_rss()
        figures: dict[str, Any] = {"kind": kind, "processes": processes, "rss_before_mb": rss_before}
        profiler = cProfile.Profile() if kind == "profile" else None
        if kind == "tracemalloc":
            tracemalloc.start()
        pool = UnifyPool(store.url, processes) if processes > 1 else None
        children_before = _children_cpu_s()
        try:
            if pool:
                pool.wait_started()  # started and imported, as during a sync's pull
            with fewer_collections():
                wall, cpu = time.perf_counter(), time.process_time()
                if profiler:
                    profiler.enable()
                if pool:
                    summary, changes, children = pool.unify_and_store(store, mapping, now)
                    figures["child_unify_cpu_s"] = round(sum(c.cpu_s for c in children), 3)
                    figures["children_peak_rss_mb"] = round(sum(c.peak_rss_mb for c in children), 1)
                    figures["child_wall_s"] = max(c.wall_s for c in children)
                    figures["own_partition_wall_s"] = round(pool.own_s, 3)
                    figures["waited_for_children_s"] = round(pool.waited_s, 3)
                else:
                    summary, changes = unify_and_store(store, mapping, now)
                if profiler:
                    profiler.disable()
                figures["wall_s"] = round(time.perf_counter() - wall, 3)
                figures["cpu_s"] = round(time.process_time() - cpu, 3)
        finally:
            if pool:
                pool.close()
        if pool:
            figures["children_cpu_s"] = round(_children_cpu_s() - children_before, 3)
        figures["peak_rss_mb"] = peak_rss_mb()
        if kind == "tracemalloc":
            figures["tracemalloc_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
            tracemalloc.stop()
        if profiler:
            figures["profile"] = _top(profiler)
        figures["engagements"] = summary.engagements
        figures["groups"] = summary.groups
        figures["health_changes"] = len(changes)
    return figures


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _top(profiler: cProfile.Profile, entries: int = 25) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(entries)
    stats.sort_stats("cumulative").print_stats(entries)
    return out.getvalue()


def run_child(path: Path, kind: str, saved: str, processes: int = 1) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.probe_unify", "--child", str(path), "--kind", kind]
    return run_json(
        [*command, "--saved", saved, "--processes", str(processes)], f"probe of {path.name} ({kind}, {processes})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe_unify", description=__doc__)
    parser.add_argument("--sizes", default="medium", help="comma-separated: small, medium, large")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated: {', '.join(KINDS)}")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each plain and tracemalloc measurement")
    parser.add_argument("--saved", choices=("same", "none"), default="same")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--processes", type=int, default=1, help="unify processes (plain kind only)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=KINDS, default="plain", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.child:
        print(json.dumps(measure_once(args.child, args.kind, args.saved, args.processes)))
        return 0
    report: dict[str, Any] = {}
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        path = cached_store(size, args.cache, args.seed)
        runs: dict[str, list[dict[str, Any]]] = {}
        for kind in [k.strip() for k in args.kinds.split(",") if k.strip()]:
            repeat = 1 if kind == "profile" else args.repeat
            runs[kind] = [run_child(path, kind, args.saved, args.processes) for _ in range(repeat)]
        for profiled in runs.get("profile", []):
            print(f"== {size} profile ==\n{profiled.pop('profile')}", file=sys.stderr)
        best: dict[str, float] = {}
        for kind, results in runs.items():
            keys = ("wall_s", "cpu_s", "children_cpu_s", "child_unify_cpu_s", "peak_rss_mb", "children_peak_rss_mb")
            for key in (*keys, "rss_before_mb", "tracemalloc_peak_mb"):
                values = [r[key] for r in results if key in r]
                if values and kind != "profile":
                    best[f"{kind}.{key}"] = min(values)
        report[size] = {"best": best, "runs": runs}
        print(f"{size}: {json.dumps(best)}", file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
