"""Seeded random rulesets within what the evaluator claims to decide.

One seed gives one ruleset: restore texts for iptables-nft, iptables-legacy and ebtables-nft,
plus the generator features it used (the unknown rate is reported per feature). Every rule is
one the real tools accept: a rule they refuse is a generator bug, and the run stops on it.

What is kept out, and why:
- destination port 9999 (lab.UNNAMED_PORT): no --dport covers it, so one probe port per
  protocol meets only the rules that do not look at the destination port;
- nat and broute tables: ebtables-nft here has no broute, iptables nat cannot DROP and DNAT
  rewrites the packet (the evaluator says unknown, by design);
- REJECT outside filter (the kernel refuses it), --logical-in/out (ebtables-nft here refuses it);
- ipset types beyond lab.IPSETS (hash:ip, hash:net with nomatch entries, bitmap:ip).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tests.differential.lab import BRIDGE, IPSETS, address
from tests.differential.nft_generator import NftGenerator

# (table, chain) pairs a bridged IPv4 packet meets (evaluate.XTABLES_STAGES, nat left out).
HOOKS: dict[str, tuple[str, ...]] = {
    "raw": ("PREROUTING",),
    "mangle": ("PREROUTING", "FORWARD", "POSTROUTING"),
    "filter": ("FORWARD",),
    "security": ("FORWARD",),
}
BUILTIN: dict[str, tuple[str, ...]] = {
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}
EBTABLES_BUILTIN = {"filter": ("INPUT", "FORWARD", "OUTPUT"),
                    "nat": ("PREROUTING", "OUTPUT", "POSTROUTING")}  # fmt: skip
EBTABLES_HOOKS = {"filter": ("FORWARD",), "nat": ("PREROUTING", "POSTROUTING")}

HOSTS = [address(i) for i in range(4)]
# Not 0.0.0.0/0: iptables-nft 1.8.9 refuses "! -s 0.0.0.0/0" (EINVAL).
NETWORKS = ["172.18.0.0/16", "172.18.0.0/30", "172.18.0.4/31", "10.0.0.0/8", "172.18.0.3/32"]
DPORTS = ["80", "443", "5432", "53", "22", "8080", "1:1024", "400:6000", "80:443", "5000:9000"]
MULTI_DPORTS = ["80,443", "53,5432", "22,80,8080", "443,5000:6000"]
# Source ports of a first packet are ephemeral: the first five say True or False for every one,
# the last one only for some (the evaluator must then say unknown).
SPORTS = ["1024:65535", "0:1023", "32768:60999", "53", "80:90", "40000:50000"]
IFACES_IN = [BRIDGE, "docker+", "veth+", "veth0", "eth0", "br-+"]
CTSTATES = ["NEW", "ESTABLISHED", "RELATED,ESTABLISHED", "NEW,ESTABLISHED", "INVALID",
            "NEW,RELATED", "ESTABLISHED,INVALID"]  # fmt: skip
REJECT_WITH = ["icmp-port-unreachable", "icmp-host-prohibited", "icmp-net-unreachable",
               "icmp-admin-prohibited"]  # fmt: skip


EMPTY_IPSETS = "".join(f"flush {name}\n" for name in IPSETS)


@dataclass(frozen=True)
class GeneratedRuleset:
    seed: int
    iptables_nft: str
    iptables_legacy: str
    ebtables: str
    features: frozenset[str]
    ipset: str = EMPTY_IPSETS  # `ipset restore` lines refilling lab.IPSETS
    nft: str = ""  # an `nft -f` script of native tables (lab.NATIVE_TABLES), may be empty

    def restore_texts(self) -> tuple[str, str, str, str, str]:
        """What BridgeLab.load takes: iptables-nft, iptables-legacy, ebtables, ipset, nft."""
        return self.iptables_nft, self.iptables_legacy, self.ebtables, self.ipset, self.nft

    def text(self) -> str:
        """All restore texts in one file (the regression fixture format)."""
        return (
            f"### iptables-nft\n{self.iptables_nft}### iptables-legacy\n{self.iptables_legacy}"
            f"### ebtables-nft\n{self.ebtables}### ipset\n{self.ipset}### nft\n{self.nft}"
        )


def split_fixture(text: str) -> tuple[str, str, str, str, str]:
    """The restore texts of GeneratedRuleset.text(); the ipset and nft parts are optional."""
    _, rest = text.split("### iptables-nft\n", 1)
    nft, rest = rest.split("### iptables-legacy\n", 1)
    legacy, rest = rest.split("### ebtables-nft\n", 1)
    ebtables, _, rest = rest.partition("### ipset\n")
    ipset, _, native = rest.partition("### nft\n")
    return nft, legacy, ebtables, ipset or EMPTY_IPSETS, native


@dataclass
class _Chain:
    policy: str  # "-" for an iptables user chain
    rules: list[str] = field(default_factory=list)


class _Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.set_members = self._set_members()
        self.features: set[str] = set()
        self.comments = 0

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def pick(self, items: list[str] | tuple[str, ...]) -> str:
        return self.rng.choice(items)

    def bang(self, feature: str, p: float = 0.25) -> str:
        if self.chance(p):
            self.features.add(f"{feature} negated")
            return "! "
        return ""

    # -- iptables ------------------------------------------------------------------------------

    def iptables(self, docker_like: bool) -> str:
        tables: dict[str, dict[str, _Chain]] = {}
        for table, builtins in BUILTIN.items():
            chains = tables[table] = {name: _Chain("ACCEPT") for name in builtins}
            for hook in HOOKS[table]:
                self._hook(table, hook, chains, docker_like and table == "filter")
        return _render(tables, commit=True)

    def _hook(self, table: str, hook: str, chains: dict[str, _Chain], docker: bool) -> None:
        """Rules of one builtin chain and the user chains only it reaches (a DAG: no loops)."""
        builtin = chains[hook]
        if self.chance(0.2 if table == "filter" else 0.03):
            builtin.policy = "DROP"
            self.features.add(f"policy DROP {table}")
        users = [f"U-{table[:3]}-{hook[:4]}-{i}" for i in range(self.rng.randint(0, 2))]
        for name in users:
            chains[name] = _Chain("-")
        if docker:
            users = self._docker(chains) + users
        order = [hook, *users]
        for position, name in enumerate(order):
            later = order[position + 1 :] if position else users
            # Few rules per chain: with many, some unconditional DROP would decide every flow.
            count = self.rng.choice([0, 0, 1, 2, 3, 4]) if name == hook else self.rng.randint(1, 3)
            if docker and name == hook:
                count = self.rng.randint(0, 2)
            new = [self._rule(table, hook, name, later) for _ in range(count)]
            if docker and name in ("FORWARD", "DOCKER-USER"):
                chains[name].rules[:0] = new  # before Docker's own rules, like DOCKER-USER
            else:
                chains[name].rules.extend(new)

    def _docker(self, chains: dict[str, _Chain]) -> list[str]:
        """Docker 20.10's FORWARD layout for one bridge; returns its user chains, callers first."""
        self.features.add("docker structure")
        icc = self.pick(["ACCEPT", "DROP"])
        self.features.add(f"docker icc {icc}")
        b = BRIDGE
        chains["FORWARD"].rules += [
            "-A FORWARD -j DOCKER-USER",
            "-A FORWARD -j DOCKER-ISOLATION-STAGE-1",
            f"-A FORWARD -o {b} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            f"-A FORWARD -o {b} -j DOCKER",
            f"-A FORWARD -i {b} ! -o {b} -j ACCEPT",
            f"-A FORWARD -i {b} -o {b} -j {icc}",
        ]
        links = []
        for _ in range(self.rng.randint(0, 3)):
            client, server = self.rng.sample(HOSTS, 2)
            proto, port = self.pick([("tcp", "5432"), ("tcp", "80"), ("udp", "53")])
            links += [
                f"-A DOCKER -s {client}/32 -d {server}/32 -i {b} -o {b} -p {proto} -m {proto} --dport {port} -j ACCEPT",
                f"-A DOCKER -s {server}/32 -d {client}/32 -i {b} -o {b} -p {proto} -m {proto} --sport {port} -j ACCEPT",
            ]
        if links:
            self.features.add("docker links")
        chains["DOCKER"] = _Chain("-", links)
        chains["DOCKER-ISOLATION-STAGE-1"] = _Chain("-", [
            f"-A DOCKER-ISOLATION-STAGE-1 -i {b} ! -o {b} -j DOCKER-ISOLATION-STAGE-2",
            "-A DOCKER-ISOLATION-STAGE-1 -j RETURN",
        ])  # fmt: skip
        chains["DOCKER-ISOLATION-STAGE-2"] = _Chain("-", [
            f"-A DOCKER-ISOLATION-STAGE-2 -o {b} -j DROP",
            "-A DOCKER-ISOLATION-STAGE-2 -j RETURN",
        ])  # fmt: skip
        chains["DOCKER-USER"] = _Chain("-", ["-A DOCKER-USER -j RETURN"])
        return ["DOCKER-USER"]

    def _rule(self, table: str, hook: str, chain: str, later: list[str]) -> str:
        parts: list[str] = []
        proto = self._protocol(parts)
        used: set[str] = set()
        for _ in range(self.rng.choice([0, 1, 1, 2, 2, 2, 3, 3])):
            self.pick_match(table, hook, proto, parts, used)
        parts.append(self._target(table, proto, later))
        return f"-A {chain} " + " ".join(parts)

    def _protocol(self, parts: list[str]) -> str | None:
        roll = self.rng.random()
        if roll < 0.45:
            return None
        if roll < 0.9:
            proto = self.pick(["tcp", "udp"])
            parts.append(f"-p {proto}")
            self.features.add("-p tcp/udp")
            return proto
        parts.append(f"{self.bang('-p', 0.5)}-p {self.pick(['tcp', 'udp', 'icmp'])}")
        self.features.add("-p tcp/udp")
        return None

    def pick_match(
        self, table: str, hook: str, proto: str | None, parts: list[str], used: set[str]
    ) -> None:
        """Add one match, of a kind this rule has not used yet (iptables refuses most twice)."""
        kinds = ["address"] * 6 + ["iface"] * 3 + ["iprange", "comment", "addrtype", "set"]
        kinds += ["conntrack", "conntrack", "state", "physdev"]
        if self.chance(0.05):
            kinds = ["mark"]
        if proto:
            kinds += ["dport", "dport", "sport", "multiport"] + (
                ["tcpflags"] if proto == "tcp" else []
            )
        kind = self.pick(kinds)
        group = proto if kind in ("dport", "sport", "tcpflags") else kind
        if group in used:
            return
        used.add(group)
        parts.append(getattr(self, f"_m_{kind}")(hook, proto))

    def _m_address(self, hook: str, proto: str | None) -> str:
        flag = self.pick(["-s", "-d"])
        value = self.pick(HOSTS + NETWORKS) if self.chance(0.6) else self.pick(HOSTS)
        self.features.add(f"{flag} {'host' if '/' not in value else 'prefix'}")
        return f"{self.bang(flag)}{flag} {value}"

    def _set_members(self) -> dict[str, list[str]]:
        hosts = self.rng.sample(HOSTS, self.rng.randint(0, 3))
        nets = self.rng.sample(NETWORKS[:3] + HOSTS, self.rng.randint(1, 2))
        exceptions = [n for n in ("172.18.0.4/31", "172.18.0.2") if n not in nets]
        if exceptions and self.chance(0.2):  # ipset refuses an entry twice, even as nomatch
            nets.append(f"{self.pick(exceptions)} nomatch")
        bitmap = ["172.18.0.2-172.18.0.3"] if self.chance(0.3) else self.rng.sample(HOSTS, 2)
        return {"dnpdiff-hosts": hosts, "dnpdiff-nets": nets, "dnpdiff-bitmap": bitmap}

    def ipset(self) -> str:
        lines = []
        for name, members in self.set_members.items():
            lines.append(f"flush {name}")
            lines += [f"add {name} {member}" for member in members]
        return "\n".join(lines) + "\n"

    def _m_set(self, hook: str, proto: str | None) -> str:
        name = self.pick(list(IPSETS))
        self.features.add(f"ipset {IPSETS[name].split()[0]}")
        if any("nomatch" in member for member in self.set_members[name]):
            self.features.add("ipset nomatch entry")
        side = self.pick(["src", "dst"])
        return f"-m set {self.bang('ipset')}--match-set {name} {side}"

    def _m_iface(self, hook: str, proto: str | None) -> str:
        flags = {"PREROUTING": ["-i"], "POSTROUTING": ["-o"]}.get(hook, ["-i", "-o"])
        flag = self.pick(flags)
        name = self.pick(IFACES_IN)
        self.features.add(f"{flag} {'wildcard' if name.endswith('+') else 'name'}")
        return f"{self.bang(flag)}{flag} {name}"

    def _m_conntrack(self, hook: str, proto: str | None) -> str:
        options = []
        if self.chance(0.7):
            options.append(f"{self.bang('--ctstate')}--ctstate {self.pick(CTSTATES)}")
            self.features.add(f"--ctstate in {hook}")
        if not options or self.chance(0.3):
            options.append(f"--ctdir {self.pick(['ORIGINAL', 'REPLY'])}")
            self.features.add("--ctdir")
        return "-m conntrack " + " ".join(options)

    def _m_state(self, hook: str, proto: str | None) -> str:
        self.features.add(f"--state in {hook}")
        return f"-m state {self.bang('--state')}--state {self.pick(CTSTATES)}"

    def _m_iprange(self, hook: str, proto: str | None) -> str:
        flag = self.pick(["--src-range", "--dst-range"])
        first = self.rng.randint(1, 5)
        last = self.rng.randint(first, 6)
        self.features.add(f"iprange {flag}")
        return f"-m iprange {self.bang('iprange')}{flag} 172.18.0.{first}-172.18.0.{last}"

    def _m_comment(self, hook: str, proto: str | None) -> str:
        self.comments += 1
        self.features.add("comment")
        return f'-m comment --comment "dnpdiff rule {self.comments}"'

    def _m_addrtype(self, hook: str, proto: str | None) -> str:
        flag = self.pick(["--src-type", "--dst-type"])
        self.features.add("addrtype")
        return f"-m addrtype {self.bang('addrtype')}{flag} {self.pick(['UNICAST', 'LOCAL'])}"

    def _m_physdev(self, hook: str, proto: str | None) -> str:
        self.features.add("physdev --physdev-is-bridged")
        return "-m physdev --physdev-is-bridged"

    def _m_mark(self, hook: str, proto: str | None) -> str:
        self.features.add("mark match (undecidable)")
        return "-m mark --mark 0x1"

    def _m_dport(self, hook: str, proto: str | None) -> str:
        value = self.pick(DPORTS)
        self.features.add(f"--dport {'range' if ':' in value else 'single'}")
        return f"-m {proto} {self.bang('--dport')}--dport {value}"

    def _m_sport(self, hook: str, proto: str | None) -> str:
        value = self.pick(SPORTS)
        self.features.add("--sport")
        return f"-m {proto} {self.bang('--sport')}--sport {value}"

    def _m_multiport(self, hook: str, proto: str | None) -> str:
        if self.chance(0.7):
            self.features.add("multiport --dports")
            return f"-m multiport {self.bang('multiport')}--dports {self.pick(MULTI_DPORTS)}"
        self.features.add("multiport --sports")
        return f"-m multiport --sports {self.pick(['1024:65535', '0:1023', '53,80'])}"

    def _m_tcpflags(self, hook: str, proto: str | None) -> str:
        self.features.add("tcp --syn/--tcp-flags")
        return "-m tcp " + self.pick(
            [
                "--syn",
                "! --syn",
                "--tcp-flags SYN,ACK SYN",
                "--tcp-flags SYN,ACK SYN,ACK",
                "--tcp-flags ALL ACK",
            ]  # fmt: skip
        )

    def _target(self, table: str, proto: str | None, later: list[str]) -> str:
        # Weighted towards ACCEPT/RETURN: with as many drops, most flows die at the first rule.
        kinds = ["ACCEPT"] * 4 + ["DROP", "RETURN", "RETURN", "LOG"]
        if table == "filter":
            kinds += ["REJECT"]
        if table == "mangle":
            kinds.append("MARK")
        if later:
            kinds += ["jump", "jump", "goto"]
        kind = self.pick(kinds)
        self.features.add(f"-j {kind}" if kind not in ("jump", "goto") else f"-{kind[0]} chain")
        if kind in ("jump", "goto"):
            return f"-{kind[0]} {self.pick(later)}"
        if kind == "REJECT":
            choices = REJECT_WITH + (["tcp-reset"] if proto == "tcp" else [])
            return f"-j REJECT --reject-with {self.pick(choices)}"
        if kind == "LOG":
            return '-j LOG --log-prefix "dnpdiff "'
        if kind == "MARK":
            return "-j MARK --set-xmark 0x1/0xffffffff"
        return f"-j {kind}"

    # -- ebtables ------------------------------------------------------------------------------

    def ebtables(self, used: bool) -> str:
        tables: dict[str, dict[str, _Chain]] = {
            table: {name: _Chain("ACCEPT") for name in builtins}
            for table, builtins in EBTABLES_BUILTIN.items()
        }
        if used:
            self.features.add("ebtables")
            for table, hooks in EBTABLES_HOOKS.items():
                for hook in hooks:
                    self._eb_hook(table, hook, tables[table])
        return _render(tables, commit=False)

    def _eb_hook(self, table: str, hook: str, chains: dict[str, _Chain]) -> None:
        if self.chance(0.08):
            chains[hook].policy = "DROP"
            self.features.add("ebtables policy DROP")
        users = []
        if table == "filter" and self.chance(0.5):
            policy = "RETURN" if self.chance(0.8) else self.pick(["ACCEPT", "DROP"])
            self.features.add(f"ebtables user chain policy {policy}")
            users.append("EB-USER")
            chains["EB-USER"] = _Chain(policy)
        for name in [hook, *users]:
            later = users if name == hook else []
            for _ in range(self.rng.randint(0, 3) if name == hook else self.rng.randint(1, 3)):
                chains[name].rules.append(self._eb_rule(hook, name, later))

    def _eb_rule(self, hook: str, chain: str, later: list[str]) -> str:
        parts = []
        roll = self.rng.random()
        if roll < 0.6:
            parts.append("-p IPv4")
            if self.chance(0.5):
                flag = self.pick(["--ip-src", "--ip-dst"])
                parts.append(f"{self.bang('ebtables ' + flag)}{flag} {self.pick(HOSTS + NETWORKS)}")
                self.features.add(f"ebtables {flag}")
            if self.chance(0.5):
                proto = self.pick(["tcp", "udp"])
                parts.append(f"--ip-proto {proto}")
                self.features.add("ebtables --ip-proto")
                if self.chance(0.6):
                    flag, values = self.pick([("--ip-dport", DPORTS), ("--ip-sport", SPORTS)])  # type: ignore[arg-type]
                    parts.append(f"{flag} {self.pick(values)}")
                    self.features.add(f"ebtables {flag}")
        elif roll < 0.75:
            parts.append(f"{self.bang('ebtables -p', 0.5)}-p {self.pick(['ARP', 'IPv6'])}")
            self.features.add("ebtables -p ARP/IPv6")
        if self.chance(0.3):
            flags = {"PREROUTING": ["-i"], "POSTROUTING": ["-o"]}.get(hook, ["-i", "-o"])
            name = self.pick(["veth+", "veth+", "veth1"])
            parts.append(f"{self.bang('ebtables iface')}{self.pick(flags)} {name}")
            self.features.add(f"ebtables -i/-o {'wildcard' if name.endswith('+') else 'name'}")
        if self.chance(0.1):
            parts.append(f"--pkttype-type {self.pick(['otherhost', 'host'])}")
            self.features.add("ebtables --pkttype-type")
        targets = ["ACCEPT", "ACCEPT", "CONTINUE", "RETURN"] + ["DROP"] + ["jump"] * 2 * bool(later)
        target = self.pick(targets)
        self.features.add(f"ebtables -j {target}")
        parts.append(f"-j {self.pick(later) if target == 'jump' else target}")
        return f"-A {chain} " + " ".join(parts)


