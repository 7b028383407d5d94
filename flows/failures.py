"""Why a run failed, in words an ops person can act on.

``explain`` turns what stopped a sync or a push (a typed connector error, a mapping error, missing or
invalid settings, a Secret block that cannot be read, the request budget, the store) into an
``OpsMessage``: what failed, the likely cause, the exact setting, environment variable, mapping key
(with its line) or Salesforce field to check, and what is kept so that a re-run continues.
``explain_failed_writes`` does the same for writes the targets refused, by record key.

The flows use them three ways: the exception that fails the run (Prefect shows its message as the
flow run's state message), a markdown artifact ``accord-failure`` with one row per failure, and the
run's log. Ids, keys, setting names, field names and counts only: never a credential, never a
response body, never contact data. Connector errors are already written that way
(``connectors.errors``); anything unrecognised is named by its type alone, and the traceback stays
in the log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import ValidationError

from accord.settings import BLOCK_SUFFIX, AccordSettings, SecretBlockError, env_name
from connectors.errors import (
    AuthError,
    ConfigError,
    ConnectorError,
    PermanentError,
    QuotaExhaustedError,
    RateLimitedError,
    TransientError,
)
from engagement.mapping import Mapping, MappingError
from flows.engine import UnifyFailedError

SOURCES = ("salesforce", "jira", "google_calendar")
SOURCE_NAMES = {"salesforce": "Salesforce", "jira": "Jira", "google_calendar": "Google Calendar"}
SALESFORCE_STREAMS = ("accounts", "contacts", "opportunities", "contact_roles", "users", "reminders")
Stage = Literal["sync", "push"]
KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class OpsMessage:
    where: str  # "salesforce", "jira", "google_calendar", "settings", "mapping", "store", "budget", "run"
    what: str  # what failed, in a sentence
    cause: str  # the likely cause
    check: tuple[str, ...]  # exactly what to look at: env vars, mapping keys (file:line), fields
    kept: str  # what is kept, so that a re-run continues
    detail: str = ""  # the connector's own message (already free of secrets and bodies)

    def text(self) -> str:
        """One paragraph: the failure message of the run and its log line."""
        parts = [f"{self.what}.", f"Likely cause: {self.cause}."]
        if self.check:
            parts.append("Check: " + "; ".join(self.check) + ".")
        parts.append(self.kept)
        if self.detail:
            parts.append(f"({self.detail})")
        return " ".join(parts)


@dataclass
class FailureContext:
    """What the explanation may refer to: the settings and mapping the run loaded, if it got that far."""

    stage: Stage = "sync"
    settings: AccordSettings | None = None
    mapping: Mapping | None = None
    mapping_path: str | None = None
    _lines: dict[KeyPath, int] | None = field(default=None, repr=False)

    def line(self, key: KeyPath) -> int | None:
        """The line of ``key`` in the mapping file, when the file can be read."""
        if self._lines is None:
            self._lines = {}
            if self.mapping_path:
                try:
                    import yaml

                    from engagement.mapping import _line_index

                    node = yaml.compose(Path(self.mapping_path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
                    if node is not None:
                        self._lines = _line_index(node)
                except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
                    pass
        return self._lines.get(key)

    def mapping_key(self, key: KeyPath, value: str | None = None) -> str:
        """``salesforce.opportunities.fields.jira_project`` (mappings/acme.yaml line 24) = Jira_Key__c"""
        dotted = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in key).lstrip(".")
        line = self.line(key)
        where = (
            f" ({self.mapping_path} line {line})"
            if line
            else (f" (in {self.mapping_path})" if self.mapping_path else "")
        )
        return f"mapping key `{dotted}`{where}" + (f" = `{value}`" if value else "")

    def secret_setting(self, section: str, name: str) -> str:
        """The variable that holds a credential: the ..._BLOCK variable and its block when one is used."""
        settings = self.settings
        block = settings.secret_blocks.get(f"{section}.{name}") if settings else None
        if block:
            return f"the Prefect Secret block `{block}` ({env_name(section, name + BLOCK_SUFFIX)})"
        return f"`{env_name(section, name)}` or `{env_name(section, name + BLOCK_SUFFIX)}`"

    def kept(self, source: str | None) -> str:
        if self.stage == "push":
            return (
                "Kept: every write not made stays queued in the outbox (`accord status` lists failed ones) and the "
                "next push retries it; writes that landed are marked and never repeated."
            )
        if source in SOURCES:
            return (
                f"Kept: {SOURCE_NAMES[source]}'s cursors stay at its last stored page, so the next sync continues "
                "from there; the sources that could be pulled were stored and the engagements recomputed."
            )
        return "Kept: nothing was read or written; cursors, engagements and the outbox are as the last run left them."


# -- the explanations -----------------------------------------------------------------------------------
def explain(exc: BaseException, context: FailureContext, *, source: str | None = None) -> OpsMessage:
    """The ops message for ``exc``, raised while the run worked on ``source`` (when known)."""
    if isinstance(exc, ConnectorError):
        return _connector(exc, context)
    if isinstance(exc, SecretBlockError):
        return OpsMessage(
            "settings",
            f"The credential `{exc.section}.{exc.name}` could not be read from the Prefect Secret block `{exc.block}`",
            exc.problem,
            (f"`{exc.variable}` (now `{exc.block}`)", "the Secret blocks of this Prefect workspace (UI: Blocks)"),
            context.kept(None),
        )
    if isinstance(exc, UnifyFailedError):
        return OpsMessage(
            "run",
            f"Recomputing the engagements failed in a child process: {exc}",
            "the child ran out of memory or was killed, or a failure Accord does not recognise (possibly a bug)",
            (
                "the child's traceback in this flow run's logs",
                "`ACCORD_UNIFY_PROCESSES=1` recomputes in the sync's process alone",
            ),
            "Kept: the pulled records and their cursors are stored, and the engagements of the other partitions; "
            "the next sync recomputes every engagement.",
        )
    if isinstance(exc, MappingError):
        problems = [f"line {line}: {message}" if line else message for line, message in exc.problems[:5]]
        more = f" and {len(exc.problems) - 5} more" if len(exc.problems) > 5 else ""
        return OpsMessage(
            "mapping",
            f"The mapping {exc.path} is not valid ({len(exc.problems)} problem{'s' * (len(exc.problems) != 1)})",
            "an edit of the mapping file (`accord mappings validate` lists every problem with its line)",
            (*problems[:-1], problems[-1] + more) if problems else (f"`ACCORD_MAPPING` (now {exc.path})",),
            context.kept(None),
        )
    if isinstance(exc, ValidationError):
        return _settings_invalid(exc, context)
    missing = _missing_settings(exc, source)
    if missing is not None:
        return _no_settings(missing, context)
    budget = _budget(exc, context)
    if budget is not None:
        return budget
    store = _store(exc, context)
    if store is not None:
        return store
    where = source or "run"
    return OpsMessage(
        where,
        f"{SOURCE_NAMES.get(where, 'The ' + context.stage)} failed with an unexpected {type(exc).__name__}",
        "a failure Accord does not recognise (possibly a bug in Accord)",
        ("the traceback in this flow run's logs",),
        context.kept(source),
    )


def _connector(exc: ConnectorError, context: FailureContext) -> OpsMessage:
    source = exc.source
    name = SOURCE_NAMES.get(source, source)
    detail = str(exc)
    kept = context.kept(source)
    if isinstance(exc, AuthError):
        if _is_permission(exc):
            return OpsMessage(
                source,
                f"{name} refused a request: the connection's user lacks a permission",
                "the integration user's profile, permission set, project role or sharing changed",
                _permission_checks(source, context),
                kept,
                detail,
            )
        return OpsMessage(
            source, f"{name} did not accept Accord's credentials", *_credential_cause(exc, context), kept, detail
        )
    if isinstance(exc, QuotaExhaustedError):
        return OpsMessage(
            source,
            f"{name}'s API quota is used up",
            "the daily (or long-window) request allowance is spent; retrying now cannot help",
            _quota_checks(source),
            kept,
            detail,
        )
    if isinstance(exc, RateLimitedError):
        return OpsMessage(
            source,
            f"{name} kept throttling Accord's requests (retries exhausted)",
            "other integrations share the allowance, or Accord sends too fast for it",
            _pace_checks(source, context),
            kept,
            detail,
        )
    if isinstance(exc, TransientError):
        return _transient(exc, context)
    if isinstance(exc, ConfigError):
        return _config(exc, context)
    if isinstance(exc, PermanentError) and ("page token" in detail or "query locator" in detail):
        return OpsMessage(
            source,
            f"{name} forgot a paging position during a long read",
            "the read took longer than the API keeps a result set; nothing needs changing unless it repeats",
            (f"`{env_name(source, 'concurrency')}` (fewer parallel reads finish each one sooner)",),
            kept,
            detail,
        )
    return OpsMessage(source, f"{name} refused a request", "see the detail", (), kept, detail)


def _is_permission(exc: AuthError) -> bool:
    """403: the credentials are fine, the user may not do this (401 and failed logins are credentials)."""
    return exc.status == 403


def _credential_cause(exc: AuthError, context: FailureContext) -> tuple[str, tuple[str, ...]]:
    source, text = exc.source, str(exc)
    settings = getattr(context.settings, source, None) if context.settings else None
    sandbox = (
        ("`ACCORD_SANDBOX_CONTROL`: these credentials come from that sandbox, which must be the running one",)
        if context.settings and context.settings.sandbox_control
        else ()
    )
    secret = context.secret_setting
    if source == "salesforce":
        auth = getattr(settings, "auth", None)
        if "session expired" in text and auth == "session":
            return (
                "a session id expires and Accord cannot renew it",
                (
                    f"`{env_name('salesforce', 'auth')}` (now `session`): use `client_credentials` or `oauth_password` "
                    "so Accord logs in again by itself",
                    secret("salesforce", "session_id"),
                    *sandbox,
                ),
            )
        checks: list[str] = [f"`{env_name('salesforce', 'auth')}` (now `{auth or 'unset'}`)"]
        if auth in ("password", "oauth_password"):
            checks += [f"`{env_name('salesforce', 'username')}`", secret("salesforce", "password")]
            checks.append(secret("salesforce", "security_token") + " (reset after a password change)")
        if auth in ("oauth_password", "client_credentials"):
            checks += [f"`{env_name('salesforce', 'consumer_key')}`", secret("salesforce", "consumer_secret")]
        checks.append(f"`{env_name('salesforce', 'domain')}` (login, test or your My Domain)")
        if auth == "client_credentials":
            checks.append("the connected app's Client Credentials Flow and its run-as user")
        cause = (
            "the password, security token or connected app secret was changed, expired or revoked"
            if "login failed" in text
            else "the session ended and logging in again failed"
        )
        return cause, (*checks, *sandbox)
    if source == "jira":
        return (
            "the API token was revoked or expired, or belongs to another account",
            (
                f"`{env_name('jira', 'email')}` (the token's account)",
                secret("jira", "api_token") + " (id.atlassian.com → Security → API tokens)",
                *sandbox,
            ),
        )
    checks = []
    if getattr(settings, "service_account_file", None):
        block = context.settings.secret_blocks.get("google_calendar.service_account_json") if context.settings else None
        key_file = (
            f"the Prefect Secret block `{block}` ({env_name('google_calendar', 'service_account_json' + BLOCK_SUFFIX)})"
            if block
            else f"`{env_name('google_calendar', 'service_account_file')}` (the service account's JSON key)"
        )
        checks += [
            key_file,
            f"`{env_name('google_calendar', 'subject')}` and the domain-wide delegation of the calendar scopes "
            "in the Admin console",
        ]
    elif getattr(settings, "refresh_token", None):
        checks += [
            secret("google_calendar", "refresh_token"),
            f"`{env_name('google_calendar', 'client_id')}`",
            secret("google_calendar", "client_secret"),
            f"`{env_name('google_calendar', 'token_uri')}`",
        ]
    else:
        checks += [
            secret("google_calendar", "token") + ": an access token alone expires within the hour",
            f"`{env_name('google_calendar', 'refresh_token')}` with `..__CLIENT_ID` and `..__CLIENT_SECRET`, "
            f"or `{env_name('google_calendar', 'service_account_file')}`, so that Accord renews it",
        ]
    cause = "the access token expired and could not be renewed, or the refresh token or key was revoked"
    return cause, (*checks, *sandbox)


def _permission_checks(source: str, context: FailureContext) -> tuple[str, ...]:
    mapping = context.mapping
    if source == "salesforce":
        objects = sorted(
            {stream.object for s in SALESFORCE_STREAMS if (stream := getattr(mapping.salesforce, s, None)) is not None}
            if mapping
            else set()
        )
        reads = f"read on {', '.join(objects)}" if objects else "read on the mapped objects"
        return (
            f"the integration user's profile or permission set (`{env_name('salesforce', 'username')}`, or the "
            f"connected app's run-as user): API Enabled, {reads}, field-level security on the mapped fields",
            "for the push: edit on the Opportunity status fields, create and edit on Task",
        )
    if source == "jira":
        push = ", Add comments and Edit issues (entity properties) for the push" if context.stage == "push" else ""
        return (f"the user of `{env_name('jira', 'email')}`: Browse projects on every engagement project{push}",)
    return (
        "that each calendar is shared with the connector's account (or delegated: "
        f"`{env_name('google_calendar', 'delegate_per_calendar')}`)",
        "the scopes calendar.readonly and calendar.events granted to the OAuth client or service account",
    )


def _quota_checks(source: str) -> tuple[str, ...]:
    if source == "salesforce":
        return (
            "Setup → Company Information → API Requests, Last 24 Hours (other integrations count too)",
            "a less frequent schedule for accord-sync in prefect.yaml, or a larger org allowance",
            "`ACCORD_BUDGET__SALESFORCE_PER_SECOND` to pace Accord's share",
        )
    return (
        "the API's quota page in the vendor's console",
        f"`ACCORD_BUDGET__{source.upper()}_PER_SECOND` to pace Accord's share",
    )


def _pace_checks(source: str, context: FailureContext) -> tuple[str, ...]:
    settings = getattr(context.settings, source, None) if context.settings else None
    retry = getattr(settings, "retry", None)
    attempts = f" (now {retry.max_attempts})" if retry else ""
    wait = f" (now {retry.max_wait_s:g} s)" if retry else ""
    concurrency = f" (now {settings.concurrency})" if settings is not None and hasattr(settings, "concurrency") else ""
    return (
        f"`ACCORD_BUDGET__{source.upper()}_PER_SECOND`: a request budget shared by every worker",
        f"`{env_name(source, 'concurrency')}`{concurrency}",
        f"`{env_name(source, 'retry', 'max_attempts')}`{attempts} and "
        f"`{env_name(source, 'retry', 'max_wait_s')}`{wait}",
    )


def _origin(url: str | None) -> str:
    if not url:
        return ""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}" if parts.hostname else ""


def _endpoint_checks(source: str, context: FailureContext) -> tuple[str, ...]:
    settings = getattr(context.settings, source, None) if context.settings else None
    if source == "salesforce":
        origin = _origin(getattr(settings, "instance_url", None) or getattr(settings, "login_url", None))
        return (
            f"`{env_name('salesforce', 'instance_url')}` / `{env_name('salesforce', 'login_url')}` / "
            f"`{env_name('salesforce', 'domain')}`" + (f" (now {origin})" if origin else ""),
        )
    if source == "jira":
        origin = _origin(getattr(settings, "server", None))
        return (f"`{env_name('jira', 'server')}`" + (f" (now {origin})" if origin else ""),)
    origin = _origin(getattr(settings, "api_endpoint", None)) or "https://www.googleapis.com"
    return (f"`{env_name('google_calendar', 'api_endpoint')}` (now {origin})",)


def _transient(exc: TransientError, context: FailureContext) -> OpsMessage:
    source, text = exc.source, str(exc)
    name = SOURCE_NAMES.get(source, source)
    network = any(w in text for w in ("ConnectionError", "Timeout", "unreachable", "OSError", "talking to"))
    if network:
        return OpsMessage(
            source,
            f"{name} could not be reached (retries exhausted)",
            "the network, a proxy or firewall, DNS, or a wrong URL",
            (*_endpoint_checks(source, context), "that the worker's machine can open that address (proxy, firewall)"),
            context.kept(source),
            text,
        )
    return OpsMessage(
        source,
        f"{name} kept failing with server errors (retries exhausted)",
        f"an outage or degradation at {name}; nothing to change on Accord's side if it passes",
        (f"{name}'s status page", *_pace_checks(source, context)[2:]),
        context.kept(source),
        text,
    )


# -- configuration: which mapping key, which field ----------------------------------------------------------
NO_SUCH_COLUMN = re.compile(r"No such column '([A-Za-z0-9_.]+)' on (?:entity '|sobject of type )([A-Za-z0-9_]+)")
SALESFORCE_HINT = re.compile(r" If you are attempting to use a custom (?:field|object).*?appropriate names\.")
NOT_SUPPORTED = re.compile(r"sObject type '([A-Za-z0-9_]+)' is not supported")
JIRA_NO_FIELD = re.compile(r"Field '([^'\n]{1,120})' does not exist")
JIRA_CF = re.compile(r"^(?:cf\[(\d+)\]|customfield_(\d+))$")
CALENDAR_OF = re.compile(r"calendar (\S+?):")
WRITE_FIELDS = re.compile(r"[A-Z_]+ on ([A-Za-z0-9_.]+(?:, ?[A-Za-z0-9_.]+)*)")


def salesforce_field_keys(mapping: Mapping, column: str, entity: str | None) -> list[tuple[KeyPath, str]]:
    """Every mapping key naming Salesforce field ``column`` (of object ``entity``, when known)."""
    found: list[tuple[KeyPath, str]] = []
    for name in SALESFORCE_STREAMS:
        stream = getattr(mapping.salesforce, name, None)
        if stream is None:
            continue
        for attribute, path in stream.fields.items():
            leaf_matches = path == column or path.rsplit(".", 1)[-1] == column
            if leaf_matches and (entity is None or stream.object == entity or "." in path):
                found.append((("salesforce", name, "fields", attribute), path))
        for index, condition in enumerate(stream.filters):
            if condition.field.rsplit(".", 1)[-1] == column and (entity is None or stream.object == entity):
                found.append((("salesforce", name, "filters", index, "field"), condition.field))
    push = mapping.push.salesforce
    if entity in (None, "Opportunity"):
        found += [(("push", "salesforce", "status_fields", k), v) for k, v in push.status_fields.items() if v == column]
    if entity in (None, "Task") and push.task_external_id == column:
        found.append((("push", "salesforce", "task_external_id"), column))
    return found


def _config(exc: ConfigError, context: FailureContext) -> OpsMessage:
    source, text = exc.source, str(exc)
    name = SOURCE_NAMES.get(source, source)
    kept = context.kept(source)
    mapping = context.mapping
    if "ca_cert" in text or "TLS" in text:
        return OpsMessage(
            source,
            f"{name}'s TLS certificate is not trusted",
            "a private CA or an intercepting proxy",
            (f"`{env_name(source, 'ca_cert')}` (a CA bundle file)", *_endpoint_checks(source, context)),
            kept,
            text,
        )
    if source == "salesforce":
        text = SALESFORCE_HINT.sub("", text)
        column = NO_SUCH_COLUMN.search(text)
        if column:
            field_name, entity = column.group(1), column.group(2)
            keys = salesforce_field_keys(mapping, field_name, entity) if mapping else []
            checks = [context.mapping_key(k, v) for k, v in keys] or [
                "the mapping's `salesforce` and `push.salesforce` fields"
            ]
            checks.append(
                f"Salesforce Setup → Object Manager → {entity} → Fields: create `{field_name}` (API name) or correct "
                "the mapping; and field-level security: the integration user must see it"
            )
            return OpsMessage(
                source,
                f"Salesforce has no field `{entity}.{field_name}` that the mapping names",
                "the field does not exist in this org, has another API name (custom fields end in __c), or is "
                "hidden from the integration user",
                tuple(checks),
                kept,
                text,
            )
        sobject = NOT_SUPPORTED.search(text)
        if sobject:
            object_name = sobject.group(1)
            keys = [
                (("salesforce", s, "object"), object_name)
                for s in SALESFORCE_STREAMS
                if mapping
                and getattr(mapping.salesforce, s, None)
                and getattr(mapping.salesforce, s).object == object_name
            ]
            return OpsMessage(
                source,
                f"Salesforce has no object `{object_name}` that the mapping names",
                "a misspelt object API name (custom objects end in __c), or the object is hidden from the "
                "integration user",
                (*[context.mapping_key(k, v) for k, v in keys], f"Setup → Object Manager: `{object_name}`"),
                kept,
                text,
            )
        return OpsMessage(
            source,
            "Salesforce rejected a query built from the mapping",
            "a mapping value that does not fit this org",
            ("the mapping's `salesforce` section (`accord mappings validate`)",),
            kept,
            text,
        )
    if source == "jira":
        if exc.status == 400:
            fields = _jira_unknown_fields(exc)
            checks = []
            for reference in fields:
                keys = _jira_field_keys(mapping, reference) if mapping else []
                checks += [context.mapping_key(k, v) for k, v in keys]
                checks.append(
                    f"that `{reference}` exists in Jira (Settings → Issues → Custom fields; GET /rest/api/3/field)"
                )
            if fields:
                return OpsMessage(
                    source,
                    f"Jira does not know the field {', '.join(f'`{f}`' for f in fields)} that the query names",
                    "a custom field id from another site, a deleted field, or one the API user cannot see",
                    tuple(checks),
                    kept,
                    text,
                )
            return OpsMessage(
                source,
                "Jira rejected a search built from the mapping (400)",
                "a project key, status or field in the mapping that this Jira site does not have",
                (
                    "the mapping's `jira` section: `jira.projects`, `jira.extra_fields`",
                    "the Jira project keys in Salesforce",
                ),
                kept,
                text,
            )
        return OpsMessage(
            source,
            "Jira answered that the API is not there",
            "a wrong server URL, a Jira Server or Data Center site (Accord needs Jira Cloud), or an unsupported "
            "API version",
            (*_endpoint_checks(source, context), f"`{env_name('jira', 'rest_api_version')}`"),
            kept,
            text,
        )
    if source == "google_calendar" and exc.status == 404:
        found = CALENDAR_OF.search(text)
        calendar = found.group(1) if found else None
        checks = []
        if (
            mapping
            and mapping.google_calendar.calendars == "listed"
            and calendar in mapping.google_calendar.calendar_ids
        ):
            index = mapping.google_calendar.calendar_ids.index(calendar)
            checks.append(context.mapping_key(("google_calendar", "calendar_ids", index)))
        checks.append(
            "that the calendar is shared with the connector's account (or delegated with "
            f"`{env_name('google_calendar', 'delegate_per_calendar')}`)"
        )
        return OpsMessage(
            source,
            "A calendar from the mapping was not found",
            "a misspelt or deleted calendar id, or the calendar is not shared with Accord's account",
            tuple(checks),
            kept,
            text,
        )
    return OpsMessage(source, f"{name} refused Accord's configuration", "see the detail", (), kept, text)


def _jira_unknown_fields(exc: BaseException) -> list[str]:
    """Field names from Jira's "Field 'x' does not exist" messages, read from the library's error in
    the exception's context. Only the quoted field name is taken: the rest of a body may name people."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        body = getattr(current, "text", None)
        if isinstance(body, str) and body:
            try:
                messages = json.loads(body).get("errorMessages") or []
            except (ValueError, AttributeError):
                messages = [body]
            return sorted(
                {m.group(1) for text in messages if isinstance(text, str) for m in JIRA_NO_FIELD.finditer(text)}
            )
        current = current.__cause__ or current.__context__
    return []


