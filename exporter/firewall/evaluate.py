"""Walk a packet through the kernel's chains the way netfilter would, and say what happens to it.

A bridged packet between two containers meets, in order (br_netfilter calls the IP hooks from the
bridge hooks): ebtables broute and nat PREROUTING; iptables raw, mangle and nat PREROUTING; ebtables
filter FORWARD; iptables mangle, filter and security FORWARD; ebtables nat POSTROUTING; iptables
mangle and nat POSTROUTING. The IP stages run only while bridge-nf-call-iptables (ip6tables for
IPv6) is 1. Both iptables backends hook every stage: an ACCEPT in one ends only that backend's
chain, a DROP in either drops the packet.

Where a match cannot be decided the walk takes both branches; a verdict is given only when every
branch agrees. Targets that rewrite the packet (DNAT, NOTRACK, ...) end a branch as unknown:
the packet after them is not the one asked about.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from heapq import merge

from exporter.firewall.matches import (
    BRIDGE_MATCHERS,
    MATCHERS,
    UNTRACKED_TABLE,
    MatchContext,
    Packet,
    Tri,
    conntrack_without_entry,
    host_address,
    required_interface,
)
from exporter.firewall.nft import (
    BRIDGED_HOOKS,
    CONNTRACK_PRIORITY,
    NftChain,
    NftRuleset,
    NftWalk,
)
from exporter.firewall.rules import Chain, Rule, Ruleset
from exporter.firewall.state import FirewallState, NftablesInfo
from exporter.verdict import Verdict


@dataclass(frozen=True)
class Stage:
    """One base chain a bridged packet meets: an x_tables table's builtin chain, or a native
    nftables base chain. `layer` "bridge" runs at the bridge hooks, "ip" at the IP hooks that
    br_netfilter calls from them."""

    hook: str
    layer: str
    priority: int
    table: str = ""
    chain: str = ""
    nft: NftChain | None = None

    def order(self) -> tuple[int, int, int]:
        """Where it runs: the IP hooks run inside the bridge hook, at br_netfilter's priority."""
        bridge_priority = self.priority if self.layer == "bridge" else BRNF_PRIORITY[self.hook]
        ip_priority = self.priority if self.layer == "ip" else 0
        return HOOK_ORDER[self.hook], bridge_priority, ip_priority


HOOK_ORDER = {"prerouting": 0, "forward": 1, "postrouting": 2}
# br_netfilter calls the IP prerouting and forward hooks from the bridge hook at priority 0
# (NF_BR_PRI_BRNF) and IP postrouting last (NF_BR_PRI_LAST).
BRNF_PRIORITY = {"prerouting": 0, "forward": 0, "postrouting": 2**31 - 1}
# The x_tables tables at their registered priorities (nft's priority names say the same numbers:
# bridge dstnat -300, filter -200, srcnat 300; ip raw -300, mangle -150, dstnat -100, filter 0,
# security 50, srcnat 100). ebtables' broute runs before any bridge hook; -300 and listed first.
XTABLES_STAGES: tuple[Stage, ...] = (
    Stage("prerouting", "bridge", -300, "broute", "BROUTING"),
    Stage("prerouting", "bridge", -300, "nat", "PREROUTING"),
    Stage("prerouting", "ip", -300, "raw", "PREROUTING"),
    Stage("prerouting", "ip", -150, "mangle", "PREROUTING"),
    Stage("prerouting", "ip", -100, "nat", "PREROUTING"),
    Stage("forward", "bridge", -200, "filter", "FORWARD"),
    Stage("forward", "ip", -150, "mangle", "FORWARD"),
    Stage("forward", "ip", 0, "filter", "FORWARD"),
    Stage("forward", "ip", 50, "security", "FORWARD"),
    Stage("postrouting", "bridge", 300, "nat", "POSTROUTING"),
    Stage("postrouting", "ip", -150, "mangle", "POSTROUTING"),
    Stage("postrouting", "ip", 100, "nat", "POSTROUTING"),
)
# Native chain families by the packet family they see.
NFT_FAMILIES = {"ipv4": ("ip", "inet"), "ipv6": ("ip6", "inet")}
# Only a connection's first packet passes the nat table.
NAT_NEW_ONLY = "nat"

