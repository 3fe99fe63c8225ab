"""The explanation: which of Docker's rules are missing, which rules no link explains, and why.

Flows (flows.py) say what the kernel decides; these findings say which rule to look at. Each names
the network, the containers, port and protocol, and carries the command that restores Docker's
state.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator
from ipaddress import IPv4Address, ip_network

from exporter.expectations import ExpectedRule, Member, NetworkExpectation
from exporter.firewall.evaluate import unmodelled_docker_tables
from exporter.firewall.matches import (
    ADDRESS_OPTIONS,
    MATCHERS,
    MatchContext,
    Packet,
    host_address,
    in_network,
    on_bridge,
    required_interface,
    side_of,
)
from exporter.firewall.nft import unsupported as unsupported_nft
from exporter.firewall.rules import Option, Rule, Ruleset, rule_identity
from exporter.firewall.state import FirewallState
from exporter.model import HostSettings, Network
from exporter.report import (
    BLOCKED_LINK_FLOW,
    BRIDGE_NF_CALL_DISABLED,
    DUPLICATE_RULE,
    ICC_DROP_MISSING,
    ISOLATION_BREACH,
    MISSING_ACCEPT_RULE,
    MULTIPLE_BACKENDS,
    STALE_ACCEPT_RULE,
    UNEXPECTED_ACCEPT_RULE,
    UNKNOWN_FLOW,
    UNPARSED_RULE,
    UNSUPPORTED_FIREWALL,
    Finding,
    Flow,
    NetworkStatus,
)
from exporter.verdict import Verdict

# How an icc-disabled bridge is isolated (NetworkStatus.isolation).
DROP_RULE, FORWARD_POLICY, NO_ISOLATION = "drop_rule", "forward_policy", "none"

# Matches a rule may carry and still be "a rule for these container addresses" we can judge.
NEUTRAL_MATCHES = {"", "tcp", "udp", "sctp", "multiport", "comment", "conntrack", "state"}
MAX_NAMED = 10


def iptables_command(backend: str | None, family: str = "ipv4") -> str:
    """The binary that edits this backend: plain `iptables` may point at the other one."""
    tool = "ip6tables" if family == "ipv6" else "iptables"
    return f"{tool}-{backend}" if backend else tool


def _reachable_chains(ruleset: Ruleset, table: str, start: str) -> list[str]:
    """Chains a packet entering `start` can reach, in discovery (breadth-first) order.

    Each chain is queued once: in a FIFO queue the order of first push is the order of first pop,
    so marking on push gives the same order as skipping repeats on pop, in one pass over the rules.
    """
    if ruleset.chain(table, start) is None:
        return []
    order = [start]
    queued = {start}
    pending = deque(order)
    while pending:
        chain = ruleset.chain(table, pending.popleft())
        for rule in chain.rules:  # type: ignore[union-attr]  (only existing chains are queued)
            target = rule.target
            if target and target not in queued and ruleset.chain(table, target) is not None:
                queued.add(target)
                order.append(target)
                pending.append(target)
    return order


def _forward_rules(ruleset: Ruleset) -> Iterator[Rule]:
    for name in _reachable_chains(ruleset, "filter", "FORWARD"):
        chain = ruleset.chain("filter", name)
        if chain is not None:
            yield from chain.rules


class _Forward:
    """What every network asks of one ruleset's FORWARD path, computed once per check: walking
    the reachable rules again per network costs networks x rules."""

    def __init__(self, ruleset: Ruleset) -> None:
        self.ruleset = ruleset
        rules = list(_forward_rules(ruleset))
        # ACCEPT rules with their identity, in path order.
        self.accepts = [(rule, rule_identity(rule)) for rule in rules if rule.target == "ACCEPT"]
        self.accept_ids = {identity for _, identity in self.accepts}
        # Bridges with Docker's `-i B -o B -j DROP` (and no other builtin match).
        self.icc_drop_bridges = {bridge for rule in rules if (bridge := _icc_drop_bridge(rule))}
        forward = ruleset.chain("filter", "FORWARD")
        self.policy_drops = forward is not None and forward.policy == "DROP"
        # Jump rules by the chain they are in: which chains a network's packets can enter.
        self.jumps: dict[str, list[Rule]] = defaultdict(list)
        for rule in rules:
            if rule.target and ruleset.chain("filter", rule.target) is not None:
                self.jumps[rule.chain].append(rule)
        # Indexes into accepts by the one interface the rule requires (None: any), and the IPv4
        # hosts the rules name as (address, index), sorted: a network reads only the rules that
        # may match on its bridge or name a host of its subnets (see concerning).
        self.by_bridge: dict[str | None, list[int]] = defaultdict(list)
        self.named_hosts: list[tuple[int, int]] = []
        for index, (rule, _) in enumerate(self.accepts):
            self.by_bridge[_required_bridge(rule)].append(index)
            self.named_hosts += ((int(host), index) for host in _named_hosts(rule))
        self.named_hosts.sort()

    def entered_chains(self, intra: _IntraBridge) -> set[str]:
        """Chains a NEW packet between two members can enter: FORWARD, and a chain behind a jump
        that may match such a packet (`-s REMOTE/32 -j HOST` lets none of them into HOST)."""
        entered = {"FORWARD"}
        pending = deque(entered)
        while pending:
            for jump in self.jumps.get(pending.popleft(), ()):
                target = jump.target or ""
                if target not in entered and intra.matched_members(jump) is not None:
                    entered.add(target)
                    pending.append(target)
        return entered

    def concerning(self, network: Network) -> list[tuple[Rule, RuleIdentity]]:
        """In path order, the ACCEPT rules that may match between the network's containers or
        name a host of its subnets; any other one matches no packet between them (its interface
        match is false on the bridge) and names no stale host."""
        found = {*self.by_bridge.get(None, ()), *self.by_bridge.get(network.bridge, ())}
        for subnet in network.subnets:
            if subnet.version == 4:
                low = bisect_left(self.named_hosts, (int(subnet.network_address), -1))
                high = bisect_right(
                    self.named_hosts, (int(subnet.broadcast_address), len(self.accepts))
                )
                found.update(index for _, index in self.named_hosts[low:high])
        return [self.accepts[index] for index in sorted(found)]


def _required_bridge(rule: Rule) -> str | None:
    options = (o for o in rule.options("") if o.name in ("-i", "-o"))
    return next(filter(None, map(required_interface, options)), None)


def _named_hosts(rule: Rule) -> Iterator[IPv4Address]:
    for option in rule.options(""):
        if option.name in ("-s", "-d"):
            host = host_address(option)
            if isinstance(host, IPv4Address):
                yield host


def _icc_drop_bridge(rule: Rule) -> str | None:
    if rule.target != "DROP":
        return None
    builtin = {(o.name, o.args, o.negated) for o in rule.options("")}
    if len(builtin) != 2:
        return None
    by_name = {name: (args, negated) for name, args, negated in builtin}
    inbound, outbound = by_name.get("-i"), by_name.get("-o")
    if inbound is None or inbound != outbound or inbound[1] or len(inbound[0]) != 1:
        return None
    return inbound[0][0]


class _IntraBridge:
    """Can a rule match a NEW packet between two members of an icc-disabled network?"""

    def __init__(self, expectation: NetworkExpectation, ctx: MatchContext) -> None:
        self.expectation = expectation
        self.members = expectation.members.get("ipv4", ())
        self.addresses = {m.address for m in self.members}
        self.ctx = ctx
        bridge = expectation.network.bridge
        first = self.members[0].address if self.members else None
        self.packet = (
            Packet("ipv4", first, first, bridge, bridge, "tcp", None, None) if first else None
        )

    def matched_members(self, rule: Rule) -> tuple[list[Member], list[Member]] | None:
        """Sources and targets the rule may match, or None when it cannot match such a packet."""
        if self.packet is None or not self._on_bridge(rule):
            return None
        sources, targets = list(self.members), list(self.members)
        for match in rule.matches:
            for option in match.options:
                key = (match.module, option.name)
                if key in ADDRESS_OPTIONS:
                    side = side_of(match.module, option, ADDRESS_OPTIONS)
                    decide = ADDRESS_OPTIONS[key][1]
                    if side and self._names_no_member(option, decide):
                        return None  # found without asking every member about every such rule
                    if side == "src":
                        sources = [
                            m for m in sources if decide(option, m.address, self.ctx) is not False
                        ]
                    elif side == "dst":
                        targets = [
                            m for m in targets if decide(option, m.address, self.ctx) is not False
                        ]
                    continue
                if option.name in ("-p",) or match.module in ("tcp", "udp", "sctp", "multiport"):
                    continue  # some port or protocol of the flow may match
                decide_other = MATCHERS.get(key)
                if decide_other and decide_other(option, self.packet, self.ctx) is False:
                    return None
        if not sources or not targets or (len(sources) == 1 and sources == targets):
            return None
        return sources, targets

    def _on_bridge(self, rule: Rule) -> bool:
        """False when an interface match is false on the bridge: such a rule matches none of
        these packets, whatever its address matches say (asked first: they cost a member each)."""
        bridge = self.expectation.network.bridge
        return all(
            on_bridge(option, bridge) is not False
            for option in rule.options("")
            if option.name in ("-i", "-o")
        )

    def _names_no_member(self, option: Option, decide: object) -> bool:
        """Whether the option allows one host only, and no member has it (an allow-list of
        remote hosts: networks x rules x members if each member were asked)."""
        if decide is not in_network or option.negated:
            return False
        host = host_address(option)
        return host is not None and host not in self.addresses


def _names(members: Iterable[Member]) -> tuple[str, ...]:
    return tuple(sorted({m.container.name for m in members}))[:MAX_NAMED]


def _names_address(rule: Rule) -> bool:
    """Whether the rule pins both source and destination addresses (a rule for two hosts)."""
    sides = set()
    for option in rule.options(""):
        if option.name in ("-s", "-d") and not option.negated:
            sides.add(option.name)
    return sides == {"-s", "-d"}


# A rule's identity (exporter.firewall.rules.rule_identity).
RuleIdentity = tuple[frozenset[tuple[str, str, tuple[str, ...], bool]], str]


def rule_findings(
    expectations: Iterable[NetworkExpectation],
    firewall: FirewallState,
) -> tuple[list[Finding], list[NetworkStatus]]:
    """Per icc-disabled network: Docker's link rules that are missing, ACCEPT rules between its
    containers that no link explains, and its missing DROP; one NetworkStatus per network."""
    findings: list[Finding] = []
    statuses: list[NetworkStatus] = []
    rulesets = [
        r
        for r in firewall.for_family("ipv4")
        if not r.empty or r.backend == firewall.primary_backend
    ]
    ctx = MatchContext(firewall.ipsets)
    forwards = [_Forward(ruleset) for ruleset in rulesets]
    present: set[RuleIdentity] = set().union(*(forward.accept_ids for forward in forwards))
    for expectation in expectations:
        network = expectation.network
        expected_rules = expectation.expected_rules()
        missing: list[Finding] = []
        unexpected: list[Finding] = []
        if not network.icc:
            identities = [rule_identity(e.rule) for e in expected_rules]
            missing = _missing_rules(
                network,
                zip(expected_rules, identities, strict=True),
                present,
                firewall.primary_backend,
            )
            expected_ids = set(identities)
            unexpected = _unexpected_rules(expectation, forwards, expected_ids, ctx)
            drop = _icc_drop_findings(expectation, forwards, firewall.primary_backend)
            findings.extend([*missing, *unexpected, *drop])
        statuses.append(
            NetworkStatus(
                name=network.name,
                bridge=network.bridge,
                icc=network.icc,
                containers=expectation.containers,
                expected_accept_rules=len(expected_rules) if not network.icc else 0,
                missing_accept_rules=len(missing),
                unexpected_accept_rules=len(unexpected),
                isolation="" if network.icc else isolation_enforcement(expectation, forwards),
            )
        )
    return findings, statuses


def _missing_rules(
    network: Network,
    expected_rules: Iterable[tuple[ExpectedRule, RuleIdentity]],
    present: set[RuleIdentity],
    primary: str | None,
) -> list[Finding]:
    """Docker's link rules that no FORWARD path of any backend holds."""
    findings = []
    for expected, identity in expected_rules:
        if identity in present:
            continue
        link = expected.link
        findings.append(Finding(
            MISSING_ACCEPT_RULE, network.name,
            f"link {link.parent.container.name} -> {link.child.container.name} "
            f"(alias {link.alias}) {link.port}: Docker's rule is missing",
            containers=(link.parent.container.name, link.child.container.name),
            protocol=link.port.protocol, port=link.port.port,
            rule=f"-A DOCKER {expected.spec}",
            restore=f"{iptables_command(primary)} -I DOCKER {expected.spec}",
        ))  # fmt: skip
    return findings


