"""Prometheus + Alertmanager around the exporter, for end-to-end tests and `make demo`.

Why: the alert rules and the dashboard are only proven when a real Prometheus scrapes a real
exporter, evaluates the repo's rules and delivers to a real Alertmanager. One launcher serves both
tests/e2e/test_prometheus.py (everything inside a lab namespace, torn down by the test) and
scripts/demo.py (Prometheus and Alertmanager on the host's 127.0.0.1, detached so they outlive the
command): one way to write the configs, start the binaries and read their APIs.

Recipe (docs/lab.md, "Prometheus and Alertmanager"):
Alertmanager first (an alert fired before Prometheus knows its Alertmanager is dropped and only
resent after --rules.alert.resend-delay, so that is 1s here), `--cluster.listen-address=` empty (no
gossip), a `blackhole` default receiver, each with its own storage directory.

Nothing here imports pytest: the demo uses it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = "/usr/bin/prometheus"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
JOB = "docker-netpolicy"
"""The scrape job name the alerts assume (DockerNetpolicyExporterDown matches on it)."""
RULE_GLOB = str(REPO_ROOT / "alerts" / "*.yml")

Getter = Callable[[str], str]
"""GET a URL and return the body; raise on any failure (connection, HTTP status)."""


class MonitoringError(RuntimeError):
    """Prometheus or Alertmanager could not be started or did not answer."""


def preflight() -> None:
    """Fail loudly, never skip: a machine without the binaries must not pass the e2e tests."""
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (network namespaces, iptables)")
    for binary, package in ((PROMETHEUS, "prometheus"), (ALERTMANAGER, "prometheus-alertmanager")):
        if not os.access(binary, os.X_OK):
            problems.append(f"{binary} missing (Debian package {package}; scripts/install-deps.sh)")
    if problems:
        raise MonitoringError("cannot run Prometheus/Alertmanager: " + "; ".join(problems))


def host_get(url: str, timeout: float = 5) -> str:
    """A Getter for the current network namespace."""
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - local URLs only
        return r.read().decode()


def prometheus_config(
    targets: Sequence[str], alertmanager: str, interval: str, rule_glob: str = RULE_GLOB
) -> str:
    """prometheus.yml as JSON (a subset of YAML): one job, the repo's rules, one Alertmanager."""
    config = {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": interval,
            "scrape_timeout": interval,
        },
        "rule_files": [rule_glob],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": list(targets)}]}],
    }
    return json.dumps(config, indent=2) + "\n"


ALERTMANAGER_CONFIG = """\
# Alerts are only shown (UI and /api/v2/alerts), never sent anywhere.
route:
  receiver: blackhole
  group_by: [alertname, instance, network]
  group_wait: 1s
  group_interval: 5s
  repeat_interval: 1h
receivers:
  - name: blackhole
"""


