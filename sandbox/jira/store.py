"""The Jira emulator's data: projects, users and issues loaded from a ``World``, and every write.

Guarantees:

- Thread safety: every public method takes ``self.lock`` (an ``RLock``); the app holds it while it
  renders a response, so a response is one consistent snapshot.
- Issues are immutable versions (``model.IssueVersion``); a write replaces the newest version and
  keeps the previous ones (up to ``MAX_PRIOR_VERSIONS``) so searches can lag behind writes.
- Search results are computed once per query and kept behind page tokens: paging is O(n) overall.
  At most ``MAX_RESULT_SETS`` result sets (and ``RESULT_ID_BUDGET`` ids in all) are kept; older
  tokens expire and answer 400.
- ``mutate`` is deterministic for a given ``random.Random`` state and store state.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import random
import secrets
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sandbox.clock import Clock
from sandbox.jira import jql
from sandbox.jira.adf import as_text
from sandbox.jira.model import (
    PRIORITIES,
    RESOLUTION_DONE,
    RESOLUTION_DONE_ID,
    STATUS_IDS,
    TRANSITIONS,
    ChangeItem,
    Comment,
    History,
    IssueVersion,
    JiraUser,
    Project,
)
from sandbox.mutations import Change
from sandbox.wallclock import wall_clock
from sandbox.world import World

MAX_PRIOR_VERSIONS = 4
MAX_RESULT_SETS = 200
RESULT_ID_BUDGET = 2_000_000
UNBOUNDED_JQL = "Unbounded JQL queries are not allowed here. Please add a search restriction to your query."
STALE_PAGE_MESSAGE = "The provided next page token is invalid or expired."
DEFAULT_BOT_EMAIL = "accord-bot@agency.example"

_DERIVED_PATHS: dict[str, tuple[str, ...]] = {
    "To Do": (),
    "In Progress": ("In Progress",),
    "Blocked": ("In Progress", "Blocked"),
    "In Review": ("In Progress", "In Review"),
    "Done": ("In Progress", "In Review", "Done"),
}
_STORY_POINTS: tuple[float | None, ...] = (None, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0)
_NEW_VERBS = ("Draft", "Review", "Update", "Prepare", "Validate", "Migrate", "Document", "Fix")
_NEW_OBJECTS = (
    "handover notes",
    "status report",
    "data export",
    "access request",
    "test plan",
    "release notes",
)
_SUMMARY_TAGS = ("revised", "client feedback", "phase 2", "scope updated")
# mutate(): kinds of change and their weights
_MUTATIONS: tuple[tuple[str, int], ...] = (
    ("status", 30),
    ("create", 15),
    ("duedate", 15),
    ("assignee", 10),
    ("label", 10),
    ("summary", 10),
    ("delete", 5),
)


class StoreError(Exception):
    """A request the store refuses: ``status`` and Jira's ``errorMessages`` / ``errors``."""

    def __init__(self, status: int, messages: Iterable[str] = (), errors: dict[str, str] | None = None) -> None:
        self.status = status
        self.messages = list(messages)
        self.errors = dict(errors or {})
        super().__init__(status, self.messages, self.errors)


def ms(moment: datetime) -> datetime:
    """``moment`` truncated to milliseconds, as Jira stores timestamps."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


@dataclass
class ResultSet:
    """One search's matching issue ids, in order, kept while its page tokens are alive."""

    handle: str
    jql: str
    ids: list[int]
    reconcile: frozenset[int]