def _unexpected_rules(
    expectation: NetworkExpectation,
    forwards: list[_Forward],
    expected_ids: set[RuleIdentity],
    ctx: MatchContext,
) -> list[Finding]:
    """ACCEPT rules on the FORWARD path that no link explains and that may match a packet
    between two of the network's containers, or name a host of its subnets no container has."""
    network = expectation.network
    intra = _IntraBridge(expectation, ctx)
    addresses = {str(m.address) for m in expectation.members.get("ipv4", ())}
    findings = []
    for forward in forwards:
        command = iptables_command(forward.ruleset.backend)
        entered = forward.entered_chains(intra)
        for rule, identity in forward.concerning(network):
            if identity in expected_ids:
                continue
            matched = intra.matched_members(rule) if rule.chain in entered else None
            stale = _stale_hosts(rule, network, addresses)
            if matched is None and not stale:
                continue
            sources, targets = matched or ([], [])
            kind = STALE_ACCEPT_RULE if stale else UNEXPECTED_ACCEPT_RULE
            detail = (
                f"ACCEPT for {', '.join(stale)} (no running container has that address)"
                if stale
                else "ACCEPT between containers that no link explains"
            )
            findings.append(Finding(
                kind, network.name, f"{detail}: {rule.text}",
                containers=_names([*sources, *targets]),
                rule=rule.text, restore=f"{command} -D {rule.chain} {rule.spec}",
            ))  # fmt: skip
    return findings


