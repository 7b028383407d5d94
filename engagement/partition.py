"""Unify in groups of clients, so memory stays flat however large the org, and partitions of
clients can be processed by different flow runs.

Every engagement belongs to its client (the Account). Clients are split into ``partitions`` by a
stable hash of the account id; within one partition they are packed into groups of about
``group_size`` engagements (a client is never split). Held org-wide is only the ``Directory``:
one row per client, engagement and colleague. A group reads, through the store's lookup keys
(``engagement.records.lookup_keys``), its clients' contacts, its engagements' contact roles, the
issues of its engagements' projects, the meetings whose attendees could be its clients' people,
and the contacts those attendees could be, so memory holds one group's people, never the org's.
The result is exactly ``unify`` over everything: a meeting with several clients' attendees is
reported once, by the group of the smallest account id, and the two org-wide counts (meetings
with no client attendee, issues of no engagement) are computed from the keys, a chunk of meetings
at a time.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from datetime import datetime
from itertools import groupby
from typing import Protocol

from engagement.identity import IdentityIndex, email_domain
from engagement.mapping import Mapping
from engagement.model import UnifiedView
from engagement.records import (
    EVERY_CLIENT,
    MEETING_MARK,
    MEETINGS_WITH,
    UNFAITHFUL,
    CalendarEvent,
    Contact,
    ContactRole,
    Opportunity,
    SourceRecord,
    WorkItem,
    account_key,
    contact_touch_key,
    fit_key,
    opportunity_key,
    project_key,
)
from engagement.unify import Reference, Snapshot, unify_group

GROUP_SIZE = 100  # engagements per group: bounds the issues and meetings held at once
DIRECTORY_STREAMS = ("accounts", "opportunities", "users")  # org-wide: one row per client, engagement, colleague
COUNT_CHUNK = 10_000  # meetings resolved at once when counting those without a client attendee


class RecordSource(Protocol):
    """What unify reads from the store (``store.Store`` implements it)."""

    def iter_records(self, source: str | None = None, stream: str | None = None) -> Iterator[SourceRecord]: ...

    def records_by_keys(self, source: str, stream: str, keys: Iterable[str]) -> Iterator[SourceRecord]: ...

    def record_by_id(self, source: str, stream: str, record_id: str) -> SourceRecord | None: ...

    def iter_keys(self, source: str, stream: str, prefixes: tuple[str, ...]) -> Iterator[tuple[str, str]]: ...

    def key_counts(self, source: str, stream: str, prefix: str) -> dict[str, int]: ...


def partition_of(account_id: str | None, partitions: int) -> int:
    """The partition (0 .. partitions-1) of a client; stable across processes and machines."""
    return zlib.crc32((account_id or "").encode("utf-8")) % partitions


@dataclass
class Group:
    accounts: list[str] = field(default_factory=list)  # "" holds engagements without a client
    opportunities: list[Opportunity] = field(default_factory=list)


@dataclass
class Directory:
    """The org-wide part of the CRM, one row per client, engagement or colleague: accounts (their
    domains), users, engagements and their Jira projects, and which accounts have contacts. Contacts
    and contact roles, one row per person, are read group by group (``group_reference``)."""

    base: Reference  # no contacts, no roles; its index knows users, client domains and aliases
    contact_accounts: set[str]

    @property
    def opportunities(self) -> list[Opportunity]:
        return self.base.opportunities


def load_directory(source: RecordSource, mapping: Mapping) -> Directory:
    snapshot = Snapshot.from_records(
        record for stream in DIRECTORY_STREAMS for record in source.iter_records("salesforce", stream)
    )
    accounts = {key[2:] for key in source.key_counts("salesforce", "contacts", "a:")}
    return Directory(Reference.build(snapshot, mapping), accounts)


def client_ids(directory: Directory) -> set[str]:
    """Every account a match can name: accounts, and the accounts contacts and engagements point to."""
    ids = set(directory.base.accounts) | directory.contact_accounts
    ids.update(o.account_id or "" for o in directory.opportunities)
    return ids


def plan_groups(
    directory: Directory,
    *,
    partition: int = 0,
    partitions: int = 1,
    group_size: int = GROUP_SIZE,
    clients: AbstractSet[str] | None = None,
) -> list[Group]:
    """The groups of one partition, in account order; every client of the partition is in one group
    (clients without engagements too: a meeting with several clients is reported by one of them).
    ``clients``: only those (``touched_clients``); None: all."""
    if partitions < 1 or not 0 <= partition < partitions:
        raise ValueError(f"partition {partition} of {partitions}: expected 0 <= partition < partitions")
    by_account: dict[str, list[Opportunity]] = defaultdict(list)
    for o in directory.opportunities:
        by_account[o.account_id or ""].append(o)
    groups: list[Group] = []
    current = Group()
    for account in sorted(client_ids(directory)):
        if partition_of(account, partitions) != partition or (clients is not None and account not in clients):
            continue
        current.accounts.append(account)
        current.opportunities.extend(by_account.get(account, []))
        if len(current.opportunities) >= group_size or len(current.accounts) >= group_size * 4:
            groups.append(current)
            current = Group()
    if current.accounts:
        groups.append(current)
    return groups


def meeting_keys(index: IdentityIndex, contacts: Iterable[Contact], accounts: Iterable[str]) -> set[str]:
    """Keys that select every meeting an attendee of ``accounts`` could be matched in (maybe more);
    ``contacts`` must hold every contact of ``accounts``."""
    wanted = set(accounts)
    addresses = {index.normalize(c.email) for c in contacts if c.account_id in wanted and c.email}
    domains = {domain for domain, owner in index.domains.items() if owner in wanted}
    aliases = {
        alias for alias, target in index.aliases.items() if target in addresses or email_domain(target) in domains
    }
    keys = {f"{prefix}{a}" for a in addresses | aliases for prefix in ("e:", "s:")}
    keys.update("d:" + domain for domain in domains)
    return {fit_key(k) for k in keys}


def contact_keys(index: IdentityIndex, addresses: Iterable[str]) -> set[str]:
    """Keys that select every contact whose address normalizes to one of ``addresses`` (normalized),
    maybe more: as written (``e:``) or with a plus tag (``s:``), directly or through an alias, and
    the contacts whose address a key cannot reproduce (``u:``)."""
    keys = {UNFAITHFUL}
    for address in addresses:
        for written in index.preimages(address):
            keys.add(fit_key("e:" + written))
            keys.add(fit_key("s:" + written))
    return keys


def _contacts(records: Iterable[SourceRecord]) -> dict[str, Contact]:
    return {r.id: Contact.from_record(r) for r in records if not r.deleted}


def group_reference(
    source: RecordSource, directory: Directory, group: Group
) -> tuple[Reference, list[WorkItem], list[CalendarEvent]]:
    """What one group's unify needs: its clients' contacts and its engagements' roles (with their
    contacts), its issues and meetings, and every contact its meetings' attendees could be."""
    base = directory.base
    index = base.index
    contacts = _contacts(
        source.records_by_keys("salesforce", "contacts", (account_key(a) for a in group.accounts if a))
    )
    roles = sorted(
        (
            ContactRole.from_record(r)
            for r in source.records_by_keys(
                "salesforce", "contact_roles", (opportunity_key(o.id) for o in group.opportunities)
            )
        ),
        key=lambda role: role.id,
    )
    projects = {p for o in group.opportunities if (p := base.project.get(o.id))}
    issues = [WorkItem.from_record(r) for r in source.records_by_keys("jira", "issues", map(project_key, projects))]
    events = [
        e
        for r in source.records_by_keys(
            "google_calendar", "events", meeting_keys(index, contacts.values(), group.accounts)
        )
        if (e := CalendarEvent.from_record(r)) is not None
    ]
    attendees = {index.normalize(a.email) for e in events for a in e.attendees}
    contacts.update(_contacts(source.records_by_keys("salesforce", "contacts", contact_keys(index, attendees))))
    for role in roles:
        if role.contact_id not in contacts:
            record = source.record_by_id("salesforce", "contacts", role.contact_id)
            contacts.update(_contacts([record] if record else []))
    roles_by_opportunity: dict[str, list[ContactRole]] = defaultdict(list)
    for role in roles:
        roles_by_opportunity[role.opportunity_id].append(role)
    reference = replace(
        base,
        contacts={c.id: c for c in sorted(contacts.values(), key=lambda c: c.id)},
        roles_by_opportunity=roles_by_opportunity,
        index=index.with_contacts(contacts.values()),
    )
    return reference, issues, events


