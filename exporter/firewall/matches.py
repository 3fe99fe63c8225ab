"""What each match option decides about one packet: True, False, or None (cannot know).

One table per family maps (module, option) to a decider; an option missing from the table is
undecidable, so the evaluator explores both outcomes and says "unknown" when they differ. Adding a
match is adding one entry here.

Address options are kept apart (ADDRESS_OPTIONS): flows.py asks them about container addresses
alone, to group containers that every rule treats alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from ipaddress import ip_address, ip_network
from typing import Literal

from exporter.firewall.rules import IPSet, Option
from exporter.model import IPAddress, IPNetwork

Tri = bool | None
Side = Literal["src", "dst"]

# Linux's default net.ipv4.ip_local_port_range: the client side of a new connection.
EPHEMERAL_PORTS = (32768, 60999)

PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "ipv6-icmp": 58, "icmpv6": 58}


@dataclass(frozen=True)
class Packet:
    """One packet of a flow between two containers on one bridge."""

    family: Literal["ipv4", "ipv6"]
    src: IPAddress
    dst: IPAddress
    in_iface: str
    out_iface: str
    # "tcp", "udp", "sctp", or "arp" (an ARP frame, seen by the bridge family only).
    protocol: str
    # A port, or None for "some ephemeral port" (the client side).
    sport: int | None
    dport: int | None
    # Conntrack state as iptables names it: NEW for the first packet, ESTABLISHED for a reply.
    state: str = "NEW"
    reply: bool = False
    # TCP flags; None: SYN for a first packet, SYN-ACK for a reply.
    flags: frozenset[str] | None = None

    @property
    def tcp_flags(self) -> frozenset[str]:
        if self.flags is not None:
            return self.flags
        return frozenset({"SYN", "ACK"} if self.reply else {"SYN"})


@dataclass(frozen=True)
class MatchContext:
    # Sets by name; None when they could not be read (every set match is then undecidable).
    ipsets: dict[str, IPSet] | None
    # The builtin chain and table being walked (PREROUTING, raw, ...); "" when not walking one.
    hook: str = ""
    table: str = ""
    # Each set's members parsed once, by set name (see _in_set): shared by every context made
    # from this one with replace(), and by every packet of a check that passes the same dict.
    set_members: dict[str, SetMembers | None] = field(
        default_factory=dict, compare=False, repr=False
    )


Decider = Callable[[Option, Packet, MatchContext], Tri]
AddressDecider = Callable[[Option, IPAddress, MatchContext], Tri]


def _negate(option: Option, value: Tri) -> Tri:
    if value is None or not option.negated:
        return value
    return not value


def _arg(option: Option) -> str | None:
    """The single argument, also for the old `-s ! 1.2.3.4` form the parser may leave as args."""
    args = [a for a in option.args if a != "!"]
    return args[0] if len(args) == 1 else None


# ---- addresses -------------------------------------------------------------------------------


@lru_cache(maxsize=65536)
def _network(text: str) -> IPNetwork | None:
    """Parsed once per distinct text: a check asks about the same rule for many containers."""
    try:
        return ip_network(text, strict=False)
    except ValueError:
        try:  # ebtables may print an address with a dotted mask or none
            return ip_network(text.split("/")[0], strict=False)
        except ValueError:
            return None


def host_address(option: Option) -> IPAddress | None:
    """The single address an address option names, if it names exactly one."""
    text = _arg(option)
    network = _network(text) if text else None
    return network.network_address if network and network.num_addresses == 1 else None


def in_network(option: Option, address: IPAddress, _: MatchContext) -> Tri:
    text = _arg(option)
    network = _network(text) if text else None
    if network is None:
        return None
    if network.version != address.version:
        return False
    return _negate(option, address in network)


def _in_range(option: Option, address: IPAddress, _: MatchContext) -> Tri:
    text = _arg(option)
    if text is None or "-" not in text:
        return None
    low, high = text.split("-", 1)
    try:
        first, last = ip_address(low), ip_address(high)
    except ValueError:
        return None
    if first.version != address.version:
        return False
    return _negate(option, first <= address <= last)  # type: ignore[operator]


@dataclass(frozen=True)
class SetMembers:
    """An address set's members parsed once: a set match is asked about every container and
    every packet, and parsing each member again each time was most of a check on real hosts.

    `hosts` and `networks` hold every member when all are addresses or prefixes (the order of
    members does not matter then). Otherwise `ordered` keeps each member as parsed, in order, for
    the member-by-member scan whose first hit or first unreadable member decides."""

    hosts: frozenset[IPAddress] = frozenset()
    networks: tuple[IPNetwork, ...] = ()
    # (network, None), ((low, high), None) for a range, or (None, None) for an unreadable member.
    ordered: tuple | None = None

    def contains(self, address: IPAddress) -> Tri:
        if self.ordered is None:
            return address in self.hosts or any(
                network.version == address.version and address in network
                for network in self.networks
            )
        return _scan(self.ordered, address)


def _scan(members: tuple, address: IPAddress) -> Tri:
    """Member by member, in the order the set lists them: the first hit or unreadable member
    decides."""
    for network, bounds in members:
        if network is not None:
            if network.version == address.version and address in network:
                return True
            continue
        if bounds is None:
            return None
        try:
            if bounds[0] <= address <= bounds[1]:
                return True
        except TypeError:  # a range of the other family
            return None
    return False


def _parse_members(found: IPSet) -> SetMembers | None:
    """None when the set's entries need more than an address to decide."""
    if found.type not in ("hash:ip", "hash:net", "bitmap:ip"):
        return None  # multi-dimension sets (ip,port ...) need more than an address
    if any(" " in member for member in found.members):
        return None  # nomatch entries and member options: not decided here
    ordered = []
    for member in found.members:
        try:
            ordered.append((ip_network(member, strict=False), None))
        except ValueError:
            ordered.append((None, _range(member)))
    if all(network is not None for network, _ in ordered):
        networks = [network for network, _ in ordered]
        return SetMembers(
            hosts=frozenset(n.network_address for n in networks if n.num_addresses == 1),
            networks=tuple(n for n in networks if n.num_addresses != 1),
        )
    return SetMembers(ordered=tuple(ordered))


