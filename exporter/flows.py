"""Every flow that matters on a network, its expected and its actual verdict, without n² work.

A flow is (source container, target container, protocol, port) on one bridge network and family:
each ordered pair of members times each port the target exposes, plus a TCP and a UDP probe flow
to a port no rule names (so a hole for a whole protocol shows even where nothing is exposed). A TCP
flow is allowed when its first packet, the target's reply and the client's ACK all pass; a UDP or
SCTP flow when its first packet does (see flow_packets).

A rule only distinguishes the containers whose addresses its matches name. So containers are
grouped by how every address match that varies across the network treats them; rules whose source
AND destination both vary (Docker's link rules, a hand-written ACCEPT between two containers)
name a few pairs: those are listed one by one, and a flow of theirs that such a rule may touch
(by its ports and direction) is evaluated alone. Every other flow shares its groups' verdict: one
evaluation per pair of groups and probe, counted, and listed one by one only when the verdict is
not the expected one (that is what the output needs).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from ipaddress import IPv4Address

from exporter.expectations import LinkFlow, Member, NetworkExpectation
from exporter.firewall.evaluate import (
    Decision,
    PathInputs,
    Verdict,
    bridged_rules,
    evaluate_packet,
)
from exporter.firewall.matches import (
    ADDRESS_OPTIONS,
    BRIDGE_ADDRESS_OPTIONS,
    BRIDGE_INTERFACE_OPTIONS,
    INTERFACE_OPTIONS,
    MATCHERS,
    MatchContext,
    Packet,
    Tri,
    host_address,
    in_network,
    on_bridge,
    required_interface,
    side_of,
)
from exporter.firewall.nft import AddressMatch, address_matches
from exporter.firewall.rules import Option, Rule, Ruleset
from exporter.model import ExposedPort, IPAddress
from exporter.report import Flow, FlowCount

PORT_OPTIONS = {"--dport", "--sport", "--dports", "--sports", "--ports", "--destination-port",
                "--source-port", "--destination-ports", "--source-ports", "--ip-dport",
                "--ip-sport", "--ip6-dport", "--ip6-sport"}  # fmt: skip


def flow_packets(
    family: str,
    source: IPAddress,
    target: IPAddress,
    bridge: str,
    protocol: str,
    port: int,
    *,
    arp: bool,
) -> list[Packet]:
    """The packets a flow needs to pass: the first one (NEW, from an ephemeral port); for TCP the
    target's SYN-ACK and the client's ACK (ESTABLISHED both ways); for IPv4, when ebtables
    decides anything, the ARP request and reply (IPv6 resolves neighbours with ICMPv6, not ARP)."""
    first = Packet(family, source, target, bridge, bridge, protocol, None, port)  # type: ignore[arg-type]
    packets = [first]
    if protocol == "tcp":
        packets.append(replace(first, src=target, dst=source, sport=port, dport=None,
                               state="ESTABLISHED", reply=True))  # fmt: skip
        packets.append(replace(first, state="ESTABLISHED", flags=frozenset({"ACK"})))
    if arp and family == "ipv4":
        packets.append(replace(first, protocol="arp", dport=None))
        packets.append(replace(first, src=target, dst=source, protocol="arp", dport=None,
                               reply=True))  # fmt: skip
    return packets


@dataclass(frozen=True)
class Probe:
    protocol: str
    port: int
    # False for the probe flow of a target that exposes nothing.
    exposed: bool = True


@dataclass(frozen=True)
class _AddressRule:
    """The address matches of one rule, split by the side they look at, and its interface
    matches: every packet of a flow enters and leaves by the network's bridge, so a rule whose
    interface match is false there (`! -i docker0`, `-o br-other`) splits no members of it."""

    src: tuple
    dst: tuple
    interfaces: tuple[Option, ...] = ()
    # Its protocol and port matches as (module, option) (iptables rules only): a link's
    # `--dport 80` rule touches the port 80 flows' client packets, never a reply (sent to an
    # ephemeral port) nor another port's flow.
    ports: tuple[tuple[str, Option], ...] = ()

    def may_match_on(self, bridge: str) -> bool:
        return all(on_bridge(option, bridge) is not False for option in self.interfaces)

    def may_touch(self, probe: Probe, reply: bool) -> bool:
        """Whether it may match the client's packets of the probe's flow (from an ephemeral
        port to the probe's), or with `reply` the replies (the other way round)."""
        return not self.ports or _ports_may_match(self.ports, probe.protocol, probe.port, reply)

    @property
    def key(self) -> tuple[str, object] | None:
        """("host", H) when an address match allows host H only (fail2ban's and Docker's
        per-host rules): it matches no member of a network without H. Else ("bridge", B) when
        the rule requires interface B (Docker's per-network rules). Else None."""
        for option, decide in self.src + self.dst:
            host = _host(option, decide)
            if host is not None and not option.negated:
                return "host", host
        bridge = next(filter(None, map(required_interface, self.interfaces)), None)
        return None if bridge is None else ("bridge", bridge)


def probe_port(rulesets: Iterable[Ruleset]) -> int:
    """The lowest port no rule names: a probe there meets only the rules that ignore ports.

    When rules name every port, the first port of the widest run of ports that the same rules
    name: the port that stands for the most others (never a port past 65535).
    """
    named: list[tuple[int, int]] = []
    for ruleset in rulesets:
        for rule in _rules(ruleset):
            for option in rule.options():
                if option.name in PORT_OPTIONS and option.args:
                    for part in option.args[0].split(","):
                        low, _, high = part.partition(":")
                        if low.isdigit() or high.isdigit():
                            first = int(low) if low.isdigit() else 0
                            last = (
                                int(high) if high.isdigit() else (65535 if ":" in part else first)
                            )
                            named.append((first, last))
    port = 1
    for first, last in sorted(named):
        if first <= port <= last:
            port = last + 1
    if port <= 65535:
        return port
    # Every port is named: the runs between the ranges' edges are each treated alike by all rules.
    edges = sorted({1, 65536} | {a for a, _ in named if a >= 1} | {b + 1 for _, b in named})
    runs = [(b - a, a) for a, b in zip(edges, edges[1:], strict=False) if 1 <= a < b <= 65536]
    return max(runs, key=lambda run: (run[0], -run[1]))[1]


def _rules(ruleset: Ruleset) -> Iterator[Rule]:
    for table in ruleset.tables.values():
        for chain in table.chains.values():
            yield from chain.rules


def _address_rules(rulesets: Iterable[Ruleset]) -> list[_AddressRule]:
    """The address matches of every rule a bridged packet may meet: rules in chains only INPUT
    or OUTPUT reach never see one, so they must not split members into groups."""
    found = []
    for ruleset in rulesets:
        bridge = ruleset.family == "bridge"
        table = BRIDGE_ADDRESS_OPTIONS if bridge else ADDRESS_OPTIONS
        interface_keys = BRIDGE_INTERFACE_OPTIONS if bridge else INTERFACE_OPTIONS
        for rule in bridged_rules(ruleset):
            src, dst, interfaces = [], [], []
            for match in rule.matches:
                for option in match.options:
                    key = (match.module, option.name)
                    if key in interface_keys and not rule.error:
                        interfaces.append(option)
                    if key not in table:
                        continue
                    side = side_of(match.module, option, table)
                    decide = table[key][1]
                    if side == "src":
                        src.append((option, decide))
                    elif side == "dst":
                        dst.append((option, decide))
                    else:  # a set over both or neither: treat as naming both sides, unknown
                        src.append((option, lambda o, a, c: None))
            if src or dst:
                ports = () if bridge or rule.error else _port_matches(rule)
                found.append(_AddressRule(tuple(src), tuple(dst), tuple(interfaces), ports))
    return found


# iptables matches that read nothing but a packet's protocol and ports. ARP frames, the only
# flow packets without them, never meet iptables.
PORT_MATCHES = {("", "-p")} | {
    key for key in MATCHERS if key[0] in ("tcp", "udp", "sctp", "multiport") and "port" in key[1]
}
_ANY = IPv4Address(0)
_NO_SETS = MatchContext({})


def _port_matches(rule: Rule) -> tuple[tuple[str, Option], ...]:
    return tuple(
        (match.module, option)
        for match in rule.matches
        for option in match.options
        if (match.module, option.name) in PORT_MATCHES
    )


@lru_cache(maxsize=4096)
def _ports_may_match(
    ports: tuple[tuple[str, Option], ...], protocol: str, port: int, reply: bool
) -> bool:
    """Cached: Docker's link rules for one port share their port matches."""
    sport, dport = (port, None) if reply else (None, port)
    packet = Packet("ipv4", _ANY, _ANY, "", "", protocol, sport, dport)
    return all(
        MATCHERS[(module, option.name)](option, packet, _NO_SETS) is not False
        for module, option in ports
    )


def _native_address_rules(found: list[tuple[AddressMatch, ...]]) -> list[_AddressRule]:
    return [
        _AddressRule(
            tuple((m, _decide_native) for m in matches if m.side == "src"),
            tuple((m, _decide_native) for m in matches if m.side == "dst"),
        )
        for matches in found
    ]


def _decide_native(match: AddressMatch, address, ctx) -> Tri:
    return match.decide(address)


@dataclass(frozen=True)
class FamilyRules:
    """What every network of one family reads from the rules, gathered once per check: reading
    it again per network costs networks x rules."""

    rulesets: tuple[Ruleset, ...]
    probe: int
    address_rules: tuple[_AddressRule, ...]
    # Indexes into address_rules by their key (_AddressRule.key): a network reads the rules of
    # its own bridge and members and the general ones, not every rule (networks x rules).
    by_key: dict[tuple[str, object] | None, list[int]]

    @classmethod
    def of(cls, inputs: PathInputs, family: str) -> FamilyRules:
        rulesets = inputs.firewall.for_family(family)
        if inputs.firewall.bridge is not None:
            rulesets += (inputs.firewall.bridge,)
        nft = inputs.firewall.nftables
        native = _native_address_rules(address_matches(nft.native)) if nft else []
        address_rules = tuple(_address_rules(rulesets) + native)
        by_key: dict[tuple[str, object] | None, list[int]] = defaultdict(list)
        for index, rule in enumerate(address_rules):
            by_key[rule.key].append(index)
        return cls(rulesets, probe_port(rulesets), address_rules, dict(by_key))

    def concerning(
        self, bridge: str, members: tuple[Member, ...]
    ) -> Iterator[tuple[int, _AddressRule]]:
        """In order, the address rules that may match a packet between members of `bridge`."""
        keys = [None, ("bridge", bridge), *{("host", m.address) for m in members}]
        found = sorted(index for key in keys for index in self.by_key.get(key, ()))
        for index in found:
            rule = self.address_rules[index]
            if rule.may_match_on(bridge):
                yield index, rule


def _host(option: Option | AddressMatch, decide: object) -> IPAddress | None:
    """The one address an address match names (negated or not), if it names exactly one."""
    if isinstance(option, AddressMatch):
        return option.host
    return host_address(option) if decide is in_network else None


def _and(a: Tri, b: Tri) -> Tri:
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


class _Sides:
    """How a rule's address matches treat each member, kept sparse: the value most members get,
    and the few members that differ. A host address (/32, /128) is looked up, not scanned, so
    Docker's per-link rules cost O(1) each, not O(containers)."""

    def __init__(self, members: tuple[Member, ...], ctx: MatchContext) -> None:
        self.members = members
        self.ctx = ctx
        self.by_address: dict[object, list[str]] = defaultdict(list)
        for member in members:
            self.by_address[member.address].append(member.container.id)

    def values(self, preds: tuple) -> tuple[Tri, dict[str, Tri]]:
        default: Tri = True
        exceptions: dict[str, Tri] = {}
        for option, decide in preds:
            one_default, one = self._one(option, decide)
            combined = _and(default, one_default)
            merged = {}
            for key in exceptions.keys() | one.keys():
                value = _and(exceptions.get(key, default), one.get(key, one_default))
                if value != combined:
                    merged[key] = value
            default, exceptions = combined, merged
        return default, exceptions

    def _one(self, option, decide) -> tuple[Tri, dict[str, Tri]]:
        host = _host(option, decide)
        if host is not None:
            hit = not option.negated
            return (not hit), {i: hit for i in self.by_address.get(host, ())}
        values = {m.container.id: decide(option, m.address, self.ctx) for m in self.members}
        default = Counter(values.values()).most_common(1)[0][0] if values else True
        return default, {k: v for k, v in values.items() if v != default}

    def possible(self, default: Tri, exceptions: dict[str, Tri]) -> list[str]:
        """Members the side may match."""
        if default is False:
            return [k for k, v in exceptions.items() if v is not False]
        return [
            m.container.id
            for m in self.members
            if exceptions.get(m.container.id, default) is not False
        ]


# By ordered pair of container ids: the rules whose both sides vary that name it, each with
# whether it names the pair through the replies of the reverse flow.
_Touching = dict[tuple[str, str], list[tuple[_AddressRule, bool]]]


class NetworkFlows:
    """Evaluates the flows of one network and family."""

    def __init__(
        self,
        expectation: NetworkExpectation,
        family: str,
        inputs: PathInputs,
        list_all: bool = False,
        rules: FamilyRules | None = None,
    ) -> None:
        self.expectation = expectation
        self.network = expectation.network
        self.family = family
        self.inputs = inputs
        self.list_all = list_all
        self.members = expectation.members.get(family, ())
        self.rules = rules or FamilyRules.of(inputs, family)
        self.ctx = inputs.match_context()
        self.probe = self.rules.probe
        self.arp = inputs.decides_arp()
        self.links: dict[tuple[str, str, ExposedPort], LinkFlow] = (
            {
                (lf.parent.container.id, lf.child.container.id, lf.port): lf
                for lf in expectation.link_flows
            }
            if family == "ipv4"
            else {}
        )

    # -- grouping ------------------------------------------------------------------------------

    def _classify(self) -> tuple[dict[str, tuple], _Touching, set[tuple[str, str]]]:
        """Each member's signature; by pair, the rules whose both sides vary that may touch its
        flows (and whether through the replies); and the pairs listed one by one: those, both
        ways round (the order the output has always had), and the links (by container id)."""
        signatures: dict[str, list] = {m.container.id: [] for m in self.members}
        touching: _Touching = defaultdict(list)
        sides = _Sides(self.members, self.ctx)
        for index, rule in self.rules.concerning(self.network.bridge, self.members):
            src_default, src = sides.values(rule.src)
            dst_default, dst = sides.values(rule.dst)
            if (src_default is False and not src) or (dst_default is False and not dst):
                continue  # matches no member at all
            if src and dst:
                for a in sides.possible(src_default, src):
                    for b in sides.possible(dst_default, dst):
                        if a != b:
                            touching[(a, b)].append((rule, False))
                            touching[(b, a)].append((rule, True))  # the replies of b -> a
            else:
                for member_id, value in (src or dst).items():
                    signatures[member_id].append((index, value))
        named = set(touching) | {(parent_id, child_id) for parent_id, child_id, _port in self.links}
        return {k: tuple(v) for k, v in signatures.items()}, touching, named

    def probes(self, target: Member) -> tuple[Probe, ...]:
        """Every exposed port, and a TCP and a UDP probe on a port no rule names: a hole for a
        whole protocol (`-p udp -j RETURN` before Docker's DROP) shows on no exposed port."""
        ports = tuple(Probe(p.protocol, p.port) for p in target.container.exposed)
        return ports + (
            Probe("tcp", self.probe, exposed=False),
            Probe("udp", self.probe, exposed=False),
        )

    # -- evaluation ----------------------------------------------------------------------------

    def decide(self, source: Member, target: Member, probe: Probe) -> Decision:
        """A flow's verdict: every packet it needs must pass."""
        packets = flow_packets(
            self.family,
            source.address,
            target.address,
            self.network.bridge,
            probe.protocol,
            probe.port,
            arp=self.arp,
        )
        decisions = [evaluate_packet(packet, self.inputs) for packet in packets]
        for decision in decisions:
            if decision.verdict is Verdict.DENY:
                return decision
        for decision in decisions:
            if decision.verdict is Verdict.UNKNOWN:
                return decision
        return decisions[0]

    def _expected(self, source: Member, target: Member, probe: Probe) -> tuple[Verdict, str]:
        """(ALLOW or DENY, link alias or "")."""
        if self.network.icc:
            return Verdict.ALLOW, ""
        link = (
            self.links.get(
                (source.container.id, target.container.id, ExposedPort(probe.port, probe.protocol))  # type: ignore[arg-type]
            )
            if probe.exposed
            else None
        )
        return (Verdict.ALLOW, link.alias) if link else (Verdict.DENY, "")

    def _flow(self, source: Member, target: Member, probe: Probe, decision: Decision) -> Flow:
        expected, alias = self._expected(source, target, probe)
        return Flow(
            network=self.network.name,
            source=source.container.name,
            target=target.container.name,
            protocol=probe.protocol,
            port=probe.port if probe.exposed else None,
            expected=expected,
            actual=decision.verdict,
            family=self.family,
            alias=alias,
            reason=decision.reason,
        )

    def run(self) -> tuple[list[Flow], Counter]:
        """Listed flows and counts by (expected, actual)."""
        listed: list[Flow] = []
        counts: Counter = Counter()
        if len(self.members) < 2:
            return listed, counts
        signatures, touching, named = self._classify()
        shared = _GroupVerdicts(self, signatures)
        self._named_flows(named, touching, shared, listed, counts)
        self._group_flows(signatures, named, shared, listed, counts)
        return listed, counts

    def _named_flows(
        self,
        named: set[tuple[str, str]],
        touching: _Touching,
        shared: _GroupVerdicts,
        listed: list[Flow],
        counts: Counter,
    ) -> None:
        """The named pairs one by one. A flow that a rule naming both sides may touch is
        decided alone; any other shares its groups' verdict."""
        by_id = {m.container.id: m for m in self.members}
        for source_id, target_id in sorted(named):
            source, target = by_id[source_id], by_id[target_id]
            rules = touching.get((source_id, target_id), ())
            for probe in self.probes(target):
                alone = any(rule.may_touch(probe, reply) for rule, reply in rules)
                decide = self.decide if alone else shared.decide
                flow = self._flow(source, target, probe, decide(source, target, probe))
                counts[(flow.expected, flow.actual)] += 1
                if self.list_all or flow.link or flow.expected != flow.actual:
                    listed.append(flow)

    def _group_flows(
        self,
        signatures: dict[str, tuple],
        named: set[tuple[str, str]],
        shared: _GroupVerdicts,
        listed: list[Flow],
        counts: Counter,
    ) -> None:
        """Every other pair, counted by groups; listed one by one only when unexpected."""
        sources: dict[tuple, list[Member]] = defaultdict(list)
        targets: dict[tuple, list[Member]] = defaultdict(list)
        for member in self.members:
            signature = signatures[member.container.id]
            sources[signature].append(member)
            targets[(signature, self.probes(member))].append(member)
        for source_group in sources.values():
            for (_, probes), target_group in targets.items():
                pairs = self._generic_pairs(source_group, target_group, named)
                representative = next(pairs, None)
                if representative is None:
                    continue
                source, target = representative
                for probe in probes:
                    decision = shared.decide(source, target, probe)
                    flow = self._flow(source, target, probe, decision)
                    key = (flow.expected, flow.actual)
                    if self.list_all or flow.expected != flow.actual:
                        for s, t in self._generic_pairs(source_group, target_group, named):
                            listed.append(self._flow(s, t, probe, decision))
                            counts[key] += 1
                    else:
                        counts[key] += self._count_generic(source_group, target_group, named)

    @staticmethod
    def _generic_pairs(
        sources: list[Member], targets: list[Member], named: set[tuple[str, str]]
    ) -> Iterator[tuple[Member, Member]]:
        for source in sources:
            for target in targets:
                if source is not target and (source.container.id, target.container.id) not in named:
                    yield source, target

    @staticmethod
    def _count_generic(
        sources: list[Member], targets: list[Member], named: set[tuple[str, str]]
    ) -> int:
        source_ids = {m.container.id for m in sources}
        target_ids = {m.container.id for m in targets}
        total = len(source_ids) * len(target_ids) - len(source_ids & target_ids)
        total -= sum(1 for a, b in named if a in source_ids and b in target_ids)
        return total


class _GroupVerdicts:
    """The verdict a flow no rule naming both sides touches shares with every such flow between
    the same groups: decided once per pair of signatures and probe."""

    def __init__(self, flows: NetworkFlows, signatures: dict[str, tuple]) -> None:
        self.flows = flows
        self.signatures = signatures
        self.decisions: dict[tuple, Decision] = {}

    def decide(self, source: Member, target: Member, probe: Probe) -> Decision:
        key = (self.signatures[source.container.id], self.signatures[target.container.id], probe)
        if key not in self.decisions:
            self.decisions[key] = self.flows.decide(source, target, probe)
        return self.decisions[key]


def evaluate_flows(
    expectations: Iterable[NetworkExpectation], inputs: PathInputs, list_all: bool = False
) -> tuple[list[Flow], list[FlowCount]]:
    listed: list[Flow] = []
    counts: list[FlowCount] = []
    rules = {family: FamilyRules.of(inputs, family) for family in ("ipv4", "ipv6")}
    for expectation in expectations:
        for family in ("ipv4", "ipv6"):
            flows, counted = NetworkFlows(
                expectation, family, inputs, list_all, rules[family]
            ).run()
            listed.extend(flows)
            for (expected, actual), count in sorted(counted.items()):
                counts.append(FlowCount(expectation.network.name, expected, actual, count, family))
    return listed, counts