def unify_groups(
    source: RecordSource,
    mapping: Mapping,
    now: datetime,
    *,
    partition: int = 0,
    partitions: int = 1,
    group_size: int = GROUP_SIZE,
    directory: Directory | None = None,
    clients: AbstractSet[str] | None = None,
) -> Iterator[tuple[Group, UnifiedView]]:
    """Each group of the partition with its engagements (counts: see ``org_counts``); ``clients``:
    of those clients only (``touched_clients``), None: of all."""
    directory = directory or load_directory(source, mapping)
    planned = plan_groups(directory, partition=partition, partitions=partitions, group_size=group_size, clients=clients)
    for group in planned:
        reference, issues, events = group_reference(source, directory, group)
        owned = set(group.accounts)
        view = unify_group(reference, group.opportunities, issues, events, mapping, now, _first_in(owned))
        yield group, view


def _first_in(owned: set[str]) -> Callable[[list[str]], bool]:
    return lambda accounts: accounts[0] in owned


def org_counts(source: RecordSource, directory: Directory) -> tuple[int, int]:
    """(meetings with no client attendee, issues of no engagement) over the whole store, from keys."""
    return internal_meetings(source, directory), orphan_issues(source, directory)


def orphan_issues(source: RecordSource, directory: Directory) -> int:
    """The stored issues of projects no engagement is linked to (a count of keys)."""
    linked = {project_key(p) for p in directory.base.project.values() if p}
    return sum(n for key, n in source.key_counts("jira", "issues", "p:").items() if key not in linked)


