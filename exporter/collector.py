"""Translate the last check's Report into metric families at scrape time.

A client_python custom collector: `collect()` takes one `Latest.snapshot()` and yields fresh
families from it, so series of vanished networks disappear by themselves and a scrape never mixes
two checks. Nothing here talks to Docker or the kernel.

Every metric is one entry of `METRICS` (name, type, help, labels, samples), in output order.
Metric names and labels are a public contract (alerts and dashboards use them; README.md lists
them and a test keeps that list in step with `METRICS`). Sample output (abridged; see
tests/fixtures/golden/ for whole ones)::

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
from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.latest import Latest, LatestView
from exporter.report import NetworkFlowTotals, NetworkStatus, Report, SourceStatus

PREFIX = "docker_netpolicy_"

MetricType = Literal["gauge", "counter"]
# One series: its label values (in the spec's label order) and its value.
Sample = tuple[tuple[str, ...], float]

# The guidelines prefer collecting at scrape time; we check on a schedule and on Docker events
# (a check is heavy, and drift between scrapes must be counted). Every check-derived HELP says so.
_LAST = " From the last check (run periodically and on Docker events, not at scrape time)."
_SCHEDULE = " Checks run periodically and on Docker events, not at scrape time."
_SINCE = (
    " Since the exporter started (checks run periodically and on Docker events, not at scrape"
    " time)."
)
# client_python names a counter family without the suffix its samples carry.
_FAMILY_SUFFIX: dict[MetricType, str] = {"gauge": "", "counter": "_total"}


@dataclass(frozen=True)
class Scrape:
    """What one scrape reads: one consistent view of the newest check and the exporter's version."""

    view: LatestView
    version: str


SampleFunction = Callable[[Scrape], Iterable[Sample]]


@dataclass(frozen=True)
class MetricSpec:
    # The exposed sample name without PREFIX, suffix included ("checks_total", "build_info").
    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...]
    samples: SampleFunction

    @property
    def sample_name(self) -> str:
        return PREFIX + self.name

    def family(self, scrape: Scrape) -> Metric:
        suffix = _FAMILY_SUFFIX[self.type]
        family = Metric(self.sample_name.removesuffix(suffix), self.help, self.type)
        for values, value in self.samples(scrape):
            family.add_sample(self.sample_name, dict(zip(self.labels, values, strict=True)), value)
        return family


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
        scrape = Scrape(self._latest.snapshot(), self._version)
        for spec in METRICS:
            family = spec.family(scrape)
            if family.samples:
                yield family


# -- scopes: when a series exists --------------------------------------------------------------


def _of_check(samples: Callable[[Report], Iterable[Sample]]) -> SampleFunction:
    """Series of the last check: absent before the first one finished."""

    def from_scrape(scrape: Scrape) -> Iterable[Sample]:
        report = scrape.view.report
        return () if report is None else samples(report)

    return from_scrape


def _of_policy(samples: Callable[[Report], Iterable[Sample]]) -> SampleFunction:
    """Series about the host's policy: absent unless the last check was evaluated (never 0)."""

    def from_scrape(scrape: Scrape) -> Iterable[Sample]:
        report = scrape.view.report
        return samples(report) if report is not None and report.evaluated else ()

    return from_scrape


# -- samples -----------------------------------------------------------------------------------


def _bool(value: bool) -> float:
    return 1.0 if value else 0.0


def _port(port: int | None) -> str:
    return "" if port is None else str(port)


def _one(value: float) -> Iterable[Sample]:
    return (((), value),)


def _sources(report: Report) -> list[SourceStatus]:
    """The first status of each source name, in check order (one series per label set)."""
    first: dict[str, SourceStatus] = {}
    for source in report.sources:
        first.setdefault(source.name, source)
    return list(first.values())


def _networks(report: Report) -> list[NetworkStatus]:
    """The first status of each network name, sorted by name."""
    first: dict[str, NetworkStatus] = {}
    for network in report.networks:
        first.setdefault(network.name, network)
    return [first[name] for name in sorted(first)]


def _per_network(value: Callable[[NetworkStatus], float]) -> SampleFunction:
    return _of_policy(lambda report: [((n.name,), value(n)) for n in _networks(report)])


def _per_network_total(value: Callable[[NetworkFlowTotals], float]) -> SampleFunction:
    def samples(report: Report) -> Iterable[Sample]:
        totals = sorted(report.network_totals(), key=lambda t: t.network)
        return [((t.network,), value(t)) for t in totals]

    return _of_policy(samples)


