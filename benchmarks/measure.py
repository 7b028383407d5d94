"""One benchmark size: a full sync, an incremental sync after ~1% of records change, and a push.

Each phase runs in a fresh process of its own, as deployed (every Prefect flow run is a process), on
the same store and sandbox: its wall clock, ``time.process_time`` and peak RSS (``/proc/self/status``)
are measured there, with the CPU and peak RSS of the unify tail's child processes
(``flows.engine.UnifyPool``), and the sandbox process's CPU over the same span here. Calls are counted by the
sandbox's request log; the minimum calls and the round-trip lower bound are derived from what the
data holds (records per stream, projects, calendars, planned writes) and the settings (page sizes,
batch sizes, concurrency).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from accord.settings import DEFAULT_MAPPING, AccordSettings
from benchmarks.child import run_json
from benchmarks.sandbox_process import SandboxProcess
from connectors.jira import jql
from connectors.jira.connector import MAX_KEYS_PER_QUERY, JiraConnector
from engagement.mapping import Mapping, load_mapping
from flows.engine import SyncReport, run_sync
from flows.memory import release_free_memory
from flows.push_engine import push
from sandbox.client import SandboxControl
from store import Store

T = TypeVar("T")
APIS = ("salesforce", "jira", "google_calendar")
CHANGED_SHARE = 0.01  # the incremental sync runs after this share of the records changed
JIRA_PROJECT_PAGE = 50  # project/search page size (connectors.jira.connector.PROJECT_PAGE_SIZE)
CALENDAR_LIST_PAGE = 250  # calendarList.list answers at most 250 a page
PHASES = ("full", "incremental", "push", "requests")
FULL_RUNS = 3  # the full sync is measured this many times; its figures are the median run's
FLOOR_PAGES = 40  # pages per chain of the request floor (``request_floor``)
Streams = dict[str, dict[str, dict[str, int]]]  # source -> stream -> {"pulled": n, "partitions": n}


# -- process figures -----------------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux: ``5`` to ``/proc/self/clear_refs``); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """The process's peak resident set (VmHWM) since start, or since the last reset."""
    return round(_status_kb("VmHWM") / 1024, 1)


