"""A unify child: ``python -m flows.unify_child``, started by ``flows.engine.UnifyPool``.

Its own interpreter with its own command line, not a ``multiprocessing`` child: ``spawn`` re-imports
the parent's ``__main__`` in the child, which runs the top level of a script that calls
``run_sync`` without an ``if __name__ == "__main__"`` guard (the child then started a sync of its
own, and died starting its own children), and under a Prefect flow run imports Prefect. This one
imports what the unify needs and nothing of the parent's.

Messages are pickles on the standard streams: in, ``Hello`` then ``Unify`` requests; out, ``Ready``
then one ``Done`` or ``Failed`` per request. The protocol has the real standard output to itself:
file descriptor 1 is pointed at standard error, so a stray print cannot corrupt it. The parent's
end closing (its process ended, or ``UnifyPool.close``) ends the child.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

from engagement.mapping import Mapping


@dataclass(frozen=True)
class Hello:
    parent: int  # the sync's process id: the child dies with it
    url: str


@dataclass(frozen=True)
class Ready:
    pid: int


@dataclass(frozen=True)
class Unify:
    """One partition's unify, on the store the ``Hello`` named."""

    mapping: Mapping
    now: datetime
    partition: int
    partitions: int


@dataclass(frozen=True)
class Failed:
    line: str  # the error in a line, for the run's message (no SQL, no parameters)
    detail: str  # the child's traceback, for the log


def send(stream: BinaryIO, message: Any) -> None:
    pickle.dump(message, stream, protocol=pickle.HIGHEST_PROTOCOL)
    stream.flush()


def main() -> int:
    # Run as ``__main__``: the messages' classes are taken from the module by its name, so that
    # what is pickled here names ``flows.unify_child``, as the parent's do.
    from flows import unify_child as messages
    from flows.engine import _one_line, die_with_parent, unify_partition_in_child, warm_unify_child

    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # print() and libraries writing to stdout go to stderr from here on
    sys.stdout = sys.stderr
    inbox = sys.stdin.buffer
    hello = pickle.load(inbox)  # noqa: S301  # our own parent's messages, on a pipe only it holds
    if not isinstance(hello, messages.Hello):
        raise SystemExit(f"unify child: expected a Hello first, got {type(hello).__name__}")
    die_with_parent(hello.parent)
    messages.send(protocol_out, messages.Ready(warm_unify_child(hello.url)))
    while True:
        try:
            request = pickle.load(inbox)  # noqa: S301  # as above
        except EOFError:
            return 0
        try:
            result: Any = unify_partition_in_child(
                hello.url, request.mapping, request.now, request.partition, request.partitions
            )
        except Exception as exc:
            result = messages.Failed(_one_line(exc), traceback.format_exc())
        messages.send(protocol_out, result)


if __name__ == "__main__":
    raise SystemExit(main())
