"""The sandbox in a process of its own (``accord sandbox up``), so CPU and RSS measured here are Accord's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import TracebackType
from typing import Any

from sandbox.client import SandboxControl


class SandboxProcess:
    """``with SandboxProcess("medium", latency_ms=50) as sb:`` gives ``sb.info`` and ``sb.control``."""

    def __init__(self, size: str, *, seed: int = 1, latency_ms: float = 50.0) -> None:
        self.command = [
            sys.executable,
            "-m",
            "accord",
            "sandbox",
            "up",
            "--size",
            size,
            "--seed",
            str(seed),
            "--latency-ms",
            str(latency_ms),
        ]
        self._process: subprocess.Popen[str] | None = None
        self.info: dict[str, Any] = {}

    @property
    def control(self) -> SandboxControl:
        return SandboxControl(str(self.info["control"]), timeout=300.0)

    def cpu_s(self) -> float:
        """The sandbox process's CPU time so far (user and system, all its threads)."""
        if self._process is None:
            return 0.0
        with open(f"/proc/{self._process.pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> SandboxProcess:
        self._process = subprocess.Popen(  # noqa: S603  # our own interpreter and the accord CLI
            self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()  # the one JSON line; it holds credentials: never printed
        if not line:
            code = self._process.wait()
            raise RuntimeError(f"`accord sandbox up` exited with {code} before printing its address")
        self.info = json.loads(line)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