class JiraStore:
    """A Jira Cloud site: one project per engagement, the world's people and issues."""

    def __init__(self, clock: Clock, timezone: str = "America/Los_Angeles") -> None:
        self.lock = threading.RLock()
        self.clock = clock
        self.timezone = timezone
        self.zone = ZoneInfo(timezone)
        # Seconds Jira Cloud's search index trails writes: a search reads each issue as it was this
        # long ago (absent if it did not exist then), unless its id is in reconcileIssues.
        self.search_lag_seconds: float = 0.0
        # Whether PUT/DELETE of an entity property bumps the issue's `updated` (real Jira: no).
        self.property_writes_bump_updated = False
        self.users: dict[str, JiraUser] = {}
        self.users_by_email: dict[str, str] = {}  # casefolded visible email -> accountId
        self.bot = self._bot_user(DEFAULT_BOT_EMAIL)
        self.projects: dict[int, Project] = {}
        self.project_ids_by_key: dict[str, int] = {}
        self.project_ids_by_name: dict[str, int] = {}
        self.issues: dict[int, IssueVersion] = {}  # newest version by id, tombstones included
        self.issue_ids_by_key: dict[str, int] = {}
        self.project_issue_ids: dict[int, list[int]] = {}
        self.comments: dict[int, list[Comment]] = {}
        self.properties: dict[int, dict[str, Any]] = {}
        self.pending: dict[int, tuple[IssueVersion, Change]] = {}  # late changes, not yet visible
        self._live: list[int] = []  # ids of live issues, for O(1) random picks in mutate()
        self._live_pos: dict[int, int] = {}
        self._next_issue_id = 10000
        self._next_comment_id = 10000
        self._next_history_id = 1_000_000_000
        self._results: OrderedDict[str, ResultSet] = OrderedDict()
        self._result_ids = 0
        self._token_salt = secrets.token_hex(4)
        # Encoded JSON of shapes many issues share (statuses, users, projects, epics), kept by the
        # renderer under keys made of every value they are rendered from: see Renderer.issue_json.
        self.fragments: dict[str, dict[str, dict[Any, bytes]]] = {}

    # -- loading -------------------------------------------------------------------------------------
    @classmethod
    def from_world(cls, world: World, clock: Clock, *, timezone: str = "America/Los_Angeles") -> JiraStore:
        store = cls(clock, timezone)
        accounts: dict[str, str] = {}
        for user in world.users:
            account = user.jira_account_id
            accounts[user.key] = account
            # Atlassian privacy: a deterministic ~10% of people hide their email address.
            visible = zlib.crc32(account.encode()) % 10 != 0
            store._add_user(
                JiraUser(account, f"{user.first_name} {user.last_name}", user.email, visible, True, user.timezone)
            )
        for engagement in world.engagements:
            key = engagement.jira_project_key
            if key in store.project_ids_by_key:
                continue
            project = Project(
                id=10000 + len(store.projects),
                key=key,
                name=engagement.jira_project_name,
                lead_account_id=accounts.get(engagement.owner_key, store.bot.account_id),
            )
            store.projects[project.id] = project
            store.project_ids_by_key[key] = project.id
            store.project_ids_by_name.setdefault(project.name.casefold(), project.id)
            store.project_issue_ids[project.id] = []
        first_id = store._next_issue_id
        epic_ids = {issue.key: first_id + n for n, issue in enumerate(world.issues) if issue.issue_type == "Epic"}
        store._next_issue_id = first_id + len(world.issues)
        for n, issue in enumerate(world.issues):
            project_id = store.project_ids_by_key.get(issue.project_key)
            if project_id is None:
                continue
            issue_id = first_id + n
            number = int(issue.key.rsplit("-", 1)[1])
            reporter = accounts.get(issue.reporter_key, store.bot.account_id)
            version = IssueVersion(
                id=issue_id,
                key=issue.key,
                number=number,
                project_id=project_id,
                summary=issue.summary,
                description=None,
                issue_type=issue.issue_type,
                status=issue.status,
                parent_id=epic_ids.get(issue.epic_key) if issue.epic_key else None,
                assignee=accounts.get(issue.assignee_key) if issue.assignee_key else None,
                reporter=reporter,
                creator=reporter,
                labels=tuple(issue.labels),
                priority=issue.priority,
                due_date=issue.due_date,
                created=ms(issue.created),
                updated=ms(issue.updated),
                resolution_date=ms(issue.resolution_date) if issue.resolution_date else None,
                story_points=None if issue.issue_type == "Epic" else _STORY_POINTS[issue_id * 7919 % 7],
            )
            store._install(version)
            project = store.projects[project_id]
            project.next_number = max(project.next_number, number + 1)
        return store

    def _bot_user(self, email: str) -> JiraUser:
        digest = hashlib.sha1(email.casefold().encode(), usedforsecurity=False).hexdigest()
        return JiraUser(
            f"712020:{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}",
            "Accord Integration",
            email,
            True,
            True,
            self.timezone,
        )

    def set_integration_user(self, email: str) -> None:
        """Name the account the API token belongs to (``myself``, comment authors, ``currentUser()``)."""
        with self.lock:
            self.users.pop(self.bot.account_id, None)
            self.bot = self._bot_user(email)
            self._add_user(self.bot)

    def _add_user(self, user: JiraUser) -> None:
        self.users[user.account_id] = user
        if user.email_visible:
            self.users_by_email[user.email.casefold()] = user.account_id

    def _install(self, version: IssueVersion) -> None:
        """Add a brand-new issue (no prior version) to the indexes."""
        self.issues[version.id] = version
        self.issue_ids_by_key[version.key] = version.id
        self.project_issue_ids[version.project_id].append(version.id)
        self._live_pos[version.id] = len(self._live)
        self._live.append(version.id)

    # -- the catalogue JQL resolves values against (jql.Catalog) -------------------------------------
    def project_id(self, value: str) -> int | None:
        found = self.project_ids_by_key.get(value.upper())
        if found is None and value.isdigit() and int(value) in self.projects:
            found = int(value)
        return found if found is not None else self.project_ids_by_name.get(value.casefold())

    def project_key(self, project_id: int) -> str:
        return self.projects[project_id].key

    def account_id(self, value: str) -> str | None:
        if value in self.users:
            return value
        return self.users_by_email.get(value.casefold())

    def display_name(self, account_id: str) -> str:
        user = self.users.get(account_id)
        return user.display_name if user else ""

    def issue_id(self, key: str) -> int | None:
        found = self.issue_ids_by_key.get(key.upper())
        if found is None or self.issues[found].deleted:
            return None
        return found

    # -- reads ---------------------------------------------------------------------------------------
    def now(self) -> datetime:
        return self.clock.now()

    def format_time(self, moment: datetime) -> str:
        """Jira's timestamp form in the site zone: ``2022-12-08T02:22:18.889-0800``."""
        text = wall_clock(self.zone).millis_z(moment)  # the same text, several times faster
        if text is not None:
            return text
        local = moment.astimezone(self.zone)
        return f"{local:%Y-%m-%dT%H:%M:%S}.{local.microsecond // 1000:03d}{local:%z}"

    def get_issue(self, id_or_key: str, *, for_write: bool = False) -> IssueVersion:
        """The newest visible version; 404 for unknown, deleted or not-yet-visible (late) issues.

        ``for_write``: a write is about to follow, so a late change pending on the issue is made
        visible first (a pending delete then answers 404)."""
        with self.lock:
            issue_id = int(id_or_key) if id_or_key.isdigit() else self.issue_ids_by_key.get(id_or_key.upper())
            if for_write and issue_id is not None:
                self._settle(issue_id)
            version = self.issues.get(issue_id) if issue_id is not None else None
            if version is None or version.deleted:
                raise StoreError(404, ["Issue does not exist or you do not have permission to see it."])
            return version

    def get_project(self, id_or_key: str) -> Project:
        with self.lock:
            project_id = self.project_ids_by_key.get(id_or_key.upper())
            if project_id is None and id_or_key.isdigit() and int(id_or_key) in self.projects:
                project_id = int(id_or_key)
            if project_id is None:
                raise StoreError(404, [f"No project could be found with key '{id_or_key}'."])
            return self.projects[project_id]

    def history_of(self, version: IssueVersion) -> tuple[History, ...]:
        return version.history if version.history is not None else self.derived_history(version)

    def derived_history(self, version: IssueVersion) -> tuple[History, ...]:
        """The changelog of an issue as loaded from the world: its status transitions from To Do up to
        its current status, spread between ``created`` and the last transition. The last transition
        is at ``resolution_date`` for resolved issues, else at ``updated``."""
        path = _DERIVED_PATHS[version.status]
        if not path:
            return ()
        end = version.resolution_date if version.status == "Done" and version.resolution_date else version.updated
        span = end - version.created
        author = version.assignee or version.reporter
        histories: list[History] = []
        previous = "To Do"
        for step, status in enumerate(path, start=1):
            moment = end if step == len(path) else ms(version.created + span * step / len(path))
            items = [_status_item(previous, status)]
            if status == "Done":
                items.append(_resolution_item(resolved=True))
            histories.append(History(version.id * 10 + step, author, moment, tuple(items)))
            previous = status
        return tuple(histories)

    def comments_of(self, issue_id: int) -> list[Comment]:
        return self.comments.get(issue_id, [])

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {
                "projects": len(self.projects),
                "users": len(self.users),
                "issues": len(self._live),
                "comments": sum(len(c) for c in self.comments.values()),
                "properties": sum(len(p) for p in self.properties.values()),
                "pending": len(self.pending),
            }

    # -- search --------------------------------------------------------------------------------------
    def environment(self) -> jql.Environment:
        return jql.Environment(self, self.zone, self.now(), self.bot.account_id)

    def search_view(self, issue_id: int, reconcile: frozenset[int], cutoff: datetime) -> IssueVersion | None:
        """The issue as the search index has it at ``cutoff`` (``None``: not indexed, or deleted)."""
        version: IssueVersion | None = self.issues.get(issue_id)
        if issue_id not in reconcile:
            while version is not None and version.visible_since > cutoff:
                version = version.prior
        return None if version is None or version.deleted else version

    def search_cutoff(self) -> datetime:
        return self.now() - timedelta(seconds=self.search_lag_seconds)

    def search(self, text: str, reconcile: frozenset[int] = frozenset(), *, bounded: bool = True) -> list[int]:
        """Ids of the issues the index matches for JQL ``text``, in the query's order."""
        with self.lock:
            compiled = jql.compile_query(text, self.environment())
            if bounded and not compiled.bounded:
                raise jql.JqlError(UNBOUNDED_JQL)
            candidates: Iterable[int]
            if compiled.project_ids is not None:
                candidates = [i for pid in sorted(compiled.project_ids) for i in self.project_issue_ids[pid]]
            else:
                candidates = self.issues.keys()
            cutoff = self.search_cutoff()
            predicate = compiled.predicate
            matched: list[IssueVersion] = []
            for issue_id in candidates:
                version = self.search_view(issue_id, reconcile, cutoff)
                if version is not None and predicate(version):
                    matched.append(version)
            compiled.sort(matched)
            return [v.id for v in matched]

    def keep_result(self, text: str, ids: list[int], reconcile: frozenset[int]) -> ResultSet:
        """Keep a result set for later pages; evicts the oldest beyond the limits."""
        with self.lock:
            result = ResultSet(secrets.token_hex(8), text, ids, reconcile)
            self._results[result.handle] = result
            self._result_ids += len(ids)
            while len(self._results) > MAX_RESULT_SETS or (
                self._result_ids > RESULT_ID_BUDGET and len(self._results) > 1
            ):
                _, evicted = self._results.popitem(last=False)
                self._result_ids -= len(evicted.ids)
            return result

    def page_token(self, result: ResultSet, offset: int) -> str:
        raw = f"{self._token_salt}:{result.handle}:{offset}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def resolve_token(self, token: str, text: str) -> tuple[ResultSet, int]:
        """The result set and offset a token points at; 400 when unknown, expired or for another query."""
        with self.lock:
            try:
                raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
                salt, handle, offset_text = raw.split(":")
                offset = int(offset_text)
            except (ValueError, UnicodeDecodeError, binascii.Error):
                raise StoreError(400, [STALE_PAGE_MESSAGE]) from None
            result = self._results.get(handle)
            if salt != self._token_salt or result is None or result.jql != text or not 0 < offset <= len(result.ids):
                raise StoreError(400, [STALE_PAGE_MESSAGE])
            self._results.move_to_end(handle)
            return result, offset

    # -- writes through the API ----------------------------------------------------------------------
    def _commit(self, new: IssueVersion, visible_since: datetime) -> IssueVersion:
        """Make ``new`` the newest version of its issue, keeping a bounded chain of prior versions."""
        old = self.issues.get(new.id)
        new.visible_since = visible_since
        new.prior = old
        depth, cursor = 1, old
        while cursor is not None:
            if depth >= MAX_PRIOR_VERSIONS:
                cursor.prior = None
                break
            depth += 1
            cursor = cursor.prior
        if old is None:
            self._install(new)
        else:
            self.issues[new.id] = new
        if new.deleted:
            self._drop_live(new.id)
        return new

    def _drop_live(self, issue_id: int) -> None:
        pos = self._live_pos.pop(issue_id, None)
        if pos is None:
            return
        last = self._live.pop()
        if last != issue_id:
            self._live[pos] = last
            self._live_pos[last] = pos

    def _settle(self, issue_id: int) -> None:
        """An API write to an issue with a late change first makes that change visible."""
        entry = self.pending.pop(issue_id, None)
        if entry is not None:
            self._commit(entry[0], self.now())

    def _history(
        self, base: IssueVersion, author: str, moment: datetime, items: list[ChangeItem]
    ) -> tuple[History, ...]:
        history = self.history_of(base)
        if not items:
            return history
        self._next_history_id += 1
        return (*history, History(self._next_history_id, author, moment, tuple(items)))

    def create_issue(
        self,
        *,
        project: Project,
        issue_type: str,
        summary: str,
        description: str | dict[str, Any] | None,
        parent_id: int | None,
        assignee: str | None,
        reporter: str | None,
        labels: list[str],
        priority: str,
        due_date: date | None,
        story_points: float | None,
    ) -> IssueVersion:
        with self.lock:
            now = self.now()
            version = self._new_issue(
                project,
                issue_type,
                summary,
                parent_id,
                assignee,
                reporter or self.bot.account_id,
                labels,
                priority,
                due_date,
                now,
                creator=self.bot.account_id,
                description=description,
                story_points=story_points,
            )
            return self._commit(version, now)

    def _new_issue(
        self,
        project: Project,
        issue_type: str,
        summary: str,
        parent_id: int | None,
        assignee: str | None,
        reporter: str,
        labels: list[str],
        priority: str,
        due_date: date | None,
        stamp: datetime,
        *,
        creator: str,
        description: str | dict[str, Any] | None = None,
        story_points: float | None = None,
    ) -> IssueVersion:
        issue_id = self._next_issue_id
        self._next_issue_id += 1
        number = project.next_number
        project.next_number += 1
        return IssueVersion(
            id=issue_id,
            key=f"{project.key}-{number}",
            number=number,
            project_id=project.id,
            summary=summary,
            description=description,
            issue_type=issue_type,
            status="To Do",
            parent_id=parent_id,
            assignee=assignee,
            reporter=reporter,
            creator=creator,
            labels=tuple(labels),
            priority=priority,
            due_date=due_date,
            created=stamp,
            updated=stamp,
            resolution_date=None,
            story_points=story_points,
            history=(),
        )

    def edit_issue(self, issue_id: int, changes: dict[str, Any], *, author: str | None = None) -> IssueVersion:
        """Apply field changes (attribute name -> new value), recording changelog items."""
        with self.lock:
            self._settle(issue_id)
            old = self.issues[issue_id]
            now = self.now()
            items = [item for name, value in changes.items() if (item := self._change_item(old, name, value))]
            if "status" in changes and changes["status"] != old.status:
                changes = {**changes, **_resolution_changes(old.status, changes["status"], now)}
                if (changes["status"] == "Done") != (old.status == "Done"):
                    items.append(_resolution_item(resolved=changes["status"] == "Done"))
            new = dataclasses.replace(
                old,
                **changes,
                updated=now,
                history=self._history(old, author or self.bot.account_id, now, items),
            )
            return self._commit(new, now)

    def _change_item(self, old: IssueVersion, name: str, value: Any) -> ChangeItem | None:
        before = getattr(old, name)
        if before == value:
            return None
        if name == "status":
            return _status_item(before, value)
        if name in ("assignee", "reporter"):
            return ChangeItem(
                name,
                "jira",
                name,
                before,
                self.display_name(before) if before else None,
                value,
                self.display_name(value) if value else None,
            )
        if name == "labels":
            return ChangeItem("labels", "jira", "labels", None, " ".join(before), None, " ".join(value))
        if name == "due_date":
            return ChangeItem(
                "duedate",
                "jira",
                "duedate",
                before.isoformat() if before else None,
                f"{before} 00:00:00.0" if before else None,
                value.isoformat() if value else None,
                f"{value} 00:00:00.0" if value else None,
            )
        if name == "priority":
            return ChangeItem("priority", "jira", "priority", PRIORITIES[before], before, PRIORITIES[value], value)
        if name == "summary":
            return ChangeItem("summary", "jira", "summary", None, before, None, value)
        if name == "description":
            return ChangeItem("description", "jira", "description", None, as_text(before), None, as_text(value))
        if name == "parent_id":
            return ChangeItem(
                "IssueParentAssociation",
                "jira",
                None,
                str(before) if before else None,
                self.issues[before].key if before else None,
                str(value) if value else None,
                self.issues[value].key if value else None,
            )
        if name == "story_points":
            return ChangeItem(
                "Story point estimate",
                "custom",
                "customfield_10016",
                None,
                None if before is None else f"{before:g}",
                None,
                None if value is None else f"{value:g}",
            )
        return None

    def delete_issue(self, issue_id: int) -> None:
        with self.lock:
            self._settle(issue_id)
            old = self.issues[issue_id]
            now = self.now()
            self._commit(dataclasses.replace(old, deleted=True, updated=now), now)

    def add_comment(self, issue_id: int, body: str | dict[str, Any]) -> Comment:
        """Store a comment as given; adding one bumps the issue's ``updated`` (as in Jira)."""
        with self.lock:
            self._settle(issue_id)
            now = self.now()
            self._next_comment_id += 1
            comment = Comment(self._next_comment_id, issue_id, self.bot.account_id, body, now, now)
            self.comments.setdefault(issue_id, []).append(comment)
            old = self.issues[issue_id]
            self._commit(dataclasses.replace(old, updated=now), now)
            return comment

    def set_property(self, issue_id: int, key: str, value: Any) -> bool:
        """Set an entity property; True when it was created (201), False when replaced (200)."""
        with self.lock:
            self._settle(issue_id)
            bag = self.properties.setdefault(issue_id, {})
            created = key not in bag
            bag[key] = value
            self._touch_for_property(issue_id)
            return created

    def delete_property(self, issue_id: int, key: str) -> bool:
        with self.lock:
            bag = self.properties.get(issue_id, {})
            if key not in bag:
                return False
            del bag[key]
            self._touch_for_property(issue_id)
            return True

    def _touch_for_property(self, issue_id: int) -> None:
        if self.property_writes_bump_updated:
            now = self.now()
            self._commit(dataclasses.replace(self.issues[issue_id], updated=now), now)

    # -- moving the world on (MutableStore) ----------------------------------------------------------
    def mutate(self, rng: random.Random, count: int, stamp: datetime, *, late_share: float) -> list[Change]:
        """``count`` random changes, all with ``updated = stamp``; a ``late_share`` of them stays
        hidden (reads show the old state) until ``release_pending``."""
        with self.lock:
            stamp = ms(stamp)
            touched: set[int] = set()
            changes: list[Change] = []
            kinds = [k for k, _ in _MUTATIONS]
            weights = [w for _, w in _MUTATIONS]
            for _ in range(count):
                kind = rng.choices(kinds, weights)[0]
                late = rng.random() < late_share
                made = self._mutation(rng, kind, stamp, touched)
                if made is None:
                    continue
                version, change = made
                touched.add(version.id)
                if late:
                    change = dataclasses.replace(change, late=True)
                    self.pending[version.id] = (version, change)
                else:
                    self._commit(version, self.now())
                changes.append(change)
            return changes

    def release_pending(self) -> list[Change]:
        with self.lock:
            released = list(self.pending.values())
            self.pending.clear()
            now = self.now()
            for version, _ in released:
                self._commit(version, now)
            return [change for _, change in released]

    def _pick(
        self, rng: random.Random, touched: set[int], accept: Callable[[IssueVersion], bool] | None = None
    ) -> IssueVersion | None:
        for _ in range(20):
            if not self._live:
                return None
            issue_id = self._live[rng.randrange(len(self._live))]
            if issue_id in touched or issue_id in self.pending:
                continue
            version = self.issues[issue_id]
            if accept is None or accept(version):
                return version
        return None

    def _mutation(
        self, rng: random.Random, kind: str, stamp: datetime, touched: set[int]
    ) -> tuple[IssueVersion, Change] | None:
        if kind == "create":
            return self._mutate_create(rng, stamp)
        if kind == "delete":
            old = self._pick(rng, touched, lambda v: v.issue_type != "Epic")
            if old is None:
                return None
            new = dataclasses.replace(old, deleted=True, updated=stamp)
            return new, Change("jira", "hard_delete", "issue", str(old.id), stamp, detail="issue deleted")
        old = self._pick(rng, touched)
        if old is None:
            return None
        author = old.assignee or old.reporter
        changes: dict[str, Any]
        if kind == "status":
            if old.status == "Done" and rng.random() < 0.8:
                return None  # reopening is rare
            target = rng.choice(TRANSITIONS[old.status])
            changes = {"status": target, **_resolution_changes(old.status, target, stamp)}
            detail = f"status {old.status} -> {target}"
        elif kind == "duedate":
            due = stamp.astimezone(self.zone).date() + timedelta(days=rng.randint(-10, 30))
            if due == old.due_date:
                due += timedelta(days=1)
            changes = {"due_date": due}
            detail = f"duedate {old.due_date} -> {due}"
        elif kind == "assignee":
            if old.assignee is not None and rng.random() < 0.25:
                changes, detail = {"assignee": None}, "unassigned"
            else:
                people = sorted(a for a in self.users if a != old.assignee and a != self.bot.account_id)
                if not people:
                    return None
                changes, detail = {"assignee": rng.choice(people)}, "assignee changed"
        elif kind == "label":
            if "blocked" in old.labels:
                changes = {"labels": tuple(label for label in old.labels if label != "blocked")}
                detail = "label blocked removed"
            else:
                changes, detail = {"labels": (*old.labels, "blocked")}, "label blocked added"
        else:  # summary
            base = old.summary.split(" (", 1)[0]
            options = sorted({f"{base[:200]} ({tag})" for tag in _SUMMARY_TAGS} - {old.summary})
            changes = {"summary": rng.choice(options)}
            detail = "summary edited"
        items = [item for name, value in changes.items() if (item := self._change_item(old, name, value))]
        if "status" in changes and (changes["status"] == "Done") != (old.status == "Done"):
            items.append(_resolution_item(resolved=changes["status"] == "Done"))
        new = dataclasses.replace(old, **changes, updated=stamp, history=self._history(old, author, stamp, items))
        return new, Change("jira", "update", "issue", str(old.id), stamp, detail=detail)

    def _mutate_create(self, rng: random.Random, stamp: datetime) -> tuple[IssueVersion, Change] | None:
        if not self.projects:
            return None
        project = self.projects[rng.choice(sorted(self.projects))]
        issue_type = rng.choice(("Story", "Story", "Task", "Bug"))
        epics = [
            i
            for i in self.project_issue_ids[project.id]
            if (v := self.issues[i]).issue_type == "Epic" and not v.deleted
        ]
        parent_id = rng.choice(epics) if epics and rng.random() < 0.7 else None
        people = sorted(a for a in self.users if a != self.bot.account_id)
        assignee = rng.choice(people) if people and rng.random() < 0.85 else None
        due = stamp.astimezone(self.zone).date() + timedelta(days=rng.randint(3, 40)) if rng.random() < 0.5 else None
        version = self._new_issue(
            project,
            issue_type,
            f"{rng.choice(_NEW_VERBS)} {rng.choice(_NEW_OBJECTS)}",
            parent_id,
            assignee,
            project.lead_account_id,
            [],
            rng.choice(tuple(PRIORITIES)[:4]),
            due,
            stamp,
            creator=project.lead_account_id,
        )
        under = f" under epic {self.issues[parent_id].key}" if parent_id is not None else ""
        detail = f"created {issue_type} {version.key}{under}"
        return version, Change("jira", "create", "issue", str(version.id), stamp, detail=detail)


def _status_item(before: str, after: str) -> ChangeItem:
    return ChangeItem("status", "jira", "status", STATUS_IDS[before], before, STATUS_IDS[after], after)


def _resolution_item(*, resolved: bool) -> ChangeItem:
    if resolved:
        return ChangeItem("resolution", "jira", "resolution", None, None, RESOLUTION_DONE_ID, RESOLUTION_DONE)
    return ChangeItem("resolution", "jira", "resolution", RESOLUTION_DONE_ID, RESOLUTION_DONE, None, None)


def _resolution_changes(before: str, after: str, stamp: datetime) -> dict[str, Any]:
    """Moving to Done sets ``resolution_date``; leaving Done clears it."""
    if after == "Done" and before != "Done":
        return {"resolution_date": stamp}
    if before == "Done" and after != "Done":
        return {"resolution_date": None}
    return {}
