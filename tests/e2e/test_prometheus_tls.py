"""A real Prometheus scrapes the exporter over TLS with basic auth (--web.config.file).

Why: the unit tests use Python's own TLS client; Prometheus is Go's crypto/tls and its scrape
config (`scheme: https`, `tls_config.ca_file`, `basic_auth`), the client the web config file
exists for. The exporter runs `exporter.cli.serve` with a fake check (no dockerd needed) on
127.0.0.1; Prometheus (tests/e2e/monitoring.py's binary and helpers) scrapes it every second with
the right credentials, and a second job without them, which must be down with a 401.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.cli import serve
from exporter.config import ExporterConfig, ListenAddress
from exporter.report import Report
from tests.e2e import monitoring as mon
from tests.unit.test_http_tls import ALICE_HASH, PASSWORD, make_pki

pytestmark = [pytest.mark.prometheus]

DEADLINE = 30  # seconds for a target to reach its expected health


def fake_check(check_config, files, progress):
    return Report(started=time.time(), duration_seconds=0.01, up=True, evaluated=True), {}


@pytest.fixture
def exporter_port(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """The exporter with TLS and basic auth on 127.0.0.1:<ephemeral>; its CA certificate."""
    pki = make_pki(tmp_path / "pki")
    web_config = pki.dir / "web.yml"
    web_config.write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        f"basic_auth_users:\n  alice: '{ALICE_HASH}'\n"
    )
    cfg = ExporterConfig(
        listen_address=ListenAddress("127.0.0.1", 0),
        check_interval=1.0,
        check_timeout=0.5,
        web_config_file=str(web_config),
    )
    stop = threading.Event()
    ready: list = []
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(
            serve(cfg, fake_check, stop=stop, watch_events=False, on_ready=ready.append)
        ),
        daemon=True,
    )
    thread.start()
    mon.wait_for("the exporter to listen", lambda: ready or result, timeout=10, interval=0.05)
    assert ready, f"serve exited with {result}"
    yield int(ready[0].server_address[1]), pki.ca
    stop.set()
    thread.join(5)
    assert result == [0]


def scrape_config(port: int, ca: Path) -> str:
    """prometheus.yml as JSON: the right credentials, and a job without any."""
    target = {"static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
    tls = {"scheme": "https", "tls_config": {"ca_file": str(ca)}}
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {
                "job_name": mon.JOB,
                **tls,
                "basic_auth": {"username": "alice", "password": PASSWORD},
                **target,
            },
            {"job_name": "no-credentials", **tls, **target},
        ],
    }
    return json.dumps(config, indent=2) + "\n"


def test_prometheus_scrapes_over_tls_with_basic_auth(tmp_path: Path, exporter_port) -> None:
    try:
        mon.preflight()
    except mon.MonitoringError as exc:
        pytest.fail(str(exc))
    port, ca = exporter_port
    prometheus_addr = f"127.0.0.1:{mon.free_port()}"
    stack = mon.Stack(
        dir=tmp_path / f"stack-{secrets.token_hex(4)}",
        targets=[f"127.0.0.1:{port}"],
        prometheus_addr=prometheus_addr,
        alertmanager_addr="",
    )
    prom_dir = stack.dir / "prometheus"
    (prom_dir / "data").mkdir(parents=True)
    (prom_dir / "prometheus.yml").write_text(scrape_config(port, ca))
    with open(stack.log("prometheus"), "ab") as log:
        stack.procs["prometheus"] = subprocess.Popen(
            [
                mon.PROMETHEUS,
                f"--config.file={prom_dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={prom_dir / 'data'}",
                f"--web.listen-address={prometheus_addr}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        stack.wait_ready("prometheus", f"{stack.prometheus_url}/-/ready", 60)

        def health(job: str) -> dict | None:
            for target in stack.targets_health():
                if target["labels"].get("job") == job and target["health"] != "unknown":
                    return target
            return None

        up, _ = mon.wait_for(
            "the TLS target to be up",
            lambda: (t := health(mon.JOB)) and t["health"] == "up" and t,
            DEADLINE,
        )
        assert up["scrapeUrl"].startswith("https://127.0.0.1:")
        values, _ = mon.wait_for(
            "docker_netpolicy_up from the TLS job",
            lambda: stack.query(f'docker_netpolicy_up{{job="{mon.JOB}"}}'),
            DEADLINE,
        )
        assert values[0]["value"][1] == "1"

        refused, _ = mon.wait_for(
            "the job without credentials to be down",
            lambda: (t := health("no-credentials")) and t["health"] == "down" and t,
            DEADLINE,
        )
        assert "401" in refused["lastError"], refused["lastError"]
    except mon.MonitoringError as exc:
        pytest.fail(f"{exc}\nprometheus log:\n{stack.tail('prometheus')}")
    finally:
        stack.stop()
