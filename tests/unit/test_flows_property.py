"""Property: flows.py's grouping gives the verdicts of evaluating every pair and port one by one.

flows.evaluate_flows groups containers that every address match treats alike and evaluates one
pair per group, plus the special pairs one by one. Here random topologies (1-3 bridges, 2-8
containers each, exposed ports, links on the default bridge, icc on/off) meet random rules in
Docker's layout (FORWARD -> DOCKER-USER -> DOCKER-FORWARD -> DOCKER-CT / ISOLATION / DOCKER, as
tests/fixtures/layouts/docker28-*.rules), drawn from the matches the evaluator decides; the oracle
(core_builders.one_by_one) walks every ordered pair and port with evaluate_packet. Verdicts and
the reasons naming the deciding rule must both agree.

CI runs a fixed, derandomized set. To search harder, raise the count and drop derandomization:
    FLOWS_PROPERTY_EXAMPLES=3000 FLOWS_PROPERTY_RANDOM=1 PYTHONPATH=$PWD \
        python3 -m pytest tests/unit/test_flows_property.py -q
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from ipaddress import ip_address, ip_network

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.expectations import network_expectations
from exporter.firewall.evaluate import PathInputs
from exporter.firewall.parse import parse_iptables_save
from exporter.firewall.rules import IPSet
from exporter.flows import evaluate_flows, probe_port
from exporter.model import Container, DockerState, Endpoint, ExposedPort, Link, Network
from tests.unit.core_builders import ebtables, inputs, one_by_one, table_text

EXAMPLES = int(os.environ.get("FLOWS_PROPERTY_EXAMPLES", "250"))
DERANDOMIZE = os.environ.get("FLOWS_PROPERTY_RANDOM", "") != "1"

PORTS = (
    ExposedPort(80, "tcp"),
    ExposedPort(443, "tcp"),
    ExposedPort(53, "udp"),
    ExposedPort(8080, "tcp"),
)
PORT_ARGS = ("80", "443", "53", "8080", "1:1024", "1024:65535", "32768:60999", "40000:50000")
MULTIPORT_ARGS = ("80,443", "53,8080", "80,1024:65535")
CTSTATES = ("NEW", "RELATED,ESTABLISHED", "ESTABLISHED", "INVALID")
USER_CHAINS = ("CUSTOM", "CUSTOM2")
DOCKER_CHAINS = (
    "DOCKER",
    "DOCKER-BRIDGE",
    "DOCKER-CT",
    "DOCKER-FORWARD",
    "DOCKER-ISOLATION-STAGE-1",
    "DOCKER-ISOLATION-STAGE-2",
    "DOCKER-USER",
)
EBTABLES_OPTIONS = (("IPv4", ("--ip-src", "--ip-dst")), ("ARP", ("--arp-ip-src", "--arp-ip-dst")))
HOST_NUMBERS = range(2, 22)  # addresses rules may name; containers take some of them


@dataclass(frozen=True)
class Scenario:
    state: DockerState
    path: PathInputs
    dump: str  # the primary backend's filter table, shown when the property fails


# ---- topologies ------------------------------------------------------------------------------


@st.composite
def topologies(draw) -> DockerState:
    networks, containers = [], []
    for index in range(draw(st.integers(1, 3))):
        default = index == 0
        network = Network(
            id=f"net{index}",
            name="bridge" if default else f"net{index}",
            bridge="docker0" if default else f"br-n{index}",
            icc=draw(st.booleans()),
            default_bridge=default,
            subnets=(ip_network(f"10.{index}.0.0/24"), ip_network(f"fd00:{index}::/64")),
        )
        networks.append(network)
        ipv6 = draw(st.booleans())  # whether the network gives its containers IPv6 addresses
        count = draw(st.integers(2, 8))
        hosts = draw(
            st.lists(st.sampled_from(HOST_NUMBERS), min_size=count, max_size=count, unique=True)
        )
        names = [f"c{index}{n}" for n in range(count)]
        links: dict[str, list[Link]] = {name: [] for name in names}
        if default:
            for parent, child in draw(
                st.lists(st.tuples(st.sampled_from(names), st.sampled_from(names)), max_size=3)
            ):
                if parent != child:
                    links[parent].append(Link(f"id-{parent}", f"id-{child}", child))
        for name, host in zip(names, hosts, strict=True):
            exposed = draw(st.lists(st.sampled_from(PORTS), max_size=2, unique=True))
            containers.append(
                Container(
                    id=f"id-{name}",
                    name=name,
                    exposed=tuple(exposed),
                    endpoints=(
                        Endpoint(
                            network.id,
                            ip_address(f"10.{index}.0.{host}"),
                            ip_address(f"fd00:{index}::{host:x}") if ipv6 else None,
                        ),
                    ),
                    links=tuple(links[name]),
                )
            )
    return DockerState("test", tuple(networks), tuple(containers))


# ---- rules -----------------------------------------------------------------------------------


def _negatable(draw, text: str) -> str:
    return f"! {text}" if draw(st.booleans()) else text


def address(family: str, net: int, host: int) -> str:
    """Container addresses: 10.NET.0.HOST, and fd00:NET::HOST (hex) for IPv6."""
    return f"10.{net}.0.{host}" if family == "ipv4" else f"fd00:{net}::{host:x}"


@st.composite
def addresses(draw, networks: int, family: str = "ipv4") -> str:
    net = draw(st.integers(0, networks - 1))
    kind = draw(st.sampled_from(["host", "host", "prefix", "subnet", "wide"]))
    bits = 32 if family == "ipv4" else 128
    if kind == "host":
        return f"{address(family, net, draw(st.sampled_from(HOST_NUMBERS)))}/{bits}"
    if kind == "prefix":
        length = bits - draw(st.sampled_from([4, 3, 2, 1]))
        base = draw(st.sampled_from([0, 8, 16]))
        return str(ip_network(f"{address(family, net, base)}/{length}", strict=False))
    if kind == "subnet":
        return f"10.{net}.0.0/24" if family == "ipv4" else f"fd00:{net}::/64"
    return "10.0.0.0/8" if family == "ipv4" else "fd00::/16"


@st.composite
def rule_specs(
    draw, bridges: tuple[str, ...], networks: int, jumps: tuple[str, ...], family: str
) -> str:
    """One rule spec (after `-A CHAIN`) in iptables-save's option order."""
    parts = []

    def add(flag: str, value: str, module: str = "") -> None:
        head = f"-m {module} " if module else ""
        parts.append(head + _negatable(draw, f"{flag} {value}"))

    for flag in ("-s", "-d"):
        if draw(st.integers(0, 2)) == 0:
            add(flag, draw(addresses(networks, family)))
    for flag in ("-i", "-o"):
        if draw(st.integers(0, 3)) == 0:
            add(flag, draw(st.sampled_from([*bridges, "br-+", "eth0"])))
    protocol = draw(st.sampled_from([None, None, "tcp", "udp"]))
    if protocol:
        parts.append(f"-p {protocol}")
        port = draw(st.sampled_from([None, "--dport", "--sport", "multiport"]))
        if port == "multiport":
            which = draw(st.sampled_from(["--dports", "--sports", "--ports"]))
            add(which, draw(st.sampled_from(MULTIPORT_ARGS)), "multiport")
        elif port:
            add(port, draw(st.sampled_from(PORT_ARGS)), protocol)
    if draw(st.integers(0, 4)) == 0:
        net, low = draw(st.integers(0, networks - 1)), draw(st.integers(2, 12))
        high = low + draw(st.integers(0, 8))
        span = f"{address(family, net, low)}-{address(family, net, high)}"
        add(draw(st.sampled_from(["--src-range", "--dst-range"])), span, "iprange")
    if draw(st.integers(0, 5)) == 0:
        add("--match-set", "S " + draw(st.sampled_from(["src", "dst", "src,dst"])), "set")
    if draw(st.integers(0, 3)) == 0:
        add("--ctstate", draw(st.sampled_from(CTSTATES)), "conntrack")
    target = draw(st.sampled_from(["ACCEPT", "ACCEPT", "DROP", "REJECT", "RETURN", *jumps]))
    flag = "-g" if target in USER_CHAINS and draw(st.integers(0, 3)) == 0 else "-j"
    return " ".join([*parts, f"{flag} {target}"])


