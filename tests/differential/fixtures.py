"""Regression fixtures: a ruleset that once made the evaluator disagree with the kernel.

NAME.rules holds the three restore texts (GeneratedRuleset.text()); NAME.expected one line per
flow with what the kernel did when it was recorded: "SRC DST PROTOCOL PORT passed|dropped".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.differential.generator import GeneratedRuleset, split_fixture
from tests.differential.lab import CONTAINERS, BridgeLab, Probe, address
from tests.differential.run import FLOWS

REGRESSIONS = Path(__file__).parent / "regressions"
_INDEX = {address(i): i for i in range(CONTAINERS)}


@dataclass(frozen=True)
class Fixture:
    name: str
    ruleset: GeneratedRuleset
    expected: dict[Probe, bool]  # flow -> the kernel passed it


def _line(probe: Probe, passed: bool) -> str:
    outcome = "passed" if passed else "dropped"
    return f"{address(probe.src)} {address(probe.dst)} {probe.protocol} {probe.port} {outcome}"


def write_fixture(lab: BridgeLab, ruleset: GeneratedRuleset, stem: Path) -> Path:
    """Probe every flow of the ruleset once more and write NAME.rules and NAME.expected."""
    lab.load(*ruleset.restore_texts())
    passed = lab.probe(list(FLOWS))
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".rules").write_text(ruleset.text())
    lines = [_line(p, ok) for p, ok in zip(FLOWS, passed, strict=True)]
    stem.with_suffix(".expected").write_text("\n".join(lines) + "\n")
    return stem.with_suffix(".rules")


def read_fixture(rules: Path) -> Fixture:
    nft, legacy, ebtables, ipset, native = split_fixture(rules.read_text())
    expected = {}
    for line in rules.with_suffix(".expected").read_text().splitlines():
        src, dst, protocol, port, outcome = line.split()
        expected[Probe(_INDEX[src], _INDEX[dst], protocol, int(port))] = outcome == "passed"
    ruleset = GeneratedRuleset(0, nft, legacy, ebtables, frozenset({"regression"}), ipset, native)
    return Fixture(rules.stem, ruleset, expected)


def fixtures() -> list[Path]:
    return sorted(REGRESSIONS.glob("*.rules"))
