"""The real `accord sync` and `accord push` (Prefect flows on the ephemeral API) killed with SIGKILL
mid-run, then re-run: the store equals a fault-free full sync's, every write lands exactly once, and
nothing the commands print (Prefect's logs included) holds a credential. Each process start costs
~10 s of Prefect start-up, so this is one trial of each; the seeded trials are in test_kill.py.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from engagement.mapping import load_mapping
from engagement.unify import Snapshot, unify
from flows.push_engine import plan_push
from sandbox.app import Sandbox, SandboxOptions
from store import Store
from tests.chaos.figures import FIGURES, leak_hits, request_log_text, store_texts
from tests.chaos.support import expected_after_pushes, tally_writes
from tests.flows.test_push import expected_keys, target_counts
from tests.flows.test_sync_engine import fresh_full, live

MAPPING_PATH = Path("mappings/default.yaml")
ROOT = Path(__file__).resolve().parents[2]
LATENCY_MS = 20.0


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children first."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in parents.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def exited_on_their_own(pids: list[int], within: float) -> bool:
    """Waits until none of ``pids`` runs any more, at most ``within`` seconds; whether they all exited.
    Each exit is an event: a pidfd becomes readable when its process ends (Linux 5.3+)."""
    deadline = time.monotonic() + within
    for pid in pids:
        try:
            handle = os.pidfd_open(pid)
        except ProcessLookupError:
            continue  # already gone
        try:
            ready, _, _ = select.select([handle], [], [], max(0.0, deadline - time.monotonic()))
        finally:
            os.close(handle)
        if not ready:
            return False
    return True


def reap_orphans(pids: list[int]) -> int:
    """Kills what a SIGKILLed run left running (Prefect's ephemeral API server); returns how many."""
    left = [p for p in pids if Path(f"/proc/{p}").exists()]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert exited_on_their_own(left, within=10), left
    return len(left)


def test_kill_9_of_accord_sync_and_push_then_a_rerun(tmp_path: Path) -> None:
    mapping = load_mapping(MAPPING_PATH)
    rng = random.Random(6100)
    url = f"sqlite:///{tmp_path / 'accord.sqlite'}"
    outputs: dict[str, str] = {}
    with Sandbox(SandboxOptions(size="small", seed=61)) as sandbox:
        for app in sandbox.apps.values():
            app.faults.configure(latency_ms=LATENCY_MS)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCORD_", "PREFECT_"))}
        env |= {
            "ACCORD_SANDBOX_CONTROL": str(sandbox.info()["control"]),
            "ACCORD_DATABASE_URL": url,
            # Prefect's ephemeral server sends a telemetry heartbeat that, under this test's load,
            # loses a race for its own SQLite file and logs a traceback; it is not Accord's output.
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }

        def accord(*args: str, kill_after: int | None = None) -> int:
            n = len(outputs)
            out_path, err_path = tmp_path / f"{n}.out", tmp_path / f"{n}.err"
            # Each run gets its own Prefect home: Prefect's ephemeral API state is disposable (Accord's
            # state is in ACCORD_DATABASE_URL), and a killed run's orphaned server may still hold the
            # old one's SQLite lock, which makes Prefect's own telemetry print tracebacks.
            env["PREFECT_HOME"] = str(tmp_path / f"prefect-{n}")
            since = sandbox.log.last_seq
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                proc = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
                    [sys.executable, "-m", "accord", *args], env=env, cwd=ROOT, stdout=out, stderr=err
                )
            deadline = time.monotonic() + 300
            while kill_after is not None and proc.poll() is None and time.monotonic() < deadline:
                if sandbox.log.last_seq - since >= kill_after:
                    time.sleep(rng.uniform(0.0, LATENCY_MS / 1000.0))
                    below = descendants(proc.pid)
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=60)
                    exited_on_their_own(below, within=0.5)  # orphans that would exit, do so first
                    # What is left is Prefect's ephemeral API server (uvicorn), which Prefect starts as a
                    # process of its own and which outlives a killed run; the unify children die with it.
                    FIGURES.add("prefect_servers_left_by_kill", reap_orphans(below))
                    break
                time.sleep(0.001)
            code = proc.wait(timeout=300)
            outputs[f"accord {args} stdout"] = out_path.read_text(encoding="utf-8", errors="replace")
            outputs[f"accord {args} stderr"] = err_path.read_text(encoding="utf-8", errors="replace")
            if kill_after is not None:
                FIGURES.add("kill_trials")
                FIGURES.add("kills" if code == -signal.SIGKILL else "kills_missed_finished_first")
            else:
                assert code == 0, outputs[f"accord {args} stderr"][-3000:]
                assert "Traceback" not in outputs[f"accord {args} stderr"]
            return code

        assert accord("sync", "--full", kill_after=rng.randint(1, 25)) == -signal.SIGKILL
        assert accord("sync") == 0
        store = Store(url)
        truth = fresh_full(sandbox, mapping, tmp_path)
        assert live(store) == live(truth)
        now = datetime.now(UTC)
        assert unify(Snapshot.from_records(store.iter_records()), mapping, now) == unify(
            Snapshot.from_records(truth.iter_records()), mapping, now
        )
        FIGURES.add("records_compared", len(live(truth)))
        truth.dispose()

        planned_on = datetime.now(UTC).date()
        planned = expected_keys(plan_push(store, mapping, MAPPING_PATH).items)
        assert accord("push", kill_after=rng.randint(2, 30)) == -signal.SIGKILL
        assert accord("push") == 0
        expected = expected_after_pushes(store, planned, planned_on)
        assert tally_writes(sandbox, mapping, expected) == (0, 0)
        assert {t: set(keys) for t, keys in target_counts(sandbox, mapping).items()} == expected
        assert {state for t in store.outbox.counts().values() for state in t} <= {"delivered", "superseded"}
        texts = {**outputs, **store_texts(store), "request log": request_log_text(sandbox)}
        store.dispose()
        assert leak_hits(sandbox, texts) == []
        assert sandbox.emulator_errors() == []
