"""The work a check does grows linearly with chains and rules (issue #6). Counted, never timed:
each test counts comparisons, lookups or match decisions, and would count quadratically (or
exponentially) many with the code that timed out on hosts with 20,000 chains."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, ip_address

import pytest

import exporter.comparison as comparison_module
import exporter.firewall.matches as matches_module
import exporter.flows as flows_module
from exporter.comparison import rule_findings
from exporter.expectations import network_expectations
from exporter.firewall.evaluate import PathInputs, Verdict, evaluate_packet
from exporter.firewall.matches import MATCHERS, Packet
from exporter.firewall.parse import parse_ebtables_save, parse_iptables_save
from exporter.firewall.rules import Chain, IPSet, Ruleset, Table
from exporter.firewall.state import FirewallState
from exporter.flows import evaluate_flows
from exporter.model import Container, DockerState
from tests.unit import layouts as L

EMPTY_EBTABLES = "*filter\n:FORWARD ACCEPT\n"


class CountingName(str):
    """A chain name that counts how often it is compared for equality."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        CountingName.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


@dataclass(frozen=True)
class CountingRuleset(Ruleset):
    """A ruleset that counts chain lookups by name."""

    lookups: list[int] = field(default_factory=lambda: [0])

    def chain(self, table: str, chain: str) -> Chain | None:
        self.lookups[0] += 1
        return super().chain(table, chain)


def with_host_chains(text: str, chains: int) -> str:
    """A dump with `chains` per-host chains off DOCKER-USER, as fail2ban-like tools build them."""
    names = [f"HOST-{n}" for n in range(chains)]
    declared = "".join(f":{name} - [0:0]\n" for name in names)
    jumps = "".join(
        f"-A DOCKER-USER -s {IPv4Address(int(IPv4Address('198.18.0.1')) + n)}/32 -j {name}\n"
        for n, name in enumerate(names)
    )
    bodies = "".join(f"-A {name} -j DROP\n" for name in names)
    text = text.replace(":DOCKER-USER - [0:0]\n", ":DOCKER-USER - [0:0]\n" + declared, 1)
    return text.replace("COMMIT", jumps + bodies + "COMMIT", 1)


def counting(ruleset: Ruleset) -> CountingRuleset:
    """The same ruleset, counting chain lookups and comparisons of jump targets."""
    tables = {}
    for name, table in ruleset.tables.items():
        chains = {}
        for chain_name, chain in table.chains.items():
            rules = tuple(
                replace(rule, target=CountingName(rule.target)) if rule.target else rule
                for rule in chain.rules
            )
            chains[chain_name] = replace(chain, rules=rules)
        tables[name] = Table(name, chains)
    return CountingRuleset(ruleset.family, ruleset.backend, tables)


def docker28_with_chains(chains: int) -> CountingRuleset:
    text = with_host_chains((L.LAYOUTS / "docker28-icc-false-link.rules").read_text(), chains)
    return counting(parse_iptables_save(text, "ipv4", "nft"))


def state_with_networks(count: int) -> DockerState:
    """The default bridge of the link layout plus `count - 1` more icc-disabled networks."""
    base = L.default_bridge_state(False)
    networks = [base.networks[0]]
    containers = list(base.containers)
    for n in range(1, count):
        network = L.network(f"net{n}", f"br-{n}", False, f"10.{n}.0.0/24")
        networks.append(network)
        containers += [L.container(f"a{n}", network, f"10.{n}.0.2"),
                       L.container(f"b{n}", network, f"10.{n}.0.3")]  # fmt: skip
    return replace(base, networks=tuple(networks), containers=tuple(containers))


def test_reachable_chains_compare_names_linearly_not_per_pair() -> None:
    chains = 3000
    ruleset = docker28_with_chains(chains)
    firewall = FirewallState(primary_backend="nft", rulesets=(ruleset,))
    expectations = network_expectations(L.default_bridge_state(False))
    CountingName.compared = 0

    findings, _ = rule_findings(expectations, firewall)

    assert [f.kind for f in findings] == []  # every host chain only drops remote hosts
    # A list of chains seen so far compares each new name with all of them: ~chains²/2.
    assert CountingName.compared <= 10 * chains


