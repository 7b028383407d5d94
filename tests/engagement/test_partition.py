"""Unify in groups of clients equals unify over everything: same engagements, same review lists,
same org-wide counts, for any number of partitions and any group size, in memory and in the store."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from engagement.mapping import Mapping, load_mapping
from engagement.partition import load_directory, partition_of, plan_groups, unify_all
from engagement.records import SourceRecord, address_keys, iso, lookup_keys
from engagement.unify import Snapshot, unify
from sandbox.generator import generate_world
from store import Store
from tests.engagement.world_records import world_records

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


class MemorySource:
    """The store's lookups over a list of records (keys from ``lookup_keys``, like the store's)."""

    def __init__(self, records: Iterable[SourceRecord]) -> None:
        self.records = {(r.source, r.stream, r.id): r for r in records}
        self.keys = {k: lookup_keys(r) for k, r in self.records.items()}
        self.reads = 0

    def iter_records(self, source: str | None = None, stream: str | None = None) -> Iterator[SourceRecord]:
        for (s, t, _), r in sorted(self.records.items()):
            if (source in (None, s)) and (stream in (None, t)) and not r.deleted:
                yield r

    def records_by_keys(self, source: str, stream: str, keys: Iterable[str]) -> Iterator[SourceRecord]:
        wanted = set(keys)
        for k, r in sorted(self.records.items()):
            if k[:2] == (source, stream) and not r.deleted and self.keys[k] & wanted:
                self.reads += 1
                yield r

    def record_by_id(self, source: str, stream: str, record_id: str) -> SourceRecord | None:
        return self.records.get((source, stream, record_id))

    def iter_keys(self, source: str, stream: str, prefixes: tuple[str, ...]) -> Iterator[tuple[str, str]]:
        for k in sorted(self.keys):
            if k[:2] == (source, stream):
                for key in sorted(self.keys[k]):
                    if key.startswith(prefixes):
                        yield k[2], key

    def key_counts(self, source: str, stream: str, prefix: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for k, keys in self.keys.items():
            if k[:2] == (source, stream):
                for key in keys:
                    if key.startswith(prefix):
                        counts[key] = counts.get(key, 0) + 1
        return counts


@pytest.fixture(scope="module")
def mapping() -> Mapping:
    return load_mapping("mappings/default.yaml")


@pytest.mark.parametrize(("seed", "partitions", "group_size"), [(4, 1, 100), (4, 3, 2), (9, 5, 1), (11, 2, 7)])
def test_groups_give_exactly_the_model_of_everything(
    seed: int, partitions: int, group_size: int, mapping: Mapping
) -> None:
    records = world_records(generate_world("small", seed, NOW))
    expected = unify(Snapshot.from_records(records), mapping, NOW)
    got = unify_all(MemorySource(records), mapping, NOW, partitions=partitions, group_size=group_size)
    assert got.engagements == expected.engagements
    assert got.unknown_stakeholders == expected.unknown_stakeholders
    assert got.ambiguous_meetings == expected.ambiguous_meetings
    assert (got.meetings_internal, got.issues_without_engagement) == (
        expected.meetings_internal,
        expected.issues_without_engagement,
    )
    assert expected.ambiguous_meetings and expected.meetings_internal and expected.unknown_stakeholders


def test_groups_read_only_their_share_of_issues_and_meetings(mapping: Mapping) -> None:
    records = world_records(generate_world("small", 4, NOW))
    source = MemorySource(records)
    unify_all(source, mapping, NOW, partitions=4, group_size=1)
    live = sum(1 for r in records if r.stream in ("issues", "events") and not r.deleted)
    # Each group reads its own projects' issues and its clients' meetings; a meeting with several
    # clients is read by each of them, so the total stays near the store's size, not groups x size.
    assert source.reads < 2 * live


def test_every_client_is_in_exactly_one_group_of_its_partition(mapping: Mapping) -> None:
    records = world_records(generate_world("small", 4, NOW))
    directory = load_directory(MemorySource(records), mapping)
    seen: list[str] = []
    for partition in range(3):
        for group in plan_groups(directory, partition=partition, partitions=3, group_size=3):
            assert all(partition_of(a, 3) == partition for a in group.accounts)
            seen.extend(group.accounts)
    assert len(seen) == len(set(seen)) and set(seen) >= {o.account_id for o in directory.opportunities}


def test_hostile_addresses_are_resolved_exactly(mapping: Mapping) -> None:
    """Addresses a key cannot reproduce (spaces inside brackets, over-long) are read in full."""
    records = world_records(generate_world("small", 4, NOW))
    rnd = random.Random(3)
    events = [r for r in records if r.stream == "events"]
    odd = ["< someone@example.org >", "x" * 420 + "@example.org", "<<MIXED+Tag@Example.Org>>"]
    changed = []
    for r in rnd.sample(events, 6):
        attendees = list(r.data.get("attendees") or ())
        attendees.append({"email": rnd.choice(odd), "response": "accepted"})
        changed.append(replace(r, data={**r.data, "attendees": attendees}))
    ids = {(r.stream, r.id) for r in changed}
    records = [r for r in records if (r.stream, r.id) not in ids] + changed
    expected = unify(Snapshot.from_records(records), mapping, NOW)
    got = unify_all(MemorySource(records), mapping, NOW, partitions=2, group_size=3)
    assert got == expected
    assert "u:" in address_keys("< someone@example.org >")


def test_groups_from_the_store_equal_the_model_of_everything(
    store_factory: Callable[[], Store], mapping: Mapping
) -> None:
    store = store_factory()
    records = world_records(generate_world("small", 9, NOW))
    store.apply_batch(records)
    # An update and a delete move the keys with the records.
    issue = next(r for r in records if r.stream == "issues")
    event = next(r for r in records if r.stream == "events")
    moved = replace(issue, data={**issue.data, "project": "ELSEWHERE"})
    store.apply_batch([moved, replace(event, deleted=True)])
    records = [moved if r is issue else r for r in records if r is not event]
    expected = unify(Snapshot.from_records(records), mapping, NOW)
    assert unify_all(store, mapping, NOW, partitions=3, group_size=4) == expected
    # A store from before the keys existed gets them on create_all.
    store.rebuild_lookup_keys()
    assert unify_all(store, mapping, NOW, partitions=1) == expected


def _crafted(mapping: Mapping) -> tuple[list[SourceRecord], Mapping]:
    """Meetings only one kind of key finds: several clients at once; a client's contact at a
    shared mail provider attending with a plus tag; an alias of a contact; an unknown address at
    a client's domain reached through an alias."""
    records = world_records(generate_world("small", 4, NOW))
    contacts = [r for r in records if r.stream == "contacts" and r.data.get("email")]
    accounts = sorted({str(c.data["account"]) for c in contacts})
    first = next(c for c in contacts if c.data["account"] == accounts[0])
    second = next(c for c in contacts if c.data["account"] == accounts[-1])
    shared = replace(first, data={**first.data, "email": "Client.Person@gmail.example"})
    template = next(r for r in records if r.stream == "events" and r.data.get("status") != "cancelled")
    internal = {"email": "owner@agency.example", "response": "accepted", "organizer": True}

    def meeting(n: int, *emails: str) -> SourceRecord:
        attendees = [internal, *({"email": e, "response": "accepted"} for e in emails)]
        start, end = NOW - timedelta(days=1, hours=n), NOW - timedelta(days=1, hours=n - 1)
        data = {
            **template.data,
            "event_id": f"crafted{n}",
            "attendees": attendees,
            "summary": f"crafted {n}",
            "start": iso(start),
            "end": iso(end),
        }
        return replace(template, id=f"{template.partition}/crafted{n}", data=data)

    aliased = mapping.model_copy(
        update={
            "identity": mapping.identity.model_copy(
                update={
                    "aliases": {
                        "old.name@legacy.example": str(second.data["email"]),
                        "someone@elsewhere.example": "new.face@" + str(second.data["email"]).rpartition("@")[2],
                    }
                }
            )
        }
    )
    extra = [
        meeting(1, str(first.data["email"]), str(second.data["email"])),
        meeting(2, "client.person+notes@GMAIL.example"),
        meeting(3, "Old.Name+x@Legacy.Example"),
        meeting(4, "someone@elsewhere.example"),
    ]
    return [shared if r is first else r for r in records] + extra, aliased


