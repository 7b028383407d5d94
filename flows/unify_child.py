"""A unify child: ``python -m flows.unify_child``, started by ``flows.engine.UnifyPool``. It pulls the
sources its ``Hello`` names (Jira by default, ``ACCORD_PULL_IN_CHILD``) during the sync's pull, then
unifies a partition of the clients.

Its own interpreter with its own command line, not a ``multiprocessing`` child: ``spawn`` re-imports
the parent's ``__main__`` in the child, which runs the top level of a script that calls
``run_sync`` without an ``if __name__ == "__main__"`` guard (the child then started a sync of its
own, and died starting its own children), and under a Prefect flow run imports Prefect. This one
imports what the unify needs and nothing of the parent's.

Messages are pickles on the standard streams: in, ``Hello`` then ``Pull`` and ``Unify`` requests;
out, ``Ready`` then one ``SourceReport``, ``PartitionResult`` or ``Failed`` per request, with
``LogLine``s before it: the child's log records, handled by the sync's loggers as if logged there;
during a pull, ``Pending`` says what its read has left to write (``flows.engine.EarlyUnify``).
The protocol has the real standard output to itself: file descriptor 1 is pointed at standard
error, so a stray print cannot corrupt it. The parent's end closing (its process ended, or
``UnifyPool.close``) ends the child.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import threading
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO

from accord.settings import AccordSettings
from engagement.mapping import Mapping


@dataclass(frozen=True)
class Hello:
    parent: int  # the sync's process id: the child dies with it
    url: str
    pulls: tuple[str, ...] = ()  # the sources it may be asked to pull: imported while the sync starts
    log_level: int = logging.WARNING  # the least severe record worth sending (the sync's "accord" level)


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
    clients: frozenset[str] | None = None  # only these clients' engagements (None: all)


@dataclass(frozen=True)
class Pull:
    """One source's pull (``flows.engine.pull_source``), into the store the ``Hello`` named."""

    source: str
    settings: AccordSettings
    mapping: Mapping
    upper: datetime
    full: bool
    reconcile: bool | None


@dataclass(frozen=True)
class Pending:
    """Sent during a pull: the touch keys its read may still write (``Batch.pending``), once stored."""

    source: str
    keys: frozenset[str]


@dataclass(frozen=True)
class Failed:
    line: str  # the error in a line, for the run's message (no SQL, no parameters)
    detail: str  # the child's traceback, for the log
    error: BaseException | None = None  # a pull's error, as the sync would have seen it (``portable``)
    causes: tuple[BaseException, ...] = field(default=())  # its __cause__/__context__ chain, as stand-ins


@dataclass(frozen=True)
class LogLine:
    record: logging.LogRecord  # message formatted, no args, the traceback as text


class RemoteError(RuntimeError):
    """An error of the child whose own type could not be carried over: its type's name and message."""


class RemoteCause(Exception):
    """A link of an error's cause chain: type and first line, and the ``text`` (an API's answer body)
    that ``flows.failures`` reads for field names."""

    def __init__(self, line: str, text: str | None = None) -> None:
        super().__init__(line)
        self.text = text


CAUSES_KEPT = 5


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def portable(exc: BaseException) -> tuple[BaseException, tuple[BaseException, ...]]:
    """``exc`` as it pickles and comes back the same (type and message), else a ``RemoteError``
    naming its type; and its cause chain as ``RemoteCause``s (pickling drops ``__cause__``)."""
    try:
        copy = pickle.loads(pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL))  # noqa: S301  # made here
        if type(copy) is not type(exc) or str(copy) != str(exc):
            raise TypeError("changed in a pickle round trip")
    except Exception:  # its first line only, as a run's error shows it (no SQL, no parameters)
        copy = RemoteError(_first_line(exc))
    causes: list[BaseException] = []
    seen = {id(exc)}
    current = exc.__cause__ or exc.__context__
    while current is not None and id(current) not in seen and len(causes) < CAUSES_KEPT:
        seen.add(id(current))
        text = getattr(current, "text", None)
        causes.append(RemoteCause(_first_line(current), text if isinstance(text, str) else None))
        current = current.__cause__ or current.__context__
    return copy, tuple(causes)


def relinked(failed: Failed) -> BaseException | None:
    """The error of a ``Failed`` with its cause chain linked again (the parent's side of ``portable``)."""
    if failed.error is None:
        return None
    current = failed.error
    for cause in failed.causes:
        current.__cause__ = cause
        current = cause
    return failed.error


_send_lock = threading.Lock()  # the pull's threads log while the main thread may answer


def send(stream: BinaryIO, message: Any) -> None:
    with _send_lock:
        pickle.dump(message, stream, protocol=pickle.HIGHEST_PROTOCOL)
        stream.flush()


class ForwardHandler(logging.Handler):
    """Sends each record to the sync's process, made picklable the way ``QueueHandler`` does."""

    def __init__(self, stream: BinaryIO) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            exc_text = record.exc_text or (
                logging.Formatter().formatException(record.exc_info) if record.exc_info else None
            )
            plain = logging.makeLogRecord(
                {
                    "name": record.name,
                    "levelno": record.levelno,
                    "levelname": record.levelname,
                    "pathname": record.pathname,
                    "filename": record.filename,
                    "module": record.module,
                    "lineno": record.lineno,
                    "funcName": record.funcName,
                    "created": record.created,
                    "msecs": record.msecs,
                    "relativeCreated": record.relativeCreated,
                    "thread": record.thread,
                    "threadName": record.threadName,
                    "process": record.process,
                    "processName": "unify-child",
                    "msg": message,
                    "args": None,
                    "exc_text": exc_text,
                    "stack_info": record.stack_info,
                }
            )
            send(self.stream, LogLine(plain))
        except Exception:
            self.handleError(record)


def main() -> int:
    # Run as ``__main__``: the messages' classes are taken from the module by its name, so that
    # what is pickled here names ``flows.unify_child``, as the parent's do.
    from flows import unify_child as messages
    from flows.engine import _one_line, die_with_parent, pull_in_child, unify_partition_in_child, warm_unify_child

    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # print() and libraries writing to stdout go to stderr from here on
    sys.stdout = sys.stderr
    inbox = sys.stdin.buffer
    hello = pickle.load(inbox)  # noqa: S301  # our own parent's messages, on a pipe only it holds
    if not isinstance(hello, messages.Hello):
        raise SystemExit(f"unify child: expected a Hello first, got {type(hello).__name__}")
    die_with_parent(hello.parent)
    root = logging.getLogger()
    root.handlers[:] = [messages.ForwardHandler(protocol_out)]
    root.setLevel(hello.log_level)
    messages.send(protocol_out, messages.Ready(warm_unify_child(hello.url, hello.pulls)))
    while True:
        try:
            request = pickle.load(inbox)  # noqa: S301  # as above
        except EOFError:
            return 0
        try:
            if isinstance(request, messages.Pull):
                result: Any = pull_in_child(
                    hello.url,
                    request,
                    lambda source, keys: messages.send(protocol_out, messages.Pending(source, keys)),
                )
            else:
                result = unify_partition_in_child(
                    hello.url, request.mapping, request.now, request.partition, request.partitions, request.clients
                )
        except Exception as exc:
            error, causes = messages.portable(exc) if isinstance(request, messages.Pull) else (None, ())
            result = messages.Failed(_one_line(exc), traceback.format_exc(), error, causes)
        messages.send(protocol_out, result)


if __name__ == "__main__":
    raise SystemExit(main())
