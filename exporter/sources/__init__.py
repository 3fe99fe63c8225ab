"""Sources: each reads one part of the world (fetch) and turns its raw files into model values
(parse). See `exporter.sources.base` for the contract and `exporter.sources.snapshot` for the
file layout."""

from __future__ import annotations

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
    "SettingsSource",
    "Source",
    "SourceError",
    "build_sources",
]


def build_sources(
    *,
    docker_host: str | None,
    docker_timeout: float,
    iptables_backend: str,
    timeout: float,
    procfs: str = "/proc",
    daemon_config: str | None = None,
) -> list[Source]:
    """Every source, in the order a check reads them."""
    return [
        DockerSource(docker_host, docker_timeout),
        SettingsSource(procfs, daemon_config, docker_host, timeout),
        IptablesSource("ipv4", iptables_backend, timeout, procfs=procfs),  # type: ignore[arg-type]
        IptablesSource("ipv6", iptables_backend, timeout, procfs=procfs),  # type: ignore[arg-type]
        EbtablesSource(timeout),
        IpsetSource(timeout),
        NftablesSource(timeout),
    ]
