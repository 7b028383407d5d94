"""`make cluster`: Accord scaled out on Prefect, shown on this machine.

A Prefect server whose database is PostgreSQL (not its default SQLite), the ``accord-local``
process work pool with every deployment of prefect.yaml, two workers (``accord-worker-1`` and
``accord-worker-2``) that share the pool's flow runs, the sandbox (``accord sandbox up``, a process
of its own), and one store for all of them: a PostgreSQL database, because workers on different
machines cannot share a SQLite file. Every process gets what it would get on a machine of its own:
a ``PREFECT_HOME`` each (nothing on disk is shared: the sync reads its partition runs' states from
the API, not their results), the worker's name in ``ACCORD_WORKER_NAME``.

``python -m flows.cluster`` starts it all, runs one full ``accord-sync`` with ``partitions=4`` (the
sync pulls, then starts one ``accord-partition`` run per partition, which the two workers share),
prints the UI's address and which worker ran which partition, and serves until Ctrl-C, which stops
every process (workers first, with the flow runs they started) and drops the databases it created.

``Cluster`` is the same as a context manager, for tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from flows.ui import POOL, PREFECT, REPO, free_port, prefect_cli

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import FlowRun

WORKERS = ("accord-worker-1", "accord-worker-2")
DEFAULT_POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"
SLOT_WAIT_SECONDS = 5
MARKER = "ACCORD_CLUSTER_ID"  # in every process the cluster starts, flow runs included: nothing outlives stop()
FINAL = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
T = TypeVar("T")


def poll(what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    """``check()`` until it returns something other than None; raise naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


@dataclass
class ClusterOptions:
    home: Path  # per-process homes and logs; emptied on start
    port: int = 0  # the server's port; 0: a free one
    postgres: str = field(default_factory=lambda: os.environ.get("ACCORD_CLUSTER_POSTGRES_URL", DEFAULT_POSTGRES))
    prefect_database: str = ""  # "": a fresh uniquely named one
    store_database: str = ""
    workers: tuple[str, ...] = WORKERS
    # Flow runs at once per worker (a machine's share): 3 fits a sync and its 4 partitions on two workers
    # at once, and no worker can take all 4 partitions.
    worker_limit: int = 3
    size: str = "small"
    seed: int = 1
    schedules: bool = True  # False: pause the deployments' schedules and triggers (tests want only their runs)
    recreate: bool = False  # drop databases of the same names first (a fresh `make cluster` each time)


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]


