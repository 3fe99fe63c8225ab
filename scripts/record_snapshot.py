#!/usr/bin/env python3
"""Record a real snapshot for the golden tests: a lab dockerd, a linked app, `snapshot --out`.

    sudo python3 scripts/record_snapshot.py --backend nft --out tests/fixtures/sources/lab-nft

The lab (tests/lab.py, docs/lab.md) runs dockerd --icc=false in a throwaway network namespace with
`web` (exposes 80/tcp and 53/udp), `client` (--link web:db) and `other` (no link), then runs the
exporter's own `snapshot` command inside that namespace, so every file is what the real tools and
the real Docker API printed. Needs root and the packages scripts/install-deps.sh installs.
After recording, `make golden` regenerates the golden outputs from it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.lab import DockerLab  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("nft", "legacy"), default="nft")
    parser.add_argument("--out", type=Path, required=True, help="new directory to write")
    parser.add_argument(
        "--drift", action="store_true", help="insert `iptables -I DOCKER-USER -j ACCEPT` first"
    )
    args = parser.parse_args()
    with DockerLab(prefix="dnprec") as lab:
        lab.start(icc=False, backend=args.backend)
        lab.run("web", expose=["80/tcp", "53/udp"])
        lab.run("client", links=["web:db"])
        lab.run("other")
        if args.drift:
            lab.iptables("-I", "DOCKER-USER", "-j", "ACCEPT")
        done = lab.exporter("snapshot", "--out", str(args.out.resolve()))
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        if done.returncode != 0:
            return done.returncode
    (args.out / "README.txt").write_text(
        f"Recorded by scripts/record_snapshot.py --backend {args.backend}"
        f"{' --drift' if args.drift else ''}: dockerd --icc=false in a lab namespace,\n"
        "web (--expose 80/tcp, 53/udp), client (--link web:db), other (no link)"
        f"{'; then iptables -I DOCKER-USER -j ACCEPT' if args.drift else ''}.\n"
        "meta.json says what the exporter read, when, and which sources failed.\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
