"""Docker 29's nftables firewall backend: the rules it must have written, and how they drifted.

With `dockerd --firewall-backend=nftables` Docker keeps its rules in `table ip docker-bridges`
(and `ip6 docker-bridges`). Per bridge, chain `filter-forward-in__BRIDGE` runs its rules in a
fixed group order (moby's nftabler): established accept, fwmark accept, legacy links (IPv4 only,
two per exposed port), the rule commented ICC, published ports, the final drop commented
UNPUBLISHED PORT DROP. This module compares the link and ICC rules with what the declared state
needs, the way comparison.py does for the iptables backend; the verdicts themselves come from
walking the tables (exporter.firewall), this only names the rule to blame and how to restore it.

Restore commands name the rule handles of the ruleset read (`nft -a list table ip
docker-bridges` shows them): a missing link rule is inserted before the chain's first drop (links
must precede the ICC drop), a missing ICC rule is added after the rules of the groups before it,
a flipped ICC rule is replaced in place, an extra rule is deleted by handle.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from typing import Any

from exporter.expectations import LinkFlow, NetworkExpectation
from exporter.firewall.nft import NftChain, NftRule
from exporter.firewall.state import NftablesInfo
from exporter.model import Network
from exporter.report import (
    DUPLICATE_RULE,
    ICC_DROP_MISSING,
    MISSING_ACCEPT_RULE,
    STALE_ACCEPT_RULE,
    UNEXPECTED_ACCEPT_RULE,
    Finding,
    NetworkStatus,
)

TABLE = "docker-bridges"
NFT_FAMILY = {"ipv4": "ip", "ipv6": "ip6"}
ICC_COMMENT = "ICC"
# Groups moby's nftabler puts before the ICC rule besides the links (see missing ICC position).
BEFORE_ICC_COMMENTS = frozenset({"INTERNAL NETWORK INGRESS"})
# Meta keys nft prints without the `meta` keyword.
BARE_META_KEYS = frozenset({"iifname", "oifname", "iif", "oif"})
NOOP_EXPRESSIONS = frozenset({"counter"})

# A rule's meaning: its matches as (left, op, right) in any order, and its verdict.
RuleKey = tuple[frozenset[tuple[str, str, str]], str]


@dataclass(frozen=True)
class ExpectedNftRule:
    """A rule Docker writes: its meaning, and its text as `nft list` prints it."""

    key: RuleKey
    text: str
    link: LinkFlow | None = None


def in_chain(bridge: str) -> str:
    return f"filter-forward-in__{bridge}"


def icc_rule(network: Network) -> ExpectedNftRule:
    """moby's ICC rule: accept or drop what comes in from the bridge itself; on an internal
    network the ingress from elsewhere is already dropped, so it is unconditional."""
    verdict = "accept" if network.icc else "drop"
    if network.internal:
        return ExpectedNftRule((frozenset(), verdict), f'counter {verdict} comment "ICC"')
    match = ("iifname", "==", network.bridge)
    return ExpectedNftRule(
        (frozenset({match}), verdict),
        f'iifname "{network.bridge}" counter {verdict} comment "ICC"',
    )


def link_rules(link: LinkFlow) -> tuple[ExpectedNftRule, ExpectedNftRule]:
    """The pair moby's legacyLinkRules writes: parent -> child:port, and packets from the exposed
    port back to the parent (replies pass as established anyway)."""
    parent, child = str(link.parent.address), str(link.child.address)
    proto, port = link.port.protocol, str(link.port.port)
    to_child = frozenset(
        {("ip saddr", "==", parent), ("ip daddr", "==", child), (f"{proto} dport", "==", port)}
    )
    from_child = frozenset(
        {("ip daddr", "==", parent), ("ip saddr", "==", child), (f"{proto} sport", "==", port)}
    )
    return (
        ExpectedNftRule(
            (to_child, "accept"),
            f"ip saddr {parent} ip daddr {child} {proto} dport {port} counter accept",
            link,
        ),
        ExpectedNftRule(
            (from_child, "accept"),
            f"ip daddr {parent} ip saddr {child} {proto} sport {port} counter accept",
            link,
        ),
    )


# ---- reading a rule --------------------------------------------------------------------------


def rule_key(rule: NftRule) -> RuleKey | None:
    """The rule's matches and verdict, or None when it holds anything else (a statement other
    than counter, a second verdict): such a rule is never one Docker wrote."""
    matches: set[tuple[str, str, str]] = set()
    verdict = None
    for expr in rule.exprs:
        ((kind, body),) = expr.items()
        if kind == "match" and isinstance(body, dict) and verdict is None:
            left = _left_text(body.get("left"))
            if left is None:
                return None
            op = "==" if body.get("op", "==") in ("==", "in") else str(body.get("op"))
            matches.add((left, op, _canonical(body.get("right"))))
        elif kind in NOOP_EXPRESSIONS:
            continue
        elif kind in ("accept", "drop", "reject") and verdict is None:
            verdict = kind
        else:
            return None
    return (frozenset(matches), verdict) if verdict else None


def _left_text(left: Any) -> str | None:
    if not isinstance(left, dict) or len(left) != 1:
        return None
    ((kind, body),) = left.items()
    if not isinstance(body, dict):
        return None
    if kind == "payload" and "protocol" in body:
        return f"{body['protocol']} {body.get('field')}"
    if kind == "meta":
        key = body.get("key")
        return str(key) if key in BARE_META_KEYS else f"meta {key}"
    if kind == "ct":
        return f"ct {body.get('key')}"
    return None


def _canonical(right: Any) -> str:
    """One spelling per value: an address without a full-length prefix, sets in sorted order."""
    if isinstance(right, dict) and isinstance(right.get("prefix"), dict):
        prefix = right["prefix"]
        try:
            network = ip_network(f"{prefix.get('addr')}/{prefix.get('len')}", strict=False)
        except ValueError:
            return json.dumps(right, sort_keys=True)
        host = network.num_addresses == 1
        return str(network.network_address) if host else str(network)
    if isinstance(right, list):
        return ",".join(sorted(_canonical(r) for r in right))
    if isinstance(right, dict) and isinstance(right.get("set"), list):
        return ",".join(sorted(_canonical(r) for r in right["set"]))
    if isinstance(right, (dict, list)):
        return json.dumps(right, sort_keys=True)
    return str(right)


def render(rule: NftRule) -> str:
    """The rule as `nft list` prints it, for the expressions Docker uses; any other expression
    is shown as its JSON so the text still says what is there."""
    words = []
    for expr in rule.exprs:
        ((kind, body),) = expr.items()
        if kind == "match" and isinstance(body, dict) and _left_text(body.get("left")):
            left = str(_left_text(body.get("left")))
            op = body.get("op", "==")
            shown_op = "" if op in ("==", "in") else f"{op} "
            words.append(f"{left} {shown_op}{_right_text(left, body.get('right'))}")
        elif kind in ("counter", "accept", "drop", "reject", "return", "continue"):
            words.append(kind)
        elif kind in ("jump", "goto") and isinstance(body, dict):
            words.append(f"{kind} {body.get('target')}")
        else:
            words.append(json.dumps(expr, sort_keys=True))
    if rule.comment is not None:
        words.append(f'comment "{rule.comment}"')
    return " ".join(words)


def _right_text(left: str, right: Any) -> str:
    if isinstance(right, str):
        return f'"{right}"' if left in BARE_META_KEYS else right
    if isinstance(right, list):
        return ",".join(_right_text(left, r) for r in right)
    if isinstance(right, dict) and isinstance(right.get("prefix"), dict):
        return f"{right['prefix'].get('addr')}/{right['prefix'].get('len')}"
    if isinstance(right, dict) and isinstance(right.get("range"), list):
        return "-".join(_right_text(left, r) for r in right["range"])
    if isinstance(right, dict) and isinstance(right.get("set"), list):
        return "{ " + ", ".join(_right_text(left, r) for r in right["set"]) + " }"
    return json.dumps(right, sort_keys=True) if isinstance(right, dict) else str(right)


def _hosts(key: RuleKey) -> tuple[str | None, str | None]:
    """The single source and destination address a rule requires, where it requires one."""
    found: dict[str, str] = {}
    for left, op, right in key[0]:
        if op == "==" and left in ("ip saddr", "ip daddr", "ip6 saddr", "ip6 daddr"):
            try:
                found[left.split()[1]] = str(ip_address(right))
            except ValueError:
                continue
    return found.get("saddr"), found.get("daddr")


# ---- the comparison --------------------------------------------------------------------------


def docker_nft_findings(
    expectations: Iterable[NetworkExpectation], nft: NftablesInfo
) -> list[Finding]:
    """Drift between Docker 29's nftables tables and the declared state; [] where Docker does
    not use its nftables backend (no `ip docker-bridges` table)."""
    if f"ip {TABLE}" not in nft.docker_tables:
        return []
    expectations = tuple(expectations)
    findings: list[Finding] = []
    for expectation in expectations:
        network = expectation.network
        families = ["ipv4"]
        ipv6 = any(subnet.version == 6 for subnet in network.subnets)
        if ipv6 and f"ip6 {TABLE}" in nft.docker_tables:
            families.append("ipv6")
        for family in families:
            findings.extend(_network_findings(expectation, family, nft))
    findings.extend(_duplicate_findings(expectations, nft))
    return findings


def _network_findings(
    expectation: NetworkExpectation, family: str, nft: NftablesInfo
) -> list[Finding]:
    network = expectation.network
    nft_family = NFT_FAMILY[family]
    name = in_chain(network.bridge)
    chain = nft.native.chains.get((nft_family, TABLE, name))
    target = f"{nft_family} {TABLE} {name}"
    links = (
        [r for link in expectation.link_flows for r in link_rules(link)] if family == "ipv4" else []
    )
    if chain is None:
        restore = f"restart dockerd: it writes chain {name} of table {nft_family} {TABLE} anew"
        icc = icc_rule(network)
        return [
            _icc_finding(network, family, f"chain {target} is missing", icc.text, restore),
            *(_missing_link(network, r, f"chain {target} is missing", restore) for r in links),
        ]
    findings = _icc_findings(network, family, chain, links)
    present = {rule_key(r) for r in chain.rules}
    for expected in links:
        if expected.key not in present:
            findings.append(_missing_link(
                network, expected, "Docker's nftables rule is missing",
                f"nft {_link_position(chain, target)} {expected.text}",
            ))  # fmt: skip
    if not network.icc:
        expected_keys = {r.key for r in links}
        findings.extend(_extra_accepts(expectation, family, nft, expected_keys))
    return findings


def _icc_findings(
    network: Network, family: str, chain: NftChain, links: list[ExpectedNftRule]
) -> list[Finding]:
    expected = icc_rule(network)
    if any(rule_key(r) == expected.key for r in chain.rules):
        return []
    target = f"{chain.family} {TABLE} {chain.name}"
    flipped = next((r for r in chain.rules if r.comment == ICC_COMMENT), None)
    if flipped is not None:
        now = "accepts" if network.icc is False else "does not accept"
        detail = f"the ICC rule {now} ({render(flipped)})"
        restore = f"nft replace rule {target} handle {flipped.handle} {expected.text}"
    else:
        detail = "the ICC rule is missing"
        restore = f"nft {_icc_position(chain, links)} {expected.text}"
    return [_icc_finding(network, family, detail, expected.text, restore)]


def _icc_finding(network: Network, family: str, detail: str, rule: str, restore: str) -> Finding:
    if network.icc:
        kind = MISSING_ACCEPT_RULE
        what = f"Docker's accept for traffic between containers on {network.bridge} (icc enabled)"
    else:
        kind = ICC_DROP_MISSING
        what = f"Docker's drop for traffic between containers on {network.bridge} (icc disabled)"
    return Finding(
        kind, network.name, f"{what}: {detail}", family=family, rule=rule, restore=restore
    )


def _missing_link(network: Network, expected: ExpectedNftRule, why: str, restore: str) -> Finding:
    link = expected.link
    assert link is not None  # only link rules are passed here
    return Finding(
        MISSING_ACCEPT_RULE, network.name,
        f"link {link.parent.container.name} -> {link.child.container.name} (alias {link.alias}) "
        f"{link.port}: {why}",
        containers=(link.parent.container.name, link.child.container.name),
        protocol=link.port.protocol, port=link.port.port, rule=expected.text, restore=restore,
    )  # fmt: skip


def _link_position(chain: NftChain, target: str) -> str:
    """Before the chain's first drop: the links group precedes the ICC rule and the final drop."""
    first_drop = next((r for r in chain.rules if (rule_key(r) or ((), ""))[1] == "drop"), None)
    if first_drop is None:
        return f"add rule {target}"
    return f"insert rule {target} position {first_drop.handle}"


