"""The packet walk against netfilter's semantics (iptables(8) TARGETS, iptables-extensions(8)):
one chain (walk_stage) and the whole bridged path (evaluate_packet)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from exporter.firewall.evaluate import (
    MAX_DEPTH,
    Verdict,
    evaluate_packet,
    rule_matches,
    walk_stage,
)
from exporter.firewall.matches import MATCHERS
from exporter.firewall.parse import parse_ebtables_save
from exporter.firewall.state import NftablesInfo
from tests.unit.core_builders import NO_SETS, ebtables, inputs, packet, reply_of, ruleset

FIRST = packet()  # 172.17.0.3 -> 172.17.0.2 tcp/80 on docker0, NEW


def outcomes(
    *rules: str, policy: str = "ACCEPT", table: str = "filter", chain: str = "FORWARD", pkt=FIRST
):
    found, undecided = walk_stage(
        ruleset(*rules, policy=policy, table=table), table, chain, pkt, NO_SETS
    )
    return [(o.kind, o.reason) for o in found], undecided


def kinds(*rules: str, **kw) -> list[str]:
    return [kind for kind, _ in outcomes(*rules, **kw)[0]]


# ---- one rule --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("-d 172.17.0.2/32 -p tcp -m tcp --dport 80", True),
        ("-d 172.17.0.2/32 -m mark --mark 0x1", None),  # mark: not decidable here
        ("-d 172.17.0.9/32 -m mark --mark 0x1", False),  # a sure mismatch wins over "unknown"
        ("-m mark --mark 0x1 -p udp", False),
        ("", True),
    ],
)
def test_rule_matches_is_a_three_valued_and(spec, expected):
    (rule,) = ruleset(f"-A FORWARD {spec} -j ACCEPT").chain("filter", "FORWARD").rules
    assert rule_matches(rule, FIRST, NO_SETS, MATCHERS) is expected


def test_a_rule_with_a_parse_error_never_decides():
    (rule,) = (
        ruleset('-A FORWARD -m comment --comment "x -j ACCEPT').chain("filter", "FORWARD").rules
    )
    assert rule.error and rule_matches(rule, FIRST, NO_SETS, MATCHERS) is None


# ---- one chain -------------------------------------------------------------------------------


def test_first_matching_terminal_target_decides():
    assert kinds(
        "-A FORWARD -d 172.17.0.9/32 -j DROP", "-A FORWARD -j ACCEPT", "-A FORWARD -j DROP"
    ) == ["ACCEPT"]
    assert kinds("-A FORWARD -p tcp -j REJECT", "-A FORWARD -j ACCEPT") == ["DROP"]


def test_falling_off_a_builtin_chain_applies_its_policy():
    found, _ = outcomes("-A FORWARD -s 10.9.9.9/32 -j ACCEPT", policy="DROP")
    assert found == [("DROP", "nft filter FORWARD policy DROP")]
    assert kinds(policy="ACCEPT") == ["ACCEPT"]


def test_return_in_a_builtin_chain_applies_its_policy():
    assert kinds("-A FORWARD -j RETURN", "-A FORWARD -j ACCEPT", policy="DROP") == ["DROP"]


def test_return_from_a_user_chain_continues_after_the_jump():
    rules = ("-A FORWARD -j USER", "-A FORWARD -j DROP", "-A USER -j RETURN", "-A USER -j ACCEPT")
    found, _ = outcomes(*rules)
    assert found == [("DROP", "nft filter FORWARD #2: -A FORWARD -j DROP")]


def test_falling_off_a_user_chain_continues_after_the_jump():
    assert kinds("-A FORWARD -j USER", "-A FORWARD -j DROP", "-A USER -d 10.9.9.9 -j ACCEPT") == [
        "DROP"
    ]


def test_terminal_target_inside_a_user_chain_ends_the_builtin_chain():
    assert kinds("-A FORWARD -j USER", "-A FORWARD -j DROP", "-A USER -j ACCEPT") == ["ACCEPT"]


def test_return_from_a_goto_chain_returns_from_the_chain_that_did_the_goto():
    # FORWARD -j OUTER; OUTER -g INNER; INNER RETURNs: processing resumes in FORWARD after the
    # jump to OUTER, skipping OUTER's DROP.
    rules = (
        "-A FORWARD -j OUTER",
        "-A FORWARD -j ACCEPT",
        "-A OUTER -g INNER",
        "-A OUTER -j DROP",
        "-A INNER -j RETURN",
    )
    assert kinds(*rules, policy="DROP") == ["ACCEPT"]
    # A goto from the builtin chain itself: RETURN there means the policy.
    assert kinds(
        "-A FORWARD -g INNER", "-A FORWARD -j ACCEPT", "-A INNER -j RETURN", policy="DROP"
    ) == ["DROP"]


def test_undecidable_match_takes_both_branches_and_names_the_rule():
    found, undecided = outcomes("-A FORWARD -m mark --mark 0x1 -j ACCEPT", "-A FORWARD -j DROP")
    assert [k for k, _ in found] == ["ACCEPT", "DROP"]
    assert undecided == ["nft filter FORWARD #1: -A FORWARD -m mark --mark 0x1 -j ACCEPT"]


def test_undecidable_jump_explores_the_chain_and_the_rest():
    rules = ("-A FORWARD -m mark --mark 0x1 -j USER", "-A FORWARD -j DROP", "-A USER -j ACCEPT")
    assert sorted(kinds(*rules)) == ["ACCEPT", "DROP"]


def test_passive_targets_let_the_walk_go_on():
    assert kinds(
        "-A FORWARD -j LOG --log-prefix x", "-A FORWARD -j MARK --set-mark 1", "-A FORWARD -j DROP"
    ) == ["DROP"]


@pytest.mark.parametrize("target", ["NFQUEUE --queue-num 1", "TEE --gateway 10.0.0.1", "QUEUE"])
def test_target_it_cannot_follow_is_unknown(target):
    found, _ = outcomes(f"-A FORWARD -j {target}", "-A FORWARD -j ACCEPT")
    assert [k for k, _ in found] == ["UNKNOWN"]
    assert found[0][1].startswith(f"target {target.split()[0]} not evaluated")


def test_jump_to_a_builtin_chain_is_unknown():
    assert kinds("-A FORWARD -j INPUT") == ["UNKNOWN"]


def test_rule_the_parser_could_not_read_is_undecidable_not_skipped():
    found, _ = outcomes('-A FORWARD -m comment --comment "open -j ACCEPT', "-A FORWARD -j DROP")
    assert [k for k, _ in found] == ["UNKNOWN", "DROP"]
    assert found[0][1].startswith("rule not understood")


def test_nesting_deeper_than_max_depth_is_unknown():
    depth = MAX_DEPTH + 2
    rules = ["-A FORWARD -j C0"] + [f"-A C{i} -j C{i + 1}" for i in range(depth)]
    rules.append(f"-A C{depth} -j ACCEPT")
    found, _ = outcomes(*rules)
    assert [k for k, _ in found] == ["UNKNOWN"] and "deeper than" in found[0][1]
    shallow = ["-A FORWARD -j C0"] + [f"-A C{i} -j C{i + 1}" for i in range(MAX_DEPTH - 2)]
    assert kinds(*shallow, f"-A C{MAX_DEPTH - 2} -j ACCEPT", policy="DROP") == ["ACCEPT"]


def test_absent_chain_accepts():
    found, _ = walk_stage(ruleset(), "mangle", "FORWARD", FIRST, NO_SETS)
    assert [o.kind for o in found] == ["ACCEPT"]


def test_unknown_module_without_options_is_undecidable():
    # `-m socket` has no options; it matches when a local socket owns the packet, which no
    # container-to-container packet has. The evaluator must not treat it as "always true".
    assert sorted(kinds("-A FORWARD -m socket -j DROP")) == ["ACCEPT", "DROP"]


def test_physdev_is_bridged_does_not_match_in_prerouting():
    # xt_physdev: "This only makes sense in the FORWARD and POSTROUTING chains": in PREROUTING the
    # bridge has not chosen an output port yet, so --physdev-is-bridged (and -is-out) is false.
    raw = ruleset(
        "-A PREROUTING -m physdev --physdev-is-bridged -j DROP", table="raw", backend="legacy"
    )
    assert evaluate_packet(FIRST, inputs(ruleset(), raw)).verdict is Verdict.ALLOW


# ---- the whole path --------------------------------------------------------------------------

DOCKER_DROP = "-A FORWARD -i docker0 -o docker0 -j DROP"
ACCEPT_LINK = "-A FORWARD -s 172.17.0.3/32 -d 172.17.0.2/32 -j ACCEPT"


def verdict(*rulesets, pkt=FIRST, **kw):
    return evaluate_packet(pkt, inputs(*rulesets, **kw))


def test_allow_reason_names_the_filter_accept_and_deny_reason_the_drop():
    allowed = verdict(ruleset(ACCEPT_LINK, DOCKER_DROP))
    assert allowed.verdict is Verdict.ALLOW
    assert allowed.reason == f"nft filter FORWARD #1: {ACCEPT_LINK}"
    denied = verdict(ruleset(DOCKER_DROP, ACCEPT_LINK))
    assert (denied.verdict, denied.reason) == (
        Verdict.DENY,
        f"nft filter FORWARD #1: {DOCKER_DROP}",
    )


def test_no_rules_at_all_allow():
    assert verdict(ruleset()).verdict is Verdict.ALLOW


def test_accept_in_one_backend_ends_only_that_backends_chain():
    nft = ruleset("-A FORWARD -j ACCEPT")
    legacy = ruleset("-A FORWARD -d 172.17.0.2/32 -j DROP", backend="legacy")
    denied = verdict(nft, legacy)
    assert denied.verdict is Verdict.DENY and denied.reason.startswith("legacy filter FORWARD #1")
    assert verdict(nft, ruleset(backend="legacy")).verdict is Verdict.ALLOW
    assert (
        verdict(ruleset(DOCKER_DROP), ruleset("-A FORWARD -j ACCEPT", backend="legacy")).verdict
        is Verdict.DENY
    )


def test_accept_in_raw_or_mangle_does_not_skip_filter():
    raw = ruleset("-A PREROUTING -j ACCEPT", table="raw", backend="legacy")
    assert verdict(ruleset(DOCKER_DROP), raw).verdict is Verdict.DENY


def test_drop_in_raw_prerouting_denies():
    raw = ruleset("-A PREROUTING -d 172.17.0.2/32 -j DROP", table="raw", backend="legacy")
    assert verdict(ruleset(ACCEPT_LINK), raw).verdict is Verdict.DENY


@pytest.mark.parametrize(
    "call,expected", [(1, Verdict.DENY), (0, Verdict.ALLOW), (None, Verdict.UNKNOWN)]
)
def test_bridge_nf_call_decides_whether_iptables_sees_bridged_packets(call, expected):
    decision = verdict(ruleset(DOCKER_DROP), call=call)
    assert decision.verdict is expected
    if call is None:
        assert "bridge-nf-call-iptables unknown" in decision.reason


def test_unknown_sysctl_still_denies_when_ebtables_drops():
    bridge = ebtables("-A FORWARD -p IPv4 --ip-dst 172.17.0.2 -j DROP")
    assert verdict(ruleset(), bridge=bridge, call=None).verdict is Verdict.DENY


def test_nat_is_walked_for_the_first_packet_only():
    nat = ruleset(
        "-A PREROUTING -d 172.17.0.2/32 -p tcp -j DNAT --to-destination 172.17.0.4:80",
        table="nat",
        backend="legacy",
    )
    first = verdict(ruleset(), nat)
    assert first.verdict is Verdict.UNKNOWN and "DNAT" in first.reason  # the packet is rewritten
    reply = reply_of(packet("172.17.0.2", "172.17.0.3"))
    assert verdict(ruleset(), nat, pkt=reply).verdict is Verdict.ALLOW


def test_snat_in_postrouting_does_not_stop_the_packet():
    nat = ruleset("-A POSTROUTING -s 172.17.0.0/16 -j MASQUERADE", table="nat", backend="legacy")
    assert verdict(ruleset(), nat).verdict is Verdict.ALLOW


def test_ebtables_drop_denies_and_arp_skips_iptables():
    bridge = ebtables("-A FORWARD -p ARP --arp-ip-dst 172.17.0.2 -j DROP")
    arp = packet(protocol="arp", dport=None)
    assert verdict(ruleset(), bridge=bridge, pkt=arp).verdict is Verdict.DENY
    assert verdict(ruleset(DOCKER_DROP), pkt=arp).verdict is Verdict.ALLOW
    ip = verdict(ruleset(), bridge=bridge)
    assert ip.verdict is Verdict.ALLOW


def test_broute_drop_routes_the_frame_instead_of_dropping_it():
    # ebtables(8): in the broute table DROP means "route this frame", ACCEPT "bridge it". The
    # routed path (FORWARD -i veth...) is not evaluated, so the verdict cannot be a sure deny.
    broute = parse_ebtables_save("*broute\n:BROUTING ACCEPT\n-A BROUTING -p IPv4 -j DROP\n")
    assert verdict(ruleset(), bridge=broute).verdict is Verdict.UNKNOWN


def test_ebtables_forward_policy_drop_denies():
    decision = verdict(ruleset(), bridge=ebtables(policy="DROP"))
    assert (decision.verdict, decision.reason) == (
        Verdict.DENY,
        "ebtables filter FORWARD policy DROP",
    )


def test_unreadable_ebtables_makes_an_allow_unknown_but_not_a_sure_drop():
    assert verdict(ruleset(), bridge_unreadable=True).verdict is Verdict.UNKNOWN
    assert verdict(ruleset(DOCKER_DROP), bridge_unreadable=True).verdict is Verdict.DENY


def test_drop_after_an_undecidable_rule_that_may_have_accepted_is_unknown():
    decision = verdict(ruleset("-A FORWARD -m mark --mark 0x1 -j ACCEPT", DOCKER_DROP))
    assert decision.verdict is Verdict.UNKNOWN
    undecided = "nft filter FORWARD #1: -A FORWARD -m mark --mark 0x1 -j ACCEPT"
    assert decision.reason == f"cannot decide {undecided}"


def test_every_branch_dropping_is_a_sure_deny():
    decision = verdict(ruleset("-A FORWARD -m mark --mark 0x1 -j DROP", DOCKER_DROP))
    assert decision.verdict is Verdict.DENY


@pytest.mark.parametrize(
    "kw,words",
    [
        ({"unreadable": frozenset({"ipv4"})}, "iptables rules could not be read"),
        ({"nftables": NftablesInfo(docker_tables=("ip docker-bridges",))}, "ip docker-bridges"),
        ({"nftables": NftablesInfo(foreign_chains=("inet fw f hook forward",))}, "inet fw f"),
    ],
)
def test_what_it_cannot_read_makes_every_verdict_unknown(kw, words):
    decision = verdict(ruleset(DOCKER_DROP), **kw)
    assert decision.verdict is Verdict.UNKNOWN and words in decision.reason


def test_unreadable_nftables_is_unknown():
    path = inputs(ruleset(DOCKER_DROP))
    path = replace(path, firewall=replace(path.firewall, nftables=None))
    assert evaluate_packet(FIRST, path).verdict is Verdict.UNKNOWN


def test_ipv6_packet_meets_ip6tables_and_its_own_sysctl():
    v6 = packet("fd00::3", "fd00::2")
    six = ruleset("-A FORWARD -i docker0 -o docker0 -j DROP", family="ipv6")
    assert verdict(ruleset(), six, pkt=v6).verdict is Verdict.DENY
    assert verdict(six, pkt=FIRST).verdict is Verdict.ALLOW  # IPv4 does not meet ip6tables
