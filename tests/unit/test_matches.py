"""Every match decider against netfilter's meaning of the option (iptables-extensions(8),
ebtables(8)): True, False, or None where the kernel's answer depends on what is not known."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from exporter.firewall.matches import (
    BRIDGE_MATCHERS,
    EPHEMERAL_PORTS,
    MATCHERS,
    MatchContext,
    Packet,
    host_address,
    in_network,
    port_in,
)
from exporter.firewall.rules import IPSet
from tests.unit.core_builders import NO_SETS, opt, packet

# A client's first packet to web:80, web's reply, a UDP query, an ARP request, an IPv6 packet.
FIRST = packet("172.17.0.3", "172.17.0.2", "tcp", 80)
REPLY = packet("172.17.0.2", "172.17.0.3", "tcp", None, 80, state="ESTABLISHED", reply=True)
UDP = packet("172.17.0.3", "172.17.0.2", "udp", 53)
SCTP = packet("172.17.0.3", "172.17.0.2", "sctp", 9)
ARP = packet("172.17.0.3", "172.17.0.2", "arp", None)
V6 = packet("fd00::3", "fd00::2", "tcp", 80)

# physdev's output port is known only from FORWARD on: the hook decides.
PREROUTING, FORWARD, POSTROUTING = (
    MatchContext({}, hook) for hook in ("PREROUTING", "FORWARD", "POSTROUTING")
)
SETS = MatchContext(
    {
        "web": IPSet("web", "hash:ip", "inet", ("172.17.0.2",)),
        "nets": IPSet("nets", "hash:net", "inet", ("10.0.0.0/8", "172.17.0.0/30")),
        "range": IPSet("range", "bitmap:ip", "inet", ("172.17.0.2-172.17.0.3",)),
        "holes": IPSet("holes", "hash:net", "inet", ("172.17.0.0/16", "172.17.0.2 nomatch")),
        "pairs": IPSet("pairs", "hash:ip,port", "inet", ("172.17.0.2,tcp:80",)),
        "six": IPSet("six", "hash:net", "inet6", ("fd00::/64",)),
    }
)


def row(module, name, args, pkt, expected, negated=False, ctx=NO_SETS):
    args = tuple(args.split()) if isinstance(args, str) else args
    ident = f"{module or 'builtin'} {'! ' if negated else ''}{name} {' '.join(args)} -> {expected}"
    return pytest.param(module, opt(name, *args, negated=negated), pkt, ctx, expected, id=ident)


IPTABLES_ROWS = [
    # addresses: a bare address is a /32; negation flips; another family never matches
    row("", "-s", "172.17.0.3/32", FIRST, True),
    row("", "-s", "172.17.0.3", FIRST, True),
    row("", "-s", "172.17.0.0/16", FIRST, True),
    row("", "-s", "172.17.0.2/32", FIRST, False),
    row("", "-s", "172.17.0.2/32", FIRST, True, negated=True),
    row("", "-s", "10.0.0.0/255.0.0.0", FIRST, False),
    row("", "-s", "not-an-address", FIRST, None),
    row("", "-s", "", FIRST, None),
    row("", "-d", "172.17.0.2/32", FIRST, True),
    row("", "-d", "172.17.0.2/32", REPLY, False),
    row("", "-d", "fd00::2/128", V6, True),
    row("", "-d", "172.17.0.2/32", V6, False),
    row("iprange", "--src-range", "172.17.0.2-172.17.0.9", FIRST, True),
    row("iprange", "--src-range", "172.17.0.4-172.17.0.9", FIRST, False),
    row("iprange", "--src-range", "172.17.0.4-172.17.0.9", FIRST, True, negated=True),
    row("iprange", "--src-range", "172.17.0.4", FIRST, None),
    row("iprange", "--dst-range", "172.17.0.2-172.17.0.2", FIRST, True),
    row("iprange", "--dst-range", "172.17.0.x-172.17.0.9", FIRST, None),
    # ipset: membership by side; sets it cannot read or judge are undecidable
    row("set", "--match-set", "web dst", FIRST, True, ctx=SETS),
    row("set", "--match-set", "web src", FIRST, False, ctx=SETS),
    row("set", "--match-set", "web src", FIRST, True, negated=True, ctx=SETS),
    row("set", "--match-set", "nets src", FIRST, True, ctx=SETS),
    row("set", "--match-set", "range dst", FIRST, True, ctx=SETS),
    row("set", "--match-set", "six src", FIRST, False, ctx=SETS),
    row("set", "--match-set", "holes dst", FIRST, None, ctx=SETS),  # nomatch entry
    row("set", "--match-set", "pairs dst", FIRST, None, ctx=SETS),  # needs the port too
    row("set", "--match-set", "web src,dst", FIRST, None, ctx=SETS),
    row("set", "--match-set", "absent dst", FIRST, None, ctx=SETS),
    row("set", "--match-set", "web dst", FIRST, None, ctx=MatchContext(None)),
    # interfaces: exact name or prefix with +
    row("", "-i", "docker0", FIRST, True),
    row("", "-i", "docker+", FIRST, True),
    row("", "-i", "br-+", FIRST, False),
    row("", "-o", "docker0", FIRST, False, negated=True),
    row("", "-o", "eth0", FIRST, True, negated=True),
    row("", "-o", (), FIRST, None),
    # protocols by name or number
    row("", "-p", "tcp", FIRST, True),
    row("", "-p", "TCP", FIRST, True),
    row("", "-p", "6", FIRST, True),
    row("", "-p", "udp", FIRST, False),
    row("", "-p", "udp", FIRST, True, negated=True),
    row("", "-p", "all", UDP, True),
    row("", "-p", "icmp", FIRST, False),
    row("", "-p", "gre-ish", FIRST, None),
    row("", "-f", (), FIRST, False),
    row("", "-f", (), FIRST, True, negated=True),
    row("comment", "--comment", "anything", FIRST, True),
    # conntrack: the first packet is NEW and ORIGINAL, the reply ESTABLISHED and REPLY
    row("conntrack", "--ctstate", "NEW", FIRST, True),
    row("conntrack", "--ctstate", "RELATED,ESTABLISHED", FIRST, False),
    row("conntrack", "--ctstate", "RELATED,ESTABLISHED", REPLY, True),
    row("conntrack", "--ctstate", "INVALID", REPLY, True, negated=True),
    row("conntrack", "--ctstate", "NEW,BOGUS", FIRST, None),
    row("conntrack", "--ctdir", "ORIGINAL", FIRST, True),
    row("conntrack", "--ctdir", "REPLY", FIRST, False),
    row("conntrack", "--ctdir", "REPLY", REPLY, True),
    row("conntrack", "--ctdir", "SIDEWAYS", REPLY, None),
    row("state", "--state", "NEW", FIRST, True),
    row("state", "--state", "ESTABLISHED", FIRST, False),
    # a container address is plain unicast to the host's routing, never LOCAL
    row("addrtype", "--src-type", "UNICAST", FIRST, True),
    row("addrtype", "--dst-type", "LOCAL", FIRST, False),
    row("addrtype", "--dst-type", "LOCAL", FIRST, True, negated=True),
    row("addrtype", "--dst-type", (), FIRST, None),
    row("physdev", "--physdev-is-bridged", (), FIRST, True, ctx=FORWARD),
    row("physdev", "--physdev-is-bridged", (), FIRST, True, ctx=POSTROUTING),
    row("physdev", "--physdev-is-bridged", (), FIRST, False, ctx=PREROUTING),
    row("physdev", "--physdev-is-bridged", (), FIRST, None),
    row("physdev", "--physdev-is-in", (), FIRST, True),
    row("physdev", "--physdev-is-out", (), FIRST, True, ctx=FORWARD),
    row("physdev", "--physdev-is-out", (), FIRST, False, ctx=PREROUTING),
    row("physdev", "--physdev-is-bridged", (), FIRST, False, negated=True, ctx=FORWARD),
    # ports: lists, ranges, open ends; the client's port is "some ephemeral port"
    row("multiport", "--dports", "22,80,443", FIRST, True),
    row("multiport", "--dports", "8000:9000", FIRST, False),
    row("multiport", "--destination-ports", "1:100", FIRST, True),
    row("multiport", "--sports", "1024:65535", FIRST, True),
    row("multiport", "--sports", "80", FIRST, False),
    row("multiport", "--source-ports", "40000:50000", FIRST, None),
    row("multiport", "--ports", "80", FIRST, True),
    row("multiport", "--ports", "80", REPLY, True),
    row("multiport", "--ports", "443", FIRST, False),
    row("multiport", "--ports", "443,40000", FIRST, None),
    row("multiport", "--ports", "80", FIRST, False, negated=True),
    row("multiport", "--dports", "80,http", FIRST, None),
    row("tcp", "--dport", "80", FIRST, True),
    row("tcp", "--dport", "81", FIRST, False),
    row("tcp", "--dport", "81", FIRST, True, negated=True),
    row("tcp", "--dport", ":100", FIRST, True),
    row("tcp", "--dport", "100:", FIRST, False),
    row("tcp", "--destination-port", "80", FIRST, True),
    row("tcp", "--sport", "80", REPLY, True),
    row("tcp", "--sport", "1024:", FIRST, True),
    row("tcp", "--source-port", "32768", FIRST, None),
    row("tcp", "--dport", "x", FIRST, None),
    row("udp", "--dport", "53", UDP, True),
    row("udp", "--destination-port", "54", UDP, False),
    row("udp", "--sport", ":1023", UDP, False),
    row("udp", "--source-port", "0:65535", UDP, True),
    row("sctp", "--dport", "9", SCTP, True),
    row("sctp", "--destination-port", "10", SCTP, False),
    row("sctp", "--sport", "1:10", SCTP, False),
    row("sctp", "--source-port", "32768:60999", SCTP, True),
    # TCP flags: the first packet is a bare SYN, the reply SYN+ACK
    row("tcp", "--syn", (), FIRST, True),
    row("tcp", "--syn", (), REPLY, False),
    row("tcp", "--syn", (), REPLY, True, negated=True),
    row("tcp", "--tcp-flags", "SYN,ACK SYN", FIRST, True),
    row("tcp", "--tcp-flags", "SYN,ACK SYN", REPLY, False),
    row("tcp", "--tcp-flags", "ALL SYN,ACK", REPLY, True),
    row("tcp", "--tcp-flags", "RST RST", FIRST, False),
    row("tcp", "--tcp-flags", "ALL NONE", FIRST, False),
    row("tcp", "--tcp-flags", "SYN", FIRST, None),
]

BRIDGE_ROWS = [
    row("", "-p", "IPv4", FIRST, True),
    row("", "-p", "0x0800", FIRST, True),
    row("", "-p", "IPv4", ARP, False),
    row("", "-p", "IPv4", ARP, True, negated=True),
    row("", "--protocol", "ARP", ARP, True),
    row("", "--protocol", "IPv6", V6, True),
    row("", "-p", "802_1Q", FIRST, None),
    row("", "-i", "veth+", FIRST, True),
    row("", "-i", "eth0", FIRST, None),
    row("", "-o", "veth+", FIRST, True),
    row("", "--in-interface", "+", FIRST, True),
    row("", "--out-interface", "vethabc", FIRST, None),
    row("", "--logical-in", "docker0", FIRST, True),
    row("", "--logical-out", "br-+", FIRST, False),
    row("", "--ip-proto", "tcp", FIRST, True),
    row("", "--ip-protocol", "udp", FIRST, False),
    row("", "--ip-proto", "tcp", ARP, None),
    row("", "--ip6-proto", "tcp", V6, True),
    row("", "--ip6-protocol", "17", V6, False),
    row("", "--ip-sport", "80", REPLY, True),
    row("", "--ip-dport", "80", FIRST, True),
    row("", "--ip6-sport", "80", V6, False),
    row("", "--ip6-dport", "443", V6, False),
    row("", "--ip-src", "172.17.0.3", FIRST, True),
    row("", "--ip-src", "172.17.0.3", FIRST, False, negated=True),
    row("", "--ip-dst", "172.17.0.0/16", FIRST, True),
    row("", "--ip-source", "172.17.0.2", FIRST, False),
    row("", "--ip-destination", "172.17.0.2/255.255.255.255", FIRST, True),
    row("", "--ip-dst", "172.17.0.2", ARP, None),  # ebtables needs -p IPv4 for it
    row("", "--ip6-src", "fd00::3", V6, True),
    row("", "--ip6-dst", "fd00::3", V6, False),
    row("", "--ip6-source", "fd00::/64", V6, True),
    row("", "--ip6-destination", "fd00::2/128", V6, True),
    row("", "--arp-ip-src", "172.17.0.3", ARP, True),
    row("", "--arp-ip-dst", "172.17.0.3", ARP, False),
    row("", "--arp-ip-src", "172.17.0.3", FIRST, None),  # ebtables needs -p ARP for it
    # a bridged frame between two containers is addressed to another host's MAC
    row("", "--pkttype-type", "otherhost", FIRST, True),
    row("", "--pkttype-type", "host", FIRST, False),
]


@pytest.mark.parametrize("module,option,pkt,ctx,expected", IPTABLES_ROWS)
def test_iptables_match(module, option, pkt, ctx, expected):
    assert MATCHERS[(module, option.name)](option, pkt, ctx) is expected


@pytest.mark.parametrize("module,option,pkt,ctx,expected", BRIDGE_ROWS)
def test_ebtables_match(module, option, pkt, ctx, expected):
    assert BRIDGE_MATCHERS[(module, option.name)](option, pkt, ctx) is expected


def _covered(rows) -> set[tuple[str, str]]:
    return {(p.values[0], p.values[1].name) for p in rows}


def test_every_iptables_matcher_has_a_row():
    assert set(MATCHERS) - _covered(IPTABLES_ROWS) == set()


def test_every_ebtables_matcher_has_a_row():
    assert set(BRIDGE_MATCHERS) - _covered(BRIDGE_ROWS) == set()


def test_arp_request_is_a_broadcast_frame():
    # The first ARP request of a flow goes to ff:ff:ff:ff:ff:ff, so ebtables' pkttype match sees
    # "broadcast"; `--pkttype-type broadcast -j DROP` stops ARP and with it the whole flow.
    decide = BRIDGE_MATCHERS[("", "--pkttype-type")]
    assert decide(opt("--pkttype-type", "broadcast"), ARP, NO_SETS) is True
    assert decide(opt("--pkttype-type", "otherhost"), ARP, NO_SETS) is False


# ---- ephemeral ports and address helpers -------------------------------------------------------


LOW, HIGH = EPHEMERAL_PORTS


@pytest.mark.parametrize(
    "ranges,port,expected",
    [
        ([(80, 80)], 80, True),
        ([(80, 80)], 81, False),
        ([(1, 65535)], None, True),
        ([(LOW, HIGH)], None, True),
        ([(1, 1023)], None, False),
        ([(HIGH + 1, 65535), (1, LOW - 1)], None, False),
        ([(LOW + 1, HIGH)], None, None),  # only some ephemeral ports
        ([(40000, 40000)], None, None),
        ([(1, 1023), (LOW, 65535)], None, True),
    ],
)
def test_port_in(ranges, port, expected):
    assert port_in(ranges, port) is expected


def test_in_network_and_host_address():
    web = ip_address("172.17.0.2")
    assert in_network(opt("-d", "172.17.0.0/16"), web, NO_SETS) is True
    assert in_network(opt("-d", "172.17.0.0/16", negated=True), web, NO_SETS) is False
    assert in_network(opt("-d", "fd00::/8"), web, NO_SETS) is False
    assert in_network(opt("-d", "garbage"), web, NO_SETS) is None
    assert host_address(opt("-s", "172.17.0.2/32")) == web
    assert host_address(opt("-s", "172.17.0.2")) == web
    assert host_address(opt("-s", "172.17.0.0/31")) is None
    assert host_address(opt("-s", "a", "b")) is None


def test_old_style_negation_argument_is_not_the_address():
    # iptables 1.4 printed `-s ! 1.2.3.4`; a parser may leave "!" among the args.
    option = opt("-s", "!", "172.17.0.3", negated=True)
    assert MATCHERS[("", "-s")](option, FIRST, NO_SETS) is False


def test_packet_flags_follow_the_direction():
    assert FIRST.tcp_flags == {"SYN"}
    assert REPLY.tcp_flags == {"SYN", "ACK"}
    assert isinstance(FIRST, Packet) and FIRST.family == "ipv4" and V6.family == "ipv6"
