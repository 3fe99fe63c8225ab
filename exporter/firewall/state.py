"""Everything the firewall sources read, in one value the evaluator walks."""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.firewall.nft import NftRuleset
from exporter.firewall.rules import Backend, IPSet, Ruleset


@dataclass(frozen=True)
class NftablesInfo:
    """What `nft` shows beyond the iptables-nft and ebtables-nft tables.

    foreign_chains: base chains of other tables (firewalld, nftables.service, ...) hooked where
    bridged traffic passes (prerouting, forward, postrouting of ip/ip6/inet/bridge, netdev and
    inet ingress, netdev egress), e.g. "inet firewalld filter_FORWARD hook forward".
    native: those other tables as a model the evaluator walks (see exporter/firewall/nft.py).
    A foreign chain missing from it (a value built by hand) cannot be walked: flows are unknown.
    docker_tables: Docker 29's own nftables firewall backend tables ("ip docker-bridges", ...);
    they are in native too and walked like any other table (exporter/docker_nft.py compares
    them with what Docker must have written).
    tables: every table nft lists, as "FAMILY NAME" ("ip filter", "bridge nat", ...), those of
    iptables-nft and ebtables-nft included: the kernel's own list, against which a save dump cut
    at a table boundary shows.
    """

    foreign_chains: tuple[str, ...] = ()
    docker_tables: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    native: NftRuleset = field(default_factory=NftRuleset)


@dataclass(frozen=True)
class FirewallState:
    # The backend holding Docker's chains (None when neither does).
    primary_backend: Backend | None = None
    # One Ruleset per (family, backend) read, ipv4 and ipv6; both backends when both hold rules.
    rulesets: tuple[Ruleset, ...] = ()
    # ebtables' bridge family; None when it could not be read (bridge stages are then unknown).
    bridge: Ruleset | None = None
    # ipset members by set name; None when sets could not be read.
    ipsets: dict[str, IPSet] | None = field(default_factory=dict)
    # None when nft could not be read while nf_tables is in use.
    nftables: NftablesInfo | None = field(default_factory=NftablesInfo)

    def for_family(self, family: str) -> tuple[Ruleset, ...]:
        return tuple(r for r in self.rulesets if r.family == family)
