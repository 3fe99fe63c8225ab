"""The kernel is the oracle: the evaluator's allow/deny must be what a real packet does.

A fixed seeded set of random rulesets is loaded into a dockerd-free bridge lab (see lab.py) and
every flow is probed; an allow or deny that the kernel contradicts fails, printing the seed, the
flow and the ruleset. Unknown is allowed and counted per generator feature (the table is printed).
Regression fixtures keep each disagreement found (each an evaluator bug; KNOWN_BUGS lists those
not fixed yet: none now).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.firewall.evaluate import Verdict
from exporter.firewall.parse import parse_nft_ruleset
from tests.differential.fixtures import Fixture, fixtures, read_fixture
from tests.differential.generator import DPORTS, MULTI_DPORTS, generate
from tests.differential.lab import NATIVE_TABLES, UNNAMED_PORT, BridgeLab, lab_namespaces
from tests.differential.nft_generator import DPORTS as NFT_DPORTS
from tests.differential.run import FlowResult, run_many, run_ruleset

pytestmark = pytest.mark.lab

CI_SEED = 1
CI_RULESETS = 200
MIN_VERDICTS = 10_000


@pytest.fixture(scope="module")
def lab() -> Iterator[BridgeLab]:
    with BridgeLab() as built:
        mine = built.name
        yield built
    left = [name for name in lab_namespaces() if name.startswith(mine)]
    assert left == [], f"namespaces left behind: {left}"


def test_random_rulesets_agree_with_the_kernel(
    lab: BridgeLab, capsys: pytest.CaptureFixture[str]
) -> None:
    tally = run_many(lab, CI_SEED, CI_RULESETS)
    with capsys.disabled():
        print(f"\ndifferential, seeds {CI_SEED}..{CI_SEED + CI_RULESETS - 1}:\n{tally.table()}")
    assert not tally.failed, "\n\n".join(result.report() for result in tally.failed[:3])
    assert tally.compared >= MIN_VERDICTS
    # The set must be able to fail: most flows decided, and the kernel both passes and drops.
    assert tally.decided >= 0.8 * tally.compared, "too many unknown verdicts to test anything"
    assert tally.verdicts["kernel passed"] >= 0.2 * tally.compared
    assert tally.verdicts["kernel dropped"] >= 0.2 * tally.compared


# Fixtures of evaluator bugs not fixed yet: the evaluator side must fail until exporter/ is fixed.
KNOWN_BUGS: dict[str, str] = {}


def _fixture_params() -> list[object]:
    return [
        pytest.param(path, id=path.stem, marks=pytest.mark.xfail(strict=True, reason=reason))
        if (reason := KNOWN_BUGS.get(path.stem))
        else pytest.param(path, id=path.stem)
        for path in fixtures()
    ]


_kernel_cache: dict[Path, tuple[Fixture, list[FlowResult]]] = {}


def _probe_fixture(lab: BridgeLab, path: Path) -> tuple[Fixture, list[FlowResult]]:
    """Load a fixture once per run; both regression tests read the same probe."""
    if path not in _kernel_cache:
        fixture = read_fixture(path)
        _kernel_cache[path] = (fixture, list(run_ruleset(lab, fixture.ruleset).flows))
    return _kernel_cache[path]


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in fixtures()])
def test_regression_fixture_still_holds_in_the_kernel(lab: BridgeLab, path: Path) -> None:
    fixture, results = _probe_fixture(lab, path)
    changed = [r.describe() for r in results if fixture.expected[r.probe] != r.passed]
    assert changed == [], f"the kernel no longer does what {path.name} recorded: {changed[:5]}"


@pytest.mark.parametrize("path", _fixture_params())
def test_evaluator_agrees_with_the_kernel_on_regression(lab: BridgeLab, path: Path) -> None:
    fixture, results = _probe_fixture(lab, path)
    wrong = [r.describe() for r in results if r.disagrees]
    assert wrong == [], f"{path.name}:\n" + "\n".join(wrong[:6])
    assert any(r.decision.verdict is not Verdict.UNKNOWN for r in results)


def test_no_generated_destination_port_names_the_unnamed_port() -> None:
    for text in DPORTS + MULTI_DPORTS:
        for part in text.split(","):
            low, _, high = part.partition(":")
            assert not int(low) <= UNNAMED_PORT <= int(high or low), text
    for text in NFT_DPORTS:
        for part in text.strip("{ }").split(","):
            low, _, high = part.strip().partition("-")
            assert not int(low) <= UNNAMED_PORT <= int(high or low), text


def test_the_generator_is_seeded() -> None:
    assert generate(5) == generate(5)
    assert generate(5) != generate(6)
    text = "".join(generate(seed).text() for seed in range(300))
    # The constructs the first differential runs found evaluator bugs in stay generated.
    assert "physdev" in text and "-A PREROUTING -m conntrack" in text


def test_native_tables_are_in_some_rulesets_and_only_the_labs_own() -> None:
    scripts = [generate(seed).nft for seed in range(1, 201)]
    with_native = [s for s in scripts if s]
    assert 0.3 * len(scripts) <= len(with_native) <= 0.5 * len(scripts)
    named = {tuple(line.split()[1:3]) for s in with_native for line in s.splitlines()
             if line.startswith("table ")}  # fmt: skip
    assert named == set(NATIVE_TABLES)


def test_native_tables_of_one_ruleset_are_gone_in_the_next(lab: BridgeLab) -> None:
    with_native = next(g for g in map(generate, range(1, 50)) if g.nft.count("table ") == 3)
    without = next(g for g in map(generate, range(1, 50)) if not g.nft)
    loaded = lab.load(*with_native.restore_texts())
    assert {f"{f} {n}" for f, n in NATIVE_TABLES} <= set(parse_nft_ruleset(loaded.nft_json).tables)
    tables = parse_nft_ruleset(lab.load(*without.restore_texts()).nft_json).tables
    assert not {f"{f} {n}" for f, n in NATIVE_TABLES} & set(tables)
    # Deleting the native tables leaves iptables-nft's and ebtables-nft's own in place.
    assert {"ip filter", "ip mangle", "bridge filter"} <= set(tables)