def docker_layout(state: DockerState, dropped_links: set[int], family: str) -> list[str]:
    """Docker 28's filter rules for every bridge, and for IPv4 two ACCEPTs per link port unless
    dropped (links are IPv4 only)."""
    bridges = [n.bridge for n in state.networks]
    rules = ["-A FORWARD -j DOCKER-USER", "-A FORWARD -j DOCKER-FORWARD"]
    rules += [f"-A DOCKER ! -i {b} -o {b} -j DROP" for b in bridges]
    for index, expectation in enumerate(
        link for e in network_expectations(state) for link in e.expected_rules()
    ):
        if family == "ipv4" and index not in dropped_links:
            rules.append(f"-A DOCKER {expectation.spec}")
    rules += [f"-A DOCKER-BRIDGE -o {b} -j DOCKER" for b in bridges]
    rules += [
        f"-A DOCKER-CT -o {b} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" for b in bridges
    ]
    rules += [
        f"-A DOCKER-FORWARD -j {c}"
        for c in ("DOCKER-CT", "DOCKER-ISOLATION-STAGE-1", "DOCKER-BRIDGE")
    ]
    for network in state.networks:
        b = network.bridge
        if network.icc:
            rules.append(f"-A DOCKER-FORWARD -i {b} -j ACCEPT")
        else:
            rules += [
                f"-A DOCKER-FORWARD -i {b} -o {b} -j DROP",
                f"-A DOCKER-FORWARD -i {b} ! -o {b} -j ACCEPT",
            ]
    rules += [
        f"-A DOCKER-ISOLATION-STAGE-1 -i {b} ! -o {b} -j DOCKER-ISOLATION-STAGE-2" for b in bridges
    ]
    rules += [f"-A DOCKER-ISOLATION-STAGE-2 -o {b} -j DROP" for b in bridges]
    return rules


