"""Kill -9 of the Accord process at random points of sync and push, then a re-run.

The process is the Prefect-free engine (``tests/chaos/runner.py``: ``run_sync`` / ``push`` with the
settings ``accord sync`` / ``accord push`` read from ACCORD_SANDBOX_CONTROL and ACCORD_DATABASE_URL),
because Prefect's ephemeral API adds ~10 s to every process start. The sandbox runs in this process
with 20 ms latency per request; the kill moment is a seeded request count (read from the sandbox's
request log) plus a seeded delay of up to 20 ms, so it lands anywhere between two requests.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engagement.mapping import Mapping, load_mapping
from engagement.records import iso
from engagement.unify import Snapshot, unify
from flows.engine import run_sync
from flows.push_engine import plan_push, push
from sandbox.app import Sandbox, SandboxOptions
from store import Store
from tests.chaos.figures import FIGURES, FULL, leak_hits, request_log_text, store_texts
from tests.chaos.support import expected_after_pushes, tally_writes
from tests.flows.test_push import expected_keys, settings_for, target_counts
from tests.flows.test_sync_engine import live

MAPPING_PATH = Path("mappings/default.yaml")
TRIALS = 12 if FULL else 2  # per kind (sync, push): 24 seeded kills in full mode, 4 in reduced
HEALTH_TRIALS = 12 if FULL else 1  # kills of a sync that moves engagements' health (reduced: between groups)
HEALTH_CHANGES = 280  # changed records per API before that sync: about 1% of the medium org's
LATENCY_MS = 20.0
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mapping() -> Mapping:
    return load_mapping(MAPPING_PATH)


@dataclass
class Runner:
    sandbox: Sandbox
    store_url: str
    directory: Path
    texts: dict[str, str]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACCORD_")}
        env["ACCORD_SANDBOX_CONTROL"] = str(self.sandbox.info()["control"])
        env["ACCORD_DATABASE_URL"] = self.store_url
        env["PREFECT_HOME"] = str(self.directory / "prefect")
        return env

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        n = len(self.texts)
        self.texts[f"run {n} {args}"] = ""
        with open(self.directory / f"run-{n}.out", "wb") as out, open(self.directory / f"run-{n}.err", "wb") as err:
            return subprocess.Popen(  # noqa: S603 (our own interpreter and module)
                [sys.executable, "-m", "tests.chaos.runner", *args], env=self.env(), cwd=ROOT, stdout=out, stderr=err
            )

    def finish(self, proc: subprocess.Popen[bytes]) -> int:
        code = proc.wait(timeout=300)
        n = len(self.texts) - 1
        for kind in ("out", "err"):
            text = (self.directory / f"run-{n}.{kind}").read_text(encoding="utf-8", errors="replace")
            self.texts[f"run {n} std{kind}"] = text
        assert "Traceback" not in self.texts[f"run {n} stderr"] or code == -signal.SIGKILL, self.texts[
            f"run {n} stderr"
        ][-2000:]
        return code

    def run(self, *args: str) -> int:
        return self.finish(self.start(*args))

    def run_and_kill(self, rng: random.Random, requests: int, *args: str) -> bool:
        """Starts a run and kills it with SIGKILL after a seeded number of requests; False if it finished first."""
        target = rng.randint(1, max(1, requests - 1))
        since = self.sandbox.log.last_seq
        return self.kill_when(lambda: self.sandbox.log.last_seq - since >= target, rng, *args)

    def kill_when(self, due: Callable[[], bool], rng: random.Random, *args: str) -> bool:
        """Starts a run and kills it with SIGKILL once ``due()`` (polled every millisecond), after a
        seeded delay of up to one request's latency; False if it finished first."""
        delay = rng.uniform(0.0, LATENCY_MS / 1000.0)
        proc = self.start(*args)
        killed = False
        while proc.poll() is None:
            if due():
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.001)
        code = self.finish(proc)
        killed = killed and code == -signal.SIGKILL
        FIGURES.add("kill_trials")
        FIGURES.add("kills" if killed else "kills_missed_finished_first")
        return killed


def latency(sandbox: Sandbox, ms: float) -> None:
    for app in sandbox.apps.values():
        app.faults.configure(latency_ms=ms)


