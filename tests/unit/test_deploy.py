"""deploy/: the compose file, Prometheus and Alertmanager configs are valid and wired together.

Uses the Debian docker-compose (1.29) binary, promtool and amtool (scripts/install-deps.sh). A
missing tool fails the test: a deploy file nobody validated must not go green.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install the {package} package (scripts/install-deps.sh)")
    return path


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def compose() -> dict:
    """The compose file as docker-compose resolves it (paths made absolute)."""
    result = run(tool("docker-compose", "docker-compose"), "-f", str(COMPOSE), "config")
    assert result.returncode == 0, result.stdout + result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_config_is_valid(compose):
    assert {"exporter", "prometheus", "alertmanager", "grafana"} <= set(compose["services"])


def test_exporter_sees_the_host_and_little_else(compose):
    exporter = compose["services"]["exporter"]
    assert exporter["network_mode"] == "host"
    assert exporter["read_only"] is True
    assert {"NET_ADMIN", "NET_RAW"} <= set(exporter["cap_add"])
    assert exporter.get("privileged") is not True
    volumes = [str(v) for v in exporter["volumes"]]
    assert "/var/run/docker.sock:/var/run/docker.sock:ro" in volumes


def test_prometheus_and_grafana_mount_the_repository_files(compose):
    prometheus = " ".join(map(str, compose["services"]["prometheus"]["volumes"]))
    assert f"{REPO / 'alerts'}:/etc/prometheus/alerts:ro" in prometheus
    assert f"{DEPLOY / 'prometheus'}:/etc/prometheus/deploy/prometheus:ro" in prometheus
    command = compose["services"]["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/deploy/prometheus/prometheus.yml" in command
    grafana = " ".join(map(str, compose["services"]["grafana"]["volumes"]))
    assert f"{REPO / 'grafana' / 'provisioning'}:/etc/grafana/provisioning:ro" in grafana
    assert f"{REPO / 'grafana' / 'dashboards'}:/var/lib/grafana/dashboards:ro" in grafana
    alertmanager = " ".join(map(str, compose["services"]["alertmanager"]["volumes"]))
    assert "alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro" in alertmanager


def test_prometheus_config_is_valid_and_loads_the_alerts():
    result = run(tool("promtool", "prometheus"), "check", "config", str(PROMETHEUS))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # The relative rule_files path reaches alerts/ (same layout inside the container).
    assert "docker-netpolicy.rules.yml" in output and "0 rule files" not in output


def test_scrape_snippet_and_file_sd_example(tmp_path):
    """The snippet is valid as scrape_configs and the example is a valid file_sd file."""
    snippet = yaml.safe_load((DEPLOY / "prometheus" / "scrape-docker-netpolicy.yml").read_text())
    (job,) = snippet
    assert job["job_name"] == "docker-netpolicy"  # the alert rules select this job
    sd_dir = tmp_path / "file_sd"
    sd_dir.mkdir()
    shutil.copy(
        DEPLOY / "prometheus" / "file_sd" / "docker-hosts.yml.example", sd_dir / "docker-hosts.yml"
    )
    job["file_sd_configs"] = [{"files": [str(sd_dir / "*.yml")]}]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"scrape_configs": [job]}))
    result = run(tool("promtool", "prometheus"), "check", "config", str(config))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output, output
    targets = yaml.safe_load((sd_dir / "docker-hosts.yml").read_text())
    assert all(t.endswith(":9863") for group in targets for t in group["targets"])


def test_alertmanager_config_is_valid():
    result = run(
        tool("amtool", "prometheus-alertmanager"),
        "check-config",
        str(DEPLOY / "alertmanager" / "alertmanager.yml"),
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_inhibit_rules_name_real_alerts():
    rules = yaml.safe_load((REPO / "alerts" / "docker-netpolicy.rules.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    matchers = [
        m
        for rule in config["inhibit_rules"]
        for m in rule["source_matchers"] + rule["target_matchers"]
    ]
    assert matchers
    for matcher in matchers:
        op, value = re.fullmatch(r'alertname(=~|=)"([^"]+)"', matcher).groups()
        if op == "=":
            assert value in names, matcher
        else:
            assert any(re.fullmatch(value, n) for n in names), matcher
