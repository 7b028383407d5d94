"""``python -m benchmarks.run [--sizes small,medium[,large]] [--latency-ms 50]`` (``make bench``).

Each size runs in a fresh child process (so its peak RSS is its own) against a sandbox in a
process of its own; results go to ``benchmarks/results/latest.json`` and ``latest.md``. Before the
sizes, while nothing else of the bench runs, the parent measures the machine's speed
(``benchmarks/machine.py``), kept under ``machine``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.child import run_json
from benchmarks.machine import describe
from benchmarks.measure import FULL_RUNS, run_size
from benchmarks.report import growth, markdown, targets

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = ("small", "medium", "large")


def run_in_child(size: str, latency_ms: float, seed: int, full_runs: int = FULL_RUNS) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.run", "--worker", size, "--latency-ms", str(latency_ms)]
    return run_json([*command, "--seed", str(seed), "--full-runs", str(full_runs)], f"benchmark of {size}")


def collect(
    sizes: dict[str, dict[str, Any]],
    latency_ms: float,
    seed: int,
    started_at: str,
    machine: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Per-size figures, growth and targets; the headline keys come from medium (else the largest size).
    ``machine`` is ``benchmarks.machine.describe()``'s, None where not measured (results kept from before)."""
    primary = "medium" if "medium" in sizes else list(sizes)[-1]
    main = sizes[primary]
    return {
        "started_at": started_at,
        "latency_ms": latency_ms,
        "seed": seed,
        "primary_size": primary,
        "machine": machine,
        "full_sync_bound_ratio": main["full_sync"]["bound_ratio"],
        "incremental_calls_ratio": main["incremental_sync"]["calls_ratio"],
        "push_calls_ratio": main["push"]["calls_ratio"],
        "targets": targets(sizes, primary, machine),
        "growth": growth(sizes),
        "sizes": sizes,
    }


def write(result: dict[str, Any], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "latest.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (directory / "latest.md").write_text(markdown(result), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--sizes", default="small,medium", help="comma-separated: small, medium, large")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="latency the sandbox adds to every request")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--full-runs",
        type=int,
        default=FULL_RUNS,
        help="measure the full sync this many times per size (its figures: the run with the median wall)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest.json and latest.md go")
    parser.add_argument("--worker", choices=SIZES, help=argparse.SUPPRESS)  # one size, JSON on stdout
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: recompute the targets, growth and markdown from --out's latest.json "
        "(after a change to the report's wording)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.report_only:
        kept = json.loads((args.out / "latest.json").read_text(encoding="utf-8"))
        result = collect(kept["sizes"], kept["latency_ms"], kept["seed"], kept["started_at"], kept.get("machine"))
        write(result, args.out)
        print(markdown(result))
        return 0
    if args.worker:
        print(json.dumps(run_size(args.worker, latency_ms=args.latency_ms, seed=args.seed, full_runs=args.full_runs)))
        return 0
    names = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in names if s not in SIZES]
    if unknown or not names:
        parser.error(f"--sizes: expected some of {', '.join(SIZES)}, got {args.sizes!r}")
    if args.full_runs < 1:
        parser.error(f"--full-runs: expected 1 or more, got {args.full_runs}")
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    print("bench: machine reference ...", file=sys.stderr, flush=True)
    machine = describe()  # in this process, before any size's child or sandbox runs
    print(f"bench: machine reference {machine['reference_cpu_s']} s of CPU", file=sys.stderr, flush=True)
    sizes: dict[str, dict[str, Any]] = {}
    for size in sorted(names, key=SIZES.index):
        print(f"bench: {size} at {args.latency_ms:g} ms ...", file=sys.stderr, flush=True)
        sizes[size] = run_in_child(size, args.latency_ms, args.seed, args.full_runs)
        full = sizes[size]["full_sync"]
        print(f"bench: {size}: full sync {full['wall_s']} s (bound {full['bound_s']} s)", file=sys.stderr, flush=True)
    result = collect(sizes, args.latency_ms, args.seed, started_at, machine)
    write(result, args.out)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
