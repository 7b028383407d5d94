"""The Calendar emulator on a port of its own, as the connector and writer tests start it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from pydantic import SecretStr

from connectors.retry import RetrySettings
from connectors.settings import GoogleCalendarSettings
from sandbox.clock import Clock
from sandbox.credentials import GoogleCredentials
from sandbox.generator import generate_world
from sandbox.google_calendar import CalendarApp, CalendarStore
from sandbox.http import ApiServer
from sandbox.recorder import RequestLog
from sandbox.world import World


@dataclass
class CalendarEmulator:
    world: World
    clock: Clock
    credentials: GoogleCredentials
    store: CalendarStore
    app: CalendarApp
    log: RequestLog
    server: ApiServer

    retry: ClassVar[RetrySettings] = RetrySettings(max_attempts=6, base_wait_s=0, max_wait_s=0)

    @property
    def endpoint(self) -> str:
        return self.server.base_url + "/calendar/v3/"

    def settings(self, **changes: Any) -> GoogleCalendarSettings:
        """Refreshable user credentials, as ``accord sandbox up`` hands them out."""
        values: dict[str, Any] = {
            "api_endpoint": self.endpoint,
            "token": SecretStr(self.credentials.token),
            "refresh_token": SecretStr(self.credentials.refresh_token),
            "token_uri": self.server.base_url + "/token",
            "client_id": self.credentials.client_id,
            "client_secret": SecretStr(self.credentials.client_secret),
            "retry": self.retry,
        }
        values.update(changes)
        return GoogleCalendarSettings(**values)


E = TypeVar("E", bound=CalendarEmulator)


@contextmanager
def running(kind: type[E], app: type[CalendarApp] = CalendarApp, seed: int = 1) -> Iterator[E]:
    """A small world's calendars served over HTTP; the emulator must raise no handler error."""
    world = generate_world("small", seed)
    clock = Clock()
    credentials = GoogleCredentials()
    store = CalendarStore.from_world(world, clock)
    served = app(store, clock, credentials)
    log = RequestLog()
    server = ApiServer(served, log)
    served.base_url = server.base_url
    server.start()
    try:
        yield kind(world, clock, credentials, store, served, log, server)
    finally:
        server.stop()
    assert server.errors == []