def _jira_field_keys(mapping: Mapping, reference: str) -> list[tuple[KeyPath, str]]:
    number = JIRA_CF.match(reference)
    wanted = {reference}
    if number:
        digits = number.group(1) or number.group(2)
        wanted = {f"customfield_{digits}", f"cf[{digits}]"}
    return [
        (("jira", "extra_fields", attribute), fid)
        for attribute, fid in mapping.jira.extra_fields.items()
        if fid in wanted
    ]


# -- settings, store, budget -----------------------------------------------------------------------------
SOURCE_VARIABLES = {
    "salesforce": "ACCORD_SALESFORCE__AUTH with its credentials (see README → Settings)",
    "jira": "ACCORD_JIRA__SERVER, ACCORD_JIRA__EMAIL, ACCORD_JIRA__API_TOKEN (or ..._BLOCK)",
    "google_calendar": "ACCORD_GOOGLE_CALENDAR__REFRESH_TOKEN with ..__CLIENT_ID/..__CLIENT_SECRET, or "
    "..__SERVICE_ACCOUNT_FILE",
}


def _missing_settings(exc: BaseException, source: str | None) -> str | None:
    """The source whose connection settings are missing (flows.engine.MissingSettingsError, or the
    push's "no connection settings to write with"), else None."""
    text = str(exc)
    if not isinstance(exc, ValueError) or "no connection settings" not in text:
        return None
    head = text.split(":", 1)[0].strip()
    return head if head in SOURCES else source


