"""The shared per-API rate budget: the throttle seam in ``connectors.retry`` and Prefect global
concurrency limits behind it (``flows.budget``)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prefect import flow

from accord.settings import DEFAULT_MAPPING, BudgetSettings
from connectors.errors import TransientError
from connectors.retry import RetrySettings, call_with_retry, get_throttle, set_throttle
from engagement.mapping import load_mapping
from flows.budget import BudgetUnavailableError, LimitSpec, apply_limits, budget_throttles, limit_name
from flows.engine import pull_source
from sandbox.app import Sandbox, SandboxOptions
from sandbox.recorder import RecordedRequest
from store import Store
from tests.sandbox_settings import settings_for

NO_WAIT = RetrySettings(max_attempts=4, base_wait_s=0.0, max_wait_s=0.0)


@pytest.fixture
def clean_throttles() -> Iterator[None]:
    apis = ("salesforce", "jira", "google_calendar")
    before = {api: get_throttle(api) for api in apis}
    yield
    for api, throttle in before.items():
        set_throttle(api, throttle)


def test_the_throttle_is_called_before_every_attempt_of_its_api_only(clean_throttles: None) -> None:
    events: list[str] = []
    set_throttle("jira", lambda: events.append("slot"))
    failures = iter([TransientError("jira", "503"), TransientError("jira", "503")])

    def request() -> str:
        events.append("request")
        error = next(failures, None)
        if error is not None:
            raise error
        return "ok"

    assert call_with_retry(NO_WAIT, request, api="jira") == "ok"
    assert events == ["slot", "request"] * 3  # one slot per attempt, retries included
    events.clear()
    assert call_with_retry(NO_WAIT, lambda: "other", api="salesforce") == "other"
    assert call_with_retry(NO_WAIT, lambda: "untagged") == "untagged"
    assert events == []


def test_set_throttle_replaces_and_removes(clean_throttles: None) -> None:
    def first() -> None:
        return None

    def second() -> None:
        return None

    set_throttle("jira", None)
    assert set_throttle("jira", first) is None
    assert set_throttle("jira", second) is first
    assert set_throttle("jira", None) is second
    assert get_throttle("jira") is None


def test_a_throttle_that_refuses_stops_the_call_without_a_request(clean_throttles: None) -> None:
    calls: list[int] = []

    def refuse() -> None:
        raise TimeoutError("no slot")

    set_throttle("google_calendar", refuse)
    with pytest.raises(TimeoutError):
        call_with_retry(NO_WAIT, lambda: calls.append(1), api="google_calendar")
    assert calls == []


# -- against the session's Prefect API and the sandbox ----------------------------------------------------
RATE = 5.0  # requests per second on one API, shared by both pulls
API = "google_calendar"  # every Calendar request is one attempt: the log counts exactly what the budget does


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxOptions(size="small", seed=3)) as sb:
        yield sb


def _request_times(monkeypatch: pytest.MonkeyPatch, sb: Sandbox, api: str) -> list[float]:
    """When the sandbox logged each request of ``api`` (the request log keeps no clock of its own)."""
    times: list[float] = []
    append = sb.log.append

    def timed_append(**fields: Any) -> RecordedRequest:
        record = append(**fields)
        if record.api == api:
            times.append(time.monotonic())
        return record

    monkeypatch.setattr(sb.log, "append", timed_append)
    return times


def _two_concurrent_pulls(sb: Sandbox, tmp_path: Path, budget: BudgetSettings, tag: str) -> None:
    """Two flow runs, on two threads, each a full pull of ``API`` into a store of its own; both pull
    at the same time (a barrier inside the flows: flow runs take a while to start)."""
    settings = settings_for(sb, "sqlite://").model_copy(update={"budget": budget})
    mapping = load_mapping(DEFAULT_MAPPING)
    both_ready = threading.Barrier(2, timeout=60)

    @flow(name="accord-budget-test-pull")
    def pull(index: int) -> int:
        store = Store(f"sqlite:///{tmp_path / f'{tag}-{index}.sqlite'}")
        store.create_all()
        try:
            with budget_throttles(settings):
                both_ready.wait()
                report = pull_source(API, settings, mapping, store, upper=datetime.now(UTC), full=True)
        finally:
            store.dispose()
        return sum(s.pulled for s in report.streams.values())

    with ThreadPoolExecutor(max_workers=2) as pool:
        pulled = [f.result() for f in [pool.submit(pull, i) for i in range(2)]]
    assert pulled[0] == pulled[1] > 0


def _delete_limit(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectNotFound):
        client.delete_global_concurrency_limit_by_name(name)


def test_two_concurrent_pulls_share_one_budget(
    prefect_api: None, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_throttles: None
) -> None:
    budget = BudgetSettings(google_calendar_per_second=RATE)
    burst = budget.burst(API)
    _delete_limit(limit_name(API))  # start from a full bucket, whatever ran before

    times = _request_times(monkeypatch, sandbox, API)
    _two_concurrent_pulls(sandbox, tmp_path, budget, "budgeted")
    n = len(times)
    assert n >= 4 * burst, f"too few requests ({n}) to see a rate"
    # Within any stretch of the run, at most the burst plus the rate times its length (one request of
    # slack for the time between taking a slot and the request reaching the sandbox).
    worst = max((j - i + 1) - (burst + RATE * (times[j] - times[i])) for i in range(n) for j in range(i, n))
    assert worst <= 1.0, f"{worst:.2f} requests over the budget"
    budgeted = times[-1] - times[0]
    observed = (n - burst) / budgeted
    assert observed <= RATE * 1.1, f"{observed:.2f} requests/s after the burst, budget {RATE}"
    assert get_throttle(API) is None  # the flows removed their throttle when they ended

    times.clear()
    _two_concurrent_pulls(sandbox, tmp_path, BudgetSettings(), "free")
    assert len(times) == n
    unbudgeted = times[-1] - times[0]
    assert unbudgeted < budgeted / 2, (
        f"requests spread over {unbudgeted:.2f} s without the budget, {budgeted:.2f} s with"
    )
    print(
        f"\n{n} {API} requests from two concurrent pulls: over {budgeted:.2f} s with a budget of {RATE:g}/s "
        f"(burst {burst}), {observed:.2f}/s after the burst; over {unbudgeted:.2f} s without"
    )


def test_apply_limits_creates_then_updates_the_limit(prefect_api: None) -> None:
    from prefect.client.orchestration import get_client

    name = limit_name("jira")
    _delete_limit(name)
    assert apply_limits(BudgetSettings(jira_per_second=2.5)) == [LimitSpec("jira", name, 3, 2.5)]
    assert apply_limits(BudgetSettings(jira_per_second=10, burst_seconds=0.5)) == [LimitSpec("jira", name, 5, 10.0)]
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(name)
    assert (limit.limit, limit.slot_decay_per_second, limit.active) == (5, 10.0, True)
    assert apply_limits(BudgetSettings()) == []


def test_no_throttle_outside_a_flow_run_or_without_a_budget(clean_throttles: None, sandbox: Sandbox) -> None:
    settings = settings_for(sandbox, "sqlite://").model_copy(update={"budget": BudgetSettings(jira_per_second=1.0)})
    with budget_throttles(settings) as specs:
        assert specs == [] and get_throttle("jira") is None


def test_limit_names() -> None:
    assert [limit_name(api) for api in ("salesforce", "jira", "google_calendar")] == [
        "accord-api-salesforce",
        "accord-api-jira",
        "accord-api-google-calendar",
    ]
    with pytest.raises(ValueError, match="unknown API"):
        limit_name("hubspot")


def test_limits_that_cannot_be_applied_fail_the_run_naming_the_limit(
    clean_throttles: None, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.budget

    def unreachable(budget: BudgetSettings) -> list[LimitSpec]:
        raise ConnectionError("Prefect API unreachable")

    monkeypatch.setattr(flows.budget, "in_flow_run", lambda: True)
    monkeypatch.setattr(flows.budget, "apply_limits", unreachable)
    settings = settings_for(sandbox, "sqlite://").model_copy(update={"budget": BudgetSettings(jira_per_second=1.0)})
    with pytest.raises(BudgetUnavailableError, match="accord-api-jira") as caught, budget_throttles(settings):
        pass
    assert "PREFECT_API_URL" in str(caught.value) and get_throttle("jira") is None