ACCEPT_TARGETS = {"ACCEPT"}
DROP_TARGETS = {"DROP", "REJECT"}
# Targets that neither end the walk nor change what later rules see.
PASS_TARGETS = {
    "LOG", "NFLOG", "ULOG", "TRACE", "AUDIT", "CHECKSUM", "TCPMSS", "CLASSIFY", "DSCP", "TOS",
    "ECN", "MARK", "CONNMARK", "SECMARK", "CONNSECMARK", "IDLETIMER", "LED", "RATEEST",
    "mark", "log", "nflog", "CONTINUE",
}  # fmt: skip
# Marks feed only mark matches, which are undecidable here anyway.
# Address translation after the filter stages does not decide whether the packet passes.
POSTROUTING_NAT = {"SNAT", "MASQUERADE", "snat"}

# Match modules that test nothing without options (`-p tcp -m tcp` only restates the protocol).
OPTIONLESS_MODULES = frozenset({"", "tcp", "udp", "sctp", "udplite", "dccp", "icmp", "icmp6"})

MAX_DEPTH = 64
# x_tables targets that set the packet's mark: after them a native mark match is undecidable.
MARK_TARGETS = {"MARK", "CONNMARK", "mark"}


def bridged_rules(ruleset: Ruleset) -> Iterator[Rule]:
    """Every rule a bridged packet may meet: those of the chains its hooks walk (XTABLES_STAGES)
    and of the chains they jump to. Rules that only INPUT and OUTPUT reach are left out."""
    layer = "bridge" if ruleset.family == "bridge" else "ip"
    pending = deque((s.table, s.chain) for s in XTABLES_STAGES if s.layer == layer)
    seen = set(pending)
    while pending:
        table, name = pending.popleft()
        chain = ruleset.chain(table, name)
        for rule in chain.rules if chain else ():
            yield rule
            called = (table, rule.target)
            if rule.target and called not in seen and ruleset.chain(*called) is not None:
                seen.add(called)
                pending.append(called)


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    # What decided, e.g. "nft filter FORWARD #6: -A FORWARD -i docker0 -o docker0 -j DROP".
    reason: str


@dataclass(frozen=True)
class _Outcome:
    kind: str  # ACCEPT, DROP, UNKNOWN, RETURN
    reason: str


class _ChainIndex:
    """A chain's rules by the one host or interface they require (`-s H/32`, `-d H`, `-i br0`,
    `-o br0`).

    Docker writes a pair of rules per link and a few rules per bridge network, each naming one
    host or bridge, all in the same chains: without the index every packet reads every link's
    and every network's rules, links x links and networks x networks per check. A rule that
    requires another host or interface cannot match (in_network or the interface match says
    False, and one False option makes the rule False), so skipping it changes nothing.
    """

    def __init__(self, chain: Chain) -> None:
        self.rules = chain.rules
        self.general: list[int] = []
        self.by_key: dict[tuple[str, object], list[int]] = {}
        for index, rule in enumerate(chain.rules):
            required = _required_key(rule)
            if required is None:
                self.general.append(index)
            else:
                self.by_key.setdefault(required, []).append(index)
        self.general_rules = tuple(self.rules[i] for i in self.general)

    def candidates(self, packet: Packet) -> Iterator[Rule]:
        """In chain order, every rule that may match the packet."""
        if not self.by_key:
            return iter(self.rules)
        keys = (
            ("-s", packet.src),
            ("-d", packet.dst),
            ("-i", packet.in_iface),
            ("-o", packet.out_iface),
        )
        found = [self.by_key[key] for key in keys if key in self.by_key]
        if not found:
            return iter(self.general_rules)
        return (self.rules[i] for i in merge(self.general, *found))


def _required_key(rule: Rule) -> tuple[str, object] | None:
    """("-s"|"-d", address) when a builtin address option allows only that host, else
    ("-i"|"-o", name) when a builtin interface option allows only that interface."""
    if rule.error:
        return None  # undecidable whatever it names: rule_matches must see it
    interface = None
    for option in rule.options(""):
        if option.negated:
            continue
        if option.name in ("-s", "-d"):
            address = host_address(option)
            if address is not None:
                return option.name, address
        elif option.name in ("-i", "-o") and interface is None:
            name = required_interface(option)
            interface = (option.name, name) if name is not None else None
    return interface


