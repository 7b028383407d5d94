"""The Prefect UI in headless Chromium: a sync deployment run (and the push its trigger starts) on a
real Prefect server, and the run's artifacts rendered in the browser.

Screenshots are kept in test-output/ui/ (gitignored). Needs `chromium`: `scripts/ensure-chromium.sh`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from flows.ui import REPO, LocalPrefect, local_prefect, run_deployment_and_wait
from sandbox.app import Sandbox, SandboxOptions

OUTPUT = REPO / "test-output" / "ui"


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail(
            "headless Chromium is not installed: run `scripts/ensure-chromium.sh` (apt-get install -y chromium)"
        )
    return path


def _browse(chromium: str, url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran (``--dump-dom``), or a screenshot of it."""
    args = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-quic",
        "--no-first-run",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1400,1600",
        "--virtual-time-budget=15000",
        "--hide-scrollbars",
    ]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    result = subprocess.run(  # noqa: S603  # chromium, fixed arguments, loopback URL
        [*args, url], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"chromium failed on {url}: {result.stderr[-2000:]}"
    return result.stdout


def _api(prefect: LocalPrefect, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(  # noqa: S310  # loopback
        f"{prefect.api_url}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310  # loopback
        return json.load(response)


class _Rendered(HTMLParser):
    """Text by element: headings, table header cells, table data cells."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.text: dict[str, list[str]] = {"h1": [], "th": [], "td": []}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.text:
            self.stack.append(tag)
            self.text[tag].append("")

    def handle_endtag(self, tag: str) -> None:
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.stack:
            self.text[self.stack[-1]][-1] += data


def _rendered(dom: str) -> dict[str, list[str]]:
    parser = _Rendered()
    parser.feed(dom)
    return {k: [" ".join(t.split()) for t in v] for k, v in parser.text.items()}


def _completed_push_run(prefect: LocalPrefect, timeout: float = 45.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = _api(
            prefect,
            "/flow_runs/filter",
            {"flows": {"name": {"any_": ["accord-push"]}}, "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}},
        )
        if runs:
            return str(runs[0]["id"])
        time.sleep(1)
    raise AssertionError(f"no accord-push run completed {timeout:.0f} s after the sync (its trigger did not fire)")


def test_flow_run_and_its_artifacts_render_in_the_prefect_ui(tmp_path: Path) -> None:
    chromium = _chromium()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with (
        Sandbox(SandboxOptions(size="small", seed=3)) as sandbox,
        local_prefect(tmp_path / "prefect") as prefect,  # stops (worker first) before the sandbox
    ):
        prefect.deploy()
        prefect.start_worker(
            {
                "ACCORD_SANDBOX_CONTROL": str(sandbox.info()["control"]),
                "ACCORD_DATABASE_URL": f"sqlite:///{tmp_path / 'accord.sqlite'}",
                "ACCORD_MAPPING": str(REPO / "mappings" / "default.yaml"),
            }
        )
        sync_run = run_deployment_and_wait(prefect, "accord-sync/accord-sync", {"full": True}, timeout=90)
        push_run = _completed_push_run(prefect)
        artifacts = {
            a["key"]: a["id"]
            for a in _api(prefect, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [sync_run, push_run]}}})
        }
        assert {"accord-sync", "accord-plan", "accord-push"} <= set(artifacts)
        profile = tmp_path / "chromium"

        # The flow run page, Artifacts tab: the run, its deployment and its artifact are listed.
        run_page = f"{prefect.url}/v2/runs/flow-run/{sync_run}?tab=Artifacts"
        page = _browse(chromium, run_page, profile)
        assert "accord-sync" in page and "Completed" in page and "Accord sync: counts and engagements" in page
        _browse(chromium, run_page, profile, OUTPUT / "flow-run.png")

        # The sync artifact: the counts table and the engagement table, rendered from markdown.
        sync_url = f"{prefect.url}/artifacts/artifact/{artifacts['accord-sync']}"
        sync = _rendered(_browse(chromium, sync_url, profile))
        assert "Accord sync (full)" in sync["h1"]
        assert {"source", "stream", "pulled", "health", "engagement", "client", "reasons"} <= set(sync["th"])
        opportunities = sandbox.salesforce_store.counts()["Opportunity"]
        health_cells = [t for t in sync["td"] if t.split(" ")[-1] in {"green", "amber", "red"}]
        assert len(health_cells) == opportunities, "one rendered row per engagement"
        _browse(chromium, sync_url, profile, OUTPUT / "sync-artifact.png")

        # The plan artifact of the push that the sync's completion triggered.
        plan_url = f"{prefect.url}/artifacts/artifact/{artifacts['accord-plan']}"
        plan = _rendered(_browse(chromium, plan_url, profile))
        assert any(h.startswith("Accord push plan (") for h in plan["h1"])
        assert {"target", "what", "engagement", "key", "why"} <= set(plan["th"])
        assert len(plan["td"]) >= 5
        _browse(chromium, plan_url, profile, OUTPUT / "plan-artifact.png")
    for name in ("flow-run.png", "sync-artifact.png", "plan-artifact.png"):
        assert (OUTPUT / name).stat().st_size > 10_000
