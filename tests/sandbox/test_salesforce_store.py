"""The Salesforce store without HTTP: ids, loading a World, write validation, the recycle bin,
replication windows and mutations."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.clock import Clock
from sandbox.generator import generate_world
from sandbox.salesforce import SalesforceStore, ids
from sandbox.salesforce.schema import load_schema
from sandbox.salesforce.store import AmbiguousExternalId, RecordError
from sandbox.world import World

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def reference_suffix(id15: str) -> str:
    """The case-safe suffix written the way Salesforce documents it: reversed bit strings per chunk."""
    out = ""
    for i in range(0, 15, 5):
        bits = "".join("1" if c.isupper() else "0" for c in reversed(id15[i : i + 5]))
        out += "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"[int(bits, 2)]
    return out


@given(st.text(alphabet=BASE62, min_size=15, max_size=15))
def test_checksum_matches_the_documented_algorithm(id15: str) -> None:
    assert ids.to18(id15) == id15 + reference_suffix(id15)
    assert ids.normalize(id15) == ids.to18(id15)
    assert ids.normalize(ids.to18(id15)) == ids.to18(id15)


def test_known_id_and_malformed_ids() -> None:
    assert ids.to18("001A0000006Vm9r") == "001A0000006Vm9rIAC"
    assert ids.normalize("001A0000006Vm9rIAC") == "001A0000006Vm9rIAC"
    assert ids.normalize("001A0000006Vm9riac") == "001A0000006Vm9rIAC"  # the suffix is case-insensitive
    for bad in ("001A0000006Vm9rAAA", "001A0000006Vm9", "001A0000006Vm9r!", "", None, 17):
        assert ids.normalize(bad) is None


def test_new_ids_are_valid_unique_and_deterministic() -> None:
    first, second = ids.IdFactory("5g0"), ids.IdFactory("5g0")
    made = [first.new("003") for _ in range(500)]
    assert made == [second.new("003") for _ in range(500)]
    assert len(set(made)) == 500
    assert all(ids.normalize(i) == i and i.startswith("0035g0") for i in made)
    assert first.new("001")[6:15] != first.new("003")[6:15]


# -- loading -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world("small", seed=3)


def fresh(world: World) -> tuple[SalesforceStore, Clock]:
    clock = Clock()
    return SalesforceStore.from_world(world, clock), clock


def test_from_world_renders_every_record(world: World) -> None:
    store, _ = fresh(world)
    counts = store.counts()
    assert counts["User"] == len(world.users) + 1  # + the integration user
    assert counts["Account"] == len(world.clients)
    assert counts["Contact"] == len(world.contacts)
    assert counts["Opportunity"] == len(world.engagements)
    assert counts["OpportunityContactRole"] == len(world.roles)
    client = world.clients[2]
    account = store.lookup(store.id_for(client.key))
    assert account is not None
    assert account["Email_Domains__c"] == ";".join(client.domains)
    assert account["OwnerId"] == store.id_for(client.owner_key)
    assert account["SystemModstamp"] == client.modified.replace(microsecond=client.modified.microsecond // 1000 * 1000)
    assert account["CreatedDate"] <= account["LastModifiedDate"]
    for engagement in world.engagements:
        opportunity = store.lookup(store.id_for(engagement.key))
        assert opportunity is not None
        assert opportunity["Jira_Project_Key__c"] == engagement.jira_project_key
        assert opportunity["IsClosed"] == engagement.stage.startswith("Closed")
        assert opportunity["IsWon"] == (engagement.stage == "Closed Won")
    user = world.users[3]
    record = store.lookup(store.id_for(user.key))
    assert record is not None and record["Name"] == f"{user.first_name} {user.last_name}"
    assert record["ManagerId"] == (store.id_for(user.manager_key) if user.manager_key else None)


def test_medium_world_loads_quickly() -> None:
    medium = generate_world("medium", seed=1)
    started = time.perf_counter()
    store = SalesforceStore.from_world(medium, Clock())
    elapsed = time.perf_counter() - started
    assert store.counts()["Contact"] == len(medium.contacts)
    assert elapsed < 5.0


def test_org_definition_declares_the_custom_fields() -> None:
    schema = load_schema()
    task_key = schema.objects["Task"].fields["Accord_Key__c"]
    assert task_key.external_id and task_key.unique
    assert schema.objects["Event"].fields["Accord_Key__c"].external_id
    assert schema.objects["Opportunity"].fields["Accord_Health__c"].values == ("Green", "Amber", "Red")
    assert [o.key_prefix for o in schema.objects.values()] == [
        "005",
        "001",
        "003",
        "006",
        "00k",
        "00T",
        "00U",
    ]
    for obj in schema.objects.values():
        assert {"Id", "CreatedDate", "SystemModstamp", "LastModifiedById"} <= set(obj.fields)


# -- writes ------------------------------------------------------------------------------------------------


def test_write_validation(world: World) -> None:
    store, _ = fresh(world)
    user = store.integration_user_id
    account_id = store.id_for(world.clients[0].key)
    cases: list[tuple[str, dict[str, object], str, tuple[str, ...]]] = [
        ("Contact", {"FirstName": "No"}, "REQUIRED_FIELD_MISSING", ("LastName",)),
        ("Contact", {"LastName": "X", "Shoe_Size__c": 9}, "INVALID_FIELD", ()),
        ("Contact", {"LastName": "X", "Name": "Full"}, "INVALID_FIELD_FOR_INSERT_UPDATE", ("Name",)),
        ("Contact", {"LastName": "X", "AccountId": "not-an-id"}, "MALFORMED_ID", ("AccountId",)),
        (
            "Contact",
            {"LastName": "X", "AccountId": store.id_for(world.contacts[0].key)},
            "FIELD_INTEGRITY_EXCEPTION",
            ("AccountId",),
        ),
        (
            "Contact",
            {"LastName": "X", "AccountId": ids.to18("0015g0000000001")},
            "INVALID_CROSS_REFERENCE_KEY",
            ("AccountId",),
        ),
        ("Contact", {"LastName": "X", "Email": "nobody"}, "INVALID_EMAIL_ADDRESS", ("Email",)),
        ("Contact", {"LastName": "X" * 81}, "STRING_TOO_LONG", ("LastName",)),
        ("Opportunity", {"Name": "O", "StageName": "Prospecting"}, "REQUIRED_FIELD_MISSING", ("CloseDate",)),
        (
            "Opportunity",
            {"Name": "O", "StageName": "Prospecting", "CloseDate": "2024-13-01"},
            "JSON_PARSER_ERROR",
            ("CloseDate",),
        ),
        (
            "Opportunity",
            {
                "Name": "O",
                "StageName": "Prospecting",
                "CloseDate": "2024-05-01",
                "Accord_Health__c": "Purple",
            },
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            ("Accord_Health__c",),
        ),
        ("Task", {"Subject": "x", "IsClosed": True}, "INVALID_FIELD_FOR_INSERT_UPDATE", ("IsClosed",)),
    ]
    for object_name, body, code, fields in cases:
        with pytest.raises(RecordError) as raised:
            store.create(object_name, body, user_id=user)
        assert (raised.value.item.code, raised.value.item.fields) == (code, fields), (object_name, body)
    opportunity_id = store.id_for(world.engagements[0].key)
    task_id = store.create(
        "Task",
        {"Subject": "Call", "WhatId": opportunity_id, "Priority": "high", "Accord_Key__c": "K-1"},
        user_id=user,
    )
    task = store.get("task", task_id)
    assert task["AccountId"] == store.id_for(world.engagements[0].client_key)  # derived through the Opportunity
    assert (task["Status"], task["Priority"], task["IsHighPriority"], task["OwnerId"]) == (
        "Not Started",
        "High",
        True,
        user,
    )
    with pytest.raises(RecordError) as raised:
        store.create("Task", {"Subject": "dup", "Accord_Key__c": "k-1"}, user_id=user)
    assert raised.value.item.code == "DUPLICATE_VALUE" and task_id in raised.value.item.message
    store.update("Task", task_id[:15], {"Status": "Completed"}, user_id=user)
    assert store.get("Task", task_id)["IsClosed"] is True
    contact_id = store.create("Contact", {"LastName": "Solo", "AccountId": account_id}, user_id=user)
    with pytest.raises(RecordError) as raised:
        store.update("Contact", contact_id, {"LastName": None}, user_id=user)
    assert raised.value.item.code == "REQUIRED_FIELD_MISSING"


def test_upsert_by_external_id(world: World) -> None:
    store, _ = fresh(world)
    user = store.integration_user_id
    first, created = store.upsert(
        "Event",
        "Accord_Key__c",
        "E-1",
        {"Subject": "a", "StartDateTime": "2024-05-01T10:00:00Z", "EndDateTime": "2024-05-01T11:00:00Z"},
        user_id=user,
    )
    assert created
    again, created = store.upsert("Event", "accord_key__c", "e-1", {"Subject": "b"}, user_id=user)
    assert (again, created) == (first, False)
    assert store.get("Event", first)["Subject"] == "b"
    store.create(
        "Event",
        {
            "Subject": "twin",
            "Accord_Key__c": "E-1",
            "StartDateTime": "2024-05-01T10:00:00Z",
            "EndDateTime": "2024-05-01T11:00:00Z",
        },
        user_id=user,
    )
    with pytest.raises(AmbiguousExternalId) as ambiguous:
        store.upsert("Event", "Accord_Key__c", "E-1", {"Subject": "c"}, user_id=user)
    assert len(ambiguous.value.record_ids) == 2
    with pytest.raises(RecordError) as raised:
        store.upsert("Task", "Subject", "x", {}, user_id=user)
    assert (raised.value.status, raised.value.item.code) == (404, "NOT_FOUND")


def test_journal_rolls_back_creates_updates_and_deletes(world: World) -> None:
    store, _ = fresh(world)
    user = store.integration_user_id
    contact_id = store.id_for(world.contacts[0].key)
    before = store.counts()
    title_before = store.get("Contact", contact_id)["Title"]
    with store.journal() as journal:
        store.create("Task", {"Subject": "t", "Accord_Key__c": "J-1"}, user_id=user)
        store.update("Contact", contact_id, {"Title": "Changed"}, user_id=user)
        store.delete("Contact", store.id_for(world.contacts[1].key), user_id=user)
        store.rollback(journal)
    assert store.counts() == before
    assert store.get("Contact", contact_id)["Title"] == title_before
    assert store.find_by_external_id("Task", "Accord_Key__c", "J-1") == []
    store.create("Task", {"Subject": "t", "Accord_Key__c": "J-1"}, user_id=user)  # the key is free again


# -- deletes and replication -------------------------------------------------------------------------------


def ids_of(store: SalesforceStore, soql: str, *, include_deleted: bool = False) -> set[str]:
    compiled = store.compile(soql)
    return {r["Id"] for r in store.run(compiled, include_deleted=include_deleted)}


def test_recycle_bin_cascade_undelete_and_purge(world: World) -> None:
    store, clock = fresh(world)
    user = store.integration_user_id
    role = world.roles[0]
    contact_id, role_id = store.id_for(role.contact_key), store.id_for(role.key)
    start = clock.now() - timedelta(minutes=5)
    store.delete("Contact", contact_id, user_id=user)
    assert contact_id not in ids_of(store, "SELECT Id FROM Contact")
    assert role_id not in ids_of(store, "SELECT Id FROM OpportunityContactRole")
    assert {contact_id} == ids_of(store, "SELECT Id FROM Contact WHERE IsDeleted = true", include_deleted=True)
    assert role_id in ids_of(store, "SELECT Id FROM OpportunityContactRole", include_deleted=True)
    end = clock.now() + timedelta(minutes=2)
    deleted = store.deleted("Contact", start, end)
    assert [record_id for record_id, _ in deleted.records] == [contact_id]
    assert role_id in {i for i, _ in store.deleted("OpportunityContactRole", start, end).records}
    with pytest.raises(RecordError) as raised:
        store.update("Contact", contact_id, {"Title": "x"}, user_id=user)
    assert raised.value.item.code == "ENTITY_IS_DELETED"

    store._undelete(store.lookup(contact_id) or {}, clock.now(), user)  # as a mutation restores it
    assert role_id in ids_of(store, "SELECT Id FROM OpportunityContactRole")

    store.delete("Contact", contact_id, user_id=user)
    clock.advance(16 * 86400)
    assert contact_id not in ids_of(store, "SELECT Id FROM Contact", include_deleted=True)
    purged = store.deleted("Contact", clock.now() - timedelta(days=20), clock.now())
    assert purged.records == []
    assert purged.earliest_date_available > start


def test_hard_delete_leaves_no_trace(world: World) -> None:
    store, clock = fresh(world)
    contact_id = store.id_for(world.contacts[5].key)
    start = clock.now() - timedelta(minutes=1)
    obj = store.schema.objects["Contact"]
    store._hard_delete(obj, store.lookup(contact_id) or {}, clock.now())
    assert contact_id not in ids_of(store, "SELECT Id FROM Contact", include_deleted=True)
    result = store.deleted("Contact", start, clock.now() + timedelta(minutes=1))
    assert result.records == []
    assert result.earliest_date_available >= start  # a physical delete: older deletions may be unknown


def test_replication_windows(world: World) -> None:
    store, clock = fresh(world)
    now = clock.now()
    with pytest.raises(RecordError, match="precede"):
        store.updated("Contact", now, now - timedelta(minutes=5))
    with pytest.raises(RecordError, match="30 days"):
        store.updated("Contact", now - timedelta(days=31), now)
    contact_id = store.id_for(world.contacts[4].key)
    store.update("Contact", contact_id, {"Title": "Moved"}, user_id=store.integration_user_id)
    modified = store.get("Contact", contact_id)["SystemModstamp"]
    window = store.updated("Contact", modified.replace(second=0, microsecond=0), modified + timedelta(minutes=1))
    assert contact_id in window.ids
    # Seconds are ignored: a start later in the same minute still covers the record.
    window = store.updated("Contact", modified.replace(second=59), modified + timedelta(minutes=1))
    assert contact_id in window.ids
    assert window.latest_date_covered <= (modified + timedelta(minutes=1)).replace(second=0, microsecond=0)
    before = store.updated("Contact", modified - timedelta(minutes=10), modified - timedelta(minutes=2))
    assert contact_id not in before.ids
    future = store.updated("Contact", now - timedelta(hours=1), now + timedelta(hours=1))
    assert now.replace(second=0, microsecond=0) <= future.latest_date_covered <= clock.now()


# -- mutations ---------------------------------------------------------------------------------------------


def test_mutations_are_deterministic_and_share_one_stamp(world: World) -> None:
    stamp = datetime.now(UTC).replace(microsecond=123000)
    first, _ = fresh(world)
    second, _ = fresh(world)
    changes = first.mutate(random.Random(42), 40, stamp, late_share=0.0)
    assert changes == second.mutate(random.Random(42), 40, stamp, late_share=0.0)
    assert {c.stamp for c in changes} == {stamp}
    assert {c.kind for c in changes} >= {"update", "create", "delete"}
    assert {c.object for c in changes} >= {"Contact", "Opportunity", "OpportunityContactRole"}
    personal = {v.lower() for c in world.contacts for v in (c.email, c.first_name, c.last_name)}
    assert not any(word.lower() in personal for c in changes for word in c.detail.split())
    hard_deleted = {c.id for c in changes if c.kind == "hard_delete"}
    for change in changes:
        record = first.lookup(change.id)
        if record is None:
            assert change.id in hard_deleted
        else:
            assert record["SystemModstamp"] == stamp


def test_late_changes_commit_on_release_with_their_old_stamp(world: World) -> None:
    store, clock = fresh(world)
    stamp = clock.now()
    changes = store.mutate(random.Random(7), 30, stamp, late_share=0.5)
    late = [c for c in changes if c.late]
    assert late and any(not c.late for c in changes)
    on_time = {c.id for c in changes if not c.late}
    late_updates = [c for c in late if c.kind == "update" and c.id not in on_time]
    late_creates = [c for c in late if c.kind == "create"]
    assert late_updates or late_creates
    for change in late_creates:
        assert store.lookup(change.id) is None
    for change in late_updates:
        record = store.lookup(change.id)
        assert record is not None and record["SystemModstamp"] < stamp
    window = store.updated("Contact", stamp - timedelta(days=1), stamp + timedelta(hours=1))
    assert window.latest_date_covered <= stamp.replace(second=0, microsecond=0)  # an open transaction

    clock.advance(600)
    released = store.release_pending()
    assert sorted(c.id for c in released) == sorted(c.id for c in late)
    for change in late:
        record = store.lookup(change.id)
        if change.kind in ("update", "create", "undelete"):
            assert record is not None and record["SystemModstamp"] == stamp
    assert store.release_pending() == []
    assert store.counts()["pending"] == 0
