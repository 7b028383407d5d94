"""The Salesforce emulator driven by the real client, simple-salesforce 1.12.10, over real HTTP and TLS.

Each test reads what the client sees (records, exceptions, ``api_usage``) and, where the calls
matter, the request log. Expected rows are computed from the World, not from the emulator.
"""

from __future__ import annotations

import csv
import io
import math
import random
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceMoreThanOneRecord,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)
from simple_salesforce.format import format_soql

from sandbox.clock import Clock
from sandbox.credentials import SalesforceCredentials
from sandbox.generator import generate_world
from sandbox.http import ApiServer
from sandbox.recorder import RequestLog
from sandbox.salesforce import SalesforceApp, SalesforceStore
from sandbox.salesforce.client_support import plain_http_session, sandbox_session
from sandbox.tls import make_self_signed, server_context
from sandbox.world import Contact, World

EXTRA_CONTACTS = 450  # enough for several pages at batchSize=200
DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000$")


def build_world() -> World:
    world = generate_world("small", seed=11)
    client = world.clients[5]
    base = world.generated_at
    for i in range(EXTRA_CONTACTS):
        created = base - timedelta(days=2 + i % 40, minutes=i)
        world.contacts.append(
            Contact(
                key=f"contact-extra-{i:04d}",
                client_key=client.key,
                first_name=f"Page{i:03d}",
                last_name=["Adams", "baker", "Cole", "dunn"][i % 4],
                email=f"page.{i}@{client.domains[0]}",
                title="" if i % 3 == 0 else "Analyst",
                phone="",
                created=created,
                modified=created + timedelta(hours=1),
            )
        )
    return world


@dataclass
class Org:
    world: World
    store: SalesforceStore
    app: SalesforceApp
    server: ApiServer
    log: RequestLog
    clock: Clock
    creds: SalesforceCredentials
    ca_cert: Path | None = None

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def instance_url(self) -> str:
        return self.base_url.replace("http://", "https://")

    def session(self, login_domains: tuple[str, ...] = ("login", "test")) -> requests.Session:
        if self.ca_cert is not None:
            return sandbox_session(self.base_url, ca_cert=self.ca_cert, login_domains=login_domains)
        return plain_http_session(self.base_url, login_domains=login_domains)

    def direct(self, session_id: str | None = None, version: str = "59.0") -> Salesforce:
        return Salesforce(
            instance_url=self.instance_url,
            session_id=session_id or self.creds.session_id,
            session=self.session(),
            version=version,
        )

    def soap(self) -> Salesforce:
        c = self.creds
        return Salesforce(
            username=c.username, password=c.password, security_token=c.security_token, session=self.session()
        )

    def oauth(self) -> Salesforce:
        c = self.creds
        return Salesforce(
            username=c.username,
            password=c.password,
            consumer_key=c.consumer_key,
            consumer_secret=c.consumer_secret,
            session=self.session(),
        )

    def raw(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.creds.session_id}", **kwargs.pop("headers", {})}
        return self.session().request(method, self.instance_url + path, headers=headers, timeout=10, **kwargs)

    def stop(self) -> None:
        self.server.stop()
        assert self.server.errors == []


def start_org(world: World, ssl_context: ssl.SSLContext | None = None, ca_cert: Path | None = None) -> Org:
    clock = Clock()
    creds = SalesforceCredentials()
    store = SalesforceStore.from_world(world, clock)
    app = SalesforceApp(store, clock, creds)
    log = RequestLog()
    server = ApiServer(app, log, ssl_context=ssl_context)
    app.base_url = server.base_url
    server.start()
    return Org(world, store, app, server, log, clock, creds, ca_cert)


@pytest.fixture(scope="module")
def world() -> World:
    return build_world()


@pytest.fixture(scope="module")
def org(world: World) -> Iterator[Org]:
    """A shared org for tests that only read."""
    shared = start_org(world)
    yield shared
    shared.stop()


@pytest.fixture
def own_org(world: World) -> Iterator[Org]:
    """A fresh org for a test that writes, expires sessions, sets limits or injects faults."""
    fresh = start_org(world)
    yield fresh
    fresh.stop()


def error_of(exc: pytest.ExceptionInfo[Any]) -> dict[str, Any]:
    content = exc.value.content
    assert isinstance(content, list) and len(content) == 1
    return dict(content[0])


def ids(records: list[Any]) -> set[str]:
    return {r["Id"] for r in records}


# -- logins and sessions -----------------------------------------------------------------------------------


def test_session_id_login_counts_api_usage(org: Org) -> None:
    before = org.log.last_seq
    sf = org.direct()
    sf.query("SELECT Id FROM User LIMIT 1")
    first = sf.api_usage["api-usage"]
    sf.query("SELECT Id FROM User LIMIT 1")
    second = sf.api_usage["api-usage"]
    assert (second.used - first.used, second.total) == (1, 100_000)
    assert [r.endpoint for r in org.log.records(since_seq=before)] == [
        "query",
        "query",
    ]  # no login in direct mode


