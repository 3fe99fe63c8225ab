"""The explanations: which rule is missing, unexpected, stale or duplicated, which host setting
undoes isolation, and the finding each wrong flow gives, with the command that restores Docker."""

from __future__ import annotations

import pytest

from exporter.comparison import (
    duplicate_findings,
    flow_findings,
    host_findings,
    iptables_command,
    rule_findings,
)
from exporter.expectations import network_expectations
from exporter.firewall.parse import parse_ebtables_save, parse_iptables_save
from exporter.firewall.state import FirewallState, NftablesInfo
from exporter.model import HostSettings
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
    Flow,
)
from tests.unit import layouts as L
from tests.unit.core_builders import ruleset

D28 = (L.LAYOUTS / "docker28-icc-false-link.rules").read_text()
LINKED = network_expectations(L.default_bridge_state(False))
OPEN = network_expectations(L.default_bridge_state(True))
LINK_DPORT = (
    "-A DOCKER -s 172.17.0.3/32 -d 172.17.0.2/32 -i docker0 -o docker0 -p tcp -m tcp --dport 80 "
    "-j ACCEPT"
)
ICC_DROP = "-A DOCKER-FORWARD -i docker0 -o docker0 -j DROP"


def firewall(*texts: str, backends=("nft", "legacy"), family="ipv4", **kw) -> FirewallState:
    rulesets = tuple(
        parse_iptables_save(text, family, backend)
        for text, backend in zip(texts, backends[: len(texts)], strict=True)
    )
    return FirewallState(primary_backend="nft", rulesets=rulesets, **kw)


def findings_of(text: str, expectations=LINKED, **kw):
    return rule_findings(expectations, firewall(text, **kw))


# ---- rule_findings ---------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", L.LINK_LAYOUTS)
def test_clean_link_layout_has_no_rule_findings(fixture):
    findings, (status,) = findings_of((L.LAYOUTS / fixture).read_text())
    assert findings == []
    assert (status.name, status.bridge, status.icc, status.containers) == (
        "bridge",
        "docker0",
        False,
        3,
    )
    assert (
        status.expected_accept_rules,
        status.missing_accept_rules,
        status.unexpected_accept_rules,
    ) == (2, 0, 0)


def test_missing_link_rule_names_the_link_and_restores_it():
    findings, (status,) = findings_of(L.delete_rule(D28, LINK_DPORT))
    (missing,) = findings
    assert missing.kind == MISSING_ACCEPT_RULE and missing.network == "bridge"
    assert (missing.containers, missing.protocol, missing.port) == (("client", "web"), "tcp", 80)
    assert missing.rule == LINK_DPORT
    assert missing.restore == "iptables-nft -I DOCKER " + LINK_DPORT.removeprefix("-A DOCKER ")
    assert status.missing_accept_rules == 1


def test_link_rule_printed_differently_is_still_present():
    reordered = (
        "-A DOCKER -i docker0 -o docker0 -s 172.17.0.3 -d 172.17.0.2 -p tcp -m tcp --dport 80 "
        "-j ACCEPT"
    )
    assert findings_of(L.replace_rule(D28, LINK_DPORT, reordered))[0] == []


def test_link_rule_in_a_chain_forward_never_reaches_is_missing():
    text = L.delete_rule(D28, "-A DOCKER-BRIDGE -o docker0 -j DOCKER")
    kinds = [f.kind for f in findings_of(text)[0]]
    assert kinds == [MISSING_ACCEPT_RULE, MISSING_ACCEPT_RULE]


def test_accept_between_unlinked_containers_is_unexpected_with_its_delete_command():
    rule = "-s 172.17.0.4/32 -d 172.17.0.2/32 -j ACCEPT"
    findings, (status,) = findings_of(L.insert_rule(D28, "DOCKER-USER", rule))
    (unexpected,) = findings
    assert unexpected.kind == UNEXPECTED_ACCEPT_RULE
    assert unexpected.containers == ("loner", "web")
    assert unexpected.rule == f"-A DOCKER-USER {rule}"
    assert unexpected.restore == f"iptables-nft -D DOCKER-USER {rule}"
    assert status.unexpected_accept_rules == 1


@pytest.mark.parametrize(
    "rule",
    [
        "-o eth0 -j ACCEPT",  # leaves the bridge
        "-s 10.0.0.0/8 -j ACCEPT",  # no member's address
        "-s 172.17.0.2/32 -d 172.17.0.2/32 -j ACCEPT",  # a container to itself
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",  # never a new connection
        "-d 172.17.0.2/32 -j DROP",  # not an ACCEPT
    ],
)
def test_rules_that_cannot_accept_a_new_flow_between_members_are_not_unexpected(rule):
    assert findings_of(L.insert_rule(D28, "DOCKER-USER", rule))[0] == []