def _no_settings(source: str, context: FailureContext) -> OpsMessage:
    return OpsMessage(
        source,
        f"{SOURCE_NAMES[source]} has no connection settings",
        "the worker's environment lacks them (a flow run gets the worker's environment)",
        (f"`{SOURCE_VARIABLES[source]}`", "or `ACCORD_SANDBOX_CONTROL` for the sandbox"),
        context.kept(source),
    )


def _settings_invalid(exc: ValidationError, context: FailureContext) -> OpsMessage:
    checks: list[str] = []
    for error in exc.errors(include_input=False)[:8]:
        loc = [str(p) for p in error["loc"] if not isinstance(p, int)]
        message = str(error["msg"]).removeprefix("Value error, ")
        needs = re.search(r"needs ([a-z_, +()/]+)", message)
        if needs and loc:
            names = re.findall(r"[a-z_]+", needs.group(1))
            variables = [env_name(loc[0], n) for n in names if n not in ("or", "and", "client")]
            checks.append(f"{', '.join(f'`{v}`' for v in variables)}: {message}")
        elif loc:
            checks.append(f"`{env_name(*loc)}`: {message}")
        else:
            checks.append(message)
    return OpsMessage(
        "settings",
        f"Accord's settings are not valid ({exc.error_count()} problem{'s' * (exc.error_count() != 1)})",
        "a missing, misspelt or malformed ACCORD_ environment variable of the worker",
        tuple(checks),
        context.kept(None),
    )


