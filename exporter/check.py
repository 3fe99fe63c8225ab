"""One check: read every source into one CheckInputs, decide, and return one immutable Report.

Reading (`read_inputs`) and deciding (`build_report`) are apart: an offline check of a snapshot
parses the snapshot's files with the same sources and decides with the same code as a live check.
A live check may carry a `WarmCheck`: what did not change since its last check is neither parsed
nor decided again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from exporter.comparison import duplicate_findings, flow_findings, host_findings, rule_findings
from exporter.config import CheckConfig
from exporter.docker_nft import TABLE as DOCKER_NFT_TABLE
from exporter.docker_nft import docker_nft_findings, docker_nft_statuses
from exporter.expectations import NetworkExpectation, network_expectations, posture_findings
from exporter.firewall.evaluate import PathInputs
from exporter.firewall.parse import EBTABLES_NFT_TABLES, IPTABLES_NFT_TABLES
from exporter.firewall.rules import IPSet, Ruleset, docker_backend
from exporter.firewall.state import FirewallState, NftablesInfo
from exporter.flows import evaluate_flows
from exporter.model import DockerState, HostSettings, Setting
from exporter.report import Finding, Flow, NetworkStatus, Report, SourceStatus
from exporter.sources import SOURCE_NAMES, IptablesRead, Sources
from exporter.sources.base import ParseMemo, Source, SourceError

log = logging.getLogger(__name__)

Parsed = TypeVar("Parsed")


class CheckProgress:
    """Which source a running check is reading, for the one who waits on it (the scheduler).

    The check thread writes `source` and the waiting thread reads it once the deadline passed: a
    hung check is named by the source it is stuck in. One attribute, replaced whole (atomic in
    CPython), so no lock is needed.
    """

    def __init__(self) -> None:
        self.source: str | None = None


@dataclass(frozen=True)
class CheckInputs:
    """Everything one check read: each source's parsed value (None when it failed, see its
    status) and each source's status, in the order they were read."""

    statuses: tuple[SourceStatus, ...] = ()
    docker: DockerState | None = None
    settings: HostSettings | None = None
    iptables: IptablesRead | None = None
    ip6tables: IptablesRead | None = None
    ebtables: Ruleset | None = None
    ipset: dict[str, IPSet] | None = None
    nftables: NftablesInfo | None = None
    # The raw files fetched (empty for a check of snapshot files): what `snapshot` writes.
    fetched: dict[str, str] = field(default_factory=dict, compare=False)


class _Reader:
    """Reads sources one by one: fetch (or the snapshot's files), parse, record a status."""

    def __init__(
        self, files: Mapping[str, str] | None, progress: CheckProgress, memo: ParseMemo | None
    ) -> None:
        self.files = files
        self.progress = progress
        self.memo = memo
        self.statuses: list[SourceStatus] = []
        self.fetched: dict[str, str] = {}

    def read(self, source: Source[Parsed]) -> Parsed | None:
        """The source's value, or None after recording why it failed. Never raises."""
        self.progress.source = source.name
        began = time.monotonic()
        value: Parsed | None = None
        try:
            raw = source.fetch() if self.files is None else self.files
            if self.files is None:
                self.fetched.update(raw)
            value = source.parse(raw) if self.memo is None else self.memo.parse(source, raw)
            error = None
        except SourceError as exc:
            error = str(exc)
        except Exception as exc:  # a bug in one source must not take the check down
            log.exception("source %s failed unexpectedly", source.name)
            error = f"{source.name}: unexpected error: {exc}"
        if error:
            log.warning("source failed: %s", error, extra={"source": source.name})
        self.statuses.append(
            SourceStatus(source.name, error is None, time.monotonic() - began, error)
        )
        self.progress.source = None
        return value


