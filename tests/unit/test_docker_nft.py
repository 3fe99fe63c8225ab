"""Docker 29's nftables backend: its tables walked like any other, and compared with what Docker
must have written (exporter/docker_nft.py). Fixtures: tests/fixtures/docker29/*.json, the
layouts/docker29-nftables-*.rules loaded into a kernel and listed back by `nft -j` (capture.sh)."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from exporter.docker_nft import docker_nft_findings, docker_nft_statuses
from exporter.expectations import network_expectations
from exporter.firewall.evaluate import Verdict, evaluate_packet
from exporter.firewall.nft import address_matches
from exporter.firewall.parse import parse_nft_ruleset
from exporter.firewall.state import NftablesInfo
from exporter.report import (
    DUPLICATE_RULE,
    ICC_DROP_MISSING,
    MISSING_ACCEPT_RULE,
    STALE_ACCEPT_RULE,
    UNEXPECTED_ACCEPT_RULE,
)
from tests.unit import layouts as L
from tests.unit.core_builders import inputs, one_by_one, packet
from tests.unit.test_core import ALL, decide

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "docker29"
IN_DOCKER0 = "filter-forward-in__docker0"
PROBE = 1  # no iptables rule names a port: flows.probe_port's choice on these hosts


def internal_state():
    """layouts.internal_state with its two user networks marked internal, as the fixture's are."""
    state = L.internal_state()
    networks = tuple(
        replace(n, internal=True) if n.name.startswith("bridge") and n.name != "bridge" else n
        for n in state.networks
    )
    return replace(state, networks=networks)


CASES = {
    "icc-false-link": L.default_bridge_state(False),
    "icc-true": L.default_bridge_state(True),
    "usernet-icc-false": L.usernet_state("bridge1", False),
    "usernet-icc-true": L.usernet_state("bridge1", True),
    "usernet-internal": internal_state(),
}


