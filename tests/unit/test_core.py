"""The drift engine on every Docker layout: clean dumps give no drift and the right verdicts; each
kind of drift, applied to the dump as an operator or a tool would, gives its finding."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from exporter.check import CheckInputs, build_report, check_dumps_against_nft
from exporter.config import CheckConfig
from exporter.firewall.parse import parse_ebtables_save, parse_iptables_save
from exporter.firewall.rules import IPSet
from exporter.firewall.state import NftablesInfo
from exporter.report import Report, SourceStatus
from exporter.sources import SOURCE_NAMES, IptablesRead
from tests.unit import layouts as L

EMPTY_EBTABLES = "*filter\n:INPUT ACCEPT\n:FORWARD ACCEPT\n:OUTPUT ACCEPT\n"
DOCKER28_SETS = {
    "docker-ext-bridges-v4": IPSet(
        "docker-ext-bridges-v4", "hash:net", "inet", ("172.17.0.0/16", "192.0.2.0/24")
    )
}


def decide(
    state,
    ipv4: str,
    *,
    legacy: str | None = None,
    settings=L.SETTINGS,
    ebtables: str | None = EMPTY_EBTABLES,
    ipsets=None,
    nftables: NftablesInfo | None = None,
    config: CheckConfig | None = None,
) -> Report:
    rulesets = [parse_iptables_save(ipv4, "ipv4", "nft")]
    if legacy is not None:
        rulesets.append(parse_iptables_save(legacy, "ipv4", "legacy"))
    bridge = parse_ebtables_save(ebtables) if ebtables is not None else None
    # A source given None here was not read at all: no status for it.
    read = {"docker": state, "settings": settings, "ebtables": bridge}
    inputs = CheckInputs(
        statuses=tuple(
            SourceStatus(n, True, 0.0) for n in SOURCE_NAMES if read.get(n, n) is not None
        ),
        docker=state,
        settings=settings,
        iptables=IptablesRead("nft", tuple(rulesets)),
        ip6tables=IptablesRead("nft", ()),
        ebtables=bridge,
        ipset=DOCKER28_SETS if ipsets is None else ipsets,
        nftables=nftables or NftablesInfo(),
    )
    return build_report(inputs, config or CheckConfig(), time.time(), time.monotonic())


def verdicts(report: Report) -> dict[tuple[str, str, str, int | None], str]:
    """(network, source, target, port) -> actual, over listed flows (run with all_flows)."""
    return {(f.network, f.source, f.target, f.port): f.actual for f in report.flows}


def kinds(report: Report) -> set[str]:
    return {f.kind for f in report.findings}


ALL = CheckConfig(all_flows=True)


# ---- clean layouts ---------------------------------------------------------------------------


@pytest.mark.parametrize("layout", L.all_layouts(), ids=lambda layout: layout.fixture)
def test_clean_layout_has_no_drift_and_every_flow_as_expected(layout):
    report = decide(layout.state, layout.text(), config=ALL)
    assert report.evaluated
    assert not report.drift, [f.detail for f in report.findings]
    assert report.flows, "every layout has at least one pair of containers"
    wrong = [f for f in report.flows if f.actual != f.expected]
    assert not wrong, wrong


@pytest.mark.parametrize("fixture", L.LINK_LAYOUTS)
def test_link_layouts_allow_only_the_link(fixture):
    report = decide(L.default_bridge_state(False), (L.LAYOUTS / fixture).read_text(), config=ALL)
    got = verdicts(report)
    assert got[("bridge", "client", "web", 80)] == "allow"
    assert got[("bridge", "loner", "web", 80)] == "deny"
    assert got[("bridge", "web", "client", None)] == "deny"
    assert got[("bridge", "client", "loner", None)] == "deny"
    link = next(f for f in report.flows if f.link)
    assert (link.source, link.target, link.alias, link.protocol) == ("client", "web", "web", "tcp")
    network = report.networks[0]
    assert (network.expected_accept_rules, network.missing_accept_rules) == (2, 0)


def test_default_listing_holds_link_flows_and_counts_the_rest():
    report = decide(L.default_bridge_state(False), (L.LAYOUTS / L.LINK_LAYOUTS[2]).read_text())
    assert [(f.source, f.target) for f in report.flows] == [("client", "web")]
    counted = {(c.expected, c.actual): c.count for c in report.flow_counts}
    # 3 containers: 6 ordered pairs, each with a TCP and a UDP probe, plus web's port 80 twice.
    assert counted == {("allow", "allow"): 1, ("deny", "deny"): 13}


@pytest.mark.parametrize("fixture", L.NFTABLES_LAYOUTS)
def test_docker_nftables_backend_is_unknown_never_clean(fixture):
    report = decide(
        L.default_bridge_state(False),
        "",
        nftables=NftablesInfo(docker_tables=("ip docker-bridges",)),
        config=ALL,
    )
    assert report.flows and all(f.actual == "unknown" for f in report.flows)
    assert "unsupported_firewall" in kinds(report)


def test_ipset_layout_without_set_members_still_denies_where_every_branch_drops():
    layout = L.Layout("docker28.0.0-usernet-icc-false.rules", L.usernet_state("bridge1", False))
    report = decide(layout.state, layout.text(), ipsets={}, config=ALL)
    assert verdicts(report)[("net1", "c2", "c1", 80)] == "deny"


# ---- drift -----------------------------------------------------------------------------------

D28 = (L.LAYOUTS / "docker28-icc-false-link.rules").read_text()
D27 = (L.LAYOUTS / "docker27-icc-false-link.rules").read_text()
D112 = (L.LAYOUTS / "docker1.12-icc-false-link.rules").read_text()
LINK_DPORT = "-A DOCKER -s 172.17.0.3/32 -d 172.17.0.2/32 -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT"
STATE = L.default_bridge_state(False)


@pytest.mark.parametrize("text", [D112, D27, D28], ids=["1.12", "27", "28"])
def test_deleted_link_rule_is_missing_and_blocks_the_link(text):
    report = decide(STATE, L.delete_rule(text, LINK_DPORT))
    assert report.drift
    missing = [f for f in report.findings if f.kind == "missing_accept_rule"]
    assert len(missing) == 1
    assert missing[0].containers == ("client", "web") and missing[0].port == 80
    assert missing[0].restore == "iptables-nft -I DOCKER " + LINK_DPORT.removeprefix("-A DOCKER ")
    assert verdicts(report)[("bridge", "client", "web", 80)] == "deny"
    assert "blocked_link_flow" in kinds(report)


@pytest.mark.parametrize(
    "text,chain", [(D27, "DOCKER-USER"), (D28, "DOCKER-USER"), (D112, "FORWARD")]
)
def test_blanket_accept_breaches_isolation(text, chain):
    report = decide(STATE, L.insert_rule(text, chain, "-j ACCEPT"), config=ALL)
    assert {"isolation_breach", "unexpected_accept_rule"} <= kinds(report)
    assert verdicts(report)[("bridge", "loner", "web", 80)] == "allow"
    breaches = [c.count for c in report.flow_counts if (c.expected, c.actual) == ("deny", "allow")]
    assert breaches == [13]  # loner -> web:80 and 12 probes (6 pairs, TCP and UDP)


def test_accept_between_two_unlinked_containers():
    rule = "-s 172.17.0.4/32 -d 172.17.0.2/32 -i docker0 -o docker0 -j ACCEPT"
    report = decide(STATE, L.insert_rule(D28, "DOCKER", rule), config=ALL)
    got = verdicts(report)
    assert got[("bridge", "loner", "web", 80)] == "allow"
    assert got[("bridge", "web", "loner", None)] == "deny"  # one way only
    unexpected = [f for f in report.findings if f.kind == "unexpected_accept_rule"]
    assert [f.containers for f in unexpected] == [("loner", "web")]
    assert unexpected[0].restore == f"iptables-nft -D DOCKER {rule}"


def test_icc_drop_replaced_by_accept():
    text = L.replace_rule(
        D28,
        "-A DOCKER-FORWARD -i docker0 -o docker0 -j DROP",
        "-A DOCKER-FORWARD -i docker0 -o docker0 -j ACCEPT",
    )
    report = decide(STATE, text)
    assert {"icc_drop_missing", "unexpected_accept_rule", "isolation_breach"} <= kinds(report)


@pytest.mark.parametrize(
    "layout", ["docker1.12-icc-false-link.rules", "docker27-icc-false-link.rules"]
)
def test_the_documented_forward_drop_policy_layout_is_clean(layout):
    # Docker 1.x's documentation: with --icc=false the daemon sets the FORWARD policy to DROP and
    # adds only the link ACCEPT rules. That host is isolated as declared: no drift.
    text = L.delete_rule(
        (L.LAYOUTS / layout).read_text(), "-A FORWARD -i docker0 -o docker0 -j DROP"
    ).replace(":FORWARD ACCEPT", ":FORWARD DROP")
    report = decide(STATE, text, config=ALL)
    assert kinds(report) == set() and not report.drift
    assert report.forward_policy == "DROP"
    assert [n.isolation for n in report.networks] == ["forward_policy"]
    assert verdicts(report)[("bridge", "loner", "web", 80)] == "deny"
    assert verdicts(report)[("bridge", "client", "web", 80)] == "allow"


def test_the_explicit_drop_is_what_isolates_dockers_own_layout():
    report = decide(STATE, D28, config=ALL)
    assert [n.isolation for n in report.networks] == ["drop_rule"]


def test_bridge_nf_call_iptables_off_lets_everything_through():
    report = decide(STATE, D28, settings=replace(L.SETTINGS, bridge_nf_call_iptables=0), config=ALL)
    assert {"bridge_nf_call_disabled", "isolation_breach"} <= kinds(report)
    assert set(verdicts(report).values()) == {"allow"}


def test_unknown_sysctl_means_unknown_verdicts_not_clean():
    report = decide(
        STATE, D28, settings=replace(L.SETTINGS, bridge_nf_call_iptables=None), config=ALL
    )
    # iptables may or may not see bridged packets: neither the link's allow nor the DROP is sure.
    assert set(verdicts(report).values()) == {"unknown"}


def test_a_firewall_read_outside_dockerds_namespace_is_no_verdict():
    # An exporter container without --network host sees its own empty firewall: every denied
    # flow would pass there. Docker's bridge missing from its interfaces says so.
    empty = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    outside = replace(L.SETTINGS, interfaces=frozenset({"lo", "eth0"}))
    report = decide(STATE, empty, settings=outside, config=ALL)
    assert not report.up and not report.evaluated
    assert not report.flows and not report.findings
    settings = next(s for s in report.sources if s.name == "settings")
    assert not settings.up and "--network host" in (settings.error or "")


def test_the_namespace_holding_a_docker_bridge_is_dockerds():
    inside = replace(L.SETTINGS, interfaces=frozenset({"lo", "eth0", "docker0"}))
    report = decide(STATE, D28, settings=inside, config=ALL)
    assert report.up and report.evaluated
    assert report.flows


def test_stale_rule_for_a_container_that_is_gone():
    rule = (
        "-s 172.17.0.3/32 -d 172.17.0.9/32 -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT"
    )
    report = decide(STATE, L.insert_rule(D28, "DOCKER", rule))
    stale = [f for f in report.findings if f.kind == "stale_accept_rule"]
    assert len(stale) == 1 and "172.17.0.9" in stale[0].detail


def test_duplicate_rule():
    text = L.insert_rule(D28, "DOCKER", LINK_DPORT.removeprefix("-A DOCKER "))
    report = decide(STATE, text)
    assert [f.kind for f in report.findings] == ["duplicate_rule"]


def test_dnat_in_nat_prerouting_makes_the_flow_unknown():
    text = L.insert_rule(
        D28, "PREROUTING", "-d 172.17.0.2/32 -p tcp -j DNAT --to-destination 172.17.0.4:80", "nat"
    )
    report = decide(STATE, text)
    link = next(f for f in report.flows if f.link)
    assert link.actual == "unknown" and "DNAT" in link.reason


def test_raw_prerouting_drop_blocks_the_link():
    text = L.insert_rule(D28, "PREROUTING", "-d 172.17.0.2/32 -j DROP", "raw")
    report = decide(STATE, text)
    assert verdicts(report)[("bridge", "client", "web", 80)] == "deny"
    assert "blocked_link_flow" in kinds(report)


def test_ebtables_drop_blocks_the_link():
    ebtables = EMPTY_EBTABLES + "-A FORWARD -p IPv4 --ip-dst 172.17.0.2 -j DROP\n"
    report = decide(STATE, D28, ebtables=ebtables)
    assert verdicts(report)[("bridge", "client", "web", 80)] == "deny"


def test_unreadable_ebtables_leaves_allowed_flows_unknown_and_denied_ones_denied():
    report = decide(STATE, D28, ebtables=None, config=ALL)
    got = verdicts(report)
    assert got[("bridge", "client", "web", 80)] == "unknown"
    assert got[("bridge", "loner", "web", 80)] == "deny"  # iptables drops it whatever ebtables does


def test_drop_in_the_other_backend_wins_over_accept():
    legacy = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A FORWARD -d 172.17.0.2/32 -j DROP\nCOMMIT\n"
    report = decide(STATE, D28, legacy=legacy)
    assert verdicts(report)[("bridge", "client", "web", 80)] == "deny"
    assert {"multiple_backends", "blocked_link_flow"} <= kinds(report)


def test_deleted_conntrack_rule_blocks_the_reply_of_a_linked_tcp_flow():
    # Docker's reverse rule (--sport 80) still lets web's replies back to client.
    text = L.delete_rule(
        D28, "-A DOCKER-CT -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    )
    report = decide(STATE, text)
    assert verdicts(report)[("bridge", "client", "web", 80)] == "allow"
    reverse = "-A DOCKER -s 172.17.0.2/32 -d 172.17.0.3/32 -i docker0 -o docker0 -p tcp -m tcp --sport 80 -j ACCEPT"
    report = decide(STATE, L.delete_rule(text, reverse))
    assert verdicts(report)[("bridge", "client", "web", 80)] == "deny"


def test_undecidable_match_on_the_path_gives_unknown():
    text = L.insert_rule(D28, "DOCKER-USER", "-m mark --mark 0x1 -j ACCEPT")
    report = decide(STATE, text, config=ALL)
    got = verdicts(report)
    assert got[("bridge", "loner", "web", 80)] == "unknown"
    assert got[("bridge", "client", "web", 80)] == "allow"  # allowed on both branches


def test_icc_posture():
    state = L.default_bridge_state(True)
    text = (L.LAYOUTS / "docker28-icc-true.rules").read_text()
    report = decide(state, text, config=CheckConfig(expect_icc="disabled"))
    assert kinds(report) == {"icc_posture"} and report.drift
    assert not decide(state, text).drift


def test_iptables_posture_inferred_from_missing_chains():
    empty = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    report = decide(
        L.default_bridge_state(True), empty, config=CheckConfig(expect_iptables="enabled")
    )
    assert "iptables_posture" in kinds(report)
    assert report.settings.iptables.source == "inferred"


def test_unparsed_line_is_reported_and_its_rule_is_undecidable():
    text = L.insert_rule(D28, "DOCKER-USER", '-m comment --comment "unterminated -j ACCEPT')
    report = decide(STATE, text, config=ALL)
    assert "unparsed_rule" in kinds(report)
    assert verdicts(report)[("bridge", "loner", "web", 80)] == "unknown"


# ---- check_dumps_against_nft: the dumps against the kernel's own list of nft tables ------------


def inputs_with(nft_tables: tuple[str, ...], printed: frozenset[str]) -> CheckInputs:
    ruleset = parse_iptables_save(D28, "ipv4", "nft")
    read = IptablesRead("nft", (ruleset,), {"nft": printed})
    return CheckInputs(
        statuses=(SourceStatus("iptables", True, 0.0), SourceStatus("ip6tables", True, 0.0)),
        iptables=read,
        ip6tables=IptablesRead("nft", (), {"nft": frozenset()}),
        nftables=NftablesInfo(tables=nft_tables),
    )


def test_dump_lacking_a_table_nft_lists_drops_that_source_only():
    checked = check_dumps_against_nft(inputs_with(("ip filter", "ip raw"), frozenset({"filter"})))
    assert checked.iptables is None and checked.ip6tables is not None
    iptables, ip6tables = checked.statuses
    assert not iptables.up and iptables.error == (
        "iptables: iptables-nft-save printed no table raw that nft lists: dump cut short or "
        "table incompatible; no verdict from it"
    )
    assert ip6tables.up and ip6tables.error is None


def test_dump_holding_every_table_nft_lists_is_kept_as_is():
    whole = inputs_with(("ip filter", "ip6 filter", "inet firewalld"), frozenset({"filter"}))
    # ip6 filter: the ip6tables dump printed none, but nft lists it.
    checked = check_dumps_against_nft(replace(whole, ip6tables=None))
    assert checked == replace(whole, ip6tables=None)


def test_without_nft_nothing_is_compared():
    unread = replace(inputs_with(("ip filter", "ip raw"), frozenset()), nftables=None)
    assert check_dumps_against_nft(unread) is unread
