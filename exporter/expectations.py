"""What Docker's declared state says must be allowed and denied, and the rules it must have written.

Per bridge network: with icc enabled every container may reach every other. With icc disabled
nothing passes between containers except, on the default bridge, each legacy link: the parent (the
container started with --link) may reach the child on every port/protocol the child exposes, and
Docker writes two ACCEPT rules for it in chain DOCKER. Legacy links exist on the default bridge
only (on user-defined networks --link only adds a DNS alias) and for IPv4 only.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from exporter.firewall.rules import Match, Option, Rule, built_rule
from exporter.model import Container, DockerState, Endpoint, ExposedPort, IPAddress, Network
from exporter.report import ICC_POSTURE, IPTABLES_POSTURE, Finding


@dataclass(frozen=True)
class Member:
    """A running container on one network, by its address there."""

    container: Container
    address: IPAddress


@dataclass(frozen=True)
class LinkFlow:
    parent: Member
    child: Member
    alias: str
    port: ExposedPort


@dataclass(frozen=True)
class ExpectedRule:
    """One ACCEPT rule Docker writes for a link, as a rule value in chain DOCKER."""

    link: LinkFlow
    rule: Rule

    @property
    def spec(self) -> str:
        """The rule without `-A DOCKER`, as iptables-save prints it (for `-I`/`-D` commands)."""
        return self.rule.spec


@dataclass(frozen=True)
class NetworkExpectation:
    network: Network
    members: dict[str, tuple[Member, ...]]  # by family: "ipv4", "ipv6"
    link_flows: tuple[LinkFlow, ...] = ()

    @property
    def containers(self) -> int:
        """Running containers on the network, whichever families they have addresses in."""
        return len({m.container.id for found in self.members.values() for m in found})

    def expected_rules(self) -> tuple[ExpectedRule, ...]:
        return tuple(
            rule for link in self.link_flows for rule in link_rules(link, self.network.bridge)
        )


def link_rules(link: LinkFlow, bridge: str) -> tuple[ExpectedRule, ExpectedRule]:
    """The pair Docker's (*ChainInfo).Link writes: parent -> child:port, and the reply rule."""
    parent, child = link.parent.address, link.child.address
    return (
        ExpectedRule(link, _link_rule(f"{parent}/32", f"{child}/32", bridge, link.port, "--dport")),
        ExpectedRule(link, _link_rule(f"{child}/32", f"{parent}/32", bridge, link.port, "--sport")),
    )


def _link_rule(source: str, target: str, bridge: str, port: ExposedPort, side: str) -> Rule:
    """`-s S -d T -i B -o B -p PROTO -m PROTO --dport|--sport PORT -j ACCEPT` in chain DOCKER."""
    builtin = Match(
        "",
        (
            Option("-s", (source,)),
            Option("-d", (target,)),
            Option("-i", (bridge,)),
            Option("-o", (bridge,)),
            Option("-p", (port.protocol,)),
        ),
    )
    ports = Match(port.protocol, (Option(side, (str(port.port),)),))
    return built_rule("DOCKER", (builtin, ports), "ACCEPT")


def network_expectations(state: DockerState) -> tuple[NetworkExpectation, ...]:
    result = []
    attached = _attached(state.containers)
    for network in state.networks:
        members: dict[str, list[Member]] = {"ipv4": [], "ipv6": []}
        for container, endpoint in attached.get(network.id, ()):
            if endpoint.ipv4 is not None:
                members["ipv4"].append(Member(container, endpoint.ipv4))
            if endpoint.ipv6 is not None:
                members["ipv6"].append(Member(container, endpoint.ipv6))
        links: list[LinkFlow] = []
        if network.default_bridge and not network.icc:
            by_id = {m.container.id: m for m in members["ipv4"]}
            for parent in members["ipv4"]:
                for link in parent.container.links:
                    child = by_id.get(link.child_id)
                    if child is None:
                        continue
                    links.extend(
                        LinkFlow(parent, child, link.alias, port)
                        for port in child.container.exposed
                    )
        result.append(
            NetworkExpectation(
                network,
                {family: tuple(found) for family, found in members.items()},
                tuple(links),
            )
        )
    return tuple(result)


def _attached(containers: tuple[Container, ...]) -> dict[str, list[tuple[Container, Endpoint]]]:
    """Each network's containers in container order, with their endpoint there (the first, as
    Container.endpoint): one pass over the containers, not one per network."""
    found: dict[str, list[tuple[Container, Endpoint]]] = defaultdict(list)
    for container in containers:
        for endpoint in container.endpoints:
            if container.endpoint(endpoint.network_id) is endpoint:
                found[endpoint.network_id].append((container, endpoint))
    return found


def posture_findings(
    state: DockerState, iptables_managed: bool | None, expect_icc: str, expect_iptables: str
) -> tuple[Finding, ...]:
    """The operator's wanted posture: --expect.icc applies to the daemon's default bridge (the
    --icc flag); user-defined networks declare their own enable_icc."""
    findings = []
    if expect_icc in ("disabled", "enabled"):
        want = expect_icc == "enabled"
        for network in state.networks:
            if network.default_bridge and network.icc != want:
                findings.append(
                    Finding(
                        ICC_POSTURE,
                        network.name,
                        f"icc is {'enabled' if network.icc else 'disabled'} on {network.bridge}, "
                        f"expected {expect_icc}",
                        restore=f"restart dockerd with --icc={'true' if want else 'false'}",
                    )
                )
    if expect_iptables == "enabled" and iptables_managed is not True:
        state_text = "disabled" if iptables_managed is False else "unknown"
        findings.append(
            Finding(
                IPTABLES_POSTURE,
                "",
                f"dockerd iptables management is {state_text}, expected enabled",
                restore="restart dockerd with --iptables=true",
            )
        )
    return tuple(findings)
