"""`make demo`: the main job end to end on the embedded defaults.

Starts the sandbox (a generated org behind the three emulators), runs a full sync through the
Prefect flow (Prefect's ephemeral API), moves the org on, runs an incremental sync, and prints the
engagements. Nothing outside this machine is touched; the store is a fresh SQLite file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from flows.report import engagement_table


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run_demo(size: str = "small", seed: int = 1, workdir: Path | None = None) -> int:
    from sandbox.app import Sandbox, SandboxOptions

    base = workdir or Path.cwd() / ".accord"
    base.mkdir(parents=True, exist_ok=True)
    database = base / "demo.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    _say(f"starting the sandbox ({size} org, seed {seed})")
    with Sandbox(SandboxOptions(size=size, seed=seed)) as sandbox:
        for api, counts in sandbox.counts().items():
            print(f"   {api}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()) if v))
        os.environ["ACCORD_SANDBOX_CONTROL"] = str(sandbox.info()["control"])
        os.environ["ACCORD_DATABASE_URL"] = f"sqlite:///{database}"
        os.environ.setdefault(
            "ACCORD_MAPPING", str(Path(__file__).resolve().parent.parent / "mappings" / "default.yaml")
        )
        from flows.sync import sync_flow

        _say("full sync (Prefect flow accord-sync)")
        first = sync_flow(full=True)
        _print_counts(first)
        calls_before = sandbox.log.last_seq

        _say("moving the org on: creates, updates, deletes, ties on one timestamp, late commits")
        changes = sandbox.mutate(count=8, seed=seed)
        by_api: dict[str, int] = {}
        for change in changes:
            by_api[change.api] = by_api.get(change.api, 0) + 1
        print("   " + ", ".join(f"{api}: {n} changes" for api, n in sorted(by_api.items())))

        _say("incremental sync")
        second = sync_flow(full=False)
        _print_counts(second)
        summary = sandbox.log.summary(since_seq=calls_before)
        print(
            "   API calls of the incremental sync: "
            + ", ".join(f"{api}={sum(e.values())}" for api, e in summary.items())
        )

        from store import Store

        store = Store(f"sqlite:///{database}")
        rows = [e["summary"] for e in store.load_engagements()]
        store.dispose()
        _say(f"engagements ({len(rows)})")
        print(engagement_table(rows))

        from flows.push import push_flow

        _say("push plan (accord plan): what would be written, and why")
        plan = push_flow(dry_run=True)
        _print_plan_summary(plan)
        before = sandbox.counts()
        since = sandbox.log.last_seq
        _say("push (accord push): applying the plan through the outbox")
        pushed = push_flow(dry_run=False)
        for target, t in pushed["targets"].items():
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(t["outcomes"].items())) or "nothing to do"
            done = f"{t['delivered']} delivered, {t['failed']} failed in {t['batches']} batches"
            print(f"   {target}: {done} ({outcomes})")
        after = sandbox.counts()
        _say("read back from the sandbox")
        print(f"   Salesforce Tasks: {before['salesforce']['Task']} -> {after['salesforce']['Task']}")
        print(
            f"   Jira comments: {before['jira']['comments']} -> {after['jira']['comments']}, "
            f"entity properties: {before['jira']['properties']} -> {after['jira']['properties']}"
        )
        print(f"   calendar events: {before['google_calendar']['events']} -> {after['google_calendar']['events']}")
        calls = sandbox.log.summary(since_seq=since)
        print("   write calls: " + ", ".join(f"{api}={sum(e.values())}" for api, e in calls.items()))
        _say("push again: nothing new to write")
        again = push_flow(dry_run=False)
        print(f"   planned {again['planned']} writes, queued {again['queued']}")
        if again["queued"]:
            print("   a second push queued writes: not idempotent", file=sys.stderr)
            return 1
        errors = sandbox.emulator_errors()
        if errors:
            print(f"sandbox emulator errors: {len(errors)}", file=sys.stderr)
            return 1
    return 0


def _print_plan_summary(plan: dict[str, object]) -> None:
    actions = plan["actions"]
    skipped = plan["left_alone"]
    assert isinstance(actions, list) and isinstance(skipped, list)
    kinds: dict[str, int] = {}
    for a in actions:
        kinds[f"{a['target']} {a['kind']}"] = kinds.get(f"{a['target']} {a['kind']}", 0) + 1
    for kind, n in sorted(kinds.items()):
        print(f"   {n:>4} x {kind}")
    shown: set[str] = set()
    for a in actions:  # one example of each kind of write
        if a["kind"] not in shown:
            shown.add(a["kind"])
            print(f"   e.g. {a['action']} {a['kind']} {a['key']}: {a['reason'][:110]}")
    print(f"   left alone: {len(skipped)}")


def _print_counts(result: dict[str, object]) -> None:
    sources = result["sources"]
    assert isinstance(sources, dict)
    for source, data in sources.items():
        streams = data["streams"]
        pulled = sum(s["pulled"] for s in streams.values())
        changed = sum(s["inserted"] + s["updated"] for s in streams.values())
        deleted = sum(s["deleted"] + s["reconciled_deleted"] for s in streams.values())
        pages = sum(s["pages"] for s in streams.values())
        print(f"   {source}: {pulled} records in {pages} pages, {changed} new or changed, {deleted} deleted")
    print(f"   engagements by health: {result['health']}")
