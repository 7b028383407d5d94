"""How long a computed engagement stays as it is when only time passes.

Unify compares record dates with ``now`` (is a meeting past, how many days since a stakeholder
was seen, is an issue overdue, ...). A ``Clock`` answers those comparisons exactly as the plain
expressions would, and remembers the earliest instant after ``now`` at which any answer it gave
would be different: ``until``. As long as every comparison with ``now`` that an engagement's
computation makes goes through one ``Clock``, that engagement is a function of the records and of
these answers only, so unify over the same records at any ``t`` with ``now <= t < until`` gives the
same engagement (``until`` None: time alone never changes it).

Conventions. Instants are aware datetimes (UTC in Accord); dates are days of ``now``'s time zone
(UTC), each starting at its midnight. Time is discrete at the microsecond, the resolution of
``datetime``: a strict comparison ``t < now`` first holds at ``t + 1 µs`` (``TICK``). An instant
that cannot be represented (beyond ``datetime.max``) is never reached and records nothing.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

TICK = timedelta(microseconds=1)  # the smallest step of a datetime
DAY = timedelta(days=1)


def _shifted(t: datetime, delta: timedelta) -> datetime | None:
    try:
        return t + delta
    except OverflowError:
        return None


class Clock:
    """``now`` for one engagement's computation, and ``until``: the earliest later instant at which
    any comparison made through it would answer otherwise (None: none ever would)."""

    __slots__ = ("now", "until")

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.until: datetime | None = None

    @classmethod
    def of(cls, now: datetime | Clock) -> Clock:
        """``now`` itself when it is a Clock, else a fresh Clock at ``now`` (whose record is dropped)."""
        return now if isinstance(now, Clock) else cls(now)

    def changes_at(self, t: datetime | None) -> None:
        """Some answer given so far is different from ``t`` on (``t`` after ``now``)."""
        if t is not None and t > self.now and (self.until is None or t < self.until):
            self.until = t

    # -- instants -----------------------------------------------------------------------------------
    def passed(self, t: datetime) -> bool:
        """``t <= now``: false until ``t``, true from ``t`` on."""
        if t <= self.now:
            return True
        self.changes_at(t)
        return False

    def before(self, t: datetime) -> bool:
        """``t < now``: true from ``t + 1 µs`` on."""
        if t < self.now:
            return True
        self.changes_at(_shifted(t, TICK))
        return False

    def within(self, t: datetime, span: timedelta) -> bool:
        """``now - t <= span``: no more than ``span`` since ``t``; false from ``t + span + 1 µs`` on."""
        if self.now - t <= span:
            self.changes_at(_shifted(t, span + TICK))
            return True
        return False

    def due_within(self, t: datetime, span: timedelta) -> bool:
        """``t - now <= span``: ``t`` no more than ``span`` ahead; true from ``t - span`` on."""
        if t - self.now <= span:
            return True
        self.changes_at(_shifted(t, -span))
        return False

    def days_since(self, t: datetime) -> int:
        """``(now - t).days``: whole days since ``t`` (floored); one more at ``t + (days + 1) days``."""
        days = (self.now - t).days
        self.changes_at(_shifted(t, (days + 1) * DAY))
        return days

    def days_until(self, t: datetime) -> int:
        """``(t - now).days``: whole days until ``t`` (floored); one less from ``t - days days + 1 µs``."""
        days = (t - self.now).days
        self.changes_at(_shifted(t, -days * DAY + TICK))
        return days

    def more_days_since(self, t: datetime, limit: int) -> bool:
        """``(now - t).days > limit``: true from ``t + (limit + 1) days`` on."""
        if (self.now - t).days > limit:
            return True
        self.changes_at(_shifted(t, (limit + 1) * DAY))
        return False

    def week_of(self, t: datetime, weeks: int) -> int | None:
        """Which of the last ``weeks`` weeks before ``now`` holds ``t`` (0: the oldest), as unify's
        throughput counts it: with ``start = now - weeks``, ``min(weeks - 1, int((t - start) / 1 week))``
        when ``start <= t < now``; None outside. ``t`` moves one week back each time ``now`` passes
        ``t`` plus a whole number of weeks (just after it, the week is half-open), and drops out when
        ``now - weeks`` passes it."""
        week = timedelta(weeks=1)
        start = self.now - timedelta(weeks=weeks)
        if not start <= t < self.now:
            if t >= self.now:
                self.changes_at(_shifted(t, TICK))
            return None
        index = min(weeks - 1, int((t - start) / week))
        # (t - start) shrinks as now grows: its whole weeks drop by one when it falls below a whole
        # number of weeks. (The int of that float quotient is its floor, even a tick below a whole
        # number of weeks: tests/engagement/test_horizon.py checks the boundaries up to 26 weeks.)
        self.changes_at(_shifted(self.now, (t - start) % week + TICK))
        return index

    # -- days ---------------------------------------------------------------------------------------
    def _midnight(self, d: date) -> datetime | None:
        try:
            return datetime.combine(d, time(), tzinfo=self.now.tzinfo)
        except OverflowError:
            return None

    def _next_midnight(self, d: date) -> datetime | None:
        try:
            return self._midnight(d + DAY)
        except OverflowError:
            return None

    def date_passed(self, d: date) -> bool:
        """``d < now.date()``: true from the midnight that ends ``d``."""
        if d < self.now.date():
            return True
        self.changes_at(self._next_midnight(d))
        return False

    def days_since_date(self, d: date) -> int:
        """``(now.date() - d).days``: one more at every midnight."""
        today = self.now.date()
        self.changes_at(self._next_midnight(today))
        return (today - d).days