def test_kill_9_during_sync_then_a_rerun_stores_what_an_uninterrupted_sync_stores(
    mapping: Mapping, tmp_path: Path
) -> None:
    with Sandbox(SandboxOptions(size="small", seed=51)) as sandbox:
        latency(sandbox, LATENCY_MS)
        truth_dir = tmp_path / "truth"
        truth_dir.mkdir()
        truth_url = f"sqlite:///{truth_dir / 'accord.sqlite'}"
        baseline = Runner(sandbox, truth_url, truth_dir, {})
        since = sandbox.log.last_seq
        assert baseline.run("sync", "--full") == 0
        requests = sandbox.log.last_seq - since
        truth = Store(truth_url)
        expected = live(truth)
        now = datetime.now(UTC)
        expected_view = unify(Snapshot.from_records(truth.iter_records()), mapping, now)
        rng = random.Random(5100)
        kills = 0
        for trial in range(TRIALS):
            directory = tmp_path / f"trial-{trial}"
            directory.mkdir()
            url = f"sqlite:///{directory / 'accord.sqlite'}"
            runner = Runner(sandbox, url, directory, {})
            kills += runner.run_and_kill(rng, requests, "sync", "--full")
            if trial % 2:  # and kill the re-run too
                kills += runner.run_and_kill(rng, requests, "sync")
            assert runner.run("sync") == 0
            store = Store(url)
            got = live(store)
            FIGURES.add("losses", len(expected.keys() - got.keys()))
            FIGURES.add("records_compared", len(expected))
            assert got == expected, trial
            assert unify(Snapshot.from_records(store.iter_records()), mapping, now) == expected_view
            texts = {**runner.texts, **store_texts(store)}
            store.dispose()
            assert leak_hits(sandbox, texts) == []
        assert kills >= TRIALS  # most kills land mid-run; a run that finished first proves nothing
        assert leak_hits(sandbox, {**baseline.texts, "request log": request_log_text(sandbox)}) == []
        truth.dispose()
        assert sandbox.emulator_errors() == []