def _icc_position(chain: NftChain, links: list[ExpectedNftRule]) -> str:
    """After the last rule of the groups before ICC (established, fwmark, links, an internal
    network's ingress drop); at the top when there is none."""
    target = f"{chain.family} {TABLE} {chain.name}"
    link_keys = {r.key for r in links}
    last = None
    for rule in chain.rules:
        if _before_icc(rule, link_keys):
            last = rule
        else:
            break
    if last is None:
        return f"insert rule {target}"
    return f"add rule {target} position {last.handle}"


def _before_icc(rule: NftRule, link_keys: set[RuleKey]) -> bool:
    if rule.comment in BEFORE_ICC_COMMENTS or _accepts_by_mark(rule):
        return True
    key = rule_key(rule)
    if key is None or key[1] != "accept":
        return False
    lefts = {left for left, _, _ in key[0]}
    return key in link_keys or lefts in ({"ct state"}, {"meta mark"}) or all(_hosts(key))


def _accepts_by_mark(rule: NftRule) -> bool:
    """--bridge-accept-fwmark's rule (`meta mark & MASK == VALUE counter accept`): a masked
    match rule_key does not read."""
    text = json.dumps(rule.exprs)
    return '"key": "mark"' in text and any("accept" in expr for expr in rule.exprs)


