"""How long the pure core takes for a host with N containers (no I/O: Docker and iptables are
synthesized the way Docker 20.10 lays them out).

    python3 bench/bench_check.py --containers 1000 --links 500 --repeat 3

Every container exposes 80/tcp; container 2k links to 2k+1 (alias db) for the first --links
pairs, so the dump holds 2 ACCEPT rules per link, as Docker writes them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from ipaddress import IPv4Address, ip_network
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.check import CheckInputs, build_report  # noqa: E402
from exporter.config import CheckConfig  # noqa: E402
from exporter.firewall.parse import parse_ebtables_save, parse_iptables_save  # noqa: E402
from exporter.firewall.state import NftablesInfo  # noqa: E402
from exporter.model import (  # noqa: E402
    Container,
    DockerState,
    Endpoint,
    ExposedPort,
    HostSettings,
    Link,
    Network,
)
from exporter.report import SourceStatus  # noqa: E402
from exporter.sources import SOURCE_NAMES, IptablesRead  # noqa: E402

HEAD = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
"""


def host(containers: int, links: int) -> tuple[DockerState, str]:
    bridge = Network("n0", "bridge", "docker0", icc=False, default_bridge=True,
                     subnets=(ip_network("172.17.0.0/16"),))  # fmt: skip
    base = int(IPv4Address("172.17.0.2"))
    made = []
    rules = []
    for i in range(containers):
        linked = i % 2 == 0 and i // 2 < links and i + 1 < containers
        made.append(Container(
            id=f"c{i}", name=f"c{i}", exposed=(ExposedPort(80, "tcp"),),
            endpoints=(Endpoint("n0", ipv4=IPv4Address(base + i)),),
            links=(Link(f"c{i}", f"c{i + 1}", "db"),) if linked else (),
        ))  # fmt: skip
        if linked:
            parent, child = IPv4Address(base + i), IPv4Address(base + i + 1)
            common = "-i docker0 -o docker0 -p tcp -m tcp"
            rules.append(f"-A DOCKER -s {parent}/32 -d {child}/32 {common} --dport 80 -j ACCEPT")
            rules.append(f"-A DOCKER -s {child}/32 -d {parent}/32 {common} --sport 80 -j ACCEPT")
    state = DockerState("bench", (bridge,), tuple(made))
    return state, HEAD + "\n".join(rules) + "\nCOMMIT\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=1000)
    parser.add_argument("--links", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    state, dump = host(args.containers, args.links)
    settings = HostSettings(bridge_nf_call_iptables=1, bridge_nf_call_ip6tables=1, ip_forward=1)
    times, parse_times = [], []
    for _ in range(args.repeat):
        began = time.perf_counter()
        ruleset = parse_iptables_save(dump, "ipv4")
        parse_times.append(time.perf_counter() - began)
        inputs = CheckInputs(
            statuses=tuple(SourceStatus(name, True, 0.0) for name in SOURCE_NAMES),
            docker=state, settings=settings,
            iptables=IptablesRead("legacy", (ruleset,)), ip6tables=IptablesRead("legacy", ()),
            ebtables=parse_ebtables_save("*filter\n:FORWARD ACCEPT\n"), ipset={},
            nftables=NftablesInfo(),
        )  # fmt: skip
        began = time.perf_counter()
        report = build_report(inputs, CheckConfig(), time.time(), time.monotonic())
        times.append(time.perf_counter() - began)
    flows = sum(c.count for c in report.flow_counts)
    print(f"containers={args.containers} links={args.links} rules={ruleset.rule_count} "
          f"flows={flows} listed={len(report.flows)} drift={report.drift}")  # fmt: skip
    print(f"parse   median {statistics.median(parse_times) * 1000:.1f} ms")
    print(f"decide  median {statistics.median(times) * 1000:.1f} ms (of {args.repeat})")


if __name__ == "__main__":
    main()
