"""How parse and decide time grow with the number of user chains a packet can reach, against the
floor: the time the kernel's own tool takes to print the same rules.

    sudo python3 bench/bench_chains.py --chains 10000 20000 40000
    python3 bench/bench_chains.py --chains 10000 --no-kernel   # not root: skip the floor

Docker 28's real layout (tests/fixtures/layouts/docker28-icc-false-link.rules: web exposes 80/tcp,
client --link web:web, icc=false) with N per-host chains around it, the way fail2ban, CrowdSec or a
firewall script builds them: DOCKER-USER sends each remote host's packets to its own chain
(`-s 198.18.x.y/32 -j HOST-n`), which accepts ssh from it and drops the rest. Container packets
match none of them, so every chain is reachable and every verdict is still decided.

The floor loads the dump with iptables-nft-restore into a throwaway network namespace and times
iptables-nft-save there; the namespace is deleted afterwards, whatever happens.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import time
import tracemalloc
from ipaddress import IPv4Address, ip_network
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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

LAYOUT = ROOT / "tests" / "fixtures" / "layouts" / "docker28-icc-false-link.rules"
# RFC 2544 benchmarking range: never a container's address.
REMOTE_BASE = int(IPv4Address("198.18.0.1"))


def docker_state() -> DockerState:
    """The containers the layout's rules were written for."""
    bridge = Network("id-bridge", "bridge", "docker0", icc=False, default_bridge=True,
                     subnets=(ip_network("172.17.0.0/16"),))  # fmt: skip
    web = Container("id-web", "web", exposed=(ExposedPort(80, "tcp"),),
                    endpoints=(Endpoint("id-bridge", ipv4=IPv4Address("172.17.0.2")),))  # fmt: skip
    client = Container("id-client", "client",
                       endpoints=(Endpoint("id-bridge", ipv4=IPv4Address("172.17.0.3")),),
                       links=(Link("id-client", "id-web", "web"),))  # fmt: skip
    return DockerState("bench", (bridge,), (web, client))


def dump_with_chains(chains: int) -> str:
    """The layout as iptables-save prints it, with `chains` per-host chains off DOCKER-USER."""
    lines = [line for line in LAYOUT.read_text().splitlines() if not line.startswith("#")]
    names = [f"HOST-{n:05d}" for n in range(chains)]
    declare = [f":{name} - [0:0]" for name in names]
    jumps, bodies = [], []
    for n, name in enumerate(names):
        remote = IPv4Address(REMOTE_BASE + n)
        jumps.append(f"-A DOCKER-USER -s {remote}/32 -j {name}")
        bodies.append(f"-A {name} -p tcp -m tcp --dport 22 -j ACCEPT")
        bodies.append(f"-A {name} -j DROP")
    first_rule = next(i for i, line in enumerate(lines) if line.startswith("-A "))
    commit = lines.index("COMMIT")
    head, docker, tail = lines[:first_rule], lines[first_rule:commit], lines[commit:]
    return "\n".join([*head, *declare, *docker, *jumps, *bodies, *tail]) + "\n"


def decide(dump: str, state: DockerState) -> tuple[float, float, object, int]:
    """Parse and build_report once: (parse seconds, decide seconds, report, rule count)."""
    began = time.perf_counter()
    ruleset = parse_iptables_save(dump, "ipv4", "nft")
    parsed = time.perf_counter()
    inputs = CheckInputs(
        statuses=tuple(SourceStatus(name, True, 0.0) for name in SOURCE_NAMES),
        docker=state,
        settings=HostSettings(bridge_nf_call_iptables=1, bridge_nf_call_ip6tables=1,
                              ip_forward=1),
        iptables=IptablesRead("nft", (ruleset,)), ip6tables=IptablesRead("nft", ()),
        ebtables=parse_ebtables_save("*filter\n:FORWARD ACCEPT\n"), ipset={},
        nftables=NftablesInfo(),
    )  # fmt: skip
    report = build_report(inputs, CheckConfig(), time.time(), time.monotonic())
    return parsed - began, time.perf_counter() - parsed, report, ruleset.rule_count


def peak_memory(dump: str, state: DockerState) -> int:
    """Peak bytes Python allocates for one parse + decide (a separate run: tracing slows it)."""
    tracemalloc.start()
    try:
        decide(dump, state)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def kernel_floor(dump: str, repeat: int) -> float:
    """Median seconds iptables-nft-save takes to print the dump loaded in a throwaway netns."""
    name = f"dnpbench-{os.getpid()}-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        enter = ["nsenter", f"--net=/run/netns/{name}"]
        subprocess.run([*enter, "iptables-nft-restore"], input=dump, text=True, check=True)
        times = []
        for _ in range(repeat):
            began = time.perf_counter()
            subprocess.run([*enter, "iptables-nft-save"], check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - began)
        return statistics.median(times)
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, nargs="+", default=[10_000, 20_000, 40_000])
    parser.add_argument("--repeat", type=int, default=3, help="runs per size; medians are shown")
    parser.add_argument("--no-kernel", action="store_true", help="skip the iptables-nft floor")
    args = parser.parse_args()
    state = docker_state()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, medians of {args.repeat}")
    print(f"{'chains':>7} {'rules':>7} {'parse s':>8} {'decide s':>9} {'total s':>8} "
          f"{'peak MiB':>9} {'floor s':>8} {'ratio':>6}  verdicts")  # fmt: skip
    for chains in args.chains:
        dump = dump_with_chains(chains)
        runs = [decide(dump, state) for _ in range(args.repeat)]
        parse_s = statistics.median(r[0] for r in runs)
        decide_s = statistics.median(r[1] for r in runs)
        report, rules = runs[-1][2], runs[-1][3]
        total = parse_s + decide_s
        memory = peak_memory(dump, state) / 2**20
        try:
            floor = None if args.no_kernel else kernel_floor(dump, args.repeat)
        except (OSError, subprocess.CalledProcessError) as exc:
            sys.exit(f"floor not measured ({exc}): run as root, or pass --no-kernel")
        verdicts = ",".join(
            f"{c.expected}/{c.actual}={c.count}"
            for c in report.flow_counts  # type: ignore[attr-defined]
            if c.count
        )
        floor_text = "-" if floor is None else f"{floor:.3f}"
        ratio_text = "-" if floor is None else f"{total / floor:.1f}"
        print(
            f"{chains:>7} {rules:>7} {parse_s:>8.3f} {decide_s:>9.3f} {total:>8.3f} "
            f"{memory:>9.1f} {floor_text:>8} {ratio_text:>6}  {verdicts}",
            flush=True,
        )


if __name__ == "__main__":
    main()
