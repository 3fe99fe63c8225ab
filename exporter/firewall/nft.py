"""Native nftables: `nft -j list ruleset` as a model, and one packet's walk through a base chain.

The model keeps every table nft lists except those iptables-nft and ebtables-nft own (they are
read through their save tools, see parse._xtables_table). A rule keeps its JSON expression list
as nft printed it (libnftables-json(5)); the walk interprets the expressions it knows and treats
every other one as undecidable, never as a guess.

The walk is three-valued like matches.py: a match is True, False or None (cannot know). Where a
match is None the walk takes both branches, and the caller gives a verdict only when every
branch agrees. Statements that rewrite the packet (nat, notrack, payload changes) or that nft
cannot show (`xt`) end their branch as UNKNOWN: the packet after them is not the one asked about.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from typing import Any

from exporter.firewall.matches import EPHEMERAL_PORTS, PROTOCOL_NUMBERS, Packet, Tri

# Hooks a bridged container-to-container packet meets, in the order it meets them.
BRIDGED_HOOKS = ("prerouting", "forward", "postrouting")
# Hooks on the bridge ports themselves (netdev family, inet ingress): the port names are unknown.
PORT_HOOKS = frozenset({"ingress", "egress"})
MAX_DEPTH = 64
# Conntrack runs at prerouting priority -200 (NF_IP_PRI_CONNTRACK): earlier chains see no entry.
CONNTRACK_PRIORITY = -200

# Statements that neither end the walk nor change what later expressions see.
NOOP_STATEMENTS = frozenset({"counter", "log", "comment"})
# Statements that make the packet after them another packet (or one nft cannot describe).
REWRITING_STATEMENTS = frozenset(
    {"dnat", "snat", "masquerade", "redirect", "notrack", "xt", "tproxy", "queue", "dup", "fwd"}
)
# Statements that may or may not let the packet pass, depending on rates and counts.
UNDECIDABLE_STATEMENTS = frozenset({"limit", "quota", "ct count"})
VERDICTS = frozenset({"accept", "drop", "reject", "jump", "goto", "return", "continue"})

ETHER_TYPES = {"ipv4": "ip", "ipv6": "ip6", "arp": "arp"}


# Tables iptables-nft (ip, ip6) and ebtables-nft (bridge) create; their save tools print them.
IPTABLES_SAVE_TABLES = frozenset({"filter", "nat", "mangle", "raw", "security"})
EBTABLES_SAVE_TABLES = frozenset({"filter", "nat", "broute"})


def save_tool_table(family: str, name: str) -> bool:
    """Whether a table is one iptables-nft-save or ebtables-nft-save prints (the kernel keys a
    table by family and name, so a native table with such a name is that one too)."""
    if family in ("ip", "ip6"):
        return name in IPTABLES_SAVE_TABLES
    return family == "bridge" and name in EBTABLES_SAVE_TABLES


# ---- model -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NftRule:
    family: str
    table: str
    chain: str
    handle: int
    # The rule's expression list as nft printed it; read-only by convention.
    exprs: tuple[Any, ...] = ()
    # Set when the rule object has no expression list nft could have printed.
    error: str | None = None
    # The rule's comment (Docker 29 names its ICC and final drop rules this way).
    comment: str | None = None


@dataclass(frozen=True)
class NftChain:
    family: str
    table: str
    name: str
    rules: tuple[NftRule, ...] = ()
    # Base chains only: type (filter, nat, route), hook, priority number, policy.
    type: str | None = None
    hook: str | None = None
    prio: int | None = None
    policy: str | None = None
    # Device chains (netdev, inet ingress) name the devices they are bound to.
    devices: tuple[str, ...] = ()

    @property
    def base(self) -> bool:
        return self.hook is not None

    @property
    def label(self) -> str:
        return f"{self.family} {self.table} {self.name}"

    @property
    def passes_everything(self) -> bool:
        return not self.rules and self.policy in (None, "accept")


@dataclass(frozen=True)
class NftSet:
    """A named set or map; a map's elements are (key, value) pairs."""

    family: str
    table: str
    name: str
    type: str
    elements: tuple[Any, ...] = ()
    is_map: bool = False
    # Sets the packet path itself fills (dynamic, timeouts): their listing is a moment's view.
    dynamic: bool = False


