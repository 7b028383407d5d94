"""Measurements run in child processes of our own interpreter: each prints its figures as the last
line of its standard output, as JSON."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from typing import Any


def run_json(command: Sequence[str], what: str, **options: Any) -> dict[str, Any]:
    """Run ``command`` (our interpreter and one of our modules) and return its last line as JSON; a
    child that fails raises with the end of its standard error. ``options`` go to ``subprocess.run``
    (``input``, ``env``, ``cwd``): credentials go on standard input or in files, never in ``command``."""
    done = subprocess.run(list(command), capture_output=True, text=True, check=False, **options)  # noqa: S603  # our own interpreter and module
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