def _isolation(report: Report) -> Iterable[Sample]:
    return [((n.name, n.isolation), 1.0) for n in _networks(report) if n.isolation]


def _icc(report: Report) -> Iterable[Sample]:
    return [((n.name, n.bridge), _bool(n.icc)) for n in _networks(report)]


def _iptables_managed(report: Report) -> Iterable[Sample]:
    settings = report.settings
    if settings is None or settings.iptables.value is None:
        return ()
    return _one(_bool(bool(settings.iptables.value)))


def _bridge_nf_call(report: Report) -> Iterable[Sample]:
    settings = report.settings
    if settings is None or settings.bridge_nf_call_iptables is None:
        return ()
    return _one(settings.bridge_nf_call_iptables)


def _forward_policy(report: Report) -> Iterable[Sample]:
    return () if report.forward_policy is None else (((report.forward_policy,), 1.0),)


def _backend_rules(report: Report) -> Iterable[Sample]:
    rules: dict[tuple[str, str], int] = defaultdict(int)
    for backend, family, count in report.backend_rules:
        rules[(backend, family)] += count
    return sorted(rules.items())


def _link_flows(report: Report) -> Iterable[Sample]:
    # Docker programs link rules for IPv4 only, so only IPv4 flows are listed and the label set
    # needs no family. Should two flows still share a label set, the series says allowed only if
    # every one of them is allowed.
    links: dict[tuple[str, ...], float] = {}
    for flow in report.flows:
        if not flow.alias or flow.family != "ipv4" or flow.actual == "unknown":
            continue
        key = (flow.network, flow.source, flow.target, flow.alias, flow.protocol, _port(flow.port))
        value = _bool(flow.actual == "allow")
        links[key] = min(value, links.get(key, value))
    return sorted(links.items())


def _flow_counts(report: Report) -> Iterable[Sample]:
    counts: dict[tuple[str, ...], int] = defaultdict(int)
    for fc in report.flow_counts:
        counts[(fc.network, fc.family, fc.expected, fc.actual)] += fc.count
    return sorted(counts.items())


def _findings(report: Report) -> Iterable[Sample]:
    findings: dict[tuple[str, ...], int] = defaultdict(int)
    for finding in report.findings:
        findings[(finding.kind, finding.network)] += 1
    return sorted(findings.items())


# -- the table ---------------------------------------------------------------------------------

METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "up",
        "gauge",
        "1 if the last check read every source it needs and reached a verdict, else 0." + _LAST,
        (),
        lambda s: _one(_bool(s.view.report is not None and s.view.report.up)),
    ),
    MetricSpec(
        "build_info",
        "gauge",
        "The exporter's version; the value is always 1.",
        ("version",),
        lambda s: (((s.version,), 1.0),),
    ),
    MetricSpec(
        "checks_total",
        "counter",
        "Checks finished (including failed and timed-out ones)." + _SINCE,
        (),
        lambda s: _one(s.view.checks_total),
    ),
    MetricSpec(
        "check_errors_total",
        "counter",
        "Checks in which this source could not be read." + _SINCE,
        ("source",),
        lambda s: [((name,), count) for name, count in sorted(s.view.check_errors_total.items())],
    ),
    MetricSpec(
        "drift_events_total",
        "counter",
        "Findings that appeared (not present in the previous evaluated check), by kind." + _SINCE,
        ("kind",),
        # In FINDING_KINDS order, as Latest keeps them.
        lambda s: [((kind,), count) for kind, count in s.view.drift_events_total.items()],
    ),
    MetricSpec(
        "last_success_timestamp_seconds",
        "gauge",
        "Start time of the newest check with up=1, in seconds since the epoch; 0 until one."
        + _SCHEDULE,
        (),
        lambda s: _one(s.view.last_success or 0.0),
    ),
    MetricSpec(
        "last_check_timestamp_seconds",
        "gauge",
        "Start time of the last check, in seconds since the epoch." + _LAST,
        (),
        _of_check(lambda r: _one(r.started)),
    ),
    MetricSpec(
        "check_duration_seconds",
        "gauge",
        "How long the last check took." + _LAST,
        (),
        _of_check(lambda r: _one(r.duration_seconds)),
    ),
    MetricSpec(
        "source_up",
        "gauge",
        "1 if the last check read this source, else 0." + _LAST,
        ("source",),
        _of_check(lambda r: [((s.name,), _bool(s.up)) for s in _sources(r)]),
    ),
    MetricSpec(
        "source_duration_seconds",
        "gauge",
        "How long the last check spent reading this source." + _LAST,
        ("source",),
        _of_check(lambda r: [((s.name,), s.duration_seconds) for s in _sources(r)]),
    ),
    MetricSpec(
        "icc_enabled",
        "gauge",
        "1 if Docker declares inter-container communication enabled on this bridge network."
        + _LAST,
        ("network", "bridge"),
        _of_policy(_icc),
    ),
    MetricSpec(
        "containers",
        "gauge",
        "Running containers attached to this network." + _LAST,
        ("network",),
        _per_network(lambda n: n.containers),
    ),
    MetricSpec(
        "expected_accept_rules",
        "gauge",
        "ACCEPT rules Docker should have programmed for this network." + _LAST,
        ("network",),
        _per_network(lambda n: n.expected_accept_rules),
    ),
    MetricSpec(
        "missing_accept_rules",
        "gauge",
        "Expected ACCEPT rules for this network that are not in the firewall." + _LAST,
        ("network",),
        _per_network(lambda n: n.missing_accept_rules),
    ),
    MetricSpec(
        "unexpected_accept_rules",
        "gauge",
        "ACCEPT rules for this network that Docker's declared state does not explain." + _LAST,
        ("network",),
        _per_network(lambda n: n.unexpected_accept_rules),
    ),
    MetricSpec(
        "isolation_enforced_by",
        "gauge",
        "1 for what isolates an icc-disabled network's containers: drop_rule (Docker's DROP), "
        "forward_policy (a FORWARD DROP policy) or none." + _LAST,
        ("network", "by"),
        _of_policy(_isolation),
    ),
    MetricSpec(
        "iptables_managed",
        "gauge",
        "1 if dockerd manages iptables rules (--iptables), else 0." + _LAST,
        (),
        _of_policy(_iptables_managed),
    ),
    MetricSpec(
        "bridge_nf_call_iptables",
        "gauge",
        "The net.bridge.bridge-nf-call-iptables sysctl; 0 means bridged traffic skips iptables."
        + _LAST,
        (),
        _of_policy(_bridge_nf_call),
    ),
    MetricSpec(
        "forward_policy",
        "gauge",
        "The filter FORWARD chain's policy (IPv4); the value is 1." + _LAST,
        ("policy",),
        _of_policy(_forward_policy),
    ),
    MetricSpec(
        "iptables_rules",
        "gauge",
        "Firewall rules found per backend and address family." + _LAST,
        ("backend", "family"),
        _of_policy(_backend_rules),
    ),
    MetricSpec(
        "link_flow_allowed",
        "gauge",
        "1 if the firewall allows this legacy-link flow (IPv4), 0 if it drops it; absent when the "
        "verdict is unknown." + _LAST,
        ("network", "source", "target", "alias", "protocol", "port"),
        _of_policy(_link_flows),
    ),
    MetricSpec(
        "isolation_breaches",
        "gauge",
        "Flows the declared policy denies but the firewall allows, per network." + _LAST,
        ("network",),
        _per_network_total(lambda t: t.breaches),
    ),
    MetricSpec(
        "blocked_link_flows",
        "gauge",
        "Flows the declared policy allows (links, icc) but the firewall drops, per network."
        + _LAST,
        ("network",),
        _per_network_total(lambda t: t.blocked),
    ),
    MetricSpec(
        "unknown_flows",
        "gauge",
        "Flows whose verdict could not be decided, per network." + _LAST,
        ("network",),
        _per_network_total(lambda t: t.unknown),
    ),
    MetricSpec(
        "flows",
        "gauge",
        "Evaluated container-to-container flows by declared (expected) and firewall (actual) "
        "verdict." + _LAST,
        ("network", "family", "expected", "actual"),
        _of_policy(_flow_counts),
    ),
    MetricSpec(
        "drift_detected",
        "gauge",
        "1 if the last check found drift (any finding of a drift kind)." + _LAST,
        (),
        _of_policy(lambda r: _one(_bool(r.drift))),
    ),
    MetricSpec(
        "findings",
        "gauge",
        'Findings by kind and network (network="" for host-wide findings).' + _LAST,
        ("kind", "network"),
        _of_policy(_findings),
    ),
)
