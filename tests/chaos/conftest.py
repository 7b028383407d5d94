"""Prints the fault suite's figures at the end of every run that collected it."""

from __future__ import annotations

import pytest

from tests.chaos.figures import FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES.counts:
        terminalreporter.write_sep("-", "accord chaos figures")
        terminalreporter.write_line(FIGURES.line())
