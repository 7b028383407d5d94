"""The Salesforce writer against the Salesforce emulator, through simple-salesforce over HTTP.

Writes are counted from the emulator's own store (one Task per key, nothing missing) and its
request log (how many calls, which endpoints); values are read back with SOQL as a user would.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from pydantic import SecretStr
from simple_salesforce.api import Salesforce

from connectors.base import WriteRequest
from connectors.errors import AuthError, ConfigError
from connectors.retry import RetrySettings
from connectors.salesforce import SalesforceWriter
from connectors.salesforce.soql import literal, select
from connectors.salesforce.writer import MAX_LOOKUP_URI, fit
from connectors.settings import SalesforceSettings
from engagement.mapping import Mapping, load_mapping
from sandbox.clock import Clock
from sandbox.credentials import SalesforceCredentials
from sandbox.generator import generate_world
from sandbox.http import ApiServer
from sandbox.recorder import RequestLog
from sandbox.salesforce import SalesforceApp, SalesforceStore, ids
from sandbox.salesforce.client_support import plain_http_session

FAST_RETRY = RetrySettings(max_attempts=10, base_wait_s=0.0, max_wait_s=0.02)
DUE = date(2026, 5, 4)
HOSTILE = 'Robert\'); DROP TABLE Task; -- "quoted" <b>bold</b> &amp; 北京 naïve \\ back\nslash'
NOBODY = ids.to18("003ZZZzzzzzzzzz")  # a well-formed Contact id the org does not have


@dataclass
class Org:
    store: SalesforceStore
    app: SalesforceApp
    server: ApiServer
    log: RequestLog
    creds: SalesforceCredentials
    users: list[str]
    contacts: list[str]
    opportunities: list[str]

    def settings(self, auth: str = "oauth_password") -> SalesforceSettings:
        c = self.creds
        return SalesforceSettings.model_validate(
            {
                "auth": auth,
                "instance_url": self.server.base_url,
                "login_url": self.server.base_url,
                "session_id": SecretStr(c.session_id),
                "username": c.username,
                "password": SecretStr(c.password),
                "consumer_key": c.consumer_key,
                "consumer_secret": SecretStr(c.consumer_secret),
                "retry": FAST_RETRY,
            }
        )

    def user_client(self) -> Salesforce:
        """Someone working in Salesforce next to Accord (their own session, their own edits)."""
        base = self.server.base_url
        return Salesforce(
            instance_url=base.replace("http://", "https://"),
            session_id=self.creds.session_id,
            session=plain_http_session(base),
        )

    def tasks(self) -> list[dict[str, Any]]:
        """Every Task in the emulator's store, deleted ones included."""
        return list(self.store.run(self.store.compile("SELECT Id FROM Task"), include_deleted=True))

    def endpoints(self, since: int) -> Counter[str]:
        return Counter(r.endpoint for r in self.log.records(since_seq=since))


def _ids(store: SalesforceStore, obj: str) -> list[str]:
    return sorted(str(r["Id"]) for r in store.run(store.compile(select(obj, ["Id"])), include_deleted=False))


@pytest.fixture
def org() -> Iterator[Org]:
    clock, creds, log = Clock(), SalesforceCredentials(), RequestLog()
    store = SalesforceStore.from_world(generate_world("small", 5), clock)
    app = SalesforceApp(store, clock, creds)
    server = ApiServer(app, log)
    app.base_url = server.base_url
    server.start()
    yield Org(store, app, server, log, creds, _ids(store, "User"), _ids(store, "Contact"), _ids(store, "Opportunity"))
    server.stop()
    assert server.errors == []


@pytest.fixture(scope="module")
def mapping() -> Mapping:
    return load_mapping("mappings/default.yaml")


