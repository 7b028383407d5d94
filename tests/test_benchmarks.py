"""The benchmark code on the small org with a tiny latency: the structure, and figures that come from
measurements (the sandbox's request log, the clocks) rather than constants."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import pytest

from benchmarks import machine
from benchmarks import run as bench_run
from benchmarks.measure import APIS, FULL_RUNS, median_run, run_size
from benchmarks.report import markdown, targets
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
    # How many clients were unified while the Jira pull went on: some or none in the full sync (its
    # timing decides), none in the incremental one (only a full read says what it has pending).
    assert small["full_sync"]["clients_recomputed"] is None and small["full_sync"]["clients_during_pull"] >= 0
    assert small["incremental_sync"]["clients_during_pull"] == 0
    requests = small["full_sync"]["request_floor"]  # Jira's search requests alone, after the syncs
    assert requests["api"] == "jira" and requests["latency_ms"] == LATENCY_MS
    assert requests["one_chain_requests"] >= 1 and requests["chains_requests"] >= 1
    assert requests["one_chain_ms"] > LATENCY_MS and requests["chains_ms"] > LATENCY_MS
    assert requests["server_ms"] >= LATENCY_MS  # the sandbox's log: the latency it added, and its answer
    floor = small["full_sync"]["floor"]  # the same full sync at 0 ms, each run in a store of its own
    assert floor["records"] == small["full_sync"]["records"] and floor["cpu_s"] > 0
    assert len(floor["runs_wall_s"]) == FULL_RUNS and sorted(floor["runs_wall_s"])[1] == floor["wall_s"]
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
        assert figures["pulled_in_child"] == ["jira"]  # the child pulled Jira meanwhile
        # The child's CPU (an interpreter's start-up and imports at least) is in the Accord CPU.
        assert 0.1 < figures["children_cpu_s"] < figures["cpu_s"]
        incremental = small["incremental_sync"]
        assert incremental["unify_processes"] == 1 and incremental["children_peak_rss_mb"] == 0.0
        assert incremental["pulled_in_child"] == []
        assert incremental["children_cpu_s"] < 0.05
    # No unify children in a push (ctypes' find_library may run ldconfig: milliseconds).
    assert small["push"]["children_cpu_s"] < 0.05 and small["push"]["children_peak_rss_mb"] == 0.0


def test_the_full_sync_is_the_median_of_its_runs(small: dict[str, Any]) -> None:
    """The full sync runs FULL_RUNS times, each into an empty store: its figures are the run's with the
    median wall, and each run's are kept."""
    full = small["full_sync"]
    runs = full["runs"]
    assert len(runs) == FULL_RUNS == 3
    assert sorted(r["wall_s"] for r in runs)[1] == full["wall_s"]
    middle = next(r for r in runs if r["wall_s"] == full["wall_s"])
    assert (middle["bound_ratio"], middle["cpu_s"], middle["calls"]) == (
        full["bound_ratio"],
        full["cpu_s"],
        full["calls_total"]["all"],
    )
    for run in runs:  # each a whole full sync of the same org: every page read again
        assert run["calls"] >= full["min_calls_total"]["all"] and run["cpu_s"] > 0
        assert run["bound_ratio"] == round(run["wall_s"] / full["bound_s"], 3)
    table = markdown(collect({"small": small}, LATENCY_MS, 3, "now")).splitlines()
    label = "| wall / bound of each run (the figures: the median run's) | "
    row = next(line for line in table if line.startswith(label))
    shown = [float(cell.replace(",", "")) for cell in row.removeprefix(label).rstrip(" |").split(" / ")]
    assert shown == pytest.approx([r["bound_ratio"] for r in runs], rel=0.01)
    why = targets({"small": small}, "small")["full_sync_within_1.3x_bound"]["why"]
    assert why.startswith("the median of 3 runs (walls ")
    assert f"With no latency at all the same full sync takes {full['floor']['wall_s']} s (the median of 3 runs: " in why


@pytest.mark.parametrize(
    ("walls", "median"), [([3.0, 1.0, 2.0], 2.0), ([4.0, 1.0], 4.0), ([1.0, 2.0, 4.0, 3.0], 3.0), ([5.0], 5.0)]
)
def test_the_median_run_of_an_even_number_is_the_slower_middle_one(walls: list[float], median: float) -> None:
    runs = [{"wall_s": wall, "n": n} for n, wall in enumerate(walls)]
    assert median_run(runs)["wall_s"] == median


def test_the_bench_refuses_fewer_than_one_full_run() -> None:
    with pytest.raises(SystemExit):
        main(["--full-runs", "0", "--sizes", "small"])
    with pytest.raises(ValueError, match="full_runs must be at least 1"):
        run_size("small", latency_ms=LATENCY_MS, full_runs=0)


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


