"""Load a ruleset into the lab, ask the evaluator and the kernel about every flow, compare.

The evaluator reads only what the real tools print back (iptables-nft-save,
iptables-legacy-save, ebtables-nft-save, ipset save, `nft -j list ruleset` for the native
tables), parsed by exporter.firewall.parse, exactly as the exporter would on a host. A flow's model verdict is built the way exporter/flows.py builds it,
minus ARP (the lab's neighbours are static, so no ARP frame crosses the bridge).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from ipaddress import ip_address

from exporter.firewall.evaluate import Decision, PathInputs, Verdict, evaluate_packet
from exporter.firewall.nft import unsupported
from exporter.firewall.parse import (
    parse_ebtables_save,
    parse_ipset_save,
    parse_iptables_save,
    parse_nft_ruleset,
)
from exporter.firewall.rules import Ruleset
from exporter.firewall.state import FirewallState
from exporter.flows import flow_packets
from tests.differential.generator import GeneratedRuleset, generate
from tests.differential.lab import (
    BRIDGE,
    CONTAINERS,
    RECHECK_TIMEOUT,
    TCP_PORTS,
    UDP_PORTS,
    BridgeLab,
    LabError,
    Loaded,
    Probe,
    address,
)

FLOWS: tuple[Probe, ...] = tuple(
    Probe(src, dst, protocol, port)
    for src in range(CONTAINERS)
    for dst in range(CONTAINERS)
    if src != dst
    for protocol, ports in (("tcp", TCP_PORTS), ("udp", UDP_PORTS))
    for port in ports
)


@dataclass(frozen=True)
class FlowResult:
    probe: Probe
    decision: Decision
    passed: bool  # what the kernel did

    @property
    def disagrees(self) -> bool:
        verdict = self.decision.verdict
        return (verdict is Verdict.ALLOW and not self.passed) or (
            verdict is Verdict.DENY and self.passed
        )

    def describe(self) -> str:
        p = self.probe
        kernel = "passed" if self.passed else "dropped"
        return (
            f"{address(p.src)} -> {address(p.dst)} {p.protocol}/{p.port}: evaluator says "
            f"{self.decision.verdict} ({self.decision.reason}), the kernel {kernel} it"
        )


@dataclass(frozen=True)
class RulesetResult:
    generated: GeneratedRuleset
    flows: tuple[FlowResult, ...]
    # Lines of the real save output the parser did not understand (it then decides less).
    parse_problems: tuple[str, ...]

    @property
    def disagreements(self) -> list[FlowResult]:
        return [f for f in self.flows if f.disagrees]

    def report(self) -> str:
        lines = [
            f"seed {self.generated.seed}: {len(self.disagreements)} disagreement(s) (again: "
            f"python3 -m tests.differential --count 1 --seed {self.generated.seed})"
        ]
        lines += [f"  {f.describe()}" for f in self.disagreements]
        lines += ["  ruleset:", *(f"    {line}" for line in self.generated.text().splitlines())]
        return "\n".join(lines)


def _problems(ruleset: Ruleset) -> list[str]:
    found = [f"{u.text!r}: {u.reason}" for u in ruleset.unknown_lines]
    for table in ruleset.tables.values():
        for chain in table.chains.values():
            found += [f"{rule.text!r}: {rule.error}" for rule in chain.rules if rule.error]
    return found


def firewall_state(loaded: Loaded) -> tuple[FirewallState, list[str]]:
    """What the exporter would know, read from the real save output; plus parse problems."""
    rulesets = (
        parse_iptables_save(loaded.iptables_nft, "ipv4", "nft"),
        parse_iptables_save(loaded.iptables_legacy, "ipv4", "legacy"),
    )
    bridge = parse_ebtables_save(loaded.ebtables)
    # As the exporter reads nft: the whole ruleset, iptables-nft's tables left to their save tool.
    nftables = parse_nft_ruleset(loaded.nft_json)
    problems = [p for r in (*rulesets, bridge) for p in _problems(r)]
    problems += unsupported(nftables.native)
    state = FirewallState(None, rulesets, bridge, parse_ipset_save(loaded.ipset), nftables)
    return state, problems


def model_decision(probe: Probe, inputs: PathInputs) -> Decision:
    """As exporter/flows.py decides a flow: every packet it needs must pass. The lab's neighbours
    are static, so no ARP crosses the bridge: the packets are the IP ones only."""
    src, dst = ip_address(address(probe.src)), ip_address(address(probe.dst))
    packets = flow_packets("ipv4", src, dst, BRIDGE, probe.protocol, probe.port, arp=False)
    decisions = [evaluate_packet(packet, inputs) for packet in packets]
    for verdict in (Verdict.DENY, Verdict.UNKNOWN):
        for decision in decisions:
            if decision.verdict is verdict:
                return decision
    return decisions[0]


def run_ruleset(
    lab: BridgeLab, generated: GeneratedRuleset, flows: Iterable[Probe] = FLOWS
) -> RulesetResult:
    flows = tuple(flows)
    try:
        loaded = lab.load(*generated.restore_texts())
    except LabError as error:
        message = f"seed {generated.seed}: the generator made a rule the tools refuse: {error}"
        raise LabError(message) from error
    state, problems = firewall_state(loaded)
    inputs = PathInputs(state, call_iptables=1, call_ip6tables=1)
    passed = lab.probe(list(flows))
    results = [
        FlowResult(probe, model_decision(probe, inputs), ok)
        for probe, ok in zip(flows, passed, strict=True)
    ]
    return RulesetResult(generated, tuple(_recheck_drops(lab, results)), tuple(problems))


def _recheck_drops(lab: BridgeLab, results: list[FlowResult]) -> list[FlowResult]:
    """Probe once more, with a long timeout, each drop the evaluator called an allow.

    A pass is never spurious (a dropped packet cannot arrive), a drop may be a slow packet.
    """
    suspects = [i for i, r in enumerate(results) if r.disagrees and not r.passed]
    if suspects:
        again = lab.probe([results[i].probe for i in suspects], RECHECK_TIMEOUT)
        for i, passed in zip(suspects, again, strict=True):
            results[i] = replace(results[i], passed=passed)
    return results


@dataclass
class Tally:
    """Counts over a run: verdicts, unknowns per generator feature, disagreements."""

    rulesets: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    feature_flows: Counter[str] = field(default_factory=Counter)
    feature_unknown: Counter[str] = field(default_factory=Counter)
    failed: list[RulesetResult] = field(default_factory=list)
    parse_problems: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def add(self, result: RulesetResult) -> None:
        self.rulesets += 1
        unknown = sum(f.decision.verdict is Verdict.UNKNOWN for f in result.flows)
        for flow in result.flows:
            self.verdicts[str(flow.decision.verdict)] += 1
            self.verdicts["kernel passed" if flow.passed else "kernel dropped"] += 1
        for feature in result.generated.features:
            self.feature_flows[feature] += len(result.flows)
            self.feature_unknown[feature] += unknown
        self.parse_problems.update(result.parse_problems)
        if result.disagreements:
            self.failed.append(result)

    @property
    def compared(self) -> int:
        return sum(self.verdicts[str(v)] for v in Verdict)

    @property
    def decided(self) -> int:
        return self.verdicts[str(Verdict.ALLOW)] + self.verdicts[str(Verdict.DENY)]

    def table(self) -> str:
        """The summary and the unknown rate per feature, highest first."""
        v = self.verdicts
        lines = [
            f"{self.rulesets} rulesets, {self.compared} flows compared in {self.seconds:.1f} s: "
            f"allow {v['allow']}, deny {v['deny']}, unknown {v['unknown']} "
            f"({100 * v['unknown'] / max(self.compared, 1):.1f} %); kernel passed "
            f"{v['kernel passed']}, dropped {v['kernel dropped']}; "
            f"{sum(len(r.disagreements) for r in self.failed)} disagreement(s) "
            f"in {len(self.failed)} ruleset(s)",
            f"{'feature (flows of rulesets that use it)':<44} {'flows':>7} {'unknown':>8} {'rate':>7}",
        ]
        rates = sorted(
            self.feature_flows,
            key=lambda f: (-self.feature_unknown[f] / self.feature_flows[f], f),
        )
        for feature in rates:
            flows, unknown = self.feature_flows[feature], self.feature_unknown[feature]
            lines.append(f"{feature:<44} {flows:>7} {unknown:>8} {100 * unknown / flows:>6.1f}%")
        if self.parse_problems:
            lines.append("lines of real save output the parser did not understand:")
            lines += [f"  {n} x {text}" for text, n in self.parse_problems.most_common(10)]
        return "\n".join(lines)


def run_many(lab: BridgeLab, first_seed: int, count: int) -> Tally:
    tally = Tally()
    start = time.monotonic()
    for seed in range(first_seed, first_seed + count):
        tally.add(run_ruleset(lab, generate(seed)))
    tally.seconds = time.monotonic() - start
    return tally


def shrink(lab: BridgeLab, generated: GeneratedRuleset, flow: Probe) -> GeneratedRuleset:
    """Drop rules one at a time while the flow still disagrees: the smallest ruleset that shows it.

    Whole -A lines go, and whole rules of the native tables (their lines start with two tabs);
    chains, tables, sets and policies stay (a jump to a missing chain would not load). Greedy,
    one pass per round until nothing more can go.
    """

    def disagrees(candidate: GeneratedRuleset) -> bool:
        return run_ruleset(lab, candidate, [flow]).flows[0].disagrees

    current = generated
    shrunk = True
    while shrunk:
        shrunk = False
        for which in ("iptables_nft", "iptables_legacy", "ebtables", "nft"):
            lines = getattr(current, which).splitlines()
            index = 0
            while index < len(lines):
                if not _is_rule(lines[index]):
                    index += 1
                    continue
                trial_lines = lines[:index] + lines[index + 1 :]
                trial = _replace(current, which, "\n".join(trial_lines) + "\n")
                if disagrees(trial):
                    current, lines, shrunk = trial, trial_lines, True
                else:
                    index += 1
    return current


def _is_rule(line: str) -> bool:
    """An iptables/ebtables -A line, or a rule of a native table (not a base chain's header)."""
    native = line.startswith("\t\t") and not line.startswith("\t\ttype ")
    return line.startswith("-A ") or native


def _replace(generated: GeneratedRuleset, which: str, text: str) -> GeneratedRuleset:
    fields = {
        "iptables_nft": generated.iptables_nft,
        "iptables_legacy": generated.iptables_legacy,
        "ebtables": generated.ebtables,
        "ipset": generated.ipset,
        "nft": generated.nft,
        which: text,
    }
    return GeneratedRuleset(generated.seed, features=generated.features, **fields)