@st.composite
def ipsets(draw, networks: int) -> dict[str, IPSet]:
    members = draw(st.lists(addresses(networks), max_size=3))
    if draw(st.integers(0, 5)) == 0:
        members.append(f"{draw(addresses(networks))} nomatch")
    return {"S": IPSet("S", "hash:net", "inet", tuple(members))}


@st.composite
def ebtables_rules(draw, networks: int):
    """None (unreadable), empty, or a few address rules (these make flows carry ARP too)."""
    kind = draw(st.sampled_from(["empty", "empty", "empty", "rules", "rules", "unreadable"]))
    if kind == "unreadable":
        return None
    if kind == "empty":
        return ebtables()
    rules = []
    for _ in range(draw(st.integers(1, 2))):
        protocol, sides = draw(st.sampled_from(EBTABLES_OPTIONS))
        parts = [f"-p {protocol}"]
        for option in draw(st.lists(st.sampled_from(sides), min_size=1, max_size=2, unique=True)):
            host = draw(addresses(networks)).removesuffix("/32")
            parts.append(_negatable(draw, f"{option} {host}"))
        target = draw(st.sampled_from(["DROP", "ACCEPT"]))
        rules.append(f"-A FORWARD {' '.join(parts)} -j {target}")
    return ebtables(*rules)