@dataclass
class _Walk:
    ruleset: Ruleset
    table: str
    packet: Packet
    ctx: MatchContext
    matchers: dict
    # Chain indexes by chain name, shared by every packet of a check (see PathInputs.indexes).
    indexes: dict[str, _ChainIndex]
    undecided: list[str] = field(default_factory=list)
    # Outcomes of chains already walked for this packet, by (chain, depth). A chain reached from
    # many rules (a diamond of jumps) is walked once, so one packet costs at most one pass over
    # the rules per depth, never one pass per path. Depth is in the key because MAX_DEPTH makes
    # the outcome depend on it. Its undecidable rules are listed the first time only.
    walked: dict[tuple[str, int], list[_Outcome]] = field(default_factory=dict)


def _where(walk: _Walk, rule: Rule) -> str:
    backend = f"{walk.ruleset.backend} " if walk.ruleset.family != "bridge" else "ebtables "
    return f"{backend}{walk.table} {rule.chain} #{rule.position}: {rule.text}"


def rule_matches(rule: Rule, packet: Packet, ctx: MatchContext, matchers: dict) -> Tri:
    """Three-valued AND of every option: False wins, then None, then True."""
    if rule.error:
        return None
    result: Tri = True
    for match in rule.matches:
        if not match.options and match.module not in OPTIONLESS_MODULES:
            result = None  # `-m socket`, `-m rpfilter`: a test of its own, not "always true"
        if match.module == "conntrack" and ctx.table == UNTRACKED_TABLE and matchers is MATCHERS:
            value = conntrack_without_entry(match.options, packet, ctx)
            if value is False:
                return False
            if value is None:
                result = None
            continue
        for option in match.options:
            decide = matchers.get((match.module, option.name))
            value = decide(option, packet, ctx) if decide else None
            if value is False:
                return False
            if value is None:
                result = None
    return result


def _apply(walk: _Walk, rule: Rule, depth: int) -> tuple[list[_Outcome], bool]:
    """Outcomes that end the chain here if the rule matches, and whether the walk may go on."""
    target = rule.target
    where = _where(walk, rule)
    if rule.error:
        return [_Outcome("UNKNOWN", f"rule not understood ({rule.error}): {where}")], False
    if target is None or target in PASS_TARGETS:
        return [], True
    if target in ACCEPT_TARGETS:
        return [_Outcome("ACCEPT", where)], False
    if target in DROP_TARGETS:
        if _routes(walk):
            return [
                _Outcome("UNKNOWN", f"broute DROP routes the frame (not evaluated): {where}")
            ], False
        return [_Outcome("DROP", where)], False
    if target == "RETURN":
        return [_Outcome("RETURN", where)], False
    if walk.table == "nat" and target in POSTROUTING_NAT:
        return [_Outcome("ACCEPT", where)], False
    chain = walk.ruleset.chain(walk.table, target)
    if chain is None or chain.builtin:
        return [_Outcome("UNKNOWN", f"target {target} not evaluated: {where}")], False
    results = _walk_called(walk, chain, depth + 1)
    if rule.goto:
        return results, False  # a RETURN there returns from the calling chain too
    ends = [o for o in results if o.kind != "RETURN"]
    return ends, len(ends) < len(results)


def _routes(walk: _Walk) -> bool:
    """ebtables(8): in the broute table DROP means "route this frame", not drop it; the routed
    path is not evaluated."""
    return walk.ruleset.family == "bridge" and walk.table == "broute"


def _walk_called(walk: _Walk, chain: Chain, depth: int) -> list[_Outcome]:
    """Outcomes of a jump to a user chain: walked once per packet and depth, then reused."""
    key = (chain.name, depth)
    found = walk.walked.get(key)
    if found is None:
        found = walk.walked[key] = _walk_chain(walk, chain, depth)
    return found


def _walk_chain(walk: _Walk, chain: Chain, depth: int) -> list[_Outcome]:
    """Every outcome of walking `chain`; RETURN when it falls off the end."""
    if depth > MAX_DEPTH:
        return [_Outcome("UNKNOWN", f"chain nesting deeper than {MAX_DEPTH} at {chain.name}")]
    outcomes: list[_Outcome] = []
    for rule in _candidates(walk, chain):
        matched = rule_matches(rule, walk.packet, walk.ctx, walk.matchers)
        if matched is False:
            continue
        ends, goes_on = _apply(walk, rule, depth)
        outcomes.extend(ends)
        if matched is None:
            # Both branches: matched (the outcomes above) or not (the walk goes on below).
            walk.undecided.append(_where(walk, rule))
        elif not goes_on:
            return outcomes
    outcomes.append(_Outcome("RETURN", f"{chain.name} end"))
    return outcomes


