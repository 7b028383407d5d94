"""Accord's settings: environment variables (``ACCORD_...``, nested with ``__``) or a sandbox.

Examples: ``ACCORD_DATABASE_URL=postgresql+psycopg2://...``, ``ACCORD_JIRA__SERVER=https://acme.atlassian.net``,
``ACCORD_JIRA__API_TOKEN=...``, ``ACCORD_SALESFORCE__AUTH=client_credentials``. With
``ACCORD_SANDBOX_CONTROL`` set (the ``control`` URL that ``accord sandbox up`` prints), the API
settings come from the running sandbox instead.

Any credential can instead come from a Prefect Secret block, read when the settings are loaded (at
run time, inside the flow): ``ACCORD_JIRA__API_TOKEN_BLOCK=jira-token`` reads the block
``jira-token``. ``SECRET_SETTINGS`` lists the credentials this applies to. Values read from blocks
are held as ``SecretStr`` like the others: never in a repr, a log line or an exception.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from connectors.settings import GoogleCalendarSettings, JiraSettings, SalesforceSettings
from store import default_database_url

DEFAULT_MAPPING = Path(__file__).resolve().parent.parent / "mappings" / "default.yaml"

# The credentials of each connector; each may be given as ``<name>_block``: a Prefect Secret block.
# ``service_account_json`` exists only as a block: its JSON is written to a private temporary file
# (mode 0600, removed at exit) that becomes ``service_account_file``.
SECRET_SETTINGS: dict[str, tuple[str, ...]] = {
    "salesforce": ("password", "security_token", "consumer_secret", "session_id"),
    "jira": ("api_token",),
    "google_calendar": ("token", "refresh_token", "client_secret", "service_account_json"),
}
BLOCK_SUFFIX = "_block"
BUDGET_APIS = ("salesforce", "jira", "google_calendar")


def default_unify_processes() -> int:
    """Two where the machine has two cores or more: the unify tail splits its clients between the
    sync's process and one child (medium org: see ``flows.engine.UnifyPool``)."""
    return min(2, os.cpu_count() or 1)


def env_name(*path: str) -> str:
    """The environment variable of a setting: ``env_name("jira", "api_token")`` is ACCORD_JIRA__API_TOKEN."""
    return "ACCORD_" + "__".join(p.upper() for p in path)


class SecretBlockError(RuntimeError):
    """A credential's Prefect Secret block could not be read. Names the setting and the block, never a
    value. (Not a ValueError, so that pydantic lets it through as it is.)"""

    def __init__(self, section: str, name: str, block: str, problem: str) -> None:
        self.section = section
        self.name = name
        self.block = block
        self.variable = env_name(section, name + BLOCK_SUFFIX)
        self.problem = problem
        super().__init__(f"{self.variable}={block}: {problem}")


def read_secret_block(block: str) -> str | dict[str, Any] | list[Any]:
    """The value of the Prefect Secret block ``block`` as it was saved (text, or JSON for a dict).

    Reads ``value`` rather than ``Secret.get()``: ``get()`` parses text as JSON, which would turn a
    token such as ``"0123"`` into the number 123.
    """
    from prefect.blocks.system import Secret

    secret = cast(Secret[Any], Secret.load(block, _sync=True))  # type: ignore[call-arg]  # async_dispatch's switch
    value: str | dict[str, Any] | list[Any] = secret.value.get_secret_value()
    return value


_secret_files: dict[str, Path] = {}
_secret_files_lock = threading.Lock()


def _remove_secret_files() -> None:
    with _secret_files_lock:
        for path in _secret_files.values():
            with contextlib.suppress(OSError):
                path.unlink()
        _secret_files.clear()


atexit.register(_remove_secret_files)


def _private_file(block: str, text: str) -> str:
    """``text`` in a file only this user can read, one per block, rewritten on every load."""
    with _secret_files_lock:
        path = _secret_files.get(block)
        if path is None:
            fd, name = tempfile.mkstemp(prefix="accord-secret-", suffix=".json")  # 0600, owner only
            os.close(fd)
            path = _secret_files[block] = Path(name)
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        return str(path)


