"""A dead, hung, failing or lying Docker API: the real check, through run_check and the CLI.

Whatever the daemon does, the docker source is down with one line naming the call, the report is
not evaluated (no verdict, no finding), `check` exits 2 without a traceback, and every request the
exporter made was a GET.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from exporter.check import run_check
from exporter.config import CheckConfig
from exporter.report import Report
from exporter.scheduler import DockerEventWatcher
from tests.fakes.docker_api import LIES, FakeDockerAPI, event
from tests.fakes.tools import MIXED

FIRST = json.loads((MIXED / "docker-containers.json").read_text())[0]["Id"]
INSPECT = f"/containers/{FIRST}"

# (mode, only on paths starting with, delay, text the one-line error holds)
MODES = {
    "hang": ("hang", None, 0.0, "GET /version on unix://"),
    "hang-networks": ("hang", "/networks", 0.0, "GET /networks on unix://"),
    "hang-inspect": ("hang", INSPECT, 0.0, f"GET /containers/{FIRST[:12]}/json on unix://"),
    "slow": ("slow", None, 2.0, "timed out after 0.5s; is dockerd hung?"),
    "err": ("err", None, 0.0, "GET /version failed with HTTP 500: fake dockerd: something broke"),
    "err-list": ("err", "/containers/json", 0.0, "GET /containers/json failed with HTTP 500"),
    "err-inspect": ("err", INSPECT, 0.0, f"GET /containers/{FIRST[:12]}/json failed with HTTP 500"),
    "cut": ("cut", None, 0.0, "the reply was cut short"),
    "cut-list": ("cut", "/containers/json", 0.0, "GET /containers/json on unix://"),
    "cut-inspect": ("cut", INSPECT, 0.0, "the reply was cut short"),
    "nonjson": ("nonjson", None, 0.0, "the reply is not JSON"),
    "nonjson-networks": ("nonjson", "/networks", 0.0, "GET /networks on unix://"),
}


def check(host, api_url: str) -> Report:
    report, _ = run_check(host.sources(api_url), CheckConfig(timeout=1.0))
    return report


def assert_docker_down(report: Report, expected: str) -> None:
    status = {s.name: s for s in report.sources}
    error = status["docker"].error or ""
    assert not status["docker"].up
    assert error.startswith("docker: ") and "\n" not in error
    assert expected in error
    assert all(s.up for s in report.sources if s.name != "docker"), report.sources
    assert not report.evaluated and not report.up
    assert report.findings == () and report.flows == () and not report.drift


def assert_cli_failed_cleanly(run, expected: str) -> None:
    assert run.code == 2
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout
    report = json.loads(run.stdout)
    docker = next(s for s in report["sources"] if s["name"] == "docker")
    assert not docker["up"] and expected in docker["error"]
    assert not report["evaluated"] and report["findings"] == []


def test_intact_api_and_tools_give_a_clean_verdict(host, scenario):
    # The baseline the fault tests depart from: same fakes, nothing broken, no drift.
    with FakeDockerAPI(scenario) as api:
        report = check(host, api.base_url)
        run = host.check(api.base_url, "--format=json")
    assert report.evaluated and report.up and report.findings == () and not report.unknown_flows
    assert run.code == 0, run.stderr
    assert api.methods() == {"GET"}
    assert host.tools.writes() == []


@pytest.mark.parametrize("case", MODES)
def test_failing_api_is_one_line_and_no_verdict(host, scenario, case):
    mode, on, delay, expected = MODES[case]
    with FakeDockerAPI(scenario, mode=mode, on=on, delay=delay) as api:
        began = time.monotonic()
        report = check(host, api.base_url)
        elapsed = time.monotonic() - began
        run = host.check(api.base_url, "--format=json")
    assert_docker_down(report, expected)
    assert elapsed < 0.5 * 3 + 1.0  # version, then at most two calls at the 0.5 s timeout
    assert_cli_failed_cleanly(run, expected)
    assert api.methods() == {"GET"}
    assert host.tools.writes() == []


@pytest.mark.parametrize("lie", LIES)
def test_lying_api_is_one_line_and_no_verdict(host, scenario, lie):
    expected = LIES[lie][1]
    with FakeDockerAPI(scenario, lie=lie) as api:
        report = check(host, api.base_url)
        run = host.check(api.base_url, "--format=json")
    assert_docker_down(report, expected)
    assert_cli_failed_cleanly(run, expected)
    assert api.methods() == {"GET"}


def test_no_socket_says_so(host, tmp_path):
    url = f"unix://{tmp_path}/no-such.sock"
    assert_docker_down(check(host, url), f"cannot reach {url}: no such socket")
    assert_cli_failed_cleanly(host.check(url, "--format=json"), "no such socket")


def test_socket_nobody_listens_on_is_connection_refused(host, tmp_path):
    path = tmp_path / "dead.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # bound, never listening: what a crashed dockerd leaves
    try:
        report = check(host, f"unix://{path}")
    finally:
        dead.close()
    assert_docker_down(report, "connection refused; is dockerd running?")


def test_hung_api_cannot_outlast_the_check_timeout(host, scenario):
    # A Docker timeout longer than the check's: the check's deadline still holds.
    with FakeDockerAPI(scenario, mode="hang") as api:
        began = time.monotonic()
        run = host.check(
            api.base_url, "--format=json", "--docker.timeout=30s", "--check.timeout=1s"
        )
        elapsed = time.monotonic() - began
    assert 1.0 <= elapsed < 2.5  # the deadline, plus slack for a loaded machine
    assert_cli_failed_cleanly(run, "timed out after 1s")


def test_slow_api_within_the_timeout_is_fine(host, scenario):
    with FakeDockerAPI(scenario, mode="slow", delay=0.05) as api:
        report = check(host, api.base_url)
    assert report.evaluated and report.up and report.findings == ()


def test_container_gone_between_list_and_inspect_is_left_out(host, scenario):
    # The one legit race: the container stopped after the list; a second list confirms it.
    scenario.dying.add(FIRST)
    with FakeDockerAPI(scenario) as api:
        report = check(host, api.base_url)
    assert report.evaluated and report.up, report.errors
    bridge = next(n for n in report.networks if n.name == "bridge")
    assert bridge.containers == 3  # client2 is gone; the other three on bridge are judged
    assert sum(1 for _, path in api.requests if path.startswith("/v1.41/containers/json")) == 2


def test_event_stream_is_read_with_get_only(scenario):
    reasons: list[str] = []
    with FakeDockerAPI(scenario) as api:
        watcher = DockerEventWatcher(reasons.append, docker_host=api.base_url, docker_timeout=1)
        watcher.start()
        deadline = time.monotonic() + 5
        while not any(path.startswith("/v1.41/events") for _, path in api.requests):
            assert time.monotonic() < deadline, api.requests
            time.sleep(0.02)
        api.emit(event("container", "start", FIRST))
        while not reasons and time.monotonic() < deadline:
            time.sleep(0.02)
        watcher.stop()
    assert reasons == ["container start"]
    assert api.methods() == {"GET"}
