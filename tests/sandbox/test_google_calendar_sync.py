"""The Calendar emulator's writes, sync tokens, batch and mutations, through google-api-python-client."""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import requests
from googleapiclient.errors import HttpError
from googleapiclient.http import BatchHttpRequest

from tests.sandbox.test_google_calendar_helpers import ALICE, BOB, Served, event_id, list_all, serve

FULL_SYNC_REQUIRED = {
    "error": {
        "errors": [
            {
                "domain": "calendar",
                "reason": "fullSyncRequired",
                "message": "Sync token is no longer valid, a full sync is required.",
            }
        ],
        "code": 410,
        "message": "Sync token is no longer valid, a full sync is required.",
    }
}


@pytest.fixture
def env() -> Iterator[Served]:
    served = serve()
    yield served
    served.stop()


def timed(start: str, end: str, zone: str = "America/New_York") -> dict[str, Any]:
    return {"start": {"dateTime": start, "timeZone": zone}, "end": {"dateTime": end, "timeZone": zone}}


def full_sync(svc: Any, calendar: str, *, single: bool, page: int = 3) -> tuple[list[dict[str, Any]], str]:
    items, pages = list_all(svc.events().list(calendarId=calendar, singleEvents=single, maxResults=page), svc)
    assert all("nextSyncToken" not in p for p in pages[:-1]) and "nextSyncToken" in pages[-1]
    return items, pages[-1]["nextSyncToken"]


def incremental(
    svc: Any, calendar: str, token: str, *, single: bool, page: int = 2
) -> tuple[list[dict[str, Any]], str]:
    request = svc.events().list(calendarId=calendar, singleEvents=single, syncToken=token, maxResults=page)
    items, pages = list_all(request, svc)
    assert all("nextSyncToken" not in p and "nextPageToken" in p for p in pages[:-1])
    assert "nextSyncToken" in pages[-1] and "nextPageToken" not in pages[-1]
    return items, pages[-1]["nextSyncToken"]


# -- writes --------------------------------------------------------------------------------------------
def test_insert_with_a_client_chosen_id_duplicate_and_invalid_ids(env: Served) -> None:
    chosen = uuid.uuid4().hex
    body = {"id": chosen, "summary": "Reminder", **timed("2026-12-01T10:00:00", "2026-12-01T10:30:00")}
    with env.service() as svc:
        created = svc.events().insert(calendarId=BOB, body=body).execute()
        with pytest.raises(HttpError) as duplicate:
            svc.events().insert(calendarId=BOB, body=body).execute()
        refused = []
        for bad in ("abcw12345", "ABCDEF123", "abc1", "a" * 1025, "abc-12345"):
            with pytest.raises(HttpError) as invalid:
                svc.events().insert(calendarId=BOB, body={**body, "id": bad}).execute()
            refused.append((invalid.value.status_code, invalid.value.reason))
        generated = svc.events().insert(calendarId=BOB, body={k: v for k, v in body.items() if k != "id"}).execute()
    assert created["id"] == chosen and created["iCalUID"] == f"{chosen}@google.com"
    assert created["organizer"] == {"email": BOB, "displayName": "Bob Example", "self": True}
    assert created["start"] == {"dateTime": "2026-12-01T10:00:00-05:00", "timeZone": "America/New_York"}
    assert duplicate.value.status_code == 409
    assert duplicate.value.error_details[0] == {
        "domain": "global",
        "reason": "duplicate",
        "message": "The requested identifier already exists.",
    }
    assert refused == [(400, "Invalid resource id value.")] * 5
    assert set(generated["id"]) <= set("abcdefghijklmnopqrstuv0123456789") and len(generated["id"]) >= 5


def test_patch_replaces_arrays_merges_objects_and_bumps_versions(env: Served) -> None:
    body = {
        "summary": "Review",
        "description": "keep me",
        "attendees": [{"email": "ann@acme.example"}, {"email": "raj@acme.example"}],
        "extendedProperties": {"private": {"accordKey": "rem-1"}},
        **timed("2026-12-02T10:00:00-05:00", "2026-12-02T11:00:00-05:00"),
    }
    with env.service() as svc:
        created = svc.events().insert(calendarId=BOB, body=body).execute()
        env.clock.advance(5)
        patched = (
            svc.events()
            .patch(
                calendarId=BOB,
                eventId=created["id"],
                body={
                    "attendees": [{"email": "li@acme.example"}],
                    "extendedProperties": {"private": {"round": "2"}},
                },
            )
            .execute()
        )
        fetched = svc.events().get(calendarId=BOB, eventId=created["id"]).execute()
    assert [a["email"] for a in patched["attendees"]] == ["li@acme.example"]
    assert patched["attendees"][0]["responseStatus"] == "needsAction"
    assert patched["extendedProperties"]["private"] == {"accordKey": "rem-1", "round": "2"}
    assert patched["description"] == "keep me" and patched["summary"] == "Review"
    assert patched["sequence"] == created["sequence"] + 1
    assert patched["etag"] != created["etag"] and patched["updated"] > created["updated"]
    assert fetched == patched