@dataclass(frozen=True)
class NftRuleset:
    """The native tables: chains and sets by (family, table, name)."""

    chains: dict[tuple[str, str, str], NftChain] = field(default_factory=dict)
    sets: dict[tuple[str, str, str], NftSet] = field(default_factory=dict)

    def base_chains(self, hook: str) -> list[NftChain]:
        """Every base chain at `hook`, lowest priority first."""
        found = [c for c in self.chains.values() if c.hook == hook]
        return sorted(found, key=lambda c: (c.prio or 0, c.label))

    def port_chains(self) -> list[NftChain]:
        """Device chains that may see a bridged packet and are not empty with policy accept.

        Docker names a container's host-side interface veth*; a chain bound only to other
        devices (eth0, lo, the bridge itself: a frame bridged port to port never enters or
        leaves through the bridge device) never sees traffic between two containers.
        """
        return [
            c
            for c in self.chains.values()
            if c.hook in PORT_HOOKS
            and not c.passes_everything
            and (not c.devices or any(d.startswith("veth") for d in c.devices))
        ]


def build_ruleset(objects: list[dict], keep: Callable[[str, str], bool]) -> NftRuleset:
    """The model of the tables `keep(family, table)` accepts, from nft's object list.

    Rules come after their chain in nft's listing; a rule of a chain never listed is kept in a
    chain made for it (no hook: reachable only by a jump), never dropped.
    """
    chains: dict[tuple[str, str, str], NftChain] = {}
    rules: dict[tuple[str, str, str], list[NftRule]] = {}
    sets: dict[tuple[str, str, str], NftSet] = {}
    for item in objects:
        ((kind, body),) = item.items()
        family, table = body.get("family"), body.get("table")
        if kind not in ("chain", "rule", "set", "map") or not keep(family, table):
            continue
        if kind == "chain":
            chain = _chain(body)
            chains[(family, table, chain.name)] = chain
        elif kind == "rule":
            rule = _rule(body)
            rules.setdefault((family, table, rule.chain), []).append(rule)
        else:
            found = _set(body, is_map=kind == "map")
            sets[(family, table, found.name)] = found
    for key, chain_rules in rules.items():
        chain = chains.get(key) or NftChain(key[0], key[1], key[2])
        chains[key] = NftChain(
            chain.family, chain.table, chain.name, tuple(chain_rules), chain.type, chain.hook,
            chain.prio, chain.policy, chain.devices,
        )  # fmt: skip
    return NftRuleset(chains, sets)


def _chain(body: dict) -> NftChain:
    return NftChain(
        family=body["family"], table=body["table"], name=str(body["name"]),
        type=body.get("type"), hook=body.get("hook"), prio=body.get("prio", 0 if "hook" in body
        else None), policy=body.get("policy", "accept" if "hook" in body else None),
        devices=_devices(body.get("dev")),
    )  # fmt: skip


def _devices(dev: Any) -> tuple[str, ...]:
    """nft prints one device as a string, several as a list."""
    if isinstance(dev, str):
        return (dev,)
    return tuple(d for d in dev if isinstance(d, str)) if isinstance(dev, list) else ()


def _rule(body: dict) -> NftRule:
    exprs = body.get("expr")
    handle = body.get("handle") if isinstance(body.get("handle"), int) else 0
    error = None
    if not isinstance(exprs, list) or not all(isinstance(e, dict) and len(e) == 1 for e in exprs):
        exprs, error = [], "expression list not as nft prints it"
    comment = body.get("comment") if isinstance(body.get("comment"), str) else None
    return NftRule(
        body["family"],
        body["table"],
        str(body.get("chain", "")),
        handle,
        tuple(exprs),
        error,
        comment,
    )


def _set(body: dict, is_map: bool) -> NftSet:
    flags = body.get("flags") or []
    flags = [flags] if isinstance(flags, str) else flags if isinstance(flags, list) else []
    elements = body.get("elem") or []
    dynamic = "dynamic" in flags or "timeout" in flags or "timeout" in body
    return NftSet(
        body["family"], str(body.get("table")), str(body.get("name")), str(body.get("type")),
        tuple(elements) if isinstance(elements, list) else (), is_map, dynamic,
    )  # fmt: skip


