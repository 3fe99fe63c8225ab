"""What Docker's declared state promises: members by family, legacy links (default bridge, icc off,
IPv4, the child's exposed ports), the rules Docker writes for a link, and the wanted posture."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from exporter.expectations import (
    Member,
    link_rules,
    network_expectations,
    posture_findings,
)
from exporter.firewall.parse import parse_iptables_save
from exporter.firewall.rules import Match, Option, Rule, rule_identity
from exporter.model import Container, DockerState, Endpoint, ExposedPort, Link
from exporter.report import ICC_POSTURE, IPTABLES_POSTURE
from tests.unit import layouts as L


def by_name(expectations):
    return {e.network.name: e for e in expectations}


def link_flows(state: DockerState) -> list[tuple[str, str, str, str]]:
    return [
        (f.parent.container.name, f.child.container.name, f.alias, str(f.port))
        for e in network_expectations(state)
        for f in e.link_flows
    ]


# ---- members ---------------------------------------------------------------------------------


def test_members_are_grouped_by_network_and_family():
    net = L.network("n", "br0", True, "10.1.0.0/24")
    other = L.network("o", "br1", True, "10.2.0.0/24")
    dual = Container(
        "id-d",
        "dual",
        endpoints=(
            Endpoint(net.id, ip_address("10.1.0.2"), ip_address("fd00::2")),
            Endpoint(other.id, ip_address("10.2.0.2")),
        ),
    )
    only6 = Container("id-6", "six", endpoints=(Endpoint(net.id, ipv6=ip_address("fd00::3")),))
    elsewhere = L.container("x", other, "10.2.0.9")
    found = by_name(network_expectations(DockerState("t", (net, other), (dual, only6, elsewhere))))
    names = {
        (network, family): [m.container.name for m in members]
        for network, e in found.items()
        for family, members in e.members.items()
    }
    assert names == {
        ("n", "ipv4"): ["dual"],
        ("n", "ipv6"): ["dual", "six"],
        ("o", "ipv4"): ["dual", "x"],
        ("o", "ipv6"): [],
    }
    assert found["n"].members["ipv6"][0] == Member(dual, ip_address("fd00::2"))


def test_every_network_gets_an_expectation_even_without_members():
    net = L.network("empty", "br9", False, "10.9.0.0/24")
    (only,) = network_expectations(DockerState("t", (net,), ()))
    assert only.members == {"ipv4": (), "ipv6": ()} and only.link_flows == ()


# ---- links -----------------------------------------------------------------------------------


def test_link_on_the_default_bridge_with_icc_off_allows_the_childs_exposed_ports():
    assert link_flows(L.default_bridge_state(False)) == [("client", "web", "web", "80/tcp")]


def test_no_link_flows_while_icc_allows_everything():
    assert link_flows(L.default_bridge_state(True)) == []


def test_links_on_a_user_defined_network_are_only_dns_aliases():
    net = L.network("user", "br0", False, "10.1.0.0/24")
    state = DockerState(
        "t",
        (net,),
        (
            L.container("web", net, "10.1.0.2", exposed=("80/tcp",)),
            L.container("client", net, "10.1.0.3", links=(("web", "web"),)),
        ),
    )
    assert link_flows(state) == []


def test_link_to_a_child_exposing_nothing_or_not_running_allows_nothing():
    bridge = L.network("bridge", "docker0", False, "172.17.0.0/16", default=True)
    state = DockerState(
        "t",
        (bridge,),
        (
            L.container("quiet", bridge, "172.17.0.2"),
            L.container("client", bridge, "172.17.0.3", links=(("quiet", "q"), ("gone", "g"))),
        ),
    )
    assert link_flows(state) == []


def test_a_link_covers_every_port_and_protocol_the_child_exposes():
    bridge = L.network("bridge", "docker0", False, "172.17.0.0/16", default=True)
    state = DockerState(
        "t",
        (bridge,),
        (
            L.container("dns", bridge, "172.17.0.2", exposed=("53/udp", "53/tcp")),
            L.container("client", bridge, "172.17.0.3", links=(("dns", "resolver"),)),
        ),
    )
    assert sorted(link_flows(state)) == [
        ("client", "dns", "resolver", "53/tcp"),
        ("client", "dns", "resolver", "53/udp"),
    ]


def test_links_are_ipv4_only():
    bridge = L.network("bridge", "docker0", False, "172.17.0.0/16", default=True)
    web = Container(
        "id-web",
        "web",
        (ExposedPort(80, "tcp"),),
        (Endpoint(bridge.id, ipv6=ip_address("fd00::2")),),
    )
    client = Container(
        "id-client",
        "client",
        (),
        (Endpoint(bridge.id, ipv6=ip_address("fd00::3")),),
        (Link("id-client", "id-web", "web"),),
    )
    assert link_flows(DockerState("t", (bridge,), (web, client))) == []


def test_link_rules_are_the_pair_docker_writes():
    (expectation,) = network_expectations(L.default_bridge_state(False))
    (link,) = expectation.link_flows
    forward, reverse = link_rules(link, "docker0")
    assert forward.spec == (
        "-s 172.17.0.3/32 -d 172.17.0.2/32 -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT"
    )
    assert reverse.spec == (
        "-s 172.17.0.2/32 -d 172.17.0.3/32 -i docker0 -o docker0 -p tcp -m tcp --sport 80 -j ACCEPT"
    )
    assert expectation.expected_rules() == (forward, reverse)


def test_link_rules_are_the_values_the_parser_reads_from_dockers_dump():
    """The built rule and Docker's line in a real dump are the same rule: same identity, same text."""
    dump = (L.LAYOUTS / "docker28-icc-false-link.rules").read_text()
    docker = parse_iptables_save(dump, "ipv4", "nft").chain("filter", "DOCKER")
    (expectation,) = network_expectations(L.default_bridge_state(False))
    for expected in expectation.expected_rules():
        (parsed,) = [r for r in docker.rules if r.text == expected.rule.text]
        assert rule_identity(parsed) == rule_identity(expected.rule)
        assert (parsed.matches, parsed.target) == (expected.rule.matches, expected.rule.target)


