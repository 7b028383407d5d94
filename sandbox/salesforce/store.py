"""The org's records: loaded from a ``World``, queried with SOQL, written through validated calls,
moved on by ``mutate``.

Records are plain dicts keyed by canonical field names and are never changed in place: a write
stores a new dict. A query result can therefore keep references to the records it matched and
serve later pages from that snapshot without copying anything.

Deletes follow Salesforce: a delete moves the record to the recycle bin (``IsDeleted = true``,
visible to ``queryAll`` and ``getDeleted``) together with the children it cascades to; the bin is
emptied after ``recycle_bin_days``; a hard delete removes the record at once and leaves no trace
in ``queryAll`` or ``getDeleted``. ``earliestDateAvailable`` reports the last physical removal.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sandbox.clock import Clock
from sandbox.mutations import Change, ChangeKind
from sandbox.salesforce import ids
from sandbox.salesforce.query import CompiledQuery, Record, compile_query
from sandbox.salesforce.schema import FieldDef, ObjectDef, OrgSchema, load_schema
from sandbox.salesforce.soql import parse
from sandbox.salesforce.values import FieldValueError, as_utc, floor_minute, parse_write_value
from sandbox.world import World

API = "salesforce"
SYSTEM_FIELDS = frozenset(
    {
        "Id",
        "IsDeleted",
        "CreatedDate",
        "CreatedById",
        "LastModifiedDate",
        "LastModifiedById",
        "SystemModstamp",
    }
)


@dataclass(frozen=True)
class ErrorItem:
    """One entry of a Salesforce error list (``errorCode``/``statusCode``, ``message``, ``fields``)."""

    code: str
    message: str
    fields: tuple[str, ...] = ()


class RecordError(Exception):
    """A write rejected for one record; ``status`` is what the single-record REST call answers."""

    def __init__(self, code: str, message: str, fields: tuple[str, ...] = (), status: int = 400) -> None:
        super().__init__(message)
        self.item = ErrorItem(code, message, fields)
        self.status = status


class AmbiguousExternalId(Exception):
    """An upsert or lookup by External ID matched more than one record."""

    def __init__(self, object_name: str, record_ids: list[str]) -> None:
        super().__init__(f"{len(record_ids)} {object_name} records match")
        self.object_name = object_name
        self.record_ids = record_ids


def not_found() -> RecordError:
    return RecordError("NOT_FOUND", "The requested resource does not exist", status=404)


@dataclass
class _Pending:
    """A late change: planned (and reported) in one round, applied by ``release_pending``."""

    changes: list[Change]
    apply: Callable[[], None]
    locked: tuple[str, ...]


@dataclass
class Journal:
    """What a block of writes changed, so an all-or-none request can undo it."""

    cascaded: dict[str, list[str]]
    entries: list[tuple[ObjectDef, str, Record | None]] = field(default_factory=list)


@dataclass
class UpdatedResult:
    ids: list[str]
    latest_date_covered: datetime


@dataclass
class DeletedResult:
    records: list[tuple[str, datetime]]
    earliest_date_available: datetime
    latest_date_covered: datetime


class SalesforceStore:
    """All records of the sandbox org. Thread-safe: every public method takes the store's lock."""

    recycle_bin_days = 15
    replication_window_days = 30
    max_replication_ids = 600_000

    def __init__(self, schema: OrgSchema, clock: Clock) -> None:
        self.schema = schema
        self.clock = clock
        self.lock = threading.RLock()
        self._ids = ids.IdFactory(schema.pod)
        self._tables: dict[str, dict[str, Record]] = {name: {} for name in schema.objects}
        self._index: dict[str, Record] = {}
        self._keys: dict[str, str] = {}  # world key -> Salesforce id
        # (object, field) -> lower-cased value -> ids, for unique and External ID fields
        self._unique: dict[tuple[str, str], dict[str, set[str]]] = {
            (o.name, f.name): {} for o in schema.objects.values() for f in o.unique_fields
        }
        self._bin: deque[tuple[datetime, str]] = deque()  # soft deletes in deletion order, for purging
        self._cascaded: dict[str, list[str]] = {}  # parent id -> children deleted with it
        self._loaded_at = floor_minute(clock.now())
        self._physically_deleted: dict[str, datetime] = {}
        self._pending: list[_Pending] = []
        self._locked: set[str] = set()
        self.integration_user_id = ""
        self._journal: Journal | None = None

    # -- loading ---------------------------------------------------------------------------------------------
    @classmethod
    def from_world(cls, world: World, clock: Clock) -> SalesforceStore:
        """The org rendering ``world``: Users, Accounts, Contacts, Opportunities, contact roles."""
        store = cls(load_schema(), clock)
        with store.lock:
            store._load(world)
        return store

    def _load(self, world: World) -> None:
        users = self.schema.objects["User"]
        for user in world.users:
            self._keys[user.key] = self._ids.new(users.key_prefix)
        earliest = min([u.created for u in world.users], default=world.generated_at)
        self.integration_user_id = self.ensure_user(self.schema.default_username, created=as_utc(earliest))
        for user in world.users:
            self._insert(
                "User",
                {
                    "Username": user.email,
                    "FirstName": user.first_name,
                    "LastName": user.last_name,
                    "Email": user.email,
                    "Title": user.title,
                    "IsActive": True,
                    "TimeZoneSidKey": user.timezone,
                    "ManagerId": self._keys.get(user.manager_key) if user.manager_key else None,
                },
                created=user.created,
                modified=user.created,
                by=self.integration_user_id,
                record_id=self._keys[user.key],
            )
        for client in world.clients:
            owner = self._keys[client.owner_key]
            self._keys[client.key] = self._insert(
                "Account",
                {
                    "Name": client.name[:255],
                    "OwnerId": owner,
                    "Industry": client.industry,
                    "Website": client.website,
                    "Email_Domains__c": ";".join(client.domains)[:255],
                },
                created=client.created,
                modified=client.modified,
                by=owner,
            )
        owners = {c.key: self._keys[c.owner_key] for c in world.clients}
        for contact in world.contacts:
            owner = owners[contact.client_key]
            self._keys[contact.key] = self._insert(
                "Contact",
                {
                    "AccountId": self._keys[contact.client_key],
                    "FirstName": contact.first_name,
                    "LastName": contact.last_name,
                    "Email": contact.email,
                    "Title": contact.title,
                    "Phone": contact.phone,
                    "OwnerId": owner,
                },
                created=contact.created,
                modified=contact.modified,
                by=owner,
            )
        for engagement in world.engagements:
            owner = self._keys[engagement.owner_key]
            self._keys[engagement.key] = self._insert(
                "Opportunity",
                {
                    "Name": engagement.name[:120],
                    "AccountId": self._keys[engagement.client_key],
                    "StageName": engagement.stage,
                    "CloseDate": engagement.close_date,
                    "Amount": float(engagement.amount),
                    "OwnerId": owner,
                    "Jira_Project_Key__c": engagement.jira_project_key,
                },
                created=engagement.created,
                modified=engagement.modified,
                by=owner,
            )
        for role in world.roles:
            self._keys[role.key] = self._insert(
                "OpportunityContactRole",
                {
                    "OpportunityId": self._keys[role.engagement_key],
                    "ContactId": self._keys[role.contact_key],
                    "Role": role.role,
                    "IsPrimary": role.is_primary,
                },
                created=role.created,
                modified=role.modified,
                by=self.integration_user_id,
            )

    def ensure_user(self, username: str, created: datetime | None = None) -> str:
        """The id of the User with ``username``, created (as an API-only user) when missing."""
        with self.lock:
            found = self._lookup_unique("User", "Username", username)
            if found:
                return found[0]
            moment = created or self.clock.now()
            user_id = self._ids.new(self.schema.objects["User"].key_prefix)
            return self._insert(
                "User",
                {
                    "Username": username,
                    "FirstName": "Accord",
                    "LastName": "Integration",
                    "Email": username,
                    "Title": "Integration User",
                    "IsActive": True,
                    "TimeZoneSidKey": "Etc/UTC",
                },
                created=moment,
                modified=moment,
                by=user_id,
                record_id=user_id,
            )

    def _insert(
        self,
        object_name: str,
        values: dict[str, Any],
        *,
        created: datetime,
        modified: datetime,
        by: str,
        record_id: str | None = None,
    ) -> str:
        """Store a new record from trusted values (defaults and derived fields filled in)."""
        obj = self.schema.objects[object_name]
        record_id = record_id or self._ids.new(obj.key_prefix)
        record: Record = {}
        for name, f in obj.fields.items():
            if name in values:
                value = values[name]
                record[name] = None if value == "" else value  # Salesforce stores empty text as null
            elif f.type == "boolean":
                record[name] = bool(f.default) if f.default is not None else False
            elif f.default == "$user":
                record[name] = by
            else:
                record[name] = f.default
        record["Id"] = record_id
        if obj.has_is_deleted:
            record["IsDeleted"] = False
        record["CreatedDate"] = as_utc(created)
        record["CreatedById"] = by
        record["LastModifiedDate"] = as_utc(modified)
        record["LastModifiedById"] = by
        record["SystemModstamp"] = as_utc(modified)
        self._derive(obj, record)
        self._put(obj, record, None)
        return record_id

    # -- low-level storage -----------------------------------------------------------------------------------
    def _put(self, obj: ObjectDef, record: Record, previous: Record | None) -> None:
        record_id = record["Id"]
        if self._journal is not None:
            self._journal.entries.append((obj, record_id, previous))
        self._tables[obj.name][record_id] = record
        self._index[record_id] = record
        for f in obj.unique_fields:
            old = previous.get(f.name) if previous else None
            new = record.get(f.name)
            if old == new:
                continue
            values = self._unique[(obj.name, f.name)]
            if isinstance(old, str):
                bucket = values.get(old.lower())
                if bucket:
                    bucket.discard(record_id)
                    if not bucket:
                        del values[old.lower()]
            if isinstance(new, str):
                values.setdefault(new.lower(), set()).add(record_id)

    def _unput(self, obj: ObjectDef, record: Record) -> None:
        record_id = record["Id"]
        self._tables[obj.name].pop(record_id, None)
        self._index.pop(record_id, None)
        for f in obj.unique_fields:
            value = record.get(f.name)
            if isinstance(value, str):
                bucket = self._unique[(obj.name, f.name)].get(value.lower())
                if bucket:
                    bucket.discard(record_id)

    def _remove(self, obj: ObjectDef, record: Record, moment: datetime) -> None:
        """Physically delete: the record leaves no trace, and ``earliestDateAvailable`` moves on."""
        self._unput(obj, record)
        self._cascaded.pop(record["Id"], None)
        previous = self._physically_deleted.get(obj.name)
        if previous is None or moment > previous:
            self._physically_deleted[obj.name] = moment

    def _lookup_unique(self, object_name: str, field_name: str, value: str) -> list[str]:
        """Live records whose unique/External ID field equals ``value`` (case-insensitively)."""
        bucket = self._unique.get((object_name, field_name), {}).get(value.lower(), set())
        found = [i for i in bucket if not self._index[i].get("IsDeleted", False)]
        return sorted(found)

    def _derive(self, obj: ObjectDef, record: Record) -> None:
        for f in obj.derived_fields:
            rule = f.derived
            assert rule is not None  # derived_fields holds only fields with a rule
            if rule.rule == "concat":
                parts = [str(record[s]) for s in rule.sources if record.get(s)]
                record[f.name] = " ".join(parts) or None
            elif rule.rule == "in_values":
                value = record.get(rule.sources[0])
                record[f.name] = isinstance(value, str) and value.lower() in rule.values
            else:  # account_of: the Account a related record belongs to
                record[f.name] = self._account_of([record.get(s) for s in rule.sources])

    def _account_of(self, related_ids: list[Any]) -> str | None:
        for related in related_ids:
            if not related:
                continue
            target = self._index.get(related)
            if target is None:
                continue
            if related.startswith(self.schema.objects["Account"].key_prefix):
                return str(related)
            account = target.get("AccountId")
            if account:
                return str(account)
        return None

    def object_name(self, record_id: str) -> str:
        """The object of a stored record's id (``KeyError`` for an id of no known object)."""
        obj = self.schema.object_for_id(record_id)
        if obj is None:
            raise KeyError(record_id)
        return obj.name

    def lookup(self, record_id: str) -> Record | None:
        """Any stored record (live or in the recycle bin) by its 18-character id."""
        return self._index.get(record_id)

    # -- reads -----------------------------------------------------------------------------------------------
    def id_for(self, world_key: str) -> str:
        """The Salesforce id the org gave the world's record ``world_key`` (e.g. ``client-00001``)."""
        return self._keys[world_key]

    def counts(self) -> dict[str, int]:
        with self.lock:
            self._purge(self.clock.now())
            out = {
                name: sum(1 for r in table.values() if not r.get("IsDeleted", False))
                for name, table in self._tables.items()
            }
            out["recycle_bin"] = sum(
                1 for table in self._tables.values() for r in table.values() if r.get("IsDeleted", False)
            )
            out["pending"] = sum(len(p.changes) for p in self._pending)
            return out

    def compile(self, soql: str) -> CompiledQuery:
        """Parse and bind ``soql``; raises ``SoqlSyntaxError`` or ``QueryError``."""
        return compile_query(parse(soql), self.schema, self.lookup, self.clock.now())

    def run(self, compiled: CompiledQuery, *, include_deleted: bool) -> list[Record]:
        """The query's result, computed once (the caller keeps it behind a locator)."""
        with self.lock:
            self._purge(self.clock.now())
            table = self._tables[compiled.root.name].values()
            if include_deleted:
                return compiled.run(table)
            return compiled.run(r for r in table if not r.get("IsDeleted", False))

    def get(self, object_name: str, record_id: str) -> Record:
        """A live record of ``object_name``; raises ``RecordError`` NOT_FOUND/MALFORMED_ID."""
        with self.lock:
            obj = self._object(object_name)
            normalized = self._check_id(obj, record_id)
            record = self._tables[obj.name].get(normalized)
            if record is None or record.get("IsDeleted", False):
                raise not_found()
            return record

    def find_by_external_id(self, object_name: str, field_name: str, value: str) -> list[Record]:
        with self.lock:
            obj = self._object(object_name)
            f = self._external_id_field(obj, field_name)
            if f.type == "id":
                normalized = ids.normalize(value)
                record = self._tables[obj.name].get(normalized) if normalized else None
                return [record] if record is not None and not record.get("IsDeleted", False) else []
            return [self._index[i] for i in self._lookup_unique(obj.name, f.name, value)]

    def updated(self, object_name: str, start: datetime, end: datetime) -> UpdatedResult:
        """sObject Get Updated: ids whose SystemModstamp is in [start, end), seconds ignored."""
        with self.lock:
            obj = self._object(object_name)
            now = self.clock.now()
            start, end = self._replication_window(start, end, now)
            found = [
                r["Id"]
                for r in self._tables[obj.name].values()
                if not r.get("IsDeleted", False) and start <= r["SystemModstamp"] < end
            ]
            self._check_id_limit(found)
            return UpdatedResult(found, self._latest_covered(end, now))

    def deleted(self, object_name: str, start: datetime, end: datetime) -> DeletedResult:
        """sObject Get Deleted: records in the recycle bin deleted in [start, end), seconds ignored."""
        with self.lock:
            obj = self._object(object_name)
            now = self.clock.now()
            self._purge(now)
            start, end = self._replication_window(start, end, now)
            found = [
                (r["Id"], r["SystemModstamp"])
                for r in self._tables[obj.name].values()
                if r.get("IsDeleted", False) and start <= r["SystemModstamp"] < end
            ]
            self._check_id_limit(found)
            earliest = self._physically_deleted.get(obj.name, self._loaded_at)
            return DeletedResult(found, earliest, self._latest_covered(end, now))

    def _replication_window(self, start: datetime, end: datetime, now: datetime) -> tuple[datetime, datetime]:
        start, end = floor_minute(as_utc(start)), floor_minute(as_utc(end))
        if start >= end:
            raise RecordError("INVALID_REPLICATION_DATE", "startDate must chronologically precede endDate", status=400)
        if start < now - timedelta(days=self.replication_window_days):
            raise RecordError(
                "INVALID_REPLICATION_DATE",
                f"startDate cannot be more than {self.replication_window_days} days ago",
                status=400,
            )
        return start, end

    def _latest_covered(self, end: datetime, now: datetime) -> datetime:
        """Never past now, and never past a transaction still open (a pending late change)."""
        covered = min(end, floor_minute(now))
        pending = [c.stamp for p in self._pending for c in p.changes]
        if pending:
            covered = min(covered, floor_minute(min(pending)))
        return covered

    def _check_id_limit(self, found: list[Any]) -> None:
        if len(found) > self.max_replication_ids:
            raise RecordError(
                "EXCEEDED_ID_LIMIT",
                "ID limit exceeded; choose start and end dates that are closer together",
                status=400,
            )

    # -- validation ------------------------------------------------------------------------------------------
    def _object(self, object_name: str) -> ObjectDef:
        obj = self.schema.object(object_name)
        if obj is None:
            raise not_found()
        return obj

    def _check_id(self, obj: ObjectDef, record_id: str) -> str:
        normalized = ids.normalize(record_id)
        if normalized is None or not normalized.startswith(obj.key_prefix):
            raise RecordError(
                "MALFORMED_ID",
                f"{obj.label} ID: id value of incorrect type: {record_id}",
                ("Id",),
                status=400,
            )
        return normalized

    def _external_id_field(self, obj: ObjectDef, field_name: str) -> FieldDef:
        f = obj.field(field_name)
        if f is None or not (f.external_id or f.type == "id"):
            raise RecordError(
                "NOT_FOUND",
                f"Provided external ID field does not exist or is not accessible: {field_name}",
                status=404,
            )
        return f

    def _prepare(self, obj: ObjectDef, body: dict[str, Any], existing: Record | None) -> dict[str, Any]:
        """Validated stored values for the fields in ``body``; raises ``RecordError``."""
        creating = existing is None
        changes: dict[str, Any] = {}
        read_only: list[str] = []
        for key, raw in body.items():
            if key == "attributes":
                continue
            f = obj.field(key)
            if f is None:
                raise RecordError("INVALID_FIELD", f"No such column '{key}' on sobject of type {obj.name}", ())
            if not (f.createable if creating else f.updateable):
                read_only.append(f.name)
                continue
            try:
                value = parse_write_value(f, raw)
            except FieldValueError as exc:
                raise RecordError(exc.code, exc.message, (f.name,)) from None
            if f.type == "reference" and value is not None:
                value = self._check_reference(f, str(value))
            if f.type == "picklist" and isinstance(value, str):
                value = next((v for v in f.values if v.lower() == value.lower()), value)
            changes[f.name] = value
        if read_only:
            raise RecordError(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {', '.join(read_only)}. Please check the security settings "
                "of this field and verify that it is read/write for your profile or permission set.",
                tuple(read_only),
            )
        missing = []
        for f in obj.fields.values():
            if not f.required:
                continue
            present = changes.get(f.name) if f.name in changes else (existing or {}).get(f.name)
            if present is None and not (creating and f.default is not None):
                missing.append(f.name)
        if missing:
            raise RecordError(
                "REQUIRED_FIELD_MISSING",
                f"Required fields are missing: [{', '.join(missing)}]",
                tuple(missing),
            )
        for f in obj.fields.values():
            if f.unique and isinstance(changes.get(f.name), str):
                clash = [
                    i
                    for i in self._lookup_unique(obj.name, f.name, changes[f.name])
                    if existing is None or i != existing["Id"]
                ]
                if clash:
                    raise RecordError(
                        "DUPLICATE_VALUE",
                        f"duplicate value found: {f.name} duplicates value on record with id: {clash[0]}",
                        (f.name,),
                    )
        return changes

    def _check_reference(self, f: FieldDef, value: str) -> str:
        normalized = ids.normalize(value)
        if normalized is None:
            raise RecordError("MALFORMED_ID", f"{f.label}: id value of incorrect type: {value}", (f.name,))
        target_obj = self.schema.object_for_id(normalized)
        known_prefixes = {o.key_prefix for o in self.schema.objects.values() if o.name in f.reference_to}
        if target_obj is not None and target_obj.key_prefix not in known_prefixes:
            raise RecordError("FIELD_INTEGRITY_EXCEPTION", f"{f.label}: id value of incorrect type: {value}", (f.name,))
        target = self._index.get(normalized)
        if target is None:
            raise RecordError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", (f.name,))
        if target.get("IsDeleted", False):
            raise RecordError("ENTITY_IS_DELETED", "entity is deleted", (f.name,))
        return normalized

    # -- writes (the REST API's) -----------------------------------------------------------------------------
    @contextmanager
    def journal(self) -> Iterator[Journal]:
        """Record the writes of the block (holding the lock throughout) so ``rollback`` can undo them."""
        with self.lock:
            journal = Journal(cascaded={k: list(v) for k, v in self._cascaded.items()})
            self._journal = journal
            try:
                yield journal
            finally:
                self._journal = None

    def rollback(self, journal: Journal) -> None:
        """Undo every write recorded in ``journal`` (an all-or-none request that failed)."""
        with self.lock:
            active, self._journal = self._journal, None  # undoing is not itself journaled
            for obj, record_id, previous in reversed(journal.entries):
                current = self._index.get(record_id)
                if previous is None:
                    if current is not None:
                        self._unput(obj, current)
                else:
                    self._put(obj, previous, current)
            self._cascaded = journal.cascaded
            journal.entries.clear()
            self._journal = active

    def create(self, object_name: str, body: dict[str, Any], *, user_id: str) -> str:
        with self.lock:
            obj = self._object(object_name)
            if "Id" in body or "id" in body:
                raise RecordError(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    "Record ID: cannot specify Id in an insert call",
                    ("Id",),
                )
            changes = self._prepare(obj, body, None)
            now = self.clock.now()
            return self._insert(obj.name, changes, created=now, modified=now, by=user_id)

    def update(self, object_name: str, record_id: str, body: dict[str, Any], *, user_id: str) -> None:
        with self.lock:
            obj = self._object(object_name)
            existing = self._live_for_write(obj, record_id)
            body = {k: v for k, v in body.items() if k.lower() != "id"}
            changes = self._prepare(obj, body, existing)
            self._apply_update(obj, existing, changes, self.clock.now(), user_id)

    def upsert(
        self, object_name: str, field_name: str, value: str, body: dict[str, Any], *, user_id: str
    ) -> tuple[str, bool]:
        """Create or update by External ID: (id, created). Raises ``AmbiguousExternalId`` on >1 match."""
        with self.lock:
            obj = self._object(object_name)
            f = self._external_id_field(obj, field_name)
            matches = self.find_by_external_id(obj.name, f.name, value)
            if len(matches) > 1:
                raise AmbiguousExternalId(obj.name, [r["Id"] for r in matches])
            body = {k: v for k, v in body.items() if k.lower() != f.name.lower()}
            if matches:
                existing = matches[0]
                changes = self._prepare(obj, body, existing)
                self._apply_update(obj, existing, changes, self.clock.now(), user_id)
                return existing["Id"], False
            if f.type == "id":
                raise not_found()
            changes = self._prepare(obj, {**body, f.name: value}, None)
            now = self.clock.now()
            return self._insert(obj.name, changes, created=now, modified=now, by=user_id), True

    def delete(self, object_name: str | None, record_id: str, *, user_id: str) -> None:
        """Move a record (and the children it cascades to) to the recycle bin."""
        with self.lock:
            if object_name is None:
                normalized = ids.normalize(record_id)
                found = self.schema.object_for_id(normalized) if normalized else None
                if found is None:
                    raise RecordError("MALFORMED_ID", f"malformed id {record_id}", ("Id",), status=400)
                obj = found
            else:
                obj = self._object(object_name)
            if not obj.deletable:
                raise RecordError("INVALID_TYPE_FOR_OPERATION", "entity type cannot be deleted", status=400)
            existing = self._live_for_write(obj, record_id)
            self._soft_delete(obj, existing, self.clock.now(), user_id)

    def _live_for_write(self, obj: ObjectDef, record_id: str) -> Record:
        normalized = self._check_id(obj, record_id)
        record = self._tables[obj.name].get(normalized)
        if record is None:
            raise not_found()
        if record.get("IsDeleted", False):
            raise RecordError("ENTITY_IS_DELETED", "entity is deleted", (), status=404)
        return record

    # -- write primitives (shared by the API and mutations) --------------------------------------------------
    def _apply_update(
        self, obj: ObjectDef, existing: Record, changes: dict[str, Any], stamp: datetime, user_id: str
    ) -> Record:
        record = {**existing, **changes}
        record["LastModifiedDate"] = stamp
        record["LastModifiedById"] = user_id
        record["SystemModstamp"] = stamp
        self._derive(obj, record)
        self._put(obj, record, existing)
        return record

    def _children(self, obj: ObjectDef, parent_id: str, *, deleted: bool) -> list[tuple[ObjectDef, Record]]:
        found = []
        for child in obj.children:
            if not child.cascade_delete:
                continue
            child_obj = self.schema.objects[child.child_object]
            for record in self._tables[child_obj.name].values():
                if record.get(child.field) == parent_id and record.get("IsDeleted", False) == deleted:
                    found.append((child_obj, record))
        return found

    def _soft_delete(self, obj: ObjectDef, record: Record, stamp: datetime, user_id: str) -> list[str]:
        deleted = [record["Id"]]
        cascaded: list[str] = []
        for child_obj, child in self._children(obj, record["Id"], deleted=False):
            ids_deleted = self._soft_delete(child_obj, child, stamp, user_id)
            cascaded.append(child["Id"])
            deleted.extend(ids_deleted)
        self._apply_update(obj, record, {"IsDeleted": True}, stamp, user_id)
        self._bin.append((stamp, record["Id"]))
        if cascaded:
            self._cascaded[record["Id"]] = cascaded
        return deleted

    def _undelete(self, record: Record, stamp: datetime, user_id: str) -> list[str]:
        obj = self.schema.object_for_id(record["Id"])
        assert obj is not None  # stored records always have a known prefix
        restored = [record["Id"]]
        self._apply_update(obj, record, {"IsDeleted": False}, stamp, user_id)
        for child_id in self._cascaded.pop(record["Id"], []):
            child = self._index.get(child_id)
            if child is not None and child.get("IsDeleted", False):
                restored.extend(self._undelete(child, stamp, user_id))
        return restored

    def _hard_delete(self, obj: ObjectDef, record: Record, stamp: datetime) -> list[str]:
        removed = [record["Id"]]
        for deleted in (False, True):
            for child_obj, child in self._children(obj, record["Id"], deleted=deleted):
                removed.extend(self._hard_delete(child_obj, child, stamp))
        self._remove(obj, record, stamp)
        return removed

    def _purge(self, now: datetime) -> None:
        """Empty the recycle bin of records deleted more than ``recycle_bin_days`` ago."""
        horizon = now - timedelta(days=self.recycle_bin_days)
        entries = self._bin
        while entries and entries[0][0] < horizon:
            stamp, record_id = entries.popleft()
            record = self._index.get(record_id)
            if record is None or not record.get("IsDeleted", False) or record["SystemModstamp"] != stamp:
                continue  # undeleted or already gone since
            obj = self.schema.object_for_id(record_id)
            assert obj is not None  # stored records always have a known prefix
            self._remove(obj, record, stamp)

    # -- mutations -------------------------------------------------------------------------------------------
    def mutate(self, rng: random.Random, count: int, stamp: datetime, *, late_share: float) -> list[Change]:
        """``count`` random changes, all stamped ``stamp``; a ``late_share`` of them is held back."""
        stamp = as_utc(stamp)
        changes: list[Change] = []
        with self.lock:
            planner = _MutationPlanner(self, rng, stamp)
            for _ in range(count):
                late = rng.random() < late_share
                planned = planner.plan()
                if planned is None:
                    break
                plan_changes, apply, touched = planned
                if late:
                    plan_changes = [_late(c) for c in plan_changes]
                    self._pending.append(_Pending(plan_changes, apply, touched))
                    self._locked.update(touched)
                else:
                    apply()
                changes.extend(plan_changes)
        return changes

    def release_pending(self) -> list[Change]:
        """Apply the held-back changes with their original stamps: they commit late."""
        with self.lock:
            released: list[Change] = []
            for pending in self._pending:
                pending.apply()
                released.extend(pending.changes)
                self._locked.difference_update(pending.locked)
            self._pending.clear()
            return released


