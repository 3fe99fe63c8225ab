"""GET-only Docker access and least privilege, proven against a real dockerd.

Why: the README promises the exporter only reads from Docker and needs only NET_ADMIN and
NET_RAW; deploy/README.md tells operators to run it behind a read-only socket proxy and under the
hardened systemd unit. Here:
- a filtering proxy (tests/fakes/docker_proxy.py) sits between the exporter and a lab dockerd,
  lets through GETs of /_ping, /version, /info, /networks, /containers/json,
  /containers/ID/json and /events, answers 403 to anything else and records every call.
  `check` and `serve` must work through it (a clean host is clean, a breach is found), nothing
  may be refused and every call must be an allowed GET;
- `check` runs with the unit's restrictions (capability bounding set NET_ADMIN + NET_RAW,
  no-new-privileges, no writable+executable memory) and must still see clean and breach right,
  on both iptables backends;
- `serve` (and the tools it runs) makes no system call outside the unit's SystemCallFilter=, as
  strace sees it. There is no systemd here to apply the filter itself; a call outside it would
  fail with EPERM only on a real host.
"""

from __future__ import annotations

import ctypes
import http.client
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from tests.fakes.docker_proxy import Call, DockerProxy
from tests.lab import REPO_ROOT, DockerLab, exporter_env, lab_fixture
from tests.unit.test_systemd import UNIT, unit_settings

pytestmark = pytest.mark.lab

BREACH = ("DOCKER-USER", "-j", "ACCEPT")
# What deploy/systemd/docker-netpolicy-exporter.service grants, as setpriv(1) flags: with the
# noroot securebits, uid 0 gets no capabilities at exec, only the ambient ones.
UNIT_RESTRICTIONS = (
    "setpriv",
    "--bounding-set=-all,+net_admin,+net_raw",
    "--inh-caps=-all,+net_admin,+net_raw",
    "--ambient-caps=-all,+net_admin,+net_raw",
    "--securebits=+noroot,+noroot_locked",
    "--no-new-privs",
)
# Linux >= 6.3: the kernel's write-xor-execute switch, the rule MemoryDenyWriteExecute= sets.
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


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


@pytest.fixture
def breach(lab: DockerLab) -> Iterator[None]:
    """An ACCEPT-everything rule in DOCKER-USER: every denied flow becomes allowed."""
    lab.iptables("-I", *BREACH)
    try:
        yield
    finally:
        lab.iptables("-D", *BREACH)


def assert_get_only(calls: list[Call], *, must_include: set[str]) -> None:
    """Nothing refused, every call an allowed GET, and the calls the exporter needs were made."""
    assert calls, "the exporter made no Docker call through the proxy"
    assert [c for c in calls if not c.allowed] == [], f"refused or not a GET: {calls}"
    routes = {c.route for c in calls}
    assert must_include <= routes, f"expected {must_include - routes}, got {calls}"


def check_through(lab: DockerLab, proxy: DockerProxy) -> subprocess.CompletedProcess[str]:
    return lab.exporter("check", "--docker.host", proxy.url)


def test_check_through_proxy_is_clean(lab: DockerLab, proxy: DockerProxy) -> None:
    result = check_through(lab, proxy)
    assert result.returncode == 0, f"expected no drift:\n{result.stdout}\n{result.stderr}"
    assert_get_only(
        proxy.calls(), must_include={"/networks", "/containers/json", "/containers/{id}/json"}
    )


def test_check_through_proxy_finds_a_breach(
    lab: DockerLab, proxy: DockerProxy, breach: None
) -> None:
    result = check_through(lab, proxy)
    assert result.returncode == 1, f"expected drift:\n{result.stdout}\n{result.stderr}"
    assert_get_only(
        proxy.calls(), must_include={"/networks", "/containers/json", "/containers/{id}/json"}
    )


