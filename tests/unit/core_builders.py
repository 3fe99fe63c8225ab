"""Small builders for the core tests: dumps from a few rule lines, packets, evaluator inputs, and
an independent one-pair-at-a-time oracle for flows."""

from __future__ import annotations

from ipaddress import ip_address

from exporter.expectations import Member, NetworkExpectation
from exporter.firewall.evaluate import Decision, PathInputs, Verdict, evaluate_packet
from exporter.firewall.matches import MatchContext, Packet
from exporter.firewall.parse import parse_ebtables_save, parse_iptables_save
from exporter.firewall.rules import IPSet, Option, Ruleset
from exporter.firewall.state import FirewallState, NftablesInfo

BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}
NO_SETS = MatchContext({})


def table_text(
    table: str,
    rules: list[str],
    policies: dict[str, str] | None = None,
    user_chains: tuple[str, ...] = (),
) -> str:
    """One `*table ... COMMIT` block declaring builtin chains and every other chain named."""
    policies = policies or {}
    named = {line.split()[1] for line in rules} | set(user_chains)
    lines = [f"*{table}"]
    lines += [f":{c} {policies.get(c, 'ACCEPT')} [0:0]" for c in BUILTIN_CHAINS[table]]
    lines += [f":{c} - [0:0]" for c in sorted(named - set(BUILTIN_CHAINS[table]))]
    return "\n".join([*lines, *rules, "COMMIT"]) + "\n"


def ruleset(
    *rules: str,
    table: str = "filter",
    policy: str = "ACCEPT",
    backend: str = "nft",
    family: str = "ipv4",
) -> Ruleset:
    """A ruleset of one table from `-A CHAIN ...` lines; `policy` is the table's FORWARD policy."""
    text = table_text(table, list(rules), {"FORWARD": policy})
    return parse_iptables_save(text, family, backend)  # type: ignore[arg-type]


def ebtables(*rules: str, policy: str = "ACCEPT") -> Ruleset:
    head = f"*filter\n:INPUT ACCEPT\n:FORWARD {policy}\n:OUTPUT ACCEPT\n"
    named = {line.split()[1] for line in rules} - {"INPUT", "FORWARD", "OUTPUT"}
    chains = "".join(f":{c} RETURN\n" for c in sorted(named))
    return parse_ebtables_save(head + chains + "".join(f"{r}\n" for r in rules))


def opt(name: str, *args: str, negated: bool = False) -> Option:
    return Option(name, tuple(args), negated)


def packet(
    src: str = "172.17.0.3",
    dst: str = "172.17.0.2",
    protocol: str = "tcp",
    dport: int | None = 80,
    sport: int | None = None,
    *,
    bridge: str = "docker0",
    state: str = "NEW",
    reply: bool = False,
) -> Packet:
    source, target = ip_address(src), ip_address(dst)
    family = "ipv4" if source.version == 4 else "ipv6"
    return Packet(family, source, target, bridge, bridge, protocol, sport, dport, state, reply)


def reply_of(first: Packet) -> Packet:
    return Packet(
        first.family,
        first.dst,
        first.src,
        first.out_iface,
        first.in_iface,
        first.protocol,
        first.dport,
        first.sport,
        "ESTABLISHED",
        reply=True,
    )


def inputs(
    *rulesets: Ruleset,
    bridge: Ruleset | None = None,
    bridge_unreadable: bool = False,
    ipsets: dict[str, IPSet] | None = None,
    sets_unreadable: bool = False,
    call: int | None = 1,
    nftables: NftablesInfo | None = None,
    unreadable: frozenset[str] = frozenset(),
) -> PathInputs:
    """Evaluator inputs; ebtables and ipset default to read and empty."""
    firewall = FirewallState(
        primary_backend=rulesets[0].backend if rulesets else None,
        rulesets=rulesets,
        bridge=None if bridge_unreadable else bridge or ebtables(),
        ipsets=None if sets_unreadable else ipsets or {},
        nftables=NftablesInfo() if nftables is None else nftables,
    )
    return PathInputs(firewall, call, call, unreadable)


# ---- the oracle: every pair and port on its own -------------------------------------------------


def flow_packets(source: Member, target: Member, protocol: str, port: int, bridge: str, arp: bool):
    """The packets flows.py documents: the first packet; for TCP the target's reply and the
    client's ACK too; for IPv4 the ARP exchange when ebtables decides anything."""
    first = packet(str(source.address), str(target.address), protocol, port, bridge=bridge)
    found = [first]
    if protocol == "tcp":
        found.append(reply_of(first))
        found.append(
            Packet(
                first.family,
                first.src,
                first.dst,
                bridge,
                bridge,
                "tcp",
                None,
                port,
                "ESTABLISHED",
                flags=frozenset({"ACK"}),
            )
        )
    if arp and first.family == "ipv4":
        src, dst = str(source.address), str(target.address)
        found.append(packet(src, dst, "arp", None, bridge=bridge))
        found.append(packet(dst, src, "arp", None, bridge=bridge, reply=True))
    return found


def combined(decisions: list[Decision]) -> Decision:
    """A flow passes when every packet passes; one sure drop denies it. The reason is the first
    denying packet's, else the first unknown one's, else the first packet's (its ACCEPT)."""
    for verdict in (Verdict.DENY, Verdict.UNKNOWN):
        for decision in decisions:
            if decision.verdict is verdict:
                return decision
    return decisions[0]


def one_by_one(
    expectation: NetworkExpectation, family: str, path: PathInputs, probe: int
) -> dict[tuple[str, str, str, int | None], tuple[str, str]]:
    """(source, target, protocol, port or None for the probe) -> (verdict, reason), pair by pair."""
    bridge = path.firewall.bridge
    arp = bridge is None or not bridge.empty
    found = {}
    members = expectation.members.get(family, ())
    for source in members:
        for target in members:
            if source is target:
                continue
            ports = [(p.protocol, p.port, p.port) for p in target.container.exposed]
            for protocol, port, label in ports + [("tcp", probe, None), ("udp", probe, None)]:
                packets = flow_packets(
                    source, target, protocol, port, expectation.network.bridge, arp
                )
                decision = combined([evaluate_packet(p, path) for p in packets])
                key = (source.container.name, target.container.name, protocol, label)
                found[key] = (decision.verdict.value, decision.reason)
    return found
