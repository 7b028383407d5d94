"""The Jira emulator's records and the fixed catalogue of a Jira Cloud site (types, statuses, ...).

Issues are kept as immutable versions: every write builds a new ``IssueVersion`` whose ``prior``
points at the one it replaced. Search reads walk back along that chain to emulate the lag of Jira
Cloud's search index (``JiraStore.search_lag_seconds``); issue GETs read the newest version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sandbox.world import STATUS_CATEGORY

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Workflow statuses of the sandbox's projects, in workflow order; ids as a Jira Cloud site numbers
# them (the built-in "In Progress" is 3, site-created statuses start at 10000).
STATUS_ORDER: tuple[str, ...] = ("To Do", "In Progress", "Blocked", "In Review", "Done")
STATUS_IDS: dict[str, str] = {
    "To Do": "10000",
    "In Progress": "3",
    "Blocked": "10002",
    "In Review": "10003",
    "Done": "10001",
}
STATUS_BY_ID: dict[str, str] = {v: k for k, v in STATUS_IDS.items()}

# Status categories: (id, display name, colorName) per key, as Jira Cloud reports them.
CATEGORIES: dict[str, tuple[int, str, str]] = {
    "new": (2, "To Do", "blue-gray"),
    "indeterminate": (4, "In Progress", "yellow"),
    "done": (3, "Done", "green"),
}

# Issue types: name -> (id, hierarchyLevel). Epics sit one level above standard issues.
ISSUE_TYPES: dict[str, tuple[str, int]] = {
    "Epic": ("10000", 1),
    "Story": ("10001", 0),
    "Task": ("10002", 0),
    "Bug": ("10003", 0),
}
ISSUE_TYPE_BY_ID: dict[str, str] = {v[0]: k for k, v in ISSUE_TYPES.items()}
ISSUE_TYPE_DESCRIPTIONS: dict[str, str] = {
    "Epic": "A big user story that needs to be broken down.",
    "Story": "Functionality or a feature expressed as a user goal.",
    "Task": "A small, distinct piece of work.",
    "Bug": "A problem or error.",
}

# Priorities: name -> id; a lower id is more urgent (Jira's default scheme).
PRIORITIES: dict[str, str] = {"Highest": "1", "High": "2", "Medium": "3", "Low": "4", "Lowest": "5"}
PRIORITY_BY_ID: dict[str, str] = {v: k for k, v in PRIORITIES.items()}

RESOLUTION_DONE_ID = "10000"
RESOLUTION_DONE = "Done"

STORY_POINTS_FIELD = "customfield_10016"

# Workflow transitions the emulator offers (and mutate() takes): from status -> allowed targets.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "To Do": ("In Progress",),
    "In Progress": ("In Review", "Blocked", "Done", "To Do"),
    "Blocked": ("In Progress",),
    "In Review": ("Done", "In Progress"),
    "Done": ("In Progress",),
}
# Transition ids as GET /issue/{key}/transitions lists them: one per target status.
TRANSITION_IDS: dict[str, str] = {
    "To Do": "11",
    "In Progress": "21",
    "Blocked": "31",
    "In Review": "41",
    "Done": "51",
}


def category_of(status: str) -> str:
    return STATUS_CATEGORY[status]


@dataclass(slots=True)
class JiraUser:
    account_id: str
    display_name: str
    email: str
    email_visible: bool  # Atlassian privacy: some users hide their address from the API
    active: bool
    time_zone: str


@dataclass(slots=True)
class Project:
    id: int
    key: str
    name: str
    lead_account_id: str
    next_number: int = 1  # the number the next created issue gets (PROJ-N)


@dataclass(frozen=True, slots=True)
class ChangeItem:
    field: str
    fieldtype: str
    field_id: str | None
    from_value: str | None
    from_string: str | None
    to_value: str | None
    to_string: str | None


@dataclass(frozen=True, slots=True)
class History:
    id: int
    author: str | None  # accountId
    created: datetime
    items: tuple[ChangeItem, ...]


@dataclass(slots=True)
class Comment:
    id: int
    issue_id: int
    author: str  # accountId
    body: str | dict[str, Any]  # as given: a v2 string or a v3 ADF document
    created: datetime
    updated: datetime


@dataclass(slots=True)
class IssueVersion:
    """One state of an issue. Treat as immutable: writers build a new version (``evolve``)."""

    id: int
    key: str
    number: int
    project_id: int
    summary: str
    description: str | dict[str, Any] | None
    issue_type: str
    status: str
    parent_id: int | None
    assignee: str | None  # accountId
    reporter: str
    creator: str
    labels: tuple[str, ...]
    priority: str
    due_date: date | None
    created: datetime
    updated: datetime
    resolution_date: datetime | None
    story_points: float | None
    # None = the history this issue had when the world was loaded, derived on demand (see
    # store.derived_history); a tuple once any write has happened.
    history: tuple[History, ...] | None = None
    deleted: bool = False
    visible_since: datetime = EPOCH  # when this version became readable
    prior: IssueVersion | None = field(default=None, repr=False)

    @property
    def resolution(self) -> str | None:
        return RESOLUTION_DONE if self.status == "Done" else None
