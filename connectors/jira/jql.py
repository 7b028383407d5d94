"""JQL text built by the connector: every value quoted and escaped, never pasted.

Project keys come from the API and from mappings, ids from earlier reads; all of them reach the
query through ``quote`` (strings) or ``issue_ids`` (checked digits). Date literals have minute
resolution and are read by Jira in the searching user's time zone (API-NOTES 2.2), so
``updated_since`` renders the bound in that zone, rounded down.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from connectors.incremental import minute_floor

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Jira reads an unknown user zone somewhere between UTC-12 and UTC+14; a bound rendered in UTC and
# moved back this far is early enough for any of them.
UNKNOWN_ZONE_MARGIN = timedelta(hours=14)


def quote(value: str) -> str:
    """``value`` as a JQL string literal: double quotes, with backslash, quote and controls escaped."""
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in value) + '"'


def project_in(keys: Iterable[str]) -> str:
    quoted = [quote(k) for k in keys]
    if not quoted:
        raise ValueError("project_in needs at least one project key")
    return f"project in ({', '.join(quoted)})"


def issue_ids(ids: Iterable[str | int]) -> str:
    """``id in (…)`` for numeric issue ids (anything else is refused, not quoted)."""
    checked = [str(i) for i in ids]
    bad = [i for i in checked if not i.isdigit()]
    if bad or not checked:
        raise ValueError(f"not numeric Jira issue ids: {bad[:3]!r}" if bad else "no issue ids given")
    return f"id in ({', '.join(checked)})"


def minute_literal(moment: datetime, zone: ZoneInfo) -> str:
    """The latest minute literal ("yyyy/MM/dd HH:mm") that names no instant after ``moment`` in ``zone``.

    Rounds down to the minute. In the hour a clock falls back, one wall time names two instants
    and Jira may read the later one, so the literal moves back until every reading is early enough.
    """
    if moment.tzinfo is None:
        raise ValueError("JQL bounds must be timezone-aware")
    candidate = moment
    for _ in range(4):
        local = minute_floor(candidate.astimezone(zone))
        wall = local.replace(tzinfo=None)
        latest = max(wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1))
        if latest <= moment:
            return f"{local:%Y/%m/%d %H:%M}"
        candidate -= timedelta(hours=1)
    raise ValueError(f"no unambiguous minute literal before {moment.isoformat()} in {zone.key}")


def updated_since(moment: datetime, zone: ZoneInfo | None) -> str:
    """``updated >= "<minute>"``, a bound no later than ``moment`` as the user's zone reads it.

    ``zone`` None (the user's zone is unknown) renders in UTC, moved back by the widest offset.
    """
    if zone is None:
        return f"updated >= {quote(minute_literal(moment - UNKNOWN_ZONE_MARGIN, ZoneInfo('UTC')))}"
    return f"updated >= {quote(minute_literal(moment, zone))}"