def unsupported(ruleset: NftRuleset) -> list[str]:
    """What in the native tables makes flows unknown whatever the packet, one line each."""
    found = []
    for chain in ruleset.port_chains():
        found.append(f"{chain.label} hook {chain.hook} on the bridge ports is not evaluated")
    for chain in ruleset.chains.values():
        for rule in chain.rules:
            kinds = {next(iter(e)) for e in rule.exprs}
            if "xt" in kinds:
                found.append(f"{chain.label} rule {rule.handle} holds an xt expression")
            elif rule.error:
                found.append(f"{chain.label} rule {rule.handle}: {rule.error}")
    return found


# ---- address matches, for grouping containers (flows.py) ------------------------------------


@dataclass(frozen=True)
class AddressMatch:
    """One `ip/ip6 saddr/daddr OP RIGHT` of a native rule, a named set already resolved."""

    side: str  # "src" or "dst"
    op: str
    right: Any

    @property
    def negated(self) -> bool:
        return self.op == "!="

    @property
    def host(self) -> Any:
        """The one address an `==` or `!=` names (a plain address or a full-length prefix),
        else None: callers look members up by it instead of deciding each one."""
        if self.op not in ("==", "!=", "in"):
            return None
        right, length = self.right, None
        if isinstance(right, dict) and isinstance(right.get("prefix"), dict):
            right, length = right["prefix"].get("addr"), right["prefix"].get("len")
        if not isinstance(right, str):
            return None
        try:
            address = ip_address(right)
        except ValueError:
            return None
        return address if length in (None, address.max_prefixlen) else None

    def decide(self, address: Any) -> Tri:
        """Whether a packet from (src) or to (dst) `address` passes this match."""
        if self.right is None:
            return None  # a set filled from the packet path, or one not listed
        hit = _member("address", address, self.right)
        if hit is None or self.op in ("==", "in"):
            return hit
        return not hit if self.op == "!=" else None


def address_matches(ruleset: NftRuleset) -> list[tuple[AddressMatch, ...]]:
    """Per rule that names addresses, its address matches: which containers a rule can tell
    apart, as flows.py needs to group containers by how the rules treat them."""
    found = []
    for chain in ruleset.chains.values():
        for rule in chain.rules:
            matches = tuple(
                m for expr in rule.exprs if (m := _address_match(ruleset, rule, expr)) is not None
            )
            if matches:
                found.append(matches)
    return found


def _address_match(ruleset: NftRuleset, rule: NftRule, expr: Any) -> AddressMatch | None:
    ((kind, body),) = expr.items()
    if kind != "match" or not isinstance(body, dict):
        return None
    left = body.get("left")
    payload = left.get("payload") if isinstance(left, dict) else None
    if not isinstance(payload, dict) or payload.get("protocol") not in ("ip", "ip6"):
        return None
    if payload.get("field") not in ("saddr", "daddr"):
        return None
    right = body.get("right")
    if isinstance(right, str) and right.startswith("@"):
        named = ruleset.sets.get((rule.family, rule.table, right[1:]))
        usable = named is not None and not named.is_map and not named.dynamic
        right = {"set": [_unwrap(e) for e in named.elements]} if usable else None  # type: ignore[union-attr]
    side = "src" if payload["field"] == "saddr" else "dst"
    return AddressMatch(side, str(body.get("op", "==")), right)


# ---- the walk --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    kind: str  # ACCEPT, DROP, UNKNOWN, RETURN
    reason: str