def task(org: Org, i: int, **changes: Any) -> WriteRequest:
    """A reminder Task as the planner sends it; the key looks like the planner's keys."""
    opportunity = org.opportunities[i % len(org.opportunities)]
    payload: dict[str, Any] = {
        "reason": "meeting_follow_up",
        "subject": f"Follow up on the workshop ({i})",
        "description": f"No follow-up since the meeting. Reminder {i}.",
        "due_date": (DUE + timedelta(days=i % 5)).isoformat(),
        "owner_id": org.users[i % len(org.users)],
        "who_id": org.contacts[i % len(org.contacts)] if i % 4 else None,
        "what_id": opportunity,
        "priority": "High" if i % 3 == 0 else "Normal",
        "status": "Not Started",
    }
    key = changes.pop("key", f"acc-{opportunity}-meeting_follow_up-{i:012x}")
    return WriteRequest(key, "task", {**payload, **changes})


def by_key(org: Org) -> dict[str, dict[str, Any]]:
    rows = org.tasks()
    keys = Counter(str(r["Accord_Key__c"]) for r in rows)
    assert max(keys.values(), default=1) == 1, "a key is on more than one Task"
    return {str(r["Accord_Key__c"]): r for r in rows}


def assert_task(row: dict[str, Any], request: WriteRequest) -> None:
    p = request.payload
    assert row["Subject"] == p["subject"] and row["Description"] == p["description"]
    assert row["OwnerId"] == p["owner_id"] and row["WhoId"] == p["who_id"] and row["WhatId"] == p["what_id"]
    assert row["ActivityDate"] == date.fromisoformat(p["due_date"])
    assert row["Status"] == "Not Started" and row["Priority"] == p["priority"] and not row["IsDeleted"]


def test_450_tasks_land_once_each_in_three_upserts(org: Org, mapping: Mapping) -> None:
    writer = SalesforceWriter(org.settings(), mapping)
    requests = [task(org, i) for i in range(450)]
    since = org.log.last_seq
    results = writer.write(requests)
    assert [r.key for r in results] == [r.key for r in requests]
    assert {(r.ok, r.outcome) for r in results} == {(True, "created")}
    assert org.endpoints(since) == {"oauth2.token": 1, "query_all": 3, "composite.upsert": 3}
    upserts = org.log.records(endpoint="composite.upsert", since_seq=since)
    assert {(u.method, u.path, u.body_keys) for u in upserts} == {
        ("PATCH", "/services/data/v59.0/composite/sobjects/Task/Accord_Key__c", ("allOrNone", "records"))
    }
    assert writer.calls == {"lookup": 3, "upsert": 3}
    stored = by_key(org)
    assert len(stored) == len(org.tasks()) == 450
    for request, result in zip(requests, results, strict=True):
        row = stored[request.key]
        assert result.target_id == row["Id"]
        assert_task(row, request)
    writer.close()


def test_writing_again_creates_nothing_and_keeps_what_the_user_changed(org: Org, mapping: Mapping) -> None:
    requests = [task(org, i) for i in range(450)]
    first = SalesforceWriter(org.settings(), mapping).write(requests)
    completed, snoozed, edited = (str(first[i].target_id) for i in (7, 250, 420))
    later = (DUE + timedelta(days=30)).isoformat()
    user = org.user_client()
    user.restful(f"sobjects/Task/{completed}", method="PATCH", json={"Status": "Completed"})
    user.restful(f"sobjects/Task/{snoozed}", method="PATCH", json={"ActivityDate": later})
    edit = {"Subject": "Called them, waiting for an answer", "Priority": "Low"}
    user.restful(f"sobjects/Task/{edited}", method="PATCH", json=edit)
    stamps = {r["Id"]: r["SystemModstamp"] for r in org.tasks()}

    since = org.log.last_seq
    again = SalesforceWriter(org.settings(), mapping).write(requests)  # a re-run: a new process
    assert {(r.ok, r.outcome) for r in again} == {(True, "exists")}
    assert [r.target_id for r in again] == [r.target_id for r in first]
    assert org.endpoints(since) == {"oauth2.token": 1, "query_all": 3}  # three lookups, no write at all
    assert {r["Id"]: r["SystemModstamp"] for r in org.tasks()} == stamps
    seen = user.query_all(
        select(
            "Task",
            ["Id", "Status", "IsClosed", "ActivityDate", "Subject", "Priority"],
            where=[f"Id IN ({literal(completed)}, {literal(snoozed)}, {literal(edited)})"],
        )
    )["records"]
    rows = {r["Id"]: r for r in seen}
    assert rows[completed]["Status"] == "Completed" and rows[completed]["IsClosed"] is True
    assert rows[snoozed]["ActivityDate"] == later and rows[snoozed]["Status"] == "Not Started"
    assert rows[edited]["Subject"] == "Called them, waiting for an answer" and rows[edited]["Priority"] == "Low"
    assert len(org.tasks()) == 450


