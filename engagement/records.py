"""Source records as the connectors hand them over, normalized and typed.

A connector turns each API row into a ``SourceRecord``: which source and stream it came from, its
id, its modification stamp and a small JSON-able ``data`` dict of Accord attributes (names from
the mapping, values normalized: ISO timestamps in UTC, lists for multi-valued fields). The store
keeps exactly that, and unify reads it back through the typed views below. Nothing here knows an
API's wire format.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class SourceRecord:
    source: str  # "salesforce" | "jira" | "google_calendar"
    stream: str  # "accounts", "contacts", "opportunities", "contact_roles", "users", "issues", "events"
    id: str
    updated_at: datetime  # the source's modification stamp (the cursor field), aware UTC
    data: dict[str, Any]
    deleted: bool = False
    partition: str = ""  # calendar id for events, project key for issues, "" otherwise


def parse_datetime(value: Any) -> datetime | None:
    """Parse the timestamps of all three APIs (and ISO) into aware UTC; None for empty values."""
    if type(value) is str and value.endswith("Z") and "T" in value:
        return datetime.fromisoformat(value)  # the store's own form (``iso``): already UTC
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value)
    if len(text) >= 5 and text[-5] in "+-" and text[-3] != ":" and "T" in text:
        text = f"{text[:-2]}:{text[-2:]}"  # Salesforce/Jira "+0000" -> "+00:00"
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_date(value: Any) -> date | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def iso(value: datetime | None) -> str | None:
    """The one timestamp format the store and the model use: UTC, milliseconds, Z."""
    if value is None:
        return None
    if value.tzinfo is UTC and value.__class__ is datetime:
        # Every record's stamp (parse_datetime answers UTC): what isoformat(timespec="milliseconds")
        # writes before its "+00:00", a third of its cost (tests/connectors/test_stamps.py).
        return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031  # the fastest of the three ways
            value.year,
            value.month,
            value.day,
            value.hour,
            value.minute,
            value.second,
            value.microsecond // 1000,
        )
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return None if value in (None, "") else str(value)


def split_domains(value: Any) -> tuple[str, ...]:
    if value in (None, ""):
        return ()
    if isinstance(value, list | tuple):
        parts = [str(v) for v in value]
    else:
        parts = str(value).replace(",", ";").split(";")
    return tuple(sorted({p.strip().lower() for p in parts if p.strip()}))


@dataclass(frozen=True)
class Account:
    id: str
    name: str
    domains: tuple[str, ...]
    owner_id: str | None

    @classmethod
    def from_record(cls, r: SourceRecord) -> Account:
        return cls(r.id, _str(r.data, "name") or r.id, split_domains(r.data.get("domains")), _str(r.data, "owner"))


@dataclass(frozen=True)
class Contact:
    id: str
    account_id: str | None
    name: str
    email: str | None
    title: str | None
    updated_at: datetime

    @classmethod
    def from_record(cls, r: SourceRecord) -> Contact:
        d = r.data
        name = " ".join(p for p in (_str(d, "first_name"), _str(d, "last_name")) if p) or _str(d, "name") or r.id
        return cls(r.id, _str(d, "account"), name, _str(d, "email"), _str(d, "title"), r.updated_at)


@dataclass(frozen=True)
class Opportunity:
    id: str
    name: str
    account_id: str | None
    stage: str | None
    owner_id: str | None
    close_date: date | None
    amount: float | None
    jira_project: str | None
    updated_at: datetime

    @classmethod
    def from_record(cls, r: SourceRecord) -> Opportunity:
        d = r.data
        amount = d.get("amount")
        return cls(
            r.id,
            _str(d, "name") or r.id,
            _str(d, "account"),
            _str(d, "stage"),
            _str(d, "owner"),
            parse_date(d.get("close_date")),
            float(amount) if amount not in (None, "") else None,
            _str(d, "jira_project"),
            r.updated_at,
        )


@dataclass(frozen=True)
class ContactRole:
    id: str
    opportunity_id: str
    contact_id: str
    role: str | None
    primary: bool

    @classmethod
    def from_record(cls, r: SourceRecord) -> ContactRole:
        d = r.data
        return cls(r.id, str(d.get("opportunity")), str(d.get("contact")), _str(d, "role"), bool(d.get("primary")))


@dataclass(frozen=True)
class CrmUser:
    id: str
    name: str
    email: str | None
    manager_id: str | None
    active: bool

    @classmethod
    def from_record(cls, r: SourceRecord) -> CrmUser:
        d = r.data
        name = " ".join(p for p in (_str(d, "first_name"), _str(d, "last_name")) if p) or _str(d, "name") or r.id
        return cls(r.id, name, _str(d, "email"), _str(d, "manager"), d.get("active") is not False)


@dataclass(frozen=True)
class WorkItem:
    """A Jira issue."""

    id: str
    key: str
    project: str
    summary: str
    issue_type: str
    status: str
    status_category: str  # new | indeterminate | done
    assignee_email: str | None
    assignee_name: str | None
    due_date: date | None
    labels: tuple[str, ...]
    parent_key: str | None
    created: datetime | None
    updated: datetime
    resolved: datetime | None

    @classmethod
    def from_record(cls, r: SourceRecord) -> WorkItem:
        d = r.data
        return cls(
            id=r.id,
            key=str(d.get("key")),
            project=str(d.get("project")),
            summary=str(d.get("summary") or ""),
            issue_type=str(d.get("issue_type") or ""),
            status=str(d.get("status") or ""),
            status_category=str(d.get("status_category") or "new"),
            assignee_email=_str(d, "assignee_email"),
            assignee_name=_str(d, "assignee_name"),
            due_date=parse_date(d.get("due_date")),
            labels=tuple(sorted(str(label) for label in d.get("labels") or ())),
            parent_key=_str(d, "parent"),
            created=parse_datetime(d.get("created")),
            updated=r.updated_at,
            resolved=parse_datetime(d.get("resolved")),
        )


@dataclass(frozen=True)
class EventAttendee:
    email: str
    response: str  # needsAction | declined | tentative | accepted
    organizer: bool = False


@dataclass(frozen=True)
class CalendarEvent:
    """One concrete meeting (recurring series arrive expanded into instances)."""

    id: str
    calendar: str
    summary: str
    start: datetime
    end: datetime
    status: str  # confirmed | tentative | cancelled
    attendees: tuple[EventAttendee, ...] = field(default_factory=tuple)
    organizer: str | None = None
    recurring_event_id: str | None = None

    @classmethod
    def from_record(cls, r: SourceRecord) -> CalendarEvent | None:
        d = r.data
        start, end = parse_datetime(d.get("start")), parse_datetime(d.get("end"))
        if start is None or end is None:
            return None
        attendees = tuple(
            EventAttendee(str(a["email"]), str(a.get("response") or "needsAction"), bool(a.get("organizer")))
            for a in d.get("attendees") or ()
            if a.get("email")
        )
        return cls(
            # The same meeting sits on every invited calendar under one event id: that id is the identity.
            id=str(d.get("event_id") or r.id),
            calendar=r.partition or str(d.get("calendar") or ""),
            summary=str(d.get("summary") or ""),
            start=start,
            end=end,
            status=str(d.get("status") or "confirmed"),
            attendees=attendees,
            organizer=_str(d, "organizer"),
            recurring_event_id=_str(d, "recurring_event_id"),
        )


# -- lookup keys ---------------------------------------------------------------------------------------
# The store indexes each live issue and meeting under these keys so unify can read the records of one
# group of clients without reading the whole store. A key set may select more than a group needs (unify
# resolves every address exactly); it must never select less.
LOOKUP_STREAMS = (
    ("jira", "issues"),
    ("google_calendar", "events"),
    ("salesforce", "contacts"),
    ("salesforce", "contact_roles"),
    ("salesforce", "reminders"),
)
MEETING_MARK = "x:"  # every countable meeting has it, so meetings without any attendee are found too
KEY_LIMIT = 400  # the store's key column
UNFAITHFUL = "u:"  # a meeting with an address its "e:" key does not reproduce exactly: read it in full


def fit_key(key: str) -> str:
    """Keys longer than the column become their prefix and a digest (the query side does the same)."""
    if len(key) <= KEY_LIMIT:
        return key
    return key[:2] + "#" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def address_keys(email: str) -> set[str]:
    """``e:`` the address as written (case-folded), ``s:`` without its plus tag, ``d:`` its domain."""
    return set(_address_key_set(email))


@lru_cache(maxsize=1 << 12)
def _address_key_set(email: str) -> frozenset[str]:
    """``address_keys``, remembered: a calendar's meetings have mostly the same attendees, so the
    store's write of the events' keys computes an address about once per calendar, not once per
    meeting. Bounded (about 2 MB) so that memory does not grow with the org's people."""
    address = _plain_address(email)
    keys = {"e:" + address}
    if _plain_address(address) != address or len(address) + 2 > KEY_LIMIT:
        keys.add(UNFAITHFUL)
    if "@" in address:
        local, _, domain = address.rpartition("@")
        if "+" in local:
            keys.add(f"s:{local.split('+', 1)[0]}@{domain}")
        keys.add("d:" + domain)
    return frozenset(fit_key(k) for k in keys)


