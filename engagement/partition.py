"""Unify in groups of clients, so memory stays flat however large the org, and partitions of
clients can be processed by different flow runs.

Every engagement belongs to its client (the Account). Clients are split into ``partitions`` by a
stable hash of the account id; within one partition they are packed into groups of about
``group_size`` engagements (a client is never split). A group needs the CRM reference data (small:
who is who) and only the issues of its engagements' projects and the meetings whose attendees
could be its clients' people, which the store finds through lookup keys
(``engagement.records.lookup_keys``). The result is exactly ``unify`` over everything: a meeting
with several clients' attendees is reported once, by the group of the smallest account id, and the
two org-wide counts (meetings with no client attendee, issues of no engagement) are computed from
the keys alone.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from typing import Protocol

from engagement.identity import email_domain
from engagement.mapping import Mapping
from engagement.model import UnifiedView
from engagement.records import (
    MEETING_MARK,
    UNFAITHFUL,
    CalendarEvent,
    Opportunity,
    SourceRecord,
    WorkItem,
    fit_key,
    project_key,
)
from engagement.unify import Reference, Snapshot, unify_group

GROUP_SIZE = 100  # engagements per group: bounds the issues and meetings held at once
REFERENCE_STREAMS = ("accounts", "contacts", "opportunities", "contact_roles", "users")


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


def load_reference(source: RecordSource, mapping: Mapping) -> Reference:
    snapshot = Snapshot.from_records(
        record for stream in REFERENCE_STREAMS for record in source.iter_records("salesforce", stream)
    )
    return Reference.build(snapshot, mapping)


def client_ids(reference: Reference) -> set[str]:
    """Every account a match can name: accounts, and the accounts contacts and engagements point to."""
    ids = set(reference.accounts)
    ids.update(c.account_id for c in reference.contacts.values() if c.account_id)
    ids.update(o.account_id or "" for o in reference.opportunities)
    return ids


def plan_groups(
    reference: Reference, *, partition: int = 0, partitions: int = 1, group_size: int = GROUP_SIZE
) -> list[Group]:
    """The groups of one partition, in account order; every client of the partition is in one group
    (clients without engagements too: a meeting with several clients is reported by one of them)."""
    if partitions < 1 or not 0 <= partition < partitions:
        raise ValueError(f"partition {partition} of {partitions}: expected 0 <= partition < partitions")
    by_account: dict[str, list[Opportunity]] = defaultdict(list)
    for o in reference.opportunities:
        by_account[o.account_id or ""].append(o)
    groups: list[Group] = []
    current = Group()
    for account in sorted(client_ids(reference)):
        if partition_of(account, partitions) != partition:
            continue
        current.accounts.append(account)
        current.opportunities.extend(by_account.get(account, []))
        if len(current.opportunities) >= group_size or len(current.accounts) >= group_size * 4:
            groups.append(current)
            current = Group()
    if current.accounts:
        groups.append(current)
    return groups


def meeting_keys(reference: Reference, accounts: Iterable[str]) -> set[str]:
    """Keys that select every meeting an attendee of ``accounts`` could be matched in (maybe more)."""
    index = reference.index
    wanted = set(accounts)
    addresses: set[str] = set()
    for contact in reference.contacts.values():
        if contact.account_id in wanted and contact.email:
            addresses.add(index.normalize(contact.email))
    domains = {domain for domain, owner in index.domains.items() if owner in wanted}
    aliases = {
        alias for alias, target in index.aliases.items() if target in addresses or email_domain(target) in domains
    }
    keys = {f"{prefix}{a}" for a in addresses | aliases for prefix in ("e:", "s:")}
    keys.update("d:" + domain for domain in domains)
    return {fit_key(k) for k in keys}


def unify_groups(
    source: RecordSource,
    mapping: Mapping,
    now: datetime,
    *,
    partition: int = 0,
    partitions: int = 1,
    group_size: int = GROUP_SIZE,
    reference: Reference | None = None,
) -> Iterator[tuple[Group, UnifiedView]]:
    """Each group of the partition with its engagements (counts: see ``org_counts``)."""
    reference = reference or load_reference(source, mapping)
    for group in plan_groups(reference, partition=partition, partitions=partitions, group_size=group_size):
        projects = {p for o in group.opportunities if (p := reference.project.get(o.id))}
        issues = [WorkItem.from_record(r) for r in source.records_by_keys("jira", "issues", map(project_key, projects))]
        events = [
            e
            for r in source.records_by_keys("google_calendar", "events", meeting_keys(reference, group.accounts))
            if (e := CalendarEvent.from_record(r)) is not None
        ]
        owned = set(group.accounts)
        view = unify_group(reference, group.opportunities, issues, events, mapping, now, _first_in(owned))
        yield group, view


def _first_in(owned: set[str]) -> Callable[[list[str]], bool]:
    return lambda accounts: accounts[0] in owned


def org_counts(source: RecordSource, reference: Reference) -> tuple[int, int]:
    """(meetings with no client attendee, issues of no engagement) over the whole store, from keys."""
    linked = {project_key(p) for p in reference.project.values() if p}
    orphans = sum(n for key, n in source.key_counts("jira", "issues", "p:").items() if key not in linked)
    internal = 0
    rows = source.iter_keys("google_calendar", "events", ("e:", MEETING_MARK, UNFAITHFUL))
    for record_id, keys in groupby(rows, key=lambda row: row[0]):
        found = [key for _, key in keys]
        if UNFAITHFUL in found:
            record = source.record_by_id("google_calendar", "events", record_id)
            event = CalendarEvent.from_record(record) if record else None
            addresses = [a.email for a in event.attendees] if event else []
        else:
            addresses = [key[2:] for key in found if key.startswith("e:")]
        if not any(_client(reference, a) for a in addresses):
            internal += 1
    return internal, orphans


def unify_all(
    source: RecordSource, mapping: Mapping, now: datetime, *, partitions: int = 1, group_size: int = GROUP_SIZE
) -> UnifiedView:
    """All groups of all partitions as one view: equal to ``unify`` over everything (for tests and
    small orgs; the sync stores group by group instead of holding every engagement)."""
    reference = load_reference(source, mapping)
    views = [
        view
        for partition in range(partitions)
        for _, view in unify_groups(
            source, mapping, now, partition=partition, partitions=partitions, group_size=group_size, reference=reference
        )
    ]
    internal, orphans = org_counts(source, reference)
    return UnifiedView(
        engagements=tuple(sorted((e for v in views for e in v.engagements), key=lambda e: e.id)),
        unknown_stakeholders=tuple(sorted((u for v in views for u in v.unknown_stakeholders), key=lambda u: u.email)),
        ambiguous_meetings=tuple(
            sorted((a for v in views for a in v.ambiguous_meetings), key=lambda a: (a.start, a.event_id, a.calendar))
        ),
        issues_without_engagement=orphans,
        meetings_internal=internal,
    )


def _client(reference: Reference, address: str) -> bool:
    match = reference.index.resolve(address)
    return match.kind in ("contact", "client_domain") and match.account_id is not None


__all__ = [
    "GROUP_SIZE",
    "Group",
    "RecordSource",
    "load_reference",
    "meeting_keys",
    "org_counts",
    "partition_of",
    "plan_groups",
    "unify_all",
    "unify_groups",
]
