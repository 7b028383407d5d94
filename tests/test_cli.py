"""The command line: help everywhere, clear errors, the sandbox commands against a live sandbox."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
import requests

from accord.cli import build_parser, main
from sandbox.app import Sandbox, SandboxOptions

COMMANDS = [
    [],
    ["sandbox"],
    ["sandbox", "up"],
    ["sandbox", "requests"],
    ["sandbox", "faults"],
    ["sandbox", "expire"],
    ["sandbox", "mutate"],
    ["sync"],
    ["status"],
    ["mappings"],
    ["mappings", "validate"],
    ["mappings", "schema"],
    ["plan"],
    ["push"],
    ["demo"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "accord")
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: accord" in capsys.readouterr().out


def test_mappings_validate_reports_file_and_line(
    tmp_path: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["mappings", "validate", "mappings/default.yaml"]) == 0
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nsalesforce: {}\nidentity: {internal_domains: [x.example]}\nextra: 1\n")
    assert main(["mappings", "validate", str(broken)]) == 2
    err = capsys.readouterr().err
    assert f"{broken}:4: extra: unknown key" in err
    assert f"{broken}:2: salesforce.accounts: required key is missing" in err
    assert "Traceback" not in err


def test_mappings_schema_is_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mappings", "schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "Accord mapping"


def test_sandbox_commands_without_a_sandbox_say_what_to_do(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ACCORD_SANDBOX_CONTROL", raising=False)
    assert main(["sandbox", "requests"]) == 2
    assert "pass --control URL or set ACCORD_SANDBOX_CONTROL" in capsys.readouterr().err
    assert main(["sandbox", "requests", "--control", "http://127.0.0.1:9"]) == 1
    assert "is `accord sandbox up` running?" in capsys.readouterr().err


@pytest.fixture(scope="module")
def running() -> Iterator[Sandbox]:
    with Sandbox(SandboxOptions(size="small", seed=2)) as sb:
        yield sb


def test_sandbox_faults_requests_mutate_expire(running: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    control = ["--control", str(running.info()["control"])]
    assert main(["sandbox", "faults", *control, "--api", "jira", "--rate-429", "0.25", "--retry-after", "2"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["jira"]["settings"]["rate_429"] == 0.25 and shown["salesforce"]["settings"]["rate_429"] == 0.0
    assert running.apps["jira"].faults.settings.retry_after_s == 2
    assert main(["sandbox", "faults", *control, "--api", "jira", "--rate-drop-after", "0.1"]) == 0
    assert running.apps["jira"].faults.settings.rate_drop_after == 0.1
    assert main(["sandbox", "faults", *control, "--reset"]) == 0
    assert running.apps["jira"].faults.settings.rate_429 == 0.0
    capsys.readouterr()
    assert main(["sandbox", "mutate", *control, "--count", "3", "--seed", "4", "--json"]) == 0
    changes = json.loads(capsys.readouterr().out)
    assert {c["api"] for c in changes} == {"salesforce", "jira", "google_calendar"}
    assert main(["sandbox", "expire", *control, "--api", "salesforce"]) == 0
    r = requests.get(
        running.info()["salesforce"]["instance_url"] + "/services/data/v59.0/query/",
        params={"q": "SELECT Id FROM Account"},
        headers={"Authorization": "Bearer " + running.credentials.salesforce.session_id},
        timeout=10,
    )
    assert r.status_code == 401 and r.json()[0]["errorCode"] == "INVALID_SESSION_ID"
    capsys.readouterr()
    assert main(["sandbox", "requests", *control, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["salesforce"] == {"GET query": 1}
    assert main(["sandbox", "faults", *control, "--rate-429", "3"]) == 1
    assert "must be a share between 0 and 1" in capsys.readouterr().err


def test_prefects_ephemeral_api_gets_time_to_start_on_a_loaded_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefect's default (20 s) timed out under load and failed a whole `accord sync`."""
    name = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
    monkeypatch.setenv(name, "placeholder")  # so the test's end restores the variable's absence
    monkeypatch.delenv(name)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert os.environ[name] == "120"
    monkeypatch.setenv(name, "7")
    with pytest.raises(SystemExit):
        main(["--help"])
    assert os.environ[name] == "7"  # an explicit value wins
