"""The Salesforce connector against the Salesforce emulator, through simple-salesforce over HTTP."""

from __future__ import annotations

import json
import random
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from pydantic import SecretStr

from accord.settings import AccordSettings
from connectors.base import WorkUnit
from connectors.errors import AuthError, ConfigError
from connectors.retry import RetrySettings
from connectors.salesforce import SalesforceConnector
from connectors.salesforce.connector import _Salesforce
from connectors.salesforce.soql import literal
from connectors.settings import SalesforceSettings
from engagement.mapping import FieldFilter, Mapping, load_mapping
from engagement.records import SourceRecord
from flows.engine import pull_source
from sandbox.clock import Clock
from sandbox.credentials import SalesforceCredentials
from sandbox.generator import generate_world
from sandbox.http import ApiServer
from sandbox.recorder import RequestLog
from sandbox.salesforce import SalesforceApp, SalesforceStore
from store import Store

FAST_RETRY = RetrySettings(max_attempts=6, base_wait_s=0.0, max_wait_s=0.05)


@dataclass
class Org:
    store: SalesforceStore
    app: SalesforceApp
    server: ApiServer
    log: RequestLog
    creds: SalesforceCredentials
    clock: Clock

    def settings(self, auth: str = "oauth_password", **changes: object) -> SalesforceSettings:
        c = self.creds
        base = {
            "auth": auth,
            "instance_url": self.server.base_url,
            "login_url": self.server.base_url,
            "session_id": SecretStr(c.session_id),
            "username": c.username,
            "password": SecretStr(c.password),
            "security_token": SecretStr(c.security_token),
            "consumer_key": c.consumer_key,
            "consumer_secret": SecretStr(c.consumer_secret),
            "page_size": 200,
            "retry": FAST_RETRY,
        }
        return SalesforceSettings.model_validate({**base, **changes})


@pytest.fixture
def org() -> Iterator[Org]:
    clock, creds, log = Clock(), SalesforceCredentials(), RequestLog()
    store = SalesforceStore.from_world(generate_world("small", 5), clock)
    app = SalesforceApp(store, clock, creds)
    server = ApiServer(app, log)
    app.base_url = server.base_url
    server.start()
    yield Org(store, app, server, log, creds, clock)
    server.stop()
    assert server.errors == []


@pytest.fixture(scope="module")
def mapping() -> Mapping:
    return load_mapping("mappings/default.yaml")


def new_store(tmp_path: Path, name: str = "accord") -> Store:
    db = Store(f"sqlite:///{tmp_path / name}.sqlite")
    db.create_all()
    return db


def pull(org: Org, mapping: Mapping, db: Store, *, full: bool = False, reconcile: bool = False) -> dict[str, object]:
    settings = AccordSettings(salesforce=org.settings(), database_url="sqlite://")
    report = pull_source(
        "salesforce",
        settings,
        mapping,
        db,
        upper=datetime.now(UTC),
        full=full,
        reconcile=reconcile,
        connector_factory=lambda s, st, m: SalesforceConnector(org.settings(), m),
    )
    return {k: vars(v) for k, v in report.streams.items()}


def stored(db: Store) -> dict[tuple[str, str], dict[str, object]]:
    return {(r.stream, r.id): r.data for r in db.iter_records("salesforce")}


def truth(org: Org, mapping: Mapping) -> dict[tuple[str, str], dict[str, object]]:
    """A fresh full read through a new connector: what a first sync would store now."""
    with tempfile.TemporaryDirectory() as directory:
        fresh = new_store(Path(directory), "truth")
        pull(org, mapping, fresh, full=True)
        result = stored(fresh)
        fresh.dispose()
    return result


