"""`make ui`: Accord on a local Prefect server, the way ops run it, against the sandbox.

Starts a Prefect server with its UI (``prefect server start`` on 127.0.0.1, ``PREFECT_HOME`` under
``.accord/prefect``), the sandbox (a generated org behind the three emulators, in this process),
the ``accord-local`` process work pool, ``prefect deploy --all`` from prefect.yaml, and a worker
whose environment points Accord at the sandbox. Then it runs one full sync through its deployment;
the push deployment follows by its trigger. Open the printed URL to watch runs, artifacts and
events; Ctrl-C stops the worker, the server and the sandbox.

``python -m flows.ui [--port 4200] [--size small] [--seed 1]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))


def prefect_cli(args: tuple[str, ...], env: Mapping[str, str], *, timeout: float) -> str:
    """The prefect CLI of this venv, run from the repository; raises with its output if it fails."""
    result = subprocess.run(  # noqa: S603  # our own venv's prefect CLI
        [PREFECT, "--no-prompt", *args],
        cwd=REPO,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


POOL = "accord-local"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalPrefect:
    """A Prefect server (API and UI) in a subprocess, and the environment that talks to it."""

    home: Path
    port: int
    logs: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """This process's environment with Prefect pointed at this server (and nothing else's)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_WORKER_QUERY_SECONDS="2",
            PREFECT_WORKER_PREFETCH_SECONDS="5",
            NO_COLOR="1",
            COLUMNS="200",
        )
        env.update(extra or {})
        return env

    def start_server(self, timeout: float = 60.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        env = self.env({"PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(self.port)})
        self._spawn("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)], env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes[-1].poll() is not None:
                raise RuntimeError(f"the Prefect server exited; see {self.logs / 'server.log'}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:  # noqa: S310  # loopback
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the Prefect server did not answer within {timeout:.0f} s; see {self.logs / 'server.log'}")

    def cli(self, *args: str, extra: Mapping[str, str] | None = None) -> str:
        """Run the prefect CLI against this server from the repository; raise with its output if it fails."""
        return prefect_cli(args, self.env(extra), timeout=180)

    def deploy(self) -> None:
        """The work pool and every deployment of prefect.yaml, as ops would create them."""
        self.cli("work-pool", "create", POOL, "--type", "process", "--overwrite")
        self.cli("deploy", "--all")

    def start_worker(self, accord_env: Mapping[str, str]) -> None:
        """A process worker on the pool; its environment (Accord's settings) is what flow runs see."""
        env = self.env({**accord_env, "ACCORD_REPO": str(REPO)})
        self._spawn("worker", [PREFECT, "worker", "start", "--pool", POOL, "--type", "process"], env)

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115  # closed with the process in stop()
        self.processes.append(
            subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # noqa: S603 (our own commands: prefect and the accord CLI)
        )
        log.close()  # the child holds its own descriptor

    def stop(self) -> None:
        """Stop the worker first (it cancels nothing: runs in flight finish or are marked crashed), then the server."""
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


@contextmanager
def local_prefect(home: Path, port: int | None = None) -> Iterator[LocalPrefect]:
    prefect = LocalPrefect(home=home, port=port or free_port(), logs=home / "logs")
    try:
        prefect.start_server()
        yield prefect
    finally:
        prefect.stop()


def run_deployment_and_wait(prefect: LocalPrefect, name: str, parameters: dict[str, Any], timeout: float) -> str:
    """Create a run of deployment ``name`` ("flow/deployment"), wait for it to finish; its id.
    Raises if it does not complete, with the state message (the words the UI shows)."""
    script = (
        "import json, sys\n"
        "from prefect.deployments import run_deployment\n"
        "run = run_deployment(sys.argv[1], parameters=json.loads(sys.argv[2]), timeout=float(sys.argv[3]))\n"
        "print(run.id)\n"
        "print(run.state.type.value if run.state else 'NONE')\n"
        "print((run.state.message or '') if run.state else '')\n"
    )
    import json

    result = subprocess.run(  # noqa: S603  # our own interpreter, fixed script
        [sys.executable, "-c", script, name, json.dumps(parameters), str(timeout)],
        cwd=REPO,
        env=prefect.env(),
        capture_output=True,
        text=True,
        timeout=timeout + 30,
        check=False,
    )
    lines = result.stdout.splitlines()
    if result.returncode != 0 or len(lines) < 2:
        raise RuntimeError(f"could not run {name}:\n{result.stdout}\n{result.stderr}")
    run_id, state = lines[0], lines[1]
    if state != "COMPLETED":
        message = lines[2] if len(lines) > 2 else ""
        raise RuntimeError(f"{name} run {run_id} ended {state}: {message} (see {prefect.url}/runs/flow-run/{run_id})")
    return run_id


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.ui", description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--size", default="small", choices=["small", "medium", "large"])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops everything as cleanly as Ctrl-C

    from sandbox.app import Sandbox, SandboxOptions

    base = REPO / ".accord"
    database = base / "ui.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(base / "prefect", ignore_errors=True)  # a fresh server each time: no stale runs
    with ExitStack() as stack:
        print(f"starting the Prefect server on 127.0.0.1:{args.port} (PREFECT_HOME={base / 'prefect'})", flush=True)
        prefect = stack.enter_context(local_prefect(base / "prefect", args.port))
        print(f"starting the sandbox ({args.size} org, seed {args.seed})", flush=True)
        sandbox = stack.enter_context(Sandbox(SandboxOptions(size=args.size, seed=args.seed)))
        stack.callback(prefect.stop)  # the worker and the server stop before the sandbox they use
        accord_env = {
            "ACCORD_SANDBOX_CONTROL": str(sandbox.info()["control"]),
            "ACCORD_DATABASE_URL": f"sqlite:///{database}",
            "ACCORD_MAPPING": str(REPO / "mappings" / "default.yaml"),
        }
        print(f"work pool {POOL} and `prefect deploy --all` (prefect.yaml)", flush=True)
        prefect.deploy()
        prefect.start_worker(accord_env)
        print("one full sync through the accord-sync deployment (the push follows by its trigger)", flush=True)
        try:
            run_id = run_deployment_and_wait(prefect, "accord-sync/accord-sync", {"full": True}, timeout=300)
            print(f"   sync run: {prefect.url}/runs/flow-run/{run_id}", flush=True)
        except RuntimeError as exc:
            print(f"   {exc}", file=sys.stderr, flush=True)
        print(f"\nPrefect UI: {prefect.url}  (worker and server logs in {prefect.logs})", flush=True)
        print("syncs run every 15 minutes; Ctrl-C stops the worker, the server and the sandbox", flush=True)
        try:
            while all(p.poll() is None for p in prefect.processes):
                time.sleep(1)
            print(f"a Prefect process exited; see {prefect.logs}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\nstopping", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