def _range(member: str) -> tuple[IPAddress, IPAddress] | None:
    """A bitmap/hash range "a-b"; None for anything else."""
    if "-" not in member:
        return None
    low, high = member.split("-", 1)
    try:
        return ip_address(low), ip_address(high)
    except ValueError:
        return None


def _in_set(option: Option, address: IPAddress, ctx: MatchContext) -> Tri:
    if ctx.ipsets is None or len(option.args) != 2:
        return None
    name = option.args[0]
    found = ctx.ipsets.get(name)
    if found is None or not found.type.startswith(("hash:ip", "hash:net", "bitmap:ip")):
        return None
    if name not in ctx.set_members:
        ctx.set_members[name] = _parse_members(found)
    members = ctx.set_members[name]
    return None if members is None else _negate(option, members.contains(address))


def _set_side(option: Option) -> Side | None:
    if len(option.args) != 2 or option.args[1] not in ("src", "dst"):
        return None
    return option.args[1]  # type: ignore[return-value]


# (module, option) -> (side, decider). For set, the side is in the option's flags (see side_of).
ADDRESS_OPTIONS: dict[tuple[str, str], tuple[Side | None, AddressDecider]] = {
    ("", "-s"): ("src", in_network),
    ("", "-d"): ("dst", in_network),
    ("iprange", "--src-range"): ("src", _in_range),
    ("iprange", "--dst-range"): ("dst", _in_range),
    ("set", "--match-set"): (None, _in_set),
}