def test_update_replaces_the_whole_event(env: Served) -> None:
    with env.service() as svc:
        created = (
            svc.events()
            .insert(
                calendarId=BOB,
                body={
                    "summary": "Old",
                    "description": "gone",
                    **timed("2026-12-03T10:00:00", "2026-12-03T11:00:00"),
                },
            )
            .execute()
        )
        updated = (
            svc.events()
            .update(
                calendarId=BOB,
                eventId=created["id"],
                body={"summary": "New", **timed("2026-12-03T12:00:00", "2026-12-03T13:00:00")},
            )
            .execute()
        )
        with pytest.raises(HttpError) as missing_end:
            svc.events().update(
                calendarId=BOB, eventId=created["id"], body={"summary": "x", "start": {"date": "2026-12-03"}}
            ).execute()
    assert updated["summary"] == "New" and "description" not in updated
    assert updated["start"]["dateTime"] == "2026-12-03T12:00:00-05:00"
    assert missing_end.value.status_code == 400 and missing_end.value.reason == "Missing end time."


def test_delete_leaves_a_tombstone(env: Served) -> None:
    with env.service() as svc:
        created = (
            svc.events()
            .insert(
                calendarId=BOB,
                body={"summary": "Temp", **timed("2026-12-04T10:00:00", "2026-12-04T11:00:00")},
            )
            .execute()
        )
        assert svc.events().delete(calendarId=BOB, eventId=created["id"]).execute() == ""
        fetched = svc.events().get(calendarId=BOB, eventId=created["id"]).execute()
        with pytest.raises(HttpError) as again:
            svc.events().delete(calendarId=BOB, eventId=created["id"]).execute()
        with pytest.raises(HttpError) as reuse:
            svc.events().insert(
                calendarId=BOB,
                body={"id": created["id"], **timed("2026-12-04T10:00:00", "2026-12-04T11:00:00")},
            ).execute()
        listed = svc.events().list(calendarId=BOB).execute()["items"]
        with_deleted = svc.events().list(calendarId=BOB, showDeleted=True).execute()["items"]
    assert fetched["status"] == "cancelled" and fetched["summary"] == "Temp"
    assert again.value.status_code == 410 and again.value.error_details[0]["reason"] == "deleted"
    assert reuse.value.status_code == 409
    assert created["id"] not in [i["id"] for i in listed]
    tombstone = next(i for i in with_deleted if i["id"] == created["id"])
    assert set(tombstone) == {"kind", "etag", "id", "status"} and tombstone["status"] == "cancelled"
    assert env.log.records(endpoint="events.delete")[0].status == 204


def test_private_extended_property_finds_pushed_events(env: Served) -> None:
    with env.service() as svc:
        for key in ("rem-1", "rem-2"):
            svc.events().insert(
                calendarId=BOB,
                body={
                    "summary": key,
                    "extendedProperties": {"private": {"accordKey": key}},
                    **timed("2026-12-05T10:00:00", "2026-12-05T10:15:00"),
                },
            ).execute()
        found = svc.events().list(calendarId=BOB, privateExtendedProperty="accordKey=rem-2").execute()["items"]
        shared = svc.events().list(calendarId=BOB, sharedExtendedProperty="accordKey=rem-2").execute()["items"]
    assert [i["summary"] for i in found] == ["rem-2"]
    assert shared == []