def _candidates(walk: _Walk, chain: Chain) -> Iterator[Rule]:
    if walk.matchers is not MATCHERS:
        return iter(chain.rules)  # ebtables' -s and -d are MAC addresses
    index = walk.indexes.get(chain.name)
    if index is None:
        index = walk.indexes[chain.name] = _ChainIndex(chain)
    return index.candidates(walk.packet)


def _walk_builtin(walk: _Walk, chain: Chain) -> list[_Outcome]:
    outcomes = []
    for outcome in _walk_chain(walk, chain, 0):
        if outcome.kind == "RETURN":
            policy = chain.policy or "ACCEPT"
            kind = "ACCEPT" if policy == "ACCEPT" else "DROP" if policy == "DROP" else "UNKNOWN"
            if kind == "DROP" and _routes(walk):
                kind = "UNKNOWN"
            where = walk.ruleset.backend if walk.ruleset.family != "bridge" else "ebtables"
            outcomes.append(_Outcome(kind, f"{where} {walk.table} {chain.name} policy {policy}"))
        else:
            outcomes.append(outcome)
    return outcomes


def walk_stage(
    ruleset: Ruleset,
    table: str,
    chain_name: str,
    packet: Packet,
    ctx: MatchContext,
    indexes: dict[str, _ChainIndex] | None = None,
) -> tuple[list[_Outcome], list[str]]:
    """Outcomes of one hook in one ruleset, and the rules that could not be decided.

    `indexes`: chain indexes of this ruleset's table, kept by the caller to reuse across packets.
    """
    chain = ruleset.chain(table, chain_name)
    if chain is None:
        return [_Outcome("ACCEPT", f"{table} {chain_name} absent")], []
    matchers = BRIDGE_MATCHERS if ruleset.family == "bridge" else MATCHERS
    ctx = replace(ctx, hook=chain_name, table=table)
    walk = _Walk(ruleset, table, packet, ctx, matchers, {} if indexes is None else indexes)
    return _walk_builtin(walk, chain), walk.undecided


@dataclass(frozen=True)
class PathInputs:
    """What the evaluator needs beyond the packet, fixed for one check."""

    firewall: FirewallState
    # bridge-nf-call-iptables / -ip6tables: 1 (IP stages apply), 0 (they don't), None (unknown).
    call_iptables: int | None
    call_ip6tables: int | None
    # Families whose iptables rules could not be read: nothing is decided for them.
    unreadable: frozenset[str] = frozenset()
    # Chain indexes by (id of a ruleset of `firewall`, table): built on first use, then shared by
    # every packet of the check. Ids are stable: `firewall` keeps its rulesets alive.
    indexes: dict[tuple[int, str], dict[str, _ChainIndex]] = field(
        default_factory=dict, compare=False, repr=False
    )
    # The ordered stages by packet family, built on first use (see stages).
    stage_lists: dict[str, list[Stage]] = field(default_factory=dict, compare=False, repr=False)
    # Each ipset's members parsed once per check (MatchContext.set_members).
    set_members: dict = field(default_factory=dict, compare=False, repr=False)
    # Facts about the whole firewall that every packet asks (blocker, bridge_empty), worked out
    # on first use: each reads every table or rule.
    facts: dict[object, object] = field(default_factory=dict, compare=False, repr=False)

    def match_context(self) -> MatchContext:
        return MatchContext(self.firewall.ipsets, set_members=self.set_members)

    def table_indexes(self, ruleset: Ruleset, table: str) -> dict[str, _ChainIndex]:
        return self.indexes.setdefault((id(ruleset), table), {})

    def blocker(self, family: str) -> str | None:
        """A reason why nothing can be decided for this family, or None."""
        key = ("blocker", family)
        if key not in self.facts:
            self.facts[key] = self._blocker(family)
        return self.facts[key]  # type: ignore[return-value]

    def bridge_empty(self) -> bool:
        """Whether ebtables, read, decides nothing (see Ruleset.empty)."""
        if "bridge_empty" not in self.facts:
            bridge = self.firewall.bridge
            self.facts["bridge_empty"] = bridge is not None and bridge.empty
        return self.facts["bridge_empty"]  # type: ignore[return-value]

    def _blocker(self, family: str) -> str | None:
        if family in self.unreadable:
            return f"{'ip6tables' if family == 'ipv6' else 'iptables'} rules could not be read"
        nft = self.firewall.nftables
        if nft is None:
            return "nftables ruleset could not be read"
        unread = unmodelled_docker_tables(nft)
        if unread:
            return "Docker's nftables tables were not read: " + ", ".join(unread)
        modelled = {f"{c.label} hook {c.hook}" for c in nft.native.chains.values()}
        missing = [label for label in nft.foreign_chains if label not in modelled]
        if missing:
            return "nftables chains outside iptables decide bridged packets: " + ", ".join(missing)
        on_ports = nft.native.port_chains()
        if on_ports:
            return "nftables chains on the bridge ports are not evaluated: " + ", ".join(
                f"{c.label} hook {c.hook}" for c in on_ports
            )
        return None

    def decides_arp(self) -> bool:
        """Whether any chain may stop an ARP frame: ebtables unread or not empty, or a native
        bridge-family chain that does more than accept. Only then are ARP frames worth walking."""
        if not self.bridge_empty():
            return True
        nft = self.firewall.nftables
        return nft is not None and any(
            chain.family == "bridge" and not chain.passes_everything
            for hook in BRIDGED_HOOKS
            for chain in nft.native.base_chains(hook)
        )

    def stages(self, family: str) -> list[Stage]:
        """Every base chain a packet of `family` meets, in order: built once per check."""
        found = self.stage_lists.get(family)
        if found is None:
            found = self.stage_lists[family] = _stages(self.firewall.nftables, family)
        return found


