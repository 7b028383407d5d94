"""Field values on the wire: Salesforce's JSON and CSV renderings, and parsing what clients send.

Stored values are plain Python: ``str``, ``bool``, ``int``, ``float``, ``date`` and aware UTC
``datetime`` truncated to milliseconds. Datetimes go out as ``2024-04-25T15:50:37.000+0000`` in
REST JSON and as ``2024-04-25T15:50:37.000Z`` in Bulk API CSV, as Salesforce renders them.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sandbox.salesforce.schema import NUMBER_TYPES, FieldDef


class FieldValueError(ValueError):
    """A value a client sent does not fit its field; ``code`` is the Salesforce error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def truncate_ms(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def as_utc(moment: datetime) -> datetime:
    """Aware UTC with millisecond resolution; naive values are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return truncate_ms(moment.astimezone(UTC))


def format_datetime(moment: datetime) -> str:
    """``2024-04-25T15:50:37.000+0000``: REST JSON's datetime rendering."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def format_bulk_datetime(moment: datetime) -> str:
    """``2024-04-25T15:50:37.000Z``: Bulk API CSV's datetime rendering."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def to_json(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def to_csv(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_bulk_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def parse_datetime(text: str) -> datetime | None:
    """An ISO 8601 datetime as Salesforce accepts it (``Z``, ``+0000``, ``+00:00``, with or without
    milliseconds), as aware UTC; None when it is not one. A date alone is midnight UTC."""
    text = text.strip()
    if len(text) >= 5 and text[-5] in "+-" and text[-4:].isdigit() and ":" not in text[-5:]:
        text = text[:-2] + ":" + text[-2:]  # +0000 -> +00:00 for fromisoformat
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if "T" not in text and " " not in text:
        parsed = datetime(parsed.year, parsed.month, parsed.day, tzinfo=UTC)
    return as_utc(parsed)


def parse_write_value(f: FieldDef, value: Any) -> Any:
    """The stored form of a JSON value written to ``f``; raises ``FieldValueError`` when it does not fit."""
    if value is None:
        return None
    if f.type == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise _json_error(f, value, "boolean")
    if f.type in NUMBER_TYPES:
        if isinstance(value, bool):
            raise _json_error(f, value, f.type)
        number: float | int
        if isinstance(value, int | float):
            number = value
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise _json_error(f, value, f.type) from None
        else:
            raise _json_error(f, value, f.type)
        if f.type == "int":
            if float(number) != int(number):
                raise _json_error(f, value, "int")
            return int(number)
        return float(number)
    if f.type == "date":
        if isinstance(value, str):
            try:
                return date.fromisoformat(value[:10]) if len(value) >= 10 else date.fromisoformat(value)
            except ValueError:
                pass
        raise _json_error(f, value, "date")
    if f.type == "datetime":
        parsed = parse_datetime(value) if isinstance(value, str) else None
        if parsed is None:
            raise _json_error(f, value, "datetime")
        return parsed
    # text, id and reference types
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _json_error(f, value, "string")
    text = str(value)
    if f.length and len(text) > f.length and f.is_text:
        raise FieldValueError(
            "STRING_TOO_LONG",
            f"{f.label}: data value too large: {text[:40]}... (max length={f.length})",
        )
    if f.type == "email" and text and ("@" not in text or text.startswith("@") or text.endswith("@")):
        raise FieldValueError("INVALID_EMAIL_ADDRESS", f"{f.label}: invalid email address: {text}")
    if f.restricted and text and text.lower() not in {v.lower() for v in f.values}:
        raise FieldValueError(
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            f"{f.label}: bad value for restricted picklist field: {text}",
        )
    return text or None  # Salesforce stores an empty text as null


def _json_error(f: FieldDef, value: Any, type_name: str) -> FieldValueError:
    return FieldValueError(
        "JSON_PARSER_ERROR",
        f"Cannot deserialize instance of {type_name} from VALUE_STRING value {value!r} "
        f"or request may be missing a required field (field {f.name})",
    )


def floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)