@pytest.mark.parametrize("auth", ["session", "password", "oauth_password"])
def test_full_read_of_every_stream(org: Org, mapping: Mapping, auth: str) -> None:
    connector = SalesforceConnector(org.settings(auth), mapping)
    upper = datetime.now(UTC)
    counts = org.store.counts()
    for unit in connector.work_units():
        batches = list(connector.read(unit, None, upper=upper, full=True, reconcile=False))
        records = [r for b in batches for r in b.records]
        obj = getattr(mapping.salesforce, unit.stream).object
        assert len(records) == counts[obj], unit.stream
        assert len({r.id for r in records}) == len(records)
        assert batches[-1].final and batches[-1].reconcile
        assert {i for b in batches for i in b.existing_ids()} == {r.id for r in records}
        assert batches[-1].cursor is not None and batches[-1].cursor.startswith(upper.strftime("%Y-%m-%dT%H:%M"))
        stamps = [r.updated_at for r in records]
        assert stamps == sorted(stamps) and all(s < upper for s in stamps)
    connector.close()


def test_values_are_normalized_and_intact(org: Org, mapping: Mapping, tmp_path: Path) -> None:
    db = new_store(tmp_path)
    pull(org, mapping, db, full=True)
    world = generate_world("small", 5)
    accounts = {d["name"] for (stream, _), d in stored(db).items() if stream == "accounts"}
    assert {c.name for c in world.clients} <= accounts  # quotes, markup, non-ASCII, 255 chars: intact
    contacts = [d for (stream, _), d in stored(db).items() if stream == "contacts"]
    assert {c["email"] for c in contacts} == {c.email for c in world.contacts}
    opportunity = next(d for (stream, _), d in stored(db).items() if stream == "opportunities")
    assert set(opportunity) == set(mapping.salesforce.opportunities.fields)
    assert str(opportunity["close_date"])[4] == "-"


def test_incremental_reads_only_the_window_and_equals_a_fresh_full_read(
    org: Org, mapping: Mapping, tmp_path: Path
) -> None:
    db = new_store(tmp_path)
    pull(org, mapping, db, full=True)
    rng = random.Random(3)
    for _ in range(3):
        org.store.release_pending()
        org.store.mutate(rng, 12, org.clock.now(), late_share=0.3)
        since = org.log.last_seq
        pull(org, mapping, db, reconcile=True)
        queries = org.log.records(endpoint="query_all", since_seq=since)
        assert len(queries) == 6  # one queryAll per object (5 + reminder Tasks): soft deletes included
        assert all("SystemModstamp >= " in q.query["q"][0] for q in queries)
    org.store.release_pending()
    pull(org, mapping, db, reconcile=True)
    assert stored(db) == truth(org, mapping)


def test_incremental_with_nothing_changed_makes_one_call_per_object(org: Org, mapping: Mapping, tmp_path: Path) -> None:
    db = new_store(tmp_path)
    pull(org, mapping, db, full=True)
    since = org.log.last_seq
    stats = pull(org, mapping, db)
    calls = org.log.records(since_seq=since)
    assert [c.endpoint for c in calls].count("query_all") == 6
    assert {c.endpoint for c in calls} <= {"query_all", "oauth2.token"}
    assert (
        sum(int(s["changed"]) if "changed" in s else int(s["inserted"]) + int(s["updated"]) for s in stats.values())
        == 0
    )


def test_lookback_catches_a_late_commit(org: Org, mapping: Mapping, tmp_path: Path) -> None:
    db = new_store(tmp_path)
    pull(org, mapping, db, full=True)
    changes = org.store.mutate(random.Random(8), 6, org.clock.now() - timedelta(seconds=1), late_share=1.0)
    assert changes and all(c.late for c in changes)
    pull(org, mapping, db)  # the late changes are not visible yet; the cursor moves past their stamp
    org.store.release_pending()  # they commit now, stamped in the past
    pull(org, mapping, db, reconcile=True)
    assert stored(db) == truth(org, mapping)


def test_soft_and_hard_deletes(org: Org, mapping: Mapping, tmp_path: Path) -> None:
    db = new_store(tmp_path)
    pull(org, mapping, db, full=True)
    rng = random.Random(11)
    changes = []
    while not {"delete", "hard_delete"} <= {c.kind for c in changes if c.object == "Contact"}:
        changes += org.store.mutate(rng, 10, org.clock.now(), late_share=0.0)
    soft = {c.id for c in changes if c.kind == "delete" and c.object == "Contact"}
    hard = {c.id for c in changes if c.kind == "hard_delete" and c.object == "Contact"}
    undeleted = {c.id for c in changes if c.kind == "undelete"}
    pull(org, mapping, db)
    live = db.record_ids("salesforce", "contacts")
    assert not (soft - undeleted) & live  # soft deletes arrive through queryAll
    assert hard - soft <= live | (
        hard - {r.id for r in db.iter_records("salesforce", "contacts", include_deleted=True)}
    )
    pull(org, mapping, db, reconcile=True)  # hard deletes need the id set
    assert not hard & db.record_ids("salesforce", "contacts")
    assert stored(db) == truth(org, mapping)


