"""Native nftables beside Docker-like iptables rules, judged against real packets.

Why: the nft walk (exporter/firewall/nft.py) and the order of base chains (evaluate.XTABLES_STAGES and
the native chains between them) are only right if the kernel agrees. No dockerd is needed: a
"host" namespace holds a bridge docker0 with three veth ports, each leading to a "container"
namespace; bridge-nf-call-iptables and -ip6tables are 1 there. For each captured ruleset of tests/fixtures/nft,
the host namespace gets Docker-like iptables-nft rules plus that ruleset; then every pair of
containers is probed on TCP and UDP ports with real sockets, and the evaluator, fed what the save
tools and `nft -j` print back, must give the same verdict for every flow, never unknown.

Neighbours are static (nud permanent): no ARP frame crosses the bridge, so the kernel decides
exactly the IP packets the evaluator is asked about. Sockets are made by worker threads that
entered a container namespace with setns(2) (it moves only the calling thread).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from exporter.firewall.evaluate import PathInputs, Verdict
from exporter.firewall.state import FirewallState
from tests.netns import (
    delete_namespaces,
    enter,
    firewall_state,
    flow_verdict,
    module_lab,
    run,
    sh,
    tcp_connects,
)

pytestmark = pytest.mark.lab

FIXTURES = Path(__file__).parent.parent / "fixtures" / "nft"
RULESETS = sorted(path.stem for path in FIXTURES.glob("*.nft"))
BRIDGE = "docker0"
SUBNET = "172.30.0."
SUBNET6 = "fd00:30::"
FAMILIES = ("ipv4", "ipv6")
CONTAINERS = 3
TCP_PORTS = (80, 8080)
UDP_PORTS = (5005, 7000, 9090)
# Docker-like: replies pass, TCP 8080 and UDP between containers are accepted, the rest dropped.
IPTABLES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -i docker0 -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -i docker0 -o docker0 -p tcp -m tcp --dport 8080 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -p udp -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j DROP
COMMIT
"""
# A dropped SYN or datagram is a timeout; an accepted one arrives in well under a millisecond.
TIMEOUT = 0.5
# (family, source index, target index, protocol, port)
Flow = tuple[str, int, int, str, int]
TOOLS = ("ip", "nsenter", "nft", "iptables-nft-restore", "iptables-nft-save",
         "ip6tables-nft-restore", "ip6tables-nft-save", "ebtables-nft-save")  # fmt: skip


def address(index: int, family: str = "ipv4") -> str:
    return f"{SUBNET if family == 'ipv4' else SUBNET6}{index + 2}"


def socket_family(family: str) -> socket.AddressFamily:
    return socket.AF_INET if family == "ipv4" else socket.AF_INET6


def mac(index: int) -> str:
    return f"02:42:ac:1e:00:{index + 2:02x}"


