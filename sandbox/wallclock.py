"""Wall-clock text of instants in a zone, fast enough to stamp every item of a large page.

``datetime.astimezone`` to a ``ZoneInfo`` zone and ``isoformat``/``strftime`` on the result cost a
few microseconds each, and a full sync of the medium org formats about 250,000 timestamps. A
zone's UTC offset only changes at its transitions, so ``WallClock`` learns the offset once per UTC
hour (the same at both ends of the hour; an hour with a transition inside is converted exactly
every time), shifts the instant by it and builds the text from the shifted fields, with the date
and offset texts cached. The results are exactly those of ``moment.astimezone(zone)`` formatted
the old way; ``tests/sandbox/test_wallclock.py`` compares them over many zones and centuries.

Years before 1000 (where ``%Y`` and ``isoformat`` disagree) and naive datetimes are left to the
callers' exact path: ``split`` answers ``None``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Final

_LAST_TICK: Final = timedelta(hours=1, microseconds=-1)
_UNKNOWN: Final = timedelta.max  # never an offset (offsets are under a day)
MAX_ENTRIES = 200_000  # learned hours (or dates) kept before a table starts afresh
# The fields are spelled with lookup tables: int formatting costs more than all the rest together.
_TWO: Final = tuple(f"{n:02d}" for n in range(100))
_THREE: Final = tuple(f"{n:03d}" for n in range(1000))
_HOURS_MINUTES: Final = tuple(f"T{h:02d}:{m:02d}:" for h in range(24) for m in range(60))


class WallClock:
    """Instants as wall-clock text in ``zone``."""

    def __init__(self, zone: tzinfo) -> None:
        self.zone = zone
        self._offsets: dict[int, timedelta | None] = {}  # UTC hour number -> the offset all that hour
        self._dates: dict[int, str] = {}  # proleptic ordinal -> "YYYY-MM-DD"
        self._z: dict[timedelta, str] = {}  # offset -> strftime's %z ("-0800")
        self._iso: dict[timedelta, str] = {}  # offset -> isoformat's ("-08:00", "Z" for zero)

    def split(self, moment: datetime) -> tuple[datetime, timedelta] | None:
        """``(local, offset)``: ``local`` has the wall-clock fields of ``moment.astimezone(zone)``
        (its tzinfo is UTC and means nothing), ``offset`` is the zone's offset then. ``None`` for
        naive datetimes and local years before 1000: callers format those the exact way."""
        if moment.tzinfo is None:
            return None
        utc = moment if moment.tzinfo is UTC else moment.astimezone(UTC)
        hour = utc.toordinal() * 24 + utc.hour
        offset = self._offsets.get(hour, _UNKNOWN)
        if offset is _UNKNOWN:
            offset = self._learn(utc, hour)
        if offset is None:  # a transition inside this hour: convert exactly
            exact = utc.astimezone(self.zone).utcoffset()
            assert exact is not None
            offset = exact
        local = utc + offset
        return None if local.year < 1000 else (local, offset)

    def _learn(self, utc: datetime, hour: int) -> timedelta | None:
        start = utc.replace(minute=0, second=0, microsecond=0)
        first = start.astimezone(self.zone).utcoffset()
        last = (start + _LAST_TICK).astimezone(self.zone).utcoffset()
        offset = first if first == last else None
        if len(self._offsets) >= MAX_ENTRIES:
            self._offsets.clear()
        self._offsets[hour] = offset
        return offset

    def date(self, local: datetime) -> str:
        """``YYYY-MM-DD`` of a ``split`` result."""
        ordinal = local.toordinal()
        text = self._dates.get(ordinal)
        if text is None:
            if len(self._dates) >= MAX_ENTRIES:
                self._dates.clear()
            text = self._dates[ordinal] = local.date().isoformat()
        return text

    def z(self, offset: timedelta) -> str:
        """The offset as ``strftime("%z")`` writes it: ``-0800``."""
        text = self._z.get(offset)
        if text is None:
            text = self._z[offset] = datetime(2000, 1, 1, tzinfo=timezone(offset)).strftime("%z")
        return text

    def iso_offset(self, offset: timedelta) -> str:
        """The offset as RFC 3339 text: isoformat's ``-08:00``, and ``Z`` for zero."""
        text = self._iso.get(offset)
        if text is None:
            text = datetime(2000, 1, 1, tzinfo=timezone(offset)).isoformat()[19:]
            text = self._iso[offset] = "Z" if text == "+00:00" else text
        return text

    # -- the formats the emulators write ---------------------------------------------------------
    def millis_z(self, moment: datetime) -> str | None:
        """``2022-12-08T02:22:18.889-0800`` (Jira), or ``None`` for ``split``'s exceptions."""
        found = self.split(moment)
        if found is None:
            return None
        local, offset = found
        date = self._dates.get(local.toordinal()) or self.date(local)
        clock = _HOURS_MINUTES[local.hour * 60 + local.minute] + _TWO[local.second]
        return date + clock + "." + _THREE[local.microsecond // 1000] + (self._z.get(offset) or self.z(offset))

    def seconds_iso(self, moment: datetime) -> str | None:
        """``2023-10-18T08:30:00+03:00``, ``Z`` for zero (Google event times), or ``None``."""
        found = self.split(moment)
        if found is None:
            return None
        local, offset = found
        date = self._dates.get(local.toordinal()) or self.date(local)
        clock = _HOURS_MINUTES[local.hour * 60 + local.minute] + _TWO[local.second]
        return date + clock + (self._iso.get(offset) or self.iso_offset(offset))


_UTC_DATES: dict[int, str] = {}


def utc_millis(moment: datetime) -> str | None:
    """``2023-09-16T08:44:36.296Z`` (Google's stamps); ``None`` for naive datetimes and years
    before 1000, which callers format the exact way. UTC needs no offsets: no ``WallClock``."""
    if moment.tzinfo is not UTC:
        if moment.tzinfo is None:
            return None
        moment = moment.astimezone(UTC)
    if moment.year < 1000:
        return None
    ordinal = moment.toordinal()
    date = _UTC_DATES.get(ordinal)
    if date is None:
        if len(_UTC_DATES) >= MAX_ENTRIES:
            _UTC_DATES.clear()
        date = _UTC_DATES[ordinal] = moment.date().isoformat()
    clock = _HOURS_MINUTES[moment.hour * 60 + moment.minute] + _TWO[moment.second]
    return date + clock + "." + _THREE[moment.microsecond // 1000] + "Z"


_CLOCKS: dict[tzinfo, WallClock] = {}


def wall_clock(zone: tzinfo) -> WallClock:
    """The shared ``WallClock`` of ``zone`` (zones are few: the calendars' and the requested ones)."""
    clock = _CLOCKS.get(zone)
    if clock is None:
        if len(_CLOCKS) >= 1000:
            _CLOCKS.clear()
        clock = _CLOCKS[zone] = WallClock(zone)
    return clock
