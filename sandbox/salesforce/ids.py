"""Salesforce record ids: 15 case-sensitive characters plus a 3-character case-safe suffix.

A 15-character id is ``key prefix (3) + pod (3) + record number (9, base 62)``. The 18-character
form appends a checksum that encodes which of the 15 characters are upper case, so the id survives
case-insensitive systems. Every id the sandbox emits is the 18-character form, and every id it
accepts may be either form (as Salesforce accepts both).
"""

from __future__ import annotations

import itertools
import threading

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SUFFIX_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_ALNUM = frozenset(BASE62)
# Record numbers start high enough to mix upper- and lower-case letters, so the checksum matters.
_FIRST_RECORD_NUMBER = 1_234_567_890


def checksum(id15: str) -> str:
    """The 3-character case-safe suffix of a 15-character id."""
    suffix = []
    for chunk in range(3):
        flags = 0
        for position, char in enumerate(id15[chunk * 5 : chunk * 5 + 5]):
            if "A" <= char <= "Z":
                flags |= 1 << position
        suffix.append(_SUFFIX_ALPHABET[flags])
    return "".join(suffix)


def to18(id15: str) -> str:
    return id15 + checksum(id15)


def normalize(value: object) -> str | None:
    """The 18-character form of a 15- or 18-character id, or None when ``value`` is not a valid id.

    An 18-character id must carry the suffix its first 15 characters imply; the suffix itself is
    compared case-insensitively, as Salesforce does.
    """
    if not isinstance(value, str) or len(value) not in (15, 18) or not set(value) <= _ALNUM:
        return None
    base = value[:15]
    full = to18(base)
    if len(value) == 18 and value[15:].upper() != full[15:]:
        return None
    return full


def key_prefix(record_id: str) -> str:
    return record_id[:3]


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rest = divmod(number, 62)
        digits.append(BASE62[rest])
    if number:
        raise OverflowError("record number does not fit into the id")
    return "".join(reversed(digits))


class IdFactory:
    """Hands out new 18-character ids per key prefix, deterministically (same order, same ids)."""

    def __init__(self, pod: str) -> None:
        if len(pod) != 3 or not set(pod) <= _ALNUM:
            raise ValueError(f"pod must be 3 alphanumeric characters, got {pod!r}")
        self.pod = pod
        self._counters: dict[str, itertools.count[int]] = {}
        self._lock = threading.Lock()

    def new(self, prefix: str) -> str:
        if len(prefix) != 3 or not set(prefix) <= _ALNUM:
            raise ValueError(f"key prefix must be 3 alphanumeric characters, got {prefix!r}")
        with self._lock:
            # Each prefix starts elsewhere, so ids of different objects do not share their tails.
            start = _FIRST_RECORD_NUMBER + int(prefix, 36) * 7_919
            counter = self._counters.setdefault(prefix, itertools.count(start))
            number = next(counter)
        return to18(prefix + self.pod + _base62(number, 9))
