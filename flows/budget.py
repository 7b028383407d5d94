"""The shared per-API request budget: Prefect global concurrency limits used as rate limits.

Every request attempt to an API passes through ``connectors.retry.call_with_retry``, which first
calls that API's throttle, if one is installed. Inside a flow run with budgets configured
(``ACCORD_BUDGET__SALESFORCE_PER_SECOND``, ``ACCORD_BUDGET__JIRA_PER_SECOND``,
``ACCORD_BUDGET__GOOGLE_CALENDAR_PER_SECOND``), ``budget_throttles`` installs a throttle that takes
one slot of the API's Prefect global concurrency limit with ``prefect.concurrency.sync.rate_limit``
before each attempt. The limits live on the Prefect server, so every worker and every flow run
draws from the same budget:

| API | limit name | ``limit`` (slots) | ``slot_decay_per_second`` |
|---|---|---|---|
| Salesforce | ``accord-api-salesforce`` | ``ceil(rate * burst_seconds)``, at least 1 | the rate |
| Jira | ``accord-api-jira`` | same | same |
| Google Calendar | ``accord-api-google-calendar`` | same | same |

A slot frees itself at ``slot_decay_per_second``; at most ``limit`` requests go at once after a
quiet spell, then the rate holds. ``apply_limits`` creates or updates the limits from the settings
(every budgeted flow run does so first, so the settings are the one source of truth; keep them the
same on every worker). Deactivating a limit in the Prefect UI lifts that budget until it is
activated again: the flows change only ``limit`` and ``slot_decay_per_second``.

``python -m flows.budget`` applies the limits from the environment's settings and prints them.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from accord.settings import BUDGET_APIS, AccordSettings, BudgetSettings, load_settings
from connectors.retry import Throttle, get_throttle, set_throttle

log = logging.getLogger("accord.budget")
LIMIT_PREFIX = "accord-api-"


def limit_name(api: str) -> str:
    """The Prefect global concurrency limit of ``api``: accord-api-salesforce, accord-api-jira,
    accord-api-google-calendar."""
    if api not in BUDGET_APIS:
        raise ValueError(f"unknown API {api!r}; expected one of {BUDGET_APIS}")
    return LIMIT_PREFIX + api.replace("_", "-")


@dataclass(frozen=True)
class LimitSpec:
    api: str
    name: str
    limit: int
    slot_decay_per_second: float


def limit_specs(budget: BudgetSettings) -> list[LimitSpec]:
    """The global concurrency limits the budget settings call for (none for an API without a rate)."""
    specs = []
    for api in budget.apis():
        rate = budget.per_second(api)
        assert rate is not None
        specs.append(LimitSpec(api, limit_name(api), budget.burst(api), float(rate)))
    return specs


def apply_limits(budget: BudgetSettings) -> list[LimitSpec]:
    """Create each budgeted API's limit, or update its ``limit`` and ``slot_decay_per_second``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    specs = limit_specs(budget)
    if not specs:
        return specs
    with get_client(sync_client=True) as client:
        for spec in specs:
            try:
                current = client.read_global_concurrency_limit_by_name(spec.name)
            except ObjectNotFound:
                try:
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(
                            name=spec.name, limit=spec.limit, slot_decay_per_second=spec.slot_decay_per_second
                        )
                    )
                    continue
                except ObjectAlreadyExists:  # another run created it a moment ago
                    current = client.read_global_concurrency_limit_by_name(spec.name)
            if (current.limit, current.slot_decay_per_second) != (spec.limit, spec.slot_decay_per_second):
                client.update_global_concurrency_limit(
                    spec.name,
                    GlobalConcurrencyLimitUpdate(limit=spec.limit, slot_decay_per_second=spec.slot_decay_per_second),
                )
    return specs


class BudgetUnavailableError(RuntimeError):
    """No slot of an API's budget could be had: Prefect unreachable, the limit deleted, or the wait
    longer than ``ACCORD_BUDGET__WAIT_TIMEOUT_S``. The request was not sent."""

    def __init__(self, api: str, problem: str) -> None:
        self.api = api
        self.limit = limit_name(api)
        self.problem = problem
        super().__init__(f"{api}: no slot of the Prefect concurrency limit {self.limit}: {problem}")


def prefect_throttle(api: str, budget: BudgetSettings) -> Throttle:
    """A throttle that takes one slot of ``api``'s limit per request attempt (blocking until one frees)."""
    from prefect.concurrency.sync import rate_limit

    name = limit_name(api)
    timeout = budget.wait_timeout_s

    def wait_for_slot() -> None:
        try:
            # strict: a limit that vanished fails the request rather than lifting the budget silently.
            rate_limit(name, timeout_seconds=timeout, strict=True)
        except TimeoutError:
            raise BudgetUnavailableError(api, f"waited longer than {timeout:g} s") from None
        except Exception as exc:
            raise BudgetUnavailableError(api, f"{type(exc).__name__}: {exc}") from None

    return wait_for_slot


# Throttles installed by budget_throttles, per API: (the throttle, flows using it, what it replaced).
_installed: dict[str, tuple[Throttle, int, Throttle | None]] = {}
_installed_lock = threading.Lock()


def _install(api: str, throttle: Throttle) -> None:
    with _installed_lock:
        current = _installed.get(api)
        if current is not None and get_throttle(api) is current[0]:
            _installed[api] = (current[0], current[1] + 1, current[2])
            return
        _installed[api] = (throttle, 1, set_throttle(api, throttle))


def _uninstall(api: str) -> None:
    with _installed_lock:
        current = _installed.get(api)
        if current is None:
            return
        throttle, users, replaced = current
        if users > 1:
            _installed[api] = (throttle, users - 1, replaced)
            return
        del _installed[api]
        if get_throttle(api) is throttle:
            set_throttle(api, replaced)


def in_flow_run() -> bool:
    from prefect.context import FlowRunContext

    return FlowRunContext.get() is not None


@contextmanager
def budget_throttles(settings: AccordSettings) -> Iterator[list[LimitSpec]]:
    """Inside a flow run with budgets configured: apply the limits, then throttle every request to
    the budgeted APIs until the block ends (flow runs sharing the process share the throttles)."""
    if not settings.budget.apis() or not in_flow_run():
        yield []
        return
    try:
        specs = apply_limits(settings.budget)
    except Exception as exc:
        problem = f"the limit could not be created or updated ({type(exc).__name__}); is PREFECT_API_URL right?"
        raise BudgetUnavailableError(settings.budget.apis()[0], problem) from exc
    for spec in specs:
        _install(spec.api, prefect_throttle(spec.api, settings.budget))
    log.info(
        "request budget: %s",
        ", ".join(f"{s.name} {s.slot_decay_per_second:g}/s (burst {s.limit})" for s in specs),
    )
    try:
        yield specs
    finally:
        for spec in specs:
            _uninstall(spec.api)


def main() -> None:
    specs = apply_limits(load_settings().budget)
    for spec in specs:
        print(json.dumps(asdict(spec)))
    if not specs:
        print("no budget configured (ACCORD_BUDGET__<API>_PER_SECOND); no limit created")


if __name__ == "__main__":
    main()
