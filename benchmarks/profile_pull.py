"""Where the CPU of a full sync's pull goes: per source, the whole pull, and the sandbox's own share.

``python -m benchmarks.profile_pull --size medium --latency-ms 0 --repeat 3 [--profile]``

Each source is pulled alone into a fresh SQLite store (a full read, reconciling, no unify), then
the three together, ``--repeat`` times; reported are this process's CPU (``time.process_time``,
every thread), the wall time and the sandbox process's CPU over the same span (it shares the
machine's cores). With ``--profile`` one more pull of all three runs under cProfile in every
thread (profilers merged) and the top functions by own time and by cumulative time are printed.
CPU, not wall time, is the figure to compare on a busy machine.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from accord.settings import DEFAULT_MAPPING, AccordSettings
from benchmarks.sandbox_process import SandboxProcess
from engagement.mapping import Mapping, load_mapping
from flows.engine import SOURCES, run_sync
from flows.memory import release_free_memory
from store import Store

TICKS = os.sysconf("SC_CLK_TCK")
FIGURES = ("store_cpu_s", "wall_s", "sandbox_cpu_s")  # medians printed beside the CPU


def process_cpu_s(pid: int) -> float:
    """User + system CPU of process ``pid`` (every thread), from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def pull(settings: AccordSettings, mapping: Mapping, sources: tuple[str, ...]) -> int:
    """A full pull of ``sources`` into a fresh store; the records pulled."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'profile.sqlite'}")
        store.create_all()
        try:
            report = run_sync(settings, mapping, store, full=True, sources=sources, unify=False)
        finally:
            store.dispose()
    if report.failed:
        raise RuntimeError("; ".join(f"{s.source}: {s.error}" for s in report.failed))
    return sum(s.pulled for r in report.sources.values() for s in r.streams.values())


class StoreClock:
    """CPU the pulling threads spend inside the store's write methods (``time.thread_time``)."""

    METHODS = ("apply_batch", "clear_seen", "reconcile")

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()
        for name in self.METHODS:
            setattr(Store, name, self._timed(getattr(Store, name)))

    def _timed(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return method(*args, **kwargs)
            finally:
                spent = time.thread_time() - started
                with self._lock:
                    self.seconds += spent

        return timed


def measure(fn: Callable[[], int], sandbox_pid: int, clock: StoreClock) -> dict[str, float]:
    release_free_memory()
    wall, cpu, sandbox = time.perf_counter(), time.process_time(), process_cpu_s(sandbox_pid)
    in_store = clock.seconds
    records = fn()
    return {
        "records": records,
        "store_cpu_s": clock.seconds - in_store,
        "cpu_s": time.process_time() - cpu,
        "wall_s": time.perf_counter() - wall,
        "sandbox_cpu_s": process_cpu_s(sandbox_pid) - sandbox,
    }


def profiled(fn: Callable[[], Any]) -> pstats.Stats:
    """``fn`` with a cProfile profiler in this thread and in every thread it starts, merged. Each
    counts its thread's CPU time (``time.thread_time``), not wall time: a thread waiting for the GIL,
    a lock or a socket is not charged, so the figures add up to the process's CPU."""
    profilers: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start(*_: Any) -> None:  # the first profile event of a new thread: hand over to cProfile
        profiler = cProfile.Profile(time.thread_time)
        with lock:
            profilers.append(profiler)
        profiler.enable()

    main = cProfile.Profile(time.thread_time)
    threading.setprofile(start)
    main.enable()
    try:
        fn()
    finally:
        main.disable()
        threading.setprofile(None)
    stats = pstats.Stats(main)
    for profiler in profilers:
        profiler.disable()  # not the running thread's: a no-op, but create_stats wants it stopped
        stats.add(profiler)
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="medium")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sources", default=",".join(SOURCES), help="comma-separated; each alone, then together")
    parser.add_argument("--profile", action="store_true", help="also one cProfiled pull of all of them")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--switch-ms", type=float, default=None, help="sys.setswitchinterval for the pulls")
    args = parser.parse_args(argv)
    if args.switch_ms is not None:
        sys.setswitchinterval(args.switch_ms / 1000)
    sources = tuple(s for s in args.sources.split(",") if s)
    mapping = load_mapping(DEFAULT_MAPPING)
    with SandboxProcess(args.size, latency_ms=args.latency_ms) as sandbox:
        assert sandbox._process is not None
        pid = sandbox._process.pid
        settings = AccordSettings(database_url="sqlite://", sandbox_control=None).with_sandbox(sandbox.info)
        clock = StoreClock()
        pull(settings, mapping, sources)  # warm: imports, the sandbox's own caches
        runs: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.repeat):
            for name, subset in (
                [*((s, (s,)) for s in sources), ("all", sources)] if len(sources) > 1 else [(sources[0], sources)]
            ):
                runs.setdefault(name, []).append(measure(partial(pull, settings, mapping, subset), pid, clock))
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        print(f"# pull of a full sync, {args.size}, {args.latency_ms:g} ms, {args.repeat} runs, {stamp}")
        print(
            f"{'sources':<16}{'records':>9}{'cpu_s med':>11}{'min':>8}{'max':>8}{'rec/cpu_s':>11}"
            f"{'store cpu':>11}{'wall_s med':>12}{'sandbox cpu':>13}"
        )
        for name, figures in runs.items():
            cpu = [f["cpu_s"] for f in figures]
            med = statistics.median(cpu)
            store, wall, sandbox_cpu = (statistics.median(f[k] for f in figures) for k in FIGURES)
            print(
                f"{name:<16}{int(figures[0]['records']):>9}{med:>11.3f}{min(cpu):>8.3f}{max(cpu):>8.3f}"
                f"{figures[0]['records'] / med:>11.0f}{store:>11.3f}{wall:>12.3f}{sandbox_cpu:>13.3f}"
            )
        if args.profile:
            stats = profiled(lambda: pull(settings, mapping, sources))
            for order in ("tottime", "cumulative"):
                print(f"\n## top {args.top} by {order}")
                stats.sort_stats(order).print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