@dataclass
class NftWalk:
    """One packet through one base chain (and the chains it jumps to)."""

    ruleset: NftRuleset
    packet: Packet
    # "bridge" where the bridge hooks run (ports as interfaces), "ip" for the IP hooks.
    layer: str
    hook: str
    # Whether conntrack has seen the packet before this chain runs.
    tracked: bool
    # The packet's mark where known: set by a `meta mark set` earlier on this packet's path.
    mark: int | None = None
    undecided: list[str] = field(default_factory=list)

    def run(self, chain: NftChain) -> list[Outcome]:
        """Every outcome of the base chain, its policy where the walk falls off the end."""
        outcomes = []
        for outcome in self._chain(chain, 0):
            if outcome.kind == "RETURN":
                policy = chain.policy or "accept"
                kind = {"accept": "ACCEPT", "drop": "DROP"}.get(policy, "UNKNOWN")
                outcomes.append(Outcome(kind, f"nft {chain.label} policy {policy}"))
            else:
                outcomes.append(outcome)
        return outcomes

    def _chain(self, chain: NftChain, depth: int) -> list[Outcome]:
        if depth > MAX_DEPTH:
            return [
                Outcome("UNKNOWN", f"nft chain nesting deeper than {MAX_DEPTH} at {chain.label}")
            ]
        outcomes: list[Outcome] = []
        for rule in chain.rules:
            ends, goes_on = self._rule(rule, depth)
            outcomes.extend(ends)
            if not goes_on:
                return outcomes
        outcomes.append(Outcome("RETURN", f"nft {chain.label} end"))
        return outcomes

    def _rule(self, rule: NftRule, depth: int) -> tuple[list[Outcome], bool]:
        """Outcomes that end the chain in this rule, and whether some branch goes past it."""
        where = f"nft {rule.family} {rule.table} {rule.chain} handle {rule.handle}"
        if rule.error:
            return [Outcome("UNKNOWN", f"rule not understood ({rule.error}): {where}")], True
        sure = True  # False once a match is undecidable: the rule may not get this far
        for expr in rule.exprs:
            ((kind, body),) = expr.items()
            if kind == "match":
                value = self.match(rule, body)
                if value is False:
                    return [], True
                if value is None:
                    sure = self._undecided(sure, where)
            elif kind in NOOP_STATEMENTS:
                continue
            elif kind in UNDECIDABLE_STATEMENTS:
                sure = self._undecided(sure, where)
            elif kind == "mangle" and _meta_key(_get(body, "key")) == "mark":
                value = _get(body, "value")
                self.mark = value if sure and isinstance(value, int) else None
            elif kind in VERDICTS:
                ends, goes_on = self._verdict(rule, kind, body, where, depth, sure)
                return ends, goes_on or not sure
            elif kind == "vmap":
                ends, goes_on = self._vmap(rule, body if isinstance(body, dict) else {}, where,
                                           depth, sure)  # fmt: skip
                return ends, goes_on or not sure
            else:  # rewriting statements, and any statement this walk does not know
                what = "rewrites the packet" if kind in REWRITING_STATEMENTS else "not evaluated"
                return [Outcome("UNKNOWN", f"{kind} {what}: {where}")], not sure
        return [], True

    def _undecided(self, sure: bool, where: str) -> bool:
        if sure:
            self.undecided.append(where)
        return False

    def _verdict(
        self, rule: NftRule, kind: str, body: Any, where: str, depth: int, sure: bool
    ) -> tuple[list[Outcome], bool]:
        """`sure`: every branch reaching the rule takes the verdict (else some skip it)."""
        if kind == "accept":
            return [Outcome("ACCEPT", where)], False
        if kind == "reject" and not self._rejects(body):
            return [], True
        if kind in ("drop", "reject"):
            return [Outcome("DROP", where)], False
        if kind == "return":
            return [Outcome("RETURN", where)], False
        if kind == "continue":
            return [], True
        target = body.get("target") if isinstance(body, dict) else None
        chain = self.ruleset.chains.get((rule.family, rule.table, str(target)))
        if chain is None or chain.base:
            return [Outcome("UNKNOWN", f"{kind} {target} not evaluated: {where}")], False
        mark = self.mark
        results = self._chain(chain, depth + 1)
        if not sure and self.mark != mark:
            self.mark = None  # set on the branch that jumped only
        if kind == "goto":
            return results, False  # a return there returns from the calling chain too
        ends = [o for o in results if o.kind != "RETURN"]
        return ends, len(ends) < len(results)

    def _rejects(self, body: Any) -> bool:
        """Whether a reject applies to this packet. nft adds a hidden match for what the reply
        type needs and does not list it: `with icmpv6` only rejects IPv6, `with icmp` IPv4,
        `with tcp reset` TCP; `icmpx` or no type any IP packet (never an ARP frame)."""
        if self.packet.protocol == "arp":
            return False
        kind = body.get("type") if isinstance(body, dict) else None
        if kind == "icmpv6":
            return self.packet.family == "ipv6"
        if kind == "icmp":
            return self.packet.family == "ipv4"
        if kind == "tcp reset":
            return self.packet.protocol == "tcp"
        return True

    def _vmap(
        self, rule: NftRule, body: dict, where: str, depth: int, sure: bool
    ) -> tuple[list[Outcome], bool]:
        """A verdict looked up by key: every element the packet may hit, and the miss."""
        pairs = self._map_pairs(rule, body.get("data"))
        if pairs is None:
            self.undecided.append(where)
            return [Outcome("UNKNOWN", f"verdict map not evaluated: {where}")], True
        ends: list[Outcome] = []
        goes_on = False
        for key, verdict in pairs:
            value = self._compare(rule, body.get("key"), "==", key)
            if value is False:
                continue
            if not isinstance(verdict, dict) or len(verdict) != 1:
                return [Outcome("UNKNOWN", f"verdict map element not understood: {where}")], True
            ((kind, verdict_body),) = verdict.items()
            found, on = self._verdict(
                rule, kind, verdict_body, where, depth, sure and value is True
            )
            ends.extend(found)
            goes_on = goes_on or on
            if value is True:
                return ends, goes_on
            self._undecided(True, where)
        return ends, True  # no element matched for sure: the rule may end without a verdict

    def _map_pairs(self, rule: NftRule, data: Any) -> list[tuple[Any, Any]] | None:
        if isinstance(data, dict) and isinstance(data.get("set"), list):
            elements = data["set"]
        elif isinstance(data, str) and data.startswith("@"):
            found = self.ruleset.sets.get((rule.family, rule.table, data[1:]))
            if found is None or not found.is_map or found.dynamic:
                return None
            elements = list(found.elements)
        else:
            return None
        pairs = []
        for element in elements:
            if not isinstance(element, list) or len(element) != 2:
                return None
            pairs.append((_unwrap(element[0]), element[1]))
        return pairs

    # ---- matches -----------------------------------------------------------------------------

    def match(self, rule: NftRule, body: Any) -> Tri:
        if not isinstance(body, dict):
            return None
        op = body.get("op", "==")
        return self._compare(rule, body.get("left"), op, body.get("right"))

    def _compare(self, rule: NftRule, left: Any, op: str, right: Any) -> Tri:
        """Whether the packet's value of `left` stands in `op` to `right`."""
        if op not in ("==", "!=", "in", "<", ">", "<=", ">="):
            return None
        field_value = self._field(left)
        if field_value is _ABSENT:
            # nft adds a protocol dependency to every header field: a packet without that header
            # fails the match whatever the operator.
            return False
        if field_value is None:
            return None
        kind, value = field_value
        if isinstance(right, str) and right.startswith("@"):
            elements = self._set_elements(rule, right[1:])
            if elements is None:
                return None
            right = {"set": list(elements)}
        if kind in ("flags", "status"):
            return _flags_match(value, op, right)
        if op in ("<", ">", "<=", ">="):
            return _ordered(kind, value, op, right)
        if op == "in":
            op = "=="
        result = _member(kind, value, right)
        if result is None or op == "==":
            return result
        return not result

    def _set_elements(self, rule: NftRule, name: str) -> tuple[Any, ...] | None:
        found = self.ruleset.sets.get((rule.family, rule.table, name))
        if found is None or found.is_map or found.dynamic:
            return None
        return tuple(_unwrap(e) for e in found.elements)

    def _field(self, left: Any) -> tuple[str, Any] | None | object:
        """(kind, value) of the packet for a left-hand expression; None when not known;
        _ABSENT when the packet lacks the header the expression reads."""
        if not isinstance(left, dict) or len(left) != 1:
            return None
        ((kind, body),) = left.items()
        if not isinstance(body, dict):
            return None
        if kind == "meta":
            return self._meta(body.get("key"))
        if kind == "payload":
            return self._payload(body.get("protocol"), body.get("field"))
        if kind == "ct":
            return self._ct(body.get("key"), body.get("dir"))
        if kind == "fib" and body.get("result") == "type" and body.get("flags") == ["daddr"]:
            # The packet asked about goes to a container's address, which lives in the
            # container's namespace: the host's routing table never holds it as local (Docker's
            # nat chains use this test to catch traffic to the host's published ports).
            return ("fib daddr type", None)
        return None

    def _meta(self, key: Any) -> tuple[str, Any] | None | object:
        packet = self.packet
        if key in ("iifname", "oifname", "ibrname", "obrname"):
            return self._device(key)
        if key == "l4proto":
            if packet.protocol == "arp":
                return ("l4", 0)
            return ("l4", PROTOCOL_NUMBERS.get(packet.protocol))
        if key == "nfproto":
            if self.layer == "bridge":
                return ("nfproto", "bridge")
            return ("nfproto", packet.family)
        if key == "protocol":
            return ("ethertype", "arp" if packet.protocol == "arp" else ETHER_TYPES[packet.family])
        if key == "mark" and self.mark is not None:
            return ("number", self.mark)
        return None

    def _device(self, key: str) -> tuple[str, Any] | None:
        """The in/out interface or bridge name. Prerouting has no out device and postrouting no
        in device: nft then compares an empty name. At the bridge hooks the interfaces are the
        bridge ports (the containers' veths, names unknown) and ibrname/obrname the bridge."""
        inbound = key[0] == "i"
        if (self.hook == "prerouting" and not inbound) or (self.hook == "postrouting" and inbound):
            return ("ifname", "")
        bridge = self.packet.in_iface if inbound else self.packet.out_iface
        if key.endswith("brname"):
            return ("ifname", bridge) if self.layer == "bridge" else None
        if self.layer == "bridge":
            return ("bridge port", bridge)
        return ("ifname", bridge)

    def _payload(self, protocol: Any, name: Any) -> tuple[str, Any] | None | object:
        packet = self.packet
        if protocol in ("ip", "ip6") and name in ("saddr", "daddr"):
            if packet.protocol == "arp" or ETHER_TYPES[packet.family] != protocol:
                return _ABSENT
            return ("address", packet.src if name == "saddr" else packet.dst)
        if protocol in ("tcp", "udp", "sctp", "th") and name in ("sport", "dport"):
            if packet.protocol == "arp":
                return _ABSENT
            if protocol != "th" and protocol != packet.protocol:
                return _ABSENT
            return ("port", packet.sport if name == "sport" else packet.dport)
        if (protocol, name) in (("ip", "protocol"), ("ip6", "nexthdr")):
            if packet.protocol == "arp" or ETHER_TYPES[packet.family] != protocol:
                return _ABSENT
            return ("l4", PROTOCOL_NUMBERS.get(packet.protocol))
        if protocol == "ether" and name == "type":
            return ("ethertype", "arp" if packet.protocol == "arp" else ETHER_TYPES[packet.family])
        return None

    def _ct(self, key: Any, direction: Any) -> tuple[str, Any] | None:
        packet = self.packet
        if not self.tracked or packet.protocol == "arp" or direction is not None:
            return None
        if key == "state":
            return ("flags", {packet.state.lower()})
        if key == "direction":
            return ("name", "reply" if packet.reply else "original")
        if key == "status":
            # The packet asked about is between container addresses and no nat statement on its
            # path was walked past (that ends the branch): neither address was translated.
            # Other status bits (confirmed, assured, seen-reply) depend on timing.
            return ("status", None)
        return None


