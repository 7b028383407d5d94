"""The whole sandbox: three emulators and a control API on loopback, over one generated world."""

from __future__ import annotations

import random
import re
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from sandbox.clock import Clock
from sandbox.control import ControlApp
from sandbox.credentials import SandboxCredentials
from sandbox.generator import generate_world
from sandbox.google_calendar import CalendarApp, CalendarStore
from sandbox.http import ApiApp, ApiServer
from sandbox.jira import JiraApp, JiraStore
from sandbox.jira.adf import document_to_text
from sandbox.mutations import Change, MutableStore
from sandbox.recorder import RequestLog
from sandbox.salesforce import SalesforceApp, SalesforceStore
from sandbox.tls import make_self_signed, server_context
from sandbox.world import World

API_NAMES = ("salesforce", "jira", "google_calendar")


@dataclass
class SandboxOptions:
    size: str = "small"
    seed: int = 1
    tls: bool = False
    jira_timezone: str = "America/Los_Angeles"  # the searching user's zone: JQL literals are read in it
    ports: dict[str, int] = field(default_factory=dict)  # fixed ports per API; 0/absent = ephemeral


class Sandbox:
    """Start with ``with Sandbox(SandboxOptions()) as sb:``; ``sb.info()`` tells clients where to go."""

    def __init__(self, options: SandboxOptions | None = None, world: World | None = None) -> None:
        self.options = options or SandboxOptions()
        self.clock = Clock()
        self.credentials = SandboxCredentials()
        self.log = RequestLog()
        started = time.perf_counter()
        self.world = world or generate_world(self.options.size, self.options.seed)
        self.generate_seconds = time.perf_counter() - started
        self.salesforce_store = SalesforceStore.from_world(self.world, self.clock)
        self.jira_store = JiraStore.from_world(self.world, self.clock, timezone=self.options.jira_timezone)
        self.calendar_store = CalendarStore.from_world(self.world, self.clock)
        self.load_seconds = time.perf_counter() - started - self.generate_seconds
        self.apps: dict[str, ApiApp] = {
            "salesforce": SalesforceApp(self.salesforce_store, self.clock, self.credentials.salesforce),
            "jira": JiraApp(self.jira_store, self.clock, self.credentials.jira),
            "google_calendar": CalendarApp(self.calendar_store, self.clock, self.credentials.google),
        }
        self.stores: dict[str, MutableStore] = {
            "salesforce": self.salesforce_store,
            "jira": self.jira_store,
            "google_calendar": self.calendar_store,
        }
        self._mutation_lock = threading.Lock()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.ca_cert: Path | None = None
        self.servers: dict[str, ApiServer] = {}
        self.control_server: ApiServer | None = None

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> Sandbox:
        context = None
        if self.options.tls:
            self._tmp = tempfile.TemporaryDirectory(prefix="accord-sandbox-tls-")
            cert, key = make_self_signed(Path(self._tmp.name))
            self.ca_cert = cert
            context = server_context(cert, key)
        for name, app in self.apps.items():
            server = ApiServer(app, self.log, port=self.options.ports.get(name, 0), ssl_context=context)
            app.base_url = server.base_url
            self.servers[name] = server
        control = ControlApp(self)
        self.control_server = ApiServer(control, RequestLog(), port=self.options.ports.get("control", 0))
        for server in [*self.servers.values(), self.control_server]:
            server.start()
        return self

    def stop(self) -> None:
        for server in [*self.servers.values(), *([self.control_server] if self.control_server else [])]:
            server.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- what clients need -----------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        sf, jira, google = self.credentials.salesforce, self.credentials.jira, self.credentials.google
        return {
            "salesforce": {
                "instance_url": self.servers["salesforce"].base_url,
                "session_id": sf.session_id,
                "username": sf.username,
                "password": sf.password,
                "security_token": sf.security_token,
                "consumer_key": sf.consumer_key,
                "consumer_secret": sf.consumer_secret,
            },
            "jira": {
                "server": self.servers["jira"].base_url,
                "email": jira.email,
                "api_token": jira.api_token,
            },
            "google_calendar": {
                "api_endpoint": self.servers["google_calendar"].base_url + "/calendar/v3/",
                "token": google.token,
                "refresh_token": google.refresh_token,
                "token_uri": self.servers["google_calendar"].base_url + "/token",
                "client_id": google.client_id,
                "client_secret": google.client_secret,
            },
            "ca_cert": str(self.ca_cert) if self.ca_cert else None,
            "control": self.control_server.base_url if self.control_server else None,
            "size": self.options.size,
            "seed": self.options.seed,
        }

    # -- moving the world on -----------------------------------------------------------------------
    def mutate(
        self, count: int, seed: int, *, late_share: float = 0.1, apis: tuple[str, ...] = API_NAMES
    ) -> list[Change]:
        """One round: release the previous round's late changes, then ``count`` new changes per API."""
        rng = random.Random(seed)
        changes: list[Change] = []
        with self._mutation_lock:
            for name in apis:
                store = self.stores[name]
                changes.extend(store.release_pending())
                changes.extend(store.mutate(rng, count, self.clock.now(), late_share=late_share))
        return changes

    def release_pending(self) -> list[Change]:
        with self._mutation_lock:
            return [c for store in self.stores.values() for c in store.release_pending()]

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: store.counts() for name, store in self.stores.items()}

    def written(self, task_external_id: str) -> dict[str, dict[str, int]]:
        """Accord's writes as the targets hold them, counted by idempotency key: Salesforce Tasks by
        their External ID field ``task_external_id``, Jira comments by their ``ref status-...`` line,
        Calendar events (not cancelled) by their private ``accordKey``. A count above 1 is a duplicate."""
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", task_external_id):
            raise ValueError(f"task_external_id: expected a Salesforce field name, got {task_external_id!r}")
        sf = self.salesforce_store
        soql = f"SELECT Id, {task_external_id} FROM Task"  # noqa: S608  # a checked field name
        tasks = Counter(
            str(r.get(task_external_id))
            for r in sf.run(sf.compile(soql), include_deleted=False)
            if r.get(task_external_id)
        )
        comments: Counter[str] = Counter()
        with self.jira_store.lock:
            bodies = [c.body for thread in self.jira_store.comments.values() for c in thread]
        for body in bodies:
            text = body if isinstance(body, str) else document_to_text(body)
            for line in text.splitlines():
                if "ref status-" in line:
                    comments[line.rsplit("ref ", 1)[1].strip().rstrip(".")] += 1
        events: Counter[str] = Counter()
        for calendar in self.calendar_store.calendars.values():
            for event in calendar.events.values():
                private = ((event.fields or {}).get("extendedProperties") or {}).get("private") or {}
                if "accordKey" in private and event.status != "cancelled":
                    events[str(private["accordKey"])] += 1
        return {"salesforce": dict(tasks), "jira": dict(comments), "google_calendar": dict(events)}

    def emulator_errors(self) -> list[str]:
        """Exceptions raised inside emulator handlers (answered as 500): tests assert this stays empty."""
        return [f"{name}: {e}" for name, server in self.servers.items() for e in server.errors]