def test_a_reminder_the_user_deleted_is_not_recreated(org: Org, mapping: Mapping) -> None:
    requests = [task(org, i) for i in range(5)]
    first = SalesforceWriter(org.settings(), mapping).write(requests)
    org.user_client().restful(f"sobjects/Task/{first[2].target_id}", method="DELETE")
    again = SalesforceWriter(org.settings(), mapping).write(requests)
    assert [r.outcome for r in again] == ["exists"] * 5
    assert [r["IsDeleted"] for r in org.tasks()].count(True) == 1 and len(org.tasks()) == 5


def test_a_write_repeated_after_a_crash_keeps_one_task_per_key(org: Org, mapping: Mapping) -> None:
    requests = [task(org, i) for i in range(240)]
    crashed = SalesforceWriter(org.settings(), mapping)
    crashed.write(requests[:120])  # landed, but the outbox never learned it: the process died here
    crashed.close()
    results = SalesforceWriter(org.settings(), mapping).write(requests)
    assert [r.outcome for r in results] == ["exists"] * 120 + ["created"] * 120
    stored = by_key(org)
    assert len(stored) == 240 and set(stored) == {r.key for r in requests}
    for request in requests:
        assert_task(stored[request.key], request)


def test_two_runs_racing_on_the_same_keys_make_one_task_each(org: Org, mapping: Mapping) -> None:
    org.app.faults.configure(latency_ms=2.0)  # widen the gap between one run's lookup and its upsert
    requests = [task(org, i) for i in range(400)]
    writers = [SalesforceWriter(org.settings(), mapping) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda w: w.write(requests), writers))
    assert len(by_key(org)) == len(org.tasks()) == 400
    for a, b in zip(*outcomes, strict=True):
        assert a.ok and b.ok and a.target_id == b.target_id
        assert sorted([a.outcome, b.outcome]) in (["created", "exists"], ["created", "updated"])


def test_record_failures_are_results_and_the_rest_of_the_batch_lands(org: Org, mapping: Mapping) -> None:
    requests = [task(org, i) for i in range(10)]
    requests[3] = task(org, 3, who_id=NOBODY)
    requests[5] = task(org, 5, who_id="not-an-id-at-all")
    requests[7] = task(org, 7, owner_id=org.contacts[0])  # a Contact cannot own a Task
    requests += [
        task(org, 10, subject=""),
        task(org, 11, due_date="20260504"),  # ISO basic form: Python reads it, Salesforce does not
        WriteRequest("acc-email-1", "email", {"to": "someone"}),
    ]
    since = org.log.last_seq
    results = SalesforceWriter(org.settings(), mapping).write(requests)
    assert org.endpoints(since) == {"oauth2.token": 1, "query_all": 1, "composite.upsert": 1}
    failed = {i: r for i, r in enumerate(results) if not r.ok}
    assert set(failed) == {3, 5, 7, 10, 11, 12}
    assert all(r.outcome == "failed" and not r.retriable for r in failed.values())
    assert failed[3].error == "INVALID_CROSS_REFERENCE_KEY on WhoId: invalid cross reference id"
    assert failed[5].error == "MALFORMED_ID on WhoId"  # Salesforce's message quotes the value: left out
    assert failed[7].error == "FIELD_INTEGRITY_EXCEPTION on OwnerId"
    assert (failed[10].error, failed[11].error) == ("payload lacks subject", "payload due_date must be YYYY-MM-DD")
    assert failed[12].error == "unsupported kind 'email'"
    stored = by_key(org)
    assert set(stored) == {requests[i].key for i in range(10) if i not in failed}
    for i in set(range(10)) - set(failed):
        assert results[i].outcome == "created" and results[i].target_id == stored[requests[i].key]["Id"]


