"""The collector translates the last Report into the public metrics; Latest counts drift events.

Golden file: tests/fixtures/golden/metrics.txt is the whole /metrics output for `sample_report()`
published after `previous_report()`. After an intended change of metric names, HELP texts or
values, regenerate it and review the diff by eye (it is the public contract):

    UPDATE_GOLDEN=1 python -m pytest tests/unit/test_collector.py -k golden
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporter.collector import METRICS, NetpolicyCollector
from exporter.latest import Latest
from exporter.model import HostSettings, Setting
from exporter.report import (
    BLOCKED_LINK_FLOW,
    FINDING_KINDS,
    ICC_DROP_MISSING,
    ISOLATION_BREACH,
    MISSING_ACCEPT_RULE,
    UNKNOWN_FLOW,
    Finding,
    Flow,
    FlowCount,
    NetworkStatus,
    Report,
    SourceStatus,
)

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "metrics.txt"
README = Path(__file__).resolve().parents[2] / "README.md"
PROMTOOL = "promtool"

SOURCES = (
    SourceStatus("docker", True, 0.012),
    SourceStatus("settings", True, 0.001),
    SourceStatus("iptables", True, 0.034),
    SourceStatus("ip6tables", False, 0.002, "ip6tables-save: command not found"),
)


def previous_report() -> Report:
    return Report(
        started=1700000000.0,
        duration_seconds=0.25,
        sources=SOURCES[:3],
        up=True,
        evaluated=True,
        docker_version="27.3.1",
        findings=(
            Finding(
                ICC_DROP_MISSING,
                "bridge",
                "no DROP for docker0 -> docker0",
                rule="-A DOCKER-FORWARD -i docker0 -o docker0 -j DROP",
            ),
        ),
    )


def sample_report() -> Report:
    breach = Finding(
        ISOLATION_BREACH,
        "bridge",
        "web may reach db on tcp/5432 though icc is disabled",
        containers=("web", "db"),
        protocol="tcp",
        port=5432,
        rule="-A FORWARD -i docker0 -o docker0 -j ACCEPT",
        restore="iptables -D FORWARD -i docker0 -o docker0 -j ACCEPT",
    )
    return Report(
        started=1700000015.5,
        duration_seconds=0.375,
        sources=SOURCES,
        up=False,
        evaluated=True,
        docker_version="27.3.1",
        settings=HostSettings(
            iptables=Setting(True, "default"),
            icc=Setting(False, "daemon.json"),
            bridge_nf_call_iptables=1,
        ),
        iptables_backend="nft",
        backend_rules=(("nft", "ipv4", 42), ("legacy", "ipv4", 0)),
        forward_policy="DROP",
        networks=(
            NetworkStatus(
                "bridge",
                "docker0",
                icc=False,
                containers=3,
                expected_accept_rules=4,
                missing_accept_rules=2,
                unexpected_accept_rules=0,
                isolation="none",
            ),
            NetworkStatus("backend", "br-0123456789ab", icc=True, containers=2),
        ),
        findings=(
            # ICC_DROP_MISSING persists from the previous check: no new drift event.
            previous_report().findings[0],
            breach,
            Finding(
                MISSING_ACCEPT_RULE,
                "bridge",
                "link app -> cache (alias redis) tcp/6379",
                containers=("app", "cache"),
                protocol="tcp",
                port=6379,
            ),
            Finding(
                BLOCKED_LINK_FLOW,
                "bridge",
                "app may not reach cache on tcp/6379",
                containers=("app", "cache"),
                protocol="tcp",
                port=6379,
            ),
            Finding(UNKNOWN_FLOW, "backend", "a rule with an unsupported match decides"),
        ),
        flows=(
            Flow(
                "bridge",
                "app",
                "cache",
                "tcp",
                6379,
                "allow",
                "deny",
                alias="redis",
                reason="filter FORWARD policy DROP",
            ),
            Flow("bridge", "app", "cache", "tcp", 6380, "allow", "allow", alias="redis"),
            # Unknown link verdicts and IPv6 link flows are not listed in link_flow_allowed.
            Flow("bridge", "app", "cache", "udp", 6379, "allow", "unknown", alias="redis"),
            Flow(
                "bridge", "app", "cache", "tcp", 6379, "allow", "deny", family="ipv6", alias="redis"
            ),
            Flow("bridge", "web", "db", "tcp", 5432, "deny", "allow"),
            Flow("backend", "api", "queue", "tcp", None, "allow", "unknown"),
        ),
        flow_counts=(
            FlowCount("bridge", "allow", "allow", 1),
            FlowCount("bridge", "allow", "deny", 1),
            FlowCount("bridge", "allow", "unknown", 1),
            FlowCount("bridge", "deny", "deny", 3),
            FlowCount("bridge", "deny", "allow", 1),
            FlowCount("bridge", "deny", "allow", 1, family="ipv6"),
            FlowCount("backend", "allow", "unknown", 1),
            FlowCount("backend", "allow", "allow", 1),
        ),
        errors=("ip6tables-save: command not found",),
    )


def registry_for(*reports: Report) -> tuple[CollectorRegistry, Latest]:
    latest = Latest()
    for report in reports:
        latest.publish(report)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NetpolicyCollector(latest, version="0.1.0"))
    return registry, latest


def test_golden_metrics():
    registry, _ = registry_for(previous_report(), sample_report())
    text = generate_latest(registry).decode()
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_spot_values():
    registry, _ = registry_for(previous_report(), sample_report())
    value = registry.get_sample_value
    assert value("docker_netpolicy_up") == 0
    assert value("docker_netpolicy_source_up", {"source": "ip6tables"}) == 0
    assert value("docker_netpolicy_checks_total") == 2
    assert value("docker_netpolicy_check_errors_total", {"source": "ip6tables"}) == 1
    assert value("docker_netpolicy_check_errors_total", {"source": "docker"}) == 0
    assert value("docker_netpolicy_last_success_timestamp_seconds") == 1700000000.0
    assert value("docker_netpolicy_last_check_timestamp_seconds") == 1700000015.5
    assert value("docker_netpolicy_isolation_breaches", {"network": "bridge"}) == 2
    assert value("docker_netpolicy_isolation_breaches", {"network": "backend"}) == 0
    assert value("docker_netpolicy_blocked_link_flows", {"network": "bridge"}) == 1
    assert value("docker_netpolicy_unknown_flows", {"network": "backend"}) == 1
    assert value("docker_netpolicy_drift_detected") == 1
    assert value("docker_netpolicy_drift_events_total", {"kind": ICC_DROP_MISSING}) == 1
    assert value("docker_netpolicy_drift_events_total", {"kind": ISOLATION_BREACH}) == 1
    labels = {
        "network": "bridge",
        "source": "app",
        "target": "cache",
        "alias": "redis",
        "protocol": "tcp",
        "port": "6379",
    }
    assert value("docker_netpolicy_link_flow_allowed", labels) == 0
    assert value("docker_netpolicy_link_flow_allowed", {**labels, "port": "6380"}) == 1
    assert value("docker_netpolicy_link_flow_allowed", {**labels, "protocol": "udp"}) is None
    assert value("docker_netpolicy_findings", {"kind": UNKNOWN_FLOW, "network": "backend"}) == 1
    assert value("docker_netpolicy_build_info", {"version": "0.1.0"}) == 1


def test_not_evaluated_hides_policy_series():
    failed = Report(
        started=1700000030.0,
        duration_seconds=10.0,
        sources=(SourceStatus("docker", False, 10.0, "timed out after 10s"),),
        errors=("check timed out after 10s",),
    )
    registry, _ = registry_for(previous_report(), sample_report(), failed)
    text = generate_latest(registry).decode()
    value = registry.get_sample_value
    assert value("docker_netpolicy_up") == 0
    assert value("docker_netpolicy_source_up", {"source": "docker"}) == 0
    assert value("docker_netpolicy_last_check_timestamp_seconds") == 1700000030.0
    for name in (
        "drift_detected",
        "isolation_breaches",
        "icc_enabled",
        "flows",
        "findings",
        "forward_policy",
        "iptables_rules",
        "link_flow_allowed",
        "containers",
        "iptables_managed",
        "bridge_nf_call_iptables",
        "missing_accept_rules",
    ):
        assert f"docker_netpolicy_{name}" not in text, name
    # Counters stay, and keep their values.
    assert value("docker_netpolicy_checks_total") == 3
    assert value("docker_netpolicy_drift_events_total", {"kind": ISOLATION_BREACH}) == 1


def test_before_first_check():
    registry, _ = registry_for()
    value = registry.get_sample_value
    assert value("docker_netpolicy_up") == 0
    assert value("docker_netpolicy_checks_total") == 0
    assert value("docker_netpolicy_last_success_timestamp_seconds") == 0
    assert value("docker_netpolicy_last_check_timestamp_seconds") is None
    for kind in FINDING_KINDS:
        assert value("docker_netpolicy_drift_events_total", {"kind": kind}) == 0


def test_unknown_settings_are_absent():
    report = Report(
        started=1.0, duration_seconds=0.1, up=True, evaluated=True, settings=HostSettings()
    )
    registry, _ = registry_for(report)
    assert registry.get_sample_value("docker_netpolicy_iptables_managed") is None
    assert registry.get_sample_value("docker_netpolicy_bridge_nf_call_iptables") is None
    assert registry.get_sample_value("docker_netpolicy_drift_detected") == 0


def test_promtool_accepts_the_output(tmp_path):
    # promtool is a real dependency of the test suite: missing means fail, never skip.
    promtool = shutil.which(PROMTOOL)
    assert promtool, "promtool not found on PATH (install prometheus' promtool)"
    registry, _ = registry_for(previous_report(), sample_report())
    for text in (generate_latest(registry), generate_latest(registry_for()[0])):
        result = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30
        )
        assert result.returncode == 0, (result.stdout + result.stderr).decode()


def readme_metrics() -> list[tuple[str, str, tuple[str, ...]]]:
    """(name, type, labels) of each row of the table in README.md's "## Metrics" section."""
    section = README.read_text().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue  # prose, the header or the separator row
        labels = tuple(re.findall(r"`([^`]+)`", cells[2]))
        rows.append((cells[0].strip("`"), cells[1], labels))
    return rows