def unmodelled_docker_tables(nft: NftablesInfo) -> list[str]:
    """Docker tables listed without a chain in the model (a value built by hand): walking
    without them would judge the host by the other tables only."""
    modelled = {f"{family} {table}" for family, table, _ in nft.native.chains}
    return [table for table in nft.docker_tables if table not in modelled]


def _stages(nft: NftablesInfo | None, family: str) -> list[Stage]:
    stages = list(XTABLES_STAGES)
    for hook in BRIDGED_HOOKS:
        for chain in nft.native.base_chains(hook) if nft is not None else ():
            if chain.family == "bridge":
                stages.append(Stage(hook, "bridge", chain.prio or 0, nft=chain))
            elif chain.family in NFT_FAMILIES[family]:
                stages.append(Stage(hook, "ip", chain.prio or 0, nft=chain))
    return sorted(stages, key=Stage.order)  # stable: x_tables first where priorities tie


class _Path:
    """The possible fates of one packet so far, stage after stage."""

    def __init__(self) -> None:
        # DROP: some branch was dropped; MAYBE: a stage that may or may not drop (packet
        # unchanged either way); UNKNOWN: a branch whose packet may have been rewritten.
        self.possible: set[str] = set()
        self.reasons: dict[str, str] = {}
        self.allow_reason = "no rule stopped it"
        self.filter_accept = False
        # The packet's mark where a native `meta mark set` made it known, else None.
        self.mark: int | None = None

    def maybe(self, reason: str) -> None:
        self.possible.add("MAYBE")
        self.reasons.setdefault("MAYBE", reason)

    def stage(self, outcomes: list[_Outcome], undecided: list[str], table: str) -> bool:
        """Record one stage; False when no branch goes on past it."""
        kinds = {o.kind for o in outcomes}
        for outcome in outcomes:
            if outcome.kind != "ACCEPT":
                self.reasons.setdefault(outcome.kind, outcome.reason)
        self.possible |= kinds & {"DROP", "UNKNOWN"}
        if len(kinds) > 1 and undecided:
            self.reasons.setdefault("MAYBE", "cannot decide " + undecided[0])
        if kinds == {"ACCEPT"} and table == "filter" and not self.filter_accept:
            # The first filter ACCEPT is what an operator looks for: the rule that lets it through.
            self.filter_accept = True
            self.allow_reason = outcomes[0].reason
        return "ACCEPT" in kinds

    def conclude(self, alive: bool) -> Decision:
        possible = self.possible | ({"ACCEPT"} if alive else set())
        if "DROP" in possible and possible <= {"DROP", "MAYBE"}:
            return Decision(Verdict.DENY, self.reasons["DROP"])
        if possible == {"ACCEPT"}:
            return Decision(Verdict.ALLOW, self.allow_reason)
        reason = self.reasons.get("MAYBE") or self.reasons.get("UNKNOWN") or "undecidable"
        return Decision(Verdict.UNKNOWN, reason)