BRIDGE_ADDRESS_OPTIONS: dict[tuple[str, str], tuple[Side | None, AddressDecider]] = {
    ("", "--ip-src"): ("src", in_network),
    ("", "--ip-dst"): ("dst", in_network),
    ("", "--ip-source"): ("src", in_network),
    ("", "--ip-destination"): ("dst", in_network),
    ("", "--ip6-src"): ("src", in_network),
    ("", "--ip6-dst"): ("dst", in_network),
    ("", "--ip6-source"): ("src", in_network),
    ("", "--ip6-destination"): ("dst", in_network),
    ("", "--arp-ip-src"): ("src", in_network),
    ("", "--arp-ip-dst"): ("dst", in_network),
}


def side_of(module: str, option: Option, table: dict) -> Side | None:
    side, _ = table[(module, option.name)]
    return side if side is not None else _set_side(option)


def _address_decider(side: Side | None, decide: AddressDecider) -> Decider:
    def decider(option: Option, packet: Packet, ctx: MatchContext) -> Tri:
        which = side or _set_side(option)
        if which is None:
            return None
        return decide(option, packet.src if which == "src" else packet.dst, ctx)

    return decider


# ---- interfaces, protocols, ports ------------------------------------------------------------


def _iface_matches(pattern: str, name: str) -> bool:
    if pattern.endswith("+"):
        return name.startswith(pattern[:-1])
    return name == pattern


def _iface(which: Literal["in", "out"]) -> Decider:
    def decider(option: Option, packet: Packet, _: MatchContext) -> Tri:
        pattern = _arg(option)
        if pattern is None:
            return None
        name = packet.in_iface if which == "in" else packet.out_iface
        return _negate(option, _iface_matches(pattern, name))

    return decider


# The options naming the interfaces a packet enters and leaves by (the bridge for a bridged
# packet; ebtables' -i and -o name bridge ports, --logical-in and --logical-out the bridge).
INTERFACE_OPTIONS = {("", "-i"), ("", "-o")}
BRIDGE_INTERFACE_OPTIONS = {("", "--logical-in"), ("", "--logical-out")}


def required_interface(option: Option) -> str | None:
    """The one interface an interface option allows; None when it allows more (negated, or a
    wildcard such as `veth+`)."""
    if option.negated or len(option.args) != 1 or option.args[0] == "!":
        return None
    name = option.args[0]
    return None if name.endswith("+") else name


def on_bridge(option: Option, bridge: str) -> Tri:
    """What an interface option decides for a packet that enters and leaves by `bridge`."""
    pattern = _arg(option)
    return None if pattern is None else _negate(option, _iface_matches(pattern, bridge))


def _protocol(option: Option, packet: Packet, _: MatchContext) -> Tri:
    text = _arg(option)
    if text is None:
        return None
    text = text.lower()
    if text in ("all", "0"):
        return _negate(option, True)
    if packet.protocol == "arp":
        return _negate(option, False)
    number = PROTOCOL_NUMBERS.get(packet.protocol)
    if text.isdigit():
        return _negate(option, int(text) == number)
    if text not in PROTOCOL_NUMBERS:
        return None
    return _negate(option, PROTOCOL_NUMBERS[text] == number)


def _port_ranges(text: str) -> list[tuple[int, int]] | None:
    ranges = []
    for part in text.split(","):
        low, _, high = part.partition(":")
        try:
            first = int(low) if low else 0
            last = int(high) if high else (65535 if part.endswith(":") else first)
        except ValueError:
            return None
        ranges.append((first, last))
    return ranges


def port_in(ranges: list[tuple[int, int]], port: int | None) -> Tri:
    """Whether a port (None: any ephemeral port) falls in the ranges; None when only some do."""
    if port is not None:
        return any(first <= port <= last for first, last in ranges)
    low, high = EPHEMERAL_PORTS
    if any(first <= low and high <= last for first, last in ranges):
        return True
    if all(last < low or first > high for first, last in ranges):
        return False
    return None


def _port(which: Literal["sport", "dport", "any"]) -> Decider:
    def decider(option: Option, packet: Packet, _: MatchContext) -> Tri:
        text = _arg(option)
        ranges = _port_ranges(text) if text else None
        if ranges is None:
            return None
        if which == "any":
            s, d = port_in(ranges, packet.sport), port_in(ranges, packet.dport)
            value: Tri = True if (s or d) else (None if s is None or d is None else False)
        else:
            value = port_in(ranges, packet.sport if which == "sport" else packet.dport)
        return _negate(option, value)

    return decider


