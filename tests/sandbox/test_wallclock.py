"""WallClock's fast timestamp text is exactly what astimezone + strftime/isoformat write."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

import pytest

from sandbox.clock import Clock
from sandbox.google_calendar.times import format_local, format_stamp
from sandbox.jira.store import JiraStore
from sandbox.wallclock import WallClock

ZONES: list[tzinfo] = [
    UTC,
    ZoneInfo("America/Los_Angeles"),
    ZoneInfo("Europe/Amsterdam"),
    ZoneInfo("Australia/Lord_Howe"),  # half-hour DST
    ZoneInfo("Asia/Kathmandu"),  # +05:45
    ZoneInfo("Africa/Monrovia"),  # -00:44:30 until 1972: offsets with seconds
    ZoneInfo("Pacific/Apia"),  # skipped a whole day in 2011
    ZoneInfo("America/St_Johns"),
    ZoneInfo("Europe/Dublin"),  # negative DST
    timezone(timedelta(hours=5, minutes=30, seconds=7)),
]


def jira_old(moment: datetime, zone: tzinfo) -> str:
    local = moment.astimezone(zone)
    return f"{local:%Y-%m-%dT%H:%M:%S}.{local.microsecond // 1000:03d}{local:%z}"


def local_old(moment: datetime, zone: tzinfo) -> str:
    text = moment.astimezone(zone).replace(microsecond=0).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def stamp_old(moment: datetime) -> str:
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def transitions(zone: tzinfo, start: datetime, end: datetime) -> list[datetime]:
    """Instants (to the microsecond) where the zone's offset changes, found by bisection."""
    found = []
    step = timedelta(days=1)
    moment, offset = start, start.astimezone(zone).utcoffset()
    while moment < end:
        nxt = moment + step
        following = nxt.astimezone(zone).utcoffset()
        if offset != following:
            low, high = moment, nxt
            while high - low > timedelta(microseconds=1):
                middle = low + (high - low) / 2
                if middle.astimezone(zone).utcoffset() == low.astimezone(zone).utcoffset():
                    low = middle
                else:
                    high = middle
            found.append(high)
        moment, offset = nxt, following
    return found


def instants(zone: tzinfo, rng: random.Random) -> list[datetime]:
    moments = [
        datetime(1000, 1, 2, tzinfo=UTC) + timedelta(microseconds=rng.randrange(9_000 * 365 * 86_400 * 10**6))
        for _ in range(1_500)
    ]
    moments += [
        datetime(1960, 1, 1, tzinfo=UTC) + timedelta(microseconds=rng.randrange(100 * 365 * 86_400 * 10**6))
        for _ in range(1_500)
    ]
    for edge in transitions(zone, datetime(1960, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC))[::4]:
        moments += [edge + timedelta(microseconds=d) for d in (-1_000_001, -1, 0, 1, 999, 59_999_999)]
    # the same instants through other zones' tzinfo, and whole-hour boundaries
    moments += [m.astimezone(ZoneInfo("Asia/Tokyo")) for m in moments[:200]]
    moments += [m.replace(minute=0, second=0, microsecond=0) for m in moments[:200]]
    return moments


@pytest.mark.parametrize("zone", ZONES, ids=str)
def test_formats_match_astimezone(zone: tzinfo) -> None:
    rng = random.Random(str(zone))
    clock = WallClock(zone)
    fast = 0
    for moment in instants(zone, rng):
        text = clock.millis_z(moment)
        fast += text is not None
        assert text in (None, jira_old(moment, zone)), moment
        assert clock.millis_z_json(moment) in (None, f'"{jira_old(moment, zone)}"'.encode()), moment
        assert clock.seconds_iso(moment) in (None, local_old(moment, zone)), moment
        assert format_local(moment, zone) == local_old(moment, zone), moment
        assert format_stamp(moment) == stamp_old(moment), moment
    assert fast > 3_000


def test_jira_timestamps() -> None:
    store = JiraStore(Clock(), "America/Los_Angeles")
    rng = random.Random(5)
    for moment in instants(store.zone, rng)[:2_000]:
        assert store.format_time(moment) == jira_old(moment, store.zone)


def test_only_old_years_and_naive_times_take_the_exact_path() -> None:
    clock = WallClock(ZoneInfo("America/Los_Angeles"))
    assert clock.split(datetime(2026, 3, 8, 10, 30, tzinfo=UTC)) is not None
    assert clock.split(datetime(999, 6, 1, tzinfo=UTC)) is None
    assert clock.split(datetime(2026, 3, 8, 10, 30)) is None
    naive = datetime(2026, 3, 8, 10, 30, 1, 2000)
    assert format_stamp(naive) == stamp_old(naive)
    early = datetime(999, 6, 1, 12, tzinfo=UTC)
    assert format_stamp(early) == stamp_old(early)
    assert format_local(early, ZoneInfo("Europe/Amsterdam")) == local_old(early, ZoneInfo("Europe/Amsterdam"))
