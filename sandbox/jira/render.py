"""JSON shapes of Jira Cloud REST v2/v3: issues, users, projects, comments, changelogs, fields.

Callers hold the store's lock. The only difference between v2 and v3 rendered here is rich text:
descriptions and comment bodies are plain strings on v2 and ADF documents on v3.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from urllib.parse import quote

from sandbox.jira import adf
from sandbox.jira.model import (
    CATEGORIES,
    ISSUE_TYPE_DESCRIPTIONS,
    ISSUE_TYPES,
    PRIORITIES,
    RESOLUTION_DONE,
    RESOLUTION_DONE_ID,
    STATUS_IDS,
    STORY_POINTS_FIELD,
    Comment,
    History,
    IssueVersion,
    JiraUser,
    Project,
    category_of,
)
from sandbox.jira.store import JiraStore
from sandbox.wallclock import wall_clock

ISSUE_EXPAND = "renderedFields,names,schema,operations,editmeta,changelog,versionedRepresentations"

# JSON text exactly as ``sandbox.http.Response.json`` writes it (json.dumps, compact, not ASCII-only).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
encode = _ENCODER.encode
encode_string: Callable[[str], str] = json.encoder.encode_basestring
# Encoded shared shapes kept per store (see ``Renderer.issue_json``); a kind's cache is cleared when
# it grows past this (writes make new keys, so long-running sandboxes would otherwise only grow).
MAX_FRAGMENTS = 50_000
PROJECT_EXPAND = "description,lead,issueTypes,url,projectKeys,permissions,insight"


@dataclass(frozen=True)
class FieldInfo:
    id: str
    name: str
    clause_names: tuple[str, ...]
    schema: dict[str, Any] | None
    custom: bool = False
    navigable: bool = True
    orderable: bool = True
    searchable: bool = True


def _system(kind: str, system: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, **extra, "system": system}


FIELDS: tuple[FieldInfo, ...] = (
    FieldInfo("summary", "Summary", ("summary",), _system("string", "summary")),
    FieldInfo("status", "Status", ("status",), _system("status", "status"), orderable=False),
    FieldInfo("issuetype", "Issue Type", ("issuetype", "type"), _system("issuetype", "issuetype")),
    FieldInfo("parent", "Parent", ("parent",), _system("issuelink", "parent")),
    FieldInfo("project", "Project", ("project",), _system("project", "project")),
    FieldInfo("assignee", "Assignee", ("assignee",), _system("user", "assignee")),
    FieldInfo("reporter", "Reporter", ("reporter",), _system("user", "reporter")),
    FieldInfo("creator", "Creator", ("creator",), _system("user", "creator"), orderable=False),
    FieldInfo("labels", "Labels", ("labels",), _system("array", "labels", items="string")),
    FieldInfo("priority", "Priority", ("priority",), _system("priority", "priority")),
    FieldInfo("duedate", "Due date", ("due", "duedate"), _system("date", "duedate")),
    FieldInfo("created", "Created", ("created", "createdDate"), _system("datetime", "created"), orderable=False),
    FieldInfo("updated", "Updated", ("updated", "updatedDate"), _system("datetime", "updated"), orderable=False),
    FieldInfo(
        "resolutiondate",
        "Resolved",
        ("resolutiondate", "resolved"),
        _system("datetime", "resolutiondate"),
        orderable=False,
    ),
    FieldInfo("resolution", "Resolution", ("resolution",), _system("resolution", "resolution")),
    FieldInfo("description", "Description", ("description",), _system("string", "description")),
    FieldInfo("comment", "Comment", ("comment",), _system("comments-page", "comment"), navigable=False),
    FieldInfo(
        STORY_POINTS_FIELD,
        "Story point estimate",
        ("cf[10016]", "Story point estimate"),
        {"type": "number", "custom": "com.pyxis.greenhopper.jira:jsw-story-points", "customId": 10016},
        custom=True,
    ),
    FieldInfo("issuekey", "Key", ("id", "issue", "issuekey", "key"), None, orderable=False),
    FieldInfo(
        "statusCategory",
        "Status Category",
        ("statusCategory",),
        _system("statusCategory", "statusCategory"),
        orderable=False,
    ),
)
FIELDS_BY_ID = {f.id: f for f in FIELDS}
_FIELD_KEYS = {f.id: (json.dumps(f.id) + ":").encode() for f in FIELDS}
# A selected field: its key (with a leading comma), what writes its value, whether it is `parent`.
_Writer = tuple[bytes, Callable[[IssueVersion], bytes], bool]
_ISSUE_HEAD = ('{"expand":"' + ISSUE_EXPAND + '","id":"').encode()
# Fields an issue's "fields" object can carry (issuekey and statusCategory are search-only).
ISSUE_FIELDS: tuple[str, ...] = tuple(f.id for f in FIELDS if f.id not in ("issuekey", "statusCategory"))
NAVIGABLE_FIELDS = frozenset(f for f in ISSUE_FIELDS if FIELDS_BY_ID[f].navigable)
ID_ONLY_FIELDS = frozenset({"id", "key", "issuekey"})


@dataclass(frozen=True)
class FieldSelection:
    fields: tuple[str, ...]  # issue field ids to render, in catalogue order
    ids_only: bool  # nothing but id/key asked for (search/jql then allows up to 5000 per page)


def select_fields(values: Iterable[str] | None, default: str) -> FieldSelection:
    """Jira's ``fields`` parameter: ids, ``*all``, ``*navigable``, ``-id`` exclusions.

    Values may be repeated parameters, comma lists or both. Unknown ids are ignored, as Jira does."""
    items = [t.strip() for value in (values or []) for t in str(value).split(",") if t.strip()]
    if not items:
        items = [default]
    chosen: set[str] = set()
    excluded: set[str] = set()
    for item in items:
        if item == "*all":
            chosen.update(ISSUE_FIELDS)
        elif item == "*navigable":
            chosen.update(NAVIGABLE_FIELDS)
        elif item.startswith("-"):
            excluded.add(item[1:])
        elif item in FIELDS_BY_ID or item in ID_ONLY_FIELDS:
            chosen.add(item)
    selected = tuple(f for f in ISSUE_FIELDS if f in chosen and f not in excluded)
    return FieldSelection(selected, ids_only=not selected)


def split_list(values: Iterable[str] | str | None) -> list[str]:
    """A comma list, a repeated parameter, or both, as one list of non-empty items."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [item.strip() for value in values for item in str(value).split(",") if item.strip()]