def _stale_hosts(rule: Rule, network: Network, addresses: set[str]) -> list[str]:
    """Host addresses a two-host rule names inside the network's subnets that no container has."""
    if not _names_address(rule) or any(m.module not in NEUTRAL_MATCHES for m in rule.matches):
        return []
    stale = []
    for option in rule.options(""):
        if option.name not in ("-s", "-d") or len(option.args) != 1:
            continue
        try:
            host = ip_network(option.args[0], strict=False)
        except ValueError:
            return []
        if host.num_addresses != 1:
            return []
        address = host.network_address
        in_network = any(address in subnet for subnet in network.subnets if subnet.version == 4)
        if in_network and str(address) not in addresses:
            stale.append(str(address))
    return stale


def isolation_enforcement(expectation: NetworkExpectation, forwards: list[_Forward]) -> str:
    """What stops new traffic between containers of an icc-disabled bridge: Docker's explicit
    DROP ("drop_rule", every version since 1.x), a FORWARD DROP policy ("forward_policy", as
    Docker 1.x documented it), or nothing ("none")."""
    bridge = expectation.network.bridge
    if any(bridge in forward.icc_drop_bridges for forward in forwards):
        return DROP_RULE
    if any(forward.policy_drops for forward in forwards):
        return FORWARD_POLICY
    return NO_ISOLATION


