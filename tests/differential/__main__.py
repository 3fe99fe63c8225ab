"""Run the differential test on demand: `python3 -m tests.differential --count 1000 --seed 7`.

Prints the per-feature unknown table and every disagreement (seed, flow, ruleset). With
--shrink, each disagreeing ruleset is reduced to the fewest rules that still disagree on its
first disagreeing flow; with --record DIR, that ruleset and the kernel's verdicts for every flow
are written there as a regression fixture (NAME.rules, NAME.expected). Exit 1 on any
disagreement, 2 when the lab cannot run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.differential.fixtures import write_fixture
from tests.differential.lab import BridgeLab, LabError
from tests.differential.run import run_many, run_ruleset, shrink


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.differential")
    parser.add_argument("--count", type=int, default=200, help="rulesets to try")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first ruleset")
    parser.add_argument("--shrink", action="store_true", help="minimise each disagreement")
    parser.add_argument("--record", type=Path, help="write shrunk disagreements as fixtures here")
    args = parser.parse_args(argv)
    try:
        with BridgeLab() as lab:
            tally = run_many(lab, args.seed, args.count)
            print(tally.table())
            for result in tally.failed:
                print(result.report())
                if not (args.shrink or args.record):
                    continue
                flow = result.disagreements[0].probe
                small = shrink(lab, result.generated, flow)
                print(run_ruleset(lab, small).report().replace("seed", "shrunk seed", 1))
                if args.record:
                    path = write_fixture(lab, small, args.record / f"seed-{small.seed}")
                    print(f"recorded {path}")
    except LabError as error:
        print(f"differential lab failed: {error}", file=sys.stderr)
        return 2
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(main())