def _from_block(section: str, name: str, block: str) -> Any:
    try:
        value = read_secret_block(block)
    except Exception as exc:
        # Prefect says "Unable to find block document named …" when it does not exist; anything else
        # (API unreachable, wrong block type) is named by its type only.
        missing = "Unable to find block document" in str(exc)
        problem = (
            "no Prefect Secret block of that name in this Prefect workspace (prefect block ls)"
            if missing
            else f"the Prefect Secret block could not be read ({type(exc).__name__}); is PREFECT_API_URL right?"
        )
        raise SecretBlockError(section, name, block, problem) from None
    if name == "service_account_json":
        text = value if isinstance(value, str) else json.dumps(value)
        return _private_file(block, text)
    if not isinstance(value, str) or not value:
        kind = "empty" if value in ("", None) else f"a JSON {type(value).__name__}"
        raise SecretBlockError(section, name, block, f"the block holds {kind}; expected the credential as text")
    return SecretStr(value)


class BudgetSettings(BaseModel):
    """The shared request budget per API, across every worker: a Prefect global concurrency limit
    ``accord-api-<api>`` with ``limit`` = ``burst`` slots decaying at the rate (see flows/budget.py).
    An API without a rate is not throttled."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    salesforce_per_second: float | None = Field(default=None, gt=0, description="Salesforce requests per second")
    jira_per_second: float | None = Field(default=None, gt=0, description="Jira requests per second")
    google_calendar_per_second: float | None = Field(
        default=None, gt=0, description="Google Calendar requests per second"
    )
    burst_seconds: float = Field(
        default=1.0, gt=0, description="The limit's size in seconds of budget: requests that may go at once"
    )
    wait_timeout_s: float = Field(
        default=600.0, gt=0, description="Longest wait for a slot before the request fails (Prefect unreachable)"
    )

    def per_second(self, api: str) -> float | None:
        value: float | None = getattr(self, f"{api}_per_second")
        return value

    def burst(self, api: str) -> int:
        """The limit's slot count: ``burst_seconds`` of the rate, at least one request."""
        rate = self.per_second(api) or 0.0
        return max(1, math.ceil(rate * self.burst_seconds))

    def apis(self) -> list[str]:
        return [api for api in BUDGET_APIS if self.per_second(api)]


class AccordSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ACCORD_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,  # a validation error must never echo a credential
    )

    database_url: str = Field(default_factory=default_database_url)
    mapping: Path = Field(default=DEFAULT_MAPPING, description="The mapping YAML")
    sandbox_control: str | None = Field(default=None, description="Control URL of a running sandbox")
    salesforce: SalesforceSettings | None = None
    jira: JiraSettings | None = None
    google_calendar: GoogleCalendarSettings | None = None
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    unify_processes: int = Field(
        default_factory=default_unify_processes,
        ge=1,
        le=64,
        description="Processes that recompute the engagements after the pull (ACCORD_UNIFY_PROCESSES): the "
        "clients are split into that many partitions, one per process; 1 = all in the sync's process",
    )
    pull_in_child: str = Field(
        default="jira",
        description="Sources pulled by the unify children rather than the sync's process "
        "(ACCORD_PULL_IN_CHILD, comma-separated, one per child; empty: every pull in the sync's process): "
        "each pulls alongside the others with an interpreter lock of its own. Jira, the longest pull, by "
        "default. Only where the tail is split (unify_processes, unify_split_from) and no request budget "
        "is set for the source",
    )
    unify_split_from: int = Field(
        default=200,
        ge=0,
        description="Engagements the store holds from which the unify tail is split across "
        "unify_processes (ACCORD_UNIFY_SPLIT_FROM); below it one process does it all: a child costs an "
        "interpreter (about 0.5 s of CPU and 66 MB) that a small org's tail (a fraction of a second) does not "
        "repay. An empty store (a first sync: its size unknown) is split; 0 = always split",
    )
    secret_blocks: dict[str, str] = Field(
        default_factory=dict,
        description="Which credential came from which Prefect Secret block ('jira.api_token' -> 'jira-token'); "
        "filled in from the ..._BLOCK settings",
    )

    @field_validator("pull_in_child")
    @classmethod
    def _known_sources(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        unknown = [name for name in names if name not in BUDGET_APIS]
        if unknown:
            expected = ", ".join(BUDGET_APIS)
            raise ValueError(f"unknown source {unknown[0]!r}; expected a comma-separated list of {expected}")
        if len(set(names)) != len(names):
            raise ValueError("a source is named twice")
        return ",".join(names)

    @property
    def child_pulls(self) -> tuple[str, ...]:
        """``pull_in_child`` as a tuple of sources: the first for the first child, and so on."""
        return tuple(name for name in self.pull_in_child.split(",") if name)

    @model_validator(mode="before")
    @classmethod
    def _credentials_from_blocks(cls, data: Any) -> Any:
        """``<credential>_block`` settings replaced by the block's value; plain credentials wrapped in
        SecretStr before validation, so that no error message can show them."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        blocks = dict(data.get("secret_blocks") or {})
        for section, names in SECRET_SETTINGS.items():
            raw = data.get(section)
            if not isinstance(raw, dict):
                continue
            raw = dict(raw)
            for name in names:
                block = raw.pop(name + BLOCK_SUFFIX, None)
                if isinstance(raw.get(name), str):
                    raw[name] = SecretStr(raw[name])
                if block in (None, ""):
                    continue
                if name == "service_account_json":
                    target = "service_account_file"
                else:
                    target = name
                if raw.get(target) not in (None, ""):
                    raise SecretBlockError(
                        section, name, str(block), f"{env_name(section, target)} is set too; set one of the two"
                    )
                raw[target] = _from_block(section, name, str(block))
                blocks[f"{section}.{name}"] = str(block)
            data[section] = raw
        data["secret_blocks"] = blocks
        return data

    def with_sandbox(self, info: dict[str, Any]) -> AccordSettings:
        """These settings pointed at a sandbox described by ``info`` (``accord sandbox up`` output)."""
        sf, jira, gc = info["salesforce"], info["jira"], info["google_calendar"]
        ca = info.get("ca_cert")
        return self.model_copy(
            update={
                "salesforce": SalesforceSettings(
                    # OAuth password flow: a session that expires is renewed by logging in again.
                    auth="oauth_password",
                    login_url=sf["instance_url"],
                    instance_url=sf["instance_url"],
                    session_id=SecretStr(sf["session_id"]),
                    username=sf["username"],
                    password=SecretStr(sf["password"]),
                    security_token=SecretStr(sf["security_token"]),
                    consumer_key=sf["consumer_key"],
                    consumer_secret=SecretStr(sf["consumer_secret"]),
                    ca_cert=ca,
                ),
                "jira": JiraSettings(
                    server=jira["server"],
                    email=jira["email"],
                    api_token=SecretStr(jira["api_token"]),
                    ca_cert=ca,
                ),
                "google_calendar": GoogleCalendarSettings(
                    api_endpoint=gc["api_endpoint"],
                    token=SecretStr(gc["token"]),
                    refresh_token=SecretStr(gc["refresh_token"]) if gc.get("refresh_token") else None,
                    token_uri=gc.get("token_uri"),
                    client_id=gc.get("client_id"),
                    client_secret=SecretStr(gc["client_secret"]) if gc.get("client_secret") else None,
                    ca_cert=ca,
                ),
                "secret_blocks": {},
            }
        )


def load_settings() -> AccordSettings:
    """Settings from the environment (credentials from Prefect Secret blocks where a ``..._BLOCK``
    setting names one); API settings from the sandbox when ACCORD_SANDBOX_CONTROL is set."""
    settings = AccordSettings()
    if settings.sandbox_control:
        from sandbox.client import SandboxControl

        settings = settings.with_sandbox(SandboxControl(settings.sandbox_control).info())
    return settings