def test_forward_rules_are_read_once_per_check_not_once_per_network() -> None:
    ruleset = docker28_with_chains(500)
    firewall = FirewallState(primary_backend="nft", rulesets=(ruleset,))
    lookups = []
    for networks in (1, 20):
        ruleset.lookups[0] = 0
        rule_findings(network_expectations(state_with_networks(networks)), firewall)
        lookups.append(ruleset.lookups[0])

    one, twenty = lookups
    assert one >= 500  # every reachable chain is looked up
    # Reading the reachable rules again for each network costs 19 x ~1,000 more lookups.
    assert twenty - one <= 19 * 5


def diamond(depth: int) -> Ruleset:
    """FORWARD -> C0; each Ci jumps twice to C(i+1): 2^depth paths through depth+1 chains."""
    lines = ["*filter", ":FORWARD ACCEPT [0:0]"]
    lines += [f":C{i} - [0:0]" for i in range(depth + 1)]
    lines += ["-A FORWARD -j C0", "-A FORWARD -p tcp -j DROP"]
    for i in range(depth):
        lines += [f"-A C{i} -m comment --comment first -j C{i + 1}",
                  f"-A C{i} -m comment --comment second -j C{i + 1}"]  # fmt: skip
    lines += [f"-A C{depth} -m comment --comment last -j RETURN", "COMMIT"]
    return parse_iptables_save("\n".join(lines) + "\n", "ipv4", "nft")


def test_a_chain_reached_by_many_paths_is_walked_once_per_packet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    depth = 30
    decided = [0]
    comment = MATCHERS[("comment", "--comment")]

    def counted(option, packet, ctx):
        decided[0] += 1
        return comment(option, packet, ctx)

    monkeypatch.setitem(MATCHERS, ("comment", "--comment"), counted)
    inputs = PathInputs(
        FirewallState(rulesets=(diamond(depth),), bridge=parse_ebtables_save(EMPTY_EBTABLES)),
        call_iptables=1,
        call_ip6tables=1,
    )
    a, b = ip_address("172.17.0.2"), ip_address("172.17.0.3")
    packet = Packet("ipv4", a, b, "docker0", "docker0", "tcp", None, 80)

    decision = evaluate_packet(packet, inputs)

    # Every path returns to FORWARD, whose next rule drops tcp: a decided verdict, not a give-up.
    assert decision.verdict is Verdict.DENY
    assert "-A FORWARD -p tcp -j DROP" in decision.reason
    # Once per rule; walking every path would decide 2^31 - 1 times.
    assert decided[0] == 2 * depth + 1


def linked_host(links: int) -> tuple[DockerState, Ruleset]:
    """2 x links containers on docker0 (icc off), container 2k --link 2k+1, Docker's link rules."""
    bridge = L.network("bridge", "docker0", False, "172.16.0.0/12", default=True)
    containers, rules = [], []
    base = int(IPv4Address("172.17.0.2"))
    common = "-i docker0 -o docker0 -p tcp -m tcp"
    for k in range(links):
        parent, child = IPv4Address(base + 2 * k), IPv4Address(base + 2 * k + 1)
        containers.append(L.container(f"p{k}", bridge, str(parent), links=((f"c{k}", "db"),)))
        containers.append(L.container(f"c{k}", bridge, str(child), exposed=("80/tcp",)))
        rules.append(f"-A DOCKER -s {parent}/32 -d {child}/32 {common} --dport 80 -j ACCEPT")
        rules.append(f"-A DOCKER -s {child}/32 -d {parent}/32 {common} --sport 80 -j ACCEPT")
    text = (
        "*filter\n:FORWARD ACCEPT [0:0]\n:DOCKER - [0:0]\n-A FORWARD -o docker0 -j DOCKER\n"
        "-A FORWARD -i docker0 -o docker0 -j DROP\n" + "\n".join(rules) + "\nCOMMIT\n"
    )
    state = DockerState("test", (bridge,), tuple(containers))
    return state, parse_iptables_save(text, "ipv4", "nft")