def document(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def info(doc: dict) -> NftablesInfo:
    return parse_nft_ruleset(json.dumps(doc))


def rules_of(doc: dict, chain: str) -> list[dict]:
    return [o["rule"] for o in doc["nftables"] if "rule" in o and o["rule"]["chain"] == chain]


def without(doc: dict, keep) -> dict:
    changed = copy.deepcopy(doc)
    changed["nftables"] = [o for o in changed["nftables"] if "rule" not in o or keep(o["rule"])]
    return changed


def with_rule_before(doc: dict, handle: int, new: dict) -> dict:
    """A copy with `new` (a rule body) placed before the rule with `handle`."""
    changed = copy.deepcopy(doc)
    objects = changed["nftables"]
    index = next(i for i, o in enumerate(objects) if o.get("rule", {}).get("handle") == handle)
    objects.insert(index, {"rule": new})
    return changed


def icc_rule(doc: dict, chain: str) -> dict:
    return next(r for r in rules_of(doc, chain) if r.get("comment") == "ICC")


def addr_rule(saddr: str, daddr: str, handle: int, verdict: str = "accept") -> dict:
    def match(field: str, value: str) -> dict:
        left = {"payload": {"protocol": "ip", "field": field}}
        return {"match": {"op": "==", "left": left, "right": value}}

    return {
        "family": "ip", "table": "docker-bridges", "chain": IN_DOCKER0, "handle": handle,
        "expr": [match("saddr", saddr), match("daddr", daddr), {"counter": None}, {verdict: None}],
    }  # fmt: skip


def verdicts(name: str, doc: dict) -> dict:
    """Every pair and port of every network, evaluated one by one."""
    path = inputs(nftables=info(doc))
    found = {}
    for expectation in network_expectations(CASES[name]):
        for key, (verdict, _) in one_by_one(expectation, "ipv4", path, PROBE).items():
            found[(expectation.network.name, *key)] = verdict
    return found


def findings(name: str, doc: dict):
    return docker_nft_findings(network_expectations(CASES[name]), info(doc))


# ---- the tables are walked -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_flow_gets_the_verdict_the_declared_state_wants(name):
    state = CASES[name]
    got = verdicts(name, document(name))
    assert got, "no flow evaluated"
    links = {
        (e.network.name, lf.parent.container.name, lf.child.container.name, lf.port.port)
        for e in network_expectations(state)
        for lf in e.link_flows
    }
    icc = {n.name: n.icc for n in state.networks}
    for (network, source, target, protocol, port), verdict in got.items():
        wanted = icc[network] or (network, source, target, port) in links
        assert verdict == ("allow" if wanted else "deny"), (network, source, target, protocol, port)


def test_a_parsed_docker_table_is_walked_not_reported_unknown():
    parsed = info(document("icc-true"))
    assert parsed.docker_tables == ("ip docker-bridges",)
    assert ("ip", "docker-bridges", IN_DOCKER0) in parsed.native.chains
    assert inputs(nftables=parsed).blocker("ipv4") is None


def test_a_docker_table_listed_but_not_modelled_stays_unknown():
    listed_only = NftablesInfo(docker_tables=("ip docker-bridges",))
    assert "ip docker-bridges" in str(inputs(nftables=listed_only).blocker("ipv4"))


def test_published_port_dnat_does_not_touch_traffic_between_containers():
    """nat-PREROUTING jumps to the DNAT of published port 8080 only for `fib daddr type local`:
    a container's address is never local to the host, so a docker0 flow to port 8080 is
    decided, not unknown."""
    path = inputs(nftables=info(document("usernet-icc-true")))
    first = packet("172.17.0.3", "172.17.0.2", "tcp", 8080)
    decision = evaluate_packet(first, path)
    assert decision.verdict is Verdict.ALLOW, decision.reason


def test_user_table_drop_stops_a_link_flow_and_user_accept_cannot_open_icc():
    doc = copy.deepcopy(document("icc-false-link"))
    user = [
        {"table": {"family": "inet", "name": "user", "handle": 90}},
        {"chain": {"family": "inet", "table": "user", "name": "fwd", "handle": 1, "type": "filter",
                   "hook": "forward", "prio": 0, "policy": "accept"}},
        {"rule": {**addr_rule("172.17.0.3", "172.17.0.2", 2, "drop"), "family": "inet",
                  "table": "user", "chain": "fwd"}},
        {"rule": {**addr_rule("172.17.0.4", "172.17.0.2", 3), "family": "inet", "table": "user",
                  "chain": "fwd"}},
    ]  # fmt: skip
    doc["nftables"].extend(user)
    got = verdicts("icc-false-link", doc)
    assert got[("bridge", "client", "web", "tcp", 80)] == "deny"
    assert got[("bridge", "loner", "web", "tcp", 80)] == "deny"
    # Docker's own table is unchanged: nothing to restore there.
    assert findings("icc-false-link", doc) == []


# ---- the comparison --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_clean_tables_give_no_finding(name):
    assert findings(name, document(name)) == []


def test_no_docker_table_no_finding():
    assert docker_nft_findings(network_expectations(CASES["icc-true"]), NftablesInfo()) == []


@pytest.mark.parametrize("handle_index", [1, 2])
def test_deleted_link_rule_is_missing_and_restored_before_the_icc_drop(handle_index):
    doc = document("icc-false-link")
    chain = rules_of(doc, IN_DOCKER0)
    gone, icc = chain[handle_index], icc_rule(doc, IN_DOCKER0)
    changed = without(doc, lambda r: r["handle"] != gone["handle"])
    (finding,) = findings("icc-false-link", changed)
    assert finding.kind == MISSING_ACCEPT_RULE
    assert finding.containers == ("client", "web") and finding.port == 80
    assert finding.restore == (
        f"nft insert rule ip docker-bridges {IN_DOCKER0} position {icc['handle']} {finding.rule}"
    )
    assert verdicts("icc-false-link", changed)[("bridge", "client", "web", "tcp", 80)] == (
        "deny" if handle_index == 1 else "allow"  # the reply passes as established anyway
    )


def test_deleted_icc_drop_is_reported_and_added_after_the_link_rules():
    doc = document("icc-false-link")
    icc = icc_rule(doc, IN_DOCKER0)
    changed = without(doc, lambda r: r["handle"] != icc["handle"])
    (finding,) = findings("icc-false-link", changed)
    assert finding.kind == ICC_DROP_MISSING and "missing" in finding.detail
    last_link = rules_of(doc, IN_DOCKER0)[2]
    assert finding.rule == 'iifname "docker0" counter drop comment "ICC"'
    assert finding.restore == (
        f"nft add rule ip docker-bridges {IN_DOCKER0} position {last_link['handle']} {finding.rule}"
    )
    # The final drop still stops the pairs: the flows agree, the rule is still drift.
    assert verdicts("icc-false-link", changed)[("bridge", "loner", "web", "tcp", 80)] == "deny"


def test_icc_drop_flipped_to_accept_is_icc_drop_missing_and_opens_every_pair():
    doc = copy.deepcopy(document("icc-false-link"))
    icc = icc_rule(doc, IN_DOCKER0)
    icc["expr"][-1] = {"accept": None}
    (finding,) = findings("icc-false-link", doc)
    assert finding.kind == ICC_DROP_MISSING and "accepts" in finding.detail
    assert finding.restore == (
        f"nft replace rule ip docker-bridges {IN_DOCKER0} handle {icc['handle']} "
        'iifname "docker0" counter drop comment "ICC"'
    )
    got = verdicts("icc-false-link", doc)
    assert got[("bridge", "loner", "web", "tcp", 80)] == "allow"


def test_icc_accept_missing_on_an_icc_true_bridge_is_a_missing_accept():
    doc = document("usernet-icc-true")
    icc = icc_rule(doc, "filter-forward-in__bridge1")
    changed = without(doc, lambda r: r["handle"] != icc["handle"])
    (finding,) = findings("usernet-icc-true", changed)
    assert finding.kind == MISSING_ACCEPT_RULE and finding.network == "net1"
    assert verdicts("usernet-icc-true", changed)[("net1", "c2", "c1", "udp", None)] == "deny"


def test_internal_network_icc_rule_is_unconditional():
    doc = copy.deepcopy(document("usernet-internal"))
    icc_rule(doc, "filter-forward-in__bridgeNoICC")["expr"][-1] = {"accept": None}
    (finding,) = findings("usernet-internal", doc)
    assert (finding.kind, finding.network) == (ICC_DROP_MISSING, "bridgeNoICC")
    assert finding.rule == 'counter drop comment "ICC"'


def test_extra_accept_between_two_containers_is_unexpected():
    doc = document("icc-false-link")
    icc = icc_rule(doc, IN_DOCKER0)
    changed = with_rule_before(doc, icc["handle"], addr_rule("172.17.0.4", "172.17.0.2", 99))
    (finding,) = findings("icc-false-link", changed)
    assert finding.kind == UNEXPECTED_ACCEPT_RULE
    assert finding.containers == ("loner", "web")
    assert finding.rule == "ip saddr 172.17.0.4 ip daddr 172.17.0.2 counter accept"
    assert finding.restore == f"nft delete rule ip docker-bridges {IN_DOCKER0} handle 99"
    assert verdicts("icc-false-link", changed)[("bridge", "loner", "web", "udp", None)] == "allow"


def test_accept_for_an_address_no_container_has_is_stale():
    doc = document("icc-false-link")
    icc = icc_rule(doc, IN_DOCKER0)
    changed = with_rule_before(doc, icc["handle"], addr_rule("172.17.0.9", "172.17.0.2", 99))
    (finding,) = findings("icc-false-link", changed)
    assert finding.kind == STALE_ACCEPT_RULE and "172.17.0.9" in finding.detail


def test_duplicate_rule_is_reported_once_with_the_later_copy_to_delete():
    doc = document("icc-false-link")
    icc = icc_rule(doc, IN_DOCKER0)
    copy_of_link = {**rules_of(doc, IN_DOCKER0)[1], "handle": 98}
    changed = with_rule_before(doc, icc["handle"], copy_of_link)
    (finding,) = findings("icc-false-link", changed)
    assert finding.kind == DUPLICATE_RULE and finding.network == "bridge"
    assert finding.rule == "ip saddr 172.17.0.3 ip daddr 172.17.0.2 tcp dport 80 counter accept"
    assert finding.restore == f"nft delete rule ip docker-bridges {IN_DOCKER0} handle 98"


def test_missing_bridge_chain_says_restart():
    doc = copy.deepcopy(document("icc-false-link"))
    doc["nftables"] = [
        o for o in doc["nftables"]
        if (o.get("chain") or o.get("rule") or {}).get("name", (o.get("rule") or {}).get("chain"))
        != IN_DOCKER0
    ]  # fmt: skip
    found = findings("icc-false-link", doc)
    assert {f.kind for f in found} == {ICC_DROP_MISSING, MISSING_ACCEPT_RULE}
    assert all(f.restore and f.restore.startswith("restart dockerd") for f in found)


def test_statuses_count_expected_missing_and_extra_link_rules():
    doc = document("icc-false-link")
    icc = icc_rule(doc, IN_DOCKER0)
    gone = rules_of(doc, IN_DOCKER0)[1]
    changed = with_rule_before(
        without(doc, lambda r: r["handle"] != gone["handle"]),
        icc["handle"],
        addr_rule("172.17.0.4", "172.17.0.2", 99),
    )
    expectations = network_expectations(CASES["icc-false-link"])
    (status,) = docker_nft_statuses(expectations, findings("icc-false-link", changed))
    assert (status.containers, status.expected_accept_rules) == (3, 2)
    assert (status.missing_accept_rules, status.unexpected_accept_rules) == (1, 1)


def with_ip6_table(doc: dict, keep_icc: bool) -> dict:
    """The ip table's objects copied into `ip6 docker-bridges`, without the IPv4-only link
    rules (and without the ICC rule unless keep_icc)."""
    changed = copy.deepcopy(doc)
    for item in doc["nftables"]:
        ((kind, body),) = item.items()
        if body.get("family") != "ip" or (kind == "rule" and '"ip"' in json.dumps(body["expr"])):
            continue
        if kind == "rule" and body.get("comment") == "ICC" and not keep_icc:
            continue
        changed["nftables"].append({kind: {**copy.deepcopy(body), "family": "ip6"}})
    return changed


@pytest.mark.parametrize("keep_icc", [True, False])
def test_ipv6_icc_rule_is_checked_in_the_ip6_table(keep_icc):
    state = CASES["icc-false-link"]
    # An IPv6 subnet is what makes Docker write the ip6 table's ICC rule.
    state = replace(
        state,
        networks=tuple(
            replace(n, subnets=(*n.subnets, ip_network("fd00:1::/64"))) for n in state.networks
        ),
    )
    doc = with_ip6_table(document("icc-false-link"), keep_icc)
    found = docker_nft_findings(network_expectations(state), info(doc))
    assert [(f.kind, f.family) for f in found] == ([] if keep_icc else [(ICC_DROP_MISSING, "ipv6")])
    if not keep_icc:
        assert found[0].restore.startswith("nft add rule ip6 docker-bridges")


def test_address_matches_name_the_containers_a_native_rule_tells_apart():
    """flows.py groups containers by the rules' address matches: Docker's link rules and a
    user's rule in a native table must be among them, or a pair they single out is judged by
    another pair's verdict."""
    found = address_matches(info(document("icc-false-link")).native)
    client, web, loner = (ip_address(f"172.17.0.{i}") for i in (3, 2, 4))
    by_side = [{m.side: m for m in matches} for matches in found]
    # the two link rules, the masquerade's `ip saddr 172.17.0.0/16`, nat-OUTPUT's
    # `ip daddr != 127.0.0.0/8`
    assert len(found) == 4
    forward = next(s for s in by_side if len(s) == 2 and s["dst"].decide(web))
    assert forward["src"].decide(client) is True and forward["src"].decide(loner) is False
    (masquerade,) = [s for s in by_side if "dst" not in s]
    assert masquerade["src"].decide(loner) is True
    (not_loopback,) = [s for s in by_side if "src" not in s]
    assert not_loopback["dst"].decide(web) is True


def test_missing_icc_goes_after_the_fwmark_accept():
    doc = document("icc-false-link")
    icc = icc_rule(doc, IN_DOCKER0)
    mark = {"&": [{"meta": {"key": "mark"}}, 0xF000]}
    fwmark = {
        "family": "ip", "table": "docker-bridges", "chain": IN_DOCKER0, "handle": 97,
        "expr": [{"match": {"op": "==", "left": mark, "right": 0x1000}}, {"counter": None},
                 {"accept": None}],
    }  # fmt: skip
    first_link = rules_of(doc, IN_DOCKER0)[1]
    changed = with_rule_before(
        without(doc, lambda r: r["handle"] != icc["handle"]), first_link["handle"], fwmark
    )
    (finding,) = findings("icc-false-link", changed)
    last_link = rules_of(doc, IN_DOCKER0)[2]
    assert f"position {last_link['handle']} " in str(finding.restore)


# ---- through the whole check -------------------------------------------------------------------

EMPTY_FILTER = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_clean_docker29_nftables_host_is_decided_and_clean(name):
    # Docker writes no iptables rule with its nftables backend: the check must compare its nft
    # tables, not report every iptables link rule and DROP as missing.
    report = decide(CASES[name], EMPTY_FILTER, nftables=info(document(name)), config=ALL)
    assert report.evaluated and not report.drift, [f.detail for f in report.findings]
    assert {f.actual for f in report.flows} <= {"allow", "deny"}
    assert report.settings.iptables.value is True  # Docker's nft tables: it manages the firewall


def test_a_deleted_link_rule_on_a_docker29_host_is_missing_and_blocks_the_link():
    doc = document("icc-false-link")
    doc["nftables"] = [
        item
        for item in doc["nftables"]
        if not ("rule" in item and "dport" in json.dumps(item["rule"]["expr"]) and
                item["rule"]["chain"] == IN_DOCKER0 and "accept" in json.dumps(item["rule"]["expr"])
                and "saddr" in json.dumps(item["rule"]["expr"]))
    ]  # fmt: skip
    report = decide(CASES["icc-false-link"], EMPTY_FILTER, nftables=info(doc), config=ALL)
    kinds = {f.kind for f in report.findings}
    assert {MISSING_ACCEPT_RULE, "blocked_link_flow"} <= kinds
