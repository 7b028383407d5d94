"""Jira pulled by the unify child (``ACCORD_PULL_IN_CHILD``, ``flows.engine.UnifyPool.pull``): the store
holds exactly what a pull in the sync's process stores, on SQLite and PostgreSQL; the child's errors
reach the sync with their type, attributes and cause chain, so they are explained the same; its log
records are logged by the sync; a budgeted source stays in the sync's process; a child killed during
the pull fails the run and the next run continues to the same store."""

from __future__ import annotations

import logging
import os
import pickle
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jira.exceptions import JIRAError
from sqlalchemy import func, select

from accord.settings import AccordSettings
from connectors.errors import AuthError, ConfigError, ConnectorError, QuotaExhaustedError, TransientError
from connectors.google_calendar.errors import FullSyncRequiredError
from connectors.retry import set_throttle
from engagement.mapping import Mapping, load_mapping
from flows.engine import UnifyFailedError, keeping_errors, run_sync, threaded_pull_all
from flows.failures import FailureContext, explain
from flows.unify_child import Failed, RemoteError, portable, relinked
from sandbox.app import Sandbox, SandboxOptions
from sandbox.http import Request, Response
from sandbox.jira.app import JiraApp
from store import Store
from store.schema import cursors, engagements, records
from tests.sandbox_settings import jira_app, reset_sandbox, settings_for

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxOptions(size="small", seed=23)) as sb:
        yield sb


@pytest.fixture
def fresh(sandbox: Sandbox) -> Iterator[Sandbox]:
    """The module's sandbox, its faults and credentials put back after the test."""
    yield sandbox
    reset_sandbox(sandbox)


@pytest.fixture(scope="module")
def mapping() -> Mapping:
    return load_mapping("mappings/default.yaml")


def _settings(sandbox: Sandbox, url: str, in_child: str) -> AccordSettings:
    return settings_for(sandbox, url).model_copy(
        update={"unify_processes": 2, "unify_split_from": 0, "pull_in_child": in_child}
    )


def _stored(store: Store) -> dict[str, Any]:
    """Every record (but when it was stored), cursor (but when it moved; a Calendar sync token
    carries the time it was issued, so of those only which exist) and engagement."""
    kept = [c for c in records.c if c.name != "stored_at"]
    moved = select(cursors.c.source, cursors.c.stream, cursors.c.partition, cursors.c.value)
    with store.engine.connect() as conn:
        return {
            "records": sorted(tuple(row) for row in conn.execute(select(*kept))),
            "cursors": sorted(
                (row.source, row.stream, row.partition, None if row.source == "google_calendar" else row.value)
                for row in conn.execute(moved)
            ),
            "engagements": sorted(tuple(row) for row in conn.execute(select(engagements))),
        }


def test_jira_pulled_in_the_child_stores_what_the_sync_process_stores(
    sandbox: Sandbox, mapping: Mapping, store_factory: Callable[[], Store]
) -> None:
    here, there = store_factory(), store_factory()
    for full in (True, False):
        if not full:
            sandbox.mutate(12, seed=5)
        one = run_sync(_settings(sandbox, here.url, ""), mapping, here, full=full, now=NOW)
        two = run_sync(_settings(sandbox, there.url, "jira"), mapping, there, full=full, now=NOW)
        assert not one.failed and not two.failed
        assert {s: r.in_child for s, r in one.sources.items()} == dict.fromkeys(one.sources, False)
        assert {s: r.in_child for s, r in two.sources.items()} == {
            "salesforce": False,
            "jira": True,
            "google_calendar": False,
        }
        assert two.to_json()["sources"]["jira"]["in_child"] is True
        assert two.sources["jira"].streams["issues"].pulled == one.sources["jira"].streams["issues"].pulled > 0
        assert _stored(there) == _stored(here)