def read_inputs(
    sources: Sources,
    files: Mapping[str, str] | None = None,
    progress: CheckProgress | None = None,
    memo: ParseMemo | None = None,
) -> CheckInputs:
    """Fetch every source (or parse `files` from a snapshot). Never raises for a failing source.

    With `memo`, a source whose raw files are those of its last read is not parsed again."""
    reader = _Reader(files, progress or CheckProgress(), memo)
    # One keyword per source, in the order Sources lists them: each value keeps its parse type.
    docker = reader.read(sources.docker)
    settings = reader.read(sources.settings)
    iptables = reader.read(sources.iptables)
    ip6tables = reader.read(sources.ip6tables)
    ebtables = reader.read(sources.ebtables)
    ipset = reader.read(sources.ipset)
    nftables = reader.read(sources.nftables)
    return CheckInputs(
        statuses=tuple(reader.statuses),
        docker=docker,
        settings=settings,
        iptables=iptables,
        ip6tables=ip6tables,
        ebtables=ebtables,
        ipset=ipset,
        nftables=nftables,
        fetched=reader.fetched,
    )


class WarmCheck:
    """What a live check keeps from one check to the next, so that what did not change costs
    only its read: each source's last parse (`ParseMemo`) and the last decision.

    The decision is reused only when every source was read and each parsed value is the very
    object the last decision was made from (the memo hands back the same object for the same raw
    files), under the same config: deciding is pure, so it would give the same report. A source
    that failed, now or then, means a fresh decision.
    """

    def __init__(self) -> None:
        self.memo = ParseMemo()
        self._lock = threading.Lock()
        self._decided: tuple[tuple[object, ...], CheckConfig, Report] | None = None
        self.decisions_reused = 0

    def decide(
        self, inputs: CheckInputs, config: CheckConfig, started: float, began: float
    ) -> Report:
        inputs = check_dumps_against_nft(inputs)
        values = _parsed_values(inputs)
        all_up = all(status.up for status in inputs.statuses)
        with self._lock:
            decided = self._decided
        if all_up and decided is not None and decided[1] == config and _same(decided[0], values):
            self.decisions_reused += 1
            return replace(
                decided[2],
                started=started,
                duration_seconds=time.monotonic() - began,
                sources=inputs.statuses,
            )
        report = build_report(inputs, config, started, began)
        with self._lock:
            self._decided = (values, config, report) if all_up and report.up else None
        return report


def _parsed_values(inputs: CheckInputs) -> tuple[object, ...]:
    return tuple(getattr(inputs, name) for name in SOURCE_NAMES)


def _same(before: tuple[object, ...], now: tuple[object, ...]) -> bool:
    return len(before) == len(now) and all(a is b for a, b in zip(before, now, strict=True))


def run_check(
    sources: Sources,
    config: CheckConfig,
    files: Mapping[str, str] | None = None,
    progress: CheckProgress | None = None,
    warm: WarmCheck | None = None,
) -> tuple[Report, dict[str, str]]:
    """Fetch (or take `files` from a snapshot), parse, decide: the report and the raw files
    fetched. Never raises for a failing source. `warm` (live checks only) skips the parse of an
    unchanged dump and the decision on unchanged inputs."""
    started = time.time()
    began = time.monotonic()
    if warm is None or files is not None:
        inputs = read_inputs(sources, files, progress)
        return build_report(inputs, config, started, began), inputs.fetched
    inputs = read_inputs(sources, None, progress, warm.memo)
    return warm.decide(inputs, config, started, began), inputs.fetched


def _nft_dump_tables(value: IptablesRead | Ruleset) -> frozenset[str] | None:
    """The tables the nft backend's save dump printed (none when it was not read); None when
    they cannot be compared."""
    if isinstance(value, IptablesRead):
        return value.dump_tables.get("nft", frozenset())
    # The bridge ruleset is the nft one unless only the legacy dump held rules; the nft dump then
    # held nothing and is not kept, so its tables are not known here.
    return frozenset(value.tables) if value.backend == "nft" else None