def _render(tables: dict[str, dict[str, _Chain]], commit: bool) -> str:
    lines = []
    for table, chains in tables.items():
        lines.append(f"*{table}")
        counters = " [0:0]" if commit else ""
        lines += [f":{name} {chain.policy}{counters}" for name, chain in chains.items()]
        lines += [rule for chain in chains.values() for rule in chain.rules]
        if commit:
            lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def generate(seed: int) -> GeneratedRuleset:
    """The ruleset of one seed."""
    gen = _Generator(seed)
    docker_like = gen.chance(0.5)
    mode = gen.pick(["same", "split", "nft only", "legacy only"])
    gen.features.add(f"backends {mode}")
    first = gen.iptables(docker_like)
    if mode == "same":
        nft = legacy = first
    elif mode == "split":
        nft, legacy = first, gen.iptables(docker_like=False)
    else:
        empty = _render({t: {c: _Chain("ACCEPT") for c in b} for t, b in BUILTIN.items()}, True)
        nft, legacy = (first, empty) if mode == "nft only" else (empty, first)
    ebtables = gen.ebtables(used=gen.chance(0.4))
    # Drawn last: the iptables and ebtables parts of a seed are the ones before native tables.
    native = NftGenerator(gen.rng, gen.features).script() if gen.chance(0.4) else ""
    features = frozenset(gen.features | ({"nft native tables"} if native else set()))
    return GeneratedRuleset(seed, nft, legacy, ebtables, features, gen.ipset(), native)