_ABSENT = object()


def _unwrap(element: Any) -> Any:
    """A set element without its per-element options ({"elem": {"val": X, "timeout": ...}})."""
    if isinstance(element, dict) and isinstance(element.get("elem"), dict):
        return element["elem"].get("val")
    return element


def _flags_match(value: Any, op: str, right: Any) -> Tri:
    """ct state / ct status: `in` and a list test any bit; == a set is membership."""
    if value is None:  # ct status: only the nat bits are known, and they are clear
        names = _names(right)
        if names is None or not names <= {"dnat", "snat"}:
            return None
        return op == "!="
    if isinstance(right, dict) and isinstance(right.get("set"), list):
        wanted = _names(right["set"])
        if wanted is None:
            return None
        hit = bool(value & wanted)
        return hit if op in ("==", "in") else not hit
    wanted = _names(right)
    if wanted is None:
        return None
    if op == "in":
        return bool(value & wanted)
    if op == "==":
        return value == wanted
    if op == "!=":
        return value != wanted
    return None


def _names(right: Any) -> set[str] | None:
    if isinstance(right, dict) and isinstance(right.get("set"), list):
        right = right["set"]
    if isinstance(right, str):
        return {right}
    if isinstance(right, list) and all(isinstance(r, str) for r in right):
        return set(right)
    return None


