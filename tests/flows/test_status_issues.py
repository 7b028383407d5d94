"""The issue that carries each project's status comments, found without reading every stored issue:
the same answer as reading them all (the definition below), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import update

from engagement.mapping import Mapping, load_mapping
from engagement.records import SourceRecord
from flows.push_engine import _lowest_status_issues, _status_issues
from store import Store
from store.schema import records

T0 = datetime(2026, 11, 1, tzinfo=UTC)
BIG = 2**70  # orjson refuses it: the record's JSON is written by json, which escapes non-ASCII text


def reference(store: Store, mapping: Mapping) -> dict[str, str]:
    """The definition: every live issue read and checked (what the push did before the database
    filter); the check itself is the push's own, so what is compared is the filter."""
    return _lowest_status_issues(store.iter_records("jira", "issues"), mapping)


def labelled(mapping: Mapping, label: str) -> Mapping:
    jira = mapping.push.jira.model_copy(update={"status_issue": "labelled", "status_label": label})
    return mapping.model_copy(update={"push": mapping.push.model_copy(update={"jira": jira})})


@pytest.fixture(scope="module")
def mapping() -> Mapping:
    return load_mapping("mappings/default.yaml")


def issue(n: int, key: str, issue_type: Any = "Task", *, deleted: bool = False, **data: Any) -> SourceRecord:
    project = key.rpartition("-")[0] or "X"
    body = {"key": key, "project": data.pop("project", project), "issue_type": issue_type, "labels": []}
    if issue_type is None:
        del body["issue_type"]
    body.update(data)
    return SourceRecord("jira", "issues", str(100_000 + n), T0, body, deleted, project)


LABEL = "accord-status"
TRICKY_TYPES: list[Any] = [
    "Epic", "EPIC", "ePiC", "epic", " Epic", "Epic ", "Epics", "Épic", "Ep\u0131c", "EPİC", "Story", "Task",
    ["Epic"], {"name": "Epic"}, 1, None, True, "",
]  # fmt: skip
TRICKY_LABELS: list[Any] = [
    [], [LABEL], [LABEL.upper()], ["x", LABEL], [f"{LABEL}-2"], f"the {LABEL} one", {LABEL: 1}, None, "", ["a/b"],
    ["a/b", "ü-ß"], ["ü-ß"], [LABEL + " "],
]  # fmt: skip


def edge_cases() -> list[SourceRecord]:
    """Each line a case the database filter must not lose (or must not let through unchecked)."""
    return [
        issue(1, "ALPHA-10", "Epic"),
        issue(2, "ALPHA-9", "EPIC"),  # numbers compare as numbers: 9 < 10
        issue(3, "ALPHA-2", "Task", summary="the epic of the year"),  # mentions epic, is no epic
        issue(4, "ALPHA-1", "Epic", deleted=True),  # deleted: never the status issue
        issue(5, "BETA-7", "Story", labels=[LABEL]),
        issue(6, "BETA-3", "epic", labels=["x", LABEL]),
        issue(7, "GAMMA-1", "Épic"),  # not "epic" once folded
        issue(8, "GAMMA-4", "Ep\u0131c"),  # dotless i: not "epic" either
        issue(9, "GAMMA-5", " Epic"),
        issue(10, "DELTA-x", "Epic"),  # no number: skipped
        issue(11, "DELTA-01", "Epic"),
        issue(12, "DELTA-1", "Epic"),  # same number as DELTA-01: the first in key order stays
        issue(13, "OTHER-3", "Epic", project="MOVED"),  # the key's prefix counts, not the project
        issue(14, "EPS-2", {"name": "Epic"}),  # not a string: never an epic
        issue(15, "EPS-3", ["Epic"]),
        issue(16, "BIGS-4", "EPİC", size=BIG),  # written by json (escaped non-ASCII), and no epic
        issue(17, "BIGS-5", "Epic", size=BIG, labels=["ü-ß", LABEL]),
        issue(18, "LAB-1", "Task", labels=f"the {LABEL} one"),  # a string: the label is in it
        issue(19, "LAB-2", "Task", labels={LABEL: True}),
        issue(20, "LAB-3", "Task", labels=[LABEL.upper()]),
        issue(21, "LAB-4", "Task", summary=LABEL),  # mentioned, not labelled
        issue(22, "SLASH-5", "Task", labels=["a/b"]),
        issue(23, "SLASH-6", "Task", labels=["ü-ß"]),
        issue(24, "ESC-8", "Task", labels=["a/b"]),  # rewritten below with escaped text
        issue(25, "ESC-9", "Task"),  # rewritten below as an escaped "Epic"
        issue(26, "NOTY-1", None),
    ]


