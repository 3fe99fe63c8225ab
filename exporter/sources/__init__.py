"""Sources: each reads one part of the world (fetch) and turns its raw files into model values
(parse). See `exporter.sources.base` for the contract and `exporter.sources.snapshot` for the
file layout."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields

from exporter.config import ExporterConfig
from exporter.firewall.rules import IPSet, Ruleset
from exporter.firewall.state import NftablesInfo
from exporter.model import DockerState, HostSettings
from exporter.sources.base import Source, SourceError
from exporter.sources.docker import DockerSource
from exporter.sources.firewall import (
    EbtablesSource,
    IpsetSource,
    IptablesRead,
    IptablesSource,
    NftablesSource,
)
from exporter.sources.settings import SettingsSource

__all__ = [
    "DockerSource",
    "EbtablesSource",
    "IpsetSource",
    "IptablesRead",
    "IptablesSource",
    "NftablesSource",
    "SOURCE_NAMES",
    "SettingsSource",
    "Source",
    "SourceError",
    "Sources",
    "build_sources",
]


@dataclass(frozen=True)
class Sources:
    """Every source a check reads, one typed field each, in the order a check reads them."""

    docker: Source[DockerState]
    settings: Source[HostSettings]
    iptables: Source[IptablesRead]
    ip6tables: Source[IptablesRead]
    ebtables: Source[Ruleset]
    ipset: Source[dict[str, IPSet]]
    nftables: Source[NftablesInfo]

    def __iter__(self) -> Iterator[Source[object]]:
        return iter(
            (
                self.docker,
                self.settings,
                self.iptables,
                self.ip6tables,
                self.ebtables,
                self.ipset,
                self.nftables,
            )
        )


# Each source's name, which is also its field in Sources and in CheckInputs.
SOURCE_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Sources))


def build_sources(cfg: ExporterConfig) -> Sources:
    """Every source, as the exporter's flags configure them (tools get the check's timeout)."""
    backend, timeout, procfs = cfg.iptables_backend, cfg.check_timeout, cfg.procfs
    return Sources(
        docker=DockerSource(cfg.docker_host, cfg.docker_timeout),
        settings=SettingsSource(procfs, cfg.docker_config, cfg.docker_host),
        # IptablesSource refuses a backend it does not know; the flag's choices are the same.
        iptables=IptablesSource("ipv4", backend, timeout, procfs=procfs),  # type: ignore[arg-type]
        ip6tables=IptablesSource("ipv6", backend, timeout, procfs=procfs),  # type: ignore[arg-type]
        ebtables=EbtablesSource(timeout, procfs=procfs),
        ipset=IpsetSource(timeout, procfs=procfs),
        nftables=NftablesSource(timeout, procfs=procfs),
    )