def test_a_jira_error_in_the_child_reaches_the_sync_as_it_was(fresh: Sandbox, mapping: Mapping, tmp_path: Path) -> None:
    explained = {}
    for in_child in ("", "jira"):
        store = Store(f"sqlite:///{tmp_path / f'auth-{in_child}.sqlite'}")
        store.create_all()
        jira_app(fresh).expire_credentials()
        errors: dict[str, BaseException] = {}
        settings = _settings(fresh, store.url, in_child)
        pulls = keeping_errors(threaded_pull_all(settings, mapping, store), errors)  # as the flow keeps them
        try:
            report = run_sync(settings, mapping, store, full=True, now=NOW, pull_all=pulls)
        finally:
            store.dispose()
            jira_app(fresh).restore_credentials()
        error = errors["jira"]
        assert type(error) is AuthError and error.source == "jira" and error.status == 401
        assert report.sources["jira"].error == f"AuthError: {error}"
        assert set(errors) == {"jira"}  # the others were pulled
        explained[in_child] = explain(error, FailureContext("sync", settings, mapping)).text()
    assert "ACCORD_JIRA__API_TOKEN" in explained["jira"]
    assert explained["jira"] == explained[""]


@pytest.mark.parametrize(
    "error",
    [
        AuthError("jira", "refused", status=403),
        TransientError("salesforce", "503 on query", status=503, retry_after=2.5),
        QuotaExhaustedError("google_calendar", "daily limit", status=403),
        FullSyncRequiredError("google_calendar", "sync token gone", status=410),
    ],
)
def test_connector_errors_pickle_with_their_type_and_attributes(error: ConnectorError) -> None:
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301  # pickled here
    assert type(copy) is type(error) and str(copy) == str(error) and vars(copy) == vars(error)


def test_an_error_keeps_the_cause_chain_the_explanation_reads(mapping: Mapping) -> None:
    """Jira's 400 naming an unknown field is read from the library's error under the connector's."""
    body = '{"errorMessages": ["Field \'cf[99999]\' does not exist or you do not have permission to view it."]}'
    try:
        try:
            raise JIRAError(status_code=400, text=body, url="https://jira.example/rest/api/3/search/jql")
        except JIRAError as library:
            raise ConfigError("jira", "search issues: 400 Bad Request", status=400) from library
    except ConfigError as exc:
        original = exc
    error, causes = portable(original)
    failed = pickle.loads(pickle.dumps(Failed("line", "traceback", error, causes)))  # noqa: S301  # pickled here
    arrived = relinked(failed)
    assert type(arrived) is ConfigError and str(arrived) == str(original)
    context = FailureContext("sync", None, mapping)
    assert explain(arrived, context).text() == explain(original, context).text()
    assert "`cf[99999]`" in explain(arrived, context).what


def test_an_error_that_does_not_pickle_arrives_as_its_type_and_message() -> None:
    class Local(Exception):  # not importable by name: cannot be unpickled
        pass

    error, causes = portable(Local("the detail\nUPDATE records SET data = ... (a statement and its parameters)"))
    assert type(error) is RemoteError and str(error) == "Local: the detail" and causes == ()  # its first line


def test_the_childs_log_records_are_logged_by_the_sync(
    sandbox: Sandbox, mapping: Mapping, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'logs.sqlite'}")
    store.create_all()
    try:
        with caplog.at_level(logging.INFO, logger="accord"):
            report = run_sync(_settings(sandbox, store.url, "jira"), mapping, store, full=True, now=NOW)
    finally:
        store.dispose()
    assert report.sources["jira"].in_child
    [line] = [r for r in caplog.records if r.name == "accord.connectors.jira" and "pages" in r.getMessage()]
    issues = report.sources["jira"].streams["issues"].pulled
    assert line.processName == "unify-child" and line.process != os.getpid()
    assert line.getMessage().endswith(f"{issues} issues (full)")


