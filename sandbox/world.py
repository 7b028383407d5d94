"""The neutral description of a sandbox org, before any API renders it.

The generator (``sandbox.generator``) produces a ``World``; each emulator's store loads it
(``from_world``) into its own records, ids and timestamps. Keys here are the generator's own
(``client-0001``), never API ids. The world also keeps the truth tests need, such as which
engagement a meeting belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

IssueStatus = Literal["To Do", "In Progress", "Blocked", "In Review", "Done"]
ResponseStatus = Literal["needsAction", "declined", "tentative", "accepted"]

# Jira status name -> status category key (new, indeterminate, done), as Jira Cloud reports it.
STATUS_CATEGORY: dict[str, str] = {
    "To Do": "new",
    "In Progress": "indeterminate",
    "Blocked": "indeterminate",
    "In Review": "indeterminate",
    "Done": "done",
}


@dataclass(slots=True)
class User:
    """Someone at the agency: account owner, project manager, manager. CRM User and Jira user."""

    key: str
    first_name: str
    last_name: str
    email: str
    title: str
    manager_key: str | None
    timezone: str  # IANA name, e.g. "Europe/Berlin"
    is_project_manager: bool
    created: datetime
    jira_account_id: str  # Jira Cloud accountId


@dataclass(slots=True)
class Client:
    """A client company: CRM Account."""

    key: str
    name: str
    domains: list[str]  # email domains of the client's people; the first is the primary
    industry: str
    owner_key: str  # User.key
    website: str
    created: datetime
    modified: datetime


@dataclass(slots=True)
class Contact:
    """A person at the client: CRM Contact."""

    key: str
    client_key: str
    first_name: str
    last_name: str
    email: str  # as stored in the CRM (may be mixed case)
    title: str
    phone: str
    created: datetime
    modified: datetime


@dataclass(slots=True)
class StakeholderRole:
    """A contact's role on an engagement: OpportunityContactRole."""

    key: str
    engagement_key: str
    contact_key: str
    role: str  # "Decision Maker", "Economic Buyer", "Executive Sponsor", "Technical Buyer", ...
    is_primary: bool
    created: datetime
    modified: datetime


@dataclass(slots=True)
class Engagement:
    """A client project: CRM Opportunity plus one Jira project."""

    key: str
    client_key: str
    name: str
    stage: str  # Salesforce StageName
    amount: float
    close_date: date
    owner_key: str  # User.key: the account manager / project manager
    jira_project_key: str
    jira_project_name: str
    created: datetime
    modified: datetime


@dataclass(slots=True)
class Issue:
    """A Jira issue of an engagement's project."""

    key: str  # "ACME-12"
    project_key: str
    summary: str
    issue_type: Literal["Epic", "Story", "Task", "Bug"]
    status: IssueStatus
    epic_key: str | None
    assignee_key: str | None  # User.key, None = unassigned
    reporter_key: str
    labels: list[str]
    priority: Literal["Highest", "High", "Medium", "Low"]
    due_date: date | None
    created: datetime
    updated: datetime
    resolution_date: datetime | None


@dataclass(slots=True)
class Attendee:
    email: str  # as the invitation has it: may differ in case or plus-address from the CRM
    display_name: str | None
    response: ResponseStatus
    organizer: bool = False


@dataclass(slots=True)
class Meeting:
    """A calendar event on a user's calendar (one per owner calendar)."""

    key: str
    calendar_owner_key: str  # User.key; the calendar id is that user's email
    summary: str
    description: str
    start: datetime
    end: datetime
    attendees: list[Attendee]
    status: Literal["confirmed", "tentative", "cancelled"]
    created: datetime
    updated: datetime
    recurrence: list[str] = field(default_factory=list)  # RRULE/EXDATE lines for recurring masters
    cancelled_occurrences: list[datetime] = field(default_factory=list)  # instances cancelled
    moved_occurrences: dict[datetime, datetime] = field(default_factory=dict)  # original start -> new start
    engagement_key: str | None = None  # truth: which engagement it belongs to (None = internal)
    all_day: bool = False


@dataclass(slots=True)
class World:
    seed: int
    size: str
    generated_at: datetime
    users: list[User]
    clients: list[Client]
    contacts: list[Contact]
    engagements: list[Engagement]
    roles: list[StakeholderRole]
    issues: list[Issue]
    meetings: list[Meeting]
    internal_domain: str = "agency.example"

    def counts(self) -> dict[str, int]:
        return {
            "users": len(self.users),
            "clients": len(self.clients),
            "contacts": len(self.contacts),
            "engagements": len(self.engagements),
            "roles": len(self.roles),
            "issues": len(self.issues),
            "meetings": len(self.meetings),
        }
