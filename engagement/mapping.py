"""The mapping: how an org's CRM, Jira and calendars link up, and the rules' thresholds.

Ops teams edit it as YAML (``mappings/*.yaml``). It is loaded into strict pydantic models: unknown
keys, wrong types and impossible values are errors that name the file, the line and what was
expected (``MappingError``), before any API is called. ``mapping_json_schema()`` gives editors a
JSON Schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SUPPORTED_VERSIONS = (1,)

SALESFORCE_NAME = r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*$"
JIRA_FIELD_ID = r"^[A-Za-z][A-Za-z0-9_]*$"
EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
DOMAIN = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$"
SalesforceName = Annotated[str, Field(pattern=SALESFORCE_NAME)]
JiraFieldId = Annotated[str, Field(pattern=JIRA_FIELD_ID)]
Email = Annotated[str, Field(pattern=EMAIL)]
Domain = Annotated[str, Field(pattern=DOMAIN)]
LifecycleStage = Literal["initiation", "planning", "execution", "closure"]
Health = Literal["green", "amber", "red"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- Salesforce ---------------------------------------------------------------------------------------
class FieldFilter(Strict):
    """A condition on a field, turned into SOQL by the connector with every value escaped."""

    field: SalesforceName
    op: Literal["=", "!=", "<", "<=", ">", ">=", "in", "not in", "like"] = "="
    value: str | int | float | bool | list[str | int | float] | None = None

    @model_validator(mode="after")
    def _list_for_in(self) -> FieldFilter:
        if self.op in ("in", "not in") and not isinstance(self.value, list):
            raise ValueError(f"op {self.op!r} needs a list as value")
        if self.op not in ("in", "not in") and isinstance(self.value, list):
            raise ValueError(f"op {self.op!r} needs a single value, not a list")
        return self


class SalesforceStream(Strict):
    """One Salesforce object read incrementally: which object, which fields, which rows."""

    object: SalesforceName
    fields: dict[str, SalesforceName] = Field(
        description="Accord attribute -> Salesforce field (dotted parent paths allowed, e.g. Account.Name)."
    )
    filters: list[FieldFilter] = Field(default_factory=list)
    bulk_threshold: int = Field(
        default=0,
        ge=0,
        description="Use Bulk API 2.0 for a full read of at least this many rows (0 = never).",
    )


class SalesforceMapping(Strict):
    accounts: SalesforceStream
    contacts: SalesforceStream
    opportunities: SalesforceStream
    contact_roles: SalesforceStream
    users: SalesforceStream
    reminders: SalesforceStream | None = Field(
        default=None,
        description="Accord's own reminder Tasks read back (key, status, due), so done or snoozed ones are "
        "never recreated; needs the fields key and status",
    )
    lookback_seconds: int = Field(default=300, ge=0, le=86400)
    reconcile_every_hours: float = Field(
        default=24, gt=0, description="How often a full id-set read catches hard deletes."
    )

    @model_validator(mode="after")
    def _required_attributes(self) -> SalesforceMapping:
        required = {
            "accounts": {"name"},
            "contacts": {"account", "email"},
            "opportunities": {"name", "account", "stage", "owner"},
            "contact_roles": {"opportunity", "contact", "role"},
            "users": {"email"},
        }
        if self.reminders is not None:
            required["reminders"] = {"key", "status"}
        for stream, attributes in required.items():
            missing = attributes - set(getattr(self, stream).fields)
            if missing:
                raise ValueError(f"salesforce.{stream}.fields must map {sorted(missing)}")
        return self


# -- Jira ---------------------------------------------------------------------------------------------
class JiraProjectLink(Strict):
    """How an engagement finds its Jira project."""

    source: Literal["opportunity_field", "lookup"] = "opportunity_field"
    opportunity_field: str = Field(
        default="jira_project", description="Accord attribute of salesforce.opportunities holding the key"
    )
    lookup: dict[str, Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9_]{1,9}$")]] = Field(
        default_factory=dict, description="Opportunity Id or Name -> Jira project key (source: lookup)"
    )


class JiraMapping(Strict):
    projects: JiraProjectLink = Field(default_factory=JiraProjectLink)
    blocked_statuses: list[str] = Field(default_factory=lambda: ["Blocked"])
    blocked_labels: list[str] = Field(default_factory=lambda: ["blocked"])
    extra_fields: dict[str, JiraFieldId] = Field(
        default_factory=dict,
        description="Accord attribute -> Jira field id, e.g. story_points: customfield_10016",
    )
    lookback_seconds: int = Field(
        default=120, ge=60, le=86400, description="At least a minute: JQL has minute resolution."
    )
    page_size: int = Field(default=100, ge=1, le=100)


# -- Google Calendar ---------------------------------------------------------------------------------
class CalendarMapping(Strict):
    calendars: Literal["internal", "listed"] = Field(
        default="internal",
        description="internal: every visible calendar whose id is in identity.internal_domains; "
        "listed: exactly `calendar_ids` (e.g. one shared team calendar)",
    )
    calendar_ids: list[str] = Field(default_factory=list)
    past_days: int = Field(default=180, ge=1, le=3650)
    future_days: int = Field(default=120, ge=1, le=3650)

    @model_validator(mode="after")
    def _listed_needs_ids(self) -> CalendarMapping:
        if self.calendars == "listed" and not self.calendar_ids:
            raise ValueError("calendars: listed needs at least one entry in calendar_ids")
        return self


# -- Identity -------------------------------------------------------------------------------------------
class IdentityMapping(Strict):
    internal_domains: list[Domain] = Field(description="Email domains of your own organisation.")
    aliases: dict[Email, Email] = Field(
        default_factory=dict,
        description="Other address -> the address the CRM holds (matched case-insensitively)",
    )
    strip_plus_tags: bool = Field(default=True, description="Treat jane+x@client.com as jane@client.com")

    @field_validator("internal_domains", mode="before")
    @classmethod
    def _lower_domains(cls, value: Any) -> Any:
        return [v.lower() for v in value] if isinstance(value, list) else value


# -- Lifecycle and health ----------------------------------------------------------------------------
class StageRule(Strict):
    """First matching rule wins. Conditions left out always match."""

    stage: LifecycleStage
    opportunity_stages: list[str] | None = None
    progress_at_least: float | None = Field(default=None, ge=0, le=1)
    progress_below: float | None = Field(default=None, ge=0, le=1)
    close_date_passed: bool | None = None


class HealthThresholds(Strict):
    checkin_cadence_days: int = Field(default=14, ge=1, description="A client meeting at least this often")
    stakeholder_quiet_days: int = Field(default=30, ge=1, description="Key stakeholder untouched this long")
    key_roles: list[str] = Field(default_factory=lambda: ["Decision Maker", "Executive Sponsor", "Economic Buyer"])
    overdue_amber: int = Field(default=1, ge=1, description="Overdue open issues for amber")
    overdue_red: int = Field(default=5, ge=1, description="Overdue open issues for red")
    overdue_share_red: float = Field(default=0.2, gt=0, le=1, description="Share of open issues overdue for red")
    blocked_amber: int = Field(default=1, ge=1)
    blocked_red: int = Field(default=3, ge=1)
    throughput_weeks: int = Field(default=4, ge=1, le=26)
    stalled_weeks: int = Field(default=3, ge=1, description="No issue done for this many weeks while work is open")

    @model_validator(mode="after")
    def _ordered(self) -> HealthThresholds:
        if self.overdue_red < self.overdue_amber:
            raise ValueError("overdue_red must be at least overdue_amber")
        if self.blocked_red < self.blocked_amber:
            raise ValueError("blocked_red must be at least blocked_amber")
        return self


# -- Push: status updates and reminders ----------------------------------------------------------
StatusField = Literal["health", "stage", "summary", "updated"]
ReminderTarget = Literal["salesforce_task", "calendar_event"]
StatusTarget = Literal["salesforce_opportunity", "jira_comment"]


def _status_fields() -> dict[StatusField, str]:
    return {
        "health": "Accord_Health__c",
        "stage": "Accord_Stage__c",
        "summary": "Accord_Status_Summary__c",
        "updated": "Accord_Status_Updated__c",
    }


def _reminder_targets() -> list[ReminderTarget]:
    return ["salesforce_task", "calendar_event"]


def _status_targets() -> list[StatusTarget]:
    return ["salesforce_opportunity", "jira_comment"]


class SalesforcePush(Strict):
    status_fields: dict[StatusField, SalesforceName] = Field(
        default_factory=_status_fields,
        description="Opportunity fields the status update writes (create them as custom fields)",
    )
    task_external_id: SalesforceName = Field(
        default="Accord_Key__c", description="Task field marked External ID + Unique: the idempotency key"
    )
    task_done_statuses: list[str] = Field(default_factory=lambda: ["Completed"])
    task_open_status: str = "Not Started"
    batch_size: int = Field(default=200, ge=1, le=200, description="Records per composite call (at most 200)")


class JiraPush(Strict):
    status_issue: Literal["first_epic", "labelled"] = Field(
        default="first_epic",
        description="Where status comments go: the first epic, or the issue labelled `status_label`",
    )
    status_label: str = "accord-status"
    property_key: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,255}$")] = "com.accord.status"


class CalendarPush(Strict):
    reminder_hour_utc: int = Field(default=9, ge=0, le=23, description="When reminder events start (UTC hour)")
    duration_minutes: int = Field(default=15, ge=5, le=240)
    batch_size: int = Field(default=50, ge=1, le=1000, description="Calls per batch request")


class RuleSwitch(Strict):
    enabled: bool = True


class DaysRule(RuleSwitch):
    days: int = Field(ge=0, le=3650)


class StatusUpdateRule(RuleSwitch):
    progress_step: int = Field(default=10, ge=1, le=100, description="Post when progress crosses a step of this many %")


class PostClosureRule(RuleSwitch):
    days: list[int] = Field(default_factory=lambda: [30, 90])
    window_days: int = Field(default=14, ge=1, description="A follow-up not sent within this window is skipped")


class Rules(Strict):
    status_update: StatusUpdateRule = Field(default_factory=StatusUpdateRule)
    meeting_follow_up: DaysRule = Field(default_factory=lambda: DaysRule(days=2))
    checkin_due: RuleSwitch = Field(default_factory=RuleSwitch)
    stakeholder_quiet: DaysRule = Field(default_factory=lambda: DaysRule(days=30))
    overdue_aging: DaysRule = Field(default_factory=lambda: DaysRule(days=7))
    post_closure: PostClosureRule = Field(default_factory=PostClosureRule)
    escalation: DaysRule = Field(default_factory=lambda: DaysRule(days=5))


class PushMapping(Strict):
    reminder_targets: list[ReminderTarget] = Field(default_factory=_reminder_targets)
    status_targets: list[StatusTarget] = Field(default_factory=_status_targets)
    templates: str = Field(default="templates", description="Jinja2 templates, relative to the mapping file")
    salesforce: SalesforcePush = Field(default_factory=SalesforcePush)
    jira: JiraPush = Field(default_factory=JiraPush)
    google_calendar: CalendarPush = Field(default_factory=CalendarPush)
    rules: Rules = Field(default_factory=Rules)


def _default_stage_rules() -> list[StageRule]:
    return [
        StageRule(stage="closure", opportunity_stages=["Closed Lost"]),
        StageRule(stage="closure", opportunity_stages=["Closed Won"], progress_at_least=1.0),
        StageRule(
            stage="initiation",
            opportunity_stages=[
                "Qualification",
                "Needs Analysis",
                "Proposal/Price Quote",
                "Negotiation/Review",
            ],
        ),
        StageRule(stage="planning", opportunity_stages=["Closed Won"], progress_below=0.1),
        StageRule(stage="execution"),
    ]


class Mapping(Strict):
    version: int
    name: str = "default"
    salesforce: SalesforceMapping
    jira: JiraMapping = Field(default_factory=JiraMapping)
    google_calendar: CalendarMapping = Field(default_factory=CalendarMapping)
    identity: IdentityMapping
    lifecycle: list[StageRule] = Field(default_factory=_default_stage_rules, min_length=1)
    health: HealthThresholds = Field(default_factory=HealthThresholds)
    push: PushMapping = Field(default_factory=PushMapping)

    @field_validator("version")
    @classmethod
    def _supported(cls, value: int) -> int:
        if value not in SUPPORTED_VERSIONS:
            raise ValueError(f"version {value} is not supported; this Accord reads version {SUPPORTED_VERSIONS}")
        return value

    @model_validator(mode="after")
    def _project_link(self) -> Mapping:
        link = self.jira.projects
        if link.source == "opportunity_field" and link.opportunity_field not in self.salesforce.opportunities.fields:
            raise ValueError(
                f"jira.projects.opportunity_field {link.opportunity_field!r} is not an attribute of "
                f"salesforce.opportunities.fields ({sorted(self.salesforce.opportunities.fields)})"
            )
        if link.source == "lookup" and not link.lookup:
            raise ValueError("jira.projects.source: lookup needs at least one entry in jira.projects.lookup")
        return self


# -- loading with line numbers --------------------------------------------------------------------
class MappingError(ValueError):
    """Every problem of a mapping file, each with file, line and what was expected."""

    def __init__(self, path: str, problems: list[tuple[int | None, str]]) -> None:
        self.path = path
        self.problems = problems
        lines = [f"{path}:{line if line is not None else '?'}: {message}" for line, message in problems]
        super().__init__("\n".join(lines))


def _line_index(node: yaml.Node, path: tuple[str | int, ...] = ()) -> dict[tuple[str | int, ...], int]:
    """Map each key path of a YAML document to its 1-based line."""
    index = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            index[(*path, key)] = key_node.start_mark.line + 1
            for sub, line in _line_index(value_node, (*path, key)).items():
                if sub != (*path, key):
                    index[sub] = line
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            index.update(_line_index(item, (*path, i)))
    return index


def _line_for(index: dict[tuple[str | int, ...], int], loc: tuple[str | int, ...]) -> int | None:
    for end in range(len(loc), -1, -1):
        found = index.get(tuple(loc[:end]))
        if found is not None:
            return found
    return None


PATTERN_WORDS = {
    SALESFORCE_NAME: "a Salesforce field or object name such as Email or Account.Name (letters, digits, _)",
    JIRA_FIELD_ID: "a Jira field id such as customfield_10016",
    EMAIL: "an email address such as jane@client.com",
    DOMAIN: "a lower-case email domain such as client.com",
    r"^[A-Z][A-Z0-9_]{1,9}$": "a Jira project key such as WEB (capitals and digits, 2 to 10 characters)",
    r"^[A-Za-z0-9._-]{1,255}$": "an entity property key (letters, digits, . _ -)",
}


def _describe(error: dict[str, Any]) -> str:
    loc = [str(p) for p in error["loc"] if not (isinstance(p, str) and p.startswith(("function-", "list[", "dict[")))]
    where = ".".join(loc) or "(top level)"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key (check its spelling and indentation)"
    if error["type"] == "missing":
        return f"{where}: required key is missing"
    if error["type"] == "string_pattern_mismatch":
        pattern = str((error.get("ctx") or {}).get("pattern", ""))
        message = "expected " + PATTERN_WORDS.get(pattern, f"text matching {pattern}")
    expected = (
        f"; got {error['input']!r}"
        if error["type"] not in ("model_type",) and not isinstance(error.get("input"), dict)
        else ""
    )
    return f"{where}: {message}{expected}"


MAX_DEPTH = 64  # mappings nest a few levels; deeper input would exhaust the recursive YAML composer
MAX_VALUES = 100_000  # values after expanding aliases: a few hundred in a real mapping, 9**9 in an alias bomb


def _shape_problem(text: str) -> tuple[int, str] | None:
    """Nesting too deep, or aliases that expand too far, found on the event stream (which does not
    recurse) before anything that does, with the line where the limit was crossed."""
    open_counts: list[list[Any]] = []  # per open collection: [anchor, values so far]
    sizes: dict[str, int] = {}  # anchor -> values it expands to
    total = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1 if event.start_mark is not None else 1
        if isinstance(event, yaml.CollectionStartEvent):
            if len(open_counts) >= MAX_DEPTH:
                return line, f"nested more than {MAX_DEPTH} levels deep"
            open_counts.append([event.anchor, 1])
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            anchor, count = open_counts.pop()
        elif isinstance(event, yaml.ScalarEvent):
            anchor, count = event.anchor, 1
        elif isinstance(event, yaml.AliasEvent):
            anchor, count = None, sizes.get(str(event.anchor), 1)
        else:
            continue
        if anchor:
            sizes[anchor] = count
        if open_counts:
            open_counts[-1][1] += count
            count = open_counts[-1][1]
        else:
            total += count
            count = total
        if count > MAX_VALUES:
            return line, f"expands to more than {MAX_VALUES} values (check anchors and aliases)"
    return None


def parse_mapping(text: str, path: str = "<mapping>") -> Mapping:
    try:
        shape = _shape_problem(text)
        if shape is not None:
            raise MappingError(path, [shape])
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow: no mark, a position
            line = text[: exc.position].count("\n") + 1
            code = exc.character if isinstance(exc.character, int) else None
            problem = f"unacceptable character #x{code:04x}: {exc.reason}" if code is not None else str(exc.reason)
        raise MappingError(path, [(line, f"not valid YAML: {problem}")]) from None
    if not isinstance(data, dict) or node is None:
        raise MappingError(path, [(1, "expected a YAML mapping with at least `version`, `salesforce` and `identity`")])
    index = _line_index(node)
    try:
        return Mapping.model_validate(data)
    except ValidationError as exc:
        problems = [(_line_for(index, tuple(e["loc"])), _describe(dict(e))) for e in exc.errors()]
        raise MappingError(path, problems) from None


def load_mapping(path: str | Path) -> Mapping:
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise MappingError(str(file), [(None, f"cannot read the mapping: {exc.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise MappingError(
            str(file), [(line, f"the mapping is not UTF-8 text (byte 0x{raw[exc.start]:02x})")]
        ) from None
    return parse_mapping(text, str(file))


def mapping_json_schema() -> dict[str, Any]:
    schema = Mapping.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Accord mapping"
    return schema