def copy_store(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite store, what its write-ahead log holds included."""
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


def journaled(path: Path) -> list[tuple[str, str, str, str]]:
    """The health transitions the store's journal holds (what the next run sends as events)."""
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT engagement_id, previous, current, reason_codes FROM health_journal")
        return sorted((str(e), str(p), str(c), str(r)) for e, p, c, r in rows)


def stored_engagements(path: Path) -> dict[str, tuple[str, str]]:
    """Engagement id -> (health, digest of the whole engagement) as stored."""
    with closing(sqlite3.connect(path)) as conn:
        return {str(i): (str(h), str(d)) for i, h, d in conn.execute("SELECT id, health, digest FROM engagements")}


class StoredSince:
    """Polls how many engagements a run has stored with its stamp so far (a reader beside its writes)."""

    def __init__(self, path: Path, stamp: str) -> None:
        self.stamp = stamp
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    def __call__(self) -> int:
        query = "SELECT count(*) FROM engagements WHERE updated_at = ?"
        return int(self.conn.execute(query, (self.stamp,)).fetchone()[0])

    def close(self) -> None:
        self.conn.close()


def test_kill_9_during_an_incremental_sync_then_a_rerun_journals_every_health_transition_once(
    tmp_path: Path,
) -> None:
    """Engagements whose health a sync moves have their transition journaled in the transaction that
    stores them (``Store.save_engagements``), and the next run sends the journal as events. A sync
    killed anywhere, in its pull or between the unify's stored groups, then re-run: the journal holds
    every transition an uninterrupted run journals, each once, and the engagements are stored as that
    run stores them. The runs share one ``--now``, so health depends on the records alone."""
    with Sandbox(SandboxOptions(size="medium", seed=54)) as sandbox:
        base = tmp_path / "base.sqlite"
        assert Runner(sandbox, f"sqlite:///{base}", tmp_path, {}).run("sync", "--full") == 0
        sandbox.mutate(HEALTH_CHANGES, seed=7, late_share=0.0)
        now = datetime.now(UTC)
        stamp = str(iso(now))  # what the sync's unify writes as its engagements' updated_at
        latency(sandbox, LATENCY_MS)
        truth_dir = tmp_path / "truth"
        truth_dir.mkdir()
        copy_store(base, truth_dir / "accord.sqlite")
        args = ("sync", "--now", now.isoformat())
        started = time.perf_counter()
        assert Runner(sandbox, f"sqlite:///{truth_dir / 'accord.sqlite'}", truth_dir, {}).run(*args) == 0
        seconds = time.perf_counter() - started
        expected = journaled(truth_dir / "accord.sqlite")
        engagements = stored_engagements(truth_dir / "accord.sqlite")
        assert len(expected) >= 10, expected  # the changes moved engagements' health
        with closing(StoredSince(truth_dir / "accord.sqlite", stamp)) as rewritten:
            stored = rewritten()  # the engagements the sync stores anew (the others did not change)
        assert stored > len(expected), stored
        rng = random.Random(5400)
        kills = 0
        for trial in range(HEALTH_TRIALS):
            directory = tmp_path / f"health-{trial}"
            directory.mkdir()
            path = directory / "accord.sqlite"
            copy_store(base, path)
            runner = Runner(sandbox, f"sqlite:///{path}", directory, {})
            if trial % 2:  # anywhere in the run: starting up, its pull or its unify
                deadline = time.perf_counter() + rng.uniform(0.05, 1.0) * seconds
                kills += runner.kill_when(lambda d=deadline: time.perf_counter() >= d, rng, *args)
            else:  # in the unify, between its stored groups: once some of its engagements are stored
                with closing(StoredSince(path, stamp)) as so_far:
                    some = rng.randint(1, stored - 1)
                    kills += runner.kill_when(lambda n=some, count=so_far: count() >= n, rng, *args)
            if trial % 3 == 2:  # and kill the re-run too
                deadline = time.perf_counter() + rng.uniform(0.05, 1.0) * seconds
                runner.kill_when(lambda d=deadline: time.perf_counter() >= d, rng, *args)
            assert runner.run(*args) == 0
            got = journaled(path)
            missing = sorted(set(expected) - set(got))
            FIGURES.add("health_kill_trials")
            FIGURES.add("health_transitions_compared", len(expected))
            FIGURES.add("losses", len(missing))
            FIGURES.add("duplicates", len(got) - len(set(got)))
            assert got == expected, (trial, missing)
            assert stored_engagements(path) == engagements, trial
            assert leak_hits(sandbox, runner.texts) == []
        assert kills >= max(1, HEALTH_TRIALS * 2 // 3), kills
        assert sandbox.emulator_errors() == []


def push_trial(mapping: Mapping, directory: Path, rng: random.Random, requests: int | None) -> tuple[int, bool]:
    """A fresh org synced in-process, a push killed with SIGKILL, a re-run; returns the push's requests."""
    directory.mkdir()
    url = f"sqlite:///{directory / 'accord.sqlite'}"
    with Sandbox(SandboxOptions(size="small", seed=52)) as sandbox:
        store = Store(url)
        store.create_all()
        settings = settings_for(sandbox, url)
        assert not run_sync(settings, mapping, store, full=True).failed
        planned_on = datetime.now(UTC).date()
        planned = expected_keys(plan_push(store, mapping, MAPPING_PATH).items)
        latency(sandbox, LATENCY_MS)
        runner = Runner(sandbox, url, directory, {})
        since = sandbox.log.last_seq
        killed = False
        if requests is None:
            assert runner.run("push") == 0  # the uninterrupted run, for the count of its requests
        else:
            killed = runner.run_and_kill(rng, requests, "push")
            if killed and rng.random() < 0.3:  # sometimes kill the re-run as well
                runner.run_and_kill(rng, requests, "push")
            assert runner.run("push") == 0
        made = sandbox.log.last_seq - since
        latency(sandbox, 0.0)
        before = sandbox.log.last_seq
        again = push(store, settings, mapping, MAPPING_PATH)
        assert again.queued == 0 and again.failed == 0
        writes = [r for r in sandbox.log.records(since_seq=before) if r.method in ("POST", "PATCH", "PUT", "DELETE")]
        assert [r.endpoint for r in writes if r.endpoint != "oauth2.token"] == []
        expected = expected_after_pushes(store, planned, planned_on)
        duplicates, losses = tally_writes(sandbox, mapping, expected)
        assert (duplicates, losses) == (0, 0), directory.name
        assert {target: set(keys) for target, keys in target_counts(sandbox, mapping).items()} == expected
        assert {state for t in store.outbox.counts().values() for state in t} <= {"delivered", "superseded"}
        texts = {**runner.texts, **store_texts(store), "request log": request_log_text(sandbox)}
        store.dispose()
        assert leak_hits(sandbox, texts) == []
        assert sandbox.emulator_errors() == []
        return made, killed


def test_kill_9_during_push_then_a_rerun_writes_everything_exactly_once(mapping: Mapping, tmp_path: Path) -> None:
    requests, _ = push_trial(mapping, tmp_path / "baseline", random.Random(0), None)
    assert requests > 5
    rng = random.Random(5200)
    kills = sum(push_trial(mapping, tmp_path / f"trial-{trial}", rng, requests)[1] for trial in range(TRIALS))
    assert kills >= max(1, TRIALS * 2 // 3), kills


def test_the_runner_reports_its_result_as_json(tmp_path: Path) -> None:
    """The runner's last stdout line is the result (what the trials above read when debugging)."""
    with Sandbox(SandboxOptions(size="small", seed=53)) as sandbox:
        runner = Runner(sandbox, f"sqlite:///{tmp_path / 'a.sqlite'}", tmp_path, {})
        assert runner.run("sync", "--full") == 0
        assert json.loads(runner.texts["run 0 stdout"].strip().splitlines()[-1]) == {"failed": []}
        assert leak_hits(sandbox, runner.texts) == []
