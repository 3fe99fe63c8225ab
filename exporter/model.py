"""What Docker and the kernel say, as plain frozen values.

Sources build these; the core (expectations, evaluation, comparison) reads them and never talks to
the world. Addresses are ipaddress objects, so comparisons and masks are exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Generic, Literal, TypeVar

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Protocol = Literal["tcp", "udp", "sctp"]

T = TypeVar("T")


@dataclass(frozen=True)
class ExposedPort:
    port: int
    protocol: Protocol

    def __str__(self) -> str:
        return f"{self.port}/{self.protocol}"


@dataclass(frozen=True)
class Endpoint:
    """A container's attachment to one network."""

    network_id: str
    ipv4: IPv4Address | None = None
    ipv6: IPv6Address | None = None


@dataclass(frozen=True)
class Link:
    """A legacy link: `docker run --name PARENT --link CHILD:ALIAS`.

    Docker lets the parent reach the child on every port the child exposes.
    """

    parent_id: str
    child_id: str
    alias: str


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    exposed: tuple[ExposedPort, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    # Links this container declared (it is their parent).
    links: tuple[Link, ...] = ()

    def endpoint(self, network_id: str) -> Endpoint | None:
        for endpoint in self.endpoints:
            if endpoint.network_id == network_id:
                return endpoint
        return None


@dataclass(frozen=True)
class Network:
    """A bridge network; other drivers are not read."""

    id: str
    name: str
    bridge: str
    icc: bool
    # Docker 29's nftables backend writes another ICC rule layout for internal networks.
    internal: bool = False
    default_bridge: bool = False
    subnets: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class DockerState:
    version: str
    networks: tuple[Network, ...] = ()
    # Running containers only.
    containers: tuple[Container, ...] = ()


@dataclass(frozen=True)
class Setting(Generic[T]):
    """A value and where it came from: "cmdline", "daemon.json", "inferred", "default"."""

    value: T
    source: str


@dataclass(frozen=True)
class HostSettings:
    # dockerd --iptables / --ip6tables / --icc (the default bridge's icc); None when unknown.
    iptables: Setting[bool | None] = field(default_factory=lambda: Setting(None, "unknown"))
    ip6tables: Setting[bool | None] = field(default_factory=lambda: Setting(None, "unknown"))
    icc: Setting[bool | None] = field(default_factory=lambda: Setting(None, "unknown"))
    # Kernel sysctls in the exporter's network namespace; None when not readable (module not loaded
    # for the bridge ones means bridged traffic skips iptables, which the source reports as 0).
    bridge_nf_call_iptables: int | None = None
    bridge_nf_call_ip6tables: int | None = None
    ip_forward: int | None = None
    # Network interfaces in the exporter's network namespace (/proc/net/dev); None when not read
    # (snapshots taken before it was recorded).
    interfaces: frozenset[str] | None = None