def check_dumps_against_nft(inputs: CheckInputs) -> CheckInputs:
    """Drop a firewall source whose nft dump lacks a table nft lists, and mark it down.

    A save dump cut at a table boundary looks whole; iptables-nft-save also skips a native nft
    table with an iptables name. Either way a table the kernel holds would go unjudged, so the
    family is unreadable rather than judged on a part of its rules.
    """
    if inputs.nftables is None:
        return inputs
    listed = {tuple(label.split(" ", 1)) for label in inputs.nftables.tables}
    # (source, its value, nft family, save tool, the table names that tool prints from that family)
    dumps: tuple[tuple[str, IptablesRead | Ruleset | None, str, str, frozenset[str]], ...] = (
        ("iptables", inputs.iptables, "ip", "iptables-nft-save", IPTABLES_NFT_TABLES),
        ("ip6tables", inputs.ip6tables, "ip6", "ip6tables-nft-save", IPTABLES_NFT_TABLES),
        ("ebtables", inputs.ebtables, "bridge", "ebtables-nft-save", EBTABLES_NFT_TABLES),
    )
    failed: dict[str, str] = {}
    for source, value, family, tool, names in dumps:
        printed = _nft_dump_tables(value) if value is not None else None
        if printed is None:
            continue
        wanted = sorted(table for fam, table in listed if fam == family and table in names)
        missing = [table for table in wanted if table not in printed]
        if missing:
            failed[source] = (
                f"{source}: {tool} printed no table {', '.join(missing)} that nft lists: dump cut "
                "short or table incompatible; no verdict from it"
            )
    if not failed:
        return inputs
    return replace(
        inputs,
        statuses=tuple(
            replace(s, up=False, error=s.error or failed[s.name]) if s.name in failed else s
            for s in inputs.statuses
        ),
        iptables=None if "iptables" in failed else inputs.iptables,
        ip6tables=None if "ip6tables" in failed else inputs.ip6tables,
        ebtables=None if "ebtables" in failed else inputs.ebtables,
    )


def _iptables_managed(
    settings: HostSettings | None, firewall: FirewallState
) -> Setting[bool | None]:
    if settings is not None and settings.iptables.value is not None:
        return settings.iptables
    nft = firewall.nftables
    docker_nft = nft is not None and f"ip {DOCKER_NFT_TABLE}" in nft.docker_tables
    found = docker_nft or docker_backend(firewall.for_family("ipv4")) is not None
    return Setting(found, "inferred")


def _rule_findings(
    expectations: tuple[NetworkExpectation, ...], firewall: FirewallState
) -> tuple[list[Finding], list[NetworkStatus]]:
    """Docker's rules compared where Docker wrote them: its nftables tables when it runs with
    the nftables firewall backend (Docker 29), else its iptables chains."""
    nft = firewall.nftables
    if nft is not None and f"ip {DOCKER_NFT_TABLE}" in nft.docker_tables:
        findings = docker_nft_findings(expectations, nft)
        return findings, docker_nft_statuses(expectations, findings)
    return rule_findings(expectations, firewall)


NEEDED_FOR_A_VERDICT = ("docker and iptables are needed for a verdict",)


def foreign_namespace_error(inputs: CheckInputs) -> str | None:
    """Why the firewall read is not the one Docker's bridges pass through, or None.

    Each network namespace has its own firewall. An exporter outside dockerd's namespace (a
    container started without --network host) reads an empty one and would call every denied
    flow a breach; Docker's bridge interfaces, present in dockerd's namespace, tell the two apart.
    """
    settings, docker = inputs.settings, inputs.docker
    if settings is None or settings.interfaces is None or docker is None:
        return None
    bridges = sorted({n.bridge for n in docker.networks})
    if not bridges or any(b in settings.interfaces for b in bridges):
        return None
    return (
        f"settings: none of Docker's bridges ({', '.join(bridges)}) is in the exporter's network "
        "namespace, so its firewall is not the one that decides: run the exporter in dockerd's "
        "network namespace (docker run --network host)"
    )


