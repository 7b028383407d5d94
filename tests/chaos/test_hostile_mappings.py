"""A corpus of broken mappings (tests/chaos/mappings/): `accord mappings validate FILE` exits 2 and
prints ``file:line: message`` for each, never a traceback, never a hang."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from accord.cli import main
from tests.chaos.figures import FIGURES

CORPUS = Path(__file__).parent / "mappings"
ROOT = Path(__file__).resolve().parents[2]

# file -> (the line the first error names, words the message must hold)
EXPECTED: dict[str, tuple[int, str]] = {
    "01_bad_yaml.yaml": (6, "not valid YAML"),
    "02_tabs.yaml": (5, "found character '\\t'"),
    "03_wrong_type.yaml": (4, "version: Input should be a valid integer"),
    "04_unknown_key.yaml": (41, "jira.lookback_secs: unknown key"),
    "05_missing_section.yaml": (4, "identity: required key is missing"),
    "06_soql_injection_field.yaml": (12, "salesforce.accounts.fields.name: expected a Salesforce field"),
    "07_soql_injection_object.yaml": (14, "salesforce.contacts.object: expected a Salesforce field or object"),
    "08_jql_injection_project.yaml": (43, "expected a Jira project key"),
    "09_huge_number.yaml": (37, "salesforce.lookback_seconds: Input should be less than or equal to 86400"),
    "10_huge_string.yaml": (6, "name_again: unknown key"),
    "11_non_utf8.yaml": (6, "not UTF-8"),
    "12_empty.yaml": (1, "expected a YAML mapping"),
    "13_list_not_mapping.yaml": (1, "expected a YAML mapping"),
    "14_scalar.yaml": (1, "expected a YAML mapping"),
    "15_null_section.yaml": (7, "salesforce: Input should be a valid dictionary"),
    "16_negative_threshold.yaml": (59, "health.checkin_cadence_days: Input should be greater than or equal to 1"),
    "17_python_tag.yaml": (2, "could not determine a constructor"),
    "18_nul_byte.yaml": (5, "unacceptable character #x0000"),
    "19_deep_nesting.yaml": (4, "nested more than"),
    "20_alias_bomb.yaml": (7, "expands to more than"),
    "21_filter_operator_injection.yaml": (36, "salesforce.reminders.filters.0.op: Input should be"),
    "22_bad_email_domain.yaml": (54, "identity.internal_domains.0: expected a lower-case email domain"),
    "23_wrong_type_list.yaml": (44, "jira.blocked_statuses: Input should be a valid list"),
}


def test_the_corpus_is_what_the_table_describes() -> None:
    assert sorted(p.name for p in CORPUS.glob("*.yaml")) == sorted(EXPECTED)
    assert len(EXPECTED) >= 15


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_broken_mapping_gets_file_line_and_message(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = CORPUS / name
    assert main(["mappings", "validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines and all(re.match(rf"^{re.escape(str(path))}:\d+: \S", line) for line in lines), err[:2000]
    line, words = EXPECTED[name]
    assert lines[0].startswith(f"{path}:{line}: "), lines[0][:300]
    assert words in err, err[:2000]
    assert "Traceback" not in err
    assert all(len(line) < 2000 for line in lines)  # a huge value is not echoed back whole
    FIGURES.add("mappings_rejected")


def test_the_cli_rejects_the_whole_corpus_in_one_process_without_a_traceback() -> None:
    files = [str(CORPUS / name) for name in sorted(EXPECTED)]
    result = subprocess.run(  # noqa: S603 (our own interpreter and module)
        [sys.executable, "-m", "accord", "mappings", "validate", *files, "mappings/default.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert all(f"{f}:" in result.stderr for f in files)
    assert result.stdout.strip() == "mappings/default.yaml: ok (version 1, sandbox)"