def test_serve_through_proxy_follows_events_and_stays_get_only(
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
        metrics = wait_for_metrics(lab, url, lambda m: "docker_netpolicy_up 1.0" in m)
        assert "docker_netpolicy_drift_detected 0.0" in metrics.splitlines(), metrics
        wait_for(lambda: any(c.route == "/events" for c in proxy.calls()), "GET /events")
        # A container started now must reach the exporter through the /events stream.
        listed = count_listings(proxy)
        lab.run("late")
        wait_for(lambda: count_listings(proxy) > listed, "a check triggered by the event")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, (lab.dir / "serve-proxy.log").read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert_get_only(proxy.calls(), must_include={"/events", "/networks", "/containers/json"})


def test_proxy_refuses_writes_and_other_reads(lab: DockerLab, proxy: DockerProxy) -> None:
    """The proof above means something only if the proxy really stops what is not allowed."""
    name = f"intruder{secrets.token_hex(3)}"
    assert request(proxy, "POST", f"/v1.41/containers/create?name={name}", b"{}") == 403
    assert request(proxy, "GET", "/v1.41/containers/web/logs") == 403
    assert request(proxy, "DELETE", "/containers/web") == 403
    assert request(proxy, "GET", "/v1.41/containers/json") == 200
    assert name not in lab.docker("ps", "-a", "--format", "{{.Names}}").stdout
    assert lab.inspect("web")["State"]["Running"] is True
    assert [(c.method, c.allowed) for c in proxy.calls()] == [
        ("POST", False),
        ("GET", False),
        ("DELETE", False),
        ("GET", True),
    ]


def test_check_with_only_the_units_privileges_is_clean_then_finds_a_breach(
    lab: DockerLab,
) -> None:
    """Against the lab socket itself: dockerd is found by its -H (our ptrace rights are gone)."""
    clean = check_restricted(lab)
    assert clean.returncode == 0, f"expected no drift:\n{clean.stdout}\n{clean.stderr}"
    lab.iptables("-I", *BREACH)
    try:
        breached = check_restricted(lab)
    finally:
        lab.iptables("-D", *BREACH)
    assert breached.returncode == 1, f"expected drift:\n{breached.stdout}\n{breached.stderr}"


def check_restricted(lab: DockerLab) -> subprocess.CompletedProcess[str]:
    """`check` in the lab namespace with the systemd unit's capabilities and memory rule.

    setpriv comes after nsenter: entering the namespace needs CAP_SYS_ADMIN, the exporter not.
    """
    nsenter, netns, *exporter = lab.exporter_cmd("check")
    libc = ctypes.CDLL(None, use_errno=True)

    def deny_write_execute() -> None:
        if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE) failed: Linux >= 6.3 needed")

    return subprocess.run(
        [nsenter, netns, *UNIT_RESTRICTIONS, *exporter],
        preexec_fn=deny_write_execute,  # noqa: PLW1509 - a prctl before exec, inherited
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env=exporter_env(),
        check=False,
    )


def test_serve_makes_no_system_call_outside_the_units_filter(lab: DockerLab) -> None:
    strace = shutil.which("strace")
    assert strace, "strace not found: install Debian's strace package"
    allowed = unit_syscall_filter()
    trace = lab.dir / f"strace-{secrets.token_hex(3)}.txt"
    port = lab.free_port()
    nsenter, netns, *exporter = lab.exporter_cmd(
        "serve", "--web.listen-address", f"127.0.0.1:{port}"
    )
    traced = subprocess.Popen(
        [nsenter, netns, strace, "-f", "-qq", "-o", str(trace), *exporter],
        cwd=REPO_ROOT,
        env=exporter_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for_metrics(lab, url, lambda m: "docker_netpolicy_up 1.0" in m.splitlines())
        # SIGTERM to the exporter itself: strace would answer it by killing its tracee.
        exporter_pid = int(subprocess.check_output(["pgrep", "-P", str(traced.pid)]).split()[0])
        os.kill(exporter_pid, signal.SIGTERM)
        assert traced.wait(timeout=20) == 0
    finally:
        if traced.poll() is None:
            traced.kill()
            traced.wait(timeout=10)
    used = traced_syscalls(trace.read_text())
    assert {"execve", "connect", "bind"} <= used, "the trace lost the calls it must show"
    assert used - allowed == set()


def unit_syscall_filter() -> set[str]:
    """The system calls the unit's SystemCallFilter= lines allow (allow lists minus ~ lists)."""
    allowed: set[str] = set()
    denied: set[str] = set()
    for value in unit_settings(UNIT.read_text())["SystemCallFilter"]:
        target = denied if value.startswith("~") else allowed
        for name in value.lstrip("~").split():
            target |= syscall_set(name)
    return allowed - denied


def syscall_set(name: str) -> set[str]:
    """NAME itself, or every system call in the @group NAME (groups nest)."""
    if not name.startswith("@"):
        return {name}
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", name],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.splitlines()[1:]  # the first line is the group's own name
    names: set[str] = set()
    for line in (line.strip() for line in listing):
        if line and not line.startswith("#"):
            names |= syscall_set(line)
    return names


def traced_syscalls(trace: str) -> set[str]:
    """System call names in `strace -f` output ("PID name(" or "PID <... name resumed>")."""
    return set(re.findall(r"(?m)^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]", trace))


def count_listings(proxy: DockerProxy) -> int:
    return sum(c.route == "/containers/json" for c in proxy.calls())


def request(proxy: DockerProxy, method: str, path: str, body: bytes | None = None) -> int:
    """Send one HTTP request to the proxy's unix socket; return the status code."""
    conn = _UnixHTTPConnection(proxy.listen)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def wait_for_metrics(
    lab: DockerLab, url: str, ready: Callable[[str], bool], timeout: float = 60
) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        try:
            text = lab.http_get(url)
        except Exception:  # noqa: BLE001 - not listening yet
            text = ""
        if ready(text):
            return text
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready within {timeout}s; last:\n{text[-2000:]}")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout}s")
