"""Translate the last check's Report into metric families at scrape time.

A client_python custom collector: `collect()` takes one `Latest.snapshot()` and yields fresh
families from it, so series of vanished networks disappear by themselves and a scrape never mixes
two checks. Nothing here talks to Docker or the kernel.

Metric names and labels are a public contract (alerts and dashboards use them). Sample output
(abridged; see tests/fixtures/golden/metrics.txt for a whole one)::

    docker_netpolicy_up 1.0
    docker_netpolicy_source_up{source="docker"} 1.0
    docker_netpolicy_checks_total 12.0
    docker_netpolicy_drift_events_total{kind="isolation_breach"} 1.0
    docker_netpolicy_icc_enabled{bridge="docker0",network="bridge"} 0.0
    docker_netpolicy_isolation_breaches{network="bridge"} 2.0
    docker_netpolicy_drift_detected 1.0

Series that describe the host's policy exist only when the last report was evaluated: a failed
check makes them absent, never zero, so it cannot read as "no drift". `docker_netpolicy_up`, the
per-source series, the timestamps and the counters are always there.

Before the first check finishes: `up` is 0, `last_success_timestamp_seconds` is 0, the counters are
at 0 and the per-check series are absent.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.latest import Latest, LatestView
from exporter.report import Report

T = TypeVar("T")

PREFIX = "docker_netpolicy_"

# The guidelines prefer collecting at scrape time; we check on a schedule and on Docker events
# (a check is heavy, and drift between scrapes must be counted). Every check-derived HELP says so.
_LAST = " From the last check (run periodically and on Docker events, not at scrape time)."
_SCHEDULE = " Checks run periodically and on Docker events, not at scrape time."
_SINCE = (
    " Since the exporter started (checks run periodically and on Docker events, not at scrape"
    " time)."
)


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc + _LAST, labels=list(labels))


def _bool(value: bool) -> float:
    return 1.0 if value else 0.0


def _port(port: int | None) -> str:
    return "" if port is None else str(port)


class NetpolicyCollector(Collector):
    """Yields the exporter's metric families from the newest published Report."""

    def __init__(self, latest: Latest, version: str = __version__) -> None:
        self._latest = latest
        self._version = version

    def describe(self) -> list[Metric]:
        # Families depend on the report; an empty description keeps registration from calling
        # collect() (which is cheap, but would run before the first check).
        return []

    def collect(self) -> Iterator[Metric]:
        view = self._latest.snapshot()
        yield from (family for family in self._families(view) if family.samples)

    def _families(self, view: LatestView) -> Iterator[Metric]:
        report = view.report

        up = _gauge(
            "up",
            "1 if the last check read every source it needs and reached a verdict, else 0.",
        )
        up.add_metric([], _bool(report is not None and report.up))
        yield up

        info = GaugeMetricFamily(
            PREFIX + "build_info",
            "The exporter's version; the value is always 1.",
            labels=["version"],
        )
        info.add_metric([self._version], 1.0)
        yield info

        yield CounterMetricFamily(
            PREFIX + "checks",
            "Checks finished (including failed and timed-out ones)." + _SINCE,
            value=view.checks_total,
        )

        errors = CounterMetricFamily(
            PREFIX + "check_errors",
            "Checks in which this source could not be read." + _SINCE,
            labels=["source"],
        )
        for name, count in sorted(view.check_errors_total.items()):
            errors.add_metric([name], count)
        yield errors

        events = CounterMetricFamily(
            PREFIX + "drift_events",
            "Findings that appeared (not present in the previous evaluated check), by kind."
            + _SINCE,
            labels=["kind"],
        )
        for kind, count in view.drift_events_total.items():
            events.add_metric([kind], count)
        yield events

        success = GaugeMetricFamily(
            PREFIX + "last_success_timestamp_seconds",
            "Start time of the newest check with up=1, in seconds since the epoch; 0 until one."
            + _SCHEDULE,
        )
        success.add_metric([], view.last_success or 0.0)
        yield success

        if report is None:
            return
        yield from self._check_families(report)
        if report.evaluated:
            yield from self._policy_families(report)

    def _check_families(self, report: Report) -> Iterator[Metric]:
        started = _gauge(
            "last_check_timestamp_seconds",
            "Start time of the last check, in seconds since the epoch.",
        )
        started.add_metric([], report.started)
        yield started

        duration = _gauge("check_duration_seconds", "How long the last check took.")
        duration.add_metric([], report.duration_seconds)
        yield duration

        source_up = _gauge("source_up", "1 if the last check read this source, else 0.", ["source"])
        source_duration = _gauge(
            "source_duration_seconds",
            "How long the last check spent reading this source.",
            ["source"],
        )
        seen: set[str] = set()
        for source in report.sources:
            if source.name in seen:
                continue
            seen.add(source.name)
            source_up.add_metric([source.name], _bool(source.up))
            source_duration.add_metric([source.name], source.duration_seconds)
        yield source_up
        yield source_duration

    def _policy_families(self, report: Report) -> Iterator[Metric]:
        networks = sorted(_dedupe(report.networks, key=lambda n: n.name), key=lambda n: n.name)

        icc = _gauge(
            "icc_enabled",
            "1 if Docker declares inter-container communication enabled on this bridge network.",
            ["network", "bridge"],
        )
        containers = _gauge(
            "containers", "Running containers attached to this network.", ["network"]
        )
        expected_rules = _gauge(
            "expected_accept_rules",
            "ACCEPT rules Docker should have programmed for this network.",
            ["network"],
        )
        missing_rules = _gauge(
            "missing_accept_rules",
            "Expected ACCEPT rules for this network that are not in the firewall.",
            ["network"],
        )
        unexpected_rules = _gauge(
            "unexpected_accept_rules",
            "ACCEPT rules for this network that Docker's declared state does not explain.",
            ["network"],
        )
        for net in networks:
            icc.add_metric([net.name, net.bridge], _bool(net.icc))
            containers.add_metric([net.name], net.containers)
            expected_rules.add_metric([net.name], net.expected_accept_rules)
            missing_rules.add_metric([net.name], net.missing_accept_rules)
            unexpected_rules.add_metric([net.name], net.unexpected_accept_rules)
        yield from (icc, containers, expected_rules, missing_rules, unexpected_rules)

        settings = report.settings
        if settings is not None and settings.iptables.value is not None:
            managed = _gauge(
                "iptables_managed", "1 if dockerd manages iptables rules (--iptables), else 0."
            )
            managed.add_metric([], _bool(bool(settings.iptables.value)))
            yield managed
        if settings is not None and settings.bridge_nf_call_iptables is not None:
            nf_call = _gauge(
                "bridge_nf_call_iptables",
                "The net.bridge.bridge-nf-call-iptables sysctl; 0 means bridged traffic skips "
                "iptables.",
            )
            nf_call.add_metric([], settings.bridge_nf_call_iptables)
            yield nf_call

        if report.forward_policy is not None:
            policy = _gauge(
                "forward_policy",
                "The filter FORWARD chain's policy (IPv4); the value is 1.",
                ["policy"],
            )
            policy.add_metric([report.forward_policy], 1.0)
            yield policy

        rules: dict[tuple[str, str], int] = defaultdict(int)
        for backend, family, count in report.backend_rules:
            rules[(backend, family)] += count
        backend_rules = _gauge(
            "iptables_rules",
            "Firewall rules found per backend and address family.",
            ["backend", "family"],
        )
        for (backend, family), count in sorted(rules.items()):
            backend_rules.add_metric([backend, family], count)
        yield backend_rules

        yield from self._flow_families(report, [n.name for n in networks])

        drift = _gauge(
            "drift_detected", "1 if the last check found drift (any finding of a drift kind)."
        )
        drift.add_metric([], _bool(report.drift))
        yield drift

        findings: dict[tuple[str, str], int] = defaultdict(int)
        for finding in report.findings:
            findings[(finding.kind, finding.network)] += 1
        finding_family = _gauge(
            "findings",
            'Findings by kind and network (network="" for host-wide findings).',
            ["kind", "network"],
        )
        for (kind, network), count in sorted(findings.items()):
            finding_family.add_metric([kind, network], count)
        yield finding_family

    def _flow_families(self, report: Report, network_names: list[str]) -> Iterator[Metric]:
        # Link flows: Docker programs link rules for IPv4 only, so only IPv4 flows are listed and
        # the label set needs no family. Should two flows still share a label set, the series
        # says allowed only if every one of them is allowed.
        links: dict[tuple[str, ...], float] = {}
        for flow in report.flows:
            if not flow.alias or flow.family != "ipv4" or flow.actual == "unknown":
                continue
            key = (
                flow.network,
                flow.source,
                flow.target,
                flow.alias,
                flow.protocol,
                _port(flow.port),
            )
            value = _bool(flow.actual == "allow")
            links[key] = min(value, links.get(key, value))
        link_family = _gauge(
            "link_flow_allowed",
            "1 if the firewall allows this legacy-link flow (IPv4), 0 if it drops it; absent when "
            "the verdict is unknown.",
            ["network", "source", "target", "alias", "protocol", "port"],
        )
        for link_key, value in sorted(links.items()):
            link_family.add_metric(list(link_key), value)
        yield link_family

        breaches: dict[str, int] = dict.fromkeys(network_names, 0)
        blocked: dict[str, int] = dict.fromkeys(network_names, 0)
        unknown: dict[str, int] = dict.fromkeys(network_names, 0)
        counts: dict[tuple[str, str, str, str], int] = defaultdict(int)
        for fc in report.flow_counts:
            for table in (breaches, blocked, unknown):
                table.setdefault(fc.network, 0)
            counts[(fc.network, fc.family, fc.expected, fc.actual)] += fc.count
            if fc.expected == "deny" and fc.actual == "allow":
                breaches[fc.network] += fc.count
            elif fc.expected == "allow" and fc.actual == "deny":
                blocked[fc.network] += fc.count
            if fc.actual == "unknown":
                unknown[fc.network] += fc.count

        for name, doc, table in (
            (
                "isolation_breaches",
                "Flows the declared policy denies but the firewall allows, per network.",
                breaches,
            ),
            (
                "blocked_link_flows",
                "Flows the declared policy allows (links, icc) but the firewall drops, per "
                "network.",
                blocked,
            ),
            ("unknown_flows", "Flows whose verdict could not be decided, per network.", unknown),
        ):
            family = _gauge(name, doc, ["network"])
            for network in sorted(table):
                family.add_metric([network], table[network])
            yield family

        flows = _gauge(
            "flows",
            "Evaluated container-to-container flows by declared (expected) and firewall (actual) "
            "verdict.",
            ["network", "family", "expected", "actual"],
        )
        for count_key, count in sorted(counts.items()):
            flows.add_metric(list(count_key), count)
        yield flows


def _dedupe(items: Iterable[T], key: Callable[[T], object]) -> list[T]:
    seen: set[object] = set()
    out: list[T] = []
    for item in items:
        k = key(item)
        if k not in seen:
            seen.add(k)
            out.append(item)
    return out