@pytest.mark.parametrize(("partitions", "group_size"), [(1, 1), (3, 1), (7, 2)])
def test_meetings_found_by_one_key_only_are_attributed_as_in_the_whole(
    partitions: int, group_size: int, mapping: Mapping
) -> None:
    records, aliased = _crafted(mapping)
    expected = unify(Snapshot.from_records(records), aliased, NOW)
    assert any(a.why == "attendees from several clients" for a in expected.ambiguous_meetings)
    seen = {a.ref for e in expected.engagements for a in e.activity} | {a.event_id for a in expected.ambiguous_meetings}
    assert {"crafted1", "crafted2", "crafted3", "crafted4"} <= seen
    assert unify_all(MemorySource(records), aliased, NOW, partitions=partitions, group_size=group_size) == expected


def _crafted_people(mapping: Mapping) -> tuple[list[SourceRecord], Mapping]:
    """People a group must read beyond its own clients' contacts: another client's contact at a
    shared provider stored with a plus tag, one reached only through an alias, one whose stored
    address is odd (brackets and spaces), two contacts sharing one address, and a role naming another
    client's contact who never attends."""
    records = world_records(generate_world("small", 4, NOW))
    contacts = [r for r in records if r.stream == "contacts" and r.data.get("email")]
    accounts = sorted({str(c.data["account"]) for c in contacts})
    own = next(c for c in contacts if c.data["account"] == accounts[0])
    others = [c for c in contacts if c.data["account"] == accounts[-1]][:5]
    emails = {
        others[0].id: "B.Person+crm@gmail.example",
        others[1].id: "old.b@legacy.example",
        others[2].id: " < B.Odd@gmail.example > ",
        others[3].id: "shared.desk@gmail.example",
    }
    changed = {c.id: replace(c, data={**c.data, "email": emails[c.id]}) for c in others[:4]}
    twin = replace(own, id=own.id + "0", data={**own.data, "email": "Shared.Desk@gmail.example"})
    opportunity = next(r for r in records if r.stream == "opportunities" and r.data.get("account") == accounts[0])
    role_template = next(r for r in records if r.stream == "contact_roles")
    role = replace(
        role_template,
        id="crafted-role",
        data={**role_template.data, "opportunity": opportunity.id, "contact": others[4].id, "primary": False},
    )
    template = next(r for r in records if r.stream == "events" and r.data.get("status") != "cancelled")
    internal = {"email": "owner@agency.example", "response": "accepted", "organizer": True}

    def meeting(n: int, *emails: str) -> SourceRecord:
        attendees = [internal, *({"email": e, "response": "accepted"} for e in emails)]
        start, end = NOW - timedelta(days=2, hours=n), NOW - timedelta(days=2, hours=n - 1)
        data = {**template.data, "event_id": f"people{n}", "attendees": attendees, "summary": f"people {n}"}
        data |= {"start": iso(start), "end": iso(end)}
        return replace(template, id=f"{template.partition}/people{n}", data=data)

    own_email = str(own.data["email"])
    aliased = mapping.model_copy(
        update={
            "identity": mapping.identity.model_copy(update={"aliases": {"old.b@legacy.example": "b.new@gmail.example"}})
        }
    )
    extra = [
        meeting(1, own_email, "b.person@gmail.example"),
        meeting(2, own_email, "B.New@gmail.example"),
        meeting(3, own_email, "< b.odd@GMAIL.example >"),  # normalizes to the contact's, spaces and all
        meeting(4, "shared.desk+x@gmail.example"),
        twin,
        role,
    ]
    return [changed.get(r.id, r) for r in records] + extra, aliased


