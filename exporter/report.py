"""One check's complete result: what was read, what was found, how long it took.

A Report is immutable. The scheduler swaps the newest one in whole (see `exporter.latest`), so a
scrape during a check sees the previous complete result, never a half-built one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.model import HostSettings
from exporter.verdict import Verdict

# Finding kinds: a public contract (metrics labels, alerts, JSON).
MISSING_ACCEPT_RULE = "missing_accept_rule"
UNEXPECTED_ACCEPT_RULE = "unexpected_accept_rule"
STALE_ACCEPT_RULE = "stale_accept_rule"
DUPLICATE_RULE = "duplicate_rule"
ICC_DROP_MISSING = "icc_drop_missing"
ISOLATION_BREACH = "isolation_breach"
BLOCKED_LINK_FLOW = "blocked_link_flow"
UNKNOWN_FLOW = "unknown_flow"
ICC_POSTURE = "icc_posture"
IPTABLES_POSTURE = "iptables_posture"
BRIDGE_NF_CALL_DISABLED = "bridge_nf_call_disabled"
MULTIPLE_BACKENDS = "multiple_backends"
UNPARSED_RULE = "unparsed_rule"
UNSUPPORTED_FIREWALL = "unsupported_firewall"

FINDING_KINDS = (
    MISSING_ACCEPT_RULE,
    UNEXPECTED_ACCEPT_RULE,
    STALE_ACCEPT_RULE,
    DUPLICATE_RULE,
    ICC_DROP_MISSING,
    ISOLATION_BREACH,
    BLOCKED_LINK_FLOW,
    UNKNOWN_FLOW,
    ICC_POSTURE,
    IPTABLES_POSTURE,
    BRIDGE_NF_CALL_DISABLED,
    MULTIPLE_BACKENDS,
    UNPARSED_RULE,
    UNSUPPORTED_FIREWALL,
)
# Kinds that say the enforced policy differs from the declared or wanted one. The others explain
# why a verdict could not be reached; they are reported but are not drift.
DRIFT_KINDS = frozenset(FINDING_KINDS) - {UNKNOWN_FLOW, UNPARSED_RULE, UNSUPPORTED_FIREWALL}


@dataclass(frozen=True)
class SourceStatus:
    name: str
    up: bool
    duration_seconds: float
    error: str | None = None


@dataclass(frozen=True)
class Finding:
    kind: str
    # Network name; "" for host-wide findings.
    network: str
    detail: str
    containers: tuple[str, ...] = ()
    protocol: str = ""
    port: int | None = None
    family: str = "ipv4"
    # The rule the finding is about, as iptables-save prints it.
    rule: str | None = None
    # The command that restores Docker's state, when there is one.
    restore: str | None = None

    @property
    def identity(self) -> tuple[object, ...]:
        """What makes two findings the same one across checks (for drift_events_total)."""
        return (
            self.kind,
            self.network,
            self.containers,
            self.protocol,
            self.port,
            self.family,
            self.rule,
        )


@dataclass(frozen=True)
class Flow:
    network: str
    source: str
    target: str
    protocol: str
    # None for a probe flow to a target that exposes nothing (a port no rule singles out).
    port: int | None
    # ALLOW or DENY: what Docker's declared state asks.
    expected: Verdict
    # What the kernel does (UNKNOWN when it cannot be told).
    actual: Verdict
    family: str = "ipv4"
    # The link alias when a legacy link declares this flow, else "".
    alias: str = ""
    # What decided the verdict, e.g. "filter FORWARD #5 -A FORWARD -i docker0 -o docker0 -j DROP".
    reason: str = ""

    @property
    def link(self) -> bool:
        return bool(self.alias)


@dataclass(frozen=True)
class FlowCount:
    network: str
    expected: Verdict
    actual: Verdict
    count: int
    family: str = "ipv4"


@dataclass(frozen=True)
class NetworkFlowTotals:
    """One network's evaluated flows, summed over families: what text, JSON and /metrics show."""

    network: str
    flows: int = 0
    allowed_as_expected: int = 0
    denied_as_expected: int = 0
    # expected deny, actual allow
    breaches: int = 0
    # expected allow, actual deny
    blocked: int = 0
    unknown: int = 0


@dataclass(frozen=True)
class NetworkStatus:
    name: str
    bridge: str
    icc: bool
    containers: int
    expected_accept_rules: int = 0
    missing_accept_rules: int = 0
    unexpected_accept_rules: int = 0
    # What isolates an icc-disabled bridge's containers: "drop_rule" (Docker's DROP),
    # "forward_policy" (a FORWARD DROP policy), "none"; "" where icc is on or not judged here.
    isolation: str = ""


@dataclass(frozen=True)
class Report:
    started: float
    duration_seconds: float
    sources: tuple[SourceStatus, ...] = ()
    # True when every source the check needs was read and a verdict was reached.
    up: bool = False
    # True when the core ran at all (Docker and the IPv4 rules were read). When False the report
    # holds no networks, flows or findings, and nothing may be read as "no drift".
    evaluated: bool = False
    docker_version: str = ""
    settings: HostSettings | None = None
    iptables_backend: str | None = None
    # Rules per (backend, family), for "both backends hold rules".
    backend_rules: tuple[tuple[str, str, int], ...] = ()
    forward_policy: str | None = None
    networks: tuple[NetworkStatus, ...] = ()
    findings: tuple[Finding, ...] = ()
    # Flows listed one by one: every link flow and every flow whose verdict is not the expected one
    # (every flow with --all-flows).
    flows: tuple[Flow, ...] = ()
    # Every evaluated flow, counted by network, expected and actual verdict.
    flow_counts: tuple[FlowCount, ...] = ()
    errors: tuple[str, ...] = field(default=())

    @property
    def drift(self) -> bool:
        return any(f.kind in DRIFT_KINDS for f in self.findings)

    @property
    def unknown_flows(self) -> int:
        return sum(c.count for c in self.flow_counts if c.actual == Verdict.UNKNOWN)

    def network_totals(self) -> tuple[NetworkFlowTotals, ...]:
        """Per network (every network of the report, then any only the counts name), in order."""
        names = dict.fromkeys(
            [n.name for n in self.networks] + [c.network for c in self.flow_counts]
        )
        sums = {
            name: dict.fromkeys(("allow", "deny", "breach", "blocked", "unknown"), 0)
            for name in names
        }
        for c in self.flow_counts:
            bucket = sums[c.network]
            if c.actual == Verdict.UNKNOWN:
                bucket["unknown"] += c.count
            elif c.expected == c.actual:
                bucket[c.actual] += c.count
            elif c.expected == Verdict.DENY:
                bucket["breach"] += c.count
            else:
                bucket["blocked"] += c.count
        return tuple(
            NetworkFlowTotals(
                network=name,
                flows=sum(b.values()),
                allowed_as_expected=b["allow"],
                denied_as_expected=b["deny"],
                breaches=b["breach"],
                blocked=b["blocked"],
                unknown=b["unknown"],
            )
            for name, b in sums.items()
        )