def internal_meetings(source: RecordSource, directory: Directory) -> int:
    """The stored meetings with no client attendee: resolved ``COUNT_CHUNK`` at a time, with only the
    contacts their attendees could be. It depends on the meetings and the directory alone (no issue)."""
    internal = 0
    chunk: list[list[str]] = []
    rows = source.iter_keys("google_calendar", "events", ("e:", MEETING_MARK, UNFAITHFUL))
    for record_id, keys in groupby(rows, key=lambda row: row[0]):
        found = [key for _, key in keys]
        if UNFAITHFUL in found:
            record = source.record_by_id("google_calendar", "events", record_id)
            event = CalendarEvent.from_record(record) if record else None
            chunk.append([a.email for a in event.attendees] if event else [])
        else:
            chunk.append([key[2:] for key in found if key.startswith("e:")])
        if len(chunk) >= COUNT_CHUNK:
            internal += _without_client(source, directory, chunk)
            chunk = []
    return internal + _without_client(source, directory, chunk)


def _without_client(source: RecordSource, directory: Directory, meetings: list[list[str]]) -> int:
    if not meetings:
        return 0
    base = directory.base.index
    addresses = {base.normalize(a) for a in {a for attendees in meetings for a in attendees}}  # each once
    index = base.with_contacts(
        _contacts(source.records_by_keys("salesforce", "contacts", contact_keys(base, addresses))).values()
    )
    return sum(1 for attendees in meetings if not any(_client(index, a) for a in attendees))


def group_counts(group: Group, view: UnifiedView) -> dict[str, tuple[int, int]]:
    """Per client of ``group``: (unknown stakeholders, ambiguous meetings it reports), which add up to
    the view's. An unknown stakeholder is matched by its client's domain, so it is that client's; a
    meeting with several clients' attendees is reported by the first (``AmbiguousMeeting.candidates``
    are those clients), one with several engagements of one client by that client (the candidates
    are its engagements)."""
    client_of = {o.id: o.account_id or "" for o in group.opportunities}
    counts = {account: [0, 0] for account in group.accounts}
    for unknown in view.unknown_stakeholders:
        counts.setdefault(unknown.account_id, [0, 0])[0] += 1
    for meeting in view.ambiguous_meetings:
        first = meeting.candidates[0] if meeting.candidates else ""
        counts.setdefault(client_of.get(first, first), [0, 0])[1] += 1
    return {client: (u, a) for client, (u, a) in counts.items()}


def client_project_keys(directory: Directory) -> dict[str, frozenset[str]]:
    """Per client, the ``p:`` keys of the projects its engagements are linked to: the issues its
    engagements can hold are those of these projects (``touch_keys`` of an issue is its project)."""
    base = directory.base
    keys: dict[str, set[str]] = defaultdict(set)
    for o in directory.opportunities:
        if project := base.project.get(o.id):
            keys[o.account_id or ""].add(project_key(project))
    return {client: frozenset(projects) for client, projects in keys.items()}


def touched_clients(
    source: RecordSource, directory: Directory, keys: AbstractSet[str], stored: dict[str, str | None]
) -> set[str] | None:
    """``ClientsTouched(source, directory, stored).of(keys)``: see there."""
    return ClientsTouched(source, directory, stored).of(keys)