def _late(change: Change) -> Change:
    return Change(change.api, change.kind, change.object, change.id, change.stamp, True, change.detail)


_NEW_TITLES = [
    "Head of Marketing",
    "VP Engineering",
    "Product Owner",
    "IT Director",
    "Procurement Lead",
    "Chief Digital Officer",
    "Operations Manager",
    "Brand Manager",
]
_NEW_FIRST = ["Alex", "Billie", "Casey", "Devon", "Eden", "Frankie", "Harper", "Jesse", "Morgan", "Robin"]
_NEW_LAST = ["Adler", "Brooks", "Carter", "Dalton", "Ellis", "Foster", "Gray", "Hayes", "Irwin", "Jordan"]
_RENAME_SUFFIXES = [" Group", " Holdings", " International", " & Partners"]
_MUTATION_WEIGHTS: dict[str, int] = {
    "contact_update": 24,
    "contact_email_case": 6,
    "contact_create": 10,
    "contact_soft_delete": 6,
    "contact_hard_delete": 3,
    "contact_undelete": 3,
    "opportunity_stage": 12,
    "role_change": 10,
    "role_create": 6,
    "role_delete": 4,
    "account_rename": 6,
}

Plan = tuple[list[Change], Callable[[], None], tuple[str, ...]]


class _MutationPlanner:
    """Chooses one change at a time, deterministically for a given ``rng`` and store state."""

    def __init__(self, store: SalesforceStore, rng: random.Random, stamp: datetime) -> None:
        self.store = store
        self.rng = rng
        self.stamp = stamp
        self.user = store.integration_user_id
        self.schema = store.schema
        self.planners: dict[str, Callable[[], Plan | None]] = {
            "contact_update": self.contact_update,
            "contact_email_case": self.contact_email_case,
            "contact_create": self.contact_create,
            "contact_soft_delete": self.contact_soft_delete,
            "contact_hard_delete": self.contact_hard_delete,
            "contact_undelete": self.contact_undelete,
            "opportunity_stage": self.opportunity_stage,
            "role_change": self.role_change,
            "role_create": self.role_create,
            "role_delete": self.role_delete,
            "account_rename": self.account_rename,
        }

    def _change(self, kind: ChangeKind, object_name: str, record_id: str, detail: str = "") -> Change:
        return Change(API, kind, object_name, record_id, self.stamp, False, detail)

    def _live(self, object_name: str) -> list[Record]:
        locked = self.store._locked
        return [
            r
            for r in self.store._tables[object_name].values()
            if not r.get("IsDeleted", False) and r["Id"] not in locked
        ]

    def plan(self) -> Plan | None:
        kinds = list(_MUTATION_WEIGHTS)
        kind = self.rng.choices(kinds, weights=[_MUTATION_WEIGHTS[k] for k in kinds])[0]
        planned = self.planners[kind]()
        return planned if planned is not None else self.contact_update()

    def _update(self, object_name: str, record_id: str, changes: dict[str, Any]) -> Callable[[], None]:
        store = self.store
        obj = self.schema.objects[object_name]
        stamp, user = self.stamp, self.user

        def apply() -> None:
            current = store._index.get(record_id)
            if current is not None and not current.get("IsDeleted", False):
                store._apply_update(obj, current, changes, stamp, user)

        return apply

    def contact_update(self) -> Plan | None:
        contacts = self._live("Contact")
        if not contacts:
            return None
        contact = self.rng.choice(contacts)
        if self.rng.random() < 0.5:
            title = self.rng.choice([t for t in _NEW_TITLES if t != contact.get("Title")])
            changes: dict[str, Any] = {"Title": title}
            detail = "Title changed"
        else:
            rng = self.rng
            phone = f"+{rng.randint(1, 49)} {rng.randint(100, 999)} {rng.randint(1000000, 9999999)}"
            changes = {"Phone": phone}
            detail = "Phone changed"
        cid = contact["Id"]
        return [self._change("update", "Contact", cid, detail)], self._update("Contact", cid, changes), (cid,)

    def contact_email_case(self) -> Plan | None:
        contacts = [c for c in self._live("Contact") if c.get("Email")]
        if not contacts:
            return None
        contact = self.rng.choice(contacts)
        email = str(contact["Email"])
        local, _, domain = email.partition("@")
        changed = email.lower() if email != email.lower() else f"{local.title()}@{domain.capitalize()}"
        if changed == email:
            changed = email.upper()
        cid = contact["Id"]
        plan = self._update("Contact", cid, {"Email": changed})
        return [self._change("update", "Contact", cid, "Email case changed")], plan, (cid,)

    def contact_create(self) -> Plan | None:
        accounts = [a for a in self._live("Account") if a.get("Email_Domains__c")]
        if not accounts:
            return None
        account = self.rng.choice(accounts)
        first, last = self.rng.choice(_NEW_FIRST), self.rng.choice(_NEW_LAST)
        domain = str(account["Email_Domains__c"]).split(";")[0]
        number = self.rng.randrange(1000, 9999)
        values = {
            "AccountId": account["Id"],
            "FirstName": first,
            "LastName": last,
            "Email": f"{first.lower()}.{last.lower()}{number}@{domain}",
            "Title": self.rng.choice(_NEW_TITLES),
            "OwnerId": account.get("OwnerId") or self.user,
        }
        contact_id = self.store._ids.new(self.schema.objects["Contact"].key_prefix)
        changes = [self._change("create", "Contact", contact_id, "Contact created")]
        open_opportunities = [
            o for o in self._live("Opportunity") if o.get("AccountId") == account["Id"] and not o.get("IsClosed")
        ]
        role_values: dict[str, Any] | None = None
        role_id = ""
        if open_opportunities:
            opportunity = self.rng.choice(open_opportunities)
            role_values = {
                "OpportunityId": opportunity["Id"],
                "ContactId": contact_id,
                "Role": self.rng.choice(self.schema.objects["OpportunityContactRole"].fields["Role"].values),
                "IsPrimary": False,
            }
            role_id = self.store._ids.new(self.schema.objects["OpportunityContactRole"].key_prefix)
            changes.append(self._change("create", "OpportunityContactRole", role_id, "Contact role created"))
        store, stamp, user = self.store, self.stamp, self.user

        def apply() -> None:
            if store._index.get(account["Id"]) is None:
                return
            store._insert("Contact", values, created=stamp, modified=stamp, by=user, record_id=contact_id)
            if role_values is not None and store._index.get(role_values["OpportunityId"]) is not None:
                store._insert(
                    "OpportunityContactRole",
                    role_values,
                    created=stamp,
                    modified=stamp,
                    by=user,
                    record_id=role_id,
                )

        return changes, apply, (account["Id"],)

    def _cascade_preview(self, object_name: str, record_id: str, *, deleted: bool) -> list[tuple[str, str]]:
        obj = self.schema.objects[object_name]
        found = []
        for child_obj, child in self.store._children(obj, record_id, deleted=deleted):
            found.append((child_obj.name, child["Id"]))
            found.extend(self._cascade_preview(child_obj.name, child["Id"], deleted=deleted))
        return found

    def contact_soft_delete(self) -> Plan | None:
        return self._delete("Contact", hard=False)

    def contact_hard_delete(self) -> Plan | None:
        return self._delete("Contact", hard=True)

    def role_delete(self) -> Plan | None:
        return self._delete("OpportunityContactRole", hard=False)

    def _delete(self, object_name: str, *, hard: bool) -> Plan | None:
        candidates = self._live(object_name)
        if not candidates:
            return None
        record = self.rng.choice(candidates)
        record_id = record["Id"]
        kind: ChangeKind = "hard_delete" if hard else "delete"
        cascade = self._cascade_preview(object_name, record_id, deleted=False)
        changes = [self._change(kind, object_name, record_id, f"{object_name} deleted")]
        changes += [
            self._change(kind, child_obj, child_id, "deleted with its parent") for child_obj, child_id in cascade
        ]
        store, stamp, user = self.store, self.stamp, self.user
        obj = self.schema.objects[object_name]

        def apply() -> None:
            current = store._index.get(record_id)
            if current is None:
                return
            if hard:
                store._hard_delete(obj, current, stamp)
            elif not current.get("IsDeleted", False):
                store._soft_delete(obj, current, stamp, user)

        return changes, apply, (record_id, *(child_id for _, child_id in cascade))

    def contact_undelete(self) -> Plan | None:
        locked = self.store._locked
        binned = [
            r for r in self.store._tables["Contact"].values() if r.get("IsDeleted", False) and r["Id"] not in locked
        ]
        if not binned:
            return None
        record = self.rng.choice(binned)
        record_id = record["Id"]
        restored = [
            (self.store.object_name(i), i)
            for i in self.store._cascaded.get(record_id, [])
            if (child := self.store._index.get(i)) is not None and child.get("IsDeleted", False)
        ]
        changes = [self._change("undelete", "Contact", record_id, "Contact restored from the recycle bin")]
        changes += [self._change("undelete", name, i, "restored with its parent") for name, i in restored]
        store, stamp, user = self.store, self.stamp, self.user

        def apply() -> None:
            current = store._index.get(record_id)
            if current is not None and current.get("IsDeleted", False):
                store._undelete(current, stamp, user)

        return changes, apply, (record_id, *(i for _, i in restored))

    def opportunity_stage(self) -> Plan | None:
        opportunities = self._live("Opportunity")
        if not opportunities:
            return None
        opportunity = self.rng.choice(opportunities)
        stages = self.schema.objects["Opportunity"].fields["StageName"].values
        old = opportunity.get("StageName")
        new = self.rng.choice([s for s in stages if s != old])
        oid = opportunity["Id"]
        plan = self._update("Opportunity", oid, {"StageName": new})
        return [self._change("update", "Opportunity", oid, f"StageName {old} -> {new}")], plan, (oid,)

    def role_change(self) -> Plan | None:
        roles = self._live("OpportunityContactRole")
        if not roles:
            return None
        role = self.rng.choice(roles)
        values = self.schema.objects["OpportunityContactRole"].fields["Role"].values
        old = role.get("Role")
        new = self.rng.choice([v for v in values if v != old])
        rid = role["Id"]
        plan = self._update("OpportunityContactRole", rid, {"Role": new})
        return [self._change("update", "OpportunityContactRole", rid, f"Role {old} -> {new}")], plan, (rid,)

    def role_create(self) -> Plan | None:
        opportunities = self._live("Opportunity")
        if not opportunities:
            return None
        opportunity = self.rng.choice(opportunities)
        taken = {
            r["ContactId"]
            for r in self.store._tables["OpportunityContactRole"].values()
            if r.get("OpportunityId") == opportunity["Id"] and not r.get("IsDeleted", False)
        }
        contacts = [
            c
            for c in self._live("Contact")
            if c.get("AccountId") == opportunity.get("AccountId") and c["Id"] not in taken
        ]
        if not contacts:
            return None
        contact = self.rng.choice(contacts)
        values = {
            "OpportunityId": opportunity["Id"],
            "ContactId": contact["Id"],
            "Role": self.rng.choice(self.schema.objects["OpportunityContactRole"].fields["Role"].values),
            "IsPrimary": False,
        }
        role_id = self.store._ids.new(self.schema.objects["OpportunityContactRole"].key_prefix)
        store, stamp, user = self.store, self.stamp, self.user

        def apply() -> None:
            parents = (store._index.get(values["OpportunityId"]), store._index.get(values["ContactId"]))
            if all(p is not None and not p.get("IsDeleted", False) for p in parents):
                store._insert(
                    "OpportunityContactRole",
                    values,
                    created=stamp,
                    modified=stamp,
                    by=user,
                    record_id=role_id,
                )

        changes = [self._change("create", "OpportunityContactRole", role_id, "Contact role created")]
        return changes, apply, (opportunity["Id"], contact["Id"])

    def account_rename(self) -> Plan | None:
        accounts = self._live("Account")
        if not accounts:
            return None
        account = self.rng.choice(accounts)
        name = str(account["Name"])
        base = next((name[: -len(s)] for s in _RENAME_SUFFIXES if name.endswith(s)), name)
        new = (base + self.rng.choice([s for s in _RENAME_SUFFIXES if not name.endswith(s)]))[:255]
        aid = account["Id"]
        return (
            [self._change("update", "Account", aid, "Name changed")],
            self._update("Account", aid, {"Name": new}),
            (aid,),
        )