def test_accept_in_an_unreachable_chain_is_not_unexpected():
    text = L.insert_rule(D28, "ORPHAN", "-j ACCEPT").replace(
        ":DOCKER-USER - [0:0]", ":DOCKER-USER - [0:0]\n:ORPHAN - [0:0]"
    )
    assert findings_of(text)[0] == []


def host_chain(jump: str) -> str:
    """D28 with a fail2ban-style per-host chain: DOCKER-USER jumps to HOST-1, which accepts ssh."""
    text = L.insert_rule(D28, "HOST-1", "-p tcp -m tcp --dport 22 -j ACCEPT").replace(
        ":DOCKER-USER - [0:0]", ":DOCKER-USER - [0:0]\n:HOST-1 - [0:0]"
    )
    return L.insert_rule(text, "DOCKER-USER", f"{jump} -j HOST-1")


@pytest.mark.parametrize(
    "jump",
    [
        "-s 198.18.0.5/32",  # a remote host: no container enters HOST-1
        "-m conntrack --ctstate RELATED,ESTABLISHED",  # never a new connection
        "-i eth0",  # from outside the bridge
    ],
)
def test_accept_behind_a_jump_no_member_takes_is_not_unexpected(jump):
    assert findings_of(host_chain(jump))[0] == []


@pytest.mark.parametrize("jump", ["", "-s 172.17.0.4/32", "-s 172.17.0.0/16"])
def test_accept_behind_a_jump_members_take_is_unexpected(jump):
    (unexpected,) = findings_of(host_chain(jump))[0]
    assert unexpected.kind == UNEXPECTED_ACCEPT_RULE
    assert unexpected.rule == "-A HOST-1 -p tcp -m tcp --dport 22 -j ACCEPT"


def test_accept_for_an_address_no_container_has_is_stale():
    rule = (
        "-s 172.17.0.3/32 -d 172.17.0.9/32 -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT"
    )
    (stale,) = findings_of(L.insert_rule(D28, "DOCKER", rule))[0]
    assert stale.kind == STALE_ACCEPT_RULE and "172.17.0.9" in stale.detail
    assert stale.restore == f"iptables-nft -D DOCKER {rule}"


def test_missing_icc_drop_is_drift_unless_a_drop_policy_isolates():
    findings, (status,) = findings_of(L.delete_rule(D28, ICC_DROP))
    (finding,) = findings
    assert finding.kind == ICC_DROP_MISSING and status.isolation == "none"
    assert (finding.rule, finding.restore) == (ICC_DROP, f"iptables-nft {ICC_DROP}")
    assert finding.detail.endswith("and the FORWARD policy is not DROP")
    # Either the explicit DROP or a FORWARD DROP policy isolates the bridge (Docker 1.x's way).
    text = L.delete_rule(D28, ICC_DROP).replace(":FORWARD ACCEPT", ":FORWARD DROP")
    findings, (status,) = findings_of(text)
    assert findings == [] and status.isolation == "forward_policy"


def test_icc_drop_in_the_forward_chain_of_older_dockers_counts():
    text = (L.LAYOUTS / "docker27-icc-false-link.rules").read_text()
    assert findings_of(text)[0] == []
    (finding,) = findings_of(L.delete_rule(text, "-A FORWARD -i docker0 -o docker0 -j DROP"))[0]
    assert finding.rule == "-A FORWARD -i docker0 -o docker0 -j DROP"


def test_icc_enabled_network_expects_no_rules():
    findings, (status,) = findings_of(
        "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -j ACCEPT\nCOMMIT\n", OPEN
    )
    assert findings == [] and status.expected_accept_rules == 0


def test_an_empty_second_backend_is_not_judged():
    # Listed first, an empty legacy table would name the chain of the missing DROP (FORWARD).
    empty = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    rulesets = (
        parse_iptables_save(empty, "ipv4", "legacy"),
        parse_iptables_save(L.delete_rule(D28, ICC_DROP), "ipv4", "nft"),
    )
    findings, _ = rule_findings(LINKED, FirewallState(primary_backend="nft", rulesets=rulesets))
    assert [(f.kind, f.rule) for f in findings] == [(ICC_DROP_MISSING, ICC_DROP)]


def test_link_rules_in_the_other_backend_count_as_present():
    legacy = L.delete_rule(D28, ICC_DROP)  # holds the link rules too
    findings, _ = rule_findings(LINKED, firewall(L.delete_rule(D28, LINK_DPORT), legacy))
    assert MISSING_ACCEPT_RULE not in {f.kind for f in findings}


# ---- duplicate_findings ----------------------------------------------------------------------


def test_duplicate_rule_in_a_docker_chain_names_its_network_and_the_delete():
    text = L.insert_rule(D28, "DOCKER", LINK_DPORT.removeprefix("-A DOCKER "))
    (dup,) = duplicate_findings(firewall(text), {"docker0": "bridge"})
    assert (dup.kind, dup.network, dup.family) == (DUPLICATE_RULE, "bridge", "ipv4")
    assert "appears 2 times in nft filter DOCKER" in dup.detail
    spec = LINK_DPORT.removeprefix("-A DOCKER ")
    assert dup.restore == f"iptables-nft -t filter -D DOCKER {spec}"


