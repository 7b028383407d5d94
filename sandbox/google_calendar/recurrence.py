"""Recurring series: RRULE/EXRULE/RDATE/EXDATE lines expanded with ``dateutil.rrule``.

Pure: no store, no HTTP. A series is expanded in its own time zone in wall-clock time (a weekly
09:00 meeting stays at 09:00 across daylight-saving changes, as Google does); all-day series are
expanded as naive local midnights. Expansion is lazy and always bounded by a window, so an endless
series costs only the occurrences a query asks for, never more than ``MAX_OCCURRENCES``.

Instance ids follow Google: ``<seriesId>_<YYYYMMDDTHHMMSSZ>`` (original start in UTC) for timed
series and ``<seriesId>_<YYYYMMDD>`` for all-day ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from dateutil.rrule import rrule, rruleset, rrulestr

from sandbox.google_calendar.times import utc_suffix, zone

MAX_OCCURRENCES = 10_000  # per series and query: a guard against pathological rules
_FREQUENCIES = {"YEARLY", "MONTHLY", "WEEKLY", "DAILY", "HOURLY"}  # SECONDLY/MINUTELY are refused
_LINE = re.compile(r"(?P<name>[A-Za-z-]+)(?P<params>(;[^:]*)?):(?P<value>.+)\Z")
_DATE_TIME = re.compile(r"(\d{8})(T(\d{6})(Z?))?\Z")


class RecurrenceError(ValueError):
    """A recurrence line Google would refuse (answered as 400 by the emulator)."""


class Recurrence:
    """The occurrences of one series.

    ``dtstart`` is the series' first start: aware (any zone) for timed series, a date or naive
    midnight for all-day ones. ``where`` is the series' zone: timed occurrences are aware datetimes
    in it, all-day occurrences are naive midnights of local dates.
    """

    def __init__(self, lines: Sequence[str], dtstart: datetime | date, where: tzinfo, *, all_day: bool) -> None:
        self.all_day = all_day
        self.where = where
        if all_day:
            day = dtstart.date() if isinstance(dtstart, datetime) else dtstart
            self.dtstart = datetime.combine(day, time())
        else:
            if not isinstance(dtstart, datetime) or dtstart.tzinfo is None:
                raise RecurrenceError("a timed series needs an aware start")
            self.dtstart = dtstart.astimezone(where)
        self._set = rruleset()
        has_rule = False
        for raw in lines:
            line = raw.strip()
            if not line:
                continue
            m = _LINE.match(line)
            if m is None:
                raise RecurrenceError(f"unreadable recurrence line {line!r}")
            name = m.group("name").upper()
            params = _params(m.group("params"))
            value = m.group("value")
            if name in ("RRULE", "EXRULE"):
                rule = self._rule(value)
                if name == "RRULE":
                    self._set.rrule(rule)
                    has_rule = True
                else:
                    self._set.exrule(rule)
            elif name in ("RDATE", "EXDATE"):
                moments = [self._moment(v, params) for v in value.split(",") if v.strip()]
                for moment in moments:
                    if name == "RDATE":
                        self._set.rdate(moment)
                        has_rule = True
                    else:
                        self._set.exdate(moment)
            else:
                raise RecurrenceError(f"unsupported recurrence property {name}")
        if not has_rule:
            raise RecurrenceError("a recurrence needs an RRULE or RDATE")

    # -- parsing -------------------------------------------------------------------------------
    def _rule(self, value: str) -> rrule:
        parts: dict[str, str] = {}
        for item in value.split(";"):
            if not item:
                continue
            key, sep, val = item.partition("=")
            if not sep:
                raise RecurrenceError(f"unreadable rule part {item!r}")
            parts[key.strip().upper()] = val.strip()
        freq = parts.get("FREQ", "").upper()
        if freq not in _FREQUENCIES:
            raise RecurrenceError(f"unsupported FREQ {freq or '(missing)'}")
        if "COUNT" in parts and "UNTIL" in parts:
            raise RecurrenceError("COUNT and UNTIL must not both be given")
        if "UNTIL" in parts:
            parts["UNTIL"] = self._until(parts["UNTIL"])
        text = "RRULE:" + ";".join(f"{k}={v}" for k, v in parts.items())
        try:
            built = rrulestr(text, dtstart=self.dtstart)
        except (ValueError, TypeError, KeyError) as exc:
            raise RecurrenceError(f"invalid rule {value!r}: {exc}") from exc
        if not isinstance(built, rrule):
            raise RecurrenceError(f"invalid rule {value!r}")
        return built

    def _until(self, value: str) -> str:
        """UNTIL rewritten to what dateutil accepts for this series' kind of start."""
        m = _DATE_TIME.match(value.upper())
        if m is None:
            raise RecurrenceError(f"invalid UNTIL {value!r}")
        day = datetime.strptime(m.group(1), "%Y%m%d")
        clock = m.group(3)
        is_utc = bool(m.group(4))
        if self.all_day:
            moment = day if clock is None else datetime.strptime(m.group(1) + clock, "%Y%m%d%H%M%S")
            if clock is None:
                moment = moment.replace(hour=23, minute=59, second=59)
            return moment.strftime("%Y%m%dT%H%M%S")
        if clock is None:
            local = datetime.combine(day.date(), time(23, 59, 59), tzinfo=self.where)
        elif is_utc:
            return value.upper()
        else:
            local = datetime.strptime(m.group(1) + clock, "%Y%m%d%H%M%S").replace(tzinfo=self.where)
        return local.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")

    def _moment(self, value: str, params: dict[str, str]) -> datetime:
        m = _DATE_TIME.match(value.strip().upper())
        if m is None:
            raise RecurrenceError(f"invalid date {value!r}")
        if params.get("VALUE", "DATE-TIME").upper() not in ("DATE", "DATE-TIME"):
            raise RecurrenceError("only DATE and DATE-TIME values are supported")
        day = datetime.strptime(m.group(1), "%Y%m%d")
        clock = m.group(3)
        if self.all_day:
            if clock is not None and m.group(4):
                utc = datetime.strptime(m.group(1) + clock, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
                return datetime.combine(utc.astimezone(self.where).date(), time())
            return day
        if clock is None:  # a date in a timed series: that day at the series' wall-clock start
            return datetime.combine(day.date(), self.dtstart.timetz())
        naive = datetime.strptime(m.group(1) + clock, "%Y%m%d%H%M%S")
        if m.group(4):
            return naive.replace(tzinfo=UTC)
        where = self.where
        if "TZID" in params:
            try:
                where = zone(params["TZID"])
            except ValueError as exc:
                raise RecurrenceError(str(exc)) from exc
        return naive.replace(tzinfo=where)

    # -- expansion -----------------------------------------------------------------------------
    def _key(self, moment: datetime) -> datetime:
        """A bound in the series' own terms: naive local time for all-day series."""
        if self.all_day:
            if moment.tzinfo is None:
                return moment
            return moment.astimezone(self.where).replace(tzinfo=None)
        if moment.tzinfo is None:
            raise ValueError("bounds of a timed series must be aware")
        return moment

    def occurrences(
        self, after: datetime | None, before: datetime, duration: timedelta = timedelta(0)
    ) -> Iterator[datetime]:
        """Starts of the occurrences overlapping ``(after, before)``, in order.

        An occurrence overlaps when it starts before ``before`` and ends after ``after`` (Google's
        timeMin/timeMax semantics); zero-length occurrences overlap when they start after ``after``.
        """
        end = self._key(before)
        if after is None:
            iterator = iter(self._set)
        else:
            lower = self._key(after) - duration
            iterator = self._set.xafter(lower, inc=False)
        for produced, start in enumerate(iterator):
            if start >= end or produced >= MAX_OCCURRENCES:
                return
            yield start

    def first_overlapping(self, after: datetime | None, before: datetime, duration: timedelta) -> datetime | None:
        return next(self.occurrences(after, before, duration), None)

    def contains(self, start: datetime) -> bool:
        """Whether ``start`` is an occurrence (after EXDATE/EXRULE)."""
        key = self._key(start)
        found = next(self._set.xafter(key, count=1, inc=True), None)
        return found is not None and found == key

    def suffix(self, start: datetime) -> str:
        return start.strftime("%Y%m%d") if self.all_day else utc_suffix(start)


def _params(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(";"):
        if "=" in item:
            key, _, value = item.partition("=")
            out[key.strip().upper()] = value.strip()
    return out


def instance_id(series_id: str, start: datetime, *, all_day: bool) -> str:
    """Google's id of the occurrence of ``series_id`` that originally starts at ``start``."""
    suffix = start.strftime("%Y%m%d") if all_day else utc_suffix(start)
    return f"{series_id}_{suffix}"


def split_instance_id(event_id: str) -> tuple[str, datetime | date] | None:
    """``(series id, original start)`` of an instance id; None when ``event_id`` is not one.

    Timed instances give an aware UTC datetime, all-day instances a date.
    """
    base, sep, suffix = event_id.rpartition("_")
    if not sep or not base:
        return None
    m = _DATE_TIME.match(suffix)
    if m is None:
        return None
    try:
        if m.group(3) is None:
            return base, datetime.strptime(m.group(1), "%Y%m%d").date()
        if not m.group(4):
            return None
        moment = datetime.strptime(m.group(1) + m.group(3), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return base, moment