class NftLab:
    def __init__(self) -> None:
        self.name = f"dnpnft-{os.getpid()}-{secrets.token_hex(3)}"
        self.host = f"{self.name}-h"
        self.containers = [f"{self.name}-c{i}" for i in range(CONTAINERS)]
        self.workers: list[ThreadPoolExecutor] = []
        self.listeners: list[socket.socket] = []
        self.receivers: dict[tuple[str, int, int], socket.socket] = {}

    def build(self) -> None:
        for netns in [self.host, *self.containers]:
            run(["ip", "netns", "add", netns])
        sh(
            self.host,
            f"ip link add {BRIDGE} type bridge && ip link set {BRIDGE} up && ip link set lo up && "
            f"ip addr add {SUBNET}1/24 dev {BRIDGE} && "
            "echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables && "
            "echo 1 > /proc/sys/net/bridge/bridge-nf-call-ip6tables",
        )
        sysctls = sh(
            self.host,
            "cat /proc/sys/net/bridge/bridge-nf-call-iptables "
            "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
        )
        if sysctls.split() != ["1", "1"]:
            raise RuntimeError("bridge-nf-call-ip(6)tables are not 1 in the lab (br_netfilter?)")
        for index, netns in enumerate(self.containers):
            sh(
                self.host,
                f"ip link add veth{index} type veth peer name eth0 netns {netns} && "
                f"ip link set veth{index} master {BRIDGE} up",
            )
            neighbours = "".join(
                f" && ip neigh replace {address(peer, family)} lladdr {mac(peer)} nud permanent "
                "dev eth0"
                for peer in range(CONTAINERS)
                if peer != index
                for family in FAMILIES
            )
            sh(
                netns,
                f"ip link set eth0 address {mac(index)} && ip addr add {address(index)}/24 dev "
                f"eth0 && ip addr add {address(index, 'ipv6')}/64 dev eth0 nodad && "
                f"ip link set eth0 up && ip link set lo up{neighbours}",
            )
        for index, netns in enumerate(self.containers):
            worker = ThreadPoolExecutor(8, initializer=enter, initargs=(netns,))
            self.workers.append(worker)
            worker.submit(self.listen, index).result()

    def listen(self, index: int) -> None:
        for family in FAMILIES:
            for port in TCP_PORTS:
                listener = socket.socket(socket_family(family), socket.SOCK_STREAM)
                listener.bind((address(index, family), port))
                listener.listen(1024)
                self.listeners.append(listener)
            for port in UDP_PORTS:
                receiver = socket.socket(socket_family(family), socket.SOCK_DGRAM)
                receiver.bind((address(index, family), port))
                receiver.setblocking(False)
                self.receivers[(family, index, port)] = receiver

    def close(self) -> None:
        for worker in self.workers:
            worker.shutdown(wait=True)
        for sock in [*self.listeners, *self.receivers.values()]:
            sock.close()
        delete_namespaces([self.host, *self.containers])

    def load(self, nft_file: Path) -> FirewallState:
        """Docker-like iptables rules plus one native ruleset; the state as the tools print it."""
        sh(self.host, "nft flush ruleset")
        sh(self.host, "iptables-nft-restore", IPTABLES)
        sh(self.host, "ip6tables-nft-restore", IPTABLES)
        sh(self.host, "nft -f -", nft_file.read_text().replace("flush ruleset", ""))
        return firewall_state(self.host, "nft")

    @staticmethod
    def tcp(family: str, src: int, dst: int, port: int) -> bool:
        return tcp_connects(socket_family(family), address(dst, family), port, TIMEOUT)

    def send(self, family: str, src: int, dst: int, port: int) -> bytes:
        token = f"{self.name} {family} {src} {dst} {port} {secrets.token_hex(4)}".encode()
        sock = socket.socket(socket_family(family), socket.SOCK_DGRAM)
        try:
            sock.sendto(token, (address(dst, family), port))
        finally:
            sock.close()
        return token

    def delivered(self, tokens: list[bytes]) -> list[bool]:
        """Which datagrams arrived: every receiver read until all came or the time is up."""
        seen: set[bytes] = set()
        deadline = time.monotonic() + TIMEOUT
        while not seen >= set(tokens) and time.monotonic() < deadline:
            for receiver in self.receivers.values():
                while True:
                    try:
                        seen.add(receiver.recv(256))
                    except BlockingIOError:
                        break
            time.sleep(0.01)
        return [token in seen for token in tokens]

    def probe(self, flows: list[Flow]) -> list[bool]:
        """Whether each flow passes, all probed at once from their source namespaces."""
        futures = [
            self.workers[src].submit(
                self.tcp if protocol == "tcp" else self.send, family, src, dst, port
            )
            for family, src, dst, protocol, port in flows
        ]
        results = [future.result() for future in futures]
        tokens = [r for r in results if isinstance(r, bytes)]
        arrived = dict(zip(tokens, self.delivered(tokens), strict=True))
        return [arrived[r] if isinstance(r, bytes) else r for r in results]


def expected(state: FirewallState, flow: Flow) -> Verdict:
    """The evaluator's verdict; the lab's neighbours are static, so no ARP crosses the bridge."""
    family, src, dst, protocol, port = flow
    return flow_verdict(
        PathInputs(state, 1, 1), family, address(src, family), address(dst, family), BRIDGE,
        protocol, port, arp=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def lab() -> Iterator[NftLab]:
    yield from module_lab(NftLab(), TOOLS)


FLOWS: list[Flow] = [
    (family, src, dst, protocol, port)
    for family in FAMILIES
    for src in range(CONTAINERS)
    for dst in range(CONTAINERS)
    if src != dst
    for protocol, ports in (("tcp", TCP_PORTS), ("udp", UDP_PORTS))
    for port in ports
]


@pytest.mark.parametrize("name", RULESETS)
def test_verdicts_equal_real_packets(lab: NftLab, name: str):
    state = lab.load(FIXTURES / f"{name}.nft")
    real = lab.probe(FLOWS)
    wrong = []
    for flow, passed in zip(FLOWS, real, strict=True):
        verdict = expected(state, flow)
        if verdict is not (Verdict.ALLOW if passed else Verdict.DENY):
            family, src, dst, protocol, port = flow
            wrong.append(f"{address(src, family)} -> {address(dst, family)} {protocol}/{port}: "
                         f"evaluator {verdict.value}, kernel {'passes' if passed else 'drops'}")  # fmt: skip
    assert not wrong, "\n".join(wrong)
    assert any(real) and not all(real)  # the lab passes some flows and drops others