class Cluster:
    """``with Cluster(ClusterOptions(home=...)) as cluster:`` gives a running cluster; on exit every
    process it started is stopped and the databases it created are dropped."""

    def __init__(self, options: ClusterOptions) -> None:
        self.options = options
        self.id = uuid.uuid4().hex[:12]
        self.port = options.port or free_port()
        self.home = options.home
        self.logs = options.home / "logs"
        server = make_url(options.postgres)
        self._admin_url = server.set(database=server.database or "postgres")
        self.prefect_database = options.prefect_database or f"accord_prefect_{self.id}"
        self.store_database = options.store_database or f"accord_cluster_{self.id}"
        for name in (self.prefect_database, self.store_database):
            if not _NAME.match(name):
                raise ValueError(f"database name {name!r}: lower-case letters, digits and _ only")
        self.prefect_database_url = self._url(server, "postgresql+asyncpg", self.prefect_database)
        self.store_url = self._url(server, "postgresql+psycopg2", self.store_database)
        self.sandbox_info: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self._processes: list[_Process] = []
        self._created: list[str] = []

    @staticmethod
    def _url(server: URL, driver: str, database: str) -> str:
        return server.set(drivername=driver, database=database).render_as_string(hide_password=False)

    # -- addresses and environments ------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @property
    def sandbox_control(self) -> str:
        return str(self.sandbox_info["control"])

    def env(self, home: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """This process's environment with Prefect pointed at this cluster's server (and nothing else's)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            {
                MARKER: self.id,
                "PREFECT_HOME": str(self.home / home),
                "PREFECT_API_URL": self.api_url,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_WORKER_QUERY_SECONDS": "2",
                "PREFECT_WORKER_PREFETCH_SECONDS": "5",
                "NO_COLOR": "1",
                "COLUMNS": "200",
            }
        )
        env.update(extra or {})
        return env

    def accord_env(self, worker: str) -> dict[str, str]:
        """What a worker's machine sets for Accord: the shared store, the APIs (here the sandbox), its name."""
        return {
            "ACCORD_SANDBOX_CONTROL": self.sandbox_control,
            "ACCORD_DATABASE_URL": self.store_url,
            "ACCORD_MAPPING": str(REPO / "mappings" / "default.yaml"),
            "ACCORD_REPO": str(REPO),
            "ACCORD_WORKER_NAME": worker,
        }

    # -- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Databases; then the sandbox and the server side by side; the pool; the workers booting while
        `prefect deploy --all` runs. ``timings``: seconds from the start until each was ready."""
        started = time.perf_counter()

        def ready(name: str) -> None:
            self.timings[name] = time.perf_counter() - started

        shutil.rmtree(self.home, ignore_errors=True)
        self.logs.mkdir(parents=True)
        self._create_databases()
        ready("databases")
        sandbox = self._spawn_sandbox()
        server = self._spawn_server()
        self.sandbox_info = self._sandbox_address(sandbox)
        ready("sandbox")
        self._wait_healthy(server)
        ready("server")
        self._create_pool()
        self._start_workers()
        self.cli("deploy", "--all")
        if not self.options.schedules:
            self._pause_schedules()
        ready("deploy")
        self._wait_workers()
        ready("workers")

    def _admin(self) -> Any:
        return create_engine(self._admin_url, isolation_level="AUTOCOMMIT")

    def _create_databases(self) -> None:
        engine = self._admin()
        try:
            with engine.connect() as conn:
                for name in (self.prefect_database, self.store_database):
                    if self.options.recreate:
                        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
                    self._created.append(name)
        except Exception as exc:
            if not self._created:
                raise RuntimeError(
                    f"cannot create databases on PostgreSQL at {self._admin_url.render_as_string()} "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0]}); start it with "
                    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
                    "or point ACCORD_CLUSTER_POSTGRES_URL elsewhere"
                ) from exc
            raise
        finally:
            engine.dispose()

    def _drop_databases(self) -> None:
        if not self._created:
            return
        engine = self._admin()
        try:
            with engine.connect() as conn:
                while self._created:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{self._created.pop()}" WITH (FORCE)'))
        finally:
            engine.dispose()

    def _spawn(self, name: str, args: list[str], env: dict[str, str], stdout: Path | None = None) -> _Process:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115  # the child holds its own descriptor
        out = open(stdout, "wb") if stdout else log  # noqa: SIM115  # idem
        try:
            popen = subprocess.Popen(  # noqa: S603  # our own commands: prefect and the accord CLI
                args, cwd=REPO, env=env, stdout=out, stderr=log, start_new_session=True
            )
        finally:
            log.close()
            out.close()
        process = _Process(name, popen)
        self._processes.append(process)
        return process

    def _alive(self, process: _Process) -> None:
        if process.popen.poll() is not None:
            raise RuntimeError(
                f"{process.name} exited with {process.popen.returncode}; see {self.logs / (process.name + '.log')}"
            )

    def _spawn_sandbox(self) -> _Process:
        args = [sys.executable, "-m", "accord", "sandbox", "up", "--size", self.options.size]
        args += ["--seed", str(self.options.seed)]
        return self._spawn("sandbox", args, self.env("sandbox"), stdout=self.home / "sandbox.json")

    def _sandbox_address(self, process: _Process) -> dict[str, Any]:
        """The sandbox's one line: URLs and (generated) credentials; kept in a file, never printed."""
        info = self.home / "sandbox.json"

        def line() -> dict[str, Any] | None:
            self._alive(process)
            content = info.read_text() if info.exists() else ""
            return cast(dict[str, Any], json.loads(content)) if content.endswith("\n") else None

        return poll("the sandbox's address", line, timeout=120, interval=0.2)

    def _spawn_server(self) -> _Process:
        env = self.env(
            "server",
            {
                "PREFECT_API_DATABASE_CONNECTION_URL": self.prefect_database_url,
                # Leases of concurrency slots on disk, not in memory: a restarted server still frees the
                # slot of a partition run that died (with the default, that slot stays taken for good).
                "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": LEASE_STORAGE,
                # A run waiting for its partition asks again after at most this (Prefect's default: 30 s).
                "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS": str(SLOT_WAIT_SECONDS),
                "PREFECT_SERVER_API_HOST": "127.0.0.1",
                "PREFECT_SERVER_API_PORT": str(self.port),
                # The scheduler looks for schedules to fill every 10 s (default 60 s): a schedule made
                # active shows its runs soon after (tests/cluster checks that it does at all).
                "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "10",
            },
        )
        return self._spawn("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)], env)

    def _wait_healthy(self, process: _Process) -> None:
        def healthy() -> bool | None:
            self._alive(process)
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:  # noqa: S310  # loopback
                    return True if response.status == 200 else None
            except OSError:
                return None

        poll("the Prefect server's /api/health", healthy, timeout=120, interval=0.3)

    def cli(self, *args: str) -> str:
        """The prefect CLI against this server, from the repository; raises with its output if it fails."""
        return prefect_cli(args, self.env("client"), timeout=300)

    def _create_pool(self) -> None:
        """``prefect work-pool create accord-local --type process --overwrite``, without a CLI start-up."""
        from prefect.client.schemas.actions import WorkPoolCreate
        from prefect.workers.process import ProcessWorker

        template = ProcessWorker.get_default_base_job_template()
        with self.client() as client:
            client.create_work_pool(
                WorkPoolCreate(name=POOL, type="process", base_job_template=template), overwrite=True
            )

    def _pause_schedules(self) -> None:
        """``prefect deployment schedule pause --all``, and the deployments' triggers (the push after
        each completed sync) paused too, without a CLI start-up."""
        with self.client() as client:
            for deployment in client.read_deployments():
                for schedule in client.read_deployment_schedules(deployment.id):
                    client.update_deployment_schedule(deployment.id, schedule.id, active=False)
                for automation in client.read_resource_related_automations(f"prefect.deployment.{deployment.id}"):
                    client.pause_automation(automation.id)

    def _start_workers(self) -> None:
        for n, name in enumerate(self.options.workers, 1):
            args = [PREFECT, "worker", "start", "--pool", POOL, "--type", "process", "--name", name]
            args += ["--limit", str(self.options.worker_limit)]
            self._spawn(f"worker-{n}", args, self.env(f"worker-{n}", self.accord_env(name)))

    def _wait_workers(self) -> None:
        def online() -> bool | None:
            for process in self._processes:
                self._alive(process)
            return True if set(self.online_workers()) >= set(self.options.workers) else None

        poll(f"workers {', '.join(self.options.workers)} online", online, timeout=90)

    def stop(self, grace: float = 10.0) -> None:
        """Workers first, then the flow runs they started (each in a process group of its own), then the
        server and the sandbox; any process still carrying this cluster's marker; then the databases.
        Each step: SIGTERM to the process groups, SIGKILL to what is left after ``grace`` seconds."""
        started = time.perf_counter()
        _drain_in_process()
        workers = [p for p in self._processes if p.name.startswith("worker-")]
        _stop_groups([p.popen for p in workers], grace)
        _stop_marked(self.id, grace)
        _stop_groups([p.popen for p in reversed(self._processes) if p not in workers], grace)
        _stop_marked(self.id, grace)
        self._processes.clear()
        self._drop_databases()
        self.timings["stop"] = time.perf_counter() - started

    def alive(self) -> bool:
        """Every process the cluster started is still running."""
        return bool(self._processes) and all(p.popen.poll() is None for p in self._processes)

    # -- the API -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def client(self) -> Iterator[SyncPrefectClient]:
        """A Prefect client of this cluster's server; ``run_deployment`` inside it targets this server."""
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

        with (
            temporary_settings(updates={PREFECT_API_URL: self.api_url, PREFECT_SERVER_ANALYTICS_ENABLED: False}),
            get_client(sync_client=True) as client,
        ):
            yield client

    def online_workers(self) -> list[str]:
        request = urllib.request.Request(  # noqa: S310  # loopback
            f"{self.api_url}/work_pools/{POOL}/workers/filter",
            data=b"{}",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310  # loopback
                return [w["name"] for w in json.load(response) if w.get("status") == "ONLINE"]
        except OSError:
            return []

    def run(self, deployment: str, parameters: dict[str, Any]) -> FlowRun:
        """Create a run of ``deployment`` ("flow/deployment") and return at once."""
        from prefect.client.schemas.objects import FlowRun
        from prefect.deployments import run_deployment

        with self.client():
            run = run_deployment(deployment, parameters=parameters, timeout=0)
        assert isinstance(run, FlowRun)  # called from sync code: the sync variant answers
        return run

    def wait(self, run_ids: list[Any], timeout: float) -> list[FlowRun]:
        """The flow runs once every one is in a final state; raises naming those still running after ``timeout``."""
        with self.client() as client:
            pending: list[FlowRun] = []

            def finished() -> list[FlowRun] | None:
                runs = [client.read_flow_run(run_id) for run_id in run_ids]
                pending[:] = [r for r in runs if not (r.state and r.state.type.value in FINAL)]
                return None if pending else runs

            try:
                return poll("flow runs to finish", finished, timeout=timeout, interval=1.0)
            except TimeoutError as exc:
                states = ", ".join(f"{r.name} {r.state.name if r.state else '?'}" for r in pending)
                raise TimeoutError(f"{exc}: {states} ({self.url})") from None

    def children(self, parent_id: Any) -> list[FlowRun]:
        """The flow runs started by ``parent_id`` (``run_deployment`` inside a flow links them)."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

        with self.client() as client:
            return client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id]))
            )


def worker_of(run: FlowRun) -> str | None:
    """The worker that ran a flow run: workers label the runs they submit."""
    value = (run.labels or {}).get("prefect.worker.name")
    return str(value) if value is not None else None


def _drain_in_process() -> None:
    """Send this process's pending Prefect events and logs to the server before it stops, and forget
    the clients: Prefect keeps one events worker per process, bound to the API it first talked to."""
    if "prefect.events.worker" in sys.modules:
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all()
    if "prefect.logging.handlers" in sys.modules:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all()


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _stop_groups(processes: list[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM each process's group (they lead their own sessions); SIGKILL the groups after ``grace`` s."""
    for process in processes:
        _signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
        _signal_group(process.pid, signal.SIGKILL)  # children that outlived their leader


def _marked(cluster_id: str) -> list[int]:
    """Processes of this user whose environment carries the cluster's marker (Linux /proc)."""
    needle = f"{MARKER}={cluster_id}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(pid)
    return found


def _stop_marked(cluster_id: str, timeout: float = 15.0) -> None:
    pids = _marked(cluster_id)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    try:
        poll("the cluster's processes to stop", lambda: True if not _marked(cluster_id) else None, timeout, 0.2)
    except TimeoutError:
        for pid in _marked(cluster_id):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


# -- python -m flows.cluster ----------------------------------------------------------------------------
def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def partition_table(runs: list[FlowRun]) -> list[str]:
    lines = []
    for run in sorted(runs, key=lambda r: (r.parameters.get("partition", -1), r.name)):
        seconds = run.total_run_time.total_seconds()
        state = run.state.name if run.state else "?"
        partition = run.parameters.get("partition", "?")
        lines.append(f"   partition {partition}: {worker_of(run) or '?'}  {state}  {seconds:.1f} s  ({run.name})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.cluster", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--port", type=int, default=4210)
    parser.add_argument("--size", default="small", choices=["small", "medium", "large"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--postgres", default=os.environ.get("ACCORD_CLUSTER_POSTGRES_URL", DEFAULT_POSTGRES))
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops everything as cleanly as Ctrl-C
    signal.signal(signal.SIGINT, _interrupt)  # Ctrl-C, even when started where SIGINT was ignored (`&`)

    options = ClusterOptions(
        home=REPO / ".accord" / "cluster",
        port=args.port,
        postgres=args.postgres,
        prefect_database="accord_prefect",
        store_database="accord_cluster",
        size=args.size,
        seed=args.seed,
        recreate=True,
    )
    print(
        f"starting: PostgreSQL databases accord_prefect (Prefect) and accord_cluster (Accord's store), "
        f"the sandbox ({args.size} org), the Prefect server on 127.0.0.1:{args.port}, "
        f"`prefect deploy --all`, workers {' and '.join(options.workers)}",
        flush=True,
    )
    try:
        with Cluster(options) as cluster:
            took = ", ".join(f"{k} {v:.1f} s" for k, v in cluster.timings.items())
            print(f"up ({took}); logs in {cluster.logs}", flush=True)
            print(f"\nPrefect UI: {cluster.url}\n", flush=True)
            sync = cluster.run("accord-sync/accord-sync", {"full": True, "partitions": args.partitions})
            print(f"accord-sync with partitions={args.partitions}: {cluster.url}/runs/flow-run/{sync.id}", flush=True)
            (sync,) = cluster.wait([sync.id], timeout=900)
            state = sync.state.name if sync.state else "?"
            print(f"   {state} on {worker_of(sync) or '?'} in {sync.total_run_time.total_seconds():.1f} s", flush=True)
            if sync.state and sync.state.message:
                print(f"   {sync.state.message}", flush=True)
            partitions = cluster.wait([r.id for r in cluster.children(sync.id)], timeout=60)
            print("\n".join(partition_table(partitions)) or "   no partition runs", flush=True)
            print(f"\nPrefect UI: {cluster.url}; Ctrl-C stops the workers, the server and the sandbox", flush=True)
            while cluster.alive():
                time.sleep(1)  # serving until Ctrl-C; checking that every process is still up
            print(f"a process of the cluster exited; see {cluster.logs}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        print("\nstopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