def _extra_accepts(
    expectation: NetworkExpectation, family: str, nft: NftablesInfo, expected: set[RuleKey]
) -> list[Finding]:
    """Accepts in Docker's table between two addresses of the network that no link explains
    (unexpected), or naming an address of its subnets no container has (stale: the next
    container to get it inherits the hole)."""
    network = expectation.network
    members = {str(m.address): m.container.name for m in expectation.members.get(family, ())}
    version = 4 if family == "ipv4" else 6
    subnets = [s for s in network.subnets if s.version == version]
    findings = []
    for chain in _docker_chains(nft, NFT_FAMILY[family]):
        for rule in chain.rules:
            key = rule_key(rule)
            if key is None or key[1] != "accept" or key in expected:
                continue
            source, target = _hosts(key)
            if source is None or target is None or source == target:
                continue
            stale = [
                a for a in (source, target)
                if a not in members and any(ip_address(a) in s for s in subnets)
            ]  # fmt: skip
            if not stale and (source not in members or target not in members):
                continue
            text = render(rule)
            if stale:
                kind = STALE_ACCEPT_RULE
                detail = f"accept for {', '.join(stale)} (no running container has that address)"
            else:
                kind = UNEXPECTED_ACCEPT_RULE
                detail = "accept between containers that no link explains"
            findings.append(Finding(
                kind, network.name, f"{detail}: {chain.label}: {text}",
                containers=tuple(members[a] for a in (source, target) if a in members),
                family=family, rule=text,
                restore=f"nft delete rule {chain.label} handle {rule.handle}",
            ))  # fmt: skip
    return findings


