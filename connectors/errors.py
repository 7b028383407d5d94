"""The few error types every connector maps its library's exceptions to.

Only ``TransientError`` (and its ``RateLimitedError``) is retried. Messages name the source, the
operation and the record or field involved, never a credential or a response body.
"""

from __future__ import annotations

from typing import Any


def _rebuild(cls: type[ConnectorError], args: tuple[Any, ...], state: dict[str, Any]) -> ConnectorError:
    """An unpickled connector error: its message and attributes as they were, ``__init__`` not run."""
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class ConnectorError(Exception):
    """Base class. ``source`` is "salesforce", "jira" or "google_calendar".

    Pickles intact, subclasses too (a pull in a child process hands its error to the sync's,
    ``flows.engine.UnifyPool.pull``): the default pickling calls the class with ``args``, the one
    formatted message, which ``__init__`` does not take."""

    retriable = False

    def __init__(self, source: str, message: str, *, status: int | None = None) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self.args, dict(self.__dict__))


class TransientError(ConnectorError):
    """Worth retrying: 5xx, dropped connections, timeouts, throttling."""

    retriable = True

    def __init__(
        self, source: str, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(source, message, status=status)
        self.retry_after = retry_after


class RateLimitedError(TransientError):
    """The API asked us to slow down (429, Salesforce concurrent-request limit, Google rate limits)."""


class AuthError(ConnectorError):
    """Credentials wrong, expired beyond refresh, or lacking permission: fix the settings."""


class ConfigError(ConnectorError):
    """The mapping or settings do not fit the org (unknown object or field, bad query)."""


class PermanentError(ConnectorError):
    """The API refused this request for good (e.g. a record-level validation error)."""


class QuotaExhaustedError(ConnectorError):
    """A daily or long-window quota is used up: retrying now cannot help."""