def _plain_address(email: str) -> str:
    """The first step of ``engagement.identity.normalize_email`` (no mapping involved)."""
    return email.strip().strip("<>").casefold()


def project_key(project: str) -> str:
    return fit_key("p:" + project.upper())


def account_key(account_id: str) -> str:
    return fit_key("a:" + account_id)


def opportunity_key(opportunity_id: str) -> str:
    return fit_key("o:" + opportunity_id)


def reminder_engagement(key: str) -> str | None:
    """The engagement of an Accord reminder key (``acc-<engagement>-<reason>-<hash>``, see
    ``engagement.rules.reminder_key``); None for any other key."""
    parts = key.split("-")
    if parts[0] != "acc" or len(parts) < 3 or not parts[1]:
        return None
    return parts[1]


# The streams unify reads (``engagement.partition``): a change anywhere else changes no engagement.
UNIFY_STREAMS = frozenset(
    {
        ("salesforce", "accounts"),
        ("salesforce", "users"),
        ("salesforce", "opportunities"),
        ("salesforce", "contacts"),
        ("salesforce", "contact_roles"),
        ("jira", "issues"),
        ("google_calendar", "events"),
    }
)
EVERY_CLIENT = "*"  # a touch key: every client's engagements may have changed
MEETINGS_WITH = "q:"  # a touch key's prefix: the meetings with the lookup key that follows, and their clients


def contact_touch_key(contact_id: str) -> str:
    return fit_key("c:" + contact_id)


def _meetings_with(key: str) -> str:
    """``MEETINGS_WITH`` and a meetings' lookup key; every client when it does not fit whole."""
    return MEETINGS_WITH + key if len(key) + len(MEETINGS_WITH) <= KEY_LIMIT else EVERY_CLIENT


def touch_keys(record: SourceRecord) -> set[str]:
    """What one version of a record of ``UNIFY_STREAMS`` can change the engagements of, as keys: the
    store writes those of a changed record's stored version and of its new one, and the next unify
    recomputes the clients they name (``engagement.partition.touched_clients``).

    A meeting: its attendees' address and domain keys (``lookup_keys``). A contact: its client
    (``a:``), its id (contact roles name it, ``c:``) and the meetings with its address
    (``MEETINGS_WITH``: their attendees' clients may now share one). An Opportunity: itself (``o:``)
    and its client. An account: itself and the meetings at its domains. An issue: its project; a
    contact role: its Opportunity. A CRM user is anyone's owner or attendee: every client. Nothing
    for a deleted version: its stored one says what it touched."""
    if record.deleted:
        return set()
    if record.source == "salesforce":
        if record.stream == "users":
            return {EVERY_CLIENT}
        if record.stream == "accounts":
            account = Account.from_record(record)
            domains = {d for domain in account.domains for d in (domain, domain.casefold())}
            return {account_key(account.id), *(_meetings_with("d:" + d) for d in domains)}
        if record.stream == "opportunities":
            opportunity = Opportunity.from_record(record)
            return {opportunity_key(opportunity.id), account_key(opportunity.account_id or "")}
        if record.stream == "contacts":
            keys = {contact_touch_key(record.id)}
            for key in lookup_keys(record):
                keys.add(_meetings_with(key) if key[:2] in ("e:", "s:") else key)
            return keys
    if (record.source, record.stream) in UNIFY_STREAMS:
        return lookup_keys(record)
    return set()


def lookup_keys(record: SourceRecord) -> set[str]:
    """The keys of a live issue (its project), meeting (its attendees), contact (its account and
    address, without the domain), contact role or Accord reminder Task (its engagement); none for
    anything else."""
    if record.deleted:
        return set()
    if record.source == "salesforce" and record.stream == "reminders":
        engagement = reminder_engagement(str(record.data.get("key") or ""))
        return {opportunity_key(engagement)} if engagement else set()
    if record.source == "jira" and record.stream == "issues":
        return {project_key(str(record.data.get("project")))}
    if record.source == "salesforce" and record.stream == "contacts":
        contact = Contact.from_record(record)
        keys = {k for k in address_keys(contact.email) if not k.startswith("d:")} if contact.email else set()
        if contact.account_id:
            keys.add(account_key(contact.account_id))
        return keys
    if record.source == "salesforce" and record.stream == "contact_roles":
        return {opportunity_key(ContactRole.from_record(record).opportunity_id)}
    if record.source == "google_calendar" and record.stream == "events":
        # What ``CalendarEvent.from_record`` reads of it, without building the event: the keys of a
        # page of meetings are written with the page.
        data = record.data
        if parse_datetime(data.get("start")) is None or parse_datetime(data.get("end")) is None:
            return set()
        keys = {MEETING_MARK}
        for attendee in data.get("attendees") or ():
            if attendee.get("email"):
                keys.update(_address_key_set(str(attendee["email"])))
        if str(data.get("status") or "confirmed") == "cancelled":
            return set()
        return keys
    return set()
