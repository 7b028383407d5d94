"""The unified project-engagement model: what Accord knows about one client project.

Plain frozen dataclasses with a stable JSON form (``to_json``), so the store can persist them,
the CLI can print them and tests can compare two of them for equality.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from datetime import date, datetime
from typing import Any, Literal

from engagement.records import iso

HealthLevel = Literal["green", "amber", "red"]
Severity = Literal["info", "amber", "red"]
SEVERITY_ORDER: dict[str, int] = {"info": 0, "amber": 1, "red": 2}


_FIELDS: dict[type, tuple[str, ...]] = {}


def _jsonable(value: Any) -> Any:
    """The JSON form of a model value: dataclasses as dicts of their fields, dates as ISO text.

    A direct walk (``dataclasses.asdict`` deep-copies every leaf first: it was most of the cost
    of storing the engagements of a large org)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    names = _FIELDS.get(type(value))
    if names is None and is_dataclass(value) and not isinstance(value, type):
        names = _FIELDS[type(value)] = tuple(f.name for f in fields(value))
    if names is not None:
        return {name: _jsonable(getattr(value, name)) for name in names}
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class Person:
    id: str | None
    name: str
    email: str | None


@dataclass(frozen=True)
class Stakeholder:
    """A client-side person on the engagement: a CRM contact with a role, or someone to review."""

    email: str | None  # normalized; None for a CRM contact without an address
    name: str | None
    contact_id: str | None  # None: not in the CRM (unknown stakeholder to review)
    role: str | None  # from OpportunityContactRole; None if they only attend meetings
    primary: bool
    last_touch: datetime | None  # last past client meeting they attended (not declined)
    engaged: bool  # touched within the quiet-days threshold
    confidence: Literal["exact", "domain"]  # domain: matched to the client by email domain only


@dataclass(frozen=True)
class Progress:
    total: int  # issues, epics excluded
    by_category: dict[str, int]  # new, indeterminate, done
    percent_complete: float  # 0..100, one decimal
    overdue: int
    blocked: int
    unassigned_open: int
    throughput: tuple[int, ...]  # issues done per week, oldest first, last `throughput_weeks` weeks
    oldest_overdue_days: int | None
    oldest_overdue_key: str | None = None  # the Jira key of the longest-overdue open issue


@dataclass(frozen=True)
class MeetingRef:
    id: str
    summary: str
    start: datetime
    end: datetime
    client_attendees: int


@dataclass(frozen=True)
class Meetings:
    last_client_meeting: MeetingRef | None
    next_client_meeting: MeetingRef | None
    cadence_days: float | None  # median days between recent past client meetings
    past_90_days: int
    scheduled: int  # future client meetings


@dataclass(frozen=True)
class Activity:
    at: datetime
    source: Literal["salesforce", "jira", "google_calendar"]
    kind: str  # "meeting", "issue_done", "issue_created", "opportunity_updated", ...
    ref: str  # id or key in the source
    summary: str


@dataclass(frozen=True)
class Reason:
    code: str  # stable identifier, e.g. "checkin_overdue"
    severity: Severity
    text: str  # for an account manager


@dataclass(frozen=True)
class EngagementHealth:
    level: HealthLevel
    reasons: tuple[Reason, ...]


@dataclass(frozen=True)
class Engagement:
    id: str  # the Opportunity Id
    name: str
    client_id: str | None
    client: str
    owner: Person | None
    opportunity_stage: str | None
    close_date: date | None
    jira_project: str | None
    stage: Literal["initiation", "planning", "execution", "closure"]
    stakeholders: tuple[Stakeholder, ...]
    progress: Progress
    meetings: Meetings
    activity: tuple[Activity, ...]  # newest first
    health: EngagementHealth

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = _jsonable(self)
        data["reasons"] = [r.text for r in self.health.reasons]
        data["health_level"] = self.health.level
        return data

    def summary_json(self) -> dict[str, Any]:
        """The short form `accord status --json` prints."""
        m = self.meetings
        return {
            "id": self.id,
            "name": self.name,
            "client": self.client,
            "owner": self.owner.name if self.owner else None,
            "health": self.health.level,
            "stage": self.stage,
            "progress": self.progress.percent_complete,
            "overdue": self.progress.overdue,
            "blocked": self.progress.blocked,
            "last_client_meeting": iso(m.last_client_meeting.start) if m.last_client_meeting else None,
            "next_client_meeting": iso(m.next_client_meeting.start) if m.next_client_meeting else None,
            "reasons": [r.text for r in self.health.reasons],
        }


@dataclass(frozen=True)
class UnknownStakeholder:
    email: str
    account_id: str
    engagement_ids: tuple[str, ...]
    meetings: int
    last_seen: datetime | None


@dataclass(frozen=True)
class AmbiguousMeeting:
    event_id: str
    calendar: str
    start: datetime
    candidates: tuple[str, ...]  # engagement ids (or account ids when clients conflict)
    why: str


@dataclass(frozen=True)
class UnifiedView:
    engagements: tuple[Engagement, ...]  # sorted by id
    unknown_stakeholders: tuple[UnknownStakeholder, ...]
    ambiguous_meetings: tuple[AmbiguousMeeting, ...]
    issues_without_engagement: int = 0
    meetings_internal: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
    # Engagement id -> the earliest instant after ``now`` at which unify over the same records could
    # give that engagement otherwise (None: time alone never changes it); see engagement.horizon.
    # Kept beside the engagements, not in them: an Engagement's JSON and digest stay as they are.
    valid_until: dict[str, datetime | None] = field(default_factory=dict)

    def health_counts(self) -> dict[str, int]:
        counts = {"green": 0, "amber": 0, "red": 0}
        for e in self.engagements:
            counts[e.health.level] += 1
        return counts
