"""Targets, growth between sizes, and the markdown table of a benchmark run."""

from __future__ import annotations

import itertools
import os
from typing import Any

PHASES = ("full_sync", "incremental_sync", "push")
GROWN = ("wall_s", "cpu_s", "peak_rss_mb", "records", "records_per_cpu_s", "calls_ratio", "bound_ratio")
FULL_SYNC_BOUND_MAX = 1.3
CALLS_RATIO_MAX = 1.1
MEMORY_GROWTH_MAX = 1.2


def growth(sizes: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Each figure of each size divided by the same figure of the previous size."""
    names = list(sizes)
    out: dict[str, dict[str, float | None]] = {}
    for smaller, larger in itertools.pairwise(names):
        ratios: dict[str, float | None] = {}
        for phase in PHASES:
            for figure in GROWN:
                a, b = sizes[smaller][phase].get(figure), sizes[larger][phase].get(figure)
                ratios[f"{phase}.{figure}"] = round(b / a, 2) if a and b is not None else None
        out[f"{smaller}->{larger}"] = ratios
    return out


def _excess(phase: dict[str, Any]) -> str:
    """Where the calls above the minimum go: per API, the endpoints made and the minimum."""
    parts = []
    for api, made in phase["calls_total"].items():
        if api == "all":
            continue
        needed = phase["min_calls_total"][api]
        if made > needed:
            endpoints = ", ".join(f"{k} {v}" for k, v in phase["calls"][api].items())
            parts.append(f"{api} {made} calls vs {needed} needed ({endpoints})")
    return "; ".join(parts) or "no API above its minimum"


def _reference(machine: dict[str, Any] | None) -> str:
    """The machine's reference figure in words (``benchmarks/machine.py``)."""
    if not machine:
        return "not measured"
    return f"{machine['reference_cpu_s']} s of CPU for the fixed workload of benchmarks/machine.py"


def _lock_waits(api: str, in_child: list[str] | None) -> str:
    """Whose interpreter lock the slowest pull waited for: the other pulls', or, pulled by the unify
    child (``ACCORD_PULL_IN_CHILD``), only its own threads' (and cores shared with the others)."""
    if in_child and api in in_child:
        return (
            "waits for its own threads' interpreter lock in the unify child that pulled it, on cores the "
            "other pulls and the sandbox share"
        )
    return "waits for the interpreter lock the other pulls hold"


def _request_floor_why(full: dict[str, Any], slowest: str) -> str:
    """What one request of the slowest pull costs at best (``benchmarks.measure.request_floor``), against
    the latency: the part of the slowest pull's excess that no change to what Accord does with the pages
    removes; and whether that alone, with the wall after the pull, is over the target."""
    measured = full.get("request_floor")
    if not measured or measured.get("api") != slowest or not measured.get("one_chain_ms"):
        return ""
    latency, bound = measured["latency_ms"], full["bound_s_by_api"][slowest]
    alone, chains = measured["one_chain_ms"], measured.get("chains_ms")
    text = (
        f". Its requests alone, each page read and decoded and nothing else done, after the syncs: "
        f"{alone} ms each in one chain ({round(alone / latency, 2)}x the latency; the sandbox's own time "
        f"{measured.get('server_ms', 'n/a')} ms of it)"
    )
    if chains:
        least = round(chains / latency * bound + float(full.get("after_pull_s") or 0.0), 2)
        text += (
            f", {chains} ms in {measured['chains']} chains on threads of one process, as the reader runs them "
            f"({round(chains / latency, 2)}x): at that pace the pull alone, plus the wall after it, takes "
            f"{least} s, {round(least / full['bound_s'], 3)}x the bound"
        )
        if least > FULL_SYNC_BOUND_MAX * full["bound_s"]:
            text += (
                f", over the target of {FULL_SYNC_BOUND_MAX}x before any record is stored or any other pull "
                "shares the cores"
            )
    return text


def _floor_why(full: dict[str, Any], machine: dict[str, Any] | None = None) -> str:
    """What the wall is made of: the slowest API's pull against its own bound (its requests follow one
    another, page token after page token, ``concurrency`` chains at a time), the wall after the pull,
    and the same sync with no latency (the work itself, on this machine's cores). Where that work alone
    is over the target, no request pattern can meet it on this machine: the text says so, with the
    machine's reference figure."""
    parts = []
    pulls: dict[str, float] = full.get("pull_s_by_api") or {}
    bounds: dict[str, float] = full.get("bound_s_by_api") or {}
    slowest = max(pulls, key=lambda api: pulls[api]) if pulls else None
    if slowest is not None and bounds.get(slowest):
        took, bound = pulls[slowest], bounds[slowest]
        parts.append(
            f". The slowest pull, {slowest}'s, took {took} s, {round(took / bound, 2)}x its own bound of {bound} s: "
            f"its requests follow one another within each of its concurrent chains, so each took about "
            f"{round(took / bound, 2)}x the latency (the sandbox's answer, the client's HTTP stack and JSON, and "
            f"{_lock_waits(slowest, full.get('pulled_in_child'))}); then {full.get('after_pull_s', 'n/a')} s "
            f"after the pull (unify in {full.get('unify_processes', 1)} processes)"
        )
        parts.append(_request_floor_why(full, slowest))
    floor = full.get("floor")
    if floor and full["bound_s"] > 0:  # no floor (and no bound) at 0 ms: the run itself is the floor
        walls = floor.get("runs_wall_s") or []
        runs = f"the median of {len(walls)} runs: {', '.join(_fmt(w) for w in walls)} s; " if len(walls) > 1 else ""
        parts.append(
            f". With no latency at all the same full sync takes {floor['wall_s']} s ({runs}Accord {floor['cpu_s']} s "
            f"CPU, sandbox {floor['sandbox_cpu_s']} s, {floor['after_pull_s']} s after the pull)"
        )
        floor_ratio = floor["wall_s"] / full["bound_s"]
        if floor_ratio > FULL_SYNC_BOUND_MAX:
            parts.append(
                f": on this machine the work itself, with no latency at all, already takes {round(floor_ratio, 2)}x "
                f"the bound (the target is {FULL_SYNC_BOUND_MAX}x), so the target cannot be met here by any change "
                "to the request pattern, only by less CPU work or more cores (this machine's reference: "
                f"{_reference(machine)})"
            )
        elif floor["wall_s"] > full["bound_s"]:
            parts.append(
                f": the wall cannot go below {floor['wall_s']} s here, {round(floor['wall_s'] / full['bound_s'], 2)}x "
                "the bound, until that work shrinks or spreads over more cores"
            )
        else:
            parts.append(": the work itself fits within the bound; what is over it is the request chain above")
    return "".join(parts)


def _runs_why(full: dict[str, Any]) -> str:
    """Which of the full sync's runs the figures are, when it ran more than once."""
    runs = full.get("runs") or []
    if len(runs) < 2:
        return ""
    walls = ", ".join(_fmt(r["wall_s"]) for r in runs)
    ratios = [r["bound_ratio"] for r in runs if r.get("bound_ratio") is not None]
    spread = f"; wall / bound {_fmt(min(ratios))} to {_fmt(max(ratios))}" if ratios else ""
    return f"the median of {len(runs)} runs (walls {walls} s{spread}): "


def targets(
    sizes: dict[str, dict[str, Any]], primary: str, machine: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Each target's value, whether it is met, and why; ``machine`` (``benchmarks.machine.describe()``'s,
    None where not measured) gives the cores and the reference figure of the machine that measured."""
    cores = machine["cores"] if machine else os.cpu_count()
    main = sizes[primary]
    full, incremental, pushed = main["full_sync"], main["incremental_sync"], main["push"]
    result: dict[str, dict[str, Any]] = {}
    ratio = full["bound_ratio"]
    result["full_sync_within_1.3x_bound"] = {
        "value": ratio,
        "met": ratio is not None and ratio <= FULL_SYNC_BOUND_MAX,
        "why": (
            _runs_why(full)
            + f"wall {full['wall_s']} s vs bound {full['bound_s']} s (max over APIs of needed calls x latency / "
            f"concurrency: {full['bound_s_by_api']}); with the calls actually made the bound is "
            f"{full['bound_with_calls_made_s']} s; the Accord process spent {full['cpu_s']} s of CPU "
            f"(HTTP client, parsing, SQLite writes, unify; {full.get('after_pull_s', 'n/a')} s of wall after the "
            f"slowest pull) and the sandbox {full.get('sandbox_cpu_s', 'n/a')} s, on {cores} cores"
            + _floor_why(full, machine)
        ),
    }
    for name, phase in (("incremental", incremental), ("push", pushed)):
        value = phase["calls_ratio"]
        result[f"{name}_calls_within_1.1x_minimum"] = {
            "value": value,
            "met": value is not None and value <= CALLS_RATIO_MAX,
            "why": _excess(phase),
        }
    if "medium" in sizes and "large" in sizes:
        a, b = sizes["medium"]["process_peak_rss_mb"], sizes["large"]["process_peak_rss_mb"]
        result["peak_memory_flat_medium_to_large"] = {
            "value": round(b / a, 2),
            "met": b / a <= MEMORY_GROWTH_MAX,
            "why": f"peak RSS {round(a, 1)} MB at medium, {round(b, 1)} MB at large (each: the largest phase, "
            "its unify children included)",
        }
    else:
        result["peak_memory_flat_medium_to_large"] = {"value": None, "met": None, "why": "large not run"}
    return result


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, list):  # a repeated phase's runs: their wall / bound
        return " / ".join(_fmt(run.get("bound_ratio")) for run in value) if value else "n/a"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


ROWS = (
    ("wall time (s)", "wall_s"),
    ("round-trip lower bound (s)", "bound_s"),
    ("wall / bound", "bound_ratio"),
    ("wall / bound of each run (the figures: the median run's)", "runs"),
    ("API calls made", "calls_total.all"),
    ("minimum calls", "min_calls_total.all"),
    ("calls / minimum", "calls_ratio"),
    ("records (pulled or written)", "records"),
    ("CPU of Accord: the process and its unify children (s)", "cpu_s"),
    ("of which the unify children (s)", "children_cpu_s"),
    ("CPU of the sandbox process (s)", "sandbox_cpu_s"),
    ("wall after the slowest pull (s)", "after_pull_s"),
    ("clients whose engagements were recomputed (n/a: all)", "clients_recomputed"),
    ("of which unified during the pull (n/a: not measured)", "clients_during_pull"),
    ("wall with no latency (s)", "floor.wall_s"),
    ("a Jira search request alone, one chain (ms)", "request_floor.one_chain_ms"),
    ("a Jira search request in the concurrency's chains, one process (ms)", "request_floor.chains_ms"),
    ("records per CPU-second", "records_per_cpu_s"),
    ("peak RSS in the phase (MB)", "peak_rss_mb"),
    ("peak RSS of the unify children (MB)", "children_peak_rss_mb"),
)


def _get(phase: dict[str, Any], path: str) -> Any:
    value: Any = phase
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _machine_line(machine: dict[str, Any] | None) -> str:
    """The machine's reference figure and what it is for."""
    purpose = (
        "the CPU seconds of a fixed workload (`benchmarks/machine.py`): compare runs on different machines by it; "
        "figures of CPU and wall scale with it (the wall as far as it is work, not latency)."
    )
    if not machine:
        return f"Machine reference: not measured (a run from before `benchmarks/machine.py`); it is {purpose}"
    return (
        f"Machine reference: {machine['reference_cpu_s']} s, {purpose} This machine: {machine['cores']} cores, "
        f"{machine.get('cpu_model') or 'CPU model unknown'}, Python {machine['python']}."
    )


def markdown(result: dict[str, Any]) -> str:
    sizes: dict[str, dict[str, Any]] = result["sizes"]
    names = list(sizes)
    lines = [
        "# Accord benchmarks",
        "",
        f"`make bench` at {result['latency_ms']:g} ms per request, sizes {', '.join(names)}, seed {result['seed']}, "
        f"run {result['started_at']}. Generated by `python -m benchmarks.run`; the JSON beside this file has every "
        "figure, per API and endpoint.",
        "",
        _machine_line(result.get("machine")),
        "",
        "The sandbox runs in its own process (`accord sandbox up`), so CPU and RSS are the Accord process's own: "
        "connectors, HTTP clients, the SQLite store, unify and the push rules. Calls are counted by the sandbox's "
        "request log. The lower bound is, per API, the minimum calls the data needs times the latency divided by "
        "the concurrency the settings allow; the APIs run concurrently, so the bound is the largest of the three.",
        "Each phase runs in a fresh process of its own, one after the other on the same store and sandbox, as "
        "deployed (every Prefect flow run is a process): a phase's CPU and peak RSS are that process's, imports "
        "included (about 64 MB), and the memory target compares the largest phase peak of each size (a sync's "
        "peak plus its unify children's: they are alive together). The "
        "sandbox's own CPU over each phase is reported beside it: it shares the machine's cores. The full sync "
        "runs several times, each into an empty store: its figures are the run's with the median wall, and each "
        "run's wall / bound is beside them (the same work's CPU time drifts from run to run on a shared host).",
        "",
        "Minimum calls: pages of each page size per stream (at least one per stream or calendar), Jira project "
        "pages and the calendar list once, one Salesforce token; push: Salesforce collections of "
        "`push.salesforce.batch_size` (200) per kind, one Jira comment per status update (no batch API), "
        "Calendar batches of `push.google_calendar.batch_size` per calendar. Not counted as needed: client-library "
        "overhead (Jira `serverInfo`, `myself`), and the idempotency look-ups the writers make (the Salesforce "
        "Task key query per batch, the Jira comment list and entity property per comment). The incremental "
        "sync runs without the periodic id reconciliation (due every 24 h) and after "
        "`mutate(late_share=0)`, about 1% of the records.",
        "",
        "## Targets (" + result["primary_size"] + ")",
        "",
        "| target | value | met | why |",
        "|---|---:|---|---|",
    ]
    for name, target in result["targets"].items():
        met = {True: "met", False: "**missed**", None: "not run"}[target["met"]]
        lines.append(f"| {name} | {_fmt(target['value'])} | {met} | {target['why']} |")
    for phase in ("full_sync", "incremental_sync", "push"):
        lines += ["", f"## {phase.replace('_', ' ')}", "", "| figure | " + " | ".join(names) + " |"]
        lines.append("|---|" + "---:|" * len(names))
        for label, path in ROWS:
            lines.append(f"| {label} | " + " | ".join(_fmt(_get(sizes[n][phase], path)) for n in names) + " |")
        for api in ("salesforce", "jira", "google_calendar"):
            cells = [
                f"{_get(sizes[n][phase], f'calls_total.{api}')} / {_get(sizes[n][phase], f'min_calls_total.{api}')}"
                for n in names
            ]
            lines.append(f"| {api} calls / minimum | " + " | ".join(cells) + " |")
    if result["growth"]:
        lines += ["", "## Growth between sizes (larger / smaller)", ""]
        steps = list(result["growth"])
        lines += ["| figure | " + " | ".join(steps) + " |", "|---|" + "---:|" * len(steps)]
        for key in next(iter(result["growth"].values())):
            lines.append(f"| {key} | " + " | ".join(_fmt(result["growth"][s][key]) for s in steps) + " |")
    lines.append("")
    return "\n".join(lines)
