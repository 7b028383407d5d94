"""``connectors.stamps`` is ``iso`` and ``iso(parse_datetime(...))``, value for value and error for error.

The reference is ``parse_datetime`` as ``engagement.records`` has it now and ``iso`` as it was written
before its fast path for UTC (``reference_iso``): if either changes, these tests show where the fast
paths no longer agree."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from connectors import stamps
from connectors.stamps import format_stamp, iso_stamp
from engagement.records import iso, parse_datetime


def outcome(fn: Any, value: Any) -> tuple[str, Any]:
    try:
        result = fn(value)
    except Exception as exc:
        return ("error", (type(exc), str(exc)))
    if isinstance(result, datetime):
        return ("datetime", (result, result.tzinfo, result.utcoffset()))
    return ("value", result)


def reference_iso(value: datetime | None) -> str | None:
    """``engagement.records.iso`` without its fast path."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def same(value: Any) -> None:
    assert outcome(iso_stamp, value) == outcome(lambda v: reference_iso(parse_datetime(v)), value), value


FIXED = [
    None,
    "",
    "2024-04-25T15:50:37.000+0000",
    "2024-04-25T15:50:37.000-0800",
    "2025-01-07T12:39:29.793-0800",
    "2024-03-10T01:59:59.999+0530",
    "2024-02-29T23:30:00.000-1400",
    "0001-01-01T00:00:00.000+0000",
    "0001-01-01T00:00:00.000+0100",  # before year 1 in UTC: an error either way
    "9999-12-31T23:59:59.999+0000",
    "9999-12-31T23:59:59.999-0100",  # after year 9999 in UTC
    "2024-04-30T09:01:02.345Z",
    "2024-04-30T09:01:02.000Z",
    "2024-04-30T09:01:02Z",
    "2024-04-30T09:01:02.1Z",
    "2024-04-30T09:01:02.123456Z",
    "2024-04-30T09:01:02+00:00",
    "2024-04-30T09:01:02.000+00:00",
    "2024-04-30T09:01:02.000+05:45",
    "2024-04-30T09:01:02.00+05:30",
    "2024-04-30T09:01:02.000+05:3",
    "2024-04-30T09:01:02",
    "2024-04-30",
    "2024-04-30 09:01:02.000+0000",
    "2024-04-30t09:01:02.000+0000",
    "2024-04-30T09:01:02.000Z0000",
    "2024-04-30T09:01:02.000+000Z",
    "2024-04-30T09:01:02.000+0000Z",
    "2024-04-30T09:01:02Z+0000",
    "2024-04-30T09:01:02.0Z+00:00",
    "2024-04-30T09:01:02.000+2400",
    "2024-04-30T09:01:02.000+0060",
    "2024-04-30T24:00:00.000+0000",
    "2024-13-30T09:01:02.000+0000",
    "2024-04-31T09:01:02.000+0000",
    "2024-04-30T09:01:02.000-0000",
    "2024-04-30T09:01:02,000+0000",
    "2024-04-30T09:01:02.00Z",
    "2024-04-30T09:01:02.000ZZ",
    "20240430T090102.000000+0000",
    "abcdefghijTklmnopqrstuvw+xyz",
    "abcdefghijklmnopqrstuvwZ",
    "soon",
    "ZZZZZZZZZZTZZZZZZZZZZZZZZZZZ",
    "2024-04-30T09:01:02.000\uff0b0000",
    "\uff12\uff10\uff12\uff14-04-30T09:01:02.000+0000",
    datetime(2024, 4, 30, 9, 1, 2, 345678),
    datetime(2024, 4, 30, 9, 1, 2, tzinfo=timezone(timedelta(hours=-8))),
    datetime(2024, 4, 30, 9, 1, 2, 999999, tzinfo=UTC),
    0,
    1714467662,
    False,
]


class Text(str):
    """A str subclass: the fast paths are for exact str only."""


@pytest.mark.parametrize("value", [*FIXED, Text("2024-04-25T15:50:37.000+0000"), Text("2024-04-30T09:01:02.345Z")])
def test_fixed_values(value: Any) -> None:
    same(value)