def _store(exc: BaseException, context: FailureContext) -> OpsMessage | None:
    try:
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
    except ImportError:  # pragma: no cover - SQLAlchemy is a dependency
        return None
    if not isinstance(exc, OperationalError | ArgumentError | NoSuchModuleError):
        return None
    return OpsMessage(
        "store",
        "Accord's store could not be used",
        "the database is unreachable, full or locked, or its URL or credentials are wrong",
        ("`ACCORD_DATABASE_URL` (not shown here: it may hold a password)", "that the database server is up"),
        context.kept(None)
        if context.stage == "push"
        else "Kept: cursors are committed with the pages they cover, so what was stored is consistent and the "
        "next run continues from there.",
        type(exc).__name__,
    )


def _budget(exc: BaseException, context: FailureContext) -> OpsMessage | None:
    from flows.budget import BudgetUnavailableError

    if not isinstance(exc, BudgetUnavailableError):
        return None
    return OpsMessage(
        "budget",
        f"No slot of {SOURCE_NAMES.get(exc.api, exc.api)}'s request budget (Prefect limit `{exc.limit}`) could be had",
        "the Prefect API is unreachable from the worker, the limit was deleted while the run used it, or other "
        "runs hold the budget for longer than the wait allows",
        (
            f"the global concurrency limit `{exc.limit}` (UI: Concurrency → Global)",
            f"`ACCORD_BUDGET__{exc.api.upper()}_PER_SECOND`, `ACCORD_BUDGET__WAIT_TIMEOUT_S`",
            "`PREFECT_API_URL` of the worker",
        ),
        context.kept(exc.api),
        exc.problem,
    )