def _full(floor_wall_s: float, in_child: list[str] | None = None) -> dict[str, Any]:
    return {
        "pulled_in_child": in_child or [],
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


def _sizes(floor_wall_s: float) -> dict[str, dict[str, Any]]:
    """Results of one size, medium, with only what the targets and the report read."""
    phase = {"calls_ratio": 1.0, "calls_total": {"all": 1}, "min_calls_total": {"all": 1}, "calls": {}}
    return {"medium": {"full_sync": _full(floor_wall_s), "incremental_sync": phase, "push": phase}}


@pytest.mark.parametrize(("floor_wall_s", "verdict"), [(7.0, "cannot go below 7.0 s"), (6.0, "fits within the bound")])
def test_the_full_sync_why_names_the_slowest_chain_and_what_the_floor_says(floor_wall_s: float, verdict: str) -> None:
    why = targets(_sizes(floor_wall_s), "medium")["full_sync_within_1.3x_bound"]["why"]
    assert "jira's, took 9.6 s, 1.5x its own bound of 6.4 s" in why
    assert "then 1.4 s after the pull (unify in 2 processes)" in why
    assert verdict in why


@pytest.mark.parametrize(("chains_ms", "over"), [(61.7, True), (55.0, False)])
def test_the_full_sync_why_gives_what_a_request_of_the_slowest_pull_costs_alone(chains_ms: float, over: bool) -> None:
    """At 61.7 ms a request, Jira's 6.4 s bound (at 50 ms) takes 7.9 s, plus 1.4 s after the pull 9.3 s =
    1.45x: over 1.3x whatever else the sync does. At 55 ms with 1.2 s after the pull, 7.04 + 1.2 =
    8.24 s = 1.29x: within."""
    sizes = _sizes(7.0)
    full = sizes["medium"]["full_sync"]
    full["request_floor"] = {
        "api": "jira",
        "latency_ms": 50.0,
        "one_chain_ms": 58.0,
        "chains": 4,
        "chains_ms": chains_ms,
        "server_ms": 52.5,
    }
    if not over:
        full["after_pull_s"] = 1.2
    why = targets(sizes, "medium")["full_sync_within_1.3x_bound"]["why"]
    assert "58.0 ms each in one chain (1.16x the latency; the sandbox's own time 52.5 ms of it)" in why
    assert f"{chains_ms} ms in 4 chains on threads of one process" in why
    least = round(chains_ms / 50.0 * 6.4 + full["after_pull_s"], 2)
    assert f"takes {least} s, {round(least / 6.4, 3)}x the bound" in why
    assert ("over the target of 1.3x before any record is stored" in why) is over
    full["request_floor"]["api"] = "google_calendar"  # not the slowest pull's: not a floor of this wall
    assert "in one chain" not in targets(sizes, "medium")["full_sync_within_1.3x_bound"]["why"]


@pytest.mark.parametrize("in_child", [True, False])
def test_the_full_sync_why_says_whose_lock_the_slowest_pull_waited_for(in_child: bool) -> None:
    sizes = _sizes(7.0)
    sizes["medium"]["full_sync"] = _full(7.0, ["jira"] if in_child else [])
    why = targets(sizes, "medium")["full_sync_within_1.3x_bound"]["why"]
    assert ("its own threads' interpreter lock in the unify child that pulled it" in why) is in_child
    assert ("waits for the interpreter lock the other pulls hold" in why) is not in_child


MACHINE = {"reference_cpu_s": 1.234, "cores": 16, "cpu_model": "Test CPU @ 1.00GHz", "python": "3.11.7"}


@pytest.mark.parametrize(("floor_wall_s", "over"), [(8.0, False), (8.6, True)])  # 1.25x, 1.34x the 6.4 s bound
def test_the_full_sync_why_says_the_target_cannot_be_met_here_only_when_the_floor_is_over_it(
    floor_wall_s: float, over: bool
) -> None:
    why = targets(_sizes(floor_wall_s), "medium", MACHINE)["full_sync_within_1.3x_bound"]["why"]
    assert "the sandbox 1.6 s, on 16 cores" in why  # the cores of the machine that measured
    verdict = "cannot be met here by any change to the request pattern, only by less CPU work or more cores"
    assert (verdict in why) is over
    assert ("already takes 1.34x the bound (the target is 1.3x)" in why) is over
    assert ("this machine's reference: 1.234 s of CPU for the fixed workload of benchmarks/machine.py" in why) is over
    assert ("the wall cannot go below 8.0 s here, 1.25x the bound" in why) is not over
    if over:  # results kept from before the reference was measured
        unmeasured = targets(_sizes(floor_wall_s), "medium")["full_sync_within_1.3x_bound"]["why"]
        assert "only by less CPU work or more cores (this machine's reference: not measured)" in unmeasured


@pytest.mark.parametrize("measured", [True, False])
def test_the_report_gives_the_machine_reference_or_says_it_was_not_measured(measured: bool) -> None:
    result = collect(_sizes(6.0), 50.0, 1, "then", MACHINE if measured else None)
    assert result["machine"] == (MACHINE if measured else None)
    intro = markdown(result).split("## Targets")[0]
    line = next(line for line in intro.splitlines() if line.startswith("Machine reference:"))
    assert "CPU seconds of a fixed workload (`benchmarks/machine.py`): compare runs on different machines" in line
    if measured:
        assert line.startswith("Machine reference: 1.234 s, the CPU seconds")
        assert line.endswith("This machine: 16 cores, Test CPU @ 1.00GHz, Python 3.11.7.")
    else:
        assert line.startswith("Machine reference: not measured") and "1.234" not in line


@pytest.mark.parametrize("kept_machine", [True, False])
def test_report_only_keeps_the_machine_and_reads_results_from_before_it(kept_machine: bool, tmp_path: Path) -> None:
    kept = collect(_sizes(6.0), 50.0, 1, "then", MACHINE)
    if not kept_machine:
        del kept["machine"]  # a latest.json written before benchmarks/machine.py
    (tmp_path / "latest.json").write_text(json.dumps(kept))
    assert main(["--report-only", "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "latest.json").read_text())
    assert again["machine"] == (MACHINE if kept_machine else None)
    report = (tmp_path / "latest.md").read_text()
    assert ("Machine reference: 1.234 s" in report) is kept_machine
    assert ("Machine reference: not measured" in report) is not kept_machine


def test_the_machine_reference_times_the_same_work_each_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # The workload's result is pinned: the same in every process, and different for other work.
    assert machine.workload(2_000) == machine.workload(2_000) != machine.workload(2_001)
    figure = machine.reference_cpu_s(runs=1)  # runs the full workload and checks it against CHECKSUM
    assert isinstance(figure, float) and figure > 0
    monkeypatch.setattr(machine, "CHECKSUM", "0" * 64)
    with pytest.raises(RuntimeError, match="reference workload changed"):
        machine.reference_cpu_s(runs=1)


def test_the_machine_reference_is_the_best_of_its_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 3.0, 10.0, 12.0, 20.0, 24.0])  # runs of 3 s, 2 s and 4 s
    monkeypatch.setattr(machine.time, "process_time", lambda: next(clock))
    monkeypatch.setattr(machine, "workload", lambda: machine.CHECKSUM)
    assert machine.reference_cpu_s(runs=3) == 2.0


def test_the_machine_description(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(machine, "reference_cpu_s", lambda: 1.5)
    described = machine.describe()
    assert described["reference_cpu_s"] == 1.5 and described["cores"] == os.cpu_count()
    assert described["python"] == platform.python_version()
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: Test\nmodel name\t: Test CPU @ 1.00GHz\n\nprocessor\t: 1\n")
    assert machine.cpu_model(cpuinfo) == "Test CPU @ 1.00GHz"
    cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")  # some ARM machines name no model
    assert machine.cpu_model(cpuinfo) is None
    assert machine.cpu_model(tmp_path / "absent") is None


def test_the_bench_measures_the_machine_once_before_the_sizes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events: list[str] = []

    def describe() -> dict[str, Any]:
        events.append("machine")
        return MACHINE

    def run_in_child(size: str, latency_ms: float, seed: int, full_runs: int) -> dict[str, Any]:
        events.append(f"{size} x{full_runs}")
        return _sizes(6.0)["medium"]

    monkeypatch.setattr(bench_run, "describe", describe)
    monkeypatch.setattr(bench_run, "run_in_child", run_in_child)
    assert main(["--sizes", "small,medium", "--out", str(tmp_path)]) == 0
    assert events == ["machine", "small x3", "medium x3"]
    assert json.loads((tmp_path / "latest.json").read_text())["machine"] == MACHINE
    assert "Machine reference: 1.234 s" in capsys.readouterr().out
    events.clear()
    assert main(["--sizes", "medium", "--full-runs", "1", "--out", str(tmp_path)]) == 0
    assert events == ["machine", "medium x1"]


@pytest.mark.parametrize("floor", [None, {"wall_s": 7.0, "cpu_s": 7.9, "sandbox_cpu_s": 1.4, "after_pull_s": 1.35}])
def test_at_no_latency_there_is_no_bound_and_no_second_floor_run(floor: dict[str, float] | None) -> None:
    """``make bench`` with ``--latency-ms 0``: the bound is 0, so no ratio and no floor (the measured run
    is its own floor; results that have one anyway are not divided by the bound); the report still
    says what was measured instead of dividing by zero."""
    sizes = _sizes(7.0)
    full = sizes["medium"]["full_sync"]
    full.update(bound_s=0.0, bound_ratio=None, floor=floor, bound_s_by_api=dict.fromkeys(full["bound_s_by_api"], 0.0))
    verdict = targets(sizes, "medium")["full_sync_within_1.3x_bound"]
    assert verdict["value"] is None and not verdict["met"]
    assert "wall 11.0 s vs bound 0.0 s" in verdict["why"] and "no latency at all" not in verdict["why"]