def _member(kind: str, value: Any, right: Any) -> Tri:
    """Whether the value equals `right` or is in it (prefix, range, anonymous set)."""
    if isinstance(right, dict) and "set" in right:
        elements = right["set"]
        if not isinstance(elements, list):
            return None
        result: Tri = False
        for element in elements:
            one = _member(kind, value, _unwrap(element))
            if one is True:
                return True
            if one is None:
                result = None
        return result
    if kind == "port":
        return _port_member(value, right)
    if kind == "address":
        return _address_member(value, right)
    if kind == "ifname":
        return _ifname_member(value, right)
    if kind == "bridge port":
        return _port_name_member(value, right)
    if kind == "l4":
        wanted = _protocol_number(right)
        return None if wanted is None or value is None else wanted == value
    if kind in ("nfproto", "ethertype", "name"):
        return _named_equal(kind, value, right)
    if kind == "number":
        return value == right if isinstance(right, int) else None
    if kind == "fib daddr type":
        return False if right == "local" else None  # other types (unicast, ...) not decided
    return None


def _ifname_member(name: str, right: Any) -> Tri:
    if not isinstance(right, str):
        return None
    if right.endswith("*") and not right.endswith("\\*"):
        return name.startswith(right[:-1])
    return name == right.replace("\\*", "*")


