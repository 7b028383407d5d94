"""One retry policy per connector: exponential backoff with jitter, honouring Retry-After, capped.

Only ``TransientError`` is retried. The caps are settings (``RetrySettings``) so an ops person can
trade latency for resilience. Know what the library already retries: the jira library's
ResilientSession retries 429/503 itself, so the Jira connector turns that off (max_retries=0) and
this policy is the only retry layer; googleapiclient retries only when asked (num_retries=0 here).

Every attempt of every API request passes through ``call_with_retry``, so it is also where a shared
rate budget applies: ``set_throttle(api, fn)`` installs a process-wide callable that is called
before each attempt of that API's requests (``call_with_retry(settings, fn, api="jira")``) and
blocks until the request may go. Connectors stay free of Prefect: ``flows.budget`` installs a
throttle that takes a slot of a Prefect global concurrency limit.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from connectors.errors import TransientError

T = TypeVar("T")
log = logging.getLogger("accord.connectors.retry")

# A throttle blocks until one more request to its API may be made (it may raise to refuse).
Throttle = Callable[[], None]
_throttles: dict[str, Throttle] = {}
_throttles_lock = threading.Lock()


def set_throttle(api: str, throttle: Throttle | None) -> Throttle | None:
    """Install ``throttle`` for every request attempt to ``api`` ("salesforce", "jira",
    "google_calendar") in this process, or remove it with None; returns the one it replaces."""
    with _throttles_lock:
        previous = _throttles.pop(api, None)
        if throttle is not None:
            _throttles[api] = throttle
        return previous


def get_throttle(api: str) -> Throttle | None:
    with _throttles_lock:
        return _throttles.get(api)


def throttle(api: str | None) -> None:
    """Wait for ``api``'s throttle, if one is installed: once per HTTP request about to be sent."""
    if api is None:
        return
    installed = get_throttle(api)
    if installed is not None:
        installed()


class RetrySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(default=6, ge=1, le=20, description="Attempts per call, the first included")
    base_wait_s: float = Field(default=0.5, ge=0, description="First backoff; doubles per attempt")
    max_wait_s: float = Field(default=30.0, ge=0, description="Cap on any one wait, Retry-After included")


def _wait(settings: RetrySettings) -> Callable[[RetryCallState], float]:
    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        backoff = settings.base_wait_s * (2 ** (state.attempt_number - 1))
        jittered = random.uniform(backoff / 2, backoff)
        retry_after = exc.retry_after if isinstance(exc, TransientError) and exc.retry_after else 0.0
        return min(settings.max_wait_s, max(jittered, retry_after))

    return wait


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning(
        "retrying after %s (attempt %d): %s",
        type(exc).__name__,
        state.attempt_number,
        exc,
    )


def retrying(settings: RetrySettings) -> Retrying:
    return Retrying(
        retry=retry_if_exception(lambda e: isinstance(e, TransientError)),
        wait=_wait(settings),
        stop=stop_after_attempt(settings.max_attempts),
        before_sleep=_log_retry,
        reraise=True,
    )


def call_with_retry(settings: RetrySettings, fn: Callable[[], T], api: str | None = None) -> T:
    """Run ``fn`` (which raises typed connector errors) under the policy.

    With ``api``, each attempt first waits for that API's throttle (``set_throttle``), if any.
    """
    for attempt in retrying(settings):
        with attempt:
            throttle(api)
            return fn()
    raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover
