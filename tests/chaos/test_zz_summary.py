"""Runs last (pytest takes the files in name order): the suite's figures as JSON, and the verdict."""

from __future__ import annotations

import json

import pytest

from tests.chaos.figures import FIGURES


def test_the_suite_found_no_duplicate_no_loss_and_no_leak(
    tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    figures = FIGURES.to_json()
    path = tmp_path_factory.getbasetemp() / "chaos-figures.json"
    path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    with capsys.disabled():
        print(f"\n{FIGURES.line()}\n(written to {path})")
    assert (figures["duplicates"], figures["losses"], figures["leak_hits"]) == (0, 0, 0), figures
