"""Random native nftables tables (an `nft -f` script), within what exporter/firewall/nft.py decides.

The tables are lab.NATIVE_TABLES (inet, ip and bridge; never a name iptables-nft or ebtables-nft
owns). Base chains sit at the hooks a bridged packet meets, at priorities before, between and
after the x_tables tables (raw -300, mangle -150, filter 0, security 50, srcnat 100) and, for the
bridge family, around ebtables (-300, -200, 300) and br_netfilter (0). Regular chains are reached
by jump/goto, only from chains made before them (no loops).

Not generated: `meta ibrname/obrname` (nft_meta_bridge is not available in this kernel: nft
refuses the rule) and `ct` in the bridge family (nf_conntrack_bridge, likewise).

Some constructs are on purpose ones nft.py cannot decide for every packet (a bridge port named
veth0 at the bridge hooks, `ct state` before conntrack, a source port range covering part of the
ephemeral range, `meta mark` after an iptables MARK, limit, concatenations, skuid): they must
yield unknown, never a wrong verdict. Each rule's line starts with two tabs, so run.shrink can drop rules one by one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from ipaddress import ip_network

from tests.differential.lab import BRIDGE, NATIVE_TABLES, address

HOSTS = [address(i) for i in range(4)]
PREFIXES = ["172.18.0.0/16", "172.18.0.0/30", "172.18.0.4/31", "10.0.0.0/8"]
# No value covers lab.UNNAMED_PORT (9999), as in generator.DPORTS.
DPORTS = [
    "80",
    "443",
    "5432",
    "53",
    "22",
    "1-1024",
    "400-6000",
    "{ 53, 5432 }",
    "{ 80, 443, 8080 }",
]
SPORTS = ["1024-65535", "0-1023", "32768-60999", "53", "40000-50000"]
IFNAMES = [BRIDGE, "veth*", "veth0", "eth0", "br-*"]
CT_STATES = ["established,related", "new", "invalid", "{ new, established }", "established"]
PRIORITIES = {
    "inet": ["-310", "-250", "-160", "-5", "0", "5", "60", "110", "filter + 10", "raw"],
    "ip": ["-310", "-250", "-160", "-5", "0", "5", "60", "110", "filter + 10", "mangle"],
    "bridge": ["-310", "-250", "-200", "-160", "-5", "0", "5", "110", "310", "filter + 10"],
}
HOOKS = ("prerouting", "forward", "postrouting")


@dataclass
class _Chain:
    name: str
    hook: str  # the hook of the base chain that reaches it
    base: str = ""  # "type filter hook H priority P; policy X;" for a base chain
    rules: list[str] = field(default_factory=list)


@dataclass
class _Table:
    family: str
    name: str
    chains: list[_Chain] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)


class NftGenerator:
    """Native tables for one ruleset; `features` gains what it used (the unknown table)."""

    def __init__(self, rng: random.Random, features: set[str]) -> None:
        self.rng = rng
        self.features = features
        self.comments = 0
        self.marked = False  # a `meta mark set` is in the ruleset: `meta mark` may follow

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def pick(self, items: list[str] | tuple[str, ...]) -> str:
        return self.rng.choice(items)

    def feature(self, name: str) -> None:
        self.features.add(f"nft {name}")

    def script(self) -> str:
        chosen = [t for t in NATIVE_TABLES if self.chance(0.55)] or [self.rng.choice(NATIVE_TABLES)]
        tables = [self._table(family, name) for family, name in chosen]
        return "".join(_render(table) for table in tables)

    def _table(self, family: str, name: str) -> _Table:
        self.feature(f"table {family}")
        table = _Table(family, name)
        if family != "bridge" or self.chance(0.5):
            self._named_set(table)
        for index in range(self.rng.randint(1, 3)):
            self._base_chain(table, index)
        return table

    def _named_set(self, table: _Table) -> None:
        members = self.rng.sample(HOSTS + PREFIXES[1:3], self.rng.randint(1, 3))
        # nft refuses overlapping interval elements; keep the first of any that overlap.
        kept: list[str] = []
        for member in members:
            if not any(_overlap(member, other) for other in kept):
                kept.append(member)
        table.sets.append(
            "\tset hosts4 { type ipv4_addr; flags interval; elements = { "
            + ", ".join(kept)
            + " } }"
        )
        verdicts = ", ".join(f"{h} : {self.pick(['accept', 'accept', 'drop', 'continue'])}"
                             for h in self.rng.sample(HOSTS, 2))  # fmt: skip
        table.sets.append(
            f"\tmap verdicts4 {{ type ipv4_addr : verdict; elements = {{ {verdicts} }} }}"
        )

    def _base_chain(self, table: _Table, index: int) -> None:
        hook = self.pick(HOOKS)
        priority = self.pick(PRIORITIES[table.family])
        policy = "drop" if self.chance(0.03) else "accept"
        self.feature(f"{table.family} base chain {hook}")
        if policy == "drop":
            self.feature("policy drop")
        base = _Chain(f"b{index}_{hook[:4]}", hook,
                      f"type filter hook {hook} priority {priority}; policy {policy};")  # fmt: skip
        users = [_Chain(f"u{index}_{i}", hook) for i in range(self.rng.choice([0, 0, 1, 2]))]
        order = [base, *users]
        for position, chain in enumerate(order):
            later = [c.name for c in order[position + 1 :]] if position else [c.name for c in users]
            count = self.rng.choice([0, 1, 2, 3, 4]) if chain is base else self.rng.randint(1, 3)
            chain.rules = [self._rule(table, chain, later) for _ in range(count)]
        table.chains += order

    def _rule(self, table: _Table, chain: _Chain, later: list[str]) -> str:
        parts: list[str] = []
        # nft refuses ip matches after a match for another network protocol: then only names.
        only_ip = self._network_protocol(table, parts)
        proto = self._protocol(parts) if only_ip else None
        used: set[str] = set()
        for _ in range(self.rng.choice([0, 1, 1, 2, 2, 3])):
            kind = self.pick(self._kinds(table, proto) if only_ip else ["iface"])
            if kind not in used:
                used.add(kind)
                parts.append(getattr(self, f"_m_{kind}")(table, chain, proto))
        if self.chance(0.3):
            parts.append("counter")
            self.feature("counter")
        if self.chance(0.1):
            parts.append('log prefix "dnpdiff "')
            self.feature("log")
        if self.chance(0.08):
            parts.append("meta mark set 0x00000001")
            self.marked = True
            self.feature("meta mark set")
        if proto and only_ip and self.chance(0.12):
            parts.append(self._vmap(table, chain, proto, later))
        else:
            verdict = self._verdict(table, chain, later)
            if verdict:
                parts.append(verdict)
        if not parts:
            parts.append("counter")  # nft refuses an empty rule
        if self.chance(0.15):
            self.comments += 1
            parts.append(f'comment "dnpdiff {self.comments}"')
            self.feature("comment")
        return "\t\t" + " ".join(parts)

    def _protocol(self, parts: list[str]) -> str | None:
        roll = self.rng.random()
        if roll < 0.45:
            return None
        proto = self.pick(["tcp", "udp"])
        if roll < 0.85:
            parts.append(f"meta l4proto {proto}")
            self.feature("meta l4proto")
            return proto
        parts.append(self.pick([f"meta l4proto != {proto}", "meta l4proto { tcp, udp }",
                                f"ip protocol {proto}"]))  # fmt: skip
        self.feature("meta l4proto set/negated, ip protocol")
        return proto if parts[-1].startswith("ip protocol") else None

    def _kinds(self, table: _Table, proto: str | None) -> list[str]:
        kinds = ["address"] * 5 + ["iface"] * 2
        if table.family != "bridge":  # ct in the bridge family needs nf_conntrack_bridge
            kinds += ["ct_state", "ct_state", "ct_direction"]
        if table.sets:
            kinds += ["named_set"]
        if self.marked:
            kinds += ["mark"]
        if proto:
            kinds += ["dport", "dport", "sport", "th_dport"]
        if self.chance(0.015):
            kinds = ["undecidable"]
        return kinds

    def _m_address(self, table: _Table, chain: _Chain, proto: str | None) -> str:
        side = self.pick(["saddr", "daddr"])
        op = "!= " if self.chance(0.2) else ""
        roll = self.rng.random()
        if roll < 0.45:
            value = self.pick(HOSTS)
            self.feature(f"ip {side} host")
        elif roll < 0.75:
            value = self.pick(PREFIXES)
            self.feature(f"ip {side} prefix")
        else:
            value = "{ " + ", ".join(self.rng.sample(HOSTS, 2)) + " }"
            self.feature("ip address anonymous set")
        if op:
            self.feature("ip address !=")
        return f"ip {side} {op}{value}"

    def _m_named_set(self, table: _Table, chain: _Chain, proto: str | None) -> str:
        self.feature("named set")
        op = "!= " if self.chance(0.2) else ""
        return f"ip {self.pick(['saddr', 'daddr'])} {op}@hosts4"

    def _m_iface(self, table: _Table, chain: _Chain, proto: str | None) -> str:
        key = self.pick(["iifname", "oifname"])
        name = self.pick(IFNAMES)
        op = "!= " if self.chance(0.2) else ""
        self.feature(f"{table.family if table.family == 'bridge' else 'ip'} {key} {name}")
        return f'{key} {op}"{name}"'

    def _m_undecidable(self, table: _Table, chain: _Chain, proto: str | None) -> str:
        """Expressions nft.py does not decide: they must give unknown, never a guess."""
        self.feature("undecidable expression (limit, concatenation, skuid)")
        return self.pick(["limit rate 1/second", "ip saddr . ip daddr { 172.18.0.2 . 172.18.0.3 }",
                          "meta skuid 0"])  # fmt: skip

    def _m_ct_state(self, table: _Table, chain: _Chain, proto: str | None) -> str:
        op = "!= " if self.chance(0.15) else ""
        self.feature("ct state")
        return f"ct state {op}{self.pick(CT_STATES)}"

    def _m_ct_direction(self, table: _Table, chain: _Chain, proto: str | None) -> str:
        self.feature("ct direction")
        return f"ct direction {self.pick(['original', 'reply'])}"

    def _m_mark(self, table: _Table, chain: _Chain, proto: str | None) -> str:
        self.feature("meta mark match")
        return f"meta mark {self.pick(['0x00000001', '!= 0x00000001'])}"

    def _network_protocol(self, table: _Table, parts: list[str]) -> bool:
        """Maybe an `ether type` (bridge) or `meta nfproto` (inet); whether it can be IPv4."""
        if table.family == "ip" or not self.chance(0.15):
            return True
        if table.family == "bridge":
            value = self.pick(["ip", "ip", "arp", "ip6"])
            parts.append(f"ether type {value}")
            self.feature("ether type")
            return value == "ip"
        value = self.pick(["ipv4", "ipv6"])
        parts.append(f"meta nfproto {value}")
        self.feature("meta nfproto")
        return value == "ipv4"

    def _m_dport(self, table: _Table, chain: _Chain, proto: str | None) -> str:
        self.feature("tcp/udp dport")
        op = "!= " if self.chance(0.15) else ""
        return f"{proto} dport {op}{self.pick(DPORTS)}"

    def _m_sport(self, table: _Table, chain: _Chain, proto: str | None) -> str:
        self.feature("tcp/udp sport")
        return f"{proto} sport {self.pick(SPORTS)}"

    def _m_th_dport(self, table: _Table, chain: _Chain, proto: str | None) -> str:
        self.feature("th dport")
        return f"th dport {self.pick(DPORTS)}"

    def _verdict(self, table: _Table, chain: _Chain, later: list[str]) -> str:
        # Weighted towards accept/return, as in the iptables generator.
        kinds = ["accept"] * 4 + ["drop", "return", "continue", "none"]
        if chain.hook == "forward" and table.family != "bridge":
            kinds.append("reject")  # the kernel refuses reject in postrouting
        if later:
            kinds += ["jump", "jump", "goto"]
        kind = self.pick(kinds)
        self.feature(f"verdict {kind}")
        if kind in ("jump", "goto"):
            return f"{kind} {self.pick(later)}"
        return "" if kind == "none" else kind

    def _vmap(self, table: _Table, chain: _Chain, proto: str, later: list[str]) -> str:
        if table.sets and self.chance(0.5):
            self.feature("named verdict map")
            return f"ip {self.pick(['saddr', 'daddr'])} vmap @verdicts4"
        self.feature("verdict map")
        verdicts = ["accept", "accept", "drop", "continue"] + [f"jump {c}" for c in later]
        key, values = self.pick([("ip daddr", HOSTS), (f"{proto} dport", ["80", "443", "53"]),
                                 ("ip saddr", HOSTS)])  # fmt: skip
        chosen = self.rng.sample(values, 2)
        return f"{key} vmap {{ " + ", ".join(f"{v} : {self.pick(verdicts)}" for v in chosen) + " }"


def _overlap(a: str, b: str) -> bool:
    return ip_network(a).overlaps(ip_network(b))


def _render(table: _Table) -> str:
    """Regular chains first, in reverse: every jump target exists before the rule naming it."""
    bases = [c for c in table.chains if c.base]
    users = [c for c in table.chains if not c.base]
    lines = [f"table {table.family} {table.name} {{", *table.sets]
    for chain in [*reversed(users), *bases]:
        lines.append(f"\tchain {chain.name} {{")
        if chain.base:
            lines.append(f"\t\t{chain.base}")
        lines += chain.rules
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"
