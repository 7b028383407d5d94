"""``lookup_keys`` of meetings reads the record's data directly and remembers each address's keys;
the keys are exactly what they were when it built the ``CalendarEvent`` first (``reference_keys``):
the store's keys never change without a ``KEYS_VERSION`` bump."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from engagement.records import (
    KEY_LIMIT,
    MEETING_MARK,
    UNFAITHFUL,
    CalendarEvent,
    SourceRecord,
    address_keys,
    lookup_keys,
)


def reference_fit(key: str) -> str:
    if len(key) <= KEY_LIMIT:
        return key
    return key[:2] + "#" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def reference_plain(email: str) -> str:
    return email.strip().strip("<>").casefold()


def reference_address_keys(email: str) -> set[str]:
    address = reference_plain(email)
    keys = {"e:" + address}
    if reference_plain(address) != address or len(address) + 2 > KEY_LIMIT:
        keys.add(UNFAITHFUL)
    if "@" in address:
        local, _, domain = address.rpartition("@")
        if "+" in local:
            keys.add(f"s:{local.split('+', 1)[0]}@{domain}")
        keys.add("d:" + domain)
    return {reference_fit(k) for k in keys}


def reference_keys(record: SourceRecord) -> set[str]:
    """The meeting branch of ``lookup_keys`` as it was: through ``CalendarEvent.from_record``."""
    if record.deleted:
        return set()
    event = CalendarEvent.from_record(record)
    if event is None or event.status == "cancelled":
        return set()
    keys = {MEETING_MARK}
    for attendee in event.attendees:
        keys |= reference_address_keys(attendee.email)
    return keys


def outcome(fn: Any, record: SourceRecord) -> tuple[str, Any]:
    try:
        return ("keys", fn(record))
    except Exception as exc:
        return ("error", type(exc))


addresses = st.one_of(
    st.sampled_from(
        ["ann@example.org", "Ann+news@Example.org", " <bob@x.io> ", "<<c@d>>", "no-at-sign", "", "a+b+c@d"]
    ),
    st.text(st.sampled_from("ab+@.< >XÉß\u0130"), max_size=12),
    st.integers(min_value=390, max_value=410).map(lambda n: "x" * n + "@example.org"),
)
attendee = st.fixed_dictionaries(
    {"email": st.one_of(addresses, st.none())},
    optional={"response": st.sampled_from(["accepted", "declined", None]), "organizer": st.booleans()},
)
stamps = st.one_of(st.none(), st.just(""), st.just("2024-05-01T10:00:00.000Z"), st.just("2024-05-01T10:00:00+02:00"))
event_data = st.fixed_dictionaries(
    {
        "event_id": st.just("e1"),
        "start": stamps,
        "end": stamps,
        "status": st.sampled_from(["confirmed", "tentative", "cancelled", None, ""]),
        "attendees": st.one_of(st.none(), st.lists(attendee, max_size=6)),
    }
)


def meeting(data: dict[str, Any], *, deleted: bool = False) -> SourceRecord:
    stamp = datetime(2024, 5, 1, tzinfo=UTC)
    return SourceRecord("google_calendar", "events", "cal/e1", stamp, data, deleted=deleted, partition="cal")


@given(event_data, st.booleans())
@example(
    {"start": "2024-05-01T10:00:00.000Z", "end": "2024-05-01T11:00:00.000Z", "attendees": [{"email": "A+b@C.org"}]},
    False,
)
@example({"start": "2024-05-01T10:00:00.000Z", "end": "not a stamp", "attendees": []}, False)
def test_meeting_keys_are_the_reference(data: dict[str, Any], deleted: bool) -> None:
    record = meeting(data, deleted=deleted)
    assert outcome(lookup_keys, record) == outcome(reference_keys, record)


@given(addresses)
def test_address_keys_are_the_reference_and_a_fresh_set(email: str) -> None:
    keys = address_keys(email)
    assert keys == reference_address_keys(email)
    keys.add("mine")  # the caller's own set: the remembered keys are not touched
    assert address_keys(email) == reference_address_keys(email)