def _syn(option: Option, packet: Packet, _: MatchContext) -> Tri:
    return _negate(option, packet.protocol == "tcp" and packet.tcp_flags == frozenset({"SYN"}))


def _tcp_flags(option: Option, packet: Packet, _: MatchContext) -> Tri:
    if len(option.args) != 2:
        return None
    mask, wanted = ({f for f in arg.upper().split(",") if f} for arg in option.args)
    if "ALL" in mask:
        mask = {"SYN", "ACK", "FIN", "RST", "URG", "PSH"}
    if "NONE" in wanted:
        wanted = set()
    return _negate(option, packet.tcp_flags & mask == wanted & mask)


# The raw table runs before conntrack (priority -300 < -200): a packet there has no conntrack
# entry yet, which xt_conntrack and xt_state see as INVALID.
UNTRACKED_TABLE = "raw"


def _ctstate(option: Option, packet: Packet, ctx: MatchContext) -> Tri:
    text = _arg(option)
    if text is None:
        return None
    states = {s.upper() for s in text.split(",")}
    if not states <= {"NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED", "SNAT", "DNAT"}:
        return None
    state = "INVALID" if ctx.table == UNTRACKED_TABLE else packet.state
    return _negate(option, state in states)


def conntrack_without_entry(options: tuple[Option, ...], packet: Packet, ctx: MatchContext) -> Tri:
    """`-m conntrack` on a packet without a conntrack entry (raw table): xt_conntrack tests
    --ctstate alone (as INVALID) and ignores its other options; without --ctstate it never
    matches."""
    states = [o for o in options if o.name == "--ctstate"]
    if not states:
        return False
    result: Tri = True
    for option in states:
        value = _ctstate(option, packet, ctx)
        if value is False:
            return False
        if value is None:
            result = None
    return result


def _ctdir(option: Option, packet: Packet, _: MatchContext) -> Tri:
    text = (_arg(option) or "").upper()
    if text not in ("ORIGINAL", "REPLY"):
        return None
    return _negate(option, (text == "REPLY") == packet.reply)


def _addrtype(option: Option, packet: Packet, _: MatchContext) -> Tri:
    # A container's address belongs to the container's namespace, not to this host: to the host's
    # routing it is a plain unicast address.
    text = _arg(option)
    if text is None:
        return None
    return _negate(option, "UNICAST" in {t.upper() for t in text.split(",")})


def _always(value: bool) -> Decider:
    def decider(option: Option, packet: Packet, _: MatchContext) -> Tri:
        return _negate(option, value)

    return decider


def _fragment(option: Option, packet: Packet, _: MatchContext) -> Tri:
    return _negate(option, False)  # a connection's first packet is never a later fragment


_TRUE, _FALSE = _always(True), _always(False)


def _physdev_out_known(option: Option, packet: Packet, ctx: MatchContext) -> Tri:
    # xt_physdev: the bridge chooses the output port only after PREROUTING, so -is-bridged and
    # -is-out are false there and true in FORWARD and POSTROUTING.
    if ctx.hook not in ("PREROUTING", "FORWARD", "POSTROUTING"):
        return None
    return _negate(option, ctx.hook != "PREROUTING")


