"""The ``accord`` command line.

Every command has ``--help``. Commands print results on stdout (tables for people, ``--json`` for
scripts) and problems on stderr with exit status 2 for bad input and 1 for a failed operation.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

API_CHOICES = ("salesforce", "jira", "google_calendar")
CONTROL_ENV = "ACCORD_SANDBOX_CONTROL"


class CliError(Exception):
    """A problem the user can fix; printed without a traceback."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- sandbox ------------------------------------------------------------------------------------------
def _sandbox_up(args: argparse.Namespace) -> int:
    from sandbox.app import Sandbox, SandboxOptions

    ports: dict[str, int] = {}
    if args.port_base:
        ports = {name: args.port_base + i for i, name in enumerate((*API_CHOICES, "control"))}
    started = time.perf_counter()
    sandbox = Sandbox(SandboxOptions(size=args.size, seed=args.seed, tls=args.tls, ports=ports))
    if args.latency_ms:
        for app in sandbox.apps.values():
            app.faults.configure(latency_ms=args.latency_ms)
    stop = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with sandbox:
        print(json.dumps(sandbox.info()), flush=True)
        counts = "; ".join(
            f"{api}: " + ", ".join(f"{k}={v}" for k, v in sorted(c.items()) if v) for api, c in sandbox.counts().items()
        )
        print(
            f"sandbox up: size={args.size} seed={args.seed} in {time.perf_counter() - started:.1f}s "
            f"({counts}); Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        stop.wait()
    return 0


def _control(args: argparse.Namespace) -> Any:
    from sandbox.client import SandboxControl

    url = args.control or os.environ.get(CONTROL_ENV)
    if not url:
        raise CliError(
            f"where is the sandbox? pass --control URL or set {CONTROL_ENV} "
            "(the `control` value printed by `accord sandbox up`)"
        )
    return SandboxControl(url)


def _sandbox_requests(args: argparse.Namespace) -> int:
    control = _control(args)
    if args.all:
        data = control.requests(api=args.api, since=args.since)
        for record in data["requests"]:
            print(json.dumps(record))
        return 0
    summary = control.summary(since=args.since)
    if args.json:
        print(json.dumps(summary))
        return 0
    if not summary["summary"]:
        print("no requests recorded yet")
    for api, endpoints in summary["summary"].items():
        if args.api and api != args.api:
            continue
        print(f"{api}: {sum(endpoints.values())} requests")
        for endpoint, n in endpoints.items():
            print(f"  {n:>8}  {endpoint}")
    return 0


def _sandbox_faults(args: argparse.Namespace) -> int:
    control = _control(args)
    if args.reset:
        control.reset_faults()
    settings = {
        key: value
        for key, value in {
            "latency_ms": args.latency_ms,
            "jitter_ms": args.jitter_ms,
            "rate_429": args.rate_429,
            "rate_5xx": args.rate_5xx,
            "rate_drop": args.rate_drop,
            "rate_drop_after": args.rate_drop_after,
            "retry_after_s": args.retry_after,
            "seed": args.seed,
        }.items()
        if value is not None
    }
    if settings:
        apis = [args.api] if args.api else list(API_CHOICES)
        for api in apis:
            control.set_faults(api, **settings)
    print(json.dumps(control.faults(), indent=2))
    return 0


def _sandbox_expire(args: argparse.Namespace) -> int:
    _control(args).expire(args.api)
    print(f"{args.api}: every session/token issued so far is now expired")
    return 0


def _sandbox_mutate(args: argparse.Namespace) -> int:
    changes = _control(args).mutate(args.count, args.seed, args.late_share)
    if args.json:
        print(json.dumps(changes))
    else:
        for change in changes:
            late = " (late)" if change["late"] else ""
            print(f"{change['api']:<16} {change['kind']:<11} {change['object']:<24} {change['id']}{late}")
        print(f"{len(changes)} changes", file=sys.stderr)
    return 0


# -- sync, status, mappings ------------------------------------------------------------------------------
def _settings(args: argparse.Namespace) -> Any:
    from accord.settings import load_settings

    settings = load_settings()
    updates: dict[str, Any] = {}
    if getattr(args, "database_url", None):
        updates["database_url"] = args.database_url
    if getattr(args, "mapping", None):
        updates["mapping"] = args.mapping
    return settings.model_copy(update=updates) if updates else settings


def _load_mapping(path: Any) -> Any:
    from engagement.mapping import MappingError, load_mapping

    try:
        return load_mapping(path)
    except MappingError as exc:
        raise CliError(f"the mapping is not valid:\n{exc}") from None


def _sync(args: argparse.Namespace) -> int:
    from flows.sync import sync_flow

    settings = _settings(args)
    _load_mapping(settings.mapping)  # fail fast, before Prefect starts
    # The flow reads its settings from the environment, as a deployment's worker does.
    os.environ["ACCORD_DATABASE_URL"] = settings.database_url
    os.environ["ACCORD_MAPPING"] = str(settings.mapping)
    result = sync_flow(full=args.full)
    if args.json:
        print(json.dumps(result))
    else:
        _print_sync_summary(result)
    return 0


def _print_sync_summary(result: dict[str, Any]) -> None:
    kind = "full" if result["full"] else "incremental"
    print(f"sync ({kind}) finished in {result['seconds']:.1f}s")
    for source, data in result["sources"].items():
        for stream, s in data["streams"].items():
            print(
                f"  {source}.{stream}: {s['pulled']} pulled in {s['pages']} pages, "
                f"{s['inserted']} new, {s['updated']} changed, "
                f"{s['deleted'] + s['reconciled_deleted']} deleted"
            )
    print(f"  engagements: {result['engagements']} {result['health']}")
    unknown, ambiguous = result["unknown_stakeholders"], result["ambiguous_meetings"]
    print(f"  unknown stakeholders: {unknown}, ambiguous meetings: {ambiguous}")


def _status(args: argparse.Namespace) -> int:
    from flows.report import engagement_table
    from store import Store

    settings = _settings(args)
    store = Store(settings.database_url)
    store.create_all()
    rows = [e["summary"] for e in store.load_engagements()]
    failed = store.outbox.items(state="failed")
    store.dispose()
    failures: dict[str, list[dict[str, Any]]] = {}
    for item in failed:
        failures.setdefault(item.engagement_id, []).append(
            {
                "target": item.target,
                "kind": item.kind,
                "key": item.key,
                "error": item.last_error,
                "attempts": item.attempts,
            }
        )
    for row in rows:
        row["failed_writes"] = failures.get(row["id"], [])
    if args.health:
        rows = [r for r in rows if r["health"] in args.health]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    if not rows:
        print("no engagements stored yet: run `accord sync` first", file=sys.stderr)
        return 0
    print(engagement_table(rows))
    if failed:
        print(f"\nfailed writes, retried by the next push: {len(failed)}")
        for item in failed[:50]:
            print(f"  {item.target:<16} {item.kind:<20} {item.key:<48} {item.last_error} (attempts {item.attempts})")
    return 0


def _mappings_validate(args: argparse.Namespace) -> int:
    from engagement.mapping import MappingError, load_mapping

    failed = False
    for path in args.files:
        try:
            mapping = load_mapping(path)
        except MappingError as exc:
            failed = True
            print(str(exc), file=sys.stderr)
            continue
        print(f"{path}: ok (version {mapping.version}, {mapping.name})")
    return 2 if failed else 0


def _mappings_schema(args: argparse.Namespace) -> int:
    from engagement.mapping import mapping_json_schema

    text = json.dumps(mapping_json_schema(), indent=2)
    if args.output:
        from pathlib import Path

        Path(args.output).write_text(text + "\n", encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(text)
    return 0


def _plan(args: argparse.Namespace) -> int:
    """Stream the plan: actions and skips are spooled to temporary files as the groups are planned,
    then printed, so a large org's plan is never held in memory."""
    import tempfile
    from collections import Counter
    from datetime import UTC, datetime
    from pathlib import Path

    from flows.push_engine import action_json, walk_plan
    from store import Store

    settings = _settings(args)
    mapping = _load_mapping(settings.mapping)
    store = Store(settings.database_url)
    store.create_all()
    by_target: Counter[str] = Counter()
    left_alone = 0
    with (
        tempfile.TemporaryFile("w+", encoding="utf-8") as actions,
        tempfile.TemporaryFile("w+", encoding="utf-8") as skipped,
    ):
        try:
            for group in walk_plan(store, mapping, Path(settings.mapping), datetime.now(UTC)):
                planned = [action_json(i) for i in group.items] + [action_json(i, retry=True) for i in group.retries]
                for action in planned:
                    by_target[action["target"]] += 1
                    actions.write(json.dumps(action, ensure_ascii=False) + "\n")
                for skip in group.skipped:
                    left_alone += 1
                    skipped.write(json.dumps(skip.to_json(), ensure_ascii=False) + "\n")
        finally:
            store.dispose()
        if args.json:
            _print_json_lists({"actions": actions, "left_alone": skipped})
            return 0
        if not by_target:
            print("nothing to write")
        for target, count in sorted(by_target.items()):
            print(f"{target}: {count} writes")
            for a in _lines(actions):
                if a["target"] == target:
                    print(f"  {a['action']:<7} {a['kind']:<20} {a['key']:<48} {a['reason']}")
        if left_alone:
            print(f"left alone: {left_alone}")
            for s in _lines(skipped):
                print(f"  {s['engagement']:<20} {s['what']:<32} {s['why']}")
    return 0


def _lines(spool: Any) -> Iterator[dict[str, Any]]:
    spool.seek(0)
    for line in spool:
        yield json.loads(line)


def _print_json_lists(spools: dict[str, Any]) -> None:
    """One JSON object whose members are lists, each streamed from a spool of JSON lines."""
    out = sys.stdout
    out.write("{")
    for n, (name, spool) in enumerate(spools.items()):
        out.write(("" if n == 0 else ", ") + json.dumps(name) + ": [")
        spool.seek(0)
        for i, line in enumerate(spool):
            out.write(("" if i == 0 else ", ") + line.rstrip("\n"))
        out.write("]")
    out.write("}\n")


def _push(args: argparse.Namespace) -> int:
    from flows.push import push_flow

    settings = _settings(args)
    _load_mapping(settings.mapping)
    os.environ["ACCORD_DATABASE_URL"] = settings.database_url
    os.environ["ACCORD_MAPPING"] = str(settings.mapping)
    result = push_flow(dry_run=False)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"planned {result['planned']} writes, queued {result['queued']}, left alone {result['left_alone']}")
    for target, t in result["targets"].items():
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(t["outcomes"].items())) or "nothing to do"
        print(f"  {target}: {t['delivered']} delivered, {t['failed']} failed in {t['batches']} batches ({outcomes})")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from accord.demo import run_demo

    return run_demo(size=args.size, seed=args.seed)