class Renderer:
    """Renders store records for one request: ``base_url`` and API version ``"2"`` or ``"3"``."""

    def __init__(self, store: JiraStore, base_url: str, version: str) -> None:
        self.store = store
        self.base = base_url
        self.version = version
        self.api = f"{base_url}/rest/api/{version}"
        # Encoded shapes (see issue_json), per API root: they embed this base URL and version.
        self._fragments = store.fragments.setdefault(self.api, {})
        self._fragments_status = self._fragments.setdefault("status", {})
        self._fragments_type = self._fragments.setdefault("issue_type", {})
        self._fragments_priority = self._fragments.setdefault("priority", {})
        self._fragments_labels = self._fragments.setdefault("labels", {})
        self._fragments_project = self._fragments.setdefault("project_ref", {})
        self._fragments_user = self._fragments.setdefault("user_of", {})
        self._fragments_parent = self._fragments.setdefault("parent", {})
        self._issue_url = encode_string(f"{self.api}/issue/")[1:-1].encode()
        self._clock = wall_clock(store.zone)  # what store.format_time writes, straight to JSON
        self._plans: dict[tuple[tuple[str, ...], bool], list[_Writer]] = {}
        self._last_plan: tuple[tuple[str, ...], bool, list[_Writer]] = ((), False, [])

    # -- small shapes --------------------------------------------------------------------------------
    def time(self, moment: datetime | None) -> str | None:
        return None if moment is None else self.store.format_time(moment)

    def avatars(self, kind: str, owner: str) -> dict[str, str]:
        return {
            f"{size}x{size}": f"{self.base}/secure/{kind}avatar?size={label}&ownerId={quote(owner)}"
            for size, label in ((48, "large"), (24, "small"), (16, "xsmall"), (32, "medium"))
        }

    def user(self, account_id: str | None) -> dict[str, Any] | None:
        if account_id is None:
            return None
        user = self.store.users.get(account_id)
        if user is None:
            return {"accountId": account_id, "active": False, "accountType": "atlassian"}
        return self.user_of(user)

    def user_of(self, user: JiraUser) -> dict[str, Any]:
        data: dict[str, Any] = {
            "self": f"{self.api}/user?accountId={quote(user.account_id)}",
            "accountId": user.account_id,
        }
        if user.email_visible:
            data["emailAddress"] = user.email
        data.update(
            {
                "avatarUrls": self.avatars("user", user.account_id),
                "displayName": user.display_name,
                "active": user.active,
                "timeZone": user.time_zone,
                "accountType": "atlassian",
            }
        )
        return data

    def status(self, name: str) -> dict[str, Any]:
        key = category_of(name)
        cid, cname, color = CATEGORIES[key]
        sid = STATUS_IDS[name]
        return {
            "self": f"{self.api}/status/{sid}",
            "description": "",
            "iconUrl": f"{self.base}/",
            "name": name,
            "id": sid,
            "statusCategory": {
                "self": f"{self.api}/statuscategory/{cid}",
                "id": cid,
                "key": key,
                "colorName": color,
                "name": cname,
            },
        }

    def issue_type(self, name: str) -> dict[str, Any]:
        tid, level = ISSUE_TYPES[name]
        avatar = 10300 + int(tid) % 100
        return {
            "self": f"{self.api}/issuetype/{tid}",
            "id": tid,
            "description": ISSUE_TYPE_DESCRIPTIONS[name],
            "iconUrl": f"{self.base}/rest/api/2/universal_avatar/view/type/issuetype/avatar/{avatar}",
            "name": name,
            "subtask": False,
            "avatarId": avatar,
            "hierarchyLevel": level,
        }

    def priority(self, name: str) -> dict[str, Any]:
        pid = PRIORITIES[name]
        return {
            "self": f"{self.api}/priority/{pid}",
            "iconUrl": f"{self.base}/images/icons/priorities/{name.lower()}.svg",
            "name": name,
            "id": pid,
        }

    def resolution(self, name: str | None) -> dict[str, Any] | None:
        if name is None:
            return None
        return {
            "self": f"{self.api}/resolution/{RESOLUTION_DONE_ID}",
            "id": RESOLUTION_DONE_ID,
            "description": "Work has been completed on this issue.",
            "name": RESOLUTION_DONE,
        }

    def project_ref(self, project: Project) -> dict[str, Any]:
        return {
            "self": f"{self.api}/project/{project.id}",
            "id": str(project.id),
            "key": project.key,
            "name": project.name,
            "projectTypeKey": "software",
            "simplified": False,
            "avatarUrls": self.avatars("project", str(project.id)),
        }

    def project(self, project: Project, expand: Iterable[str], *, full: bool = False) -> dict[str, Any]:
        wanted = set(expand)
        data = {"expand": PROJECT_EXPAND, **self.project_ref(project), "style": "classic", "isPrivate": False}
        if full or "description" in wanted:
            data["description"] = ""
        if full or "lead" in wanted:
            data["lead"] = self.user(project.lead_account_id)
        if full or "issueTypes" in wanted:
            data["issueTypes"] = [self.issue_type(name) for name in ISSUE_TYPES]
        if full:
            data.update({"components": [], "versions": [], "assigneeType": "UNASSIGNED", "roles": {}})
        data["properties"] = {}
        return data

    def body(self, text: str | dict[str, Any] | None) -> Any:
        return adf.as_document(text) if self.version == "3" else adf.as_text(text)

    def comment(self, comment: Comment) -> dict[str, Any]:
        author = self.user(comment.author)
        return {
            "self": f"{self.api}/issue/{comment.issue_id}/comment/{comment.id}",
            "id": str(comment.id),
            "author": author,
            "body": self.body(comment.body),
            "updateAuthor": author,
            "created": self.time(comment.created),
            "updated": self.time(comment.updated),
            "jsdPublic": True,
        }

    def history(self, history: History) -> dict[str, Any]:
        items = []
        for item in history.items:
            entry: dict[str, Any] = {"field": item.field, "fieldtype": item.fieldtype}
            if item.field_id is not None:
                entry["fieldId"] = item.field_id
            entry.update(
                {
                    "from": item.from_value,
                    "fromString": item.from_string,
                    "to": item.to_value,
                    "toString": item.to_string,
                }
            )
            items.append(entry)
        return {
            "id": str(history.id),
            "author": self.user(history.author),
            "created": self.time(history.created),
            "items": items,
        }

    # -- issues --------------------------------------------------------------------------------------
    def issue(
        self,
        version: IssueVersion,
        selection: FieldSelection,
        expand: Iterable[str] = (),
        properties: Iterable[str] = (),
        *,
        in_search: bool = False,
    ) -> dict[str, Any]:
        wanted = set(expand)
        data: dict[str, Any] = {
            "expand": ISSUE_EXPAND,
            "id": str(version.id),
            "self": f"{self.api}/issue/{version.id}",
            "key": version.key,
        }
        if "renderedFields" in wanted:
            data["renderedFields"] = self.rendered_fields(version, selection)
        keys = list(properties)
        if keys:
            bag = self.store.properties.get(version.id, {})
            every = "*all" in keys
            data["properties"] = {k: v for k, v in bag.items() if every or k in keys}
        if "names" in wanted:
            data["names"] = {f: FIELDS_BY_ID[f].name for f in selection.fields}
        if "schema" in wanted:
            data["schema"] = {f: FIELDS_BY_ID[f].schema for f in selection.fields}
        if selection.fields:
            fields: dict[str, Any] = {}
            for field in selection.fields:
                if field == "parent" and version.parent_id is None:
                    continue  # Jira Cloud omits `parent` on issues without one
                fields[field] = self.field_value(version, field, in_search)
            data["fields"] = fields
        if "changelog" in wanted:
            data["changelog"] = self.changelog(version, limit=20 if in_search else 100)
        return data

    def issue_json(
        self,
        version: IssueVersion,
        selection: FieldSelection,
        expand: Iterable[str] = (),
        properties: Iterable[str] = (),
        *,
        in_search: bool = False,
    ) -> bytes:
        """``issue()`` as UTF-8 JSON, byte for byte what ``Response.json`` makes of it.

        Search pages carry thousands of issues that share a few statuses, types, priorities,
        projects, users and epics: their JSON is encoded once and kept in ``store.fragments``, keyed
        by every value it is rendered from (a write simply makes new keys; nothing to invalidate).
        """
        if expand or properties:
            return encode(self.issue(version, selection, expand, properties, in_search=in_search)).encode()
        issue_id = str(version.id).encode()
        head = (
            _ISSUE_HEAD
            + issue_id
            + b'","self":"'
            + self._issue_url
            + issue_id
            + b'","key":'
            + encode_string(version.key).encode()
        )
        if not selection.fields:
            return head + b"}"
        parts = [head, b',"fields":{']
        for key, write, parent in self._writers(selection.fields, in_search):
            if parent and version.parent_id is None:
                continue  # as issue(): Jira Cloud omits `parent` on issues without one
            parts.append(key)
            parts.append(write(version))
        if len(parts) > 2:
            parts[2] = parts[2][1:]  # every key carries a leading comma; the first needs none
        parts.append(b"}}")
        return b"".join(parts)

    def _writers(self, fields: tuple[str, ...], in_search: bool) -> list[_Writer]:
        """Per selected field: its key (``,"name":``), what writes its value, whether it is ``parent``."""
        if fields is self._last_plan[0] and in_search == self._last_plan[1]:
            return self._last_plan[2]
        plan = self._plans.get((fields, in_search))
        if plan is None:
            plan = self._plans[(fields, in_search)] = [
                (b"," + _FIELD_KEYS[f], self._writer(f, in_search), f == "parent") for f in fields
            ]
        self._last_plan = (fields, in_search, plan)
        return plan

    def _writer(self, field: str, in_search: bool) -> Callable[[IssueVersion], bytes]:
        fixed = {
            "summary": lambda v: encode_string(v.summary).encode(),
            "status": self._status_json,
            "issuetype": self._issue_type_json,
            "priority": self._priority_json,
            "parent": self._parent_json,
            "project": self._project_json,
            "assignee": lambda v: self._user_json(v.assignee),
            "reporter": lambda v: self._user_json(v.reporter),
            "creator": lambda v: self._user_json(v.creator),
            "labels": self._labels_json,
            "duedate": lambda v: b"null" if v.due_date is None else b'"' + v.due_date.isoformat().encode() + b'"',
            "created": lambda v: self._time_json(v.created),
            "updated": lambda v: self._time_json(v.updated),
            "resolutiondate": lambda v: self._time_json(v.resolution_date),
            "resolution": lambda v: b"null" if v.resolution is None else self._cached("resolution", v.resolution),
        }
        found = fixed.get(field)
        if found is not None:
            return found
        return lambda v: encode(self.field_value(v, field, in_search)).encode()

    def _cached(self, kind: str, key: Any, render: Callable[[], Any] | None = None) -> bytes:
        """The encoded shape of ``kind`` for ``key`` (made by ``render``, or by the method ``kind``)."""
        cache = self._fragments.get(kind)
        if cache is None:
            cache = self._fragments[kind] = {}
        text = cache.get(key)
        if text is None:
            if len(cache) >= MAX_FRAGMENTS:
                cache.clear()
            value = render() if render is not None else getattr(self, kind)(key)
            text = cache[key] = encode(value).encode()
        return text

    def _status_json(self, v: IssueVersion) -> bytes:
        return self._fragments_status.get(v.status) or self._cached("status", v.status)

    def _issue_type_json(self, v: IssueVersion) -> bytes:
        return self._fragments_type.get(v.issue_type) or self._cached("issue_type", v.issue_type)

    def _priority_json(self, v: IssueVersion) -> bytes:
        return self._fragments_priority.get(v.priority) or self._cached("priority", v.priority)

    # The lookups below try their kind's cache inline first: most issues hit it.
    def _labels_json(self, v: IssueVersion) -> bytes:
        labels = v.labels
        return self._fragments_labels.get(labels) or self._cached("labels", labels, lambda: list(labels))

    def _project_json(self, v: IssueVersion) -> bytes:
        project = self.store.projects[v.project_id]
        key = (project.id, project.key, project.name)
        return self._fragments_project.get(key) or self._cached("project_ref", key, lambda: self.project_ref(project))

    def _user_json(self, account_id: str | None) -> bytes:
        if account_id is None:
            return b"null"
        user = self.store.users.get(account_id)
        if user is None:
            return encode(self.user(account_id)).encode()
        key = (user.account_id, user.display_name, user.email, user.email_visible, user.active, user.time_zone)
        return self._fragments_user.get(key) or self._cached("user_of", key, lambda: self.user_of(user))

    def _parent_json(self, v: IssueVersion) -> bytes:
        parent_id = v.parent_id
        parent = self.store.issues.get(parent_id) if parent_id is not None else None
        if parent is None:
            return b"null"
        key = (parent.id, parent.key, parent.summary, parent.status, parent.priority, parent.issue_type)
        return self._fragments_parent.get(key) or self._cached("parent", key, lambda: self.parent(parent_id))

    def _time_json(self, moment: datetime | None) -> bytes:
        if moment is None:
            return b"null"
        return self._clock.millis_z_json(moment) or b'"' + self.store.format_time(moment).encode() + b'"'

    def field_value(self, v: IssueVersion, field: str, in_search: bool) -> Any:
        if field == "summary":
            return v.summary
        if field == "status":
            return self.status(v.status)
        if field == "issuetype":
            return self.issue_type(v.issue_type)
        if field == "parent":
            return self.parent(v.parent_id)
        if field == "project":
            return self.project_ref(self.store.projects[v.project_id])
        if field in ("assignee", "reporter", "creator"):
            return self.user(getattr(v, field))
        if field == "labels":
            return list(v.labels)
        if field == "priority":
            return self.priority(v.priority)
        if field == "duedate":
            return v.due_date.isoformat() if v.due_date else None
        if field in ("created", "updated"):
            return self.time(getattr(v, field))
        if field == "resolutiondate":
            return self.time(v.resolution_date)
        if field == "resolution":
            return self.resolution(v.resolution)
        if field == "description":
            return self.body(v.description)
        if field == "comment":
            comments = self.store.comments_of(v.id)
            shown = comments[:20] if in_search else comments
            return {
                "comments": [self.comment(c) for c in shown],
                "self": f"{self.api}/issue/{v.id}/comment",
                "maxResults": len(shown),
                "total": len(comments),
                "startAt": 0,
            }
        if field == STORY_POINTS_FIELD:
            return v.story_points
        return None

    def parent(self, parent_id: int | None) -> dict[str, Any] | None:
        if parent_id is None:
            return None
        parent = self.store.issues.get(parent_id)
        if parent is None:
            return None
        return {
            "id": str(parent.id),
            "key": parent.key,
            "self": f"{self.api}/issue/{parent.id}",
            "fields": {
                "summary": parent.summary,
                "status": self.status(parent.status),
                "priority": self.priority(parent.priority),
                "issuetype": self.issue_type(parent.issue_type),
            },
        }

    def changelog(self, version: IssueVersion, limit: int) -> dict[str, Any]:
        histories = self.store.history_of(version)
        shown = histories[-limit:]
        return {
            "startAt": len(histories) - len(shown),
            "maxResults": len(shown),
            "total": len(histories),
            "histories": [self.history(h) for h in shown],
        }

    def rendered_fields(self, v: IssueVersion, selection: FieldSelection) -> dict[str, Any]:
        rendered: dict[str, Any] = {}
        for field in selection.fields:
            value: Any = None
            if field == "description":
                value = adf.to_html(v.description)
            elif field in ("created", "updated", "resolutiondate"):
                moment = v.resolution_date if field == "resolutiondate" else getattr(v, field)
                value = self.human_time(moment)
            elif field == "duedate":
                value = _human_date(v.due_date)
            rendered[field] = value
        return rendered

    def human_time(self, moment: datetime | None) -> str | None:
        if moment is None:
            return None
        local = moment.astimezone(self.store.zone)
        return f"{local:%d/%b/%y} {local:%I:%M %p}".replace(" 0", " ")

    # -- catalogue -----------------------------------------------------------------------------------
    def fields(self) -> list[dict[str, Any]]:
        out = []
        for f in FIELDS:
            entry: dict[str, Any] = {
                "id": f.id,
                "key": f.id,
                "name": f.name,
                "custom": f.custom,
                "orderable": f.orderable,
                "navigable": f.navigable,
                "searchable": f.searchable,
                "clauseNames": list(f.clause_names),
            }
            if f.custom:
                entry["untranslatedName"] = f.name
            if f.schema is not None:
                entry["schema"] = f.schema
            out.append(entry)
        return out


def _human_date(day: date | None) -> str | None:
    return None if day is None else f"{day:%d/%b/%y}"
