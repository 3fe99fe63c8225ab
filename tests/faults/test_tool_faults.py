"""Missing, hung, failing, noisy or lying firewall tools: the real check, through run_check and the
CLI, with the tools faked on a private PATH.

The failing source is down with one line naming it; iptables down means no verdict; any source
down means `check` never exits 0; no finding appears that the intact inputs do not have; no
traceback; and every tool run was one of the read-only commands.

Two fault kinds here depend on work outside these files (see docs/reliability.md): a tool that
exits 0 but writes an unexpected line on stderr, and a dump that is cut short or garbled, must
fail their source too.
"""

from __future__ import annotations

import os
import time

import pytest

from exporter.check import run_check
from exporter.config import CheckConfig
from exporter.report import Report
from tests.fakes.docker_api import FakeDockerAPI
from tests.fakes.tools import (
    FIXTURES,
    cut_short,
    fails,
    hangs,
    noisy,
    not_executable,
    prints,
)

# fake tool -> the source that runs it
TOOLS = {
    "iptables-nft-save": "iptables",
    "ip6tables-nft-save": "ip6tables",
    "ebtables-nft-save": "ebtables",
    "ipset": "ipset",
    "nft": "nftables",
}
DENIED = "Could not fetch rule set generation id: Permission denied (you must be root)"
GARBAGE = "\udcff\udcfe\x00binary garbage\n-A FORWARD -j \udc80\n"

# fault -> (how the tool misbehaves, given what it printed; text the one-line error holds)
FAULTS = {
    "fails": (lambda text: fails(DENIED, 4), "failed (exit 4)"),
    "noisy": (lambda text: noisy(text, "Error: unexpected table layout"), ""),
    "cut-short": (cut_short, ""),
    "garbage": (lambda text: prints(GARBAGE), ""),
}
MISSING = {
    "iptables": (
        ("iptables-nft-save", "iptables-legacy-save"),
        "not found; install the Debian package iptables",
    ),
    "ip6tables": (("ip6tables-nft-save", "ip6tables-legacy-save"), "not found"),
    "ebtables": (("ebtables-nft-save",), "ebtables-save not found"),
    "ipset": (("ipset",), "ipset not found but the ip_set module is loaded"),
    "nftables": (("nft",), "nft not found but the nf_tables module is loaded"),
}


def check(host, api) -> Report:
    report, _ = run_check(host.sources(api.base_url, timeout=1.0), CheckConfig(timeout=1.0))
    return report


def assert_source_down(report: Report, source: str, expected: str) -> None:
    status = {s.name: s for s in report.sources}
    error = status[source].error or ""
    assert not status[source].up, f"{source} stayed up"
    assert error.startswith(f"{source}: ") and "\n" not in error
    assert expected in error
    assert all(s.up for s in report.sources if s.name != source), report.sources
    assert not report.up
    if source == "iptables":
        assert not report.evaluated
    # The intact inputs have no finding: a verdict may become unknown, nothing may be invented.
    assert not report.drift
    assert {f.kind for f in report.findings} <= {"unknown_flow"}, report.findings


def assert_cli_failed_cleanly(run) -> None:
    assert run.code == 2, run.stdout
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("tool", TOOLS)
def test_failing_tool_fails_its_source_only(host, scenario, tool, fault):
    misbehave, expected = FAULTS[fault]
    host.tools.install(tool, misbehave(host.tools.output(tool)))
    with FakeDockerAPI(scenario) as api:
        report = check(host, api)
        run = host.check(api.base_url)
    assert_source_down(report, TOOLS[tool], expected)
    assert_cli_failed_cleanly(run)
    assert host.tools.writes() == []
    assert api.methods() == {"GET"}


@pytest.mark.parametrize("tool", TOOLS)
def test_non_executable_tool_fails_its_source(host, scenario, tool):
    # Through run_check only: the CLI looks tools up on $PATH and then in the sbin directories,
    # so a tool it cannot run here would make it run the host's real one.
    host.tools.install(tool, not_executable(host.tools.output(tool)))
    with FakeDockerAPI(scenario) as api:
        report = check(host, api)
    assert_source_down(report, TOOLS[tool], "")


@pytest.mark.parametrize("tool", TOOLS)
def test_hung_tool_is_killed_at_the_timeout(host, scenario, tool):
    host.tools.install(tool, hangs())
    with FakeDockerAPI(scenario) as api:
        began = time.monotonic()
        report = check(host, api)
        elapsed = time.monotonic() - began
        assert not os.path.exists(f"/proc/{host.tools.hung_pid(tool)}")  # killed and reaped
        began = time.monotonic()
        run = host.check(api.base_url, "--check.timeout=1s")
        cli_elapsed = time.monotonic() - began
    assert_source_down(report, TOOLS[tool], "timed out after 1s")
    assert elapsed < 2.5 and cli_elapsed < 2.5  # the 1 s timeout + the other sources + slack
    assert_cli_failed_cleanly(run)


@pytest.mark.parametrize("source", MISSING)
def test_missing_tool_says_what_to_install(host, scenario, source):
    tools, expected = MISSING[source]
    for tool in tools:
        host.tools.remove(tool)
    with FakeDockerAPI(scenario) as api:
        report = check(host, api)
    assert_source_down(report, source, expected)


def test_permission_denied_names_the_fix(host, scenario):
    host.tools.install("iptables-nft-save", fails(DENIED, 4))
    with FakeDockerAPI(scenario) as api:
        report = check(host, api)
    error = next(s.error for s in report.sources if s.name == "iptables")
    assert error == (
        f"iptables: iptables-nft-save failed (exit 4): {DENIED}; run the exporter as root "
        "(or with CAP_NET_ADMIN and CAP_NET_RAW)"
    )


def test_known_legacy_tables_warning_on_stderr_is_not_a_failure(host, scenario):
    # iptables-nft-save says this on stderr whenever legacy tables exist: it is not an error.
    warning = (FIXTURES / "tools" / "iptables-nft-save.stderr.txt").read_text().strip()
    host.tools.install("iptables-nft-save", noisy(host.tools.output("iptables-nft-save"), warning))
    with FakeDockerAPI(scenario) as api:
        report = check(host, api)
    assert report.up and report.evaluated and report.findings == ()


def test_every_tool_run_is_a_read(host, scenario):
    with FakeDockerAPI(scenario) as api:
        check(host, api)
        host.check(api.base_url)
    ran = {call[0] for call in host.tools.calls()}
    assert ran == {
        "iptables-nft-save",
        "iptables-legacy-save",
        "ip6tables-nft-save",
        "ip6tables-legacy-save",
        "ebtables-nft-save",
        "ipset",
        "nft",
    }
    assert host.tools.writes() == []
