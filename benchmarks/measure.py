"""One benchmark size: a full sync, an incremental sync after ~1% of records change, and a push.

Everything reported is measured in this process (wall clock, ``time.process_time``, the peak RSS
from ``/proc/self/status``) or counted by the sandbox's request log; the minimum calls and the
round-trip lower bound are derived from what the data holds (records per stream, projects,
calendars, planned writes) and the settings (page sizes, batch sizes, concurrency).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from accord.settings import DEFAULT_MAPPING, AccordSettings
from benchmarks.sandbox_process import SandboxProcess
from engagement.mapping import Mapping, load_mapping
from flows.engine import SyncReport, run_sync
from flows.memory import release_free_memory
from flows.push_engine import PushReport, push
from sandbox.client import SandboxControl
from store import Store

T = TypeVar("T")
APIS = ("salesforce", "jira", "google_calendar")
CHANGED_SHARE = 0.01  # the incremental sync runs after this share of the records changed
JIRA_PROJECT_PAGE = 50  # project/search page size (connectors.jira.connector.PROJECT_PAGE_SIZE)
CALENDAR_LIST_PAGE = 250  # calendarList.list answers at most 250 a page


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


def measured(fn: Callable[[], T]) -> tuple[T, dict[str, Any]]:
    """Run ``fn``; its wall time, CPU time of this whole process (all threads) and peak RSS."""
    release_free_memory()  # the phase's peak starts from what is live, not what the last phase left
    windowed = reset_peak_rss()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    figures = {
        "wall_s": round(time.perf_counter() - wall, 3),
        "cpu_s": round(time.process_time() - cpu, 3),
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
    report: SyncReport, settings: AccordSettings, mapping: Mapping, counts: dict[str, Any]
) -> dict[str, dict[str, int]]:
    """The calls the data needs: full pages of each page size, one per unit at least, discovery once."""
    assert settings.salesforce and settings.google_calendar
    sf = report.sources["salesforce"].streams
    jira = report.sources["jira"].streams
    cal = report.sources["google_calendar"].streams
    minimum: dict[str, dict[str, int]] = {api: {} for api in APIS}
    minimum["salesforce"]["POST oauth2.token"] = 1
    minimum["salesforce"]["GET query pages"] = sum(pages(s.pulled, settings.salesforce.page_size) for s in sf.values())
    issues = sum(s.pulled for s in jira.values())
    if report.full:
        minimum["jira"]["GET project/search pages"] = pages(int(counts["jira"]["projects"]), JIRA_PROJECT_PAGE)
    minimum["jira"]["GET search_jql pages"] = pages(issues, mapping.jira.page_size)
    calendars = int(counts["google_calendar"]["calendars"])
    minimum["google_calendar"]["GET calendarList.list"] = pages(calendars, CALENDAR_LIST_PAGE)
    events = sum(s.pulled for s in cal.values())
    units = sum(s.partitions for s in cal.values())
    minimum["google_calendar"]["GET events.list"] = pages(events, settings.google_calendar.page_size, at_least=units)
    return minimum


def push_minimum(report: PushReport, mapping: Mapping) -> dict[str, dict[str, int]]:
    """Salesforce collections of ``batch_size`` (at most 200), one Jira comment each, Calendar batches."""
    writes = report.plan.writes  # (target, kind, calendar) -> planned and retried
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


def _pulled(report: SyncReport) -> int:
    return sum(s.pulled for source in report.sources.values() for s in source.streams.values())


def _split(report: SyncReport) -> dict[str, Any]:
    """Seconds per source's pull (concurrent) and what the run spent after the slowest pull (unify, save)."""
    pulls = {name: round(source.seconds, 3) for name, source in report.sources.items()}
    return {"pull_s_by_api": pulls, "after_pull_s": round(report.seconds - max(pulls.values(), default=0.0), 3)}


def _checked(report: SyncReport) -> SyncReport:
    if report.failed:
        raise RuntimeError("sync failed: " + "; ".join(f"{s.source}: {s.error}" for s in report.failed))
    return report


def run_size(
    size: str, *, latency_ms: float = 50.0, seed: int = 1, mapping_path: Path = DEFAULT_MAPPING
) -> dict[str, Any]:
    """Full sync, incremental sync after ~1% change, push, against a sandbox of ``size``."""
    mapping = load_mapping(mapping_path)
    with SandboxProcess(size, seed=seed, latency_ms=latency_ms) as sandbox, tempfile.TemporaryDirectory() as tmp:
        control = sandbox.control
        counts = control.counts()
        store = Store(f"sqlite:///{Path(tmp) / 'bench.sqlite'}")
        store.create_all()
        settings = AccordSettings(database_url=store.url, sandbox_control=None).with_sandbox(sandbox.info)
        try:
            since = control.summary()["last_seq"]
            full, figures = measured(lambda: _checked(run_sync(settings, mapping, store, full=True)))
            full_calls = calls_since(control, since)
            full_phase = phase_figures(
                figures, full_calls, sync_minimum(full, settings, mapping, counts), _pulled(full), settings, latency_ms
            )
            full_phase.update(_split(full))

            count = max(1, round(CHANGED_SHARE * _pulled(full) / len(APIS)))
            changes = control.mutate(count, seed=seed + 1000, late_share=0.0)
            since = control.summary()["last_seq"]
            incremental, figures = measured(lambda: _checked(run_sync(settings, mapping, store, reconcile=False)))
            incremental_phase = phase_figures(
                figures,
                calls_since(control, since),
                sync_minimum(incremental, settings, mapping, counts),
                _pulled(incremental),
                settings,
                latency_ms,
            )
            incremental_phase.update(_split(incremental))
            incremental_phase["changes"] = len(changes)
            incremental_phase["changes_per_api"] = count
            incremental_phase["changed_share"] = round(len(changes) / _pulled(full), 4) if _pulled(full) else None

            since = control.summary()["last_seq"]
            pushed, figures = measured(lambda: push(store, settings, mapping, mapping_path))
            written = sum(t.delivered for t in pushed.targets.values())
            push_phase = phase_figures(
                figures, calls_since(control, since), push_minimum(pushed, mapping), written, settings, latency_ms
            )
            push_phase["planned"] = pushed.plan.planned
            push_phase["failed"] = pushed.failed
            push_phase["calendar_reminders"] = pushed.plan.by_kind().get("calendar_event", 0)
        finally:
            store.dispose()
    return {
        "size": size,
        "seed": seed,
        "latency_ms": latency_ms,
        "org": counts,
        "concurrency": {api: int(getattr(getattr(settings, api), "concurrency", 1)) for api in APIS},
        "full_sync": full_phase,
        "incremental_sync": incremental_phase,
        "push": push_phase,
        "process_peak_rss_mb": peak_rss_mb(),
    }