def _port_name_member(bridge: str, right: Any) -> Tri:
    """A bridge port's name: Docker names every port veth*, and a port is never the bridge."""
    if right in ("veth*", "*"):
        return True
    if right == bridge:
        return False
    return None


def _named_equal(kind: str, value: str, right: Any) -> Tri:
    if not isinstance(right, str):
        return None
    if kind == "ethertype":
        known = {"ip", "ip6", "arp", "vlan", "8021q", "8021ad"}
        return value == right if right in known else None
    if kind == "nfproto":
        return value == right if right in ("ipv4", "ipv6", "bridge", "arp", "inet") else None
    return value == right


def _protocol_number(right: Any) -> int | None:
    if isinstance(right, int):
        return right
    return PROTOCOL_NUMBERS.get(right) if isinstance(right, str) else None


def _port_member(port: int | None, right: Any) -> Tri:
    if isinstance(right, int):
        low = high = right
    elif (
        isinstance(right, dict)
        and isinstance(right.get("range"), list)
        and len(right["range"]) == 2
    ):
        low, high = right["range"]
        if not isinstance(low, int) or not isinstance(high, int):
            return None
    else:
        return None  # service names and expressions: not decided here
    if port is not None:
        return low <= port <= high
    first, last = EPHEMERAL_PORTS
    if low <= first and last <= high:
        return True
    if high < first or low > last:
        return False
    return None


def _address_member(address: Any, right: Any) -> Tri:
    try:
        if isinstance(right, str):
            return address == ip_address(right)
        if isinstance(right, dict) and isinstance(right.get("prefix"), dict):
            prefix = right["prefix"]
            network = ip_network(f"{prefix['addr']}/{prefix['len']}", strict=False)
            return network.version == address.version and address in network
        if isinstance(right, dict) and isinstance(right.get("range"), list):
            low, high = (ip_address(r) for r in right["range"])
            return low.version == address.version and low <= address <= high
    except (ValueError, KeyError, TypeError):
        return None
    return None


def _ordered(kind: str, value: Any, op: str, right: Any) -> Tri:
    if kind != "port" or not isinstance(right, int):
        return None
    bounds = {"<": (0, right - 1), "<=": (0, right), ">": (right + 1, 65535), ">=": (right, 65535)}
    low, high = bounds[op]
    return _port_member(value, {"range": [low, high]})


def _get(body: Any, key: str) -> Any:
    """A field of an expression body, None when the body is not an object."""
    return body.get(key) if isinstance(body, dict) else None


def _meta_key(expr: Any) -> str | None:
    if isinstance(expr, dict) and isinstance(expr.get("meta"), dict):
        return expr["meta"].get("key")
    return None