@dataclass
class Stack:
    """Alertmanager + Prometheus scraping TARGETS with the repo's alert rules.

    dir: where configs, data and logs go (prometheus/, alertmanager/).
    wrap: prefix of both command lines, e.g. ["nsenter", "--net=/run/netns/NS"]; [] = here.
    get: how to reach their HTTP APIs from this process (see `Getter`).
    Processes run in their own session so they survive the command that started them; `stop()`
    (or `stop_pid()` with a recorded pid) ends them.
    """

    dir: Path
    targets: Sequence[str]
    prometheus_addr: str
    alertmanager_addr: str
    interval: str = "1s"
    wrap: Sequence[str] = ()
    get: Getter = host_get
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.prometheus_addr}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://{self.alertmanager_addr}"

    def log(self, name: str) -> Path:
        return self.dir / name / f"{name}.log"

    def start(self, timeout: float = 60) -> None:
        """Write the configs, start Alertmanager, wait until ready, then Prometheus likewise."""
        preflight()
        am, prom = self.dir / "alertmanager", self.dir / "prometheus"
        for d in (am / "data", prom / "data"):
            d.mkdir(parents=True, exist_ok=True)
        (am / "alertmanager.yml").write_text(ALERTMANAGER_CONFIG)
        (prom / "prometheus.yml").write_text(
            prometheus_config(self.targets, self.alertmanager_addr, self.interval)
        )
        self._spawn(
            "alertmanager",
            [
                ALERTMANAGER,
                f"--config.file={am / 'alertmanager.yml'}",
                f"--storage.path={am / 'data'}",
                f"--web.listen-address={self.alertmanager_addr}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
        )
        self.wait_ready("alertmanager", f"{self.alertmanager_url}/-/ready", timeout)
        self._spawn(
            "prometheus",
            [
                PROMETHEUS,
                f"--config.file={prom / 'prometheus.yml'}",
                f"--storage.tsdb.path={prom / 'data'}",
                f"--web.listen-address={self.prometheus_addr}",
                "--rules.alert.resend-delay=1s",
                "--log.level=warn",
            ],
        )
        self.wait_ready("prometheus", f"{self.prometheus_url}/-/ready", timeout)

    def _spawn(self, name: str, cmd: Sequence[str]) -> None:
        log = open(self.log(name), "ab")  # noqa: SIM115 - handed to the child
        try:
            self.procs[name] = subprocess.Popen(
                [*self.wrap, *cmd],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()

    def wait_ready(self, name: str, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        error = ""
        while time.monotonic() < deadline:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise MonitoringError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")
            try:
                self.get(url)
                return
            except Exception as e:  # noqa: BLE001 - not up yet
                error = str(e)
            time.sleep(0.3)
        raise MonitoringError(f"{name} not ready after {timeout}s ({error}):\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 30) -> str:
        try:
            return "\n".join(self.log(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"(no {name} log)"

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.procs.items()}

    def stop(self) -> None:
        """Prometheus first (it flushes its head block), then Alertmanager. Idempotent."""
        for name in ("prometheus", "alertmanager"):
            proc = self.procs.pop(name, None)
            if proc is not None:
                terminate(proc)

    # ------------------------------------------------------------------ APIs

    def _api(self, url: str) -> Any:
        body = json.loads(self.get(url))
        if isinstance(body, dict) and body.get("status") not in (None, "success"):
            raise MonitoringError(f"{url}: {body}")
        return body

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (or [] for an empty one)."""
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        data = self._api(url)["data"]
        result = data["result"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        return list(result)

    def prometheus_alerts(self) -> list[dict[str, Any]]:
        """Prometheus's active alerts (pending and firing): labels, state, activeAt, value."""
        return list(self._api(f"{self.prometheus_url}/api/v1/alerts")["data"]["alerts"])

    def alertmanager_alerts(self) -> list[dict[str, Any]]:
        """Alertmanager's alerts (API v2): labels, status.state, startsAt, endsAt."""
        return list(self._api(f"{self.alertmanager_url}/api/v2/alerts"))

    def rule_groups(self) -> list[dict[str, Any]]:
        """Rule groups with lastEvaluation and each rule's state."""
        return list(self._api(f"{self.prometheus_url}/api/v1/rules")["data"]["groups"])

    def evaluated_since(self, t: float) -> bool:
        """Has every rule group been evaluated after epoch time T?"""
        groups = self.rule_groups()
        return bool(groups) and all(parse_time(g["lastEvaluation"]) > t for g in groups)

    def targets_health(self) -> list[dict[str, Any]]:
        return list(self._api(f"{self.prometheus_url}/api/v1/targets")["data"]["activeTargets"])


def firing(alerts: list[dict[str, Any]], name: str | None = None) -> list[dict[str, Any]]:
    """Prometheus alerts in state firing (optionally only NAME)."""
    return [
        a
        for a in alerts
        if a.get("state") == "firing" and (name is None or a["labels"].get("alertname") == name)
    ]


def am_active(alerts: list[dict[str, Any]], name: str | None = None) -> list[dict[str, Any]]:
    """Alertmanager alerts still active: state active and endsAt not in the past.

    Alertmanager 0.25 drops resolved alerts from /api/v2/alerts; a version that keeps them shows
    them with an endsAt in the past, which counts as resolved here too.
    """
    now = time.time()
    out = []
    for a in alerts:
        if name is not None and a["labels"].get("alertname") != name:
            continue
        if a.get("status", {}).get("state") != "active":
            continue
        ends = a.get("endsAt")
        if ends and parse_time(ends) < now:
            continue
        out.append(a)
    return out


def parse_time(text: str) -> float:
    """RFC 3339 (Alertmanager writes nanoseconds; Python 3.11 reads them) -> epoch seconds."""
    return datetime.fromisoformat(text).timestamp()


def wait_for(
    what: str, probe: Callable[[], Any], timeout: float, interval: float = 0.5
) -> tuple[Any, float]:
    """Call PROBE until it returns something truthy; return (it, seconds waited).

    Exceptions from PROBE count as "not yet" (a server still starting); the last one is reported.
    """
    t0 = time.monotonic()
    last: Any = None
    error = ""
    while True:
        try:
            last = probe()
            if last:
                return last, time.monotonic() - t0
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            error = f"{type(e).__name__}: {e}"
        if time.monotonic() - t0 > timeout:
            raise MonitoringError(
                f"timed out after {timeout}s waiting for {what}; last result {last!r}; "
                f"last error {error or 'none'}"
            )
        time.sleep(interval)


def terminate(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def stop_pid(pid: int, marker: str, timeout: float = 10) -> bool:
    """SIGTERM PID (then SIGKILL) if it is still the process whose command line has MARKER.

    A recorded pid may have been reused by an unrelated process: the marker (a path only our
    process names) protects it. Returns True if it had to stop something.
    """
    if marker not in cmdline(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker not in cmdline(pid) or _zombie(pid):
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on HOST in this namespace (for the demo's host-side servers)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True
