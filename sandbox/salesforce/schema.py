"""The org's metadata, loaded from ``org_definition.yaml``: objects, fields, relationships, describe.

Field and object names are case-insensitive in SOQL and in request bodies, as in Salesforce; the
lookups here take any case and hand back the canonical definition, whose ``name`` is what the
API emits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from sandbox.salesforce import ids

DEFINITION_PATH = Path(__file__).with_name("org_definition.yaml")

TEXT_TYPES = frozenset({"string", "textarea", "email", "phone", "url", "picklist", "combobox"})
NUMBER_TYPES = frozenset({"int", "double", "currency"})
FIELD_TYPES = TEXT_TYPES | NUMBER_TYPES | {"id", "boolean", "date", "datetime", "reference"}
_SOAP_TYPES = {
    "id": "tns:ID",
    "reference": "tns:ID",
    "boolean": "xsd:boolean",
    "int": "xsd:int",
    "double": "xsd:double",
    "currency": "xsd:double",
    "date": "xsd:date",
    "datetime": "xsd:dateTime",
}
# A text area longer than this can be neither filtered nor sorted in SOQL.
FILTERABLE_TEXTAREA_LENGTH = 255


class OrgDefinitionError(ValueError):
    """The org definition file is inconsistent; the message names the object and field."""


@dataclass(frozen=True)
class Derivation:
    rule: str  # "concat" | "in_values" | "account_of"
    sources: tuple[str, ...]
    values: frozenset[str] = frozenset()  # lower-cased, for "in_values"


@dataclass(frozen=True)
class FieldDef:
    name: str
    type: str
    label: str
    length: int = 0
    required: bool = False
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    default: Any = None
    external_id: bool = False
    unique: bool = False
    case_sensitive: bool = False
    reference_to: tuple[str, ...] = ()
    relationship_name: str | None = None
    cascade_delete: bool = False
    values: tuple[str, ...] = ()
    restricted: bool = False
    derived: Derivation | None = None

    @property
    def custom(self) -> bool:
        return self.name.endswith("__c")

    @property
    def polymorphic(self) -> bool:
        return len(self.reference_to) > 1

    @property
    def is_text(self) -> bool:
        return self.type in TEXT_TYPES

    @property
    def filterable(self) -> bool:
        return not (self.type == "textarea" and self.length > FILTERABLE_TEXTAREA_LENGTH)

    @property
    def sortable(self) -> bool:
        return self.filterable

    def describe(self) -> dict[str, Any]:
        """The field as ``GET /sobjects/{Object}/describe`` reports it (the keys connectors read)."""
        return {
            "name": self.name,
            "label": self.label,
            "type": self.type,
            "soapType": _SOAP_TYPES.get(self.type, "xsd:string"),
            "length": self.length if self.is_text or self.type == "id" else 0,
            "custom": self.custom,
            "calculated": self.derived is not None,
            "nillable": self.nillable,
            "createable": self.createable,
            "updateable": self.updateable,
            "defaultedOnCreate": self.default is not None or self.type == "boolean" or self.name == "Id",
            "externalId": self.external_id,
            "idLookup": self.external_id or self.unique or self.type == "id",
            "unique": self.unique,
            "caseSensitive": self.case_sensitive,
            "filterable": self.filterable,
            "sortable": self.sortable,
            "referenceTo": list(self.reference_to),
            "relationshipName": self.relationship_name,
            "polymorphicForeignKey": self.polymorphic,
            "cascadeDelete": self.cascade_delete,
            "restrictedPicklist": self.restricted,
            "picklistValues": [
                {
                    "active": True,
                    "defaultValue": value == self.default,
                    "label": value,
                    "validFor": None,
                    "value": value,
                }
                for value in self.values
            ],
        }


@dataclass(frozen=True)
class ChildRelationship:
    child_object: str
    field: str
    cascade_delete: bool


@dataclass
class ObjectDef:
    name: str
    key_prefix: str
    label: str
    label_plural: str
    deletable: bool
    fields: dict[str, FieldDef]  # canonical name -> definition, in describe order
    _by_lower: dict[str, FieldDef] = field(default_factory=dict, repr=False)
    _relationships: dict[str, FieldDef] = field(default_factory=dict, repr=False)
    children: list[ChildRelationship] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_lower = {name.lower(): f for name, f in self.fields.items()}
        self._relationships = {
            f.relationship_name.lower(): f for f in self.fields.values() if f.relationship_name is not None
        }

    def field(self, name: str) -> FieldDef | None:
        return self._by_lower.get(name.lower())

    def relationship(self, name: str) -> FieldDef | None:
        """The reference field behind a relationship name (``Account`` -> ``AccountId``)."""
        return self._relationships.get(name.lower())

    @cached_property
    def has_is_deleted(self) -> bool:
        return "IsDeleted" in self.fields

    @cached_property
    def external_id_fields(self) -> tuple[FieldDef, ...]:
        return tuple(f for f in self.fields.values() if f.external_id)

    @cached_property
    def unique_fields(self) -> tuple[FieldDef, ...]:
        return tuple(f for f in self.fields.values() if f.unique or f.external_id)

    @cached_property
    def derived_fields(self) -> tuple[FieldDef, ...]:
        return tuple(f for f in self.fields.values() if f.derived is not None)

    def urls(self, version: str) -> dict[str, str]:
        base = f"/services/data/v{version}/sobjects/{self.name}"
        return {
            "sobject": base,
            "describe": f"{base}/describe",
            "rowTemplate": f"{base}/{{ID}}",
        }

    def summary(self, version: str) -> dict[str, Any]:
        """The object as the describe-global list reports it."""
        return {
            "name": self.name,
            "label": self.label,
            "labelPlural": self.label_plural,
            "keyPrefix": self.key_prefix,
            "custom": False,
            "createable": True,
            "updateable": True,
            "deletable": self.deletable,
            "undeletable": self.has_is_deleted,
            "queryable": True,
            "retrieveable": True,
            "replicateable": True,
            "searchable": True,
            "urls": self.urls(version),
        }

    def describe(self, version: str) -> dict[str, Any]:
        data = self.summary(version)
        data["fields"] = [f.describe() for f in self.fields.values()]
        data["childRelationships"] = [
            {
                "childSObject": child.child_object,
                "field": child.field,
                "cascadeDelete": child.cascade_delete,
                "relationshipName": None,
            }
            for child in self.children
        ]
        return data


@dataclass
class OrgSchema:
    org_id: str  # 18 characters
    org_name: str
    pod: str
    default_username: str
    name_fields: tuple[str, ...]  # fields of the polymorphic "Name" object
    objects: dict[str, ObjectDef]
    _by_lower: dict[str, ObjectDef] = field(default_factory=dict, repr=False)
    _by_prefix: dict[str, ObjectDef] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_lower = {name.lower(): o for name, o in self.objects.items()}
        self._by_prefix = {o.key_prefix: o for o in self.objects.values()}

    def object(self, name: str) -> ObjectDef | None:
        return self._by_lower.get(name.lower())

    def object_for_id(self, record_id: str) -> ObjectDef | None:
        return self._by_prefix.get(ids.key_prefix(record_id))

    def name_field(self, name: str) -> str | None:
        """The canonical name of a field of the polymorphic "Name" object, or None."""
        lowered = name.lower()
        return next((f for f in self.name_fields if f.lower() == lowered), None)


def _field_from(raw: dict[str, Any], where: str) -> FieldDef:
    try:
        name = str(raw["name"])
        ftype = str(raw["type"])
    except KeyError as exc:
        raise OrgDefinitionError(f"{where}: every field needs a name and a type") from exc
    if ftype not in FIELD_TYPES:
        raise OrgDefinitionError(f"{where}.{name}: unknown field type {ftype!r}")
    unknown = set(raw) - {
        "name",
        "type",
        "label",
        "length",
        "required",
        "nillable",
        "createable",
        "updateable",
        "default",
        "externalId",
        "unique",
        "caseSensitive",
        "referenceTo",
        "relationshipName",
        "cascadeDelete",
        "values",
        "restricted",
        "derived",
    }
    if unknown:
        raise OrgDefinitionError(f"{where}.{name}: unknown field keys {sorted(unknown)}")
    reference_to = tuple(str(r) for r in raw.get("referenceTo", ()))
    if ftype == "reference" and not (reference_to and raw.get("relationshipName")):
        raise OrgDefinitionError(f"{where}.{name}: a reference needs referenceTo and relationshipName")
    derived = None
    if "derived" in raw:
        spec = raw["derived"]
        rule = str(spec.get("rule"))
        if rule not in ("concat", "in_values", "account_of"):
            raise OrgDefinitionError(f"{where}.{name}: unknown derivation rule {rule!r}")
        sources = tuple(str(s) for s in spec.get("sources", [spec.get("source")]) if s is not None)
        derived = Derivation(rule, sources, frozenset(str(v).lower() for v in spec.get("values", ())))
    required = bool(raw.get("required", False))
    label = str(raw.get("label") or name.removesuffix("__c").replace("_", " "))
    return FieldDef(
        name=name,
        type=ftype,
        label=label,
        length=int(raw.get("length", 0)),
        required=required,
        nillable=bool(raw.get("nillable", not required and ftype != "boolean")),
        createable=bool(raw.get("createable", True)),
        updateable=bool(raw.get("updateable", True)),
        default=raw.get("default"),
        external_id=bool(raw.get("externalId", False)),
        unique=bool(raw.get("unique", False)),
        case_sensitive=bool(raw.get("caseSensitive", False)),
        reference_to=reference_to,
        relationship_name=raw.get("relationshipName"),
        cascade_delete=bool(raw.get("cascadeDelete", False)),
        values=tuple(str(v) for v in raw.get("values", ())),
        restricted=bool(raw.get("restricted", False)),
        derived=derived,
    )


def load_schema(path: Path = DEFINITION_PATH) -> OrgSchema:
    """Read and check the org definition; raises ``OrgDefinitionError`` naming what is wrong."""
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    org = raw["org"]
    system = [_field_from(f, "system_fields") for f in raw["system_fields"]]
    objects: dict[str, ObjectDef] = {}
    for name, spec in raw["objects"].items():
        excluded = set(spec.get("exclude_system_fields", ()))
        own = [_field_from(f, name) for f in spec["fields"]]
        fields: dict[str, FieldDef] = {}
        for f in system[:1] + own + system[1:]:  # Id first, then the object's fields, then audit fields
            if f.name in excluded:
                continue
            if f.name.lower() in {n.lower() for n in fields}:
                raise OrgDefinitionError(f"{name}.{f.name}: defined twice")
            fields[f.name] = f
        prefix = str(spec["key_prefix"])
        if len(prefix) != 3:
            raise OrgDefinitionError(f"{name}: key_prefix must have 3 characters")
        objects[name] = ObjectDef(
            name=name,
            key_prefix=prefix,
            label=str(spec.get("label", name)),
            label_plural=str(spec.get("label_plural", name + "s")),
            deletable=bool(spec.get("deletable", True)),
            fields=fields,
        )
    for obj in objects.values():
        for f in obj.fields.values():
            for target in f.reference_to:
                if target in objects and f.name not in ("CreatedById", "LastModifiedById"):
                    objects[target].children.append(ChildRelationship(obj.name, f.name, f.cascade_delete))
            if f.derived is not None:
                for source in f.derived.sources:
                    if source not in obj.fields:
                        raise OrgDefinitionError(f"{obj.name}.{f.name}: derived from unknown field {source}")
    prefixes = [o.key_prefix for o in objects.values()]
    if len(set(prefixes)) != len(prefixes):
        raise OrgDefinitionError("two objects share a key prefix")
    return OrgSchema(
        org_id=ids.to18(str(org["id"])),
        org_name=str(org["name"]),
        pod=str(org["pod"]),
        default_username=str(org["default_username"]),
        name_fields=tuple(str(f) for f in raw["polymorphic_name_fields"]),
        objects=objects,
    )