# -- failed writes ---------------------------------------------------------------------------------------
SALESFORCE_CODES = {
    "FIELD_CUSTOM_VALIDATION_EXCEPTION": "a validation rule in the org refused the record",
    "INVALID_FIELD": "a field the mapping's push section names does not exist or is hidden",
    "INVALID_FIELD_FOR_INSERT_UPDATE": "the integration user cannot edit a field (field-level security)",
    "INSUFFICIENT_ACCESS_OR_READONLY": "the integration user cannot edit the record",
    "INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY": "the integration user cannot see the related record",
    "ENTITY_IS_DELETED": "the record was deleted in Salesforce",
    "DUPLICATE_VALUE": "another record already holds the key (Accord_Key__c must be unique to Accord)",
    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST": "a picklist value is missing (Accord_Health__c needs Green, Amber, Red)",
    "STRING_TOO_LONG": "a text field is shorter than Accord's text (see README: field types)",
}


@dataclass(frozen=True)
class FailedWrite:
    target: str
    key: str
    error: str
    retriable: bool | None = None  # None: not known


def explain_failed_writes(
    target: str,
    writes: Sequence[FailedWrite],
    context: FailureContext,
    *,
    total: int | None = None,
    final: int | None = None,
) -> OpsMessage:
    """One message for the writes to ``target`` that failed this run (one row each in the artifact).
    ``writes`` may be the first of them only: ``total`` says how many failed, ``final`` how many of
    those the target refused for good (both counted from ``writes`` when not given)."""
    name = SOURCE_NAMES.get(target, target)
    count = len(writes) if total is None else total
    refused = sum(1 for w in writes if w.retriable is False) if final is None else final
    retry = count - refused
    codes = sorted({w.error.split(":", 1)[0].split(" ", 1)[0] for w in writes if w.error})
    causes = [SALESFORCE_CODES[c] for c in codes if c in SALESFORCE_CODES] if target == "salesforce" else []
    checks: list[str] = []
    if target == "salesforce":
        fields: set[tuple[str, str | None]] = set()
        for w in writes:
            column = NO_SUCH_COLUMN.search(w.error)
            if column:
                fields.add((column.group(1), column.group(2)))
                continue
            named = WRITE_FIELDS.match(w.error)  # "INVALID_FIELD_FOR_INSERT_UPDATE on Accord_Stage__c: …"
            if named:
                fields.update((f.strip(), None) for f in named.group(1).split(","))
        for field_name, entity in sorted(fields, key=lambda f: (f[0], f[1] or "")):
            keys = salesforce_field_keys(context.mapping, field_name, entity) if context.mapping else []
            checks += [context.mapping_key(k, v) for k, v in keys]
            where = f"{entity}.{field_name}" if entity else field_name
            checks.append(
                f"the Salesforce field `{where}`: it exists (Setup → Object Manager), and the integration user may "
                "edit it (field-level security)"
            )
    if not checks:
        checks.append("the error of each record in the table below (`accord status` lists them too)")
    kept = (
        f"Kept: all {count} stay in the outbox"
        + (f"; {retry} will be retried by the next push" if retry else "")
        + (
            f"; {refused} were refused by {name} and are not retried automatically: they stay listed as failed "
            "(`accord status`) until the cause is fixed"
            if refused
            else ""
        )
        + ". Writes that landed are marked and never repeated."
    )
    return OpsMessage(
        f"push → {target}",
        f"{count} write{'s' * (count != 1)} to {name} failed",
        "; ".join(causes) or "the target refused these records (see each error)",
        tuple(checks),
        kept,
        ", ".join(codes[:6]),
    )