def _opportunities(org: Org, count: int) -> list[str]:
    account = _ids(org.store, "Account")[0]
    return [
        org.store.create(
            "Opportunity",
            {"Name": f"Retainer {i}", "AccountId": account, "StageName": "Closed Won", "CloseDate": "2026-01-31"},
            user_id=org.app.user_id,
        )
        for i in range(count)
    ]


def status(mapping: Mapping, opportunity: str, i: int, key: str | None = None, **fields: Any) -> WriteRequest:
    names = mapping.push.salesforce.status_fields
    values = {
        names["health"]: ("Green", "Amber", "Red")[i % 3],
        names["stage"]: "execution",
        names["summary"]: f"{HOSTILE}\n" + "Two issues overdue. " * (i % 7),
        names["updated"]: f"2026-05-0{1 + i % 5}T10:{i % 60:02d}:00Z",
    }
    payload = {"opportunity_id": opportunity, "fields": {**values, **fields}}
    return WriteRequest(key or f"status-{opportunity}-{i:08x}-sf", "opportunity_status", payload)


def read_statuses(org: Org) -> dict[str, dict[str, Any]]:
    """The status fields of every Opportunity Accord wrote to, read back with SOQL."""
    fields = ["Id", "Accord_Health__c", "Accord_Stage__c", "Accord_Status_Summary__c", "Accord_Status_Updated__c"]
    soql = select("Opportunity", fields, where=["Accord_Stage__c = 'execution'"])
    return {r["Id"]: r for r in org.user_client().query_all(soql)["records"]}


def test_opportunity_status_on_250_opportunities_in_two_calls(org: Org, mapping: Mapping) -> None:
    opportunities = _opportunities(org, 250)
    requests = [status(mapping, o, i) for i, o in enumerate(opportunities)]
    writer = SalesforceWriter(org.settings(), mapping)
    since = org.log.last_seq
    results = writer.write(requests)
    assert [(r.ok, r.outcome, r.target_id) for r in results] == [(True, "updated", o) for o in opportunities]
    assert org.endpoints(since) == {"oauth2.token": 1, "composite.update": 2}
    assert {(r.method, r.path) for r in org.log.records(endpoint="composite.update")} == {
        ("PATCH", "/services/data/v59.0/composite/sobjects")
    }
    read = read_statuses(org)
    assert len(read) == 250
    for request in requests:
        row, sent = read[request.payload["opportunity_id"]], request.payload["fields"]
        assert row["Accord_Health__c"] == sent["Accord_Health__c"]
        assert row["Accord_Status_Summary__c"] == sent["Accord_Status_Summary__c"]
        assert row["Accord_Status_Updated__c"] == sent["Accord_Status_Updated__c"].replace("Z", ".000+0000")
    again = writer.write(requests)  # the same values again: nothing changes but the stamp
    assert [(r.ok, r.outcome) for r in again] == [(True, "updated")] * 250
    assert read_statuses(org) == read


def test_opportunity_status_failures(org: Org, mapping: Mapping) -> None:
    opportunities = org.opportunities[:4]
    requests = [
        status(mapping, opportunities[0], 0),
        status(mapping, opportunities[1], 1, Accord_Health__c="Purple"),
        status(mapping, opportunities[2], 2, StageName="Closed Lost"),  # not a status field: never sent
        status(mapping, ids.to18("006ZZZzzzzzzzzz"), 3),
        status(mapping, opportunities[3], 4),
    ]
    since = org.log.last_seq
    results = SalesforceWriter(org.settings(), mapping).write(requests)
    assert [r.outcome for r in results] == ["updated", "failed", "failed", "failed", "updated"]
    assert results[1].error == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST on Accord_Health__c"  # no "Purple"
    assert results[2].error == "'StageName' is not one of push.salesforce.status_fields"
    assert results[3].error == "INVALID_CROSS_REFERENCE_KEY: invalid cross reference id"
    assert org.endpoints(since) == {"oauth2.token": 1, "composite.update": 1}
    stages = {o: org.store.get("Opportunity", o)["StageName"] for o in opportunities}
    assert stages[opportunities[2]] != "Closed Lost"


