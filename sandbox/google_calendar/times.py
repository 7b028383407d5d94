"""RFC 3339 as Google Calendar writes and reads it.

Google renders modification stamps in UTC with milliseconds (``2023-09-16T08:44:36.296Z``) and
event times with the offset of the zone they are shown in (``2023-10-18T08:30:00+03:00``, ``Z`` for
a zero offset). Query bounds (``timeMin``, ``timeMax``, ``updatedMin``) must carry an offset.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sandbox.wallclock import utc_millis, wall_clock

_RFC3339 = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<time>\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)"
    r"(?P<offset>[Zz]|[+-]\d{2}:?\d{2})?\Z"
)


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ``ValueError`` when unknown (a 400 for API callers)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def parse_datetime(text: str, *, default_zone: tzinfo | None = None) -> datetime:
    """An aware datetime from RFC 3339 text.

    Without an offset the text is read in ``default_zone``; when that is ``None`` too, the offset is
    mandatory (as for Google's query bounds) and ``ValueError`` is raised. Fractions beyond
    microseconds are cut, not rounded.
    """
    m = _RFC3339.match(text.strip())
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    clock = m.group("time")
    if len(clock) == 5:
        clock += ":00"
    if "." in clock:
        head, frac = clock.split(".")
        clock = f"{head}.{frac[:6].ljust(6, '0')}"
    offset = m.group("offset")
    naive = datetime.fromisoformat(f"{m.group('date')}T{clock}")
    if offset is None:
        if default_zone is None:
            raise ValueError(f"timestamp without an offset: {text!r}")
        return naive.replace(tzinfo=default_zone)
    if offset in ("Z", "z"):
        return naive.replace(tzinfo=UTC)
    sign = 1 if offset[0] == "+" else -1
    digits = offset[1:].replace(":", "")
    delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return naive.replace(tzinfo=_fixed(sign * delta))


@lru_cache(maxsize=64)
def _fixed(delta: timedelta) -> tzinfo:
    return timezone(delta)


def parse_date(text: str) -> date:
    """A ``yyyy-mm-dd`` all-day date; ``ValueError`` otherwise."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
        raise ValueError(f"not a date: {text!r}")
    return date.fromisoformat(text.strip())


def format_stamp(moment: datetime) -> str:
    """A modification stamp: UTC, milliseconds, ``Z`` (``2023-09-16T08:44:36.296Z``)."""
    text = utc_millis(moment)  # the same text, several times faster
    if text is not None:
        return text
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def format_local(moment: datetime, where: tzinfo) -> str:
    """An event time in ``where``: seconds and offset, ``Z`` for a zero offset."""
    fast = wall_clock(where).seconds_iso(moment)  # the same text, several times faster
    if fast is not None:
        return fast
    text = moment.astimezone(where).replace(microsecond=0).isoformat()
    if text.endswith("+00:00"):
        return text[:-6] + "Z"
    return text


def utc_suffix(moment: datetime) -> str:
    """The instance-id suffix of a timed occurrence: ``20240115T090000Z``."""
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def local_midnight(day: date, where: tzinfo) -> datetime:
    """The instant an all-day date begins in ``where`` (all-day events are read in the calendar's zone)."""
    return datetime(day.year, day.month, day.day, tzinfo=where)
