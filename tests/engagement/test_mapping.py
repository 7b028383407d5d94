"""Mappings: every shipped file validates; broken ones name file, line and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from engagement.mapping import MappingError, load_mapping, mapping_json_schema, parse_mapping

SHIPPED = sorted(Path("mappings").rglob("*.yaml"))
DEFAULT = Path("mappings/default.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize("path", SHIPPED, ids=str)
def test_shipped_mappings_are_valid(path: Path) -> None:
    assert load_mapping(path).version == 1


def problems(text: str) -> list[tuple[int | None, str]]:
    with pytest.raises(MappingError) as info:
        parse_mapping(text, "ops.yaml")
    assert str(info.value).startswith("ops.yaml:")
    return info.value.problems


def test_unknown_key_names_its_line() -> None:
    text = DEFAULT.replace("  lookback_seconds: 300", "  lookback_secs: 300")
    line = text.splitlines().index("  lookback_secs: 300") + 1
    assert problems(text) == [(line, "salesforce.lookback_secs: unknown key (check its spelling and indentation)")]


def test_wrong_type_and_range() -> None:
    text = DEFAULT.replace("checkin_cadence_days: 14", "checkin_cadence_days: soon").replace(
        "overdue_red: 5", "overdue_red: -1"
    )
    found = problems(text)
    lines = text.splitlines()
    expected = "health.checkin_cadence_days: Input should be a valid integer, unable to parse string as an "
    expected += "integer"
    assert (lines.index("  checkin_cadence_days: soon") + 1, f"{expected}; got 'soon'") in found
    assert any(line == lines.index("  overdue_red: -1") + 1 and "overdue_red" in msg for line, msg in found)


def test_missing_required_section() -> None:
    text = "\n".join(
        line
        for line in DEFAULT.splitlines()
        if not line.startswith(("identity:", "  internal_domains", "  strip_plus", "  aliases"))
    )
    assert any("identity: required key is missing" in msg for _, msg in problems(text))


def test_cross_field_rules() -> None:
    text = DEFAULT.replace("opportunity_field: jira_project", "opportunity_field: jira_key")
    assert any("jira.projects.opportunity_field 'jira_key'" in msg for _, msg in problems(text))
    text = DEFAULT.replace("calendars: internal ", "calendars: listed ")
    assert any("calendar_ids" in msg for _, msg in problems(text))


def test_unsupported_version_and_broken_yaml() -> None:
    assert any("version 7 is not supported" in m for _, m in problems(DEFAULT.replace("version: 1", "version: 7")))
    broken = problems("version: 1\nsalesforce: [\n")
    assert broken[0][0] == 3 and broken[0][1].startswith("not valid YAML")
    assert problems("- just\n- a list\n")[0][1].startswith("expected a YAML mapping")


def test_field_names_cannot_carry_soql() -> None:
    text = DEFAULT.replace("{name: Name, domains:", '{name: "Name FROM User --", domains:')
    assert any("salesforce.accounts.fields.name" in msg for _, msg in problems(text))


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="cannot read the mapping"):
        load_mapping(tmp_path / "missing.yaml")


def test_json_schema_describes_the_mapping() -> None:
    schema = mapping_json_schema()
    assert schema["title"] == "Accord mapping"
    assert {"version", "salesforce", "identity"} <= set(schema["required"])
    assert "lookback_seconds" in str(schema)