def _icc_drop_findings(
    expectation: NetworkExpectation, forwards: list[_Forward], primary: str | None
) -> list[Finding]:
    """Either Docker's DROP or a FORWARD DROP policy isolates the bridge (the flows say whether
    anything before it lets traffic through); with neither, Docker's DROP is missing."""
    if not forwards or isolation_enforcement(expectation, forwards) != NO_ISOLATION:
        return []
    bridge = expectation.network.bridge
    first = forwards[0].ruleset
    chain = "DOCKER-FORWARD" if first.chain("filter", "DOCKER-FORWARD") else "FORWARD"
    return [
        Finding(
            ICC_DROP_MISSING,
            expectation.network.name,
            f"Docker's DROP for traffic between containers on {bridge} (icc disabled) is missing "
            "and the FORWARD policy is not DROP",
            rule=f"-A {chain} -i {bridge} -o {bridge} -j DROP",
            restore=f"{iptables_command(primary)} -A {chain} -i {bridge} -o {bridge} -j DROP",
        )
    ]


def duplicate_findings(firewall: FirewallState, bridges: dict[str, str]) -> list[Finding]:
    """The same rule twice in one chain: Docker never does that; a reload script or hand did."""
    findings = []
    for ruleset in firewall.rulesets:
        for table in ruleset.tables.values():
            for chain in table.chains.values():
                counted = Counter(r.spec for r in chain.rules)
                for spec, count in counted.items():
                    if count < 2:
                        continue
                    network = next((n for b, n in bridges.items() if f" {b} " in f" {spec} "), "")
                    if not network and not chain.name.startswith("DOCKER"):
                        continue
                    command = iptables_command(ruleset.backend, ruleset.family)
                    findings.append(Finding(
                        DUPLICATE_RULE, network,
                        f"rule appears {count} times in {ruleset.backend} {table.name} "
                        f"{chain.name}",
                        family=ruleset.family, rule=f"-A {chain.name} {spec}",
                        restore=f"{command} -t {table.name} -D {chain.name} {spec}",
                    ))  # fmt: skip
    return findings


