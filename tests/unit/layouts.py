"""Docker states that match the layout fixtures, and helpers to mutate a dump the way drift does."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from pathlib import Path

from exporter.model import (
    Container,
    DockerState,
    Endpoint,
    ExposedPort,
    HostSettings,
    Link,
    Network,
)

LAYOUTS = Path(__file__).resolve().parent.parent / "fixtures" / "layouts"


def network(name: str, bridge: str, icc: bool, subnet: str, default: bool = False) -> Network:
    return Network(
        id=f"id-{name}",
        name=name,
        bridge=bridge,
        icc=icc,
        default_bridge=default,
        subnets=(ip_network(subnet),),
    )


def container(
    name: str,
    net: Network,
    address: str,
    exposed: tuple[str, ...] = (),
    links: tuple[tuple[str, str], ...] = (),
) -> Container:
    ports = tuple(ExposedPort(int(p.split("/")[0]), p.split("/")[1]) for p in exposed)  # type: ignore[arg-type]
    return Container(
        id=f"id-{name}",
        name=name,
        exposed=ports,
        endpoints=(Endpoint(net.id, ipv4=ip_address(address)),),  # type: ignore[arg-type]
        links=tuple(Link(f"id-{name}", f"id-{child}", alias) for child, alias in links),
    )


@dataclass(frozen=True)
class Layout:
    fixture: str
    state: DockerState

    def text(self) -> str:
        return (LAYOUTS / self.fixture).read_text()


def default_bridge_state(icc: bool) -> DockerState:
    """web 172.17.0.2 exposes 80/tcp; client 172.17.0.3 --link web:web; loner 172.17.0.4."""
    bridge = network("bridge", "docker0", icc, "172.17.0.0/16", default=True)
    return DockerState(
        version="test",
        networks=(bridge,),
        containers=(
            container("web", bridge, "172.17.0.2", exposed=("80/tcp",)),
            container("client", bridge, "172.17.0.3", links=(("web", "web"),)),
            container("loner", bridge, "172.17.0.4"),
        ),
    )


def usernet_state(bridge_name: str, icc: bool) -> DockerState:
    """c1 192.0.2.2 publishes 80 (exposes 80/tcp), c2 192.0.2.3; docker0 with icc on and empty."""
    docker0 = network("bridge", "docker0", True, "172.17.0.0/16", default=True)
    net1 = network("net1", bridge_name, icc, "192.0.2.0/24")
    return DockerState(
        version="test",
        networks=(docker0, net1),
        containers=(
            container("c1", net1, "192.0.2.2", exposed=("80/tcp",)),
            container("c2", net1, "192.0.2.3"),
        ),
    )


def internal_state() -> DockerState:
    docker0 = network("bridge", "docker0", True, "172.17.0.0/16", default=True)
    with_icc = network("bridgeICC", "bridgeICC", True, "192.0.2.0/24")
    without = network("bridgeNoICC", "bridgeNoICC", False, "198.51.100.0/24")
    return DockerState(
        version="test",
        networks=(docker0, with_icc, without),
        containers=(
            container("a1", with_icc, "192.0.2.2"),
            container("a2", with_icc, "192.0.2.3"),
            container("b1", without, "198.51.100.2"),
            container("b2", without, "198.51.100.3"),
        ),
    )


SETTINGS = HostSettings(bridge_nf_call_iptables=1, bridge_nf_call_ip6tables=1, ip_forward=1)

LINK_LAYOUTS = [
    "docker1.12-icc-false-link.rules",
    "docker27-icc-false-link.rules",
    "docker28-icc-false-link.rules",
    "docker29-iptables-icc-false-link.rules",
]
ICC_TRUE_LAYOUTS = [
    "docker1.12-icc-true.rules",
    "docker27-icc-true.rules",
    "docker28-icc-true.rules",
    "docker28.0.0-icc-true.rules",
    "docker29-iptables-icc-true.rules",
]
USERNET_LAYOUTS = {
    "docker27-usernet-icc-false.rules": ("br-0123456789ab", False),
    "docker28-usernet-icc-false.rules": ("bridge1", False),
    "docker28-usernet-icc-true.rules": ("bridge1", True),
    "docker28.0.0-usernet-icc-false.rules": ("bridge1", False),
    "docker29-iptables-usernet-icc-false.rules": ("bridge1", False),
    "docker29-iptables-usernet-icc-true.rules": ("bridge1", True),
}
INTERNAL_LAYOUTS = ["docker28-usernet-internal.rules", "docker29-iptables-usernet-internal.rules"]
NFTABLES_LAYOUTS = [
    "docker29-nftables-icc-false-link.rules",
    "docker29-nftables-icc-true.rules",
    "docker29-nftables-usernet-icc-false.rules",
    "docker29-nftables-usernet-icc-true.rules",
    "docker29-nftables-usernet-internal.rules",
]


def all_layouts() -> list[Layout]:
    layouts = [Layout(f, default_bridge_state(False)) for f in LINK_LAYOUTS]
    layouts += [Layout(f, default_bridge_state(True)) for f in ICC_TRUE_LAYOUTS]
    layouts += [Layout(f, usernet_state(b, icc)) for f, (b, icc) in USERNET_LAYOUTS.items()]
    layouts += [Layout(f, internal_state()) for f in INTERNAL_LAYOUTS]
    return layouts


# ---- drift, as text edits of a dump ------------------------------------------------------------


def insert_rule(text: str, chain: str, rule: str, table: str = "filter") -> str:
    """`iptables -t TABLE -I CHAIN RULE`: the rule goes first in its chain (creating the table)."""
    lines = text.splitlines()
    if f"*{table}" not in lines:
        lines += [f"*{table}", f":{chain} ACCEPT [0:0]", "COMMIT"]
    start = lines.index(f"*{table}")
    end = lines.index("COMMIT", start)
    new = f"-A {chain} {rule}"
    for index in range(start, end):
        if lines[index].startswith(f"-A {chain} "):
            lines.insert(index, new)
            return "\n".join(lines) + "\n"
    lines.insert(end, new)
    return "\n".join(lines) + "\n"


def delete_rule(text: str, line: str) -> str:
    lines = text.splitlines()
    lines.remove(line)  # raises when the fixture no longer has it: the test is then wrong
    return "\n".join(lines) + "\n"


def replace_rule(text: str, old: str, new: str) -> str:
    lines = text.splitlines()
    lines[lines.index(old)] = new
    return "\n".join(lines) + "\n"