def test_a_packet_reads_the_link_rules_of_its_own_hosts_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    links = 150
    decided = [0]
    source = MATCHERS[("", "-s")]

    def counted(option, packet, ctx):
        decided[0] += 1
        return source(option, packet, ctx)

    monkeypatch.setitem(MATCHERS, ("", "-s"), counted)
    state, ruleset = linked_host(links)
    inputs = PathInputs(
        FirewallState(rulesets=(ruleset,), bridge=parse_ebtables_save(EMPTY_EBTABLES)),
        call_iptables=1,
        call_ip6tables=1,
    )

    flows, counts = evaluate_flows(network_expectations(state), inputs)

    assert {(c.expected, c.actual) for c in counts} == {("allow", "allow"), ("deny", "deny")}
    assert len(flows) == links  # the link flows, listed
    # Each link's flows are evaluated one by one; without an index each of their packets reads
    # the -s of all 2 x links rules: ~4 x links² decisions.
    assert decided[0] <= 20 * links


class CountingAddress(IPv4Address):
    """A container address that counts how often an address match reads its version."""

    reads = 0

    @property
    def version(self) -> int:
        CountingAddress.reads += 1
        return 4


def test_an_allow_list_of_remote_hosts_is_not_checked_against_every_member() -> None:
    networks, members, remote = 20, 10, 1000
    nets, containers = [], []
    for n in range(networks):
        net = L.network(f"net{n}", f"br-{n}", False, f"10.{n}.0.0/24")
        nets.append(net)
        for k in range(members):
            made = L.container(f"c{n}-{k}", net, f"10.{n}.0.{k + 2}")
            endpoint = replace(made.endpoints[0], ipv4=CountingAddress(f"10.{n}.0.{k + 2}"))
            containers.append(replace(made, endpoints=(endpoint,)))
    state = DockerState("test", tuple(nets), tuple(containers))
    allow = "".join(
        f"-A FORWARD -s {IPv4Address(int(IPv4Address('198.18.0.1')) + i)}/32 -j ACCEPT\n"
        for i in range(remote)
    )
    member = "-A FORWARD -s 10.3.0.2/32 -j ACCEPT\n"
    drops = "".join(f"-A FORWARD -i br-{n} -o br-{n} -j DROP\n" for n in range(networks))
    text = f"*filter\n:FORWARD DROP [0:0]\n{allow}{member}{drops}COMMIT\n"
    firewall = FirewallState(
        primary_backend="nft", rulesets=(parse_iptables_save(text, "ipv4", "nft"),)
    )
    CountingAddress.reads = 0

    findings, _ = rule_findings(network_expectations(state), firewall)

    # Only the rule naming a member is reported: c3-0 may reach every other member of net3.
    assert {(f.kind, f.network) for f in findings} == {("unexpected_accept_rule", "net3")}
    # Asking every member of every network about every rule: 20 x 1,000 x 10 reads.
    assert CountingAddress.reads <= 10 * networks * members


# ---- issue #9: many containers on one host with real-host rules --------------------------------


