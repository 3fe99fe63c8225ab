"""One check: read every source, decide, and return one immutable Report.

Reading (fetch) and deciding (build_report) are apart: an offline check of a snapshot parses the
snapshot's files with the same sources and decides with the same code as a live check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from exporter.comparison import duplicate_findings, flow_findings, host_findings, rule_findings
from exporter.config import CheckConfig
from exporter.expectations import network_expectations, posture_findings
from exporter.firewall.evaluate import PathInputs
from exporter.firewall.parse import EBTABLES_NFT_TABLES, IPTABLES_NFT_TABLES
from exporter.firewall.rules import Ruleset
from exporter.firewall.state import FirewallState
from exporter.flows import evaluate_flows
from exporter.model import DockerState, HostSettings, Setting
from exporter.report import Report, SourceStatus
from exporter.sources.base import Source, SourceError
from exporter.sources.firewall import IptablesRead

log = logging.getLogger(__name__)

# Without these two there is nothing to compare: no verdict at all.
REQUIRED = ("docker", "iptables")
DOCKER_CHAINS = ("DOCKER", "DOCKER-FORWARD", "DOCKER-USER")


def run_check(
    sources: Sequence[Source], config: CheckConfig, files: Mapping[str, str] | None = None
) -> tuple[Report, dict[str, str]]:
    """Fetch (or take `files` from a snapshot), parse, decide. Never raises for a failing source."""
    started = time.time()
    began = time.monotonic()
    statuses: list[SourceStatus] = []
    values: dict[str, Any] = {}
    fetched: dict[str, str] = {}
    for source in sources:
        source_began = time.monotonic()
        try:
            raw = source.fetch() if files is None else files
            if files is None:
                fetched.update(raw)
            values[source.name] = source.parse(raw)
            error = None
        except SourceError as exc:
            error = str(exc)
        except Exception as exc:  # a bug in one source must not take the check down
            log.exception("source %s failed unexpectedly", source.name)
            error = f"{source.name}: unexpected error: {exc}"
        if error:
            log.warning("source failed: %s", error, extra={"source": source.name})
        statuses.append(
            SourceStatus(source.name, error is None, time.monotonic() - source_began, error)
        )
    report = build_report(values, statuses, config, started, began)
    return report, fetched


# (source, nft family, save tool, the table names that tool prints from that family)
NFT_DUMPS = (
    ("iptables", "ip", "iptables-nft-save", IPTABLES_NFT_TABLES),
    ("ip6tables", "ip6", "ip6tables-nft-save", IPTABLES_NFT_TABLES),
    ("ebtables", "bridge", "ebtables-nft-save", EBTABLES_NFT_TABLES),
)


def _nft_dump_tables(value: IptablesRead | Ruleset) -> frozenset[str] | None:
    """The tables the nft backend's save dump printed (none when it was not read); None when
    they cannot be compared."""
    if isinstance(value, IptablesRead):
        return value.dump_tables.get("nft", frozenset())
    # The bridge ruleset is the nft one unless only the legacy dump held rules; the nft dump then
    # held nothing and is not kept, so its tables are not known here.
    return frozenset(value.tables) if value.backend == "nft" else None


def _check_dumps_against_nft(
    values: Mapping[str, Any], statuses: Sequence[SourceStatus]
) -> tuple[dict[str, Any], list[SourceStatus]]:
    """Drop a firewall source whose nft dump lacks a table nft lists, and mark it down.

    A save dump cut at a table boundary looks whole; iptables-nft-save also skips a native nft
    table with an iptables name. Either way a table the kernel holds would go unjudged, so the
    family is unreadable rather than judged on a part of its rules.
    """
    values, statuses = dict(values), list(statuses)
    nft = values.get("nftables")
    if nft is None:
        return values, statuses
    listed = {tuple(label.split(" ", 1)) for label in nft.tables}
    for source, family, tool, names in NFT_DUMPS:
        printed = _nft_dump_tables(values[source]) if values.get(source) is not None else None
        if printed is None:
            continue
        wanted = sorted(table for fam, table in listed if fam == family and table in names)
        missing = [table for table in wanted if table not in printed]
        if not missing:
            continue
        error = (
            f"{source}: {tool} printed no table {', '.join(missing)} that nft lists: dump cut "
            "short or table incompatible; no verdict from it"
        )
        del values[source]
        statuses = [
            replace(s, up=False, error=s.error or error) if s.name == source else s
            for s in statuses
        ]
    return values, statuses


def _has_docker_chains(ruleset: Ruleset) -> bool:
    return any(ruleset.chain("filter", name) is not None for name in DOCKER_CHAINS)


def _iptables_managed(
    settings: HostSettings | None, firewall: FirewallState
) -> Setting[bool | None]:
    if settings is not None and settings.iptables.value is not None:
        return settings.iptables
    found = any(_has_docker_chains(r) for r in firewall.for_family("ipv4"))
    return Setting(found, "inferred")


def build_report(
    values: Mapping[str, Any],
    statuses: Sequence[SourceStatus],
    config: CheckConfig,
    started: float,
    began: float,
) -> Report:
    """Decide from what the sources gave. Pure, apart from reading the clock for the duration."""
    values, statuses = _check_dumps_against_nft(values, statuses)
    errors = tuple(s.error for s in statuses if s.error)
    docker: DockerState | None = values.get("docker")
    ipv4 = values.get("iptables")
    if docker is None or ipv4 is None:
        return Report(
            started=started,
            duration_seconds=time.monotonic() - began,
            sources=tuple(statuses),
            errors=errors or ("docker and iptables are needed for a verdict",),
        )
    ipv6 = values.get("ip6tables")
    firewall = FirewallState(
        primary_backend=ipv4.primary,
        rulesets=tuple(ipv4.rulesets) + (tuple(ipv6.rulesets) if ipv6 else ()),
        bridge=values.get("ebtables"),
        ipsets=values.get("ipset"),
        nftables=values.get("nftables"),
    )
    settings: HostSettings | None = values.get("settings")
    managed = _iptables_managed(settings, firewall)
    if settings is not None:
        settings = HostSettings(
            iptables=managed,
            ip6tables=settings.ip6tables,
            icc=settings.icc,
            bridge_nf_call_iptables=settings.bridge_nf_call_iptables,
            bridge_nf_call_ip6tables=settings.bridge_nf_call_ip6tables,
            ip_forward=settings.ip_forward,
        )
    inputs = PathInputs(
        firewall=firewall,
        call_iptables=settings.bridge_nf_call_iptables if settings else None,
        call_ip6tables=settings.bridge_nf_call_ip6tables if settings else None,
        unreadable=frozenset() if ipv6 is not None else frozenset({"ipv6"}),
    )
    expectations = network_expectations(docker)
    flows, counts = evaluate_flows(expectations, inputs, config.all_flows)
    rules, networks = rule_findings(expectations, firewall)
    bridges = {e.network.bridge: e.network.name for e in expectations}
    findings = (
        *posture_findings(docker, managed.value, config.expect_icc, config.expect_iptables),
        *host_findings(firewall, settings, expectations),
        *rules,
        *duplicate_findings(firewall, bridges),
        *flow_findings(flows),
    )
    primary = next((r for r in firewall.for_family("ipv4") if r.backend == ipv4.primary), None)
    forward = primary.chain("filter", "FORWARD") if primary else None
    return Report(
        started=started,
        duration_seconds=time.monotonic() - began,
        sources=tuple(statuses),
        up=all(s.up for s in statuses),
        evaluated=True,
        docker_version=docker.version,
        settings=settings,
        iptables_backend=ipv4.primary,
        backend_rules=tuple((r.backend, r.family, r.rule_count) for r in firewall.rulesets),
        forward_policy=forward.policy if forward else None,
        networks=tuple(networks),
        findings=tuple(findings),
        flows=tuple(flows),
        flow_counts=tuple(counts),
        errors=errors,
    )