MATCHERS: dict[tuple[str, str], Decider] = {
    **{key: _address_decider(side, fn) for key, (side, fn) in ADDRESS_OPTIONS.items()},
    ("", "-i"): _iface("in"),
    ("", "-o"): _iface("out"),
    ("", "-p"): _protocol,
    ("", "-f"): _fragment,
    ("comment", "--comment"): _TRUE,
    ("conntrack", "--ctstate"): _ctstate,
    ("conntrack", "--ctdir"): _ctdir,
    ("state", "--state"): _ctstate,
    ("addrtype", "--src-type"): _addrtype,
    ("addrtype", "--dst-type"): _addrtype,
    ("physdev", "--physdev-is-bridged"): _physdev_out_known,
    ("physdev", "--physdev-is-in"): _TRUE,
    ("physdev", "--physdev-is-out"): _physdev_out_known,
    ("multiport", "--dports"): _port("dport"),
    ("multiport", "--destination-ports"): _port("dport"),
    ("multiport", "--sports"): _port("sport"),
    ("multiport", "--source-ports"): _port("sport"),
    ("multiport", "--ports"): _port("any"),
}
for _module in ("tcp", "udp", "sctp"):
    MATCHERS[(_module, "--dport")] = _port("dport")
    MATCHERS[(_module, "--destination-port")] = _port("dport")
    MATCHERS[(_module, "--sport")] = _port("sport")
    MATCHERS[(_module, "--source-port")] = _port("sport")
MATCHERS[("tcp", "--syn")] = _syn
MATCHERS[("tcp", "--tcp-flags")] = _tcp_flags


# ---- the bridge family (ebtables) ------------------------------------------------------------

ETHERTYPES = {
    "ipv4": {"ipv4", "0x0800", "0x800"},
    "ipv6": {"ipv6", "0x86dd"},
    "arp": {"arp", "0x0806", "0x806"},
}


def _ethertype(option: Option, packet: Packet, _: MatchContext) -> Tri:
    text = (_arg(option) or "").lower()
    if not text:
        return None
    kind = "arp" if packet.protocol == "arp" else packet.family
    if any(text in names for names in ETHERTYPES.values()):
        return _negate(option, text in ETHERTYPES[kind])
    return None


def _bridge_port(option: Option, packet: Packet, _: MatchContext) -> Tri:
    # Bridge ports are the containers' veth ends; Docker names them veth*, nothing finer is known.
    pattern = _arg(option)
    if pattern in ("veth+", "+"):
        return _negate(option, True)
    return None


def _bridge_only(decider: AddressDecider, side: Side, ip: bool) -> Decider:
    """ip-* options apply to IP packets only; arp-* options to ARP frames only."""

    def wrapped(option: Option, packet: Packet, ctx: MatchContext) -> Tri:
        if (packet.protocol == "arp") == ip:
            return None  # ebtables refuses such a rule without the matching -p
        return decider(option, packet.src if side == "src" else packet.dst, ctx)

    return wrapped


def _pkttype(packet: Packet) -> str:
    # An ARP request goes to the broadcast address; every other frame of a flow is unicast to the
    # other container, which to the bridge is "otherhost".
    return "broadcast" if packet.protocol == "arp" and not packet.reply else "otherhost"


def _ip_proto(option: Option, packet: Packet, ctx: MatchContext) -> Tri:
    if packet.protocol == "arp":
        return None
    return _protocol(option, packet, ctx)


BRIDGE_MATCHERS: dict[tuple[str, str], Decider] = {
    ("", "-p"): _ethertype,
    ("", "--protocol"): _ethertype,
    ("", "-i"): _bridge_port,
    ("", "-o"): _bridge_port,
    ("", "--in-interface"): _bridge_port,
    ("", "--out-interface"): _bridge_port,
    ("", "--logical-in"): _iface("in"),
    ("", "--logical-out"): _iface("out"),
    ("", "--ip-proto"): _ip_proto,
    ("", "--ip-protocol"): _ip_proto,
    ("", "--ip6-proto"): _ip_proto,
    ("", "--ip6-protocol"): _ip_proto,
    ("", "--ip-sport"): _port("sport"),
    ("", "--ip-dport"): _port("dport"),
    ("", "--ip6-sport"): _port("sport"),
    ("", "--ip6-dport"): _port("dport"),
    ("", "--pkttype-type"): lambda o, p, c: _negate(o, (_arg(o) or "").lower() == _pkttype(p)),
}
for (_module, _name), (_side, _fn) in BRIDGE_ADDRESS_OPTIONS.items():
    BRIDGE_MATCHERS[(_module, _name)] = _bridge_only(_fn, _side, ip=not _name.startswith("--arp"))