def generated(n: int, seed: int) -> list[SourceRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        key = f"P{rng.randrange(12)}-{rng.randrange(1, 60)}"
        data: dict[str, Any] = {"labels": rng.choice(TRICKY_LABELS)}
        if rng.random() < 0.2:
            data["summary"] = rng.choice(["epic work", "EPIC", LABEL, "a/b", "ü-ß"])
        if rng.random() < 0.05:
            data["size"] = BIG
        out.append(issue(1000 + i, key, rng.choice(TRICKY_TYPES), deleted=rng.random() < 0.1, **data))
    return out


@pytest.fixture
def filled(store: Store) -> Iterator[Store]:
    plain = [issue(5000 + i, f"PLAIN{i % 5}-{i + 1}", rng_type) for i, rng_type in enumerate(["Task", "Story"] * 400)]
    store.apply_batch(edge_cases() + generated(600, seed=7) + plain)
    # Text another writer may have left: JSON with escaped characters (SQLite keeps the text as it
    # is; PostgreSQL reads it into jsonb).
    escaped = {
        "100024": '{"key":"ESC-8","project":"ESC","issue_type":"Task","labels":["a\\/b"]}',
        "100025": '{"key":"ESC-9","project":"ESC","issue_type":"\\u0045pic","labels":[]}',
    }
    with store.engine.begin() as conn:
        for record_id, text in escaped.items():
            if store.dialect == "postgresql":
                statement = update(records).where(records.c.source == "jira", records.c.id == record_id)
                conn.execute(statement.values(data=json.loads(text)))
            else:
                conn.exec_driver_sql("UPDATE records SET data = ? WHERE source = 'jira' AND id = ?", (text, record_id))
    yield store


def test_first_epics_are_those_of_the_definition(filled: Store, mapping: Mapping) -> None:
    expected = reference(filled, mapping)
    assert _status_issues(filled, mapping) == expected
    # The cases above are in it as intended (the definition itself is what the push always did).
    assert expected["ALPHA"] == "ALPHA-9"
    assert expected["BETA"] == "BETA-3"
    assert "GAMMA" not in expected and "EPS" not in expected and "NOTY" not in expected
    assert expected["DELTA"] == "DELTA-01"  # id 100011 comes before 100012
    assert expected["OTHER"] == "OTHER-3" and "MOVED" not in expected
    assert expected["BIGS"] == "BIGS-5"
    assert expected["ESC"] == "ESC-9"


@pytest.mark.parametrize("label", [LABEL, "a/b", "ü-ß", "x", "accord_status%"])
def test_labelled_issues_are_those_of_the_definition(filled: Store, mapping: Mapping, label: str) -> None:
    how = labelled(mapping, label)
    assert _status_issues(filled, how) == reference(filled, how)


def test_labelled_issues_are_those_of_the_definition_for_the_default_label(filled: Store, mapping: Mapping) -> None:
    how = labelled(mapping, LABEL)
    found = _status_issues(filled, how)
    assert found == reference(filled, how)
    assert found["BETA"] == "BETA-3" and found["LAB"] == "LAB-1" and found["BIGS"] == "BIGS-5"
    assert _status_issues(filled, labelled(mapping, "a/b"))["ESC"] == "ESC-8"


def test_a_label_that_cannot_be_looked_for_in_json_reads_every_issue(filled: Store, mapping: Mapping) -> None:
    for label in ['say "hi"', "back\\slash", "tab\there"]:
        how = labelled(mapping, label)
        assert _status_issues(filled, how) == reference(filled, how)


def test_only_the_issues_that_may_qualify_are_read(filled: Store, mapping: Mapping) -> None:
    read: list[str] = []
    mentioning = filled.records_mentioning

    def counted(source: str, stream: str, needle: str) -> Iterator[SourceRecord]:
        for record in mentioning(source, stream, needle):
            read.append(record.id)
            yield record

    def every_issue(*args: Any, **kwargs: Any) -> Iterator[SourceRecord]:
        raise AssertionError("every stored issue read")

    filled.records_mentioning = counted  # type: ignore[method-assign]  # spied on, this store only
    filled.iter_records = every_issue  # type: ignore[method-assign]  # spied on, this store only
    found = _status_issues(filled, mapping)
    assert found["ALPHA"] == "ALPHA-9"
    live = filled.record_counts()["jira.issues"]
    assert 0 < len(read) < live / 2  # the plain tasks and stories are not read


@pytest.mark.parametrize("needle", ["", 'a"b', "a\\b", "line\nbreak"])
def test_needles_json_text_cannot_show_are_refused(store: Store, needle: str) -> None:
    with pytest.raises(ValueError, match="needle"):
        list(store.records_mentioning("jira", "issues", needle))


def test_only_ascii_letters_fold_into_epic() -> None:
    # Why a database filter on the ASCII text "epic" (any case) loses no epic: no other character's
    # case folding is made of those letters (so an issue type that folds to "epic" is ASCII).
    folding = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).casefold() and set(chr(c).casefold()) <= set("epic")]
    assert sorted(folding) == sorted("EPICepic")
