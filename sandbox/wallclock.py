"""Wall-clock text of instants in a zone, fast enough to stamp every item of a large page.

``datetime.astimezone`` to a ``ZoneInfo`` zone and ``isoformat``/``strftime`` on the result cost a
few microseconds each, and a full sync of the medium org formats about 250,000 timestamps. A
zone's UTC offset only changes at its transitions, so ``WallClock`` works per UTC hour: when the
offset is the same at both ends of the hour and a whole number of hours (most zones, most of the
time), every instant of that hour has the same local date and hour and the UTC minutes, seconds
and milliseconds, and its text is a cached "frame" (``2022-12-08T02:`` and ``-0800``) around
table-looked-up fields. Other hours (a transition inside, offsets like +05:30 or -00:44:30) shift
the instant by the offset learned for the hour, or convert it exactly when a transition falls in
it. The results are exactly those of ``moment.astimezone(zone)`` formatted the old way;
``tests/sandbox/test_wallclock.py`` compares them over many zones and centuries.

Years before 1000 (where ``%Y`` and ``isoformat`` disagree) and naive datetimes are left to the
callers' exact path: the methods answer ``None``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Final

_HOUR: Final = timedelta(hours=1)
_ZERO: Final = timedelta(0)
_LAST_TICK: Final = timedelta(hours=1, microseconds=-1)
_UNKNOWN: Final = timedelta.max  # never an offset (offsets are under a day)
MAX_ENTRIES = 200_000  # learned hours (or dates) kept before a table starts afresh
# Fields are spelled with lookup tables: int formatting costs more than all the rest together.
_TWO: Final = tuple(f"{n:02d}" for n in range(100))
_THREE: Final = tuple(f"{n:03d}" for n in range(1000))
_HOURS_MINUTES: Final = tuple(f"T{h:02d}:{m:02d}:" for h in range(24) for m in range(60))
_MINUTES_SECONDS: Final = tuple(f"{m:02d}:{s:02d}" for m in range(60) for s in range(60))
_MILLIS: Final = tuple(f".{n:03d}" for n in range(1000))
_MINUTES_SECONDS_BYTES: Final = tuple(text.encode() for text in _MINUTES_SECONDS)
_MILLIS_BYTES: Final = tuple(text.encode() for text in _MILLIS)

# A UTC hour whose instants share one local date and hour: "YYYY-MM-DDTHH:", the offset as %z and
# as isoformat writes it (Z for zero), and the first two as JSON string ends: b'"YYYY-...:', b'-0800"'.
# An hour without one (a transition inside, an offset of odd minutes, before 1000) has ().
_Frame = tuple[str, str, str, bytes, bytes]


class WallClock:
    """Instants as wall-clock text in ``zone``."""

    def __init__(self, zone: tzinfo) -> None:
        self.zone = zone
        self._frames: dict[int, _Frame | tuple[()]] = {}  # UTC hour number -> its frame (or () if none)
        self._offsets: dict[int, timedelta | None] = {}  # UTC hour number -> the offset all that hour
        self._dates: dict[int, str] = {}  # proleptic ordinal -> "YYYY-MM-DD"
        self._z: dict[timedelta, str] = {}  # offset -> strftime's %z ("-0800")
        self._iso: dict[timedelta, str] = {}  # offset -> isoformat's ("-08:00", "Z" for zero)

    # -- the formats the emulators write ---------------------------------------------------------
    def millis_z(self, moment: datetime) -> str | None:
        """``2022-12-08T02:22:18.889-0800`` (Jira), or ``None`` (naive, or before the year 1000)."""
        utc = moment if moment.tzinfo is UTC else _utc(moment)
        if utc is None:
            return None
        hour = utc.toordinal() * 24 + utc.hour
        frame = self._frames.get(hour)
        if frame is None:
            frame = self._frame(utc, hour)
        if frame:
            return (
                frame[0] + _MINUTES_SECONDS[utc.minute * 60 + utc.second] + _MILLIS[utc.microsecond // 1000] + frame[1]
            )
        found = self.split(utc)
        if found is None:
            return None
        local, offset = found
        clock = _HOURS_MINUTES[local.hour * 60 + local.minute] + _TWO[local.second]
        return self.date(local) + clock + "." + _THREE[local.microsecond // 1000] + self.z(offset)

    def millis_z_json(self, moment: datetime) -> bytes | None:
        """``millis_z`` as a JSON string in UTF-8 (with its quotes)."""
        utc = moment if moment.tzinfo is UTC else _utc(moment)
        if utc is None:
            return None
        frame = self._frames.get(utc.toordinal() * 24 + utc.hour)
        if frame:
            return (
                frame[3]
                + _MINUTES_SECONDS_BYTES[utc.minute * 60 + utc.second]
                + _MILLIS_BYTES[utc.microsecond // 1000]
                + frame[4]
            )
        text = self.millis_z(utc)
        return None if text is None else b'"' + text.encode() + b'"'

    def seconds_iso(self, moment: datetime) -> str | None:
        """``2023-10-18T08:30:00+03:00``, ``Z`` for zero (Google event times), or ``None``."""
        utc = moment if moment.tzinfo is UTC else _utc(moment)
        if utc is None:
            return None
        hour = utc.toordinal() * 24 + utc.hour
        frame = self._frames.get(hour)
        if frame is None:
            frame = self._frame(utc, hour)
        if frame:
            return frame[0] + _MINUTES_SECONDS[utc.minute * 60 + utc.second] + frame[2]
        found = self.split(utc)
        if found is None:
            return None
        local, offset = found
        clock = _HOURS_MINUTES[local.hour * 60 + local.minute] + _TWO[local.second]
        return self.date(local) + clock + self.iso_offset(offset)

    # -- hours, offsets and their texts ----------------------------------------------------------
    def _frame(self, utc: datetime, hour: int) -> _Frame | tuple[()]:
        offset = self._offsets.get(hour, _UNKNOWN)
        if offset is _UNKNOWN:
            offset = self._learn(utc, hour)
        frame: _Frame | tuple[()] = ()
        if offset is not None and offset % _HOUR == _ZERO:
            local = utc.replace(minute=0, second=0, microsecond=0) + offset  # no overflow: _learn saw it
            if local.year >= 1000:
                prefix = self.date(local) + f"T{local.hour:02d}:"
                z = self.z(offset)
                frame = (prefix, z, self.iso_offset(offset), ('"' + prefix).encode(), (z + '"').encode())
        if len(self._frames) >= MAX_ENTRIES:
            self._frames.clear()
        self._frames[hour] = frame
        return frame

    def split(self, moment: datetime) -> tuple[datetime, timedelta] | None:
        """``(local, offset)``: ``local`` has the wall-clock fields of ``moment.astimezone(zone)``
        (its tzinfo is UTC and means nothing), ``offset`` is the zone's offset then; ``None`` for
        naive datetimes and local years before 1000."""
        utc = moment if moment.tzinfo is UTC else _utc(moment)
        if utc is None:
            return None
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
        """The offset all through the UTC hour of ``utc``, or None when it changes inside it."""
        start = utc.replace(minute=0, second=0, microsecond=0)
        try:
            first = start.astimezone(self.zone).utcoffset()
            last = (start + _LAST_TICK).astimezone(self.zone).utcoffset()
        except OverflowError:  # an end of the hour is beyond year 9999 there: convert exactly
            first, last = None, _ZERO
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


def _utc(moment: datetime) -> datetime | None:
    """An aware datetime in UTC (None for a naive one, which the callers' exact path reads)."""
    return None if moment.tzinfo is None else moment.astimezone(UTC)


_UTC_CLOCK: Final = WallClock(UTC)


def utc_millis(moment: datetime) -> str | None:
    """``2023-09-16T08:44:36.296Z`` (Google's stamps), or ``None`` (naive, or before 1000)."""
    utc = moment if moment.tzinfo is UTC else _utc(moment)
    if utc is None:
        return None
    hour = utc.toordinal() * 24 + utc.hour
    frame = _UTC_CLOCK._frames.get(hour)
    if frame is None:
        frame = _UTC_CLOCK._frame(utc, hour)
    if not frame:
        return None  # before the year 1000: UTC has a frame for every other hour
    return frame[0] + _MINUTES_SECONDS[utc.minute * 60 + utc.second] + _MILLIS[utc.microsecond // 1000] + "Z"


_CLOCKS: dict[tzinfo, WallClock] = {}


def wall_clock(zone: tzinfo) -> WallClock:
    """The shared ``WallClock`` of ``zone`` (zones are few: the calendars' and the requested ones)."""
    clock = _CLOCKS.get(zone)
    if clock is None:
        if len(_CLOCKS) >= 1000:
            _CLOCKS.clear()
        clock = _CLOCKS[zone] = WallClock(zone)
    return clock
