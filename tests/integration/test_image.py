"""The exporter's image, built from the Dockerfile and run exactly as the README says.

Why: the README's `docker run` lines are what operators paste. They promise that the host
network, a read-only Docker socket, a read-only root filesystem and NET_ADMIN + NET_RAW alone are
enough for a true verdict, that the HEALTHCHECK turns healthy and that the one-shot `check` gives
the documented exit codes. Here the real image (tests/image.py builds it once per session, no
registry) runs in a lab daemon (tests/lab.py: its own network namespace, icc=false, web exposing
80 and client --link web), on both iptables backends: `iptables-legacy-save` is the tool that
needs NET_RAW. The lines are read out of README.md; only the socket and /etc/docker host paths
and the image tag are substituted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from tests.image import (
    EXPORTER_IMAGE,
    BuiltImages,
    image_layers,
    images_for_tests,
    load,
    readme_command,
    substitute,
    wait_until,
)
from tests.lab import BACKENDS, DockerLab

pytestmark = pytest.mark.lab

SERVE_MARKER = "docker-run-serve"
CHECK_MARKER = "docker-run-check"
METRICS_URL = "http://127.0.0.1:9863/metrics"
BREACH = ("DOCKER-USER", "-j", "ACCEPT")
# Largest acceptable image (134 MB measured): the Debian minbase + python3 base is 117 MB of it.
MAX_IMAGE_BYTES = 150 * 1000 * 1000


@pytest.fixture(scope="session")
def images(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> BuiltImages:
    return images_for_tests(request, tmp_path_factory)


@pytest.fixture(scope="module", params=BACKENDS, ids=BACKENDS)
def lab(request: pytest.FixtureRequest, images: BuiltImages) -> Iterator[DockerLab]:
    with DockerLab() as running:
        running.start(icc=False, backend=request.param)
        running.run("web", expose=["80/tcp"])
        running.run("client", links=["web:db"])
        running.run("other")
        with running.timings.step("load"):
            load(running, images.exporter)
        yield running


def readme_run(lab: DockerLab, marker: str, *, socket: bool = True) -> list[str]:
    """The README's line for this lab: its socket and daemon.json, the image built here."""
    return substitute(
        readme_command(marker),
        image=EXPORTER_IMAGE,
        socket=str(lab.sock) if socket else None,
        config_dir=str(lab.dir),
    )


@pytest.fixture(scope="module")
def served(lab: DockerLab) -> str:
    """The exporter serving, started with the README's `docker run -d` line; its container id."""
    container = lab.docker(*readme_run(lab, SERVE_MARKER), timeout=120).stdout.strip()
    wait_until(lambda: up_metrics(lab), "docker_netpolicy_up 1 on /metrics", timeout=60)
    return container


def scrape(lab: DockerLab) -> str:
    try:
        return lab.http_get(METRICS_URL)
    except Exception:  # noqa: BLE001 - not listening yet
        return ""


def up_metrics(lab: DockerLab) -> str:
    text = scrape(lab)
    return text if "docker_netpolicy_up 1.0" in text.splitlines() else ""


def sample(metrics: str, name: str, **labels: str) -> float | None:
    """The value of NAME{labels...} (labels a subset of the sample's), None when absent."""
    for line in metrics.splitlines():
        found = re.match(rf"{name}(?:{{(.*)}})? (\S+)$", line)
        if found and all(f'{k}="{v}"' in (found.group(1) or "") for k, v in labels.items()):
            return float(found.group(2))
    return None


def test_image_holds_no_pip_compiler_or_apt_lists(images: BuiltImages) -> None:
    names = image_layers(images.exporter)
    assert any(n.endswith("opt/exporter/bin/docker-netpolicy-exporter") for n in names)
    leftovers = [
        n
        for n in names
        if re.search(
            r"(^|/)(opt/exporter/bin/pip|src/)|/(pip|setuptools)/|python-wheels/|bin/gcc", n
        )
        or re.match(r"(\./)?var/lib/apt/lists/.+\w", n)
    ]
    assert leftovers == []
    assert images.size_bytes < MAX_IMAGE_BYTES, f"{images.size_bytes / 1e6:.0f} MB"


def test_serve_from_the_readme_line_is_clean(lab: DockerLab, served: str) -> None:
    metrics = up_metrics(lab)
    for source in ("docker", "settings", "iptables", "ip6tables", "ebtables", "ipset", "nftables"):
        assert sample(metrics, "docker_netpolicy_source_up", source=source) == 1.0, source
    assert sample(metrics, "docker_netpolicy_drift_detected") == 0.0
    assert sample(metrics, "docker_netpolicy_isolation_breaches", network="bridge") == 0.0
    assert sample(metrics, "docker_netpolicy_unknown_flows", network="bridge") == 0.0
    link = {"source": "client", "target": "web", "port": "80", "protocol": "tcp"}
    assert sample(metrics, "docker_netpolicy_link_flow_allowed", **link) == 1.0


def test_serve_shows_a_breach_injected_in_the_lab_namespace(lab: DockerLab, served: str) -> None:
    lab.iptables("-I", *BREACH)
    try:
        # The next scheduled check (every 15s) reads the new rule.
        metrics = wait_until(
            lambda: breached(scrape(lab)), "an isolation breach on /metrics", timeout=60
        )
    finally:
        lab.iptables("-D", *BREACH)
    assert sample(metrics, "docker_netpolicy_up") == 1.0
    assert sample(metrics, "docker_netpolicy_drift_detected") == 1.0


def breached(metrics: str) -> str:
    value = sample(metrics, "docker_netpolicy_isolation_breaches", network="bridge")
    return metrics if value is not None and value > 0 else ""


def test_healthcheck_turns_healthy(lab: DockerLab, served: str) -> None:
    def health() -> str:
        state = json.loads(lab.docker("inspect", served).stdout)[0]["State"]
        return "" if state["Health"]["Status"] != "healthy" else "healthy"

    wait_until(health, "the image's HEALTHCHECK reporting healthy", timeout=90)


def test_one_shot_check_gives_the_documented_exit_codes(lab: DockerLab) -> None:
    clean_run = lab.docker(*readme_run(lab, CHECK_MARKER), check=False, timeout=120)
    assert clean_run.returncode == 0, clean_run.stdout + clean_run.stderr
    assert "drift: no" in clean_run.stdout
    lab.iptables("-I", *BREACH)
    try:
        drift = lab.docker(*readme_run(lab, CHECK_MARKER), check=False, timeout=120)
    finally:
        lab.iptables("-D", *BREACH)
    assert drift.returncode == 1, drift.stdout + drift.stderr
    assert "drift: yes" in drift.stdout
    no_socket = lab.docker(*readme_run(lab, CHECK_MARKER, socket=False), check=False, timeout=120)
    assert no_socket.returncode == 2, no_socket.stdout + no_socket.stderr
    assert "Traceback" not in no_socket.stdout + no_socket.stderr
    assert "source down: docker" in no_socket.stdout


def test_one_shot_check_without_host_network_does_not_invent_breaches(lab: DockerLab) -> None:
    argv = readme_run(lab, CHECK_MARKER)
    at = argv.index("--network")
    del argv[at : at + 2]  # the documented line minus --network host: the default bridge
    result = lab.docker(*argv, check=False, timeout=120)
    assert result.returncode == 2, result.stdout[-3000:]
    assert "--network host" in result.stderr + result.stdout, result.stderr[-3000:]
