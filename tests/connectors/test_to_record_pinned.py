"""The records the three readers build, pinned on hostile values.

Each reader turns one API row into a ``SourceRecord``. The rows below carry what real orgs throw at
that code: quotes, markup, template syntax, SQL and JQL fragments, non-ASCII and very long names,
missing fields, nulls, empty strings, wrong types, every timestamp form the APIs use and a few they
should not. ``to_record_golden.json`` holds what the readers made of them when it was written; any
change to a record (a value, a type, the order of the data keys, the stamp) fails here. Regenerate
it only for an intended change of the record format:

    .venv/bin/python -m tests.connectors.test_to_record_pinned --write
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from connectors.google_calendar.connector import CalendarConnector, EventsPage, _zone
from connectors.google_calendar.connector import to_record as calendar_record
from connectors.jira.connector import to_record as jira_record
from connectors.salesforce import SalesforceConnector
from connectors.settings import SalesforceSettings
from engagement.mapping import SalesforceStream, load_mapping
from engagement.records import SourceRecord
from sandbox.generator import HOSTILE_CLIENT_NAMES

GOLDEN = Path(__file__).with_name("to_record_golden.json")
MAPPING_FILE = Path(__file__).resolve().parents[2] / "mappings" / "default.yaml"

QUOTES, SQL, MARKUP, LONG, JQL = HOSTILE_CLIENT_NAMES
EMOJI = "Kick-off \U0001f680 — naïve café ✓ \u200b\u202e"
CONTROL = "tab\tnew\nline\x00nul \\u0000 \udcff"  # a lone surrogate survives json.loads, not UTF-8

JIRA_EXTRA = {
    "story_points": "customfield_10016",
    "sprints": "customfield_10020",
    "client_tier": "customfield_10030",
    "watchers": "customfield_10040",
    "raw": "customfield_10050",
    "absent": "customfield_99999",
}
JIRA_ISSUES: dict[str, dict[str, Any]] = {
    "complete": {
        "expand": "renderedFields,names",
        "id": "54995",
        "self": "https://x.atlassian.net/rest/api/3/issue/54995",
        "key": "COPP27-1",
        "fields": {
            "summary": f"{QUOTES} {MARKUP}",
            "status": {
                "name": "In Review",
                "id": "10001",
                "statusCategory": {"id": 4, "key": "indeterminate", "name": "In Progress"},
            },
            "issuetype": {"id": "10000", "name": "Epic", "subtask": False},
            "project": {"id": "10616", "key": "COPP27", "name": LONG},
            "assignee": {
                "accountId": "eac470fda9aa016df3a2ef98",
                "emailAddress": "vera.ito@agency.example",
                "displayName": "Véra Itō 伊藤",
                "active": True,
            },
            "labels": ["blocked", "client-facing", 'quote"d', "北京"],
            "priority": {"name": "Highest", "id": "1"},
            "parent": {"id": "54990", "key": "COPP27-0"},
            "duedate": "2025-02-01",
            "created": "2025-01-06T04:58:00.314-0800",
            "updated": "2025-01-07T12:39:29.793-0800",
            "resolutiondate": "2025-01-07T12:39:29.793-0800",
            "customfield_10016": 5.0,
            "customfield_10020": [{"id": 7, "name": "Sprint 7", "state": "active"}],
            "customfield_10030": {"self": "x", "value": SQL, "id": "10100"},
            "customfield_10040": [{"accountId": "abc", "displayName": "A"}, {"accountId": "def"}],
            "customfield_10050": {"no": "known keys", "nested": [1, 2]},
        },
    },
    "hidden_email_other_offsets": {
        "id": 7,
        "key": "AB-CD-12",
        "fields": {
            "summary": JQL,
            "status": {"name": "Blocked", "statusCategory": {"key": "weird"}},
            "issuetype": {"name": ""},
            "project": {"key": ""},
            "assignee": {"accountId": "x1", "emailAddress": "", "displayName": EMOJI},
            "labels": [1, True, None, "x", 2.5],
            "priority": {"name": 3},
            "parent": {"key": ""},
            "duedate": "",
            "created": "2024-03-10T01:59:59.999+0530",
            "updated": "2024-12-31T23:59:59.999+0000",
            "resolutiondate": "2024-06-30T12:00:00.000-1200",
            "customfield_10016": 0,
            "customfield_10020": [],
            "customfield_10030": {"key": "k", "value": "v"},
            "customfield_10040": [[{"name": "deep"}], "plain", None],
            "customfield_10050": False,
        },
    },
    "nulls": {
        "id": "8",
        "key": "NUL-1",
        "fields": {
            "summary": None,
            "status": None,
            "issuetype": None,
            "project": None,
            "assignee": None,
            "labels": None,
            "priority": None,
            "parent": None,
            "duedate": None,
            "created": None,
            "updated": "2024-01-01T00:00:00.000Z",
            "resolutiondate": None,
            "customfield_10016": None,
        },
    },
    "missing_fields": {"id": "9", "fields": {"updated": "2024-02-29T12:00:00+01:00"}},
    "odd_values": {
        "id": "10",
        "key": "ODD-10",
        "fields": {
            "summary": CONTROL,
            "project": "not a dict",
            "status": {"statusCategory": "done"},
            "issuetype": ["not", "a", "dict"],
            "assignee": {"displayName": None, "accountId": 12345, "emailAddress": "ODD@Example.COM"},
            "labels": "not a list",
            "priority": {"id": "2"},
            "parent": {"key": 0},
            "duedate": "2024-13-45",
            "updated": "2024-05-01T10:00:00Z",
            "created": "2024-05-01T10:00:00.123456-0800",
            "resolutiondate": "2024-05-01",
        },
    },
    "long_key_naive_stamps": {
        "id": "11",
        "key": "LONG" + "X" * 300 + "-99",
        "fields": {
            "updated": "2024-05-01T10:00:00.5+00:00",
            "created": "2024-05-01T10:00:00",
            "resolutiondate": "2024-05-01T10:00:00.000+00:00",
            "summary": LONG * 20,
            "status": {"name": MARKUP, "statusCategory": {"key": "done"}},
        },
    },
    "leap_and_extreme_offsets": {
        "id": "12",
        "key": "TZ-1",
        "fields": {
            "updated": "2024-02-29T23:30:00.000-1400",
            "created": "0001-01-01T00:00:00.000+0000",
            "resolutiondate": "9999-12-31T23:59:59.999+0000",
            "status": {"name": "Done", "statusCategory": {"key": "new"}},
        },
    },
    "empty_id_key_fields": {"id": "0013", "key": "", "fields": {"updated": "2024-01-01T00:00:00.000+0000"}},
}
JIRA_BAD: dict[str, dict[str, Any]] = {
    "no_id": {"fields": {"updated": "2024-01-01T00:00:00.000+0000"}},
    "non_numeric_id": {"id": "ABC-1", "fields": {"updated": "2024-01-01T00:00:00.000+0000"}},
    "no_updated": {"id": "12", "fields": {"updated": None}},
    "empty_updated": {"id": "12", "fields": {"updated": ""}},
    "no_fields": {"id": "13"},
    "null_fields": {"id": "13", "fields": None},
    "garbage_updated": {"id": "14", "fields": {"updated": "yesterday"}},
    "garbage_created": {"id": "15", "fields": {"updated": "2024-01-01T00:00:00.000+0000", "created": "soon"}},
}

CALENDAR = "vera.ito@agency.example"
CAL_FALLBACK = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)
CAL_ZONES: dict[str, str | None] = {
    "utc": None,
    "los_angeles": "America/Los_Angeles",
    "kolkata": "Asia/Kolkata",
    "kiritimati": "Pacific/Kiritimati",
    "unknown": "Not/AZone",
}
CAL_EVENTS: dict[str, dict[str, Any]] = {
    "timed": {
        "kind": "calendar#event",
        "etag": '"3181161784712000"',
        "id": "evt_1",
        "status": "confirmed",
        "htmlLink": "https://www.google.com/calendar/event?eid=x",
        "created": "2024-04-30T09:00:00.000Z",
        "updated": "2024-04-30T09:01:02.345Z",
        "summary": f"{MARKUP} {QUOTES}",
        "description": LONG,
        "organizer": {"email": "vera.ito@agency.example", "displayName": "Véra", "self": True},
        "start": {"dateTime": "2024-05-01T10:00:00+02:00", "timeZone": "Europe/Berlin"},
        "end": {"dateTime": "2024-05-01T10:30:00+02:00", "timeZone": "Europe/Berlin"},
        "attendees": [
            {"email": "vera.ito@agency.example", "organizer": True, "responseStatus": "accepted", "self": True},
            {"email": "jane.o'reilly@client.example", "displayName": QUOTES, "responseStatus": "tentative"},
            {"email": "ünï@例え.jp"},
            {"displayName": "no email"},
            {"email": "", "responseStatus": "accepted"},
            {"email": "room-1@resource.calendar.google.com", "resource": True, "responseStatus": "accepted"},
            {"email": "x@y.example", "responseStatus": None, "organizer": None},
            {"email": "<b>@markup.example", "responseStatus": SQL, "organizer": "yes", "resource": False},
        ],
        "recurringEventId": None,
    },
    "all_day": {
        "id": "evt_2",
        "updated": "2024-04-30T09:01:02Z",
        "summary": LONG,
        "start": {"date": "2024-05-01"},
        "end": {"date": "2024-05-03"},
        "organizer": {},
    },
    "all_day_across_dst": {
        "id": "evt_2b",
        "updated": "2024-03-09T09:01:02.000Z",
        "summary": JQL,
        "start": {"date": "2024-03-10"},
        "end": {"date": "2024-03-11"},
        "organizer": {"displayName": "no email"},
    },
    "instance_z_no_ms": {
        "id": "evt_3_20240501T100000Z",
        "status": "tentative",
        "updated": "2024-04-30T09:01:02.1Z",
        "summary": None,
        "start": {"dateTime": "2024-05-01T10:00:00Z"},
        "end": {"dateTime": "2024-05-01T11:00:00.999999-07:00"},
        "recurringEventId": "evt_3",
        "attendees": None,
    },
    "naive_and_odd_offsets": {
        "id": "evt_3b",
        "updated": "2024-04-30T09:01:02.000+00:00",
        "summary": EMOJI,
        "start": {"dateTime": "2024-05-01T10:00:00"},
        "end": {"dateTime": "2024-05-01T10:00:00+05:45", "date": "2024-05-02"},
        "status": "",
        "attendees": [],
    },
    "missing_start_end": {"id": "evt_4", "updated": "2024-04-30T09:01:02.000Z", "start": None, "end": "not a dict"},
    "empty_start": {
        "id": 5,
        "updated": "2024-04-30T09:01:02.000Z",
        "start": {"dateTime": "", "date": ""},
        "end": {},
        "summary": CONTROL,
    },
    "no_updated": {"id": "evt_8", "summary": "x", "start": {"date": "2024-05-01"}},
    "cancelled": {"id": "evt_6", "status": "cancelled"},
    "cancelled_instance": {
        "id": "evt_7_x",
        "status": "cancelled",
        "updated": "2024-04-30T09:01:02.000Z",
        "recurringEventId": "evt_7",
        "summary": "tombstones keep no summary",
    },
}
CAL_BAD: dict[str, dict[str, Any]] = {
    "garbage_updated": {"id": "evt_9", "updated": "soon"},
    "garbage_start": {"id": "evt_10", "updated": "2024-04-30T09:01:02.000Z", "start": {"dateTime": "soon"}},
    "garbage_date": {"id": "evt_11", "updated": "2024-04-30T09:01:02.000Z", "start": {"date": "May 1st"}},
}

SF_FIELDS = {
    "name": "Name",
    "owner_email": "Owner.Email",
    "manager_email": "Account.Owner.Manager.Email",
    "modified": "LastModifiedDate",
    "amount": "Amount",
    "close_date": "CloseDate",
    "active": "IsActive",
    "odd": "Odd__c",
    "domains": "Email_Domains__c",
}
SF_ROWS: dict[str, dict[str, Any]] = {
    "full": {
        "attributes": {"type": "Opportunity", "url": "/services/data/v59.0/sobjects/Opportunity/006x"},
        "Id": "006000000000001AAA",
        "SystemModstamp": "2024-04-25T15:50:37.000+0000",
        "IsDeleted": False,
        "Name": QUOTES,
        "Owner": {"attributes": {"type": "User"}, "Email": "vera.ito@agency.example"},
        "Account": {"attributes": {"type": "Account"}, "Owner": {"Manager": {"Email": "boss@agency.example"}}},
        "LastModifiedDate": "2024-04-25T15:50:37.123-0700",
        "Amount": 12345.67,
        "CloseDate": "2024-06-30",
        "IsActive": True,
        "Odd__c": "2024-04-25T15:50:37+00:00",
        "Email_Domains__c": "client.example; 北京.example",
    },
    "deleted_nulls": {
        "Id": "006000000000002AAA",
        "SystemModstamp": "2024-04-25T15:50:37.000Z",
        "IsDeleted": True,
        "Name": LONG,
        "Owner": None,
        "Account": {"Owner": None},
        "LastModifiedDate": None,
        "Amount": None,
        "CloseDate": None,
        "IsActive": False,
        "Odd__c": MARKUP,
        "Email_Domains__c": SQL,
    },
    "missing": {
        "Id": "005000000000003AAA",
        "SystemModstamp": "2024-04-25T15:50:37.000+0000",
        "Name": JQL,
        "Account": "not a dict",
        "Odd__c": "2024-04-25T15:50:37.000-1130",
        "Amount": 0,
    },
    "datetime_lookalikes": {
        "Id": "005000000000004AAA",
        "SystemModstamp": "2024-04-25T15:50:37.000+0000",
        "Name": "2024-04-25T15:50:37.000+0000 ",
        "Odd__c": "2024-04-25t15:50:37.000+0000",
        "Email_Domains__c": "2024-04-25 15:50:37.000+0000",
        "LastModifiedDate": "2024-04-25T15:50:37.000 0000",
        "CloseDate": EMOJI,
    },
}
SF_BAD: dict[str, dict[str, Any]] = {
    "no_stamp": {"Id": "006000000000004AAA", "SystemModstamp": None},
    "garbage_stamp": {"Id": "006000000000005AAA", "SystemModstamp": "soon"},
}


def _record(record: SourceRecord) -> dict[str, Any]:
    assert record.updated_at.tzinfo is UTC
    return {
        "source": record.source,
        "stream": record.stream,
        "id": record.id,
        "updated_at": record.updated_at.isoformat(),
        "deleted": record.deleted,
        "partition": record.partition,
        # The data as the store serializes it: keys in order, types and escapes as they are.
        "data": json.dumps(record.data, ensure_ascii=True),
    }


def _outcome(build: Any) -> dict[str, Any]:
    try:
        return _record(build())
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc)}


def _salesforce() -> SalesforceConnector:
    settings = SalesforceSettings(
        auth="session", instance_url="https://example.my.salesforce.com", session_id=SecretStr("x")
    )
    return SalesforceConnector(settings, load_mapping(MAPPING_FILE))


def snapshot() -> dict[str, dict[str, Any]]:
    """Every pinned case and what the readers make of it now."""
    out: dict[str, dict[str, Any]] = {}
    for name, issue in {**JIRA_ISSUES, **JIRA_BAD}.items():
        out[f"jira/{name}"] = _outcome(lambda issue=issue: jira_record(issue, JIRA_EXTRA))
        out[f"jira/{name}/no_extra"] = _outcome(lambda issue=issue: jira_record(issue, {}))
    for zone_name, zone in CAL_ZONES.items():
        where = _zone(zone)
        for name, item in {**CAL_EVENTS, **CAL_BAD}.items():
            out[f"calendar/{zone_name}/{name}"] = _outcome(
                lambda item=item, where=where: calendar_record(CALENDAR, item, where, CAL_FALLBACK)
            )
    connector = _salesforce()
    stream = SalesforceStream(object="Opportunity", fields=SF_FIELDS)
    for name, row in {**SF_ROWS, **SF_BAD}.items():
        out[f"salesforce/{name}"] = _outcome(lambda row=row: connector._to_record("opportunities", stream, row))
    connector.close()
    return out


def test_records_are_exactly_the_pinned_ones() -> None:
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    now = snapshot()
    assert sorted(now) == sorted(golden)
    for case, expected in golden.items():
        assert now[case] == expected, case


def test_calendar_pages_skip_items_without_an_id_and_keep_the_order() -> None:
    items = [{"id": ""}, CAL_EVENTS["timed"], {"summary": "no id"}, CAL_EVENTS["cancelled"], CAL_EVENTS["all_day"]]
    page = EventsPage(items, "America/Los_Angeles", last=True, sync_token="t")
    records = CalendarConnector._records(CALENDAR, page, CAL_FALLBACK)
    assert [r.id for r in records] == [f"{CALENDAR}/evt_1", f"{CALENDAR}/evt_6", f"{CALENDAR}/evt_2"]
    assert [r.deleted for r in records] == [False, True, False]
    assert records[2].data["start"] == "2024-05-01T07:00:00.000Z"


@pytest.mark.parametrize("case", sorted(JIRA_ISSUES))
def test_jira_stamps_are_aware_utc(case: str) -> None:
    record = jira_record(JIRA_ISSUES[case], {})
    assert record.updated_at.utcoffset() is not None and record.updated_at.tzinfo is UTC


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    GOLDEN.write_text(json.dumps(snapshot(), indent=1, ensure_ascii=True, sort_keys=True) + "\n", encoding="utf-8")