# -- output: artifact, message, log ------------------------------------------------------------------------
def _cell(text: str) -> str:
    out = text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(out.split())


def failure_markdown(
    title: str, messages: Sequence[OpsMessage], writes: Iterable[FailedWrite] = (), limit: int = 50
) -> str:
    lines = [
        f"# {title}",
        "",
        "| where | what failed | likely cause | check | kept for the next run |",
        "|---|---|---|---|---|",
    ]
    for m in messages:
        what = m.what + (f" ({m.detail})" if m.detail else "")
        check = "<br>".join(_cell(c) for c in m.check) or "—"
        lines.append(f"| {_cell(m.where)} | {_cell(what)} | {_cell(m.cause)} | {check} | {_cell(m.kept)} |")
    rows = list(writes)
    if rows:
        lines += ["", "## Failed writes", "", "| target | record key | error | next push |", "|---|---|---|---|"]
        for w in rows[:limit]:
            again = "retries" if w.retriable is not False else "refused: fix the cause"
            lines.append(f"| {_cell(w.target)} | `{_cell(w.key)}` | {_cell(w.error) or '—'} | {again} |")
        if len(rows) > limit:
            lines.append(f"| … | {len(rows) - limit} more | | |")
    return "\n".join(lines)


def failure_text(stage: Stage, messages: Sequence[OpsMessage]) -> str:
    """The run's failure message (Prefect shows it as the flow run's state message)."""
    if len(messages) == 1:
        return f"Accord {stage} failed: {messages[0].where}: {messages[0].text()}"
    listed = " ".join(f"[{i}] {m.where}: {m.text()}" for i, m in enumerate(messages, 1))
    return f"Accord {stage} failed ({len(messages)} problems, see the accord-failure artifact): {listed}"


def publish(stage: Stage, messages: Sequence[OpsMessage], logger: Any, writes: Iterable[FailedWrite] = ()) -> str:
    """Log each message, create the ``accord-failure`` artifact; returns the run's failure message."""
    from prefect.artifacts import create_markdown_artifact

    for m in messages:
        logger.error("%s: %s", m.where, m.text())
    create_markdown_artifact(
        key="accord-failure",
        markdown=failure_markdown(f"Accord {stage} failed", messages, writes),
        description=f"Why this {stage} failed and what to check",
    )
    return failure_text(stage, messages)