# -- parser ----------------------------------------------------------------------------------------------
def store_options(parser: argparse.ArgumentParser, *, mapping: bool = True) -> None:
    if mapping:
        parser.add_argument("--mapping", help="mapping YAML (default $ACCORD_MAPPING or mappings/default.yaml)")
    parser.add_argument("--database-url", help="store URL (default $ACCORD_DATABASE_URL or .accord/accord.sqlite)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="accord",
        description="Accord: client engagements unified from Salesforce, Jira and Google Calendar.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sandbox = commands.add_parser(
        "sandbox",
        help="local emulators of Salesforce, Jira and Google Calendar",
        description=(
            "Local HTTP emulators of the three SaaS APIs with a generated org, request log, faults and mutations."
        ),
    )
    sandbox_commands = sandbox.add_subparsers(dest="sandbox_command", required=True, metavar="SUBCOMMAND")

    up = sandbox_commands.add_parser(
        "up",
        help="start the emulators and serve until interrupted",
        description=("Start the emulators; print one JSON line with URLs and credentials, then serve until Ctrl-C."),
    )
    up.add_argument("--size", choices=("small", "medium", "large"), default="small", help="org size (default small)")
    up.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    up.add_argument("--tls", action="store_true", help="serve https with a self-signed certificate (path in ca_cert)")
    up.add_argument("--latency-ms", type=float, default=0.0, help="latency added to every request")
    up.add_argument(
        "--port-base",
        type=int,
        default=0,
        help="fixed ports: salesforce, jira, google_calendar, control from here",
    )
    up.set_defaults(func=_sandbox_up)

    def control_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--control", help=f"control API URL printed by `sandbox up` (default ${CONTROL_ENV})")

    requests_p = sandbox_commands.add_parser(
        "requests", help="request counts per API and endpoint", description="Requests the emulators answered."
    )
    control_arg(requests_p)
    requests_p.add_argument("--api", choices=API_CHOICES, help="only this API")
    requests_p.add_argument("--since", type=int, default=0, help="only requests after this sequence number")
    requests_p.add_argument("--all", action="store_true", help="every request as a JSON line instead of counts")
    requests_p.add_argument("--json", action="store_true", help="counts as JSON")
    requests_p.set_defaults(func=_sandbox_requests)

    faults = sandbox_commands.add_parser(
        "faults",
        help="show or set injected faults",
        description="Show the fault settings, or change them for one API (--api) or all.",
    )
    control_arg(faults)
    faults.add_argument("--api", choices=API_CHOICES, help="only this API (default: all)")
    faults.add_argument("--latency-ms", type=float, help="latency added to every request")
    faults.add_argument("--jitter-ms", type=float, help="extra random latency up to this")
    faults.add_argument("--rate-429", type=float, help="share of requests rate-limited (0..1)")
    faults.add_argument("--rate-5xx", type=float, help="share of requests answered with 5xx (0..1)")
    faults.add_argument("--rate-drop", type=float, help="share of connections dropped (0..1)")
    faults.add_argument(
        "--rate-drop-after",
        type=float,
        help="share of writes applied, then their connection closed without an answer (0..1)",
    )
    faults.add_argument("--retry-after", type=int, help="Retry-After seconds sent with 429s")
    faults.add_argument("--seed", type=int, help="seed of the fault decisions")
    faults.add_argument("--reset", action="store_true", help="clear all faults first")
    faults.set_defaults(func=_sandbox_faults)

    expire = sandbox_commands.add_parser(
        "expire",
        help="expire sessions/tokens of one API",
        description="Expire every session or token issued so far.",
    )
    control_arg(expire)
    expire.add_argument("--api", choices=API_CHOICES, required=True)
    expire.set_defaults(func=_sandbox_expire)

    mutate = sandbox_commands.add_parser(
        "mutate",
        help="move the org on: creates, updates, deletes",
        description="One round of random changes per API (ties on one timestamp, some visible late).",
    )
    control_arg(mutate)
    mutate.add_argument("--count", type=int, default=10, help="changes per API (default 10)")
    mutate.add_argument("--seed", type=int, default=0, help="seed of the round (default 0)")
    mutate.add_argument("--late-share", type=float, default=0.1, help="share visible only next round (default 0.1)")
    mutate.add_argument("--json", action="store_true", help="changes as JSON")
    mutate.set_defaults(func=_sandbox_mutate)

    sync = commands.add_parser(
        "sync",
        help="pull the three sources and update the engagements (one Prefect flow run)",
        description="Run the sync flow once: incremental from the stored cursors, or --full.",
    )
    sync.add_argument("--full", action="store_true", help="re-read everything instead of continuing")
    sync.add_argument("--json", action="store_true", help="print the run's report as JSON")
    store_options(sync)
    sync.set_defaults(func=_sync)

    status = commands.add_parser(
        "status",
        help="the engagements: health, stage, progress, meetings, reasons",
        description="Print the stored engagements, worst health first.",
    )
    status.add_argument("--json", action="store_true", help="a JSON list of engagement objects")
    status.add_argument("--health", action="append", choices=("green", "amber", "red"), help="only these")
    store_options(status, mapping=False)
    status.set_defaults(func=_status)

    plan = commands.add_parser(
        "plan",
        help="what a push would write, per target, and why; writes nothing",
        description="Plan status updates and reminders from the stored engagements. Writes nothing.",
    )
    plan.add_argument("--json", action="store_true", help='print {"actions": [...], "left_alone": [...]}')
    store_options(plan)
    plan.set_defaults(func=_plan)

    push = commands.add_parser(
        "push",
        help="apply the plan: status updates and reminders, exactly once",
        description="Plan, queue in the outbox, and apply (one Prefect flow run). Failed writes are retried next run.",
    )
    push.add_argument("--json", action="store_true", help="print the run's report as JSON")
    store_options(push)
    push.set_defaults(func=_push)

    mappings = commands.add_parser(
        "mappings", help="validate mappings, write their JSON Schema", description="Work with mapping files."
    )
    mapping_commands = mappings.add_subparsers(dest="mappings_command", required=True, metavar="SUBCOMMAND")
    validate = mapping_commands.add_parser(
        "validate",
        help="check mapping files; every error with file, line and what was expected",
        description="Validate mapping files. Exit status 2 when any is invalid.",
    )
    validate.add_argument("files", nargs="*", default=["mappings/default.yaml"], metavar="FILE")
    validate.set_defaults(func=_mappings_validate)
    schema = mapping_commands.add_parser(
        "schema",
        help="write the mapping JSON Schema",
        description="Print or write the JSON Schema of mappings.",
    )
    schema.add_argument("-o", "--output", help="write to this file instead of stdout")
    schema.set_defaults(func=_mappings_schema)

    demo = commands.add_parser(
        "demo",
        help="sandbox, full sync, mutations, incremental sync, engagements",
        description="The whole job on the embedded defaults: sandbox APIs, SQLite, Prefect's ephemeral API.",
    )
    demo.add_argument("--size", choices=("small", "medium"), default="small")
    demo.add_argument("--seed", type=int, default=1)
    demo.set_defaults(func=_demo)
    return parser


# Prefect's ephemeral API (no PREFECT_API_URL) gets 20 s to start by default; a loaded machine needs
# more, and a sync that gives up there has done nothing. Read when Prefect is first imported (lazily,
# by the commands that run flows), so setting it here takes effect; an explicit value wins.
EPHEMERAL_STARTUP_S = "120"


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_S)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"accord: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        from sandbox.client import SandboxControlError

        if isinstance(exc, SandboxControlError):
            print(f"accord: {exc}", file=sys.stderr)
            return 1
        raise