@pytest.mark.parametrize(("partitions", "group_size"), [(1, 1), (2, 3), (5, 1)])
def test_groups_read_every_contact_their_meetings_and_roles_name(
    partitions: int, group_size: int, mapping: Mapping
) -> None:
    records, aliased = _crafted_people(mapping)
    expected = unify(Snapshot.from_records(records), aliased, NOW)
    several = {a.event_id for a in expected.ambiguous_meetings if a.why == "attendees from several clients"}
    assert {"people1", "people2", "people3"} <= several  # each found only by reading the other client's contact
    assert unify_all(MemorySource(records), aliased, NOW, partitions=partitions, group_size=group_size) == expected


def test_groups_read_contacts_from_the_store(store_factory: Callable[[], Store], mapping: Mapping) -> None:
    records, aliased = _crafted_people(mapping)
    store = store_factory()
    store.apply_batch(records)
    expected = unify(Snapshot.from_records(records), aliased, NOW)
    assert unify_all(store, aliased, NOW, partitions=2, group_size=3) == expected


def test_meetings_without_a_client_are_counted_chunk_by_chunk(
    monkeypatch: pytest.MonkeyPatch, mapping: Mapping
) -> None:
    records, aliased = _crafted_people(mapping)
    expected = unify(Snapshot.from_records(records), aliased, NOW)
    monkeypatch.setattr("engagement.partition.COUNT_CHUNK", 7)
    got = unify_all(MemorySource(records), aliased, NOW, partitions=1)
    assert (got.meetings_internal, got.issues_without_engagement) == (
        expected.meetings_internal,
        expected.issues_without_engagement,
    )