def test_expected_rules_match_the_layout_fixture_line_for_line():
    text = (L.LAYOUTS / "docker28-icc-false-link.rules").read_text().splitlines()
    (expectation,) = network_expectations(L.default_bridge_state(False))
    for rule in expectation.expected_rules():
        assert f"-A DOCKER {rule.spec}" in text


# ---- rule identity ---------------------------------------------------------------------------


def spec(*options, target="ACCEPT"):
    """The identity of a rule with these (module, name, args, negated) options, each its own match."""
    matches = tuple(Match(m, (Option(n, tuple(a.split()), neg),)) for m, n, a, neg in options)
    return rule_identity(Rule("DOCKER", 1, "", matches, target))


S = ("", "-s", "172.17.0.3/32", False)
D = ("", "-d", "172.17.0.2/32", False)
DPORT = ("tcp", "--dport", "80", False)


def test_identity_ignores_option_order_and_host_prefix_spelling():
    assert spec(S, D, DPORT) == spec(DPORT, D, S)
    assert spec(("", "-s", "172.17.0.3", False), D) == spec(S, D)
    assert spec(("", "-s", "172.17.0.3/255.255.255.255", False), D) == spec(S, D)


@pytest.mark.parametrize(
    "other",
    [
        spec(S, D, DPORT, target="DROP"),
        spec(("", "-s", "172.17.0.3/32", True), D, DPORT),
        spec(S, D, ("tcp", "--dport", "81", False)),
        spec(S, D),
        spec(("", "-s", "172.17.0.0/16", False), D, DPORT),
    ],
)
def test_identity_tells_different_rules_apart(other):
    assert other != spec(S, D, DPORT)


def test_identity_keeps_unparseable_addresses_as_printed():
    assert spec(("", "-s", "web.local", False)) == spec(("", "-s", "web.local", False))


# ---- posture ---------------------------------------------------------------------------------


def test_icc_posture_checks_the_default_bridge_only():
    state = L.usernet_state("bridge1", icc=False)  # docker0 icc on, net1 icc off
    (finding,) = posture_findings(state, True, "disabled", "any")
    assert (finding.kind, finding.network) == (ICC_POSTURE, "bridge")
    assert finding.restore == "restart dockerd with --icc=false"
    assert "icc is enabled on docker0, expected disabled" in finding.detail
    assert posture_findings(state, True, "enabled", "any") == ()
    assert posture_findings(state, True, "any", "any") == ()


@pytest.mark.parametrize("managed,words", [(False, "disabled"), (None, "unknown")])
def test_iptables_posture_when_management_is_not_known_to_be_on(managed, words):
    (finding,) = posture_findings(L.default_bridge_state(False), managed, "any", "enabled")
    assert finding.kind == IPTABLES_POSTURE and f"is {words}, expected enabled" in finding.detail
    assert finding.restore == "restart dockerd with --iptables=true"


def test_iptables_posture_quiet_when_managed_or_not_asked():
    state = L.default_bridge_state(False)
    assert posture_findings(state, True, "any", "enabled") == ()
    assert posture_findings(state, False, "any", "any") == ()