def test_expired_session(org: Org, mapping: Mapping) -> None:
    renewing = SalesforceConnector(org.settings("oauth_password"), mapping)
    list(renewing.read(WorkUnit("users"), None, upper=datetime.now(UTC), full=True, reconcile=False))
    org.app.expire_credentials()
    since = org.log.last_seq
    batches = list(renewing.read(WorkUnit("users"), None, upper=datetime.now(UTC), full=True, reconcile=False))
    assert batches[0].records
    assert [c.endpoint for c in org.log.records(since_seq=since)][:3] == ["query", "oauth2.token", "query"]
    fixed = SalesforceConnector(org.settings("session"), mapping)
    with pytest.raises(AuthError, match="session expired"):
        list(fixed.read(WorkUnit("users"), None, upper=datetime.now(UTC), full=True, reconcile=False))


def test_faults_are_retried(org: Org, mapping: Mapping, tmp_path: Path) -> None:
    org.app.faults.configure(rate_429=0.15, rate_5xx=0.1, rate_drop=0.05, seed=4)
    db = new_store(tmp_path)
    pull(org, mapping, db, full=True)
    org.app.faults.reset()
    assert stored(db) == truth(org, mapping)
    faulted = [r for r in org.log.records() if r.fault]
    assert faulted  # faults really happened and were absorbed


def test_a_mapping_field_the_org_lacks_is_a_config_error(org: Org, mapping: Mapping) -> None:
    contacts = mapping.salesforce.contacts.model_copy(
        update={"fields": {**mapping.salesforce.contacts.fields, "x": "Shoe_Size__c"}}
    )
    broken = mapping.model_copy(update={"salesforce": mapping.salesforce.model_copy(update={"contacts": contacts})})
    connector = SalesforceConnector(org.settings(), broken)
    with pytest.raises(ConfigError, match=r"read Contact: INVALID_FIELD.*Shoe_Size__c"):
        list(connector.read(WorkUnit("contacts"), None, upper=datetime.now(UTC), full=True, reconcile=False))


def test_filter_values_are_escaped_not_pasted(org: Org, mapping: Mapping) -> None:
    hostile = generate_world("small", 5).clients[1].name  # "Robert'); DELETE FROM Account WHERE Name LIKE '% OR 1=1 --"
    accounts = mapping.salesforce.accounts.model_copy(
        update={"filters": [FieldFilter(field="Name", op="=", value=hostile)]}
    )
    scoped = mapping.model_copy(update={"salesforce": mapping.salesforce.model_copy(update={"accounts": accounts})})
    connector = SalesforceConnector(org.settings(), scoped)
    records = [
        r
        for b in connector.read(WorkUnit("accounts"), None, upper=datetime.now(UTC), full=True, reconcile=False)
        for r in b.records
    ]
    assert [r.data["name"] for r in records] == [hostile]
    assert literal("a'b\\c\n") == "'a\\'b\\\\c\\n'"
    assert literal(datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)) == "2026-01-02T03:04:05.678Z"


def test_settings_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="salesforce auth 'client_credentials' needs consumer_key, consumer_secret"):
        SalesforceSettings(auth="client_credentials")


def test_a_text_that_only_looks_like_a_datetime_stays_text() -> None:
    """28 characters with a T at 10 and a sign 5 from the end: a Salesforce datetime's shape, but
    free text can have it too; it must not fail the stream."""
    from connectors.salesforce.connector import _normalize

    looks_like = "Phase two:Tkickoff now -1234"
    assert len(looks_like) == 28 and looks_like[10] == "T" and looks_like[-5] == "-"
    assert _normalize(looks_like) == looks_like
    assert _normalize("2024-04-25T15:50:37.000+0000") == "2024-04-25T15:50:37.000Z"


