"""GET-only Docker access, proven: the exporter works through a proxy that allows nothing else.

Why: the README promises the exporter only reads from Docker, and deploy/README.md tells operators
to put it behind a read-only socket proxy. Here a filtering proxy (tests/fakes/docker_proxy.py)
sits between the exporter and a real lab dockerd: it lets through GETs of /_ping, /version,
/info, /networks, /containers/json, /containers/ID/json and /events, answers 403 to anything
else and records every call. `check` and `serve` must work through it (a clean host is clean, a
breach is found), nothing may be refused and every call must be an allowed GET.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.fakes.docker_proxy import Call, DockerProxy
from tests.lab import DockerLab, lab_fixture

pytestmark = pytest.mark.lab

BREACH = ("DOCKER-USER", "-j", "ACCEPT")


def build_topology(lab: DockerLab) -> None:
    """Default bridge with icc=false: web exposes 80, client --link web:db, other."""
    lab.run("web", expose=["80/tcp"])
    lab.run("client", links=["web:db"])
    lab.run("other")


lab = lab_fixture(icc=False, setup=build_topology)


@pytest.fixture
def proxy(lab: DockerLab) -> Iterator[DockerProxy]:
    listen = lab.dir / f"proxy-{secrets.token_hex(3)}.sock"
    with DockerProxy(upstream=lab.sock, listen=listen) as running:
        yield running


def assert_get_only(calls: list[Call], *, must_include: set[str]) -> None:
    """Nothing refused, every call an allowed GET, and the calls the exporter needs were made."""
    assert calls, "the exporter made no Docker call through the proxy"
    refused = [c for c in calls if not c.allowed]
    assert refused == [], f"the proxy refused {refused}"
    assert {c.method for c in calls} == {"GET"}
    paths = {"/containers/ID/json" if c.path.endswith("/json") and "/containers/" in c.path
             and c.path != "/containers/json" else c.path for c in calls}
    assert must_include <= paths, f"expected calls {must_include - paths} were not made: {calls}"


def run_check(lab: DockerLab, proxy: DockerProxy) -> subprocess.CompletedProcess[str]:
    return lab.exporter("check", "--docker.host", proxy.url)


def test_check_through_proxy_is_clean_then_finds_a_breach(
    lab: DockerLab, proxy: DockerProxy
) -> None:
    clean = run_check(lab, proxy)
    assert clean.returncode == 0, f"expected no drift:\n{clean.stdout}\n{clean.stderr}"
    lab.iptables("-I", *BREACH)
    try:
        breached = run_check(lab, proxy)
    finally:
        lab.iptables("-D", *BREACH)
    assert breached.returncode == 1, f"expected drift:\n{breached.stdout}\n{breached.stderr}"
    assert_get_only(
        proxy.calls(), must_include={"/networks", "/containers/json", "/containers/ID/json"}
    )


def test_serve_through_proxy_reads_events_and_stays_get_only(
    lab: DockerLab, proxy: DockerProxy
) -> None:
    port = lab.free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    proc = lab.exporter_popen(
        "serve",
        "--docker.host",
        proxy.url,
        "--web.listen-address",
        f"127.0.0.1:{port}",
        "--check.debounce",
        "0s",
        log_name="serve-proxy.log",
    )
    try:
        metrics = wait_for_metric(lab, url, "docker_netpolicy_up 1.0")
        assert "docker_netpolicy_drift" in metrics or "docker_netpolicy_" in metrics
        # A container started now is seen through the /events stream (and listed again).
        lab.run("late")
        wait_for(lambda: any(c.path == "/events" for c in proxy.calls()), "GET /events")
        before = len(proxy.calls())
        wait_for(lambda: len(proxy.calls()) > before, "a check triggered by the event")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, (lab.dir / "serve-proxy.log").read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert_get_only(proxy.calls(), must_include={"/events", "/networks", "/containers/json"})


def wait_for_metric(lab: DockerLab, url: str, line: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            last = lab.http_get(url)
        except Exception:  # noqa: BLE001 - not listening yet
            last = ""
        if any(m.startswith(line) for m in last.splitlines()):
            return last
        time.sleep(0.5)
    raise AssertionError(f"no {line!r} at {url} within {timeout}s; last:\n{last[-2000:]}")


def wait_for(predicate: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout}s")
