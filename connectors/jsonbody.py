"""API answers decoded by orjson when that gives exactly what the standard library's json gives.

The readers decode a few hundred megabytes of JSON in a full sync of a large org; orjson does it in
less than half the CPU of ``json``. Both build the same dicts, lists, strings and numbers from a
valid UTF-8 document with two exceptions: orjson refuses some inputs ``json`` accepts (NaN,
Infinity, lone surrogates, invalid UTF-8 read with replacement characters), and it reads integers
outside 64 bits as floats. So ``fast_loads`` answers ``NOT_DECODED`` for a document orjson refuses
or that holds a run of 19 or more digits (every integer outside 64 bits has one), and the caller
decodes that one the way its client library always did. ``tests/connectors/test_jsonbody.py``
holds the two to the same values.

orjson arrives with Prefect; without it every answer takes the library's own path.
"""

from __future__ import annotations

from typing import Any, Final

try:
    import orjson
except ImportError:  # pragma: no cover - the project's environment has it (a Prefect dependency)
    orjson = None  # type: ignore[assignment]  # (absent: every body takes the json path)

NOT_DECODED: Final = object()

# Digits to "0", everything else to " ": a run of 19 digits becomes a run of 19 zeros, found by bytes.find.
_DIGITS = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_LONG_NUMBER = b"0" * 19


def fast_loads(body: bytes) -> Any:
    """``json.loads(body.decode("utf-8"))`` through orjson, or ``NOT_DECODED``."""
    if orjson is None or body.translate(_DIGITS).find(_LONG_NUMBER) >= 0:
        return NOT_DECODED
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return NOT_DECODED