def test_password_and_oauth_logins_issue_new_sessions(org: Org) -> None:
    before = org.log.last_seq
    soap, oauth = org.soap(), org.oauth()
    client_credentials = Salesforce(
        consumer_key=org.creds.consumer_key,
        consumer_secret=org.creds.consumer_secret,
        domain="agency.my",
        session=org.session(login_domains=("agency.my",)),
    )
    sessions = {soap.session_id, oauth.session_id, client_credentials.session_id, org.creds.session_id}
    assert len(sessions) == 4
    for sf in (soap, oauth, client_credentials):
        assert sf.query("SELECT COUNT() FROM Account")["totalSize"] == len(org.world.clients)
    summary = org.log.summary(since_seq=before)["salesforce"]
    assert summary["POST login.soap"] == 1
    assert summary["POST oauth2.token"] == 2


def test_wrong_credentials_get_the_real_failures(org: Org) -> None:
    c = org.creds
    with pytest.raises(SalesforceAuthenticationFailed) as soap_failure:
        Salesforce(username=c.username, password="wrong", security_token=c.security_token, session=org.session())
    assert soap_failure.value.code == "INVALID_LOGIN"
    with pytest.raises(SalesforceAuthenticationFailed) as secret_failure:
        Salesforce(
            username=c.username,
            password=c.password,
            consumer_key=c.consumer_key,
            consumer_secret="nope",
            session=org.session(),
        )
    assert secret_failure.value.code == "invalid_client"
    with pytest.raises(SalesforceAuthenticationFailed) as password_failure:
        Salesforce(
            username=c.username,
            password="nope",
            consumer_key=c.consumer_key,
            consumer_secret=c.consumer_secret,
            session=org.session(),
        )
    assert (password_failure.value.code, password_failure.value.auth_message) == (
        "invalid_grant",
        "authentication failure",
    )
    with pytest.raises(SalesforceAuthenticationFailed) as client_failure:
        Salesforce(
            consumer_key="3MVG9-unknown",
            consumer_secret=c.consumer_secret,
            domain="agency.my",
            session=org.session(login_domains=("agency.my",)),
        )
    assert client_failure.value.code == "invalid_client_id"
    with pytest.raises(SalesforceExpiredSession) as expired:
        org.direct(session_id="00D5g000004SbXE!forged").query("SELECT Id, Email FROM Contact")
    assert error_of(expired) == {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
    anonymous = org.raw("GET", "/services/data/v59.0/query/?q=SELECT+Id+FROM+Contact", headers={"Authorization": ""})
    assert anonymous.status_code == 401 and "records" not in anonymous.text


def test_expired_sessions_direct_fails_password_clients_log_in_again(own_org: Org) -> None:
    org = own_org
    direct, soap, oauth = org.direct(), org.soap(), org.oauth()
    org.app.expire_credentials()
    with pytest.raises(SalesforceExpiredSession):
        direct.query("SELECT Id FROM Account")
    before = org.log.last_seq
    assert soap.query("SELECT COUNT() FROM Account")["totalSize"] == len(org.world.clients)
    assert oauth.Account.get(org.store.id_for(org.world.clients[0].key))["Name"] == org.world.clients[0].name
    calls = [(r.endpoint, r.status) for r in org.log.records(since_seq=before)]
    assert calls == [
        ("query", 401),
        ("login.soap", 200),
        ("query", 200),
        ("sobject.get", 401),
        ("oauth2.token", 200),
        ("sobject.get", 200),
    ]


def test_idle_sessions_expire_after_the_configured_time(own_org: Org) -> None:
    org = own_org
    org.app.session_ttl_seconds = 120
    sf = org.direct()
    sf.query("SELECT Id FROM Account LIMIT 1")
    org.clock.advance(100)
    sf.query("SELECT Id FROM Account LIMIT 1")  # use keeps it alive
    org.clock.advance(121)
    with pytest.raises(SalesforceExpiredSession):
        sf.query("SELECT Id FROM Account LIMIT 1")


def test_tls_with_the_sandbox_certificate(world: World, tmp_path: Path) -> None:
    cert, key = make_self_signed(tmp_path)
    tls = start_org(world, ssl_context=server_context(cert, key), ca_cert=cert)
    try:
        assert tls.base_url.startswith("https://")
        assert tls.direct().query("SELECT COUNT() FROM Contact")["totalSize"] == len(world.contacts)
        assert tls.soap().query("SELECT Id FROM Account LIMIT 2")["totalSize"] == 2
        assert tls.oauth().query("SELECT Id FROM Opportunity LIMIT 1")["totalSize"] == 1
        untrusted = requests.Session()
        untrusted.trust_env = False
        with pytest.raises(requests.exceptions.SSLError):
            untrusted.get(tls.base_url + "/services/data/", timeout=10)
    finally:
        tls.stop()


# -- SOQL --------------------------------------------------------------------------------------------------


def test_query_more_pages_through_a_snapshot(org: Org) -> None:
    sf = org.direct()
    options = {"Sforce-Query-Options": "batchSize=200"}
    first = sf.query("SELECT Id, Email FROM Contact", headers=options)
    total = len(org.world.contacts)
    assert (first["totalSize"], first["done"], len(first["records"])) == (total, False, 200)
    assert re.fullmatch(r"/services/data/v59\.0/query/01g\w{15}-200", first["nextRecordsUrl"])
    before = org.log.last_seq
    everything = sf.query_all("SELECT Id, Email FROM Contact", headers=options)
    assert everything["totalSize"] == total == len(ids(everything["records"]))
    assert org.log.count(endpoint="query_more", since_seq=before) == math.ceil(total / 200) - 1
    assert sf.query("SELECT Id FROM Contact")["done"] is True  # 2000 rows by default
    locator = first["nextRecordsUrl"].rsplit("/", 1)[1]
    again = sf.query_more(locator, identifier_is_url=False)
    assert ids(again["records"]) == ids(everything["records"][200:400])


def test_expired_locator(own_org: Org) -> None:
    sf = own_org.direct()
    first = sf.query("SELECT Id FROM Contact", headers={"Sforce-Query-Options": "batchSize=200"})
    own_org.clock.advance(16 * 60)
    with pytest.raises(SalesforceMalformedRequest) as raised:
        sf.query_more(first["nextRecordsUrl"], identifier_is_url=True)
    assert error_of(raised)["errorCode"] == "INVALID_QUERY_LOCATOR"


def test_parent_relationships_nest_and_polymorphic_ones_are_names(own_org: Org) -> None:
    org = own_org
    sf = org.direct()
    engagement = org.world.engagements[0]
    client = next(c for c in org.world.clients if c.key == engagement.client_key)
    owner = next(u for u in org.world.users if u.key == client.owner_key)
    opportunity_id = org.store.id_for(engagement.key)
    result = sf.query(
        format_soql("SELECT Name, Account.Name, Account.Owner.Email FROM Opportunity WHERE Id = {}", opportunity_id)
    )
    record = result["records"][0]
    assert record["attributes"] == {
        "type": "Opportunity",
        "url": f"/services/data/v59.0/sobjects/Opportunity/{opportunity_id}",
    }
    assert record["Account"]["attributes"]["type"] == "Account"
    assert record["Account"]["Name"] == client.name
    assert record["Account"]["Owner"]["Email"] == owner.email
    orphan = sf.Contact.create({"LastName": "Orphan"})["id"]
    row = sf.query(format_soql("SELECT Account.Name, Title FROM Contact WHERE Id = {}", orphan))["records"][0]
    assert row["Account"] is None and row["Title"] is None
    contact = org.world.contacts[0]
    task = sf.Task.create({"Subject": "Follow up", "WhoId": org.store.id_for(contact.key), "WhatId": opportunity_id})
    row = sf.query(
        format_soql("SELECT Who.Email, Who.Type, What.Name, Account.Name FROM Task WHERE Id = {}", task["id"])
    )["records"][0]
    assert row["Who"]["attributes"] == {
        "type": "Name",
        "url": f"/services/data/v59.0/sobjects/Contact/{org.store.id_for(contact.key)}",
    }
    assert (row["Who"]["Email"], row["Who"]["Type"]) == (contact.email, "Contact")
    assert row["What"]["Name"] == engagement.name
    assert row["Account"]["Name"] == client.name  # Task.AccountId derived from its What


def test_soql_filters_match_the_world(org: Org) -> None:
    sf = org.direct()
    world = org.world

    def query_ids(soql: str) -> set[str]:
        return ids(sf.query_all(soql)["records"])

    def contact_ids(pred: Any) -> set[str]:
        return {org.store.id_for(c.key) for c in world.contacts if pred(c)}

    def engagement_ids(pred: Any) -> set[str]:
        return {org.store.id_for(e.key) for e in world.engagements if pred(e)}

    mixed = next(c for c in world.contacts if c.email != c.email.lower())
    assert query_ids(format_soql("SELECT Id FROM Contact WHERE Email = {}", mixed.email.lower())) == {
        org.store.id_for(mixed.key)
    }
    assert query_ids(format_soql("SELECT Id FROM Contact WHERE Email != {}", mixed.email.upper())) == contact_ids(
        lambda c: c is not mixed
    )
    hostile = world.clients[0]
    assert query_ids(format_soql("SELECT Id FROM Account WHERE Name = {}", hostile.name)) == {
        org.store.id_for(hostile.key)
    }
    assert query_ids(format_soql("SELECT Id FROM Account WHERE Name LIKE '{:like}%'", hostile.name[:9])) == {
        org.store.id_for(hostile.key)
    }
    with_percent = {org.store.id_for(c.key) for c in world.clients if "%" in c.name}
    assert with_percent and query_ids("SELECT Id FROM Account WHERE Name LIKE '%\\%%'") == with_percent
    assert query_ids("SELECT Id FROM Contact WHERE FirstName LIKE 'page1_0'") == contact_ids(
        lambda c: re.fullmatch(r"Page1.0", c.first_name)
    )

    two = world.contacts[:2]
    fifteen = [org.store.id_for(c.key)[:15] for c in two]
    assert query_ids(format_soql("SELECT Id FROM Contact WHERE Id IN {}", fifteen)) == contact_ids(lambda c: c in two)
    assert query_ids(format_soql("SELECT Id FROM Contact WHERE Id NOT IN {}", fifteen)) == contact_ids(
        lambda c: c not in two
    )

    assert query_ids(
        "SELECT Id FROM Opportunity WHERE (StageName = 'closed won' AND Amount >= 300000) OR (NOT IsClosed = true)"
    ) == engagement_ids(lambda e: (e.stage == "Closed Won" and e.amount >= 300000) or not e.stage.startswith("Closed"))
    assert query_ids("SELECT Id FROM Opportunity WHERE Amount < 100000 AND Amount > 50000") == engagement_ids(
        lambda e: 50000 < e.amount < 100000
    )
    assert query_ids("SELECT Id FROM Opportunity WHERE Amount <= 100000 OR Amount <> 437000") == engagement_ids(
        lambda e: e.amount <= 100000 or e.amount != 437000
    )
    assert query_ids("SELECT Id FROM Opportunity WHERE IsWon = TRUE") == engagement_ids(
        lambda e: e.stage == "Closed Won"
    )
    assert query_ids(
        "SELECT Id FROM Opportunity WHERE StageName IN ('Closed Lost', 'qualification')"
    ) == engagement_ids(lambda e: e.stage in ("Closed Lost", "Qualification"))
    cutoff = sorted(e.close_date for e in world.engagements)[len(world.engagements) // 2]
    assert query_ids(format_soql("SELECT Id FROM Opportunity WHERE CloseDate >= {}", cutoff)) == engagement_ids(
        lambda e: e.close_date >= cutoff
    )

    moment = sorted(c.modified for c in world.contacts)[len(world.contacts) // 3].replace(microsecond=0)
    expected = contact_ids(lambda c: c.modified > moment)
    berlin = moment.astimezone(ZoneInfo("Europe/Berlin"))
    for literal in (
        moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        moment.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        berlin.isoformat(),
        format_soql("{}", moment),
    ):
        soql = format_soql("SELECT Id FROM Contact WHERE SystemModstamp > {:literal}", literal)
        assert query_ids(soql) == expected, literal

    now = org.clock.now()
    assert query_ids("SELECT Id FROM Contact WHERE CreatedDate = LAST_N_DAYS:10") == contact_ids(
        lambda c: c.created.date() >= (now - timedelta(days=10)).date()
    )
    assert query_ids("SELECT Id FROM Contact WHERE Title = null") == contact_ids(lambda c: not c.title)
    assert query_ids("SELECT Id FROM Contact WHERE Title != null AND Phone = null") == contact_ids(
        lambda c: c.title and not c.phone
    )
    count = sf.query("SELECT COUNT() FROM Contact WHERE Account.Name LIKE 'Ünï%'")
    assert (
        count["totalSize"] == sum(1 for c in world.contacts if c.client_key == world.clients[3].key)
        and count["records"] == []
    )


def test_order_by_limit_and_offset(org: Org) -> None:
    sf = org.direct()
    extra = [c for c in org.world.contacts if c.key.startswith("contact-extra")]
    soql = (
        "SELECT FirstName, LastName, Title FROM Contact WHERE FirstName LIKE 'Page%' "
        "ORDER BY Title DESC NULLS LAST, LastName, FirstName DESC"
    )
    rows = sf.query_all(soql)["records"]
    expected = sorted(extra, key=lambda c: c.first_name, reverse=True)
    expected.sort(key=lambda c: c.last_name.lower())
    expected.sort(key=lambda c: (c.title == "", c.title), reverse=False)
    assert [r["FirstName"] for r in rows] == [c.first_name for c in expected]
    assert rows[-1]["Title"] is None
    nulls_first = sf.query("SELECT Title FROM Contact WHERE FirstName LIKE 'Page%' ORDER BY Title LIMIT 3")["records"]
    assert [r["Title"] for r in nulls_first] == [None, None, None]
    page = sf.query(soql + " LIMIT 5 OFFSET 10")
    assert page["totalSize"] == 5 and [r["FirstName"] for r in page["records"]] == [
        c.first_name for c in expected[10:15]
    ]


@pytest.mark.parametrize(
    ("soql", "code", "text"),
    [
        ("SELECT Id FRM Contact", "MALFORMED_QUERY", "unexpected token: 'FRM'"),
        (
            "SELECT Id FROM Contact WHERE A = 1 AND B = 2 OR C = 3",
            "MALFORMED_QUERY",
            "unexpected token: 'OR'",
        ),
        (
            "SELECT Id, Foo FROM Contact",
            "INVALID_FIELD",
            "No such column 'Foo' on entity 'Contact'. If you are attempting to use a custom field, be sure "
            "to append the '__c' after the custom field name.",
        ),
        (
            "SELECT Id FROM Contact WHERE Acount.Name = 'x'",
            "INVALID_FIELD",
            "Didn't understand relationship 'Acount'",
        ),
        (
            "SELECT Id FROM Contact WHERE SystemModstamp > '2024-05-01T00:00:00Z'",
            "INVALID_FIELD",
            "value of filter criterion for field 'SystemModstamp' must be of type dateTime and should not be "
            "enclosed in quotes",
        ),
        (
            "SELECT Id FROM Contact WHERE Email = 5",
            "INVALID_FIELD",
            "must be of type string and should be enclosed in quotes",
        ),
        (
            "SELECT Id FROM Opportunity WHERE Accord_Status_Summary__c = 'x'",
            "INVALID_FIELD",
            "can not be filtered",
        ),
        ("SELECT Id FROM Widget__c", "INVALID_TYPE", "sObject type 'Widget__c' is not supported."),
        ("SELECT Id FROM Contact WHERE Id = 'abc'", "INVALID_QUERY_FILTER_OPERATOR", "invalid ID field: abc"),
        (
            "SELECT Id FROM User WHERE IsDeleted = false",
            "INVALID_FIELD",
            "No such column 'IsDeleted' on entity 'User'",
        ),
    ],
)
def test_query_errors_are_malformed_requests(org: Org, soql: str, code: str, text: str) -> None:
    with pytest.raises(SalesforceMalformedRequest) as raised:
        org.direct().query(soql)
    error = error_of(raised)
    assert error["errorCode"] == code
    assert text in error["message"]
    assert "ERROR at Row:1:Column:" in error["message"]


def test_query_all_and_get_deleted_see_soft_deletes_only(own_org: Org) -> None:
    org = own_org
    sf = org.direct()
    start = org.clock.now() - timedelta(minutes=1)
    soft, hard = org.world.contacts[1], org.world.contacts[2]
    soft_id, hard_id = org.store.id_for(soft.key), org.store.id_for(hard.key)
    updated_id = org.store.id_for(org.world.contacts[3].key)
    assert sf.Contact.delete(soft_id) == 204
    org.store._hard_delete(org.store.schema.objects["Contact"], org.store.lookup(hard_id) or {}, org.clock.now())
    assert sf.Contact.update(updated_id, {"Title": "Head of Data"}) == 204
    live = ids(sf.query_all("SELECT Id FROM Contact")["records"])
    assert soft_id not in live and hard_id not in live
    options = {"Sforce-Query-Options": "batchSize=200"}
    before = org.log.last_seq
    with_deleted = sf.query_all("SELECT Id, IsDeleted FROM Contact", include_deleted=True, headers=options)["records"]
    assert {r["Id"] for r in with_deleted if r["IsDeleted"]} == {soft_id}
    assert hard_id not in ids(with_deleted)
    paths = [r.path for r in org.log.records(since_seq=before)]
    assert paths[0] == "/services/data/v59.0/queryAll/" and all("/query/01g" in p for p in paths[1:])

    end = org.clock.now() + timedelta(minutes=2)
    deleted = sf.Contact.deleted(start, end)
    assert [r["id"] for r in deleted["deletedRecords"]] == [soft_id]
    assert DATETIME.match(deleted["deletedRecords"][0]["deletedDate"])
    assert DATETIME.match(deleted["earliestDateAvailable"]) and DATETIME.match(deleted["latestDateCovered"])
    updated = sf.Contact.updated(start, end)
    assert updated_id in updated["ids"] and soft_id not in updated["ids"]
    with pytest.raises(SalesforceMalformedRequest) as raised:
        sf.Contact.updated(end, start)
    assert error_of(raised)["errorCode"] == "INVALID_REPLICATION_DATE"


# -- records -----------------------------------------------------------------------------------------------


def test_get_create_update_delete_and_describe(own_org: Org) -> None:
    org = own_org
    sf = org.direct()
    account_id = org.store.id_for(org.world.clients[1].key)
    created = sf.Contact.create(
        {"LastName": "Nguyen", "FirstName": "Lan", "AccountId": account_id, "Email": "lan@x.example"}
    )
    assert created["success"] is True and created["errors"] == [] and created["id"].startswith("003")
    record = sf.Contact.get(created["id"])
    assert (record["Name"], record["AccountId"], record["IsDeleted"]) == ("Lan Nguyen", account_id, False)
    assert DATETIME.match(record["SystemModstamp"]) and record["Phone"] is None
    assert created["id"] in ids(sf.query("SELECT Id FROM Contact WHERE CreatedDate = TODAY")["records"])
    assert created["id"] not in ids(sf.query("SELECT Id FROM Contact WHERE CreatedDate < TODAY")["records"])
    assert sf.Contact.update(created["id"], {"Title": "CTO"}) == 204
    assert sf.Contact.get(created["id"])["Title"] == "CTO"
    with pytest.raises(SalesforceMalformedRequest) as raised:
        sf.Contact.update(created["id"], {"Shoe_Size__c": 44})
    assert error_of(raised)["errorCode"] == "INVALID_FIELD"
    with pytest.raises(SalesforceMalformedRequest) as raised:
        sf.Opportunity.create({"Name": "No stage"})
    assert error_of(raised) == {
        "message": "Required fields are missing: [StageName, CloseDate]",
        "errorCode": "REQUIRED_FIELD_MISSING",
        "fields": ["StageName", "CloseDate"],
    }
    assert sf.Contact.delete(created["id"]) == 204
    with pytest.raises(SalesforceResourceNotFound) as missing:
        sf.Contact.get(created["id"])
    assert error_of(missing)["errorCode"] == "NOT_FOUND"
    describe = sf.Opportunity.describe()
    fields = {f["name"]: f for f in describe["fields"]}
    assert describe["keyPrefix"] == "006"
    assert fields["Jira_Project_Key__c"]["type"] == "string" and fields["Jira_Project_Key__c"]["custom"] is True
    assert [v["value"] for v in fields["Accord_Health__c"]["picklistValues"]] == ["Green", "Amber", "Red"]
    assert fields["Accord_Status_Updated__c"]["type"] == "datetime"
    assert fields["AccountId"]["referenceTo"] == ["Account"] and fields["AccountId"]["relationshipName"] == "Account"
    task_key = {f["name"]: f for f in sf.Task.describe()["fields"]}["Accord_Key__c"]
    assert (task_key["externalId"], task_key["unique"], task_key["updateable"]) == (True, True, True)
    names = {o["name"] for o in sf.describe()["sobjects"]}
    assert names == {"Account", "Contact", "Opportunity", "OpportunityContactRole", "User", "Task", "Event"}


def test_upsert_by_external_id(own_org: Org) -> None:
    sf = own_org.direct()
    assert sf.Task.upsert("Accord_Key__c/reminder-1", {"Subject": "Send the status report"}) == 201
    assert sf.Task.upsert("Accord_Key__c/reminder-1", {"Subject": "Send the status report today"}) == 200
    task = sf.Task.get_by_custom_id("Accord_Key__c", "reminder-1")
    assert task["Subject"] == "Send the status report today"
    raw = own_org.raw("PATCH", "/services/data/v59.0/sobjects/Task/Accord_Key__c/reminder-1", json={"Priority": "High"})
    assert raw.status_code == 200 and raw.json() == {
        "id": task["Id"],
        "success": True,
        "errors": [],
        "created": False,
    }
    old_api = own_org.raw(
        "PATCH", "/services/data/v45.0/sobjects/Task/Accord_Key__c/reminder-1", json={"Priority": "Low"}
    )
    assert old_api.status_code == 204
    event = {
        "Subject": "Steering",
        "StartDateTime": "2024-05-01T10:00:00.000+0000",
        "EndDateTime": "2024-05-01T11:00:00Z",
    }
    first = sf.Event.create({**event, "Accord_Key__c": "evt-1"})["id"]
    second = sf.Event.create({**event, "Accord_Key__c": "EVT-1"})["id"]
    with pytest.raises(SalesforceMoreThanOneRecord) as ambiguous:
        sf.Event.upsert("Accord_Key__c/evt-1", {"Subject": "Which one?"})
    assert ambiguous.value.status == 300
    assert sorted(ambiguous.value.content) == sorted(
        f"/services/data/v59.0/sobjects/Event/{i}" for i in (first, second)
    )
    with pytest.raises(SalesforceResourceNotFound) as not_external:
        sf.Task.upsert("Subject/hello", {"Priority": "High"})
    assert (
        "Provided external ID field does not exist or is not accessible: Subject" in error_of(not_external)["message"]
    )
    with pytest.raises(SalesforceMalformedRequest) as bad_field:
        sf.Task.upsert("Accord_Key__c/reminder-2", {"Colour__c": "blue"})
    assert error_of(bad_field)["errorCode"] == "INVALID_FIELD"


def test_composite_collections(own_org: Org) -> None:
    org = own_org
    sf = org.direct()
    account_id = org.store.id_for(org.world.clients[0].key)
    before = org.store.counts()["Contact"]
    body = {
        "allOrNone": False,
        "records": [
            {"attributes": {"type": "Contact"}, "LastName": "One", "AccountId": account_id},
            {"attributes": {"type": "Contact"}, "FirstName": "No last name"},
            {"attributes": {"type": "Contact"}, "LastName": "Three", "AccountId": "001-bad"},
        ],
    }
    results = sf.restful("composite/sobjects", method="POST", json=body)
    assert results[0]["success"] is True and results[0]["id"].startswith("003")
    assert results[1] == {
        "success": False,
        "errors": [
            {
                "statusCode": "REQUIRED_FIELD_MISSING",
                "message": "Required fields are missing: [LastName]",
                "fields": ["LastName"],
            }
        ],
    }
    assert results[2]["errors"][0]["statusCode"] == "MALFORMED_ID"
    assert org.store.counts()["Contact"] == before + 1

    rolled = sf.restful("composite/sobjects", method="POST", json={**body, "allOrNone": True})
    assert rolled[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert [r["success"] for r in rolled] == [False, False, False]
    assert org.store.counts()["Contact"] == before + 1

    updates = sf.restful(
        "composite/sobjects",
        method="PATCH",
        json={
            "records": [
                {"attributes": {"type": "Contact"}, "Id": results[0]["id"], "Title": "Sponsor"},
                {"attributes": {"type": "Contact"}, "Id": "0035g00000NotThere", "Title": "x"},
            ]
        },
    )
    assert updates[0] == {"id": results[0]["id"], "success": True, "errors": []}
    assert updates[1]["success"] is False and updates[1]["id"] == "0035g00000NotThere"
    assert sf.Contact.get(results[0]["id"])["Title"] == "Sponsor"
    retrieved = sf.restful(
        "composite/sobjects/Contact",
        params={"ids": f"{results[0]['id']},0035g00000NotThere", "fields": "Title,Name"},
    )
    assert retrieved[1] is None
    assert {k: v for k, v in retrieved[0].items() if k != "attributes"} == {"Title": "Sponsor", "Name": "One"}

    upserted = sf.restful(
        "composite/sobjects/Task/Accord_Key__c",
        method="PATCH",
        json={
            "allOrNone": False,
            "records": [
                {"attributes": {"type": "Task"}, "Accord_Key__c": f"bulk-{i}", "Subject": f"Reminder {i}"}
                for i in range(3)
            ],
        },
    )
    assert [(r["success"], r["created"]) for r in upserted] == [(True, True)] * 3
    again = sf.restful(
        "composite/sobjects/Task/Accord_Key__c",
        method="PATCH",
        json={"records": [{"attributes": {"type": "Task"}, "Accord_Key__c": "BULK-0", "Status": "Completed"}]},
    )
    assert again[0]["created"] is False and again[0]["id"] == upserted[0]["id"]
    assert sf.Task.get(upserted[0]["id"])["IsClosed"] is True

    deleted = sf.restful(
        "composite/sobjects", method="DELETE", params={"ids": f"{results[0]['id']},{upserted[1]['id']}"}
    )
    assert [r["success"] for r in deleted] == [True, True]
    too_many = {"records": [{"attributes": {"type": "Task"}, "Subject": str(i)} for i in range(201)]}
    with pytest.raises(SalesforceMalformedRequest) as raised:
        sf.restful("composite/sobjects", method="POST", json=too_many)
    assert error_of(raised) == {
        "message": "record limit reached. cannot submit more than 200 records into this call",
        "errorCode": "EXCEEDED_ID_LIMIT",
    }


def test_bulk2_query_pages_csv(own_org: Org) -> None:
    org = own_org
    sf = org.direct()
    deleted_id = org.store.id_for(org.world.contacts[0].key)
    sf.Contact.delete(deleted_id)
    before = org.log.last_seq
    pages = list(sf.bulk2.Contact.query("SELECT Id, Email, Account.Name FROM Contact", max_records=200, wait=0))
    live = len(org.world.contacts) - 1
    assert len(pages) == math.ceil(live / 200)
    rows: list[dict[str, str]] = []
    for page in pages:
        assert isinstance(page, str) and page.startswith('"Id","Email","Account.Name"\n')
        rows.extend(csv.DictReader(io.StringIO(page)))
    assert len(rows) == live and deleted_id not in {r["Id"] for r in rows}
    contact = org.world.contacts[5]
    client = next(c for c in org.world.clients if c.key == contact.client_key)
    row = next(r for r in rows if r["Id"] == org.store.id_for(contact.key))
    assert (row["Email"], row["Account.Name"]) == (contact.email, client.name)
    states = [r.endpoint for r in org.log.records(since_seq=before)]
    assert states[:3] == [
        "bulk2.query.create",
        "bulk2.query.get",
        "bulk2.query.get",
    ]  # InProgress, JobComplete
    assert states.count("bulk2.query.results") == len(pages)
    all_rows = "".join(sf.bulk2.Contact.query_all("SELECT Id, IsDeleted FROM Contact", wait=0))
    assert f'"{deleted_id}","true"' in all_rows
    with pytest.raises(SalesforceMalformedRequest) as raised:
        list(sf.bulk2.Contact.query("SELECT Id, Shoe_Size__c FROM Contact", wait=0))
    assert error_of(raised)["errorCode"] == "INVALID_FIELD"


# -- limits and faults -------------------------------------------------------------------------------------


def test_daily_request_limit(own_org: Org) -> None:
    org = own_org
    sf = org.direct()
    sf.query("SELECT Id FROM Account LIMIT 1")
    used = org.app.api_usage()
    org.app.set_daily_api_limit(used + 1)
    sf.query("SELECT Id FROM Account LIMIT 1")
    assert sf.api_usage["api-usage"].used == used + 1 and sf.api_usage["api-usage"].total == used + 1
    with pytest.raises(SalesforceRefusedRequest) as refused:
        sf.query("SELECT Id FROM Account LIMIT 1")
    assert error_of(refused) == {
        "message": "TotalRequests Limit exceeded.",
        "errorCode": "REQUEST_LIMIT_EXCEEDED",
    }
    org.clock.advance(24 * 3600 + 1)  # the rolling window moves on
    assert sf.query("SELECT Id FROM Account LIMIT 1")["totalSize"] == 1


def test_injected_throttling_and_server_errors(own_org: Org) -> None:
    org = own_org
    sf = org.direct()
    org.app.faults.configure(rate_429=1.0, retry_after_s=2)
    response = org.raw("GET", "/services/data/v59.0/query/", params={"q": "SELECT Id FROM Account"})
    assert response.status_code == 403 and response.headers["Retry-After"] == "2"
    assert response.json() == [
        {"message": "ConcurrentPerOrgLongTxn Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}
    ]
    with pytest.raises(SalesforceRefusedRequest):
        sf.query("SELECT Id FROM Account")
    org.app.faults.configure(rate_429=0.0, rate_5xx=1.0)
    with pytest.raises(SalesforceGeneralError) as failed:
        sf.query("SELECT Id FROM Account")
    assert failed.value.status in (500, 502, 503)
    assert failed.value.content[0]["errorCode"] in ("UNKNOWN_EXCEPTION", "SERVER_UNAVAILABLE")
    with pytest.raises(SalesforceAuthenticationFailed) as soap_down:
        org.soap()
    assert soap_down.value.code == "SERVER_UNAVAILABLE"  # a login endpoint answers in its own shape
    org.app.faults.configure(rate_5xx=0.0, rate_429=1.0)
    with pytest.raises(SalesforceAuthenticationFailed) as oauth_down:
        org.oauth()
    assert oauth_down.value.code == "temporarily_unavailable"
    org.app.faults.reset()
    assert sf.query("SELECT COUNT() FROM Account")["totalSize"] == len(org.world.clients)


def test_versions_limits_and_unknown_resources(org: Org) -> None:
    versions = org.session().get(org.instance_url + "/services/data/", timeout=10).json()
    assert {"label": "Winter '24", "url": "/services/data/v59.0", "version": "59.0"} in versions
    old = org.direct(version="42.0")
    record = old.query("SELECT Id FROM Account LIMIT 1")["records"][0]
    assert record["attributes"]["url"].startswith("/services/data/v42.0/sobjects/Account/")
    limits = org.direct().limits()
    assert limits["DailyApiRequests"]["Max"] == 100_000
    missing = org.raw("GET", "/services/data/v59.0/sobjects/Widget__c/describe")
    assert missing.status_code == 404
    assert missing.json() == [{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}]
    assert "Sforce-Limit-Info" in missing.headers


# -- mutations ---------------------------------------------------------------------------------------------


def test_mutations_tie_on_one_stamp_and_late_ones_commit_later(own_org: Org) -> None:
    org = own_org
    sf = org.direct()
    stamp = org.clock.now()
    changes = org.store.mutate(random.Random(5), 40, stamp, late_share=0.3)
    wire_stamp = stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}"
    soql = format_soql("SELECT Id, SystemModstamp FROM Contact WHERE SystemModstamp >= {:literal}Z", wire_stamp)

    def visible() -> dict[str, str]:
        return {r["Id"]: r["SystemModstamp"] for r in sf.query_all(soql)["records"]}

    def live_after(applied: list[Any]) -> set[str]:
        last: dict[str, str] = {}
        for change in applied:
            if change.object == "Contact":
                last[change.id] = change.kind
        return {i for i, kind in last.items() if kind in ("update", "create", "undelete")}

    on_time = [c for c in changes if not c.late]
    late = [c for c in changes if c.late]
    assert any(c.object == "Contact" for c in late)
    seen = visible()
    assert set(seen) == live_after(on_time)
    assert set(seen.values()) == {wire_stamp + "+0000"}  # ties: one stamp for the whole round

    org.clock.advance(300)
    released = org.store.release_pending()
    assert released == late
    after = visible()
    assert set(after) == live_after(on_time + late) and set(after) != set(seen)
    assert set(after.values()) == {wire_stamp + "+0000"}  # the late ones carry the round's old stamp