def test_duplicates_outside_docker_and_its_bridges_are_not_docker_drift():
    text = L.insert_rule(
        L.insert_rule(D28, "INPUT", "-p tcp -j ACCEPT"), "INPUT", "-p tcp -j ACCEPT"
    )
    assert duplicate_findings(firewall(text), {"docker0": "bridge"}) == []


def test_duplicate_in_ip6tables_legacy_restores_with_its_own_tool():
    six = ruleset(
        "-A FORWARD -i docker0 -o docker0 -j DROP",
        "-A FORWARD -i docker0 -o docker0 -j DROP",
        backend="legacy",
        family="ipv6",
    )
    (dup,) = duplicate_findings(FirewallState(rulesets=(six,)), {"docker0": "bridge"})
    assert dup.family == "ipv6"
    assert dup.restore.startswith("ip6tables-legacy -t filter -D FORWARD ")


# ---- host_findings ---------------------------------------------------------------------------


def test_bridge_nf_call_off_undoes_isolation_only_where_isolation_is_wanted():
    off = HostSettings(bridge_nf_call_iptables=0)
    (finding,) = host_findings(FirewallState(), off, LINKED)
    assert finding.kind == BRIDGE_NF_CALL_DISABLED and "on bridge" in finding.detail
    assert finding.restore == "sysctl -w net.bridge.bridge-nf-call-iptables=1"
    assert host_findings(FirewallState(), off, OPEN) == []
    assert host_findings(FirewallState(), HostSettings(bridge_nf_call_iptables=1), LINKED) == []


def test_rules_in_both_backends_are_reported():
    state = firewall(D28, "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -j ACCEPT\nCOMMIT\n")
    assert [f.kind for f in host_findings(state, None, LINKED)] == [MULTIPLE_BACKENDS]


def test_lines_and_rules_it_could_not_parse_are_reported():
    text = D28.replace(
        "COMMIT", '-A DOCKER-USER -m comment --comment "open -j ACCEPT\nbogus line\nCOMMIT'
    )
    bridge = parse_ebtables_save("*filter\n:FORWARD ACCEPT\nnonsense\n")
    found = host_findings(firewall(text, bridge=bridge), None, LINKED)
    assert [f.kind for f in found] == [UNPARSED_RULE] * 3
    assert {f.rule for f in found} >= {"bogus line", "nonsense"}


def test_firewalls_it_does_not_evaluate_are_reported():
    nft = NftablesInfo(
        foreign_chains=("inet fw filter_FWD hook forward",), docker_tables=("ip docker-bridges",)
    )
    found = host_findings(FirewallState(nftables=nft), None, LINKED)
    assert [f.kind for f in found] == [UNSUPPORTED_FIREWALL, UNSUPPORTED_FIREWALL]
    assert "ip docker-bridges" in found[0].detail and "inet fw filter_FWD" in found[1].detail


# ---- flow_findings ---------------------------------------------------------------------------


def flow(expected, actual, port=80, reason="why"):
    return Flow("bridge", "client", "web", "tcp", port, expected, actual, reason=reason)


@pytest.mark.parametrize(
    "expected,actual,kind,words",
    [
        ("deny", "allow", ISOLATION_BREACH, "allowed but must be denied (why)"),
        ("allow", "deny", BLOCKED_LINK_FLOW, "link flow denied (why)"),
        ("allow", "unknown", UNKNOWN_FLOW, "verdict unknown (why)"),
        ("deny", "unknown", UNKNOWN_FLOW, "verdict unknown (why)"),
    ],
)
def test_each_wrong_flow_gives_its_finding(expected, actual, kind, words):
    (finding,) = flow_findings([flow(expected, actual)])
    assert finding.kind == kind
    assert finding.detail == f"client -> web tcp/80 ipv4: {words}"
    assert (finding.containers, finding.protocol, finding.port) == (("client", "web"), "tcp", 80)


def test_flows_as_expected_give_nothing_and_probes_say_so():
    assert flow_findings([flow("allow", "allow"), flow("deny", "deny")]) == []
    (probe,) = flow_findings([flow("deny", "allow", port=None)])
    assert "tcp probe" in probe.detail and probe.port is None


# ---- iptables_command ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend,family,command",
    [
        ("nft", "ipv4", "iptables-nft"),
        ("legacy", "ipv4", "iptables-legacy"),
        ("nft", "ipv6", "ip6tables-nft"),
        (None, "ipv4", "iptables"),
        (None, "ipv6", "ip6tables"),
    ],
)
def test_iptables_command_names_the_backends_own_binary(backend, family, command):
    assert iptables_command(backend, family) == command
