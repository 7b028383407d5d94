"""The pull of one source alone, in a fresh process: ``python -m benchmarks.probe_pull``.

``--sizes medium,large`` starts a sandbox of each size (0 ms latency) and, for each source of
``--sources``, runs ``--repeat`` child processes; each does a full pull of that source into a fresh
SQLite store (no unify), as a sync does (same malloc arena cap, same garbage-collector settings),
and reports:

- ``cpu_s``: the child's CPU over the pull (``time.process_time``, every thread);
- ``peak_rss_mb``: its peak resident set (VmHWM) and ``rss_before_mb`` (imports, settings);
- ``anon_mb`` / ``file_mb``: the anonymous and file-backed parts of the resident set at the end
  (``/proc/self/smaps_rollup``), ``db_mb`` / ``wal_mb``: the SQLite file and its WAL at the end;
- ``sqlite_peak_mb`` / ``sqlite_end_mb``: SQLite's own heap (``sqlite3_memory_highwater``, through
  the shared library Python's sqlite3 module is linked to), its page caches included;
- with ``--tracemalloc``, ``traced_peak_mb``: the Python heap's peak (slower: a separate run).

One change at a time is compared the same way with ``--variant NAME=VALUE,...`` (repeatable): the
child processes' environment. The probe reads ``PROBE_PRAGMAS`` (``cache_size=-500;temp_store=FILE``:
run on every new SQLite connection after the store's own) and ``PROBE_CONCURRENCY`` /
``PROBE_PAGE_SIZE`` (the source's settings); ``TREE=/path/to/checkout`` runs the children from another
checkout of the project (with this probe file in it), so the code before a change is measured
against the same sandbox, its runs between the other variant's.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import event

from accord.settings import DEFAULT_MAPPING, AccordSettings
from benchmarks.child import run_json
from benchmarks.measure import peak_rss_mb, reset_peak_rss
from benchmarks.sandbox_process import SandboxProcess
from engagement.mapping import load_mapping
from flows.engine import SOURCES, run_sync
from flows.memory import limit_malloc_arenas, release_free_memory
from store import Store

KNOBS = {"concurrency": "PROBE_CONCURRENCY", "page_size": "PROBE_PAGE_SIZE"}  # source settings


def _status_mb(field: str, path: str = "/proc/self/status") -> float:
    with open(path, encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _sqlite_library() -> Any:
    """The SQLite library Python's sqlite3 module is linked to (its heap counters), or None when
    it is not a shared library this process can reach."""
    try:
        library = ctypes.CDLL("libsqlite3.so.0")
    except OSError:
        return None
    library.sqlite3_memory_used.restype = ctypes.c_int64
    library.sqlite3_memory_highwater.restype = ctypes.c_int64
    library.sqlite3_memory_highwater.argtypes = [ctypes.c_int]
    return library


def _probe_pragmas(store: Store) -> None:
    """``PROBE_PRAGMAS`` (``name=value;...``) run on every new connection of ``store``, after its own."""
    pragmas = [p for p in os.environ.get("PROBE_PRAGMAS", "").split(";") if p]
    if pragmas and store.dialect == "sqlite":

        def apply(dbapi_connection: Any, _: Any) -> None:
            cursor = dbapi_connection.cursor()
            for pragma in pragmas:
                cursor.execute(f"PRAGMA {pragma}")
            cursor.close()

        event.listen(store.engine, "connect", apply)


def measure_once(info: dict[str, Any], source: str, traced: bool) -> dict[str, Any]:
    """One full pull of ``source`` into a fresh store (in this process: call it in a fresh one)."""
    mapping = load_mapping(DEFAULT_MAPPING)
    settings = AccordSettings(database_url="sqlite://", sandbox_control=None).with_sandbox(info)
    knobs = {k: int(os.environ[v]) for k, v in KNOBS.items() if os.environ.get(v)}
    if knobs:
        changed = getattr(settings, source).model_copy(update=knobs)
        settings = settings.model_copy(update={source: changed})
    limit_malloc_arenas()
    sqlite_heap = _sqlite_library()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pull.sqlite"
        store = Store(f"sqlite:///{path}")
        _probe_pragmas(store)
        store.create_all()
        release_free_memory()
        figures: dict[str, Any] = {
            "source": source,
            "rss_before_mb": _status_mb("VmRSS"),
            "anon_before_mb": _status_mb("Anonymous", "/proc/self/smaps_rollup"),
        }
        if sqlite_heap is not None:
            sqlite_heap.sqlite3_memory_highwater(1)
        reset_peak_rss()
        if traced:
            tracemalloc.start()
        cpu = time.process_time()
        report = run_sync(settings, mapping, store, full=True, sources=(source,), unify=False)
        figures["cpu_s"] = round(time.process_time() - cpu, 3)
        figures["peak_rss_mb"] = peak_rss_mb()
        if traced:
            figures["traced_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
            tracemalloc.stop()
        if sqlite_heap is not None:
            figures["sqlite_peak_mb"] = round(sqlite_heap.sqlite3_memory_highwater(0) / 2**20, 1)
            figures["sqlite_end_mb"] = round(sqlite_heap.sqlite3_memory_used() / 2**20, 1)
        figures["anon_mb"] = _status_mb("Anonymous", "/proc/self/smaps_rollup")
        figures["file_mb"] = round(_status_mb("Rss", "/proc/self/smaps_rollup") - figures["anon_mb"], 1)
        figures["db_mb"] = round(path.stat().st_size / 2**20, 1)
        wal = path.with_name(path.name + "-wal")
        figures["wal_mb"] = round(wal.stat().st_size / 2**20, 1) if wal.exists() else 0.0
        figures["pool"] = store.engine.pool.status()
        store.dispose()
    if report.failed:
        raise RuntimeError("; ".join(f"{s.source}: {s.error}" for s in report.failed))
    figures["code"] = str(Path(sys.modules[Store.__module__].__file__ or "").parents[1])  # the checkout measured
    figures["records"] = sum(s.pulled for r in report.sources.values() for s in r.streams.values())
    return figures


def run_child(info: dict[str, Any], source: str, traced: bool, env: dict[str, str]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(info, handle)  # the sandbox's address and credentials: a private temporary file, never printed
        info_path = handle.name
    try:
        command = [sys.executable, "-m", "benchmarks.probe_pull", "--child", info_path, "--sources", source]
        if traced:
            command.append("--tracemalloc")
        tree = env.get("TREE")  # another checkout of the project (the code before a change): its code is measured
        return run_json(command, f"pull probe of {source}", env={**os.environ, **env}, cwd=tree)
    finally:
        Path(info_path).unlink()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe_pull", description=__doc__)
    parser.add_argument("--sizes", default="medium", help="comma-separated: small, medium, large")
    parser.add_argument("--sources", default=",".join(SOURCES), help="comma-separated")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--tracemalloc", action="store_true", help="one more traced run of each")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=VALUE[,NAME=VALUE...]: the child processes' environment; each variant is measured in turn",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sources = [s for s in args.sources.split(",") if s]
    if args.child:
        info = json.loads(args.child.read_text(encoding="utf-8"))
        print(json.dumps(measure_once(info, sources[0], args.tracemalloc)))
        return 0
    variants = [dict(item.split("=", 1) for item in v.split(",") if item) for v in args.variant] or [{}]
    for size in [s for s in args.sizes.split(",") if s]:
        with SandboxProcess(size, seed=args.seed, latency_ms=0.0) as sandbox:
            for source in sources:
                runs: list[list[dict[str, Any]]] = [[] for _ in variants]
                for _ in range(args.repeat):  # the variants' runs take turns: a busy spell hits them alike
                    for env, done in zip(variants, runs, strict=True):
                        done.append(run_child(sandbox.info, source, False, env))
                        print(json.dumps({"size": size, "env": env, **done[-1]}), flush=True)
                for env, done in zip(variants, runs, strict=True):
                    if args.tracemalloc:
                        traced = run_child(sandbox.info, source, True, env)
                        print(json.dumps({"size": size, "env": env, **traced}), flush=True)
                    peak = statistics.median(r["peak_rss_mb"] for r in done)
                    cpu = statistics.median(r["cpu_s"] for r in done)
                    print(f"# {size} {source} {env}: peak RSS {peak:.1f} MB, CPU {cpu:.2f} s (medians of {len(done)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