digits = st.sampled_from("0123456789")
shape_chars = st.sampled_from("0123456789-+:.TZz tW\u0660")


@given(st.text(shape_chars, min_size=20, max_size=30))
@example("2024-04-25T15:50:37.000+0000")
def test_text_near_the_api_shapes(value: str) -> None:
    same(value)


SHAPES = ["jira", "calendar_offset", "calendar_z", "updated_z", "iso"]


def shaped(moment: datetime, offset_minutes: int, shape: str) -> str:
    local = moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    if shape == "jira":  # 2024-04-25T15:50:37.000+0100
        text = local.isoformat(timespec="milliseconds")
        return text[:-3] + text[-2:]
    if shape == "calendar_offset":  # 2024-05-01T10:00:00+02:00
        return local.isoformat(timespec="seconds")
    if shape == "calendar_z":  # 2024-12-05T16:45:00Z
        return moment.isoformat(timespec="seconds") + "Z"
    if shape == "updated_z":  # 2024-04-30T09:01:02.345Z
        return moment.isoformat(timespec="milliseconds") + "Z"
    return local.isoformat()


@given(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
    st.sampled_from(SHAPES),
)
def test_every_moment_in_each_api_shape(moment: datetime, offset_minutes: int, shape: str) -> None:
    same(shaped(moment, offset_minutes, shape))


@given(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
    st.integers(min_value=-14, max_value=14),
    st.sampled_from(SHAPES),
)
@example(datetime(1, 1, 1, 0, 30), 1, "jira")  # before year 1 in UTC
@example(datetime(9999, 12, 31, 23, 30), -1, "calendar_offset")  # after year 9999 in UTC
@example(datetime(2024, 2, 29, 23, 59, 59, 999000), -14, "jira")
@example(datetime(2024, 12, 31, 23, 0), -1, "jira")
def test_whole_hour_offsets_take_the_fast_path(moment: datetime, offset_hours: int, shape: str) -> None:
    same(shaped(moment, offset_hours * 60, shape))


def test_one_remembered_hour_serves_every_minute_of_it() -> None:
    stamps._UTC_HOURS.clear()
    for minute in range(60):
        text = f"2024-03-31T01:{minute:02d}:59.999+0100"
        same(text)
    assert stamps._UTC_HOURS == {"2024-03-31T01+01": "2024-03-31T00"}


def test_remembered_hours_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stamps, "_MAX_HOURS", 3)
    stamps._UTC_HOURS.clear()
    for hour in range(10):
        same(f"2024-03-31T{hour:02d}:00:00.000-0500")
        assert len(stamps._UTC_HOURS) <= 3


class Moment(datetime):
    """A datetime subclass: the fast path is for exact datetime only (a subclass may format itself)."""


@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)))
def test_iso_of_utc_is_the_reference(moment: datetime) -> None:
    assert iso(moment) == format_stamp(moment) == reference_iso(moment)


@given(
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)),
    st.one_of(
        st.none(),
        st.just(UTC),
        st.integers(min_value=-1439, max_value=1439).map(lambda m: timezone(timedelta(minutes=m))),
    ),
)
def test_iso_of_any_moment_is_the_reference(moment: datetime, zone: timezone | None) -> None:
    aware = moment.replace(tzinfo=zone)
    assert outcome(iso, aware) == outcome(reference_iso, aware)


@pytest.mark.parametrize(
    "moment",
    [
        None,
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(2024, 1, 1, 0, 0, 0, 999, tzinfo=UTC),
        datetime(2024, 1, 1, 0, 0, 0, 1000, tzinfo=UTC),
        datetime(2024, 4, 30, 9, 1, 2, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2024, 4, 30, 9, 1, 2, tzinfo=timezone(timedelta(0))),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2024, 4, 30, 9, 1, 2, 345678),
        Moment(2024, 4, 30, 9, 1, 2, 345678, tzinfo=UTC),
    ],
)
def test_iso_fixed(moment: datetime | None) -> None:
    assert format_stamp(moment) == iso(moment) == reference_iso(moment)