@dataclass(frozen=True)
class FirewallRead:
    """The firewall as the evaluator walks it, and the settings as the check judges them."""

    firewall: FirewallState
    settings: HostSettings | None
    # Whether Docker manages iptables: the daemon's setting, else inferred from Docker's chains.
    managed: Setting[bool | None]
    path: PathInputs


def read_firewall(inputs: CheckInputs, ipv4: IptablesRead) -> FirewallRead:
    """The first phase of a decision: every table read, in one state with its indexes."""
    ipv6 = inputs.ip6tables
    firewall = FirewallState(
        primary_backend=ipv4.primary,
        rulesets=ipv4.rulesets + (ipv6.rulesets if ipv6 else ()),
        bridge=inputs.ebtables,
        ipsets=inputs.ipset,
        nftables=inputs.nftables,
    )
    managed = _iptables_managed(inputs.settings, firewall)
    settings = replace(inputs.settings, iptables=managed) if inputs.settings else None
    path = PathInputs(
        firewall=firewall,
        call_iptables=settings.bridge_nf_call_iptables if settings else None,
        call_ip6tables=settings.bridge_nf_call_ip6tables if settings else None,
        unreadable=frozenset() if ipv6 is not None else frozenset({"ipv6"}),
    )
    return FirewallRead(firewall, settings, managed, path)


def decide_findings(
    docker: DockerState,
    read: FirewallRead,
    expectations: Sequence[NetworkExpectation],
    flows: Sequence[Flow],
    config: CheckConfig,
) -> tuple[tuple[Finding, ...], list[NetworkStatus]]:
    """The last phase: every finding, and each network's rule status."""
    rules, networks = _rule_findings(expectations, read.firewall)
    bridges = {e.network.bridge: e.network.name for e in expectations}
    findings = (
        *posture_findings(docker, read.managed.value, config.expect_icc, config.expect_iptables),
        *host_findings(read.firewall, read.settings, expectations),
        *rules,
        *duplicate_findings(read.firewall, bridges),
        *flow_findings(flows),
    )
    return findings, networks


def build_report(inputs: CheckInputs, config: CheckConfig, started: float, began: float) -> Report:
    """Decide from what the sources gave. Pure, apart from reading the clock for the duration."""
    inputs = check_dumps_against_nft(inputs)
    statuses = inputs.statuses
    errors = tuple(s.error for s in statuses if s.error)
    docker, ipv4 = inputs.docker, inputs.iptables
    foreign = foreign_namespace_error(inputs)
    if docker is None or ipv4 is None or foreign:
        if foreign:
            statuses = tuple(
                replace(s, up=False, error=foreign) if s.name == "settings" else s for s in statuses
            )
        return Report(
            started=started,
            duration_seconds=time.monotonic() - began,
            sources=statuses,
            errors=(*errors, foreign) if foreign else errors or NEEDED_FOR_A_VERDICT,
        )
    read = read_firewall(inputs, ipv4)
    firewall, settings = read.firewall, read.settings
    expectations = network_expectations(docker)
    flows, counts = evaluate_flows(expectations, read.path, config.all_flows)
    findings, networks = decide_findings(docker, read, expectations, flows, config)
    primary = next((r for r in firewall.for_family("ipv4") if r.backend == ipv4.primary), None)
    forward = primary.chain("filter", "FORWARD") if primary else None
    return Report(
        started=started,
        duration_seconds=time.monotonic() - began,
        sources=statuses,
        up=all(s.up for s in statuses),
        evaluated=True,
        docker_version=docker.version,
        settings=settings,
        iptables_backend=ipv4.primary,
        backend_rules=tuple((r.backend, r.family, r.rule_count) for r in firewall.rulesets),
        forward_policy=forward.policy if forward else None,
        networks=tuple(networks),
        findings=findings,
        flows=tuple(flows),
        flow_counts=tuple(counts),
        errors=errors,
    )
