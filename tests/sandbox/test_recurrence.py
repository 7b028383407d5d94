"""Series expansion and RFC 3339 helpers of the Calendar emulator: pure, no HTTP."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.google_calendar.recurrence import Recurrence, RecurrenceError, instance_id, split_instance_id
from sandbox.google_calendar.times import format_local, format_stamp, parse_datetime

BERLIN = ZoneInfo("Europe/Berlin")
FAR = datetime(2100, 1, 1, tzinfo=UTC)

starts = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)).map(
    lambda d: d.replace(second=0, microsecond=0, tzinfo=UTC)
)
rules = st.builds(
    lambda freq, interval, count: f"RRULE:FREQ={freq};INTERVAL={interval};COUNT={count}",
    st.sampled_from(["DAILY", "WEEKLY", "MONTHLY"]),
    st.integers(1, 3),
    st.integers(1, 40),
)


@settings(max_examples=150, deadline=None)
@given(
    rule=rules,
    start=starts,
    minutes=st.integers(0, 600),
    offset=st.integers(-400, 400),
    span=st.integers(0, 800),
    zone_name=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
)
def test_windowed_expansion_equals_filtering_the_whole_series(
    rule: str, start: datetime, minutes: int, offset: int, span: int, zone_name: str
) -> None:
    series = Recurrence([rule], start, ZoneInfo(zone_name), all_day=False)
    duration = timedelta(minutes=minutes)
    everything = list(series.occurrences(None, FAR, duration))
    after = start + timedelta(days=offset)
    before = after + timedelta(days=span, hours=1)
    expected = [s for s in everything if s < before and s + duration > after]
    assert list(series.occurrences(after, before, duration)) == expected
    assert everything == sorted(everything) and len(set(everything)) == len(everything)


@settings(max_examples=100, deadline=None)
@given(rule=rules, start=starts, picks=st.sets(st.integers(0, 39), max_size=5))
def test_exdates_remove_exactly_their_occurrences(rule: str, start: datetime, picks: set[int]) -> None:
    plain = list(Recurrence([rule], start, UTC, all_day=False).occurrences(None, FAR))
    excluded = [plain[i] for i in sorted(picks) if i < len(plain)]
    lines = [rule] + [f"EXDATE:{d.strftime('%Y%m%dT%H%M%SZ')}" for d in excluded]
    series = Recurrence(lines, start, UTC, all_day=False)
    assert list(series.occurrences(None, FAR)) == [d for d in plain if d not in excluded]
    assert not any(series.contains(d) for d in excluded)


@given(start=starts, all_day=st.booleans())
def test_instance_ids_round_trip(start: datetime, all_day: bool) -> None:
    event_id = instance_id("abc123def", start, all_day=all_day)
    base, original = split_instance_id(event_id) or ("", None)
    assert base == "abc123def"
    assert original == (start.date() if all_day else start)


def test_weekly_series_keeps_wall_clock_time_across_dst() -> None:
    first = datetime(2026, 3, 16, 9, 0, tzinfo=BERLIN)  # DST starts on 29 March
    series = Recurrence(["RRULE:FREQ=WEEKLY;COUNT=4"], first, BERLIN, all_day=False)
    got = list(series.occurrences(None, FAR))
    assert [d.astimezone(BERLIN).hour for d in got] == [9, 9, 9, 9]
    assert [d.astimezone(UTC).hour for d in got] == [8, 8, 7, 7]
    assert [series.suffix(d) for d in got][2] == "20260330T070000Z"


def test_overlap_bounds_are_exclusive() -> None:
    first = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    series = Recurrence(["RRULE:FREQ=DAILY;COUNT=3"], first, UTC, all_day=False)
    hour = timedelta(hours=1)
    # an occurrence ending exactly at the lower bound is out; one starting exactly at the upper bound too
    assert list(series.occurrences(first + hour, first + timedelta(days=1), hour)) == []
    assert list(series.occurrences(first + hour - timedelta(seconds=1), first + timedelta(days=1), hour)) == [first]


def test_until_forms_and_all_day_series() -> None:
    first = datetime(2026, 1, 5, 10, 0, tzinfo=BERLIN)
    for until in ("20260107T235959Z", "20260107T120000", "20260107"):
        series = Recurrence([f"RRULE:FREQ=DAILY;UNTIL={until}"], first, BERLIN, all_day=False)
        assert len(list(series.occurrences(None, FAR))) == 3, until
    days = Recurrence(
        ["RRULE:FREQ=DAILY;UNTIL=20260109", "EXDATE;VALUE=DATE:20260107"],
        date(2026, 1, 5),
        BERLIN,
        all_day=True,
    )
    got = list(days.occurrences(datetime(2026, 1, 4, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC), timedelta(days=1)))
    assert [days.suffix(d) for d in got] == ["20260105", "20260106", "20260108", "20260109"]


@pytest.mark.parametrize(
    "line",
    [
        "RRULE:FREQ=DAILY;COUNT=3;UNTIL=20260101T000000Z",
        "RRULE:FREQ=SECONDLY;COUNT=3",
        "RRULE:COUNT=3",
        "RRULE:FREQ=DAILY;BYDAY=XX",
        "FOO:BAR",
        "EXDATE:notadate",
    ],
)
def test_invalid_lines_are_refused(line: str) -> None:
    with pytest.raises(RecurrenceError):
        Recurrence(
            ["RRULE:FREQ=DAILY;COUNT=2", line] if line.startswith("EX") else [line],
            datetime(2026, 1, 1, tzinfo=UTC),
            UTC,
            all_day=False,
        )


def test_endless_series_is_expanded_only_within_the_window() -> None:
    series = Recurrence(["RRULE:FREQ=DAILY"], datetime(2020, 1, 1, 8, tzinfo=UTC), UTC, all_day=False)
    after = datetime(2026, 6, 1, tzinfo=UTC)
    got = list(series.occurrences(after, after + timedelta(days=7)))
    assert len(got) == 7 and got[0] == datetime(2026, 6, 1, 8, tzinfo=UTC)


def test_rfc3339_forms() -> None:
    assert parse_datetime("2023-10-18T08:30:00+03:00") == datetime(2023, 10, 18, 5, 30, tzinfo=UTC)
    assert parse_datetime("2023-09-16T08:44:36.296123456Z").microsecond == 296123
    with pytest.raises(ValueError, match="without an offset"):
        parse_datetime("2023-09-16T08:44:36")
    assert parse_datetime("2023-09-16T08:44", default_zone=BERLIN).utcoffset() == timedelta(hours=2)
    assert format_stamp(datetime(2023, 9, 16, 8, 44, 36, 296999, tzinfo=UTC)) == "2023-09-16T08:44:36.296Z"
    assert format_local(datetime(2023, 10, 18, 5, 30, tzinfo=UTC), ZoneInfo("Europe/Istanbul")) == (
        "2023-10-18T08:30:00+03:00"
    )
    assert format_local(datetime(2023, 10, 18, 5, 30, tzinfo=UTC), UTC) == "2023-10-18T05:30:00Z"
