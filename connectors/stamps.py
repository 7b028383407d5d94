"""Timestamps as the readers meet them on every record, written in Accord's form fast.

``format_stamp`` is ``engagement.records.iso`` (its fast path for UTC lives there) and ``iso_stamp``
is ``iso(parse_datetime(value))``, value for value and error for error
(``tests/connectors/test_stamps.py`` holds them to the two functions as they were written). Most of
the cost of the general path is the conversion to UTC and the formatting; ``iso_stamp`` skips both
for the shapes the APIs send on every record when the offset is a whole number of hours (nearly
every zone): then only the date and the hour change, minutes, seconds and milliseconds stay as
written, and the UTC hour of each (local hour, offset) is remembered. The text is still parsed
(``datetime.fromisoformat``, what ``parse_datetime`` calls), so a value it refuses raises exactly
what the general path raises.

- Jira and Salesforce: ``2024-04-25T15:50:37.000+0100``
- Google Calendar: ``2024-05-01T10:00:00+02:00`` and ``2024-12-05T16:45:00Z``
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from engagement.records import iso, parse_datetime

_fromisoformat = datetime.fromisoformat
_UTC_HOURS: dict[str, str] = {}  # "2024-04-25T15+01" -> "2024-04-25T14"
_MAX_HOURS = 20_000  # about 3 MB; two years of hours in one zone; starts over when full


format_stamp = iso  # the readers' name for it; iso itself has the fast path for UTC


def _utc_hour(key: str, local: datetime) -> str:
    """ "YYYY-MM-DDTHH" of the UTC hour that ``local`` (offset in whole hours) falls in."""
    found = _UTC_HOURS.get(key)
    if found is None:
        start = local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
        found = "%04d-%02d-%02dT%02d" % (start.year, start.month, start.day, start.hour)  # noqa: UP031 (fastest)
        if len(_UTC_HOURS) >= _MAX_HOURS:
            _UTC_HOURS.clear()
        _UTC_HOURS[key] = found
    return found


def _separated(value: str) -> bool:
    """ "YYYY-MM-DDTHH:MM:SS..." with every separator in place (not ISO's basic format)."""
    return value[4] == "-" and value[7] == "-" and value[10] == "T" and value[13] == ":" and value[16] == ":"


def iso_stamp(value: Any) -> str | None:
    """``iso(parse_datetime(value))``."""
    if value.__class__ is str and "Z" not in value[:-1]:
        size = len(value)
        try:
            if size == 28:
                # "2024-04-25T15:50:37.000+0100": parse_datetime puts a colon into the offset (its
                # sign 5 from the end, no colon 3 from the end) and hands that to fromisoformat.
                offset = value[23] in "+-" and value[25] != ":" and value[26:] == "00"
                if offset and value[19] == "." and _separated(value):
                    local = _fromisoformat(f"{value[:26]}:{value[26:]}")
                    return f"{_utc_hour(value[:13] + value[23:26], local)}{value[13:23]}Z"
            elif size == 25:
                # "2024-05-01T10:00:00+02:00": fromisoformat reads it as it is (nothing to insert or
                # replace: no sign 5 from the end, no "Z").
                offset = value[19] in "+-" and value[20] not in "+-" and value[22] == ":" and value[23:] == "00"
                if offset and _separated(value):
                    local = _fromisoformat(value)
                    return f"{_utc_hour(value[:13] + value[19:22], local)}{value[13:19]}.000Z"
            elif size == 20 and value[19] == "Z" and _separated(value):
                # "2024-12-05T16:45:00Z": already UTC, to the second.
                _fromisoformat(f"{value[:19]}+00:00")
                return f"{value[:19]}.000Z"
        except (ValueError, OverflowError):
            pass  # the general path raises its own error for it
    return format_stamp(parse_datetime(value))
