"""Shared pytest wiring.

Why so little: unit tests must run on any machine, and the exporter package may not be
importable yet while it is being written, so nothing here imports it. Nothing here skips either:
a lab test on a machine without root or dockerd must fail (see `lab.preflight`), never go green
by skipping.

The lab's step timings are collected here and printed in the terminal summary, so a slow CI run
shows where the time went.
"""

from __future__ import annotations

import pytest

LAB_TIMINGS = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[LAB_TIMINGS] = []


@pytest.fixture(scope="session")
def lab_timing_log(pytestconfig: pytest.Config) -> list[str]:
    """Append "label: step=1.2s, ..." lines; they are printed at the end of the run."""
    return pytestconfig.stash[LAB_TIMINGS]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(LAB_TIMINGS, [])
    if lines:
        terminalreporter.section("docker lab timings")
        for line in lines:
            terminalreporter.write_line(line)
