"""evaluate_flows and probe_port on small topologies: counts, what is listed, and which packets a
flow needs (TCP: the first packet and the reply; UDP: the first packet)."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from exporter.expectations import network_expectations
from exporter.firewall.parse import parse_iptables_save
from exporter.flows import evaluate_flows, probe_port
from exporter.model import Container, DockerState, Endpoint, ExposedPort
from tests.unit import layouts as L
from tests.unit.core_builders import ebtables, inputs, ruleset

D28 = parse_iptables_save((L.LAYOUTS / "docker28-icc-false-link.rules").read_text(), "ipv4", "nft")
LINKED = network_expectations(L.default_bridge_state(False))


def flows(*rulesets, state=None, list_all=True, **kw):
    expectations = LINKED if state is None else network_expectations(state)
    return evaluate_flows(expectations, inputs(*rulesets, **kw), list_all)


def table(listed) -> dict[tuple, tuple[str, str]]:
    return {(f.source, f.target, f.protocol, f.port): (f.expected, f.actual) for f in listed}


def counted(counts) -> dict[tuple, int]:
    return {(c.network, c.family, c.expected, c.actual): c.count for c in counts}


def two(icc: bool, *exposed: str, bridge: str = "br0") -> DockerState:
    """a 10.1.0.2 and b 10.1.0.3 on one user-defined network; b exposes `exposed`."""
    net = L.network("n", bridge, icc, "10.1.0.0/24")
    return DockerState(
        "t",
        (net,),
        (
            L.container("a", net, "10.1.0.2"),
            L.container("b", net, "10.1.0.3", exposed=exposed),
        ),
    )


# ---- counts and listing ----------------------------------------------------------------------


def test_clean_link_layout_counts_every_pair_and_lists_only_the_link():
    listed, counts = flows(D28, list_all=False)
    assert [(f.source, f.target, f.alias, f.port) for f in listed] == [("client", "web", "web", 80)]
    assert counted(counts) == {
        ("bridge", "ipv4", "allow", "allow"): 1,
        # 6 ordered pairs with a TCP and a UDP probe each, and loner -> web:80
        ("bridge", "ipv4", "deny", "deny"): 13,
    }


def test_list_all_lists_every_ordered_pair_with_each_target_port_and_two_probes():
    listed, _ = flows(D28)
    names = ("client", "web", "loner")
    probes = {
        (source, target, protocol, None): ("deny", "deny")
        for source in names
        for target in names
        if source != target
        for protocol in ("tcp", "udp")
    }
    assert table(listed) == {
        ("client", "web", "tcp", 80): ("allow", "allow"),
        ("loner", "web", "tcp", 80): ("deny", "deny"),
        **probes,
    }


def test_unexpected_verdicts_are_listed_one_by_one_even_when_grouped():
    wide_open = ruleset("-A FORWARD -j ACCEPT")
    listed, counts = flows(wide_open, list_all=False)
    breaches = {(f.source, f.target) for f in listed if (f.expected, f.actual) == ("deny", "allow")}
    assert len(breaches) == 6 and ("loner", "web") in breaches  # probes: client -> web too
    assert counted(counts)[("bridge", "ipv4", "deny", "allow")] == 13
    assert {f.reason for f in listed} == {"nft filter FORWARD #1: -A FORWARD -j ACCEPT"}


def test_a_hand_written_accept_between_two_containers_is_one_pair_one_way():
    accept = "-A FORWARD -s 172.17.0.4/32 -d 172.17.0.2/32 -j ACCEPT"
    rules = parse_iptables_save(
        L.insert_rule(
            (L.LAYOUTS / "docker28-icc-false-link.rules").read_text(),
            "DOCKER-USER",
            accept.removeprefix("-A FORWARD "),
        ),
        "ipv4",
        "nft",
    )
    listed, _ = flows(rules)
    got = table(listed)
    assert got[("loner", "web", "tcp", 80)] == ("deny", "allow")
    assert got[("web", "loner", "tcp", None)] == ("deny", "deny")
    assert got[("client", "web", "tcp", 80)] == ("allow", "allow")


def test_fewer_than_two_members_have_no_flows():
    net = L.network("n", "br0", False, "10.1.0.0/24")
    state = DockerState("t", (net,), (L.container("a", net, "10.1.0.2"),))
    assert flows(ruleset("-A FORWARD -j DROP"), state=state) == ([], [])


def test_every_port_the_target_exposes_is_a_flow():
    listed, _ = flows(
        ruleset("-A FORWARD -p tcp -m tcp --dport 443 -j DROP"),
        state=two(True, "80/tcp", "443/tcp", "53/udp"),
    )
    got = table(listed)
    assert got[("a", "b", "tcp", 80)] == ("allow", "allow")
    assert got[("a", "b", "tcp", 443)] == ("allow", "deny")
    assert got[("a", "b", "udp", 53)] == ("allow", "allow")
    assert got[("b", "a", "tcp", None)] == ("allow", "allow")


# ---- which packets a flow needs --------------------------------------------------------------

REPLIES_DROPPED = "-A FORWARD -s 10.1.0.3/32 -d 10.1.0.2/32 -j DROP"


def test_tcp_needs_the_reply_to_pass_udp_does_not():
    listed, _ = flows(ruleset(REPLIES_DROPPED), state=two(True, "80/tcp", "53/udp"))
    got = table(listed)
    assert got[("a", "b", "tcp", 80)] == ("allow", "deny")
    assert got[("a", "b", "udp", 53)] == ("allow", "allow")
    denied = next(f for f in listed if f.port == 80)
    assert denied.reason == f"nft filter FORWARD #1: {REPLIES_DROPPED}"


def test_established_replies_pass_a_new_only_drop():
    drop_new = "-A FORWARD -s 10.1.0.3/32 -m conntrack --ctstate NEW -j DROP"
    got = table(flows(ruleset(drop_new), state=two(True, "80/tcp"))[0])
    assert got[("a", "b", "tcp", 80)] == ("allow", "allow")  # b's reply is ESTABLISHED
    assert got[("b", "a", "tcp", None)] == ("allow", "deny")


def test_arp_must_pass_ebtables_too():
    bridge = ebtables("-A FORWARD -p ARP --arp-ip-dst 10.1.0.3 -j DROP")
    got = table(flows(ruleset(), state=two(True, "53/udp"), bridge=bridge)[0])
    assert got[("a", "b", "udp", 53)] == ("allow", "deny")
    assert got[("b", "a", "tcp", None)] == ("allow", "deny")  # a's ARP reply to b is dropped too


def test_ipv6_members_are_flows_of_their_own_family():
    net = L.network("n", "br0", False, "10.1.0.0/24")
    members = tuple(
        Container(
            f"id-{n}",
            n,
            (ExposedPort(80, "tcp"),),
            (Endpoint(net.id, ip_address(f"10.1.0.{i}"), ip_address(f"fd00::{i}")),),
        )
        for i, n in ((2, "a"), (3, "b"))
    )
    six = ruleset("-A FORWARD -i br0 -o br0 -j DROP", family="ipv6")
    listed, counts = flows(ruleset(), six, state=DockerState("t", (net,), members))
    assert {(f.family, f.actual) for f in listed} == {("ipv4", "allow"), ("ipv6", "deny")}
    # per family: 2 ordered pairs, each with port 80 and a TCP and a UDP probe
    assert counted(counts) == {("n", "ipv4", "deny", "allow"): 6, ("n", "ipv6", "deny", "deny"): 6}


# ---- the probe port --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rules,expected",
    [
        ((), 1),
        (("-A FORWARD -p tcp -m tcp --dport 1 -j DROP",), 2),
        (
            (
                "-A FORWARD -p tcp -m tcp --dport 1:10 -j DROP",
                "-A X -p udp -m udp --sport 11 -j DROP",
            ),
            12,
        ),
        (("-A FORWARD -p tcp -m multiport --dports 2,1,3:4 -j DROP",), 5),
        (("-A FORWARD -p tcp -m tcp --dport 2:9 -j DROP",), 1),
        (("-A FORWARD -p tcp -m tcp --dport :5 -j DROP",), 6),
    ],
)
def test_probe_port_is_the_lowest_port_no_rule_names(rules, expected):
    assert probe_port([ruleset(*rules)]) == expected


def test_probe_port_counts_ebtables_ports():
    bridge = ebtables("-A FORWARD -p IPv4 --ip-proto tcp --ip-dport 1:3 -j DROP")
    assert probe_port([ruleset(), bridge]) == 4


def test_target_exposing_nothing_is_probed_on_a_port_no_rule_names():
    rules = ruleset("-A FORWARD -p tcp -m tcp --dport 1 -j ACCEPT", "-A FORWARD -j DROP")
    listed, _ = flows(rules, state=two(False))
    assert {(f.port, f.actual) for f in listed} == {(None, "deny")}


def test_accept_on_every_port_is_a_breach_for_targets_exposing_nothing():
    # Every real TCP port matches; the probe must be one of them, not the impossible port 65536.
    rules = ruleset("-A FORWARD -p tcp -m tcp --dport 1:65535 -j ACCEPT", "-A FORWARD -j DROP")
    listed, _ = flows(rules, state=two(False))
    assert {(f.protocol, f.actual) for f in listed} == {("tcp", "allow"), ("udp", "deny")}
    assert probe_port([rules]) == 1


def test_isolation_broken_for_udp_only_is_a_breach():
    # A RETURN for UDP before Docker's icc DROP sends every UDP packet back to FORWARD's ACCEPT
    # policy: the kernel passes UDP between all isolated containers. No ACCEPT rule is involved,
    # so only a flow can show it; the probe (TCP) and web's 80/tcp do not.
    text = L.insert_rule(
        (L.LAYOUTS / "docker28-icc-false-link.rules").read_text(),
        "DOCKER-FORWARD",
        "-p udp -j RETURN",
    )
    listed, _ = flows(parse_iptables_save(text, "ipv4", "nft"), list_all=False)
    assert ("deny", "allow") in {(f.expected, f.actual) for f in listed}


def test_dropping_arp_does_not_block_ipv6():
    # IPv6 finds its neighbours with ICMPv6 (ethertype IPv6), never ARP: an ebtables rule that
    # drops every ARP frame leaves IPv6 between the containers untouched.
    net = L.network("n", "br0", True, "10.1.0.0/24")
    members = tuple(
        Container(f"id-{n}", n, (), (Endpoint(net.id, ipv6=ip_address(f"fd00::{i}")),))
        for i, n in ((2, "a"), (3, "b"))
    )
    listed, _ = flows(
        ruleset(family="ipv6"),
        state=DockerState("t", (net,), members),
        bridge=ebtables("-A FORWARD -p ARP -j DROP"),
    )
    assert {(f.family, f.actual) for f in listed} == {("ipv6", "allow")}
