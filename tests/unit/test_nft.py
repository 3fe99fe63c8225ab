"""Native nftables in the packet walk: real `nft -j list ruleset` captures (tests/fixtures/nft,
see capture.sh there) beside Docker-like iptables rules, and the three-valued edges."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.comparison import UNSUPPORTED_FIREWALL, host_findings
from exporter.firewall.evaluate import Verdict, evaluate_packet
from exporter.firewall.parse import parse_nft_ruleset
from exporter.firewall.state import FirewallState, NftablesInfo
from tests.unit.core_builders import ebtables, inputs, packet, reply_of, ruleset

FIXTURES = Path(__file__).parent.parent / "fixtures"
DOCKER_ACCEPT = "-A FORWARD -i docker0 -o docker0 -j ACCEPT"
DOCKER_DROP = "-A FORWARD -i docker0 -o docker0 -j DROP"


def nft(name: str) -> NftablesInfo:
    return parse_nft_ruleset((FIXTURES / "nft" / f"{name}.json").read_text())


def nft_doc(*objects: dict) -> NftablesInfo:
    """A hand-made document in the shapes nft 1.0.6 prints (see the captured fixtures)."""
    return parse_nft_ruleset(json.dumps({"nftables": list(objects)}))


def base_chain(family: str, table: str, name: str, hook: str, prio: int, **extra) -> dict:
    return {"chain": {"family": family, "table": table, "name": name, "handle": 1,
                      "type": "filter", "hook": hook, "prio": prio, "policy": "accept", **extra}}  # fmt: skip


def rule(family: str, table: str, chain: str, *exprs: dict, handle: int = 2) -> dict:
    body = {"family": family, "table": table, "chain": chain, "handle": handle}
    return {"rule": {**body, "expr": list(exprs)}}


def match(left: dict, right, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


SADDR = {"payload": {"protocol": "ip", "field": "saddr"}}


def verdict(info: NftablesInfo, *iptables: str, pkt=None, call: int = 1, bridge=None):
    path = inputs(ruleset(*iptables), nftables=info, call=call, bridge=bridge)
    return evaluate_packet(pkt or packet("172.30.0.3", "172.30.0.2"), path)


# ---- what is kept, what is read elsewhere ----------------------------------------------------


def test_tables_of_iptables_nft_and_ebtables_nft_stay_out_of_the_native_model():
    info = parse_nft_ruleset((FIXTURES / "tools" / "nft-ruleset.json").read_text())
    families_tables = {(family, table) for family, table, _ in info.native.chains}
    assert ("ip", "filter") not in families_tables and ("bridge", "filter") not in families_tables
    assert ("ip", "docker-bridges") in families_tables  # Docker 29's tables are walked too
    assert ("inet", "filter") in families_tables  # an iptables name in another family is native
    assert ("netdev", "ingressfilter") in families_tables


def test_sets_and_maps_are_modelled_with_their_elements():
    info = nft("drop-by-set")
    sets = {name: found for (_, _, name), found in info.native.sets.items()}
    assert sets["denied_ports"].elements == (8080, 9090) and not sets["denied_ports"].is_map
    assert sets["by_iface"].is_map and sets["by_iface"].elements[0][0] == "docker0"


# ---- the captured rulesets -------------------------------------------------------------------


def test_debian_stock_nftables_conf_changes_no_verdict():
    info = nft("debian-stock")
    assert info.foreign_chains == ("inet filter forward hook forward",)
    assert verdict(info, DOCKER_ACCEPT).verdict is Verdict.ALLOW
    assert verdict(info, DOCKER_DROP).verdict is Verdict.DENY
    assert "docker0" in verdict(info, DOCKER_ACCEPT).reason  # the iptables rule, not nft's policy


def test_firewalld_like_zone_chains_decide_per_bridge_and_state():
    info = nft("firewalld-like")
    first = packet("172.30.0.3", "172.30.0.2")
    assert verdict(info, DOCKER_ACCEPT, pkt=first).verdict is Verdict.ALLOW
    assert verdict(info, DOCKER_ACCEPT, pkt=reply_of(first)).verdict is Verdict.ALLOW
    other_bridge = packet("172.30.0.3", "172.30.0.2", bridge="br-1234")
    denied = verdict(info, pkt=other_bridge)
    assert denied.verdict is Verdict.DENY and "filter_FWD_public handle 24" in denied.reason
    blocked = verdict(info, DOCKER_ACCEPT, pkt=packet("192.0.2.7", "172.30.0.2"))
    assert blocked.verdict is Verdict.DENY and "filter_FORWARD handle 15" in blocked.reason
    rich_rule = verdict(info, DOCKER_ACCEPT, pkt=packet("172.30.0.4", "172.30.0.2", dport=8080))
    assert (
        rich_rule.verdict is Verdict.DENY and "filter_FWD_docker_deny handle 20" in rich_rule.reason
    )


def test_forward_drop_by_address_port_and_range():
    info = nft("drop-by-address")
    cases = [
        (packet("172.30.0.3", "172.30.0.2", dport=8080), Verdict.DENY),
        (packet("172.30.0.3", "172.30.0.2", dport=80), Verdict.ALLOW),
        (packet("172.30.0.2", "172.30.0.4", "udp", 5005), Verdict.DENY),
        (packet("172.30.0.2", "172.30.0.4", "udp", 5011), Verdict.ALLOW),
        (packet("172.30.0.2", "172.30.0.4", "tcp", 5005), Verdict.ALLOW),
        (packet("172.30.0.2", "10.0.0.4"), Verdict.DENY),
        (packet("fd00::3", "fd00::2"), Verdict.ALLOW),  # an ip-family chain never sees IPv6
    ]
    for pkt, expected in cases:
        assert verdict(info, DOCKER_ACCEPT, pkt=pkt).verdict is expected, pkt


def test_forward_drop_by_named_sets_and_verdict_map():
    info = nft("drop-by-set")
    cases = [
        (packet("172.30.0.3", "172.30.0.2", dport=8080), Verdict.DENY),
        (packet("172.30.0.9", "172.30.0.2", "udp", 9090), Verdict.DENY),  # th dport, /31 element
        (packet("172.30.0.2", "172.30.0.3", dport=8080), Verdict.ALLOW),
        (packet("172.30.0.2", "172.30.0.4", dport=80), Verdict.DENY),
        (packet("172.30.0.2", "172.30.0.4", dport=8080), Verdict.ALLOW),
        (packet("172.30.0.2", "172.30.0.4", "udp", 53), Verdict.ALLOW),  # tcp dport: not udp
        (
            packet("172.30.0.3", "172.30.0.2", dport=8080, bridge="br-x"),
            Verdict.ALLOW,
        ),  # no vmap key
    ]
    for pkt, expected in cases:
        path = inputs(ruleset("-A FORWARD -j ACCEPT"), nftables=info)
        assert evaluate_packet(pkt, path).verdict is expected, pkt


def test_bridge_family_drop_applies_with_or_without_bridge_nf_call():
    info = nft("bridge-drop")
    for call in (0, 1):
        udp = verdict(info, DOCKER_ACCEPT, pkt=packet("172.30.0.2", "172.30.0.4", "udp", 7000),
                      call=call)  # fmt: skip
        assert udp.verdict is Verdict.DENY and "bridge guard forward handle 3" in udp.reason
    reply = reply_of(packet("172.30.0.2", "172.30.0.4", dport=8080))
    assert verdict(info, DOCKER_ACCEPT, pkt=reply).verdict is Verdict.DENY
    arp = packet("172.30.0.2", "172.30.0.4", "arp", None)
    assert verdict(info, DOCKER_ACCEPT, pkt=arp).verdict is Verdict.ALLOW


def test_an_earlier_accept_ends_only_its_own_chain():
    info = nft("early-accept")
    assert verdict(info, DOCKER_DROP).verdict is Verdict.DENY
    allowed = verdict(info, DOCKER_ACCEPT)
    assert allowed.verdict is Verdict.ALLOW  # prerouting: the mark set just before is known


def test_a_drop_in_an_ebtables_chain_still_drops_after_a_native_bridge_accept():
    info = nft_doc(
        base_chain("bridge", "t", "fwd", "forward", -300),
        rule("bridge", "t", "fwd", {"accept": None}),
    )
    path = verdict(info, DOCKER_ACCEPT, bridge=ebtables("-A FORWARD -p IPv4 -j DROP"))
    assert path.verdict is Verdict.DENY


# ---- what cannot be known --------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr,words",
    [
        ({"limit": {"rate": 10, "per": "second"}}, "handle 2"),
        (match({"fib": {"flags": ["daddr"], "result": "type"}}, "unicast"), "handle 2"),
        (match({"meta": {"key": "mark"}}, 1), "handle 2"),  # no mark set on this path
        (match({"ct": {"key": "state"}}, "new"), "handle 2"),  # raw - 10: before conntrack
    ],
)
def test_undecidable_match_before_a_drop_makes_the_flow_unknown(expr, words):
    prio = -310 if "ct" in str(expr) else 0
    hook = "prerouting" if "ct" in str(expr) else "forward"
    info = nft_doc(
        base_chain("ip", "t", "c", hook, prio), rule("ip", "t", "c", expr, {"drop": None})
    )
    decision = verdict(info, DOCKER_ACCEPT)
    assert decision.verdict is Verdict.UNKNOWN and words in decision.reason


@pytest.mark.parametrize("statement", ["dnat", "masquerade", "notrack", "xt", "queue"])
def test_rewriting_or_opaque_statements_make_touched_flows_unknown(statement):
    info = nft_doc(
        base_chain("ip", "t", "c", "forward", 0),
        rule("ip", "t", "c", match(SADDR, "172.30.0.3"), {statement: {}}),
    )
    assert verdict(info, DOCKER_ACCEPT).verdict is Verdict.UNKNOWN
    untouched = packet("172.30.0.4", "172.30.0.2")
    assert verdict(info, DOCKER_ACCEPT, pkt=untouched).verdict is Verdict.ALLOW


def test_a_chain_on_the_bridge_ports_is_unknown_unless_bound_elsewhere_or_passing_everything():
    drop = {"drop": None}
    on_veth = nft_doc(
        base_chain("netdev", "n", "in", "ingress", 0, dev="vethab12"),
        rule("netdev", "n", "in", drop),
    )
    decision = verdict(on_veth, DOCKER_ACCEPT)
    assert decision.verdict is Verdict.UNKNOWN and "netdev n in hook ingress" in decision.reason
    on_uplink = nft_doc(
        base_chain("netdev", "n", "in", "ingress", 0, dev="eth0"), rule("netdev", "n", "in", drop)
    )
    assert verdict(on_uplink, DOCKER_ACCEPT).verdict is Verdict.ALLOW
    empty = nft_doc(base_chain("netdev", "n", "in", "ingress", 0, dev="vethab12"))
    assert verdict(empty, DOCKER_ACCEPT).verdict is Verdict.ALLOW


def test_a_mark_set_on_the_path_is_known_to_later_chains_unless_iptables_may_set_it():
    info = nft_doc(
        base_chain("ip", "t", "pre", "prerouting", -150),
        base_chain("ip", "t", "fwd", "forward", 10),
        rule("ip", "t", "pre", {"mangle": {"key": {"meta": {"key": "mark"}}, "value": 7}}),
        rule("ip", "t", "fwd", match({"meta": {"key": "mark"}}, 7), {"drop": None}, handle=3),
    )
    assert verdict(info, DOCKER_ACCEPT).verdict is Verdict.DENY
    marking = ["-A FORWARD -j MARK --set-xmark 0x1/0xffffffff", DOCKER_ACCEPT]
    assert verdict(info, *marking).verdict is Verdict.UNKNOWN


def test_a_jump_taken_on_one_branch_only_forgets_the_mark_it_set():
    info = nft_doc(
        base_chain("ip", "t", "fwd", "forward", 10),
        {"chain": {"family": "ip", "table": "t", "name": "marker", "handle": 9}},
        rule("ip", "t", "marker", {"mangle": {"key": {"meta": {"key": "mark"}}, "value": 7}}),
        rule("ip", "t", "fwd", {"limit": {"rate": 1}}, {"jump": {"target": "marker"}}, handle=3),
        rule("ip", "t", "fwd", match({"meta": {"key": "mark"}}, 7), {"drop": None}, handle=4),
    )
    assert verdict(info, DOCKER_ACCEPT).verdict is Verdict.UNKNOWN


def test_an_nft_model_missing_a_listed_chain_is_unknown():
    info = NftablesInfo(foreign_chains=("inet fw f hook forward",))
    assert verdict(info, DOCKER_ACCEPT).verdict is Verdict.UNKNOWN


def test_host_findings_name_only_what_is_not_evaluated():
    walked = host_findings(FirewallState(nftables=nft("firewalld-like")), None, [])
    assert [f for f in walked if f.kind == UNSUPPORTED_FIREWALL] == []
    on_veth = nft_doc(
        base_chain("netdev", "n", "in", "ingress", 0, dev="vethab12"),
        rule("netdev", "n", "in", {"drop": None}),
    )
    found = host_findings(FirewallState(nftables=on_veth), None, [])
    messages = [f.detail for f in found if f.kind == UNSUPPORTED_FIREWALL]
    assert len(messages) == 1 and "netdev n in hook ingress" in messages[0]


def test_devices_a_hook_lacks_are_empty_and_conntrack_is_known_after_it_ran():
    info = nft("hooks-and-conntrack")
    cases = [
        (packet("172.30.0.2", "172.30.0.3", dport=8080), "inet edges prerouting"),
        (reply_of(packet("172.30.0.4", "172.30.0.3", dport=8080)), "bridge late forward"),
        (packet("172.30.0.2", "172.30.0.4", "udp", 9090), "inet edges postrouting"),
    ]
    for pkt, where in cases:
        decision = verdict(info, "-A FORWARD -j ACCEPT", pkt=pkt)
        assert decision.verdict is Verdict.DENY and where in decision.reason, pkt
    allowed = packet("172.30.0.3", "172.30.0.2", "udp", 9090)
    assert verdict(info, "-A FORWARD -j ACCEPT", pkt=allowed).verdict is Verdict.ALLOW


@pytest.mark.parametrize(
    "item,words",
    [
        ({"rule": {"family": "ip", "table": "t", "chain": "c"}}, "rule has no expr"),
        ({"rule": {"family": "ip", "table": "t", "chain": "c", "expr": {}}}, "expr is not a list"),
        ({"set": {"family": "ip", "table": "t", "name": "s", "elem": 3}}, "elem is not a list"),
        ({"chain": {"family": "ip", "table": "t", "name": "c", "policy": 1}}, "policy is not"),
    ],
)
def test_objects_nft_never_prints_make_the_ruleset_unreadable(item, words):
    with pytest.raises(ValueError, match=words):
        nft_doc(item)


def test_a_rule_with_an_expression_nft_never_prints_is_unknown_where_reached():
    info = nft_doc(
        base_chain("ip", "t", "c", "forward", 0),
        rule("ip", "t", "c", {"accept": None, "drop": None}),
    )
    decision = verdict(info, DOCKER_ACCEPT)
    assert decision.verdict is Verdict.UNKNOWN and "not understood" in decision.reason


def test_arp_frames_matter_once_a_native_bridge_chain_may_stop_them():
    assert not inputs(nftables=nft("debian-stock")).decides_arp()
    bridge = inputs(nftables=nft("bridge-drop"))
    assert bridge.decides_arp()
    arp = packet("172.30.0.2", "172.30.0.4", "arp", None)
    dropping = nft_doc(
        base_chain("bridge", "t", "fwd", "forward", 0),
        rule("bridge", "t", "fwd", match({"payload": {"protocol": "ether", "field": "type"}},
                                         "arp"), {"drop": None}),
    )  # fmt: skip
    assert verdict(dropping, DOCKER_ACCEPT, pkt=arp).verdict is Verdict.DENY
