"""The push alone, measured in a fresh process: ``python -m benchmarks.probe_push``.

``--sizes medium,large`` takes (building it once, cached under ``--cache``, default /tmp) the stored
org of a full sync against a sandbox at 0 ms latency (``benchmarks.probe_unify.cached_store``: the
same file the unify probe uses), then, for every run, starts a fresh sandbox at 0 ms latency holding
the same org (same size and seed, nothing mutated: what the store was synced from) and runs
``flows.push_engine.push`` on a copy of the store in a child process of its own (same malloc arena
cap and garbage-collector settings as a push run, the sync's ``now``). The sandbox's credentials go
to the child on its standard input, never on a command line. Two kinds of run:

- ``plain``: CPU (``time.process_time``), peak RSS (VmHWM, from just before the push) and RSS
  before it, and the CPU split: planning (planning and queueing every group, and reading what is
  due for the report; with the CPU of Jira's apply, which runs meanwhile: ``PIPELINED``) and
  applying, per target;
- ``profile``: the same under cProfile, with its top entries by own time and by cumulative time.

Every run also reports what the push did (planned, queued, delivered and failed writes, writer
calls) and the API calls the sandbox answered during it (its own request log), so a change that
saves CPU by writing differently shows. Every figure is repeated ``--repeat`` times; the report
gives each run and the minimum. Unlike the bench's push, this one follows a full sync without the
incremental one in between (its ~1% of changed records): the plan is almost the same.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from accord.settings import DEFAULT_MAPPING, AccordSettings
from benchmarks.child import run_json
from benchmarks.measure import APIS, peak_rss_mb, reset_peak_rss
from benchmarks.probe_unify import _rss_mb, _top, cached_store, store_copy
from benchmarks.sandbox_process import SandboxProcess
from flows.engine import fewer_collections
from flows.memory import limit_malloc_arenas, release_free_memory
from flows.push_engine import PIPELINED, TargetReport, apply_target, push

KINDS = ("plain", "profile")


def measure_once(path: Path, kind: str, sandbox: dict[str, Any]) -> dict[str, Any]:
    """One push on a copy of ``path`` against the sandbox ``sandbox`` describes (in this process:
    call it in a fresh one)."""
    with store_copy(path) as (store, now, mapping):
        settings = AccordSettings(database_url=store.url, sandbox_control=None).with_sandbox(sandbox)
        limit_malloc_arenas()
        release_free_memory()
        rss_before = _rss_mb()
        reset_peak_rss()
        figures: dict[str, Any] = {"kind": kind, "rss_before_mb": rss_before}
        profiler = cProfile.Profile() if kind == "profile" else None
        marks: dict[str, float] = {}
        applied: dict[str, float] = {}

        def apply(target: str) -> TargetReport:
            # The targets apply at the same time (``apply_concurrently``): each one's wall time; the
            # process's CPU is shared by them. Those not ``PIPELINED`` start once the plan is queued.
            if target not in PIPELINED:
                marks.setdefault("planned", time.process_time())
                marks.setdefault("planned_wall", time.perf_counter())
            started = time.perf_counter()
            report = apply_target(target, store, settings, mapping)
            applied[target] = round(time.perf_counter() - started, 3)
            return report

        with fewer_collections():
            cpu, wall = time.process_time(), time.perf_counter()
            if profiler:
                profiler.enable()
            report = push(store, settings, mapping, DEFAULT_MAPPING, now=now, apply=apply)
            if profiler:
                profiler.disable()
            figures["cpu_s"] = round(time.process_time() - cpu, 3)
            figures["wall_s"] = round(time.perf_counter() - wall, 3)
        figures["plan_cpu_s"] = round(marks.get("planned", cpu) - cpu, 3)
        figures["plan_wall_s"] = round(marks.get("planned_wall", wall) - wall, 3)
        figures["apply_wall_s"] = applied
        figures["peak_rss_mb"] = peak_rss_mb()
        if profiler:
            figures["profile"] = _top(profiler, 45)
        figures["planned"] = report.plan.planned
        figures["queued"] = report.queued
        figures["by_target"] = report.plan.by_target()
        figures["delivered"] = {t: r.delivered for t, r in report.targets.items()}
        figures["failed"] = {t: r.failed for t, r in report.targets.items()}
        figures["writer_batches"] = {t: r.batches for t, r in report.targets.items()}
    return figures


def run_child(path: Path, kind: str, size: str, seed: int, latency_ms: float = 0.0) -> dict[str, Any]:
    """A fresh sandbox of ``size`` (the org the store was synced from) and one push in a child."""
    with SandboxProcess(size, seed=seed, latency_ms=latency_ms) as sandbox:
        control = sandbox.control
        since = control.summary()["last_seq"]
        command = [sys.executable, "-m", "benchmarks.probe_push", "--child", str(path), "--kind", kind]
        # The sandbox's address and keys go on standard input.
        result = run_json(command, f"push probe of {path.name} ({kind})", input=json.dumps(sandbox.info))
        summary = control.summary(since)["summary"]
        calls = {api: sum(summary.get(api, {}).values()) for api in APIS}
        result["api_calls"] = {**calls, "all": sum(calls.values())}
        result["api_calls_by_endpoint"] = {api: dict(sorted(summary.get(api, {}).items())) for api in APIS}
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe_push", description=__doc__)
    parser.add_argument("--sizes", default="medium", help="comma-separated: small, medium, large")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated: {', '.join(KINDS)}")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each plain measurement")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="latency the sandbox adds to every request")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=KINDS, default="plain", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.child:
        sandbox = json.loads(sys.stdin.readline())
        print(json.dumps(measure_once(args.child, args.kind, sandbox)))
        return 0
    report: dict[str, Any] = {}
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        path = cached_store(size, args.cache, args.seed)
        runs: dict[str, list[dict[str, Any]]] = {}
        for kind in [k.strip() for k in args.kinds.split(",") if k.strip()]:
            repeat = 1 if kind == "profile" else args.repeat
            runs[kind] = [run_child(path, kind, size, args.seed, args.latency_ms) for _ in range(repeat)]
        for profiled in runs.get("profile", []):
            print(f"== {size} profile ==\n{profiled.pop('profile')}", file=sys.stderr)
        best: dict[str, Any] = {}
        for kind, results in runs.items():
            if kind == "profile" or not results:
                continue
            for key in ("cpu_s", "wall_s", "plan_cpu_s", "plan_wall_s", "peak_rss_mb", "rss_before_mb"):
                best[f"{kind}.{key}"] = min(r[key] for r in results)
            for target in results[0]["apply_wall_s"]:
                best[f"{kind}.apply_wall_s.{target}"] = min(r["apply_wall_s"][target] for r in results)
            best["api_calls"] = results[0]["api_calls"]
            best["delivered"] = results[0]["delivered"]
        report[size] = {"best": best, "runs": runs}
        print(f"{size}: {json.dumps(best)}", file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