def test_patching_one_instance_creates_an_exception(env: Served) -> None:
    series = event_id("m-bob-weekly")
    start = env.anchor + timedelta(days=1, hours=13)
    second = f"{series}_{(start + timedelta(weeks=1)).strftime('%Y%m%dT%H%M%SZ')}"
    with env.service() as svc:
        svc.events().patch(calendarId=BOB, eventId=second, body={"summary": "Moved agenda"}).execute()
        found = svc.events().list(calendarId=BOB, singleEvents=True, q="moved agenda").execute()["items"]
        expanded = svc.events().list(calendarId=BOB, singleEvents=True).execute()["items"]
        plain = svc.events().list(calendarId=BOB).execute()["items"]
    assert [i["id"] for i in found] == [second]
    summaries = {i["id"]: i["summary"] for i in expanded if i.get("recurringEventId") == series}
    assert len(summaries) == 4 and summaries[second] == "Moved agenda"
    assert sum(1 for s in summaries.values() if s == "Acme weekly") == 3
    assert [i["id"] for i in plain if i.get("recurringEventId") == series] == [second]


# -- sync tokens ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("single", [False, True])
def test_sync_token_increments_return_every_change_exactly_once(env: Served, single: bool) -> None:
    series = event_id("m-bob-weekly")
    start = env.anchor + timedelta(days=1, hours=13)
    third = f"{series}_{(start + timedelta(weeks=2)).strftime('%Y%m%dT%H%M%SZ')}"
    with env.service() as svc:
        baseline, token = full_sync(svc, BOB, single=single)
        assert len({i["id"] for i in baseline}) == len(baseline)
        a = (
            svc.events()
            .insert(calendarId=BOB, body={"summary": "A", **timed("2026-12-06T10:00:00", "2026-12-06T11:00:00")})
            .execute()
        )
        b = (
            svc.events()
            .insert(calendarId=BOB, body={"summary": "B", **timed("2026-12-06T12:00:00", "2026-12-06T13:00:00")})
            .execute()
        )
        svc.events().patch(calendarId=BOB, eventId=a["id"], body={"summary": "A2"}).execute()
        svc.events().patch(calendarId=BOB, eventId=a["id"], body={"summary": "A3"}).execute()
        svc.events().patch(calendarId=BOB, eventId=event_id("m-bob-1"), body={"location": "Room 1"}).execute()
        svc.events().delete(calendarId=BOB, eventId=b["id"]).execute()
        svc.events().delete(calendarId=BOB, eventId=event_id("m-bob-2")).execute()
        svc.events().delete(calendarId=BOB, eventId=third).execute()
        changes, token2 = incremental(svc, BOB, token, single=single)
        quiet, _ = incremental(svc, BOB, token2, single=single)
    counted = Counter(i["id"] for i in changes)
    assert max(counted.values()) == 1
    assert set(counted) == {a["id"], b["id"], event_id("m-bob-1"), event_id("m-bob-2"), third}
    by_id = {i["id"]: i for i in changes}
    assert by_id[a["id"]]["summary"] == "A3"  # the latest state
    assert by_id[b["id"]] == {
        "kind": "calendar#event",
        "etag": by_id[b["id"]]["etag"],
        "id": b["id"],
        "status": "cancelled",
    }
    assert by_id[third]["status"] == "cancelled" and by_id[third]["recurringEventId"] == series
    assert "originalStartTime" in by_id[third]
    assert by_id[event_id("m-bob-1")]["location"] == "Room 1"
    assert quiet == []


def test_series_changes_reach_expanded_sync_as_instances(env: Served) -> None:
    series = event_id("m-bob-weekly")
    with env.service() as svc:
        _, expanded_token = full_sync(svc, BOB, single=True)
        _, plain_token = full_sync(svc, BOB, single=False)
        svc.events().patch(calendarId=BOB, eventId=series, body={"description": "new agenda"}).execute()
        expanded, expanded_token = incremental(svc, BOB, expanded_token, single=True)
        plain, plain_token = incremental(svc, BOB, plain_token, single=False)
        svc.events().delete(calendarId=BOB, eventId=series).execute()
        gone, _ = incremental(svc, BOB, expanded_token, single=True)
        gone_plain, _ = incremental(svc, BOB, plain_token, single=False)
    assert len(expanded) == 4 and {i["recurringEventId"] for i in expanded} == {series}
    assert {i["description"] for i in expanded} == {"new agenda"}
    assert [i["id"] for i in plain] == [series]
    assert len(gone) == 4 and {i["status"] for i in gone} == {"cancelled"}
    assert all(set(i) == {"kind", "etag", "id", "status", "recurringEventId", "originalStartTime"} for i in gone)
    assert [(i["id"], i["status"]) for i in gone_plain] == [(series, "cancelled")]