def _answer(body: bytes, content_type: str = "application/json;charset=UTF-8") -> requests.Response:
    response = requests.Response()
    response._content = body
    response.status_code = 200
    response.headers["Content-Type"] = content_type
    response.encoding = "UTF-8"
    return response


def test_answers_are_decoded_from_bytes_to_the_values_json_gives() -> None:
    """Pages decoded by orjson from the body's bytes as plain dicts (no text copy, no ordered dicts);
    the same values ``json`` gives, and what orjson would read differently goes the library's way."""
    client = _Salesforce(instance_url="https://example.my.salesforce.com", session_id="x")
    body = json.dumps(
        {
            "totalSize": 2,
            "done": True,
            "records": [
                {"attributes": {"type": "Contact"}, "Id": "003A", "Name": "Zoë 北京", "Score": 1.5e-05},
                {"Id": "003B", "Account": {"Name": "Acme", "Owner": None}, "Amount": 12345678901234, "On": False},
            ],
        }
    ).encode("utf-8")
    decoded = client.parse_result_to_json(_answer(body))
    assert decoded == json.loads(body)
    assert type(decoded["records"][0]) is dict  # the class itself: not the library's OrderedDict
    assert type(decoded["records"][1]["Account"]) is dict
    huge = b'{"records": [{"Id": "003C", "Big": 123456789012345678901234567890}]}'
    assert client.parse_result_to_json(_answer(huge)) == json.loads(huge)  # beyond 64 bits: json's way
    assert type(client.parse_result_to_json(_answer(huge))) is OrderedDict


class _Row(dict[str, Any]):
    """A decoded row that can be watched (a plain dict cannot have weak references)."""


def test_a_page_is_gone_before_the_next_is_fetched(
    org: Org, mapping: Mapping, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One thread holds one page at a time: when it asks for the next page, neither the rows nor
    the records of the pages before are alive (the answer, the rows, the batch all dropped)."""
    watched: list[weakref.ref[Any]] = []
    alive_at_fetch: list[int] = []
    parse, query_more, row_record = (
        _Salesforce.parse_result_to_json,
        _Salesforce.query_more,
        SalesforceConnector._row_record,
    )

    def watched_parse(self: _Salesforce, result: requests.Response) -> Any:
        decoded = parse(self, result)
        if isinstance(decoded, dict) and isinstance(decoded.get("records"), list):
            decoded["records"] = [_Row(row) for row in decoded["records"]]
            watched.extend(weakref.ref(row) for row in decoded["records"])
        return decoded

    def watched_query_more(self: _Salesforce, *args: Any, **kwargs: Any) -> Any:
        alive_at_fetch.append(sum(1 for ref in watched if ref() is not None))
        return query_more(self, *args, **kwargs)

    def watched_row_record(*args: Any) -> SourceRecord:
        record = row_record(*args)
        watched.append(weakref.ref(record))
        return record

    account = str(next(iter(org.store.run(org.store.compile("SELECT Id FROM Account"), include_deleted=False)))["Id"])
    for i in range(450):  # contacts in three pages of 200
        org.store.create(
            "Contact", {"LastName": f"Paged {i}", "AccountId": account}, user_id=org.store.integration_user_id
        )
    monkeypatch.setattr(_Salesforce, "parse_result_to_json", watched_parse)
    monkeypatch.setattr(_Salesforce, "query_more", watched_query_more)
    monkeypatch.setattr(SalesforceConnector, "_row_record", staticmethod(watched_row_record))
    settings = org.settings(concurrency=1)  # one thread: any page alive is this thread's
    report = pull_source(
        "salesforce",
        AccordSettings(salesforce=settings, database_url="sqlite://"),
        mapping,
        new_store(tmp_path),
        upper=datetime.now(UTC),
        full=True,
        connector_factory=lambda s, st, m: SalesforceConnector(settings, m),
    )
    assert report.error is None
    assert len(alive_at_fetch) >= 2  # the contacts' second and third pages
    assert alive_at_fetch == [0] * len(alive_at_fetch)
