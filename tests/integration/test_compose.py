"""deploy/docker-compose.yml started for real: Prometheus scrapes the exporter, Alertmanager is up.

Why: the compose file is the one-host deployment the README offers. `tests/unit/test_deploy.py`
only validates it; here `docker-compose up -d` runs it against a lab daemon (tests/lab.py), so
`network_mode: host` is the lab's network namespace: no port collides with the machine's, and the
exporter judges the lab's firewall (icc=false, web exposing 80, client --link web). There is no
registry: the exporter image comes from tests/image.py's session build, Prometheus and
Alertmanager from Debian's binaries (same tests/image.py), through the compose file's
PROMETHEUS_IMAGE / ALERTMANAGER_IMAGE variables. No Grafana image can be had here, so Grafana is
the one service not started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator

import pytest
import yaml

from tests.image import (
    ALERTMANAGER_IMAGE,
    EXPORTER_IMAGE,
    PROMETHEUS_IMAGE,
    BuiltImages,
    images_for_tests,
    load,
    wait_until,
)
from tests.lab import REPO_ROOT, DockerLab, LabError

pytestmark = pytest.mark.lab

COMPOSE_FILE = REPO_ROOT / "deploy" / "docker-compose.yml"
SERVICES = ("exporter", "prometheus", "alertmanager")
PROMETHEUS = "http://127.0.0.1:9090"
ALERTMANAGER = "http://127.0.0.1:9093"
JOB = "docker-netpolicy"


@pytest.fixture(scope="session")
def images(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> BuiltImages:
    return images_for_tests(request, tmp_path_factory)


@pytest.fixture(scope="module")
def lab(images: BuiltImages) -> Iterator[DockerLab]:
    with DockerLab() as running:
        running.start(icc=False, backend="nft")
        running.run("web", expose=["80/tcp"])
        running.run("client", links=["web:db"])
        running.run("other")
        load(running, images.exporter)
        load(running, images.monitoring)
        yield running


def compose(lab: DockerLab, project: str, *args: str) -> subprocess.CompletedProcess[str]:
    """docker-compose on the repository's file, talking to the lab daemon."""
    binary = shutil.which("docker-compose")
    if binary is None:
        raise LabError("docker-compose not found (Debian package docker-compose)")
    env = {
        **os.environ,
        "DOCKER_HOST": lab.docker_host,
        "DOCKER_SOCKET": str(lab.sock),
        # The lab daemon's daemon.json, never the machine's /etc/docker.
        "DOCKERD_CONFIG_DIR": str(lab.dir),
        "EXPORTER_IMAGE": EXPORTER_IMAGE,
        "PROMETHEUS_IMAGE": PROMETHEUS_IMAGE,
        "ALERTMANAGER_IMAGE": ALERTMANAGER_IMAGE,
    }
    return subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "-p", project, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def stack(lab: DockerLab) -> Iterator[str]:
    """The stack up (Grafana aside); `down -v` afterwards, also when a test failed."""
    project = f"dnp{os.getpid()}{secrets.token_hex(3)}"
    try:
        up = compose(lab, project, "up", "-d", *SERVICES)
        assert up.returncode == 0, up.stdout + up.stderr
        yield project
    finally:
        down = compose(lab, project, "down", "-v", "--remove-orphans")
        assert down.returncode == 0, down.stdout + down.stderr


def query(lab: DockerLab, promql: str) -> list[dict]:
    url = f"{PROMETHEUS}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        answer = json.loads(lab.http_get(url))
    except (LabError, ValueError):  # not listening yet
        return []
    return answer["data"]["result"] if answer.get("status") == "success" else []


def value(lab: DockerLab, promql: str) -> float | None:
    result = query(lab, promql)
    return float(result[0]["value"][1]) if len(result) == 1 else None


def test_prometheus_scrapes_the_exporter(lab: DockerLab, stack: str) -> None:
    wait_until(
        lambda: value(lab, f'up{{job="{JOB}"}}') == 1.0,
        f'up{{job="{JOB}"}} == 1 in Prometheus',
        timeout=90,
    )
    wait_until(
        lambda: value(lab, f'docker_netpolicy_up{{job="{JOB}"}}') == 1.0,
        "docker_netpolicy_up == 1 in Prometheus",
        timeout=60,
    )
    assert value(lab, f'docker_netpolicy_drift_detected{{job="{JOB}"}}') == 0.0
    breaches = f'docker_netpolicy_isolation_breaches{{job="{JOB}",network="bridge"}}'
    assert value(lab, breaches) == 0.0


def test_prometheus_loaded_the_alert_rules_and_found_alertmanager(
    lab: DockerLab, stack: str
) -> None:
    groups = json.loads(lab.http_get(f"{PROMETHEUS}/api/v1/rules"))["data"]["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    assert loaded == repository_alerts()

    def alertmanagers() -> list:
        data = json.loads(lab.http_get(f"{PROMETHEUS}/api/v1/alertmanagers"))["data"]
        return data["activeAlertmanagers"]

    found = wait_until(alertmanagers, "Prometheus discovering Alertmanager", timeout=60)
    assert found[0]["url"].startswith(ALERTMANAGER)


def repository_alerts() -> set[str]:
    return {
        rule["alert"]
        for path in (REPO_ROOT / "alerts").glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def test_alertmanager_is_up(lab: DockerLab, stack: str) -> None:
    status = json.loads(lab.http_get(f"{ALERTMANAGER}/api/v2/status"))
    assert status["cluster"]["status"] in ("disabled", "ready"), status
    assert "receivers" in status["config"]["original"]