class ClientsTouched:
    """The clients whose engagements or counts may differ from the stored ones after the changes
    ``keys`` name (``engagement.records.touch_keys`` of each changed record's stored and new
    version); None: every client. ``stored``: engagement id -> client, as stored.

    A superset, never fewer: ``a:`` that client; ``o:`` the Opportunity's client now and as stored;
    ``p:`` the clients of the engagements linked to that project; ``c:`` the engagements whose contact
    roles name that contact; an attendee's ``e:``/``s:`` (a changed meeting's, as it is and as it was)
    every client the address could be: any contact with it (so also the client it resolved to before
    a change: a changed contact's clients come as ``a:``) and the client that owns its domain (``d:``,
    a changed account's come as ``a:``); ``MEETINGS_WITH`` a key: the stored meetings with it, and
    every client any of their attendees could be. A user, or an address whose key does not reproduce
    it (``u:``), touches every client. A meeting's other keys touch no client: whom it is attributed
    to depends on itself and its attendees alone."""

    def __init__(self, source: RecordSource, directory: Directory, stored: dict[str, str | None]) -> None:
        """The directory's maps, built once for any number of ``of`` calls (``EarlyUnify``'s rounds)."""
        self.source, self.directory = source, directory
        base = directory.base
        self.opportunities: dict[str, list[str]] = defaultdict(list)  # opportunity -> clients, now and as stored
        for o in directory.opportunities:
            self.opportunities[o.id].append(o.account_id or "")
        for engagement, client in stored.items():
            self.opportunities[engagement].append(client or "")
        self.by_project: dict[str, list[str]] = defaultdict(list)
        for o in directory.opportunities:
            if project := base.project.get(o.id):
                self.by_project[project_key(project)].append(o.account_id or "")

    def of(self, keys: AbstractSet[str]) -> set[str] | None:
        """The clients ``keys`` touch; None: every client. The clients of a union of key sets are the
        union of theirs."""
        if EVERY_CLIENT in keys or UNFAITHFUL in keys:
            return None
        source, opportunities, by_project = self.source, self.opportunities, self.by_project
        base = self.directory.base
        index = base.index
        clients: set[str] = set()
        contacts: set[str] = set()
        addresses: set[str] = set()
        domains: set[str] = set()
        meetings: set[str] = set()
        for key in keys:
            kind, value = key[:2], key[2:]
            if kind == "a:":
                clients.add(value)
            elif kind == "o:":
                clients.update(opportunities.get(value, ()))
            elif kind == "p:":
                clients.update(by_project.get(key, ()))
            elif kind == "c:":
                contacts.add(key)
            elif kind in ("e:", "s:"):
                addresses.add(index.normalize(value))
            elif kind == "d:":
                domains.add(value)
            elif kind == MEETINGS_WITH:
                meetings.add(value)
        if contacts:
            for record in source.iter_records("salesforce", "contact_roles"):
                role = ContactRole.from_record(record)
                if contact_touch_key(role.contact_id) in contacts:
                    clients.update(opportunities.get(role.opportunity_id, ()))
        if meetings:
            addresses.update(
                index.normalize(a.email)
                for r in source.records_by_keys("google_calendar", "events", meetings)
                if (e := CalendarEvent.from_record(r)) is not None
                for a in e.attendees
            )
        if addresses:
            for record in source.records_by_keys("salesforce", "contacts", contact_keys(index, addresses)):
                contact = Contact.from_record(record)
                if contact.email and index.normalize(contact.email) in addresses:
                    clients.add(contact.account_id or "")
            domains.update(email_domain(address) for address in addresses)
        clients.update(owner for domain in domains if (owner := index.domains.get(domain)))
        return clients


def unify_all(
    source: RecordSource, mapping: Mapping, now: datetime, *, partitions: int = 1, group_size: int = GROUP_SIZE
) -> UnifiedView:
    """All groups of all partitions as one view: equal to ``unify`` over everything (for tests and
    small orgs; the sync stores group by group instead of holding every engagement)."""
    directory = load_directory(source, mapping)
    views = [
        view
        for partition in range(partitions)
        for _, view in unify_groups(
            source, mapping, now, partition=partition, partitions=partitions, group_size=group_size, directory=directory
        )
    ]
    internal, orphans = org_counts(source, directory)
    return UnifiedView(
        engagements=tuple(sorted((e for v in views for e in v.engagements), key=lambda e: e.id)),
        unknown_stakeholders=tuple(sorted((u for v in views for u in v.unknown_stakeholders), key=lambda u: u.email)),
        ambiguous_meetings=tuple(
            sorted((a for v in views for a in v.ambiguous_meetings), key=lambda a: (a.start, a.event_id, a.calendar))
        ),
        issues_without_engagement=orphans,
        meetings_internal=internal,
        valid_until=dict(sorted((item for v in views for item in v.valid_until.items()), key=lambda item: item[0])),
    )


def _client(index: IdentityIndex, address: str) -> bool:
    match = index.resolve(address)
    return match.kind in ("contact", "client_domain") and match.account_id is not None


__all__ = [
    "GROUP_SIZE",
    "Directory",
    "Group",
    "RecordSource",
    "contact_keys",
    "group_counts",
    "group_reference",
    "load_directory",
    "meeting_keys",
    "org_counts",
    "partition_of",
    "plan_groups",
    "touched_clients",
    "unify_all",
    "unify_groups",
]
