"""Docker 29's nftables backend (`table ip docker-bridges`), judged against real packets.

Why: the evaluator walks Docker's own tables like any native table, and docker_nft.py says which
rule drifted; both are only right if the kernel agrees. Debian's dockerd is 20.10 (no nftables
backend), so the host is built by hand: a "host" namespace with the bridges of the fixtures
(docker0, bridge1, and the internal bridgeICC and bridgeNoICC), one namespace per "container" with
a veth port on its bridge, bridge-nf-call-iptables=1, and each ruleset of
tests/fixtures/layouts/docker29-nftables-*.rules loaded with `nft -f`, as it is and drifted (a link
rule deleted, the ICC rule flipped, an extra accept, a user table dropping a link flow). Every
pair on every bridge is probed with real TCP connects and UDP datagrams; the evaluator, fed what
`nft -j list ruleset` and the save tools print back, must give the same verdict for each, never
unknown, and docker_nft_findings must name the drift.

Neighbours are static (nud permanent): no ARP crosses the bridges. Sockets are made by worker
threads that entered a container namespace with setns(2) (it moves only the calling thread).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from exporter.comparison import flow_findings
from exporter.docker_nft import docker_nft_findings
from exporter.expectations import network_expectations
from exporter.firewall.evaluate import PathInputs, Verdict
from exporter.firewall.state import FirewallState
from exporter.flows import evaluate_flows
from exporter.model import Container, DockerState, Endpoint, ExposedPort, Link, Network
from exporter.report import (
    BLOCKED_LINK_FLOW,
    ICC_DROP_MISSING,
    MISSING_ACCEPT_RULE,
    UNEXPECTED_ACCEPT_RULE,
)
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

LAYOUTS = Path(__file__).parent.parent / "fixtures" / "layouts"
# bridge -> (subnet prefix, containers); bridgeICC's subnet is not in its fixture (no rule names
# an address there), so it takes one that does not clash with bridge1's.
BRIDGES = {
    "docker0": ("172.17.0.", ("web", "client", "loner")),
    "bridge1": ("192.0.2.", ("c1", "c2")),
    "bridgeICC": ("203.0.113.", ("a1", "a2")),
    "bridgeNoICC": ("198.51.100.", ("b1", "b2")),
}
TCP_PORTS = (80, 8080)
UDP_PORTS = (80, 5005)
# A dropped SYN or datagram is a timeout; an accepted one arrives in well under a millisecond.
TIMEOUT = 0.5
TOOLS = ("ip", "nsenter", "nft", "iptables-nft-save", "ip6tables-nft-save", "ebtables-nft-save")
# nft 1.0.6 refuses `priority dstnat` at hook output: load priority names as their numbers.
PRIORITIES = {"raw": "-300", "dstnat": "-100", "filter": "0", "srcnat": "100"}
ICC_DROP = 'iifname "docker0" counter drop comment "ICC"'
FORWARD_LINK = "ip saddr 172.17.0.3 ip daddr 172.17.0.2 tcp dport 80 counter accept"


@dataclass(frozen=True)
class Place:
    bridge: str
    name: str
    address: str


PLACES = [
    Place(bridge, name, f"{prefix}{index + 2}")
    for bridge, (prefix, names) in BRIDGES.items()
    for index, name in enumerate(names)
]
# (source place index, target place index, protocol, port): every pair on one bridge.
Flow = tuple[int, int, str, int]
FLOWS: list[Flow] = [
    (s, t, protocol, port)
    for s, source in enumerate(PLACES)
    for t, target in enumerate(PLACES)
    if s != t and source.bridge == target.bridge
    for protocol, ports in (("tcp", TCP_PORTS), ("udp", UDP_PORTS))
    for port in ports
]


def mac(index: int) -> str:
    return f"02:42:c0:a8:00:{index + 2:02x}"


def layout(name: str) -> str:
    """A fixture as nft -f takes it: comment header out, priority names as numbers."""
    text = "".join(
        line for line in (LAYOUTS / f"docker29-nftables-{name}.rules").read_text().splitlines(True)
        if not line.startswith("#")
    )  # fmt: skip
    return re.sub(r"priority (\w+);", lambda m: f"priority {PRIORITIES[m.group(1)]};", text)


class Docker29Lab:
    def __init__(self) -> None:
        self.name = f"dnp29-{os.getpid()}-{secrets.token_hex(3)}"
        self.host = f"{self.name}-h"
        self.namespaces = [f"{self.name}-{i}" for i in range(len(PLACES))]
        self.workers: list[ThreadPoolExecutor] = []
        self.sockets: list[socket.socket] = []
        self.receivers: list[socket.socket] = []

    def build(self) -> None:
        for netns in [self.host, *self.namespaces]:
            run(["ip", "netns", "add", netns])
        bridges = " && ".join(
            f"ip link add {bridge} type bridge && ip link set {bridge} up && "
            f"ip addr add {prefix}1/24 dev {bridge}"
            for bridge, (prefix, _) in BRIDGES.items()
        )
        sh(
            self.host,
            f"ip link set lo up && {bridges} && "
            "echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables && "
            "echo 1 > /proc/sys/net/bridge/bridge-nf-call-ip6tables",
        )
        if sh(self.host, "cat /proc/sys/net/bridge/bridge-nf-call-iptables").strip() != "1":
            raise RuntimeError("bridge-nf-call-iptables is not 1 in the lab (br_netfilter?)")
        for index, (place, netns) in enumerate(zip(PLACES, self.namespaces, strict=True)):
            sh(
                self.host,
                f"ip link add v{index} type veth peer name eth0 netns {netns} && "
                f"ip link set v{index} master {place.bridge} up",
            )
            neighbours = "".join(
                f" && ip neigh replace {peer.address} lladdr {mac(other)} nud permanent dev eth0"
                for other, peer in enumerate(PLACES)
                if peer.bridge == place.bridge and other != index
            )
            sh(
                netns,
                f"ip link set eth0 address {mac(index)} && ip addr add {place.address}/24 dev "
                f"eth0 && ip link set eth0 up && ip link set lo up{neighbours}",
            )
            worker = ThreadPoolExecutor(8, initializer=enter, initargs=(netns,))
            self.workers.append(worker)
            worker.submit(self.listen, place).result()

    def listen(self, place: Place) -> None:
        for port in TCP_PORTS:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind((place.address, port))
            listener.listen(1024)
            self.sockets.append(listener)
        for port in UDP_PORTS:
            receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            receiver.bind((place.address, port))
            receiver.setblocking(False)
            self.receivers.append(receiver)

    def close(self) -> None:
        for worker in self.workers:
            worker.shutdown(wait=True)
        for sock in [*self.sockets, *self.receivers]:
            sock.close()
        delete_namespaces([self.host, *self.namespaces])

    def load(self, ruleset: str) -> FirewallState:
        """Only this ruleset in the kernel; the state as nft and the save tools print it."""
        sh(self.host, "nft flush ruleset")
        sh(self.host, "nft -f -", ruleset)
        return firewall_state(self.host, None)

    @staticmethod
    def tcp(target: str, port: int) -> bool:
        return tcp_connects(socket.AF_INET, target, port, TIMEOUT)

    def send(self, target: str, port: int) -> bytes:
        token = f"{self.name} {target} {port} {secrets.token_hex(4)}".encode()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.sendto(token, (target, port))
        finally:
            sock.close()
        return token

    def delivered(self, tokens: list[bytes]) -> set[bytes]:
        seen: set[bytes] = set()
        deadline = time.monotonic() + TIMEOUT
        while not seen >= set(tokens) and time.monotonic() < deadline:
            for receiver in self.receivers:
                while True:
                    try:
                        seen.add(receiver.recv(256))
                    except BlockingIOError:
                        break
            time.sleep(0.01)
        return seen

    def probe(self) -> dict[Flow, bool]:
        """Whether each flow passes, all probed at once from their source namespaces."""
        futures = [
            self.workers[s].submit(
                self.tcp if protocol == "tcp" else self.send, PLACES[t].address, port
            )
            for s, t, protocol, port in FLOWS
        ]
        results = [future.result() for future in futures]
        seen = self.delivered([r for r in results if isinstance(r, bytes)])
        return {
            flow: (r in seen if isinstance(r, bytes) else r)
            for flow, r in zip(FLOWS, results, strict=True)
        }


def evaluated(inputs: PathInputs, flow: Flow) -> Verdict:
    s, t, protocol, port = flow
    source, target = PLACES[s], PLACES[t]
    return flow_verdict(
        inputs, "ipv4", source.address, target.address, source.bridge, protocol, port,
        arp=inputs.decides_arp(),
    )  # fmt: skip


# ---- the declared states of the fixtures ----------------------------------------------------


def network(bridge: str, icc: bool, internal: bool = False) -> Network:
    prefix = BRIDGES[bridge][0]
    return Network(
        id=f"id-{bridge}", name="bridge" if bridge == "docker0" else bridge, bridge=bridge,
        icc=icc, internal=internal, default_bridge=bridge == "docker0",
        subnets=(ip_network(f"{prefix}0/24" if bridge != "docker0" else "172.17.0.0/16"),),
    )  # fmt: skip


def containers(net: Network) -> list[Container]:
    exposed = {"web": (ExposedPort(80, "tcp"),), "c1": (ExposedPort(80, "tcp"),)}
    links = {"client": (Link("id-client", "id-web", "web"),)}
    return [
        Container(
            id=f"id-{place.name}",
            name=place.name,
            exposed=exposed.get(place.name, ()),
            endpoints=(Endpoint(net.id, ipv4=ip_address(place.address)),),  # type: ignore[arg-type]
            links=links.get(place.name, ()),
        )  # fmt: skip
        for place in PLACES
        if place.bridge == net.bridge
    ]


def state(*networks: Network) -> DockerState:
    found = [c for net in networks for c in containers(net)]
    return DockerState("29.0.0", networks=networks, containers=tuple(found))


LINK_STATE = state(network("docker0", False))
STATES = {
    "icc-false-link": LINK_STATE,
    "icc-true": state(network("docker0", True)),
    "usernet-icc-true": state(network("docker0", True), network("bridge1", True)),
    "usernet-icc-false": state(network("docker0", True), network("bridge1", False)),
    "usernet-internal": state(
        network("docker0", True),
        network("bridgeICC", True, internal=True),
        network("bridgeNoICC", False, internal=True),
    ),
}
USER_DROP = (
    "table inet user {\nchain user_forward {\ntype filter hook forward priority 0;\n"
    "ip saddr 172.17.0.3 ip daddr 172.17.0.2 drop\n}\n}\n"
)


@dataclass(frozen=True)
class Scenario:
    fixture: str
    change: Callable[[str], str]
    # Finding kinds docker_nft_findings must report, in order.
    kinds: tuple[str, ...]
    # (source, target, protocol, port) -> whether the kernel must pass it: the drift shows.
    must: tuple[tuple[str, str, str, int, bool], ...] = ()


def unchanged(text: str) -> str:
    return text


def replaced(old: str, new: str) -> Callable[[str], str]:
    def change(text: str) -> str:
        assert old in text, old
        return text.replace(old, new)

    return change


CLEAN_LINK = (("client", "web", "tcp", 80, True), ("loner", "web", "tcp", 80, False))
SCENARIOS = {
    **{name: Scenario(name, unchanged, ()) for name in STATES},
    "icc-false-link": Scenario("icc-false-link", unchanged, (), CLEAN_LINK),
    "link-rule-deleted": Scenario(
        "icc-false-link", replaced(f"\t\t{FORWARD_LINK}\n", ""), (MISSING_ACCEPT_RULE,),
        (("client", "web", "tcp", 80, False),),
    ),
    "icc-flipped": Scenario(
        "icc-false-link", replaced(ICC_DROP, ICC_DROP.replace("drop", "accept")),
        (ICC_DROP_MISSING,), (("loner", "web", "udp", 5005, True),),
    ),
    "extra-accept": Scenario(
        "icc-false-link",
        replaced(ICC_DROP, f"ip saddr 172.17.0.4 ip daddr 172.17.0.2 counter accept\n\t\t{ICC_DROP}"),
        (UNEXPECTED_ACCEPT_RULE,), (("loner", "web", "tcp", 8080, True),),
    ),
    "user-table-drops-link": Scenario(
        "icc-false-link", lambda text: text + USER_DROP, (), (("client", "web", "tcp", 80, False),)
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def lab() -> Iterator[Docker29Lab]:
    yield from module_lab(Docker29Lab(), TOOLS)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_verdicts_equal_real_packets_and_findings_name_the_drift(lab: Docker29Lab, name: str):
    scenario = SCENARIOS[name]
    firewall = lab.load(scenario.change(layout(scenario.fixture)))
    inputs = PathInputs(firewall, 1, 1)
    real = lab.probe()
    wrong = []
    for flow, passed in real.items():
        verdict = evaluated(inputs, flow)
        if verdict is not (Verdict.ALLOW if passed else Verdict.DENY):
            s, t, protocol, port = flow
            wrong.append(f"{PLACES[s].name} -> {PLACES[t].name} {protocol}/{port}: evaluator "
                         f"{verdict.value}, kernel {'passes' if passed else 'drops'}")  # fmt: skip
    assert not wrong, "\n".join(wrong)
    assert any(real.values())
    by_name = {(PLACES[s].name, PLACES[t].name, p, port): v for (s, t, p, port), v in real.items()}
    for source, target, protocol, port, passes in scenario.must:
        assert by_name[(source, target, protocol, port)] is passes, (source, target, port)
    expectations = network_expectations(STATES[scenario.fixture])
    found = docker_nft_findings(expectations, firewall.nftables)  # type: ignore[arg-type]
    assert tuple(f.kind for f in found) == scenario.kinds, found


def test_user_table_drop_of_a_link_flow_is_a_blocked_link_flow(lab: Docker29Lab):
    """Docker's table is intact, so nothing there to restore: the flow verdict names it."""
    firewall = lab.load(layout("icc-false-link") + USER_DROP)
    flows, _ = evaluate_flows(network_expectations(LINK_STATE), PathInputs(firewall, 1, 1))
    blocked = [f for f in flow_findings(flows) if f.kind == BLOCKED_LINK_FLOW]
    assert [(f.containers, f.port) for f in blocked] == [(("client", "web"), 80)]
    assert all(f.actual != "unknown" for f in flows)