def test_mixed_kinds_come_back_in_request_order(org: Org, mapping: Mapping) -> None:
    opportunity = org.opportunities[0]
    requests = [
        task(org, 0),
        status(mapping, opportunity, 0),
        WriteRequest("x-1", "jira_status_comment", {}),
        task(org, 1),
        task(org, 0),  # the same key twice in one call: written once, both told the same
        status(mapping, opportunity, 1),  # the same Opportunity under another key: a batch of its own
    ]
    since = org.log.last_seq
    results = SalesforceWriter(org.settings(), mapping).write(requests)
    assert [r.key for r in results] == [r.key for r in requests]
    assert [r.outcome for r in results] == ["created", "updated", "failed", "created", "created", "updated"]
    assert results[0] == results[4]
    assert org.endpoints(since) == {"oauth2.token": 1, "query_all": 1, "composite.upsert": 1, "composite.update": 2}
    assert len(org.tasks()) == 2
    health = org.store.get("Opportunity", opportunity)["Accord_Health__c"]
    assert health == requests[5].payload["fields"]["Accord_Health__c"]  # the later one wins


def test_faults_during_writes_are_retried_without_duplicates(org: Org, mapping: Mapping) -> None:
    opportunities = _opportunities(org, 250)
    requests = [task(org, i) for i in range(450)] + [status(mapping, o, i) for i, o in enumerate(opportunities)]
    push = mapping.push.model_copy(update={"salesforce": mapping.push.salesforce.model_copy(update={"batch_size": 25})})
    org.app.faults.configure(rate_429=0.15, rate_5xx=0.15, rate_drop=0.1, seed=5)
    results = SalesforceWriter(org.settings(), mapping.model_copy(update={"push": push})).write(requests)
    org.app.faults.reset()
    assert all(r.ok for r in results)
    assert Counter(r.outcome for r in results) == {"created": 450, "updated": 250}
    stored = by_key(org)
    assert len(stored) == len(org.tasks()) == 450
    for request in requests[:450]:
        assert_task(stored[request.key], request)
    faulted = Counter((r.endpoint, r.fault) for r in org.log.records() if r.fault)
    writes = ("composite.upsert", "composite.update")
    assert {fault for (endpoint, fault) in faulted if endpoint in writes} == {"429", "5xx", "drop"}
    throttled = org.log.records(endpoint="composite.upsert")
    assert any(r.status == 403 for r in throttled)  # REQUEST_LIMIT_EXCEEDED ConcurrentPerOrgLongTxn
    again = SalesforceWriter(org.settings(), mapping).write(requests[:450])
    assert {r.outcome for r in again} == {"exists"}


def test_an_expired_session_is_renewed_with_oauth_and_refused_with_a_fixed_session(org: Org, mapping: Mapping) -> None:
    writer = SalesforceWriter(org.settings("oauth_password"), mapping)
    assert {r.outcome for r in writer.write([task(org, i) for i in range(50)])} == {"created"}
    org.app.expire_credentials()
    since = org.log.last_seq
    results = writer.write([task(org, i) for i in range(50, 100)])
    assert {r.outcome for r in results} == {"created"}
    calls = [(r.endpoint, r.status) for r in org.log.records(since_seq=since)]
    assert calls == [("query_all", 401), ("oauth2.token", 200), ("query_all", 200), ("composite.upsert", 200)]
    assert len(org.tasks()) == 100

    fixed = SalesforceWriter(org.settings("session"), mapping)
    with pytest.raises(AuthError, match="session expired"):
        fixed.write([task(org, 100)])
    assert len(org.tasks()) == 100


