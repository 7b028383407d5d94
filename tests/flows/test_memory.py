"""The malloc arena cap: threads that allocate share two glibc arenas instead of one each."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import ctypes, sys, tempfile, threading
from flows.memory import limit_malloc_arenas
applied = limit_malloc_arenas() if sys.argv[1] == "cap" else None
start, held = threading.Barrier(8), []
def allocate():
    start.wait()  # all eight allocate at once, so each would get an arena of its own
    held.append([bytearray(4096) for _ in range(2000)])  # above Python's small-object limit: malloc
threads = [threading.Thread(target=allocate) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.NamedTemporaryFile(suffix=".xml") as out:
    stream = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    heaps = open(out.name).read().count("<heap nr=")
print(applied, heaps)
"""


def _arenas(mode: str, env: dict[str, str]) -> tuple[str, int]:
    done = subprocess.run(  # noqa: S603  # our own interpreter; a fresh process: the cap is per process
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True, env=env, timeout=120
    )
    applied, heaps = done.stdout.split()
    return applied, int(heaps)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc arenas: Linux only")
def test_threads_share_two_arenas_once_the_cap_is_set() -> None:
    base = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    applied, capped = _arenas("cap", base)
    _, free = _arenas("none", base)
    assert applied == "True" and capped <= 2 < free, (capped, free)
    # MALLOC_ARENA_MAX set at start-up wins: the cap is left to it.
    assert _arenas("cap", base | {"MALLOC_ARENA_MAX": "3"}) == ("True", 3)