@st.composite
def scenarios(draw) -> Scenario:
    state = draw(topologies())
    count = len(state.networks)
    bridges = tuple(n.bridge for n in state.networks)
    links = sum(len(e.expected_rules()) for e in network_expectations(state))
    dropped = set(draw(st.lists(st.integers(0, max(links - 1, 0)), max_size=2))) if links else set()

    def some(chain: str, jumps: tuple[str, ...], most: int, family: str = "ipv4") -> list[str]:
        specs = draw(st.lists(rule_specs(bridges, count, jumps, family), max_size=most))
        return [f"-A {chain} {spec}" for spec in specs]

    def filter_table(family: str) -> str:
        rules = docker_layout(state, dropped, family)
        rules += some("DOCKER-USER", USER_CHAINS, 4, family)
        rules += some("CUSTOM", ("CUSTOM2",), 3, family)
        rules += some("CUSTOM2", (), 2, family)
        rules += some("DOCKER", (), 2, family)  # after Docker's own, as `iptables -A` puts them
        policy = draw(st.sampled_from(["ACCEPT", "DROP"]))
        return table_text("filter", rules, {"FORWARD": policy}, DOCKER_CHAINS + USER_CHAINS)

    dump = filter_table("ipv4")
    rulesets = [parse_iptables_save(dump, "ipv4", "nft")]
    if any(e.ipv6 for c in state.containers for e in c.endpoints):
        rulesets.append(parse_iptables_save(filter_table("ipv6"), "ipv6", "nft"))
    if draw(st.integers(0, 4)) == 0:  # the other backend holds a rule or two too
        legacy = some("FORWARD", (), 2)
        rulesets.append(parse_iptables_save(table_text("filter", legacy), "ipv4", "legacy"))
    if draw(st.integers(0, 5)) == 0:  # and the raw table
        raw = table_text("raw", some("PREROUTING", (), 1))
        rulesets.append(parse_iptables_save(raw, "ipv4", "legacy"))
    bridge = draw(ebtables_rules(count))
    path = inputs(
        *rulesets,
        bridge=bridge,
        bridge_unreadable=bridge is None,
        ipsets=draw(ipsets(count)),
        sets_unreadable=draw(st.integers(0, 9)) == 0,  # then every set match is undecidable
        call=draw(st.sampled_from([1, 1, 1, 0, None])),  # net.bridge.bridge-nf-call-ip(6)tables
    )
    return Scenario(state, path, dump)


# ---- the property ----------------------------------------------------------------------------


def expected_verdict(
    state: DockerState, network: Network, family: str, flow: tuple[str, str, str, int | None]
) -> str:
    """Docker's promise, restated without expectations.py: icc on allows all; icc off allows
    only a link's parent to its child's exposed ports on the default bridge, over IPv4."""
    source, target, protocol, port = flow
    if network.icc:
        return "allow"
    if not network.default_bridge or port is None or family != "ipv4":
        return "deny"
    by_name = {c.name: c for c in state.containers}
    child = by_name[target]
    declared = any(link.child_id == child.id for link in by_name[source].links)
    exposed = ExposedPort(port, protocol) in child.exposed  # type: ignore[arg-type]
    return "allow" if declared and exposed else "deny"


@settings(
    derandomize=DERANDOMIZE,
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenarios())
def test_grouped_flows_equal_every_pair_one_by_one(scenario: Scenario) -> None:
    path = scenario.path
    expectations = network_expectations(scenario.state)
    listed, _ = evaluate_flows(expectations, path, list_all=True)
    default_listed, counts = evaluate_flows(expectations, path)

    got = {(f.network, f.family, f.source, f.target, f.protocol, f.port): f for f in listed}
    assert len(got) == len(listed), "a flow listed twice"
    want_counts: Counter = Counter()
    for family in ("ipv4", "ipv6"):
        rulesets = [*path.firewall.for_family(family)]
        if path.firewall.bridge is not None:
            rulesets.append(path.firewall.bridge)
        probe = probe_port(rulesets)
        for expectation in expectations:
            network = expectation.network
            oracle = one_by_one(expectation, family, path, probe)
            mine = {
                k[2:]: (f.actual, f.reason)
                for k, f in got.items()
                if k[:2] == (network.name, family)
            }
            assert mine == oracle, scenario.dump
            for flow, (actual, _) in oracle.items():
                expected = expected_verdict(scenario.state, network, family, flow)
                assert got[(network.name, family, *flow)].expected == expected
                want_counts[(network.name, family, expected, actual)] += 1
    assert {(c.network, c.family, c.expected, c.actual): c.count for c in counts} == want_counts
    # The default listing: link flows and every flow whose verdict is not the expected one.
    wanted = {k for k, f in got.items() if f.link or f.expected != f.actual}
    default_keys = {
        (f.network, f.family, f.source, f.target, f.protocol, f.port) for f in default_listed
    }
    assert default_keys == wanted