def children_cpu_s() -> float:
    """CPU of this process's child processes that have ended and been waited for (``RUSAGE_CHILDREN``)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured(fn: Callable[[], T]) -> tuple[T, dict[str, Any]]:
    """Run ``fn``; its wall time, peak RSS, and CPU time of this whole process (all threads) plus its
    child processes' (``children_cpu_s``: the unify tail's, start-up included; counted once they are
    waited for, which ``run_sync`` does before it returns)."""
    release_free_memory()  # the phase's peak starts from what is live, not what the last phase left
    windowed = reset_peak_rss()
    wall, cpu, children = time.perf_counter(), time.process_time(), children_cpu_s()
    result = fn()
    children = children_cpu_s() - children
    figures = {
        "wall_s": round(time.perf_counter() - wall, 3),
        "cpu_s": round(time.process_time() - cpu + children, 3),
        "children_cpu_s": round(children, 3),
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_scope": "phase" if windowed else "process",
    }
    return result, figures


# -- calls ---------------------------------------------------------------------------------------------
def calls_since(control: SandboxControl, since: int) -> dict[str, dict[str, int]]:
    """Requests per API and endpoint the emulators answered after ``since`` (the sandbox's own log)."""
    summary: dict[str, dict[str, int]] = control.summary(since)["summary"]
    return {api: dict(summary.get(api, {})) for api in APIS}


def pages(records: int, page_size: int, *, at_least: int = 1) -> int:
    return max(at_least, math.ceil(records / page_size))


def sync_minimum(
    streams: Streams, full: bool, settings: AccordSettings, mapping: Mapping, counts: dict[str, Any]
) -> dict[str, dict[str, int]]:
    """The calls the data needs: full pages of each page size, one per unit at least, discovery once."""
    assert settings.salesforce and settings.google_calendar
    sf = streams["salesforce"]
    jira = streams["jira"]
    cal = streams["google_calendar"]
    minimum: dict[str, dict[str, int]] = {api: {} for api in APIS}
    minimum["salesforce"]["POST oauth2.token"] = 1
    minimum["salesforce"]["GET query pages"] = sum(
        pages(s["pulled"], settings.salesforce.page_size) for s in sf.values()
    )
    issues = sum(s["pulled"] for s in jira.values())
    if full:
        minimum["jira"]["GET project/search pages"] = pages(int(counts["jira"]["projects"]), JIRA_PROJECT_PAGE)
    minimum["jira"]["GET search_jql pages"] = pages(issues, mapping.jira.page_size)
    calendars = int(counts["google_calendar"]["calendars"])
    minimum["google_calendar"]["GET calendarList.list"] = pages(calendars, CALENDAR_LIST_PAGE)
    events = sum(s["pulled"] for s in cal.values())
    units = sum(s["partitions"] for s in cal.values())
    minimum["google_calendar"]["GET events.list"] = pages(events, settings.google_calendar.page_size, at_least=units)
    return minimum


def push_minimum(writes: Counter[tuple[str, str, str]], mapping: Mapping) -> dict[str, dict[str, int]]:
    """Salesforce collections of ``batch_size`` (at most 200), one Jira comment each, Calendar batches;
    ``writes``: (target, kind, calendar) -> writes planned and retried."""
    kinds: Counter[str] = Counter()
    for (target, kind, _), n in writes.items():
        if target == "salesforce":
            kinds[kind] += n
    minimum: dict[str, dict[str, int]] = {api: {} for api in APIS}
    sf_batch = mapping.push.salesforce.batch_size
    if kinds:
        minimum["salesforce"]["POST oauth2.token"] = 1
    if kinds["task"]:
        minimum["salesforce"]["PATCH composite.upsert"] = pages(kinds["task"], sf_batch)
    if kinds["opportunity_status"]:
        minimum["salesforce"]["PATCH composite.update"] = pages(kinds["opportunity_status"], sf_batch)
    comments = sum(n for (target, _, _), n in writes.items() if target == "jira")
    if comments:
        minimum["jira"]["POST comments.add"] = comments  # Jira has no batch comment API
        minimum["jira"]["PUT properties.put"] = comments  # the issue asks for the entity property too
    per_calendar: Counter[str] = Counter()
    for (target, _, calendar), n in writes.items():
        if target == "google_calendar":
            per_calendar[calendar] += n
    if per_calendar:
        size = mapping.push.google_calendar.batch_size
        minimum["google_calendar"]["POST batch"] = sum(pages(n, size) for n in per_calendar.values())
    return minimum


def _totals(per_api: dict[str, dict[str, int]]) -> dict[str, int]:
    totals = {api: sum(per_api.get(api, {}).values()) for api in APIS}
    totals["all"] = sum(totals.values())
    return totals


def _bound(totals: dict[str, int], settings: AccordSettings, latency_ms: float) -> dict[str, float]:
    """Per API: calls x latency / the concurrency its settings allow. The APIs run concurrently."""
    bound: dict[str, float] = {}
    for api in APIS:
        concurrency = int(getattr(getattr(settings, api), "concurrency", 1))
        bound[api] = round(totals[api] * latency_ms / 1000 / concurrency, 3)
    return bound


def phase_figures(
    figures: dict[str, Any],
    calls: dict[str, dict[str, int]],
    minimum: dict[str, dict[str, int]],
    records: int,
    settings: AccordSettings,
    latency_ms: float,
) -> dict[str, Any]:
    made, needed = _totals(calls), _totals(minimum)
    bound_by_api = _bound(needed, settings, latency_ms)
    bound = max(bound_by_api.values())
    bound_made = max(_bound(made, settings, latency_ms).values())
    wall, cpu = float(figures["wall_s"]), float(figures["cpu_s"])
    return {
        **figures,
        "records": records,
        "records_per_cpu_s": round(records / cpu, 1) if cpu > 0 else None,
        "calls": calls,
        "calls_total": made,
        "min_calls": minimum,
        "min_calls_total": needed,
        "calls_ratio": round(made["all"] / needed["all"], 3) if needed["all"] else None,
        "bound_s_by_api": bound_by_api,
        "bound_s": bound,
        "bound_ratio": round(wall / bound, 3) if bound > 0 else None,
        "bound_with_calls_made_s": bound_made,
    }


def _streams(report: SyncReport) -> Streams:
    return {
        name: {stream: {"pulled": s.pulled, "partitions": s.partitions} for stream, s in source.streams.items()}
        for name, source in report.sources.items()
    }


def _pulled(streams: Streams) -> int:
    return sum(s["pulled"] for source in streams.values() for s in source.values())


def _checked(report: SyncReport) -> SyncReport:
    if report.failed:
        raise RuntimeError("sync failed: " + "; ".join(f"{s.source}: {s.error}" for s in report.failed))
    return report


# -- one phase, in a process of its own ----------------------------------------------------------------
def run_phase(
    phase: str, store_url: str, sandbox_info: dict[str, Any], mapping_path: Path, pages: int = FLOOR_PAGES
) -> dict[str, Any]:
    """One phase against the store and sandbox, measured in this process (call it in a fresh one):
    the figures and what the minimum calls are computed from (never a credential)."""
    if phase == "requests":
        return run_requests(sandbox_info, mapping_path, pages)
    mapping = load_mapping(mapping_path)
    store = Store(store_url)
    settings = AccordSettings(database_url=store_url, sandbox_control=None).with_sandbox(sandbox_info)
    try:
        if phase == "push":
            pushed, figures = measured(lambda: push(store, settings, mapping, mapping_path))
            figures["children_peak_rss_mb"] = 0.0  # a push runs in one process
            return {
                "figures": figures,
                "writes": [[*key, n] for key, n in sorted(pushed.plan.writes.items())],
                "delivered": sum(t.delivered for t in pushed.targets.values()),
                "planned": pushed.plan.planned,
                "failed": pushed.failed,
                "calendar_reminders": pushed.plan.by_kind().get("calendar_event", 0),
            }
        full = phase == "full"
        report, figures = measured(
            lambda: _checked(run_sync(settings, mapping, store, full=full, reconcile=None if full else False))
        )
        # The children run alongside this process (started before the pull): their peaks add to its own.
        figures["children_peak_rss_mb"] = round(sum(c.peak_rss_mb for c in report.unify_children), 1)
        figures["unify_processes"] = 1 + len(report.unify_children)
        pulls = {name: round(source.seconds, 3) for name, source in report.sources.items()}
        return {
            "figures": figures,
            "full": report.full,
            "streams": _streams(report),
            # Seconds per source's pull (concurrent) and what the run spent after the slowest (unify, save).
            "split": {
                "pull_s_by_api": pulls,
                "pulled_in_child": sorted(name for name, source in report.sources.items() if source.in_child),
                "after_pull_s": round(report.seconds - max(pulls.values(), default=0.0), 3),
                # The clients whose engagements the unify recomputed (None: all of them).
                "clients_recomputed": report.view.clients_recomputed if report.view else None,
                # Of those, unified while the Jira pull went on in the child (``EarlyUnify``).
                "clients_during_pull": report.view.clients_during_pull if report.view else None,
            },
        }
    finally:
        store.dispose()


# -- the request floor: what one request of the slowest pull costs with nothing else to do ------------
def _search_chain(connector: JiraConnector, chunks: list[list[str]], pages: int, page_size: int) -> list[float]:
    """Seconds of each of up to ``pages`` Jira search pages read one after the other (the reader's
    own request and decode, ``JiraConnector.search_pages``), through ``chunks`` of project keys."""
    times: list[float] = []
    for chunk in chunks:
        query = f"{jql.project_in(chunk)} ORDER BY key ASC"
        reading = connector.search_pages(
            query, fields=connector.fields, page_size=page_size, reconcile=(), what="measure requests"
        )
        while len(times) < pages:
            started = time.perf_counter()
            if next(reading, None) is None:
                break
            times.append(time.perf_counter() - started)
        if len(times) >= pages:
            break
    return times


def run_requests(sandbox_info: dict[str, Any], mapping_path: Path, pages: int) -> dict[str, Any]:
    """Jira's search requests as the full read makes them (the same queries, fields and page size), but
    nothing done with the pages: one chain alone, then ``concurrency`` chains on threads of this one
    process, as the reader runs them. Milliseconds per request (the mean), and how many were made."""
    mapping = load_mapping(mapping_path)
    settings = AccordSettings(database_url="sqlite://", sandbox_control=None).with_sandbox(sandbox_info)
    assert settings.jira is not None
    chains = settings.jira.concurrency
    connector = JiraConnector(settings.jira, mapping)
    try:
        keys = connector.project_keys()
        chunks = [keys[i : i + MAX_KEYS_PER_QUERY] for i in range(0, len(keys), MAX_KEYS_PER_QUERY)]
        page_size = mapping.jira.page_size
        _search_chain(connector, chunks, 1, page_size)  # the connection and the client, as a warm reader has
        alone = _search_chain(connector, chunks, pages, page_size)
        results: list[list[float]] = [[] for _ in range(chains)]

        def chain(n: int) -> None:
            results[n] = _search_chain(connector, chunks[n::chains], pages, page_size)

        threads = [threading.Thread(target=chain, args=(n,)) for n in range(chains)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
    finally:
        connector.close()
    together = sum(len(r) for r in results)
    return {
        "api": "jira",
        "one_chain_ms": round(statistics.fmean(alone) * 1000, 1) if alone else None,
        "one_chain_requests": len(alone),
        "chains": chains,
        # Each chain's requests follow one another: the wall over the requests of the longest chain.
        "chains_ms": round(wall / max(len(r) for r in results) * 1000, 1) if together else None,
        "chains_requests": together,
    }


def request_floor(
    sandbox: SandboxProcess, mapping_path: Path, latency_ms: float, pages: int = FLOOR_PAGES
) -> dict[str, Any]:
    """``run_requests`` in a fresh interpreter against the bench's sandbox, with the sandbox's own time
    for those requests (its request log: the latency it adds and its answer, the mean)."""
    since = sandbox.control.summary()["last_seq"]
    command = [sys.executable, "-m", "benchmarks.measure", "--phase", "requests", "--store", "-"]
    result = run_json(
        [*command, "--mapping", str(mapping_path), "--pages", str(pages)],
        "request floor",
        input=json.dumps(sandbox.info),
    )
    searches = [
        r["duration_ms"] for r in sandbox.control.requests("jira", since)["requests"] if r["endpoint"] == "search_jql"
    ]
    result["server_ms"] = round(statistics.fmean(searches), 1) if searches else None
    result["latency_ms"] = latency_ms
    return result


def phase_in_child(phase: str, store_url: str, sandbox: SandboxProcess, mapping_path: Path) -> dict[str, Any]:
    """``run_phase`` in a fresh interpreter; the sandbox's address and credentials go on its standard
    input, never on a command line. Adds the sandbox process's CPU over the phase."""
    command = [sys.executable, "-m", "benchmarks.measure", "--phase", phase, "--store", store_url]
    before = sandbox.cpu_s()
    result = run_json(
        [*command, "--mapping", str(mapping_path)], f"benchmark phase {phase}", input=json.dumps(sandbox.info)
    )
    result["figures"]["sandbox_cpu_s"] = round(sandbox.cpu_s() - before, 3)
    return result


def empty_store(path: Path) -> str:
    """A new SQLite store at ``path`` with its tables; its URL."""
    url = f"sqlite:///{path}"
    store = Store(url)
    store.create_all()
    store.dispose()
    return url


def drop_store(path: Path) -> None:
    """A SQLite store's files: the database, its write-ahead log and shared memory."""
    for kept in path.parent.glob(path.name + "*"):
        kept.unlink()


def cpu_floor(
    sandbox: SandboxProcess, path: Path, mapping_path: Path, latency_ms: float, runs: int = 1
) -> dict[str, Any]:
    """The same full sync with no latency, before the measured one, ``runs`` times, each into a store of
    its own: what the machine's cores make of the work itself (Accord's CPU and the sandbox's), below
    which no latency setting takes the wall. The figures are the median-wall run's, with every run's
    wall under ``runs_wall_s``. The sandbox's latency is restored after it."""
    floors: list[dict[str, Any]] = []
    for api in APIS:
        sandbox.control.set_faults(api, latency_ms=0.0)
    try:
        for n in range(runs):
            run_path = path.with_name(f"{path.stem}-{n}{path.suffix}")
            result = phase_in_child("full", empty_store(run_path), sandbox, mapping_path)
            drop_store(run_path)
            figures = result["figures"]
            floors.append(
                {
                    "wall_s": figures["wall_s"],
                    "cpu_s": figures["cpu_s"],
                    "sandbox_cpu_s": figures["sandbox_cpu_s"],
                    "after_pull_s": result["split"]["after_pull_s"],
                    "records": _pulled(result["streams"]),
                }
            )
    finally:
        for api in APIS:
            sandbox.control.set_faults(api, latency_ms=latency_ms)
    floor = dict(median_run(floors))
    floor["runs_wall_s"] = [f["wall_s"] for f in floors]
    return floor


def median_run(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run whose wall is the median (of an even number, the slower of the middle two)."""
    return sorted(runs, key=lambda run: float(run["wall_s"]))[len(runs) // 2]


def run_summary(run: dict[str, Any]) -> dict[str, Any]:
    """What is kept of each run of a repeated phase."""
    return {
        "wall_s": run["wall_s"],
        "bound_ratio": run["bound_ratio"],
        "cpu_s": run["cpu_s"],
        "sandbox_cpu_s": run.get("sandbox_cpu_s"),
        "after_pull_s": run.get("after_pull_s"),
        "pull_s_by_api": run.get("pull_s_by_api"),
        "calls": run["calls_total"]["all"],
    }


def run_size(
    size: str,
    *,
    latency_ms: float = 50.0,
    seed: int = 1,
    mapping_path: Path = DEFAULT_MAPPING,
    full_runs: int = FULL_RUNS,
) -> dict[str, Any]:
    """Full sync, incremental sync after ~1% change, push, against a sandbox of ``size``, each phase
    in a process of its own. The full sync runs ``full_runs`` times, and as often with no latency
    (``cpu_floor``): its figures are the run's with the median wall, and each run's main figures are
    kept under ``runs``."""
    if full_runs < 1:
        raise ValueError(f"full_runs must be at least 1, got {full_runs}")
    mapping = load_mapping(mapping_path)
    with SandboxProcess(size, seed=seed, latency_ms=latency_ms) as sandbox, tempfile.TemporaryDirectory() as tmp:
        control = sandbox.control
        counts = control.counts()
        # At 0 ms the measured full sync is its own floor: no second run.
        floor = None
        if latency_ms > 0:
            floor = cpu_floor(sandbox, Path(tmp) / "floor.sqlite", mapping_path, latency_ms, full_runs)
        url = f"sqlite:///{Path(tmp) / 'bench.sqlite'}"
        settings = AccordSettings(database_url=url, sandbox_control=None).with_sandbox(sandbox.info)

        # The full sync ``full_runs`` times, each into an empty store (the last into the one the next
        # phases use): the host's speed drifts between runs of the same work, so the figures are
        # those of the run with the median wall, and every run's are kept beside them.
        runs: list[dict[str, Any]] = []
        for n in range(full_runs):
            path = Path(tmp) / ("bench.sqlite" if n == full_runs - 1 else f"full-{n}.sqlite")
            run_url = empty_store(path)
            since = control.summary()["last_seq"]
            full = phase_in_child("full", run_url, sandbox, mapping_path)
            figures = phase_figures(
                full["figures"],
                calls_since(control, since),
                sync_minimum(full["streams"], True, settings, mapping, counts),
                _pulled(full["streams"]),
                settings,
                latency_ms,
            )
            figures.update(full["split"])
            runs.append(figures)
            if n < full_runs - 1:
                drop_store(path)
        full_phase = dict(median_run(runs))
        full_phase["runs"] = [run_summary(run) for run in runs]
        full_phase["floor"] = floor
        # What one of the slowest pull's requests costs at best: after the syncs, with nothing else running.
        full_phase["request_floor"] = request_floor(sandbox, mapping_path, latency_ms) if latency_ms > 0 else None
        pulled = int(full_phase["records"])

        count = max(1, round(CHANGED_SHARE * pulled / len(APIS)))
        changes = control.mutate(count, seed=seed + 1000, late_share=0.0)
        since = control.summary()["last_seq"]
        incremental = phase_in_child("incremental", url, sandbox, mapping_path)
        incremental_phase = phase_figures(
            incremental["figures"],
            calls_since(control, since),
            sync_minimum(incremental["streams"], incremental["full"], settings, mapping, counts),
            _pulled(incremental["streams"]),
            settings,
            latency_ms,
        )
        incremental_phase.update(incremental["split"])
        incremental_phase["changes"] = len(changes)
        incremental_phase["changes_per_api"] = count
        incremental_phase["changed_share"] = round(len(changes) / pulled, 4) if pulled else None

        since = control.summary()["last_seq"]
        pushed = phase_in_child("push", url, sandbox, mapping_path)
        writes = Counter({(t, k, c): n for t, k, c, n in pushed["writes"]})
        push_phase = phase_figures(
            pushed["figures"],
            calls_since(control, since),
            push_minimum(writes, mapping),
            pushed["delivered"],
            settings,
            latency_ms,
        )
        push_phase["planned"] = pushed["planned"]
        push_phase["failed"] = pushed["failed"]
        push_phase["calendar_reminders"] = pushed["calendar_reminders"]
    phases = {"full_sync": full_phase, "incremental_sync": incremental_phase, "push": push_phase}
    return {
        "size": size,
        "seed": seed,
        "latency_ms": latency_ms,
        "org": counts,
        "concurrency": {api: int(getattr(getattr(settings, api), "concurrency", 1)) for api in APIS},
        **phases,
        # Each phase is a process (with the unify tail's children, alive at the same time: their peaks
        # add, an upper bound as they need not peak at the same moment): the largest of the phases.
        "process_peak_rss_mb": round(
            max(p["peak_rss_mb"] + p.get("children_peak_rss_mb", 0.0) for p in phases.values()), 1
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """The child side of ``phase_in_child``: one phase, its figures as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.measure", description=run_phase.__doc__)
    parser.add_argument("--phase", choices=PHASES, required=True)
    parser.add_argument("--store", required=True, help="the store's database URL")
    parser.add_argument("--mapping", type=Path, default=DEFAULT_MAPPING)
    parser.add_argument("--pages", type=int, default=FLOOR_PAGES, help="pages per chain (--phase requests)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    info = json.loads(sys.stdin.read())  # the sandbox's address and credentials: never printed
    print(json.dumps(run_phase(args.phase, args.store, info, args.mapping, args.pages)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
