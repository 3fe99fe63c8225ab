"""Parsers against real tool output (tests/fixtures/tools, captures) and Docker layouts."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.firewall.parse import (
    _tokenize,
    parse_ebtables_save,
    parse_ipset_save,
    parse_iptables_save,
    parse_nft_ruleset,
)
from exporter.firewall.rules import Match, Option, Rule, Ruleset

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LAYOUTS = sorted((FIXTURES / "layouts").glob("*.rules"))
IPTABLES_LAYOUTS = [p for p in LAYOUTS if "nftables" not in p.name]
NFT_TEXT_LAYOUTS = [p for p in LAYOUTS if "nftables" in p.name]
CAPTURES = sorted((FIXTURES / "captures").glob("*/ip*tables*save.txt"))
TOOL_DUMPS = sorted((FIXTURES / "tools").glob("ip*tables-*save*.txt"))


def read(*parts: str) -> str:
    return FIXTURES.joinpath(*parts).read_text()


def rules(ruleset: Ruleset) -> list[Rule]:
    return [r for t in ruleset.tables.values() for c in t.chains.values() for r in c.rules]


def rule(ruleset: Ruleset, table: str, chain: str, position: int) -> Rule:
    found = ruleset.chain(table, chain)
    assert found is not None, f"{table} {chain} missing"
    return found.rules[position - 1]


def opt(name: str, *args: str, negated: bool = False) -> Option:
    return Option(name, tuple(args), negated)


# ---- every fixture parses cleanly ------------------------------------------------------------


def test_fixture_sets_are_present() -> None:
    assert len(LAYOUTS) == 22 and len(NFT_TEXT_LAYOUTS) == 5
    assert len(CAPTURES) == 4 and len(TOOL_DUMPS) == 8


@pytest.mark.parametrize("path", IPTABLES_LAYOUTS + CAPTURES + TOOL_DUMPS, ids=lambda p: p.name)
def test_dump_parses_without_unknown_lines_or_errors(path: Path) -> None:
    family = "ipv6" if path.name.startswith("ip6") else "ipv4"
    ruleset = parse_iptables_save(path.read_text(), family)
    assert ruleset.unknown_lines == ()
    assert [r.text for r in rules(ruleset) if r.error] == []
    for r in rules(ruleset):
        assert r.text.startswith(f"-A {r.chain} ")
        assert r.spec in r.text


@pytest.mark.parametrize("path", IPTABLES_LAYOUTS, ids=lambda p: p.name)
def test_layout_has_filter_forward_and_rules(path: Path) -> None:
    ruleset = parse_iptables_save(path.read_text(), "ipv4")
    forward = ruleset.chain("filter", "FORWARD")
    assert forward is not None and forward.builtin
    assert ruleset.rule_count > 0
    # The provenance comments at the top are kept as warnings, not lost.
    assert any("Source" in w or "Docker" in w for w in ruleset.warnings)


@pytest.mark.parametrize("path", NFT_TEXT_LAYOUTS, ids=lambda p: p.name)
def test_nft_text_is_not_an_iptables_dump(path: Path) -> None:
    ruleset = parse_iptables_save(path.read_text(), "ipv4")
    assert ruleset.tables == {} and ruleset.rule_count == 0
    texts = [u.text for u in ruleset.unknown_lines]
    assert "table ip docker-bridges {" in texts
    first = ruleset.unknown_lines[0]
    lines = path.read_text().splitlines()
    assert lines[first.number - 1].strip() == first.text


# ---- iptables: exact rules -------------------------------------------------------------------


def test_link_rule_from_legacy_capture() -> None:
    ruleset = parse_iptables_save(
        read("captures", "docker20.10-legacy", "iptables-legacy-save.txt"), "ipv4"
    )
    assert ruleset.backend == "legacy"  # 1.8.9 legacy header carries no "(legacy)" marker
    assert ruleset.warnings == ()
    assert ruleset.chain("filter", "FORWARD").policy == "ACCEPT"
    assert ruleset.chain("filter", "DOCKER").policy is None
    assert not ruleset.chain("filter", "DOCKER").builtin
    link = rule(ruleset, "filter", "DOCKER", 3)
    assert link.text == (
        "-A DOCKER -s 172.17.0.3/32 -d 172.17.0.2/32 -i docker0 -o docker0"
        " -p udp -m udp --dport 53 -j ACCEPT"
    )
    assert link.matches == (
        Match("", (opt("-s", "172.17.0.3/32"), opt("-d", "172.17.0.2/32"), opt("-i", "docker0"),
                   opt("-o", "docker0"), opt("-p", "udp"))),
        Match("udp", (opt("--dport", "53"),)),
    )  # fmt: skip
    assert (link.target, link.goto, link.target_options) == ("ACCEPT", False, ())
    icc = rule(ruleset, "filter", "FORWARD", 6)
    assert icc.spec == "-i docker0 -o docker0 -j DROP" and icc.target == "DROP"
    outgoing = rule(ruleset, "filter", "FORWARD", 5)
    assert outgoing.options("") == (opt("-i", "docker0"), opt("-o", "docker0", negated=True))


def test_mixed_capture_warning_and_backend() -> None:
    ruleset = parse_iptables_save(
        read("captures", "docker20.10-nft-mixed", "iptables-save.txt"), "ipv4"
    )
    assert ruleset.backend == "nft"
    assert ruleset.warnings == (
        "# Warning: iptables-legacy tables present, use iptables-legacy-save to see them",
    )
    assert set(ruleset.tables) == {"filter", "nat"}
    assert len(ruleset.chain("filter", "FORWARD").rules) == 14
    assert rule(ruleset, "nat", "OUTPUT", 1).options("") == (
        opt("-d", "127.0.0.0/8", negated=True),
    )


def test_warning_only_dump_has_no_tables() -> None:
    text = read("captures", "docker20.10-legacy", "iptables-nft-save.txt")
    ruleset = parse_iptables_save(text, "ipv4", backend="nft")
    assert ruleset.backend == "nft" and ruleset.tables == {} and ruleset.empty
    assert ruleset.warnings[0].startswith("# Warning: iptables-legacy tables present")


def test_empty_dump() -> None:
    ruleset = parse_iptables_save(
        read("captures", "docker20.10-nft-mixed", "ip6tables-save.txt"), "ipv6"
    )
    assert ruleset == Ruleset("ipv6", "legacy", warnings=("empty dump",))
    assert parse_iptables_save("  \n", "ipv4", backend="nft").backend == "nft"


def test_real_nft_dump_quoted_comment_reject_goto_and_flags() -> None:
    ruleset = parse_iptables_save(read("tools", "iptables-nft-save.txt"), "ipv4")
    assert ruleset.backend == "nft"
    assert set(ruleset.tables) == {"raw", "filter", "nat"}
    assert ruleset.chain("filter", "FORWARD").policy == "DROP"
    commented = rule(ruleset, "filter", "FORWARD", 3)
    assert commented.options("comment") == (opt("--comment", "link web:db tcp"),)
    assert commented.options("tcp") == (opt("--dport", "80"),)
    reject = rule(ruleset, "filter", "FORWARD", 4)
    assert reject.options("") == (
        opt("-s", "172.17.0.0/16", negated=True),
        opt("-i", "docker0"),
        opt("-p", "udp"),
    )
    assert reject.options("multiport") == (opt("--dports", "53,5353"),)
    assert reject.target == "REJECT"
    assert reject.target_options == (opt("--reject-with", "icmp-port-unreachable"),)
    assert rule(ruleset, "filter", "FORWARD", 5).matches == (Match("", (opt("-f"),)),)
    assert rule(ruleset, "filter", "FORWARD", 6).matches == (
        Match("physdev", (opt("--physdev-is-bridged"),)),
    )
    negated = rule(ruleset, "filter", "FORWARD", 7)
    assert negated.options("tcp") == (opt("--dport", "22", negated=True),)
    assert negated.options("addrtype") == (opt("--dst-type", "LOCAL", negated=True),)
    goto = rule(ruleset, "filter", "FORWARD", 8)
    assert (goto.target, goto.goto) == ("DNP-LOG", True)
    assert goto.options("tcp") == (opt("--tcp-flags", "FIN,SYN,RST,ACK", "SYN"),)
    assert goto.options("set") == (opt("--match-set", "dnp-allow", "src,dst"),)
    log = rule(ruleset, "filter", "DNP-LOG", 1)
    assert (log.matches, log.target) == ((), "LOG")
    assert log.target_options == (opt("--log-prefix", "dnp drop: "),)
    dnat = rule(ruleset, "nat", "PREROUTING", 1)
    assert dnat.target_options == (opt("--to-destination", "172.17.0.2:80"),)


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_counters_are_ignored(backend: str) -> None:
    plain = parse_iptables_save(read("tools", f"iptables-{backend}-save.txt"), "ipv4")
    counted = parse_iptables_save(read("tools", f"iptables-{backend}-save-c.txt"), "ipv4")
    assert counted.backend == backend
    assert counted.tables == plain.tables


def test_counter_forms_in_text_and_parse() -> None:
    dump = (
        "*filter\n:FORWARD ACCEPT [5:300]\n"
        "[7:420] -A FORWARD -c 1 2 -s 10.0.0.1/32 -j DROP -c 3 4\nCOMMIT\n"
    )
    r = rule(parse_iptables_save(dump, "ipv4"), "filter", "FORWARD", 1)
    assert r.text == "-A FORWARD -s 10.0.0.1/32 -j DROP"
    assert (r.options(), r.target, r.target_options, r.error) == (
        (opt("-s", "10.0.0.1/32"),),
        "DROP",
        (),
        None,
    )


def test_ip6tables_dumps() -> None:
    for backend in ("nft", "legacy"):
        ruleset = parse_iptables_save(read("tools", f"ip6tables-{backend}-save.txt"), "ipv6")
        assert (ruleset.family, ruleset.backend) == ("ipv6", backend)
        link = rule(ruleset, "filter", "FORWARD", 2)
        assert link.options("")[:2] == (
            opt("-s", "fd00:dead:beef::2/128"),
            opt("-d", "fd00:dead:beef::3/128"),
        )
        icmp = rule(ruleset, "filter", "FORWARD", 3)
        assert icmp.options("") == (opt("-s", "fd00::/8", negated=True), opt("-p", "ipv6-icmp"))
        assert icmp.options("icmp6") == (opt("--icmpv6-type", "128"),)
        assert icmp.target_options == (opt("--reject-with", "icmp6-adm-prohibited"),)
        frag = rule(ruleset, "filter", "FORWARD", 4)
        assert frag.options("ipv6header") == (opt("--header", "ipv6-frag"), opt("--soft"))


# ---- iptables: hand-written and odd lines ----------------------------------------------------

ODD_DUMP = """\
# Generated by iptables-save v1.4.21 on Mon Jan  1 00:00:00 2018
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:DOCKER - [0:0]
-A FORWARD --source 10.0.0.0/8 --in-interface docker0 --protocol tcp --dport 80 --syn -j ACCEPT
-A FORWARD -s ! 10.1.0.0/16 -p udp ! --sport 53 -j DROP
-A FORWARD -m comment --comment "unbalanced -j ACCEPT
-A NOWHERE -j ACCEPT
-I FORWARD 1 -j ACCEPT
something odd
-A DOCKER -p icmp -m icmp --icmp-type -1 -m comment --comment "-- starts with dashes" -g DOCKER
-A DOCKER -j DNAT --to-destination 1.2.3.4:80 -s 10.0.0.1
-A DOCKER ! -m tcp -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
-A PREROUTING -j DOCKER
"""


@pytest.fixture(name="odd")
def fixture_odd() -> Ruleset:
    return parse_iptables_save(ODD_DUMP, "ipv4", backend="nft")


def test_header_without_marker_is_legacy(odd: Ruleset) -> None:
    assert odd.backend == "legacy"
    assert (
        parse_iptables_save("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n", "ipv4", "nft").backend
        == "nft"
    )
    assert parse_iptables_save("*filter\nCOMMIT\n", "ipv4").backend == "legacy"
    legacy_header = "# Generated by iptables-save v1.8.10 (legacy) on x\n*filter\nCOMMIT\n"
    assert parse_iptables_save(legacy_header, "ipv4", "nft").backend == "legacy"


def test_long_names_and_implicit_protocol_match(odd: Ruleset) -> None:
    r = rule(odd, "filter", "FORWARD", 1)
    assert r.matches == (
        Match("", (opt("-s", "10.0.0.0/8"), opt("-i", "docker0"), opt("-p", "tcp"))),
        Match("tcp", (opt("--dport", "80"), opt("--syn"))),
    )


def test_old_style_negation(odd: Ruleset) -> None:
    r = rule(odd, "filter", "FORWARD", 2)
    assert r.options("") == (opt("-s", "10.1.0.0/16", negated=True), opt("-p", "udp"))
    assert r.options("udp") == (opt("--sport", "53", negated=True),)


def test_broken_quote_is_kept_with_error(odd: Ruleset) -> None:
    r = rule(odd, "filter", "FORWARD", 3)
    assert r.text == '-A FORWARD -m comment --comment "unbalanced -j ACCEPT'
    assert r.error is not None and "quotation" in r.error
    assert (r.matches, r.target) == ((), None)


def test_undeclared_chain_rule_is_kept_with_error(odd: Ruleset) -> None:
    chain = odd.chain("filter", "NOWHERE")
    assert chain is not None and chain.policy is None
    assert chain.rules[0].error == "chain NOWHERE not declared in table filter"
    assert chain.rules[0].target == "ACCEPT"  # the parse is kept; only the verdict is withheld


def test_unknown_lines_keep_number_and_text(odd: Ruleset) -> None:
    numbers = [(u.number, u.text) for u in odd.unknown_lines]
    assert numbers[:2] == [(10, "-I FORWARD 1 -j ACCEPT"), (11, "something odd")]
    assert "-I" in odd.unknown_lines[0].reason
    # The nat table never reached COMMIT: a truncated dump is flagged after its last line.
    assert odd.unknown_lines[2].number == 19
    assert "nat" in odd.unknown_lines[2].reason and "COMMIT" in odd.unknown_lines[2].reason
    assert len(odd.unknown_lines) == 3
    assert rule(odd, "nat", "PREROUTING", 1).error is None


def test_negative_number_and_quoted_dash_are_arguments(odd: Ruleset) -> None:
    r = rule(odd, "filter", "DOCKER", 1)
    assert r.options("icmp") == (opt("--icmp-type", "-1"),)
    assert r.options("comment") == (opt("--comment", "-- starts with dashes"),)
    assert (r.target, r.goto) == ("DOCKER", True)


def test_builtin_after_target_is_a_match(odd: Ruleset) -> None:
    r = rule(odd, "filter", "DOCKER", 2)
    assert r.target_options == (opt("--to-destination", "1.2.3.4:80"),)
    assert r.options("") == (opt("-s", "10.0.0.1"),)


def test_negated_module_is_an_error(odd: Ruleset) -> None:
    r = rule(odd, "filter", "DOCKER", 3)
    assert r.error == "'!' before -m"
    assert r.position == 3 and r.text == "-A DOCKER ! -m tcp -j ACCEPT"


def test_garbage_is_kept_not_raised() -> None:
    ruleset = parse_iptables_save("\x00\x01binary\n:lonely ACCEPT\nCOMMIT\n-A X -j Y\n", "ipv4")
    assert ruleset.tables == {}
    assert [(u.number, u.reason) for u in ruleset.unknown_lines] == [
        (1, "not text"),
        (2, "chain declaration outside a table"),
        (3, "COMMIT outside a table"),
        (4, "rule outside a table"),
    ]


# ---- ebtables --------------------------------------------------------------------------------


def test_ebtables_nft_real_dump() -> None:
    ruleset = parse_ebtables_save(read("tools", "ebtables-nft-save.txt"))
    assert (ruleset.family, ruleset.backend) == ("bridge", "nft")
    assert ruleset.unknown_lines == () and ruleset.warnings == ()
    assert [r.text for r in rules(ruleset) if r.error] == []
    assert set(ruleset.tables) == {"filter", "nat"}
    assert ruleset.chain("filter", "FORWARD").policy == "DROP"
    assert ruleset.chain("filter", "DNP-USER").policy is None  # RETURN: an ordinary user chain
    # A user chain with policy DROP keeps it, so the evaluator never walks it as if it returned.
    assert ruleset.chain("filter", "DNP-DROPPER").policy == "DROP"
    first = rule(ruleset, "filter", "FORWARD", 1)
    assert first.matches == (
        Match(
            "", (opt("-p", "IPv4"), opt("--ip-src", "172.17.0.3"), opt("--ip-dst", "172.17.0.2"))
        ),
    )
    assert first.target == "DROP"
    assert rule(ruleset, "filter", "FORWARD", 2).options() == (
        opt("-p", "IPv4"),
        opt("--ip-proto", "tcp"),
        opt("--ip-dport", "80"),
    )
    # ebtables prints the old negation form itself.
    assert rule(ruleset, "filter", "FORWARD", 3).options() == (
        opt("-p", "IPv4"),
        opt("-i", "veth+"),
        opt("--ip-src", "172.17.0.0/16", negated=True),
    )
    assert rule(ruleset, "filter", "FORWARD", 3).target == "DNP-USER"
    assert rule(ruleset, "filter", "FORWARD", 4).options() == (
        opt("-p", "ARP"),
        opt("--arp-ip-src", "172.17.0.3"),
    )
    assert rule(ruleset, "filter", "FORWARD", 9).options() == (opt("-p", "IPv4", negated=True),)
    assert rule(ruleset, "filter", "FORWARD", 12).options()[-1] == opt(
        "--ip-dport", "53", negated=True
    )
    log = rule(ruleset, "filter", "DNP-USER", 2)
    assert log.options() == (opt("--log-level", "info"), opt("--log-prefix", "dnp drop"))
    assert log.target == "CONTINUE"
    dnat = rule(ruleset, "nat", "PREROUTING", 1)
    assert dnat.target == "dnat"
    assert dnat.target_options == (
        opt("--to-dst", "02:42:ac:11:00:09"),
        opt("--dnat-target", "ACCEPT"),
    )


def test_ebtables_nft_counters_ignored() -> None:
    plain = parse_ebtables_save(read("tools", "ebtables-nft-save.txt"))
    counted = parse_ebtables_save(read("tools", "ebtables-nft-save-c.txt"))
    assert counted.tables == plain.tables and counted.unknown_lines == ()


def test_ebtables_legacy_header_only_real_dump() -> None:
    ruleset = parse_ebtables_save(read("tools", "ebtables-legacy-save.txt"))
    assert ruleset.backend == "legacy" and ruleset.tables == {} and ruleset.unknown_lines == ()


def test_ebtables_legacy_reconstructed_dump() -> None:
    ruleset = parse_ebtables_save(read("tools", "ebtables-legacy-save-reconstructed.txt"))
    assert ruleset.backend == "legacy" and ruleset.unknown_lines == ()
    assert set(ruleset.tables) == {"filter", "nat", "broute"}
    assert ruleset.chain("broute", "BROUTING").policy == "ACCEPT"
    r = rule(ruleset, "filter", "FORWARD", 3)
    assert (
        r.text == "-A FORWARD -p IPv4 --logical-in docker0 --ip-proto tcp --ip-dport 80 -j ACCEPT"
    )
    assert r.options()[1] == opt("--logical-in", "docker0")
    assert (r.target, r.target_options) == ("ACCEPT", ())
    mac = rule(ruleset, "filter", "DNP-USER", 2)
    assert mac.options() == (opt("-s", "2:42:ac:11:0:2"), opt("-d", "2:42:ac:11:0:3", negated=True))


def test_ebtables_without_header_and_with_match() -> None:
    dump = (
        "*filter\n:FORWARD ACCEPT\n-A FORWARD ! --logical-out br0 -m among --among-src x -j DROP\n"
    )
    ruleset = parse_ebtables_save(dump)
    assert ruleset.backend == "nft" and ruleset.unknown_lines == ()
    r = rule(ruleset, "filter", "FORWARD", 1)
    assert r.matches == (
        Match("", (opt("--logical-out", "br0", negated=True),)),
        Match("among", (opt("--among-src", "x"),)),
    )
    assert parse_ebtables_save("").warnings == ("empty dump",)


# ---- ipset -----------------------------------------------------------------------------------


def test_ipset_real_dump() -> None:
    sets = parse_ipset_save(read("tools", "ipset-save.txt"))
    assert list(sets) == [
        "dnp-allow",
        "dnp-nets",
        "dnp-ports",
        "dnp-v6",
        "dnp-empty",
        "dnp-bitmap",
        "dnp-list",
    ]
    allow = sets["dnp-allow"]
    assert (allow.type, allow.family, allow.members) == (
        "hash:ip",
        "inet",
        ("172.17.0.3", "172.17.0.2"),
    )
    assert sets["dnp-nets"].members == ("10.1.0.0/16 nomatch", "10.0.0.0/8", "172.17.0.0/16")
    assert sets["dnp-ports"].type == "hash:ip,port"
    assert sets["dnp-ports"].members == ("172.17.0.2,udp:53", "172.17.0.2,tcp:80")
    assert (sets["dnp-v6"].family, sets["dnp-v6"].members) == (
        "inet6",
        ("fd00:dead:beef::/48", "fd00::2"),
    )
    assert sets["dnp-empty"].members == ()
    assert (sets["dnp-bitmap"].type, sets["dnp-bitmap"].family) == ("bitmap:ip", "inet")
    assert sets["dnp-list"].members == ("dnp-allow",)


def test_ipset_rejects_what_it_cannot_place() -> None:
    assert parse_ipset_save("") == {}
    with pytest.raises(ValueError, match="line 1: add to set x never created"):
        parse_ipset_save("add x 1.2.3.4\n")
    with pytest.raises(ValueError, match="line 2: not a create/add line"):
        parse_ipset_save("create x hash:ip\nflush x\n")
    with pytest.raises(ValueError, match="line 2: cannot split"):
        parse_ipset_save('create x hash:ip comment\nadd x 1.2.3.4 comment "oops\n')


# ---- nftables --------------------------------------------------------------------------------


def test_nft_classification_real_dump() -> None:
    info = parse_nft_ruleset(read("tools", "nft-ruleset.json"))
    assert info.docker_tables == ("ip docker-bridges", "ip6 docker-bridges")
    assert info.foreign_chains == (
        "inet filter forward hook forward",
        "netdev ingressfilter ing hook ingress",
        "bridge mybridge pre hook prerouting",
        "ip mangle2 post hook postrouting",
        "inet ingr early hook ingress",
    )


def test_nft_iptables_nft_only_is_not_foreign() -> None:
    info = parse_nft_ruleset(read("tools", "nft-ruleset-iptables-only.json"))
    assert info.foreign_chains == () and info.docker_tables == ()


def test_nft_invalid_json() -> None:
    for text in ("", "not json", '{"nftables": [', "[1, 2]", '{"other": []}'):
        with pytest.raises(ValueError) as caught:
            parse_nft_ruleset(text)
        assert "\n" not in str(caught.value) and str(caught.value).startswith("nft JSON")


# ---- values the kernel could never print -------------------------------------------------------

NFT_DUMP = read("tools", "iptables-nft-save.txt")
V6_DUMP = read("tools", "ip6tables-nft-save.txt")
EBTABLES_DUMP = read("tools", "ebtables-nft-save.txt")


def spliced_error(dump: str, old: str, new: str, family: str = "ipv4") -> str | None:
    """The error of the rule `old` becomes once `new` replaces it in a real dump."""
    assert old in dump, old
    text = dump.replace(old, new, 1)
    ruleset = parse_ebtables_save(text) if family == "bridge" else parse_iptables_save(text, family)
    found = [r for r in rules(ruleset) if r.text == new.strip()]
    assert len(found) == 1, new
    return found[0].error


def first_rule_with(dump: str, *words: str) -> str:
    return next(line for line in dump.splitlines() if all(w in line for w in words))


@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        ("172.17.0.3/32", "172.17.0.3/33", "prefix too long"),
        ("172.17.0.3/32", "172.17.0.333/32", "not an address"),
        ("172.17.0.3/32", "fd00::3/128", "not an IPv4 address"),
        ("172.17.0.3/32", "172.17.0.3/255.0.256.0", "mask"),
        ("--dport 80", "--dport 99999", "not a port"),
        ("--dport 80", "--dport 80:22", "not a port"),
        ("--dport 80", "--dport http", "not a port"),
        ("-p tcp", "-p tcpx", "not a protocol"),
        ("-p tcp", "-p 256", "not a protocol"),
        ("-i docker0", "-i abcdefghijklmnop", "not an interface name"),
        ("RELATED,ESTABLISHED", "RELATED,ESTABLISHED,BOGUS", "conntrack states"),
    ],
)
def test_value_the_kernel_could_never_print_is_a_rule_error(old, new, said) -> None:
    line = first_rule_with(NFT_DUMP, old)
    error = spliced_error(NFT_DUMP, line, line.replace(old, new, 1))
    assert error is not None and said in error


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("172.17.0.3/32", "172.17.0.3/255.0.255.0"),  # non-contiguous masks are printed dotted
        ("172.17.0.3/32", "172.17.0.0/0"),
        ("--dport 80", "--dport 0:65535"),
        ("-p tcp", "-p 47"),
        ("-p tcp", "-p gre"),
        ("-i docker0", "-i abcdefghijklmn+"),  # 15 characters, '+' included
        ("RELATED,ESTABLISHED", "UNTRACKED,DNAT"),
    ],
)
def test_values_the_kernel_prints_are_not_errors(old, new) -> None:
    line = first_rule_with(NFT_DUMP, old)
    assert spliced_error(NFT_DUMP, line, line.replace(old, new, 1)) is None


def test_multiport_holds_at_most_15_ports_a_range_taking_two() -> None:
    line = first_rule_with(NFT_DUMP, "--dports")
    old = line.split("--dports ")[1].split()[0]
    fifteen = ",".join(str(p) for p in range(1, 16))
    assert spliced_error(NFT_DUMP, line, line.replace(old, fifteen)) is None
    too_many = ",".join(str(p) for p in range(1, 15)) + ",100:200"  # 14 + 2 slots
    assert "more than 15" in (spliced_error(NFT_DUMP, line, line.replace(old, too_many)) or "")


def test_ipv6_addresses_are_checked_against_the_ipv6_family() -> None:
    line = first_rule_with(V6_DUMP, "-s ")
    address = line.split("-s ")[1].split()[0]
    assert spliced_error(V6_DUMP, line, line.replace(address, "fd00::/129"), "ipv6")
    assert spliced_error(V6_DUMP, line, line.replace(address, "10.0.0.0/8"), "ipv6")
    assert spliced_error(V6_DUMP, line, line.replace(address, "fd00::/64"), "ipv6") is None


@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        ("--ip-src 172.17.0.3", "--ip-src 172.17.0.3/40", "prefix"),
        ("--ip-src 172.17.0.3", "--ip-src fd00::3", "IPv4"),
        ("--ip6-src fd00::/64", "--ip6-src 10.0.0.0/8", "IPv6"),
        ("--ip-dport 80", "--ip-dport 65536", "port"),
        ("--ip-sport 1024:65535", "--ip-sport 65535:1024", "port"),
        ("-p IPv4 --ip-src 172.17.0.3", "-p IPv5 --ip-src 172.17.0.3", "ethertype"),
        ("-p ARP --arp-ip-src", "-p 0x0042 --arp-ip-src", "ethertype"),
        ("--ip-proto tcp", "--ip-proto 300", "protocol"),
    ],
)
def test_ebtables_values_are_checked(old, new, said) -> None:
    line = first_rule_with(EBTABLES_DUMP, old)
    error = spliced_error(EBTABLES_DUMP, line, line.replace(old, new, 1), "bridge")
    assert error is not None and said in error


def test_ebtables_hex_ethertype_and_unknown_options_are_fine() -> None:
    line = first_rule_with(EBTABLES_DUMP, "-p 802_1Q")
    assert spliced_error(EBTABLES_DUMP, line, line.replace("802_1Q", "0x8100"), "bridge") is None
    # --vlan-id is not decided by the evaluator: not checked, the rule stays a rule.
    assert spliced_error(EBTABLES_DUMP, line, line.replace("10", "99999"), "bridge") is None


def test_a_rule_with_bytes_that_are_not_text_is_an_error() -> None:
    line = first_rule_with(NFT_DUMP, "--dport 80")
    error = spliced_error(NFT_DUMP, line, line.replace("-j", "-m foo --bar \udcff -j", 1))
    assert error == "holds bytes that are not text"


# ---- a dump cut short --------------------------------------------------------------------------


def test_missing_completed_after_the_last_commit_is_an_unknown_line() -> None:
    lines = NFT_DUMP.splitlines(keepends=True)
    assert lines[-1].startswith("# Completed")
    cut = parse_iptables_save("".join(lines[:-1]), "ipv4")
    assert [(u.number, u.table) for u in cut.unknown_lines] == [(len(lines), "nat")]
    assert "no '# Completed' line" in cut.unknown_lines[0].reason
    assert parse_iptables_save(NFT_DUMP, "ipv4").unknown_lines == ()


def test_missing_commit_names_the_table_and_says_cut_short() -> None:
    text = NFT_DUMP[: NFT_DUMP.rindex("COMMIT")]
    (line,) = parse_iptables_save(text, "ipv4").unknown_lines
    assert line.reason == "table nat has no COMMIT (dump cut short)" and line.table == "nat"


def test_ebtables_nft_table_without_completed_is_cut_short() -> None:
    cut = EBTABLES_DUMP[: EBTABLES_DUMP.rindex("# Completed")]
    (line,) = parse_ebtables_save(cut).unknown_lines
    assert line.table == "nat" and "dump cut short" in line.reason


def test_dumps_without_completed_lines_are_not_held_to_them() -> None:
    legacy_perl = read("tools", "ebtables-legacy-save-reconstructed.txt")
    assert parse_ebtables_save(legacy_perl).unknown_lines == ()
    headerless = "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"  # libiptc's rendering prints none
    assert parse_iptables_save(headerless, "ipv4").unknown_lines == ()


def test_rules_carry_their_line_number_outside_their_identity() -> None:
    ruleset = parse_iptables_save(NFT_DUMP, "ipv4")
    lines = NFT_DUMP.splitlines()
    for r in rules(ruleset):
        assert lines[r.line - 1].strip() == r.text
    moved = parse_iptables_save("\n" + NFT_DUMP, "ipv4")
    assert moved.tables == ruleset.tables


# ---- ipset and nft JSON ------------------------------------------------------------------------

IPSET_DUMP = read("tools", "ipset-save.txt")


@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        ("add dnp-allow 172.17.0.3", "add dnp-allow 172.17.0.333", "not an address"),
        ("add dnp-nets 10.0.0.0/8", "add dnp-nets 10.0.0.0/33", "prefix"),
        ("add dnp-v6 fd00::2", "add dnp-v6 10.0.0.2", "IPv6"),
        ("add dnp-bitmap 172.17.0.5", "add dnp-bitmap fd00::5", "IPv4"),
        ("create dnp-empty hash:ip", "create dnp-empty hash:bogus", "unknown type"),
        ("family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x59cae61f",
         "family inet7 hashsize 1024", "unknown type or family"),
    ],
)  # fmt: skip
def test_ipset_values_the_kernel_could_never_print_raise(old, new, said) -> None:
    assert old in IPSET_DUMP
    with pytest.raises(ValueError, match=said):
        parse_ipset_save(IPSET_DUMP.replace(old, new, 1))


def test_ipset_members_of_other_types_are_not_checked() -> None:
    sets = parse_ipset_save(IPSET_DUMP)
    assert sets["dnp-ports"].members == ("172.17.0.2,udp:53", "172.17.0.2,tcp:80")


@pytest.mark.parametrize(
    ("document", "said"),
    [
        ('{"nftables": [1]}', "not an object"),
        ('{"nftables": [{"table": {"family": "ip", "name": "x"}, "chain": {}}]}', "one kind"),
        ('{"nftables": [{"tabel": {"family": "ip", "name": "x"}}]}', "unknown kind"),
        ('{"nftables": [{"table": ["ip", "x"]}]}', "not an object"),
        ('{"nftables": [{"table": {"family": "ip"}}]}', "has no name"),
        ('{"nftables": [{"table": {"family": 2, "name": "x"}}]}', "family is not a str"),
        ('{"nftables": [{"table": {"family": "ipx", "name": "x"}}]}', "not an nftables family"),
        ('{"nftables": [{"chain": {"family": "ip", "table": "t", "name": "c", "hook": 1}}]}',
         "hook is not a str"),
        ('{"nftables": [{"chain": {"family": "ip", "table": "t", "name": "c", "prio": "0"}}]}',
         "prio is not a int"),
        ('{"nftables": [{"chain": {"family": "ip", "table": "t", "name": "c", "prio": true}}]}',
         "prio is not a int"),
    ],
)  # fmt: skip
def test_nft_document_nft_could_not_have_printed_raises(document, said) -> None:
    with pytest.raises(ValueError, match=said):
        parse_nft_ruleset(document)


def test_nft_lists_every_table() -> None:
    info = parse_nft_ruleset(read("tools", "nft-ruleset-iptables-only.json"))
    assert set(info.tables) == {"ip filter", "bridge filter"}
    assert "ip filter" in parse_nft_ruleset(read("tools", "nft-ruleset.json")).tables


@given(st.text(alphabet=st.sampled_from(list("-Aab01 .:/!\t,+_=#*\x0b\xa0")), max_size=60))
def test_the_plain_split_is_shlex_for_lines_without_quotes_or_backslashes(line):
    # The fast path must split exactly where shlex would (iptables-restore splits like a shell).
    assert [token.value for token in _tokenize(line)] == shlex.split(line)


@given(st.text(alphabet=st.sampled_from(list('-Aab01 .:/!\t"_=#')), max_size=60))
def test_the_double_quote_split_is_shlex_for_lines_without_backslashes(line):
    # Lines with double quotes but no backslash or single quote take a path without shlex: it
    # must give shlex's words and mark the same words quoted as the shlex path does.
    try:
        expected = shlex.split(line)
    except ValueError:  # an unbalanced quote: the shlex path raises too
        with pytest.raises(ValueError):
            _tokenize(line)
        return
    tokens = _tokenize(line)
    assert [token.value for token in tokens] == expected
    raw = shlex.shlex(line, posix=False)
    raw.whitespace_split, raw.commenters = True, ""
    words = list(raw)
    if len(words) == len(expected):
        assert [token.quoted for token in tokens] == ['"' in word for word in words]