def counting_packets(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the packets flows.py walks through the rules."""
    walked = [0]
    walk = flows_module.evaluate_packet

    def counted(packet, inputs):
        walked[0] += 1
        return walk(packet, inputs)

    monkeypatch.setattr(flows_module, "evaluate_packet", counted)
    return walked


def docker28_host(containers: int, extra_rules: str, extra_chains: str = "") -> str:
    """Docker 28's layout for `containers` containers on docker0 (icc off, no links), with
    `extra_rules` appended to table filter and `extra_chains` declared."""
    text = (L.LAYOUTS / "docker28-icc-false-link.rules").read_text()
    text = "\n".join(line for line in text.splitlines() if "-s 172.17.0." not in line) + "\n"
    text = text.replace(":DOCKER-USER - [0:0]\n", ":DOCKER-USER - [0:0]\n" + extra_chains, 1)
    return text.replace("COMMIT", extra_rules + "COMMIT", 1)


def bridge_members(containers: int) -> DockerState:
    bridge = L.network("bridge", "docker0", False, "172.16.0.0/12", default=True)
    base = int(IPv4Address("172.17.0.2"))
    made = tuple(
        L.container(f"c{i}", bridge, str(IPv4Address(base + i)), exposed=("80/tcp",))
        for i in range(containers)
    )
    return DockerState("test", (bridge,), made)


def path_inputs(text: str, ipsets: dict | None = None) -> PathInputs:
    ruleset = parse_iptables_save(text, "ipv4", "nft")
    firewall = FirewallState(
        rulesets=(ruleset,), bridge=parse_ebtables_save(EMPTY_EBTABLES), ipsets=ipsets or {}
    )
    return PathInputs(firewall, call_iptables=1, call_ip6tables=1)


def test_rules_no_bridged_packet_between_members_can_match_do_not_split_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    containers = 40
    base = int(IPv4Address("172.17.0.2"))
    published = "".join(
        f"-A DOCKER -d {IPv4Address(base + i)}/32 ! -i docker0 -o docker0 -p tcp -m tcp "
        f"--dport 80 -j ACCEPT\n"
        for i in range(containers)
    )
    banned = "".join(
        f"-A f2b-sshd -s {IPv4Address(base + i)}/32 -j REJECT\n" for i in range(containers)
    )
    text = docker28_host(
        containers,
        published + "-A INPUT -p tcp -m tcp --dport 22 -j f2b-sshd\n" + banned,
        ":f2b-sshd - [0:0]\n",
    )
    walked = counting_packets(monkeypatch)

    flows, counts = evaluate_flows(
        network_expectations(bridge_members(containers)), path_inputs(text)
    )

    assert flows == []
    assert {(c.expected, c.actual) for c in counts} == {("deny", "deny")}
    # A published port's rule (`! -i docker0`) and a ban only INPUT reaches match no packet
    # between two members; when they split every member into a group of its own, every ordered
    # pair is walked: 40 x 39 pairs x 3 probes x 3 packets.
    assert walked[0] <= 20


def test_a_link_walks_its_own_port_and_direction_only(monkeypatch: pytest.MonkeyPatch) -> None:
    links = 100
    state, ruleset = linked_host(links)
    inputs = PathInputs(
        FirewallState(rulesets=(ruleset,), bridge=parse_ebtables_save(EMPTY_EBTABLES)),
        call_iptables=1,
        call_ip6tables=1,
    )
    walked = counting_packets(monkeypatch)

    flows, counts = evaluate_flows(network_expectations(state), inputs)

    assert len(flows) == links
    assert {(c.expected, c.actual) for c in counts} == {("allow", "allow"), ("deny", "deny")}
    # The link's 80/tcp flow alone: 3 packets per link. Walking every flow of the pairs the
    # link rules name one by one (parent -> child: 80/tcp, the TCP and UDP probes; child ->
    # parent: the probes, though its rule matches only replies to the parent) is 11 per link.
    assert walked[0] <= 3 * links + 50


def test_a_packet_reads_the_rules_of_its_own_bridge_only(monkeypatch: pytest.MonkeyPatch) -> None:
    networks = 200
    decided = [0]
    out_iface = MATCHERS[("", "-o")]

    def counted(option, packet, ctx):
        decided[0] += 1
        return out_iface(option, packet, ctx)

    per_network = "".join(
        f"-A DOCKER ! -i br-{n} -o br-{n} -j DROP\n-A DOCKER-BRIDGE -o br-{n} -j DOCKER\n"
        f"-A DOCKER-FORWARD -i br-{n} -o br-{n} -j DROP\n"
        f"-A DOCKER-ISOLATION-STAGE-2 -o br-{n} -j DROP\n"
        for n in range(networks)
    )
    inputs = path_inputs(docker28_host(2, per_network))
    monkeypatch.setitem(MATCHERS, ("", "-o"), counted)
    a, b = ip_address("172.17.0.2"), ip_address("172.17.0.3")

    decision = evaluate_packet(Packet("ipv4", a, b, "docker0", "docker0", "tcp", None, 80), inputs)

    assert decision.verdict is Verdict.DENY
    assert "-A DOCKER-FORWARD -i docker0 -o docker0 -j DROP" in decision.reason
    # Reading every network's `-o br-N` rules: 4 x 200.
    assert decided[0] <= 10


def test_a_set_is_read_once_per_check_not_once_per_member_and_packet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    containers, members = 20, 500
    blocked = IPSet("blocked", "hash:net", "inet", tuple(f"198.51.{n // 256}.{n % 256}/32"
                                                          for n in range(members)))  # fmt: skip
    text = docker28_host(containers, "-A DOCKER-USER -m set --match-set blocked src -j DROP\n")
    inputs = path_inputs(text, {"blocked": blocked})
    parsed = [0]
    parse = matches_module.ip_network

    def counted(*args, **kwargs):
        parsed[0] += 1
        return parse(*args, **kwargs)

    monkeypatch.setattr(matches_module, "ip_network", counted)

    flows, counts = evaluate_flows(network_expectations(bridge_members(containers)), inputs)

    assert {(c.expected, c.actual) for c in counts} == {("deny", "deny")}
    # Every member asked while grouping and every packet walked past the set's rule parsed all
    # 500 members again: (20 + packets) x 500.
    assert parsed[0] <= 2 * members


def test_accept_rules_of_other_bridges_are_not_read_per_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    networks, links = 100, 200
    state, ruleset = linked_host(links)
    nets = [state.networks[0]]
    containers = list(state.containers)
    for n in range(networks):
        net = L.network(f"net{n}", f"br-{n}", False, f"10.{n}.0.0/24")
        nets.append(net)
        containers += [L.container(f"a{n}", net, f"10.{n}.0.2"),
                       L.container(f"b{n}", net, f"10.{n}.0.3")]  # fmt: skip
    firewall = FirewallState(primary_backend="nft", rulesets=(ruleset,))
    expectations = network_expectations(replace(state, networks=tuple(nets),
                                                containers=tuple(containers)))  # fmt: skip
    asked = [0]
    stale_hosts = comparison_module._stale_hosts

    def counted(*args):
        asked[0] += 1
        return stale_hosts(*args)

    monkeypatch.setattr(comparison_module, "_stale_hosts", counted)

    findings, _ = rule_findings(expectations, firewall)

    # Only the user networks' DROPs are missing (the dump has docker0's alone).
    assert {f.kind for f in findings} == {"icc_drop_missing"}
    # Each of the 100 user networks asked about each of docker0's 400 link ACCEPT rules.
    assert asked[0] <= 10 * networks


def test_members_are_found_in_one_pass_over_the_containers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    networks = 200
    nets, containers = [], []
    for n in range(networks):
        net = L.network(f"net{n}", f"br-{n}", n % 2 == 0, f"10.{n}.0.0/24")
        nets.append(net)
        containers += [L.container(f"a{n}", net, f"10.{n}.0.2"),
                       L.container(f"b{n}", net, f"10.{n}.0.3")]  # fmt: skip
    asked = [0]
    endpoint = Container.endpoint

    def counted(self, network_id):
        asked[0] += 1
        return endpoint(self, network_id)

    monkeypatch.setattr(Container, "endpoint", counted)

    expectations = network_expectations(DockerState("test", tuple(nets), tuple(containers)))

    assert [e.containers for e in expectations] == [2] * networks
    # Asking every container for its endpoint on every network: 200 x 400.
    assert asked[0] <= 2 * len(containers)