def test_readme_lists_exactly_the_exported_metrics():
    documented = readme_metrics()
    names = [name for name, _, _ in documented]
    assert len(names) == len(set(names)), "a metric is listed twice in README.md"
    exported = {(spec.sample_name, spec.type, spec.labels) for spec in METRICS}
    assert set(documented) - exported == set(), "README.md lists metrics that are not exported"
    assert exported - set(documented) == set(), "README.md misses (or mislabels) these metrics"


def test_metric_names_are_unique():
    names = [spec.name for spec in METRICS]
    assert len(names) == len(set(names))


def test_every_spec_exposes_its_name():
    # The sample report sets every series; the names exposed are the ones the table (and so the
    # README) gives, suffixes of counters included.
    registry, _ = registry_for(previous_report(), sample_report())
    exposed = {sample.name for family in registry.collect() for sample in family.samples}
    assert exposed == {spec.sample_name for spec in METRICS}


# -- Latest ----------------------------------------------------------------------------------


def _report(
    *findings: Finding, evaluated: bool = True, up: bool = True, started: float = 1.0
) -> Report:
    return Report(
        started=started,
        duration_seconds=0.1,
        up=up,
        evaluated=evaluated,
        sources=(SourceStatus("docker", up, 0.1, None if up else "down"),),
        findings=findings,
    )