def host_findings(
    firewall: FirewallState,
    settings: HostSettings | None,
    expectations: Iterable[NetworkExpectation],
) -> list[Finding]:
    findings: list[Finding] = []
    isolated = [e for e in expectations if not e.network.icc and len(e.members.get("ipv4", ())) > 1]
    if settings is not None and settings.bridge_nf_call_iptables == 0 and isolated:
        findings.append(Finding(
            BRIDGE_NF_CALL_DISABLED, "",
            "net.bridge.bridge-nf-call-iptables is 0: bridged traffic skips iptables, so icc=false "
            f"is not enforced on {', '.join(e.network.name for e in isolated)}",
            restore="sysctl -w net.bridge.bridge-nf-call-iptables=1",
        ))  # fmt: skip
    backends = sorted({r.backend for r in firewall.rulesets if r.rule_count > 0})
    if len(backends) > 1:
        findings.append(Finding(
            MULTIPLE_BACKENDS, "",
            "both iptables backends hold rules (" + ", ".join(backends) + "); both apply to every "
            "packet, a DROP in either drops it",
        ))  # fmt: skip
    for ruleset in [*firewall.rulesets, *([firewall.bridge] if firewall.bridge else [])]:
        for line in ruleset.unknown_lines:
            findings.append(Finding(
                UNPARSED_RULE, "", f"{ruleset.family} {ruleset.backend} line {line.number} not "
                f"understood ({line.reason})", family=ruleset.family, rule=line.text,
            ))  # fmt: skip
        for table in ruleset.tables.values():
            for chain in table.chains.values():
                for rule in chain.rules:
                    if rule.error:
                        findings.append(Finding(
                            UNPARSED_RULE, "", f"{ruleset.family} {ruleset.backend} {table.name} "
                            f"rule not understood ({rule.error})", family=ruleset.family,
                            rule=rule.text,
                        ))  # fmt: skip
    nft = firewall.nftables
    if nft is not None:
        for table in unmodelled_docker_tables(nft):
            findings.append(Finding(
                UNSUPPORTED_FIREWALL, "", f"Docker's nftables firewall backend ({table}) was not "
                "read: its flows are reported unknown",
            ))  # fmt: skip
        modelled = {f"{c.label} hook {c.hook}" for c in nft.native.chains.values()}
        for chain in nft.foreign_chains:
            if chain not in modelled:
                findings.append(Finding(
                    UNSUPPORTED_FIREWALL, "", f"nftables chain {chain} also decides bridged "
                    "packets and is not evaluated: flows are reported unknown",
                ))  # fmt: skip
        for what in unsupported_nft(nft.native):
            findings.append(Finding(
                UNSUPPORTED_FIREWALL, "", f"nftables: {what}: flows reaching it are reported "
                "unknown",
            ))  # fmt: skip
    return findings


def flow_findings(flows: Iterable[Flow]) -> list[Finding]:
    findings = []
    for flow in flows:
        if flow.expected == flow.actual:
            continue
        port = f"{flow.protocol}/{flow.port}" if flow.port is not None else f"{flow.protocol} probe"
        if flow.actual == Verdict.UNKNOWN:
            kind, what = UNKNOWN_FLOW, f"verdict unknown ({flow.reason})"
        elif flow.expected == Verdict.DENY:
            kind, what = ISOLATION_BREACH, f"allowed but must be denied ({flow.reason})"
        else:
            kind, what = BLOCKED_LINK_FLOW, f"link flow denied ({flow.reason})"
        findings.append(Finding(
            kind, flow.network, f"{flow.source} -> {flow.target} {port} {flow.family}: {what}",
            containers=(flow.source, flow.target), protocol=flow.protocol, port=flow.port,
            family=flow.family,
        ))  # fmt: skip
    return findings