def test_invalidated_sync_token_is_410_full_sync_required(env: Served) -> None:
    with env.service() as svc:
        _, bob_token = full_sync(svc, BOB, single=False)
        _, alice_token = full_sync(svc, ALICE, single=False)
        env.store.invalidate_sync_tokens(BOB)
        with pytest.raises(HttpError) as caught:
            svc.events().list(calendarId=BOB, syncToken=bob_token).execute()
        alice, _ = incremental(svc, ALICE, alice_token, single=False)
        env.store.invalidate_sync_tokens()
        with pytest.raises(HttpError) as everyone:
            svc.events().list(calendarId=ALICE, syncToken=alice_token).execute()
        with pytest.raises(HttpError) as garbage:
            svc.events().list(calendarId=ALICE, syncToken="not-a-token").execute()
        _, fresh_token = full_sync(svc, BOB, single=False)
        again, _ = incremental(svc, BOB, fresh_token, single=False)
    assert caught.value.status_code == 410
    assert caught.value.error_details[0]["reason"] == "fullSyncRequired"
    assert json.loads(caught.value.content) == FULL_SYNC_REQUIRED
    assert alice == []
    assert everyone.value.status_code == 410 and garbage.value.status_code == 410
    assert again == []


def test_sync_tokens_go_stale_after_the_max_age(env: Served) -> None:
    with env.service() as svc:
        _, token = full_sync(svc, BOB, single=False)
        env.clock.advance(timedelta(days=6).total_seconds())
        still, _ = incremental(svc, BOB, token, single=False)
        env.clock.advance(timedelta(days=1, seconds=1).total_seconds())
        with pytest.raises(HttpError) as caught:
            svc.events().list(calendarId=BOB, syncToken=token).execute()
    assert still == []
    assert caught.value.status_code == 410


@pytest.mark.parametrize(
    "extra",
    [
        {"timeMin": "2026-01-01T00:00:00Z"},
        {"timeMax": "2026-01-01T00:00:00Z"},
        {"updatedMin": "2026-01-01T00:00:00Z"},
        {"orderBy": "updated"},
        {"q": "acme"},
        {"iCalUID": "x@google.com"},
        {"privateExtendedProperty": "a=b"},
        {"sharedExtendedProperty": "a=b"},
    ],
)
def test_filters_are_refused_with_a_sync_token(env: Served, extra: dict[str, str]) -> None:
    with env.service() as svc:
        _, token = full_sync(svc, BOB, single=False)
        with pytest.raises(HttpError) as caught:
            svc.events().list(calendarId=BOB, syncToken=token, **extra).execute()
    assert caught.value.status_code == 400
    assert caught.value.error_details[0]["location"] == next(iter(extra))


# -- batch ---------------------------------------------------------------------------------------------
def test_batch_of_inserts_reports_the_duplicate_in_its_part(env: Served) -> None:
    taken = uuid.uuid4().hex
    results: list[tuple[str, Any, Any]] = []
    with env.service() as svc:
        svc.events().insert(
            calendarId=BOB, body={"id": taken, **timed("2026-12-07T09:00:00", "2026-12-07T09:30:00")}
        ).execute()
        # googleapiclient resolves batchPath against the discovery rootUrl, not the api_endpoint:
        assert svc.new_batch_http_request()._batch_uri == "https://www.googleapis.com/batch/calendar/v3"
        batch = BatchHttpRequest(
            callback=lambda rid, resp, exc: results.append((rid, resp, exc)),
            batch_uri=env.server.base_url + "/batch/calendar/v3",
        )
        fresh_ids = [uuid.uuid4().hex, uuid.uuid4().hex]
        for event in (fresh_ids[0], taken, fresh_ids[1]):
            body = {
                "id": event,
                "summary": f"batch {event[:4]}",
                **timed("2026-12-07T10:00:00", "2026-12-07T10:30:00"),
            }
            batch.add(svc.events().insert(calendarId=BOB, body=body))
        batch.execute()
        stored = [svc.events().get(calendarId=BOB, eventId=e).execute()["id"] for e in fresh_ids]
    assert [rid for rid, _, _ in results] == ["1", "2", "3"]
    assert results[0][1]["id"] == fresh_ids[0] and results[2][1]["id"] == fresh_ids[1]
    failure = results[1][2]
    assert isinstance(failure, HttpError) and failure.status_code == 409
    assert failure.error_details[0]["reason"] == "duplicate"
    assert stored == fresh_ids
    assert [(r.endpoint, r.status) for r in env.log.records(path="^/batch")] == [("batch", 200)]
    assert env.app.batch_part_counts() == {"events.insert": 3}