def _docker_chains(nft: NftablesInfo, nft_family: str) -> list[NftChain]:
    return [
        chain
        for (family, table, _), chain in nft.native.chains.items()
        if family == nft_family and table == TABLE
    ]


def _duplicate_findings(
    expectations: tuple[NetworkExpectation, ...], nft: NftablesInfo
) -> list[Finding]:
    """The same rule twice in one of Docker's chains: Docker never writes that; the later copy
    is the one to delete."""
    networks = {e.network.bridge: e.network.name for e in expectations}
    findings = []
    for nft_family, family in (("ip", "ipv4"), ("ip6", "ipv6")):
        for chain in _docker_chains(nft, nft_family):
            seen: set[tuple[RuleKey, str | None]] = set()
            for rule in chain.rules:
                key = rule_key(rule)
                if key is None:
                    continue
                if (key, rule.comment) not in seen:
                    seen.add((key, rule.comment))
                    continue
                findings.append(Finding(
                    DUPLICATE_RULE, networks.get(chain.name.rpartition("__")[2], ""),
                    f"rule appears more than once in {chain.label}", family=family,
                    rule=render(rule),
                    restore=f"nft delete rule {chain.label} handle {rule.handle}",
                ))  # fmt: skip
    return findings


def docker_nft_statuses(
    expectations: Iterable[NetworkExpectation], findings: Iterable[Finding]
) -> list[NetworkStatus]:
    """Per network, the link rules Docker must have and how many are missing or extra, counted
    from docker_nft_findings' findings as comparison.rule_findings counts them for iptables."""
    findings = tuple(findings)
    statuses = []
    for expectation in expectations:
        network = expectation.network
        mine = [f for f in findings if f.network == network.name and f.family == "ipv4"]
        statuses.append(
            NetworkStatus(
                name=network.name,
                bridge=network.bridge,
                icc=network.icc,
                containers=expectation.containers,
                expected_accept_rules=0 if network.icc else 2 * len(expectation.link_flows),
                missing_accept_rules=sum(
                    f.kind == MISSING_ACCEPT_RULE and f.port is not None for f in mine
                ),
                unexpected_accept_rules=sum(
                    f.kind in (UNEXPECTED_ACCEPT_RULE, STALE_ACCEPT_RULE) for f in mine
                ),
            )
        )
    return statuses
