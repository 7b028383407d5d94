"""The benchmark code on the small org with a tiny latency: the structure, and figures that come from
measurements (the sandbox's request log, the clocks) rather than constants."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from benchmarks.measure import APIS, run_size
from benchmarks.report import targets
from benchmarks.run import collect, main, write

LATENCY_MS = 2.0


@pytest.fixture(scope="module")
def small() -> dict[str, Any]:
    return run_size("small", latency_ms=LATENCY_MS, seed=3)


def test_each_phase_has_every_figure(small: dict[str, Any]) -> None:
    for phase in ("full_sync", "incremental_sync", "push"):
        figures = small[phase]
        for key in ("wall_s", "cpu_s", "peak_rss_mb", "records", "calls", "min_calls", "calls_ratio", "bound_s"):
            assert key in figures, (phase, key)
        assert figures["wall_s"] > 0 and figures["cpu_s"] > 0 and figures["peak_rss_mb"] > 0
        assert figures["sandbox_cpu_s"] >= 0
        assert set(figures["calls"]) == set(APIS)
    floor = small["full_sync"]["floor"]  # the same full sync at 0 ms, in a store of its own
    assert floor["records"] == small["full_sync"]["records"] and floor["cpu_s"] > 0
    assert small["full_sync"]["sandbox_cpu_s"] > 0  # clock ticks of 10 ms: the full sync's calls take several
    # Each phase is a process of its own: the size's peak is the largest phase's, with its unify
    # children's (the syncs unify in two processes on a machine of two cores or more).
    assert small["process_peak_rss_mb"] == round(
        max(
            small[p]["peak_rss_mb"] + small[p].get("children_peak_rss_mb", 0.0)
            for p in ("full_sync", "incremental_sync", "push")
        ),
        1,
    )
    if (os.cpu_count() or 1) >= 2:
        # The first sync (an empty store: size unknown) unifies in two processes; the small org's
        # next sync knows it holds fewer engagements than unify_split_from and stays in one.
        figures = small["full_sync"]
        assert figures["unify_processes"] == 2 and figures["children_peak_rss_mb"] > 0
        # The child's CPU (an interpreter's start-up and imports at least) is in the Accord CPU.
        assert 0.1 < figures["children_cpu_s"] < figures["cpu_s"]
        incremental = small["incremental_sync"]
        assert incremental["unify_processes"] == 1 and incremental["children_peak_rss_mb"] == 0.0
        assert incremental["children_cpu_s"] < 0.05
    # No unify children in a push (ctypes' find_library may run ldconfig: milliseconds).
    assert small["push"]["children_cpu_s"] < 0.05 and small["push"]["children_peak_rss_mb"] == 0.0


def test_figures_are_computed_from_the_measurements(small: dict[str, Any]) -> None:
    full = small["full_sync"]
    # Calls are the sandbox's counts per endpoint; the totals and ratios follow from them.
    assert full["calls"]["salesforce"].get("GET query", 0) + full["calls"]["salesforce"].get("GET query_all", 0) >= 6
    assert full["calls_total"]["all"] == sum(sum(c.values()) for c in full["calls"].values())
    assert full["calls_ratio"] == round(full["calls_total"]["all"] / full["min_calls_total"]["all"], 3)
    # The bound is calls x latency / concurrency per API, and the ratio is the measured wall over it.
    for api in APIS:
        expected = full["min_calls_total"][api] * LATENCY_MS / 1000 / small["concurrency"][api]
        assert full["bound_s_by_api"][api] == pytest.approx(expected, abs=1e-3)
    assert full["bound_ratio"] == round(full["wall_s"] / full["bound_s"], 3)
    assert full["records_per_cpu_s"] == round(full["records"] / full["cpu_s"], 1)
    # The records pulled are the org's: Jira issues alone are most of the small org.
    assert full["records"] >= small["org"]["jira"]["issues"]
    incremental = small["incremental_sync"]
    assert incremental["changes"] > 0 and incremental["records"] < full["records"]
    assert small["push"]["records"] > 0 and small["push"]["failed"] == 0


def test_results_files(small: dict[str, Any], tmp_path: Path) -> None:
    result = collect({"small": small}, LATENCY_MS, 3, "now")
    write(result, tmp_path)
    data = json.loads((tmp_path / "latest.json").read_text())
    assert data["full_sync_bound_ratio"] == small["full_sync"]["bound_ratio"]
    assert data["incremental_calls_ratio"] == small["incremental_sync"]["calls_ratio"]
    assert data["targets"]["peak_memory_flat_medium_to_large"]["met"] is None
    table = (tmp_path / "latest.md").read_text()
    assert "| wall / bound |" in table and "full_sync_within_1.3x_bound" in table


def test_report_only_recomputes_the_report_from_the_kept_figures(small: dict[str, Any], tmp_path: Path) -> None:
    write(collect({"small": small}, LATENCY_MS, 3, "then"), tmp_path)
    kept = json.loads((tmp_path / "latest.json").read_text())
    kept["targets"] = {}  # as if written by an older report
    (tmp_path / "latest.md").write_text("stale")
    (tmp_path / "latest.json").write_text(json.dumps(kept))
    assert main(["--report-only", "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "latest.json").read_text())
    assert again == collect({"small": small}, LATENCY_MS, 3, "then")
    assert "full_sync_within_1.3x_bound" in (tmp_path / "latest.md").read_text()


def _full(floor_wall_s: float) -> dict[str, Any]:
    return {
        "wall_s": 11.0,
        "bound_s": 6.4,
        "bound_ratio": 1.72,
        "bound_s_by_api": {"salesforce": 0.1, "jira": 6.4, "google_calendar": 0.8},
        "bound_with_calls_made_s": 6.6,
        "cpu_s": 8.5,
        "sandbox_cpu_s": 1.6,
        "pull_s_by_api": {"salesforce": 1.5, "jira": 9.6, "google_calendar": 4.0},
        "after_pull_s": 1.4,
        "unify_processes": 2,
        "floor": {"wall_s": floor_wall_s, "cpu_s": 7.9, "sandbox_cpu_s": 1.4, "after_pull_s": 1.35},
    }


@pytest.mark.parametrize(("floor_wall_s", "verdict"), [(7.0, "cannot go below 7.0 s"), (6.0, "fits within the bound")])
def test_the_full_sync_why_names_the_slowest_chain_and_what_the_floor_says(floor_wall_s: float, verdict: str) -> None:
    phase = {"calls_ratio": 1.0, "calls_total": {"all": 1}, "min_calls_total": {"all": 1}, "calls": {}}
    sizes = {"medium": {"full_sync": _full(floor_wall_s), "incremental_sync": phase, "push": phase}}
    why = targets(sizes, "medium")["full_sync_within_1.3x_bound"]["why"]
    assert "jira's, took 9.6 s, 1.5x its own bound of 6.4 s" in why
    assert "then 1.4 s after the pull (unify in 2 processes)" in why
    assert verdict in why