def test_hostile_text_arrives_intact_and_a_long_subject_is_cut(org: Org, mapping: Mapping) -> None:
    long_description = (HOSTILE + " ") * (5000 // (len(HOSTILE) + 1))
    long_description += "x" * (5000 - len(long_description))
    requests = [
        task(org, 0, subject=HOSTILE, description=long_description, key="acc-o'brien-\"<b>北京</b>-\\-1"),
        task(org, 1, subject="北" * 255, description="<script>alert('x')</script>"),
        task(org, 2, subject="Ä" * 300),
        task(org, 3, subject="🎉" * 200),  # 2 UTF-16 units each: cut to 127 of them + the ellipsis
    ]
    writer = SalesforceWriter(org.settings(), mapping)
    assert [r.outcome for r in writer.write(requests)] == ["created"] * 4
    rows = org.user_client().query_all("SELECT Accord_Key__c, Subject, Description FROM Task ORDER BY Accord_Key__c")[
        "records"
    ]
    got = {r["Accord_Key__c"]: (r["Subject"], r["Description"]) for r in rows}
    assert got[requests[0].key] == (HOSTILE, long_description) and len(long_description) == 5000
    assert got[requests[1].key] == ("北" * 255, "<script>alert('x')</script>")
    assert got[requests[2].key][0] == "Ä" * 254 + "…"
    assert got[requests[3].key][0] == "🎉" * 127 + "…"
    assert [r.outcome for r in writer.write(requests)] == ["exists"] * 4  # the quoted keys are found again
    assert len(org.tasks()) == 4


def test_long_keys_split_the_lookup_below_the_uri_limit(org: Org, mapping: Mapping) -> None:
    requests = [task(org, i, key=f"{i:04d}-" + "k" * 250) for i in range(200)]
    writer = SalesforceWriter(org.settings(), mapping)
    assert len(writer.lookup_queries([r.key for r in requests])) == 4
    since = org.log.last_seq
    assert {r.outcome for r in writer.write(requests)} == {"created"}
    assert org.endpoints(since) == {"oauth2.token": 1, "query_all": 4, "composite.upsert": 1}
    lookups = org.log.records(endpoint="query_all", since_seq=since)
    uris = [len(c.path) + 1 + len(urlencode(c.query, doseq=True)) for c in lookups]
    assert all(14_000 < uri <= MAX_LOOKUP_URI for uri in uris[:-1]) and uris[-1] <= MAX_LOOKUP_URI
    assert {r.outcome for r in writer.write(requests)} == {"exists"}


def test_a_spent_daily_quota_stops_the_run_with_retriable_results(org: Org, mapping: Mapping) -> None:
    writer = SalesforceWriter(org.settings(), mapping)
    writer.write([task(org, 1000)])  # logged in; 2 calls counted
    org.app.set_daily_api_limit(org.app.api_usage() + 2)  # the first batch's lookup and upsert, no more
    since = org.log.last_seq
    results = writer.write([task(org, i) for i in range(450)])
    assert [r.outcome for r in results] == ["created"] * 200 + ["failed"] * 250
    assert all(r.retriable for r in results[200:])
    assert results[200].error == "write 200 Tasks: QuotaExhaustedError (HTTP 403)"
    assert results[449].error == "not attempted: an earlier call failed (QuotaExhaustedError)"
    assert [(r.endpoint, r.status) for r in org.log.records(since_seq=since)] == [
        ("query_all", 200),
        ("composite.upsert", 200),
        ("query_all", 403),
    ]
    assert len(org.tasks()) == 201


@pytest.mark.parametrize("field", ["Subject", "Shoe_Size__c"])  # not an External ID; not a field at all
def test_a_key_field_the_org_lacks_is_a_config_error(org: Org, mapping: Mapping, field: str) -> None:
    push = mapping.push.model_copy(
        update={"salesforce": mapping.push.salesforce.model_copy(update={"task_external_id": field})}
    )
    broken = mapping.model_copy(update={"push": push})
    with pytest.raises(ConfigError, match=field):
        SalesforceWriter(org.settings(), broken).write([task(org, i) for i in range(3)])
    assert org.tasks() == []


def test_fit_cuts_with_an_ellipsis_counting_utf16_units() -> None:
    assert fit("short", 255) == "short"
    assert fit("a" * 255, 255) == "a" * 255
    assert fit("a" * 256, 255) == "a" * 254 + "…"
    assert fit("a" * 253 + "🎉🎉", 255) == "a" * 253 + "…"  # the emoji would need 2 units, 1 is left
    assert fit("", 3) == ""