def test_batch_parts_are_authenticated_and_limited_to_1000(env: Served) -> None:
    boundary = "xyz"

    def part(n: int, token: str) -> str:
        return (
            f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <b + {n}>\r\n\r\n"
            f"GET /calendar/v3/calendars/{BOB}/events/{event_id('m-bob-1')}?alt=json HTTP/1.1\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        )

    def post(parts: list[str]) -> requests.Response:
        return requests.post(
            env.server.base_url + "/batch/calendar/v3",
            data=("".join(parts) + f"--{boundary}--\r\n").encode(),
            headers={
                "Content-Type": f"multipart/mixed; boundary={boundary}",
                "Authorization": f"Bearer {env.creds.token}",
            },
            timeout=30,
        )

    mixed = post([part(1, env.creds.token), part(2, "wrong")])
    too_many = post([part(n, env.creds.token) for n in range(1001)])
    assert mixed.status_code == 200 and mixed.headers["Content-Type"].startswith("multipart/mixed")
    assert "Content-ID: <response-b + 1>" in mixed.text and "HTTP/1.1 200 OK" in mixed.text
    assert "Content-ID: <response-b + 2>" in mixed.text and "HTTP/1.1 401 Unauthorized" in mixed.text
    assert too_many.status_code == 400


# -- mutations -----------------------------------------------------------------------------------------
def _all_calendars_sync(svc: Any, tokens: dict[str, str]) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    for calendar, token in list(tokens.items()):
        items, tokens[calendar] = incremental(svc, calendar, token, single=False, page=5)
        seen.extend(items)
    return seen


def _assert_exactly_these_changes(changes: list[Any], items: list[dict[str, Any]]) -> None:
    counted = Counter(i["id"] for i in items)
    assert not items or max(counted.values()) == 1
    # a cancelled series also cancels its stored exceptions: they arrive as tombstones of their own
    deleted = {c.id for c in changes if c.kind == "delete"}
    consequences = {i["id"] for i in items if i.get("recurringEventId") in deleted}
    assert all(i["status"] == "cancelled" for i in items if i["id"] in consequences)
    assert {c.id for c in changes} | consequences == set(counted)


def test_mutations_are_seen_exactly_once_by_sync(env: Served) -> None:
    rng = random.Random(7)
    with env.service() as svc:
        tokens = {c: full_sync(svc, c, single=False)[1] for c in (ALICE, BOB)}
        first = env.store.mutate(rng, 25, env.clock.now(), late_share=0.0)
        seen = _all_calendars_sync(svc, tokens)
        env.clock.advance(60)
        second = env.store.mutate(rng, 25, env.clock.now(), late_share=0.0)
        seen_again = _all_calendars_sync(svc, tokens)
    assert {c.kind for c in first + second} >= {"create", "update"}
    for changes, items in ((first, seen), (second, seen_again)):
        _assert_exactly_these_changes(changes, items)
        stamps = {i["updated"] for i in items if "updated" in i}
        assert len(stamps) == 1  # every change of a round carries the round's stamp


def test_late_mutations_stay_hidden_until_released_and_keep_their_stamp(env: Served) -> None:
    rng = random.Random(3)
    with env.service() as svc:
        tokens = {c: full_sync(svc, c, single=False)[1] for c in (ALICE, BOB)}
        stamp = env.clock.now()
        late = env.store.mutate(rng, 12, stamp, late_share=1.0)
        hidden = _all_calendars_sync(svc, tokens)
        created = [c for c in late if c.kind == "create"]
        assert created, "seed 3 plans new meetings, cancellations and a cancelled instance"
        with pytest.raises(HttpError) as not_yet:
            svc.events().get(calendarId=BOB, eventId=created[0].id).execute()
        env.clock.advance(120)
        released = env.store.release_pending()
        visible = _all_calendars_sync(svc, tokens)
    assert all(c.late for c in late) and hidden == []
    assert not_yet.value.status_code == 404
    assert {c.kind for c in released} >= {"create", "delete", "cancel", "update"}
    _assert_exactly_these_changes(released, visible)
    expected = stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
    assert {i["updated"] for i in visible if "updated" in i} == {expected}
    assert env.store.counts()["pending_changes"] == 0