def test_a_budgeted_source_is_pulled_in_the_sync_process(sandbox: Sandbox, mapping: Mapping, tmp_path: Path) -> None:
    taken: list[int] = []
    previous = set_throttle("jira", lambda: taken.append(1))
    store = Store(f"sqlite:///{tmp_path / 'budget.sqlite'}")
    store.create_all()
    try:
        report = run_sync(_settings(sandbox, store.url, "jira"), mapping, store, full=True, now=NOW)
    finally:
        set_throttle("jira", previous)
        store.dispose()
    assert not report.failed and not report.sources["jira"].in_child
    assert len(taken) >= report.sources["jira"].streams["issues"].pages  # every request took its slot here


def _unify_child_of_this_process() -> int | None:
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me and b"flows.unify_child" in command:
            return int(entry.name)
    return None


def _jira_records(store: Store) -> int:
    with store.engine.connect() as conn:
        where = records.c.source == "jira"
        return int(conn.execute(select(func.count()).select_from(records).where(where)).scalar_one())


class SearchGate:
    """Jira's issue search answers its first request and holds every later one until the gate is
    left: ``held`` is set when one is held, so a pull is known to be under way, not finished."""

    def __init__(self, app: JiraApp) -> None:
        self.app = app
        self.held = threading.Event()
        self._release = threading.Event()
        self._answered = 0
        self._lock = threading.Lock()
        self._routes = list(app.routes)

    def __enter__(self) -> SearchGate:
        self.app.routes[:] = [
            replace(r, handler=self._gated(r.handler)) if r.name == "search_jql" else r for r in self._routes
        ]
        return self

    def _gated(self, handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
        def gated(request: Request) -> Response:
            with self._lock:
                first = self._answered == 0
                self._answered += 1
            if not first:
                self.held.set()
                self._release.wait(timeout=120)
            return handler(request)

        return gated

    def __exit__(self, *_: object) -> None:
        self.app.routes[:] = self._routes
        self._release.set()


@pytest.mark.skipif(
    not Path("/proc/self/stat").exists(),
    reason="Linux only: the unify child is found among this process's children through /proc, and children "
    "die with the sync's process (PR_SET_PDEATHSIG) only on Linux",
)
def test_a_child_killed_during_its_pull_fails_the_run_and_the_next_run_continues(
    fresh: Sandbox, mapping: Mapping, tmp_path: Path
) -> None:
    reference = Store(f"sqlite:///{tmp_path / 'reference.sqlite'}")
    reference.create_all()
    assert not run_sync(_settings(fresh, reference.url, ""), mapping, reference, full=True, now=NOW).failed

    store = Store(f"sqlite:///{tmp_path / 'killed.sqlite'}")
    store.create_all()
    settings = _settings(fresh, store.url, "jira")
    outcome: dict[str, BaseException] = {}

    def sync() -> None:
        try:
            run_sync(settings, mapping, store, full=True, now=NOW)
        except BaseException as exc:
            outcome["error"] = exc

    with SearchGate(jira_app(fresh)) as gate:
        worker = threading.Thread(target=sync)
        worker.start()
        assert gate.held.wait(timeout=120), "the child's Jira pull never asked for a second page"
        child = _unify_child_of_this_process()
        assert child is not None and worker.is_alive()
        os.kill(child, signal.SIGKILL)  # with a search held: mid-pull
        worker.join(timeout=120)
    assert isinstance(outcome.get("error"), UnifyFailedError)
    run = store.last_runs(1)[0]
    assert run["status"] == "failed"
    assert run["stats"]["sources"]["jira"]["error"].startswith(
        "PullProcessEndedError: jira: the child process pulling it"
    )
    assert _jira_records(store) < _jira_records(reference)  # the pull did not finish

    again = run_sync(settings, mapping, store, now=NOW)
    assert not again.failed and again.sources["jira"].in_child
    assert _stored(store) == _stored(reference)
    store.dispose()
    reference.dispose()