def evaluate_packet(packet: Packet, inputs: PathInputs) -> Decision:
    """The fate of one packet along the bridged path."""
    blocker = inputs.blocker(packet.family)
    if blocker:
        return Decision(Verdict.UNKNOWN, blocker)
    ctx = inputs.match_context()
    call = inputs.call_iptables if packet.family == "ipv4" else inputs.call_ip6tables
    bridge = inputs.firewall.bridge
    native = inputs.firewall.nftables.native if inputs.firewall.nftables else NftRuleset()
    path = _Path()
    for stage in inputs.stages(packet.family):
        if _nat_only(stage) and packet.state != "NEW":
            continue
        if stage.layer == "ip":
            if packet.protocol == "arp" or call == 0:
                continue
            if call is None:
                sysctl = "ip6tables" if packet.family == "ipv6" else "iptables"
                path.maybe(f"net.bridge.bridge-nf-call-{sysctl} unknown")
                continue
        if stage.nft is not None:
            if not _native_stage(path, stage, stage.nft, native, packet, call == 1):
                return path.conclude(alive=False)
            continue
        if stage.layer == "bridge":
            if bridge is None:
                path.maybe("ebtables rules could not be read")
                continue
            rulesets: tuple[Ruleset, ...] = () if inputs.bridge_empty() else (bridge,)
        else:
            rulesets = inputs.firewall.for_family(packet.family)
        for ruleset in rulesets:
            if _absent(ruleset, stage) and path.mark is None:
                continue  # it accepts, and only a filter ACCEPT is named as the reason
            indexes = inputs.table_indexes(ruleset, stage.table)
            outcomes, undecided = walk_stage(
                ruleset, stage.table, stage.chain, packet, ctx, indexes
            )
            if path.mark is not None and _sets_marks(ruleset, stage.table):
                path.mark = None  # checked only when known: it reads the whole table
            if not path.stage(outcomes, undecided, stage.table):
                return path.conclude(alive=False)
    return path.conclude(alive=True)


def _absent(ruleset: Ruleset, stage: Stage) -> bool:
    """A chain other than filter's that the ruleset does not have: walking it changes nothing."""
    return stage.table != "filter" and ruleset.chain(stage.table, stage.chain) is None


def _nat_only(stage: Stage) -> bool:
    """Conntrack lets only a connection's first packet through nat chains: iptables' nat and
    native chains of type nat. ebtables has no conntrack, its nat chains see every frame."""
    if stage.nft is not None:
        return stage.nft.type == "nat"
    return stage.layer == "ip" and stage.table == NAT_NEW_ONLY


def _native_stage(
    path: _Path, stage: Stage, chain: NftChain, native: NftRuleset, packet: Packet, ip_hooks: bool
) -> bool:
    """Walk one native base chain; False when no branch goes on past it."""
    if stage.layer == "ip":
        # Conntrack runs at IP prerouting priority -200; later chains see its entry.
        tracked = stage.hook != "prerouting" or stage.priority > CONNTRACK_PRIORITY
    else:
        # At the bridge hooks the entry comes from the IP prerouting that br_netfilter ran.
        tracked = ip_hooks and (stage.hook != "prerouting" or stage.priority > 0)
    walk = NftWalk(native, packet, stage.layer, stage.hook, tracked, path.mark)
    outcomes = [_Outcome(o.kind, o.reason) for o in walk.run(chain)]
    path.mark = walk.mark
    return path.stage(outcomes, walk.undecided, f"nft {chain.type}")


def _sets_marks(ruleset: Ruleset, table: str) -> bool:
    """Whether a rule of the table may set the packet's mark (later nft mark matches)."""
    found = ruleset.tables.get(table)
    return found is not None and any(
        rule.target in MARK_TARGETS for chain in found.chains.values() for rule in chain.rules
    )