BREACH = Finding(
    ISOLATION_BREACH, "bridge", "a -> b", containers=("a", "b"), protocol="tcp", port=80
)


def test_drift_events_count_appearances():
    latest = Latest()
    events = lambda: latest.snapshot().drift_events_total[ISOLATION_BREACH]  # noqa: E731
    latest.publish(_report())
    assert events() == 0
    latest.publish(_report(BREACH))  # appears
    assert events() == 1
    latest.publish(_report(BREACH))  # persists: same identity, no new event
    assert events() == 1
    # The detail text is not part of the identity.
    latest.publish(
        _report(
            Finding(
                ISOLATION_BREACH,
                "bridge",
                "reworded",
                containers=("a", "b"),
                protocol="tcp",
                port=80,
            )
        )
    )
    assert events() == 1
    latest.publish(_report())  # disappears
    assert events() == 1
    latest.publish(_report(BREACH))  # reappears: counts again
    assert events() == 2
    other_port = Finding(
        ISOLATION_BREACH, "bridge", "a -> b", containers=("a", "b"), protocol="tcp", port=81
    )
    latest.publish(_report(BREACH, other_port))
    assert events() == 3
    assert latest.snapshot().checks_total == 7


def test_failed_check_neither_clears_nor_recounts_findings():
    latest = Latest()
    latest.publish(_report(BREACH))
    latest.publish(_report(evaluated=False, up=False))
    latest.publish(_report(BREACH))
    view = latest.snapshot()
    assert view.drift_events_total[ISOLATION_BREACH] == 1
    assert view.check_errors_total == {"docker": 1}


def test_last_success_and_view_is_immutable():
    latest = Latest()
    latest.publish(_report(started=5.0))
    latest.publish(_report(started=9.0, up=False))
    view = latest.snapshot()
    assert view.last_success == 5.0
    assert view.report is not None and view.report.started == 9.0
    with pytest.raises(TypeError):
        view.drift_events_total[ISOLATION_BREACH] = 5  # type: ignore[index]
    latest.publish(_report(BREACH, started=12.0))
    assert view.checks_total == 2  # an old view does not change
    assert latest.snapshot().last_success == 12.0
