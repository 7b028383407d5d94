"""The ``drop_after`` fault on the three emulators: the write lands, its answer is lost.

Configured through the control API, as ``accord sandbox faults`` and out-of-process tests do.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from sandbox.app import Sandbox, SandboxOptions
from sandbox.client import SandboxControl
from sandbox.jira.adf import document_to_text

KEY_FIELD = "Accord_Key__c"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxOptions(size="small", seed=5)) as sb:
        yield sb


@pytest.fixture
def control(sandbox: Sandbox) -> Iterator[SandboxControl]:
    control = SandboxControl(sandbox.info()["control"])
    control.reset_faults()
    yield control
    control.reset_faults()


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


def call(sandbox: Sandbox, api: str, method: str, path: str, body: Any = None) -> requests.Response:
    info = sandbox.info()[api]
    if api == "jira":
        token = base64.b64encode(f"{info['email']}:{info['api_token']}".encode()).decode()
        url, auth = f"{info['server']}/rest/api/3/{path}", f"Basic {token}"
    elif api == "salesforce":
        url, auth = f"{info['instance_url']}/services/data/v59.0/{path}", f"Bearer {info['session_id']}"
    else:
        url, auth = info["api_endpoint"] + path, f"Bearer {info['token']}"
    return session().request(method, url, json=body, headers={"Authorization": auth}, timeout=30)


def lost(sandbox: Sandbox, api: str, method: str, path: str, body: Any = None) -> None:
    """The request goes out and no answer comes back."""
    since = sandbox.log.last_seq
    with pytest.raises(requests.ConnectionError):
        call(sandbox, api, method, path, body)
    [record] = sandbox.log.records(api=api, since_seq=since)
    assert (record.method, record.status, record.fault) == (method, 0, "drop_after")


def test_control_api_sets_drop_after_per_api(sandbox: Sandbox, control: SandboxControl) -> None:
    answer = control.set_faults("jira", rate_drop_after=0.25, seed=3)
    assert answer["settings"]["rate_drop_after"] == 0.25
    faults = control.faults()
    assert faults["jira"]["settings"]["rate_drop_after"] == 0.25
    assert faults["salesforce"]["settings"]["rate_drop_after"] == 0.0
    assert faults["jira"]["injected"]["drop_after"] == 0
    with pytest.raises(Exception, match="must not exceed 1"):
        control.set_faults("jira", rate_drop=0.9)


def test_jira_comment_lands_and_its_answer_is_lost(sandbox: Sandbox, control: SandboxControl) -> None:
    store = sandbox.jira_store
    with store.lock:
        issue = next(v for v in store.issues.values() if not v.deleted)
    control.set_faults("jira", rate_drop_after=1.0)
    # reads are answered
    assert call(sandbox, "jira", "GET", f"issue/{issue.key}").status_code == 200
    paragraph = {"type": "paragraph", "content": [{"type": "text", "text": "landed, unanswered"}]}
    lost(
        sandbox,
        "jira",
        "POST",
        f"issue/{issue.key}/comment",
        {"body": {"type": "doc", "version": 1, "content": [paragraph]}},
    )
    lost(sandbox, "jira", "PUT", f"issue/{issue.key}/properties/accord.status", {"ref": "x"})
    with store.lock:
        bodies = [document_to_text(c.body) if isinstance(c.body, dict) else c.body for c in store.comments_of(issue.id)]
        assert store.properties[issue.id]["accord.status"] == {"ref": "x"}
    assert bodies.count("landed, unanswered") == 1
    assert control.faults()["jira"]["injected"]["drop_after"] == 2


def test_salesforce_upsert_lands_and_its_answer_is_lost(sandbox: Sandbox, control: SandboxControl) -> None:
    control.set_faults("salesforce", rate_drop_after=1.0)
    task = {"Subject": "Follow up", "Status": "Not Started", "ActivityDate": "2026-12-01"}
    lost(sandbox, "salesforce", "PATCH", f"sobjects/Task/{KEY_FIELD}/drop-after-1", task)
    control.reset_faults()
    found = call(sandbox, "salesforce", "GET", f"sobjects/Task/{KEY_FIELD}/drop-after-1")
    assert found.status_code == 200 and found.json()["Subject"] == "Follow up"
    # the retry the client makes finds the record: an update, not a second Task
    again = call(sandbox, "salesforce", "PATCH", f"sobjects/Task/{KEY_FIELD}/drop-after-1", task)
    assert again.status_code in (200, 204)
    sf = sandbox.salesforce_store
    held = sf.run(sf.compile("SELECT Id, Accord_Key__c FROM Task"), include_deleted=False)
    assert sum(1 for r in held if r.get(KEY_FIELD) == "drop-after-1") == 1


def test_calendar_insert_lands_and_its_answer_is_lost(sandbox: Sandbox, control: SandboxControl) -> None:
    store = sandbox.calendar_store
    calendar = next(c for c in store.calendars.values() if c.access_role in ("owner", "writer"))
    event = {
        "id": "accorddropafter0001",
        "summary": "Check-in",
        "start": {"dateTime": "2026-12-01T10:00:00Z"},
        "end": {"dateTime": "2026-12-01T10:30:00Z"},
    }
    control.set_faults("google_calendar", rate_drop_after=1.0)
    assert call(sandbox, "google_calendar", "GET", f"calendars/{calendar.id}/events").status_code == 200
    lost(sandbox, "google_calendar", "POST", f"calendars/{calendar.id}/events", event)
    assert store.calendars[calendar.id].events["accorddropafter0001"].status == "confirmed"
    control.reset_faults()
    # the client's retry with the same id: 409, the event is there already
    assert call(sandbox, "google_calendar", "POST", f"calendars/{calendar.id}/events", event).status_code == 409
