"""The kernel's packet filters: iptables and ip6tables (both backends), ebtables, ipset, nftables.

Only read-only commands run, each with a timeout, and each only when the kernel module behind it
is already there (exporter/sources/kernel.py): a tool could make the kernel load it. A table whose
module is absent cannot exist, so its dump is empty, as the tool would print it. Each source
records those decisions in SOURCE-kernel.txt ("nf_tables present: /sys/module/nf_tables").

- iptables: `iptables-nft-save` and `iptables-legacy-save` (ip6tables-* for IPv6), whichever are
  installed; plain `iptables-save` only when neither variant is (its `--version` tells which it is).
  Files (ip6tables-* for IPv6):
  - iptables-save.txt: the exact output of the primary backend, the one holding Docker's chains
    (DOCKER, DOCKER-FORWARD or DOCKER-USER in table filter). When both hold them, the backend that
    `iptables` itself resolves to (dockerd runs `iptables`); when neither does, that same one.
    With a forced backend (nft/legacy) it is always that backend's output.
  - iptables-nft-save.txt / iptables-legacy-save.txt: the other backend's output, only when it holds
    a rule or a builtin chain whose policy is not ACCEPT (both backends' rules apply to packets).
  - firewall-backend.txt (IPv4) / firewall-backend-ipv6.txt (IPv6): the backend iptables-save.txt
    came from, "nft" or "legacy".
  Backend "libiptc" reads the legacy tables in-process with python-iptables instead of running
  iptables-legacy-save, and renders them in iptables-save format (same files, backend legacy). It
  reads only the tables listed in /proc/net/ip_tables_names, so it never makes the kernel load a
  table module, and never commits (python-iptables' default autocommit would write the table back).
- ebtables: `ebtables-nft-save` (else `ebtables-save`) -> ebtables-save.txt; when the legacy
  ebtables module is loaded, also `ebtables-legacy-save` -> ebtables-legacy-save.txt. That script
  lists the tables of the ebtable_* modules in /proc/modules, so legacy ebtables built into the
  kernel cannot be read: the source fails rather than say "no rules".
- ipset: `ipset save` -> ipset-save.txt (empty without the ip_set module: no set can exist).
- nftables: `nft -j list chains` -> nft-chains.json, then `nft -j list table FAMILY NAME` ->
  nft-table-FAMILY-NAME.json for each table no save tool prints; `{"nftables": []}` in
  nft-ruleset.json without nf_tables. Older snapshots hold `nft -j list ruleset` there instead.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from exporter.config import DEFAULT_PROCFS
from exporter.firewall.nft import NftChain, NftRuleset, NftSet, save_tool_table
from exporter.firewall.parse import (
    parse_ebtables_save,
    parse_ipset_save,
    parse_iptables_save,
    parse_nft_ruleset,
)
from exporter.firewall.rules import (
    DOCKER_CHAINS,
    Backend,
    IPSet,
    Ruleset,
    UnknownLine,
    docker_backend,
)
from exporter.firewall.state import NftablesInfo
from exporter.sources.base import SourceError, decode, find_binary, require, run_tool
from exporter.sources.kernel import (
    DEFAULT_SYSFS,
    EBTABLES,
    IP_SET,
    NF_TABLES,
    Decision,
    Kernel,
    record,
)

# What iptables-nft-save's comment about a table it cannot show says (lower case).
INCOMPATIBLE_TABLE = "incompatible"

Parsed = TypeVar("Parsed")

IptablesBackendChoice = Literal["auto", "nft", "legacy", "libiptc"]
BACKENDS: tuple[Backend, ...] = ("nft", "legacy")

EBTABLES_FILE = "ebtables-save.txt"
EBTABLES_LEGACY_FILE = "ebtables-legacy-save.txt"
IPSET_FILE = "ipset-save.txt"
NFT_FILE = "nft-ruleset.json"
NFT_EMPTY = '{"nftables": []}\n'
NFT_CHAINS_FILE = "nft-chains.json"

_CHAIN_LINE = re.compile(r"^:(\S+)\s+(\S+)")

# What each tool may print on stderr while exiting 0 and still have printed everything; any other
# stderr line fails the source. iptables-nft-save warns that the other backend also holds tables
# (that backend is read too). Not here on purpose: "table `filter' is incompatible, use 'nft'
# tool.", printed when a native nft table has an iptables name: that table is then missing from
# the dump.
_LEGACY_PRESENT = "# Warning: {tool}-legacy tables present, use {tool}-legacy-save to see them"
BENIGN_STDERR: dict[str, frozenset[str]] = {
    f"{tool}{variant}-save": frozenset({_LEGACY_PRESENT.format(tool=tool)})
    for tool in ("iptables", "ip6tables")
    for variant in ("-nft", "")  # plain iptables-save is the nft variant on most hosts
}


@dataclass(frozen=True)
class IptablesRead:
    """One family's rulesets: iptables-save.txt's first, then the other backend's when it holds any.

    primary: the backend whose ruleset holds Docker's chains (iptables-save.txt's backend first);
    None when no ruleset does (dockerd runs with --iptables=false, or its rules were flushed).
    """

    primary: Backend | None
    rulesets: tuple[Ruleset, ...]
    # The tables each backend's dump printed, for every dump read (also one holding nothing, which
    # is not in rulesets): check.py compares them with the tables `nft` lists.
    dump_tables: dict[Backend, frozenset[str]] = dataclasses.field(default_factory=dict)


def text_holds_docker_chains(text: str) -> bool:
    """Whether an iptables-save dump declares one of Docker's chains in table filter."""
    table = None
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif table == "filter":
            found = _CHAIN_LINE.match(line)
            if found and found.group(1) in DOCKER_CHAINS:
                return True
    return False


def text_holds_anything(text: str) -> bool:
    """Whether a dump holds a rule or a builtin chain whose policy is not ACCEPT."""
    for line in text.splitlines():
        if line.startswith("-A ") or line.startswith("[") and "-A " in line:
            return True
        found = _CHAIN_LINE.match(line)
        if found and found.group(2) not in ("ACCEPT", "-"):
            return True
    return False


class IptablesSource:
    """iptables (family ipv4) or ip6tables (family ipv6), read from one or both backends."""

    def __init__(
        self,
        family: Literal["ipv4", "ipv6"] = "ipv4",
        backend: IptablesBackendChoice = "auto",
        timeout: float = 5.0,
        *,
        path: str | None = None,
        procfs: str = DEFAULT_PROCFS,
        sysfs: str = DEFAULT_SYSFS,
    ) -> None:
        if family not in ("ipv4", "ipv6"):
            raise ValueError(f"family must be ipv4 or ipv6, not {family!r}")
        if backend not in ("auto", "nft", "legacy", "libiptc"):
            raise ValueError(f"backend must be auto, nft, legacy or libiptc, not {backend!r}")
        self.family = family
        self.backend = backend
        self.timeout = timeout
        self.path = path
        self.procfs = procfs
        self.sysfs = sysfs
        self.tool = "iptables" if family == "ipv4" else "ip6tables"
        self.name = self.tool
        self.kernel_file = kernel_file(self.name)
        self.save_file = f"{self.tool}-save.txt"
        self.backend_file = (
            "firewall-backend.txt" if family == "ipv4" else "firewall-backend-ipv6.txt"
        )
        self.legacy_tables_file = f"{self.tool}-legacy-tables.txt"
        self.legacy_names = os.path.join(
            procfs, "net", "ip_tables_names" if family == "ipv4" else "ip6_tables_names"
        )

    def backend_save_file(self, backend: Backend) -> str:
        return f"{self.tool}-{backend}-save.txt"

    # -- fetch ----------------------------------------------------------------------------------

    def _binaries(self) -> dict[Backend, str]:
        found: dict[Backend, str] = {}
        for backend in BACKENDS:
            binary = find_binary(self.name, f"{self.tool}-{backend}-save", self.path)
            if binary:
                found[backend] = binary
        if not found:
            plain = find_binary(self.name, f"{self.tool}-save", self.path)
            if plain:
                version = run_tool(self.name, [plain, "--version"], self.timeout)
                found["nft" if "nf_tables" in version else "legacy"] = plain
        return found

    def _default_backend(self) -> Backend | None:
        """The backend `iptables` resolves to (Debian's alternatives link), as dockerd runs it."""
        binary = find_binary(self.name, self.tool, self.path)
        if not binary:
            return None
        target = os.path.basename(os.path.realpath(binary))
        if "legacy" in target:
            return "legacy"
        if "nft" in target:
            return "nft"
        return None

    def _missing(self, what: str) -> SourceError:
        return SourceError(f"{self.name}: {what} not found; install the Debian package iptables")

    def _legacy_tables(self) -> str:
        """The kernel's list of legacy tables ("" when x_tables is not loaded: none exist)."""
        try:
            with open(self.legacy_names, encoding="utf-8", errors="surrogateescape") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""
        except OSError as error:
            raise SourceError(
                f"{self.name}: cannot read {self.legacy_names}: {error.strerror}"
            ) from None

    def fetch(self) -> dict[str, str]:
        outputs: dict[Backend, str] = {}
        kernel = Kernel(self.name, self.procfs, self.sysfs)
        gates: dict[Backend, Decision] = {
            "legacy": kernel.legacy_iptables(self.family),
            "nft": kernel.decide(NF_TABLES),
        }
        # Read before the dumps: tables only appear, so a dump taken after lists them all.
        legacy_tables = self._legacy_tables()
        binaries = self._binaries()
        if self.backend == "libiptc":
            outputs["legacy"] = read_libiptc(self.family, self.procfs, self.timeout)
            if "nft" in binaries:
                outputs["nft"] = self._gated_save(binaries["nft"], gates["nft"])
            primary: Backend = "legacy"
        else:
            if self.backend in BACKENDS and self.backend not in binaries:
                raise self._missing(f"{self.tool}-{self.backend}-save")
            if not binaries:
                raise self._missing(
                    f"{self.tool}-nft-save, {self.tool}-legacy-save and {self.tool}-save"
                )
            for backend, binary in binaries.items():
                outputs[backend] = self._gated_save(binary, gates[backend])
            if self.backend in BACKENDS:
                primary = self.backend  # type: ignore[assignment]
            else:
                primary = self._choose(outputs)
        files = {
            self.save_file: outputs[primary],
            self.backend_file: primary + "\n",
            self.legacy_tables_file: legacy_tables,
            self.kernel_file: record(list(gates.values())),
        }
        for backend, text in outputs.items():
            if backend != primary:
                # Kept even when it holds nothing: its list of tables is checked against the
                # kernel's, and a missing file would look like a table cut off.
                files[self.backend_save_file(backend)] = text
        return files

    def _gated_save(self, binary: str, gate: Decision) -> str:
        """The backend's dump; "" without running the tool when its module is absent: no table of
        that backend can exist, and the tool would make the kernel load the module."""
        return self._run_save(binary) if gate.runs else ""

    def _run_save(self, binary: str) -> str:
        benign = BENIGN_STDERR.get(os.path.basename(binary), frozenset())
        return run_tool(self.name, [binary], self.timeout, benign_stderr=benign)

    def _choose(self, outputs: Mapping[Backend, str]) -> Backend:
        docker = [b for b in BACKENDS if b in outputs and text_holds_docker_chains(outputs[b])]
        if len(docker) == 1:
            return docker[0]
        default = self._default_backend()
        candidates = docker or [b for b in BACKENDS if b in outputs]
        if default in candidates:
            return default  # type: ignore[return-value]
        return candidates[0]

    # -- parse ----------------------------------------------------------------------------------

    def parse(self, files: Mapping[str, str]) -> IptablesRead:
        text = require(self.name, files, self.save_file)
        hint: Backend | None = None
        if self.backend_file in files:
            word = files[self.backend_file].strip()
            if word not in BACKENDS:
                raise SourceError(
                    f"{self.name}: {self.backend_file} names no backend (nft/legacy): {word!r}"
                )
            hint = word  # type: ignore[assignment]
        first = whole(self.name, self.save_file, parse_iptables_save(text, self.family, hint))
        if hint is not None and first.backend != hint:
            first = dataclasses.replace(first, backend=hint)
        rulesets = [first]
        dumps = {first.backend: (self.save_file, first)}
        for backend in BACKENDS:
            name = self.backend_save_file(backend)
            if backend != first.backend and name in files:
                other = parse_iptables_save(files[name], self.family, backend)
                other = whole(self.name, name, other)
                other = dataclasses.replace(other, backend=backend)
                dumps[backend] = (name, other)
                if text_holds_anything(files[name]):
                    rulesets.append(other)
        self._check_legacy_tables(files, dumps)
        primary = docker_backend(rulesets)
        tables = {backend: frozenset(r.tables) for backend, (_, r) in dumps.items()}
        return IptablesRead(primary=primary, rulesets=tuple(rulesets), dump_tables=tables)

    def _check_legacy_tables(
        self, files: Mapping[str, str], dumps: Mapping[Backend, tuple[str, Ruleset]]
    ) -> None:
        """Every table the kernel lists as legacy must be in the legacy dump: a dump cut at a
        table boundary leaves no other trace. Snapshots without the list skip this."""
        if self.legacy_tables_file not in files:
            return
        listed = [name.strip() for name in files[self.legacy_tables_file].splitlines()]
        listed = [name for name in listed if name]
        if not listed:
            return
        if "legacy" not in dumps:
            raise SourceError(
                f"{self.name}: the kernel lists legacy tables ({', '.join(listed)}) but no "
                f"{self.tool}-legacy-save output was read; install the Debian package iptables"
            )
        name, legacy = dumps["legacy"]
        missing = [table for table in listed if table not in legacy.tables]
        if missing:
            raise SourceError(
                f"{self.name}: {name} printed no table {', '.join(missing)} that "
                f"{self.legacy_tables_file} lists: dump cut short; no verdict from it"
            )


def whole(source: str, file: str, ruleset: Ruleset) -> Ruleset:
    """The ruleset, when its dump was read in full; SourceError naming the first line that says it
    was not (a table cut short, a line no save tool prints, a rule that cannot be parsed or holds
    a value the kernel could never print). A partial dump is never evidence: what is missing could
    hold the rule that decides. Well-formed rules with options the evaluator does not know pass.
    """
    problems = [(line.number, _unknown_line(line)) for line in ruleset.unknown_lines]
    problems += [
        (rule.line, f"table {table.name} chain {chain.name}: rule not understood ({rule.error})")
        for table in ruleset.tables.values()
        for chain in table.chains.values()
        for rule in chain.rules
        if rule.error
    ]
    if not problems:
        _shows_every_table(source, file, ruleset)
        return ruleset
    number, what = min(problems)
    verdict = "no verdict from it" if "cut short" in what else "dump not whole, no verdict from it"
    raise SourceError(f"{source}: {file} line {number}: {what}; {verdict}")


def _shows_every_table(source: str, file: str, ruleset: Ruleset) -> None:
    """iptables-nft-save prints "# Table `raw' contains incompatible base-chains, use 'nft' tool to
    list them." on stdout, then that table with empty default chains, and exits 0: its rules are
    not in the dump."""
    for warning in ruleset.warnings:
        if INCOMPATIBLE_TABLE in warning.lower():
            raise SourceError(
                f"{source}: {file}: {warning[:120]!r}: that table's rules are not in the dump; "
                "no verdict from it"
            )


def _unknown_line(line: UnknownLine) -> str:
    where = (
        f"table {line.table}: " if line.table and f"table {line.table}" not in line.reason else ""
    )
    text = f": {line.text[:60]!r}" if line.text else ""
    return f"{where}{line.reason}{text}"


# -- libiptc (python-iptables) --------------------------------------------------------------------

# python-iptables reads extension options by redirecting the process's stdout (fd 1): one reader at
# a time.
_LIBIPTC_LOCK = threading.Lock()


def read_libiptc(family: str, procfs: str = DEFAULT_PROCFS, timeout: float = 5.0) -> str:
    """The legacy tables of one family, read with python-iptables, in iptables-save format."""
    source = "iptables" if family == "ipv4" else "ip6tables"
    names_file = os.path.join(
        procfs, "net", "ip_tables_names" if family == "ipv4" else "ip6_tables_names"
    )
    try:
        with open(names_file, encoding="ascii") as handle:
            tables = [line.strip() for line in handle if line.strip()]
    except FileNotFoundError:
        return ""  # the legacy x_tables module is not loaded: no legacy table exists
    except OSError as error:
        raise SourceError(f"{source}: cannot read {names_file}: {error.strerror}") from None
    try:
        # Imported here, only for backend libiptc: loading it needs libiptc on the host, which the
        # other backends do not.
        import iptc
    except Exception as error:  # noqa: BLE001 - a missing libiptc surfaces as many errors
        raise SourceError(
            f"{source}: python-iptables (libiptc) cannot be loaded: {error}; "
            "use --iptables.backend=auto"
        ) from None
    factory = iptc.Table if family == "ipv4" else iptc.Table6
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            with _LIBIPTC_LOCK:
                parts = []
                for name in tables:
                    # autocommit=False: never write the table back when the handle is freed.
                    table = factory(name, autocommit=False)
                    # python-iptables hands out one Table per name for the process's life and
                    # close() below ends its handle: open a fresh one, which also shows the
                    # kernel's rules now rather than when the handle was first opened.
                    table.refresh()
                    try:
                        parts.append(render_table(name, table, family))
                    finally:
                        table.close()
                result["text"] = "".join(parts)
        except Exception as error:  # noqa: BLE001
            result["error"] = error

    thread = threading.Thread(target=work, name=f"libiptc-{family}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise SourceError(
            f"{source}: reading the legacy tables with libiptc timed out after {timeout:g}s"
        )
    if "error" in result:
        error = result["error"]
        hint = "; run the exporter as root" if "ermission" in str(error) else ""
        raise SourceError(f"{source}: libiptc failed: {error}{hint}")
    return result["text"]


def render_table(name: str, table: Any, family: str) -> str:
    """One python-iptables table as iptables-save prints it (without counters)."""
    lines = [f"*{name}"]
    chains = list(table.chains)
    for chain in chains:
        policy = chain.get_policy() if chain.is_builtin() else None
        lines.append(f":{chain.name} {policy.name if policy else '-'} [0:0]")
    for chain in chains:
        for rule in chain.rules:
            lines.append(render_rule(chain.name, rule, family))
    lines.append("COMMIT")
    return "".join(line + "\n" for line in lines)


def render_rule(chain: str, rule: Any, family: str) -> str:
    words = [f"-A {chain}"]
    for flag, value in (("-s", rule.src), ("-d", rule.dst)):
        address = _address(value, family)
        if address:
            words.append(address[0] + flag + " " + address[1])
    for flag, value in (("-i", rule.in_interface), ("-o", rule.out_interface)):
        if value:
            negated = value.startswith("!")
            words.append(("! " if negated else "") + flag + " " + value.lstrip("!"))
    protocol = rule.protocol or ""
    if protocol.lstrip("!") not in ("", "ip", "0", "all", "ipv6"):
        words.append(("! " if protocol.startswith("!") else "") + "-p " + protocol.lstrip("!"))
    if family == "ipv4" and getattr(rule, "fragment", False):
        words.append("-f")
    ip = rule.get_ip()
    for match in rule.matches:
        words.append(f"-m {match.name}")
        args = _saved(match, ip)
        if args:
            words.append(args)
    target = rule.target
    if target is not None and target.name:
        words.append(("-g " if getattr(target, "_goto", False) else "-j ") + target.name)
        args = _saved(target, ip)
        if args:
            words.append(args)
    return " ".join(words)


def _saved(module: Any, ip: Any) -> str:
    """The options an extension prints for itself (its save function)."""
    try:
        buf = module._get_saved_buf(ip)
    except Exception:  # noqa: BLE001 - a standard target has no save function
        return ""
    if not buf:
        return ""
    return (decode(buf) if isinstance(buf, bytes) else str(buf)).strip()


def _address(value: str | None, family: str) -> tuple[str, str] | None:
    """("! " or "", "ADDR/PREFIX") for python-iptables' "!ADDR/MASK"; None for any address."""
    if not value:
        return None
    negated = value.startswith("!")
    text = value.lstrip("!")
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return ("! " if negated else "", text)
    if network.prefixlen == 0:
        return None
    return ("! " if negated else "", f"{network.network_address}/{network.prefixlen}")


# -- ebtables -------------------------------------------------------------------------------------


class _ToolSource:
    """A source that runs read-only tools; `path`, `procfs` and `sysfs` let tests point at fakes."""

    name: str

    def __init__(
        self,
        timeout: float = 5.0,
        *,
        path: str | None = None,
        procfs: str = DEFAULT_PROCFS,
        sysfs: str = DEFAULT_SYSFS,
    ) -> None:
        self.timeout = timeout
        self.path = path
        self.procfs = procfs
        self.sysfs = sysfs

    @property
    def kernel(self) -> Kernel:
        return Kernel(self.name, self.procfs, self.sysfs)

    def _run(self, binary: str, *args: str) -> str:
        benign = BENIGN_STDERR.get(os.path.basename(binary), frozenset())
        return run_tool(self.name, [binary, *args], self.timeout, benign_stderr=benign)

    def _need(self, tool: str, package: str, gate: Decision) -> str:
        binary = find_binary(self.name, tool, self.path)
        if binary is None:
            raise SourceError(
                f"{self.name}: {tool} not found but the {gate.module} module is loaded "
                f"({gate.evidence}); install the Debian package {package}"
            )
        return binary


def kernel_file(source: str) -> str:
    """The snapshot file recording what a source decided about the kernel's modules."""
    return f"{source}-kernel.txt"


class EbtablesSource(_ToolSource):
    """The bridge family (ebtables, either backend)."""

    name = "ebtables"

    def fetch(self) -> dict[str, str]:
        nft, legacy = self.kernel.decide(NF_TABLES), self.kernel.decide(EBTABLES)
        files = {kernel_file(self.name): record([nft, legacy])}
        binary = find_binary(self.name, "ebtables-nft-save", self.path) or find_binary(
            self.name, "ebtables-save", self.path
        )
        if binary is None:
            raise SourceError(
                "ebtables: ebtables-save not found; install the Debian package ebtables"
            )
        if "legacy" in os.path.basename(os.path.realpath(binary)):
            files[EBTABLES_FILE] = self._legacy_save(binary, legacy)
            return files
        files[EBTABLES_FILE] = self._run(binary) if nft.runs else ""
        legacy_binary = find_binary(self.name, "ebtables-legacy-save", self.path)
        if legacy.runs and legacy_binary:
            if os.path.realpath(legacy_binary) != os.path.realpath(binary):
                files[EBTABLES_LEGACY_FILE] = self._legacy_save(legacy_binary, legacy)
        return files

    def _legacy_save(self, binary: str, gate: Decision) -> str:
        """ebtables-legacy-save's dump. It dumps the tables whose ebtable_* module /proc/modules
        lists: blind to tables built into the kernel, which fail the source (never "no rules")."""
        if not gate.runs:
            return ""
        if not gate.loaded:
            raise SourceError(
                f"ebtables: legacy ebtables is in the kernel but not as a loaded module "
                f"({gate.evidence}); ebtables-legacy-save lists only loaded modules' tables, so "
                "its rules cannot be read; no verdict from ebtables"
            )
        return self._run(binary)

    def parse(self, files: Mapping[str, str]) -> Ruleset:
        """The bridge Ruleset that decides: ebtables-save.txt's, or the legacy one when only that
        one holds anything. Both apply to bridged frames and FirewallState.bridge holds one, so
        when both hold rules this is a SourceError (bridge stages are then unknown, not guessed).
        """
        main = whole(
            self.name, EBTABLES_FILE, parse_ebtables_save(require(self.name, files, EBTABLES_FILE))
        )
        if EBTABLES_LEGACY_FILE not in files:
            return main
        legacy = whole(
            self.name, EBTABLES_LEGACY_FILE, parse_ebtables_save(files[EBTABLES_LEGACY_FILE])
        )
        legacy = dataclasses.replace(legacy, backend="legacy")
        if legacy.empty:
            return main
        if main.empty:
            return legacy
        raise SourceError(
            "ebtables: both ebtables-nft and ebtables-legacy hold rules; the bridge stage cannot "
            "be judged from one ruleset; remove the rules of the backend not in use"
        )


# -- ipset ----------------------------------------------------------------------------------------


class IpsetSource(_ToolSource):
    name = "ipset"

    def fetch(self) -> dict[str, str]:
        gate = self.kernel.decide(IP_SET)
        files = {kernel_file(self.name): record([gate])}
        # Without ip_set no set can exist; running `ipset` would make the kernel load it.
        if not gate.runs:
            return {**files, IPSET_FILE: ""}
        binary = self._need("ipset", "ipset", gate)
        return {**files, IPSET_FILE: self._run(binary, "save")}

    def parse(self, files: Mapping[str, str]) -> dict[str, IPSet]:
        return _pure(self.name, IPSET_FILE, files, parse_ipset_save)


# -- nftables -------------------------------------------------------------------------------------


class NftablesSource(_ToolSource):
    """nft's tables. `nft -j list chains` (cheap: no rules) names every table with a chain; only
    the tables iptables-nft and ebtables-nft do not own are then listed in full, one
    `nft -j list table FAMILY NAME` each: the others are read through their save tools, and a full
    `nft -j list ruleset` would read them a second time (seconds on a host with many rules)."""

    name = "nftables"

    def fetch(self) -> dict[str, str]:
        gate = self.kernel.decide(NF_TABLES)
        files = {kernel_file(self.name): record([gate])}
        if not gate.runs:
            return {**files, NFT_FILE: NFT_EMPTY}  # no nf_tables: no nft table can exist
        binary = self._need("nft", "nftables", gate)
        chains = self._run(binary, "-j", "list", "chains")
        files[NFT_CHAINS_FILE] = chains
        for family, table in native_tables(_pure(self.name, NFT_CHAINS_FILE, files, chain_tables)):
            files[nft_table_file(family, table)] = self._run(
                binary, "-j", "list", "table", family, table
            )
        return files

    def parse(self, files: Mapping[str, str]) -> NftablesInfo:
        if NFT_CHAINS_FILE not in files:  # the whole ruleset: older snapshots, or no nf_tables
            return _pure(self.name, NFT_FILE, files, parse_nft_ruleset)
        listed = _pure(self.name, NFT_CHAINS_FILE, files, chain_tables)
        infos = [
            _pure(self.name, nft_table_file(family, table), files, parse_nft_ruleset)
            for family, table in native_tables(listed)
        ]
        for (family, table), info in zip(native_tables(listed), infos, strict=True):
            if f"{family} {table}" not in info.tables:
                raise SourceError(
                    f"{self.name}: {nft_table_file(family, table)} does not hold table "
                    f"{family} {table}; no verdict from it"
                )
        return merge_tables(listed, infos)


def nft_table_file(family: str, table: str) -> str:
    """nft-table-FAMILY-NAME.json; a table name may hold "/", which a file name cannot."""
    return f"nft-table-{family}-{urllib.parse.quote(table, safe='')}.json"


def chain_tables(text: str) -> tuple[tuple[str, str], ...]:
    """(family, table) of every table `nft -j list chains` printed a chain of, in its order.

    A table without chains is not among them: it holds no rule, so no packet meets it.
    """
    parse_nft_ruleset(text)  # ValueError for anything nft does not print
    found: dict[tuple[str, str], None] = {}
    for item in json.loads(text)["nftables"]:
        chain = item.get("chain")
        if isinstance(chain, dict):
            found[(str(chain.get("family")), str(chain.get("table")))] = None
    return tuple(found)


def native_tables(tables: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The tables no save tool prints: those must be listed with nft itself."""
    return tuple((family, name) for family, name in tables if not save_tool_table(family, name))


def merge_tables(listed: tuple[tuple[str, str], ...], infos: list[NftablesInfo]) -> NftablesInfo:
    """One NftablesInfo from the chains listing and each native table's own listing, equal to
    what `nft -j list ruleset` gives: save-tool tables count only in `tables`."""
    chains: dict[tuple[str, str, str], NftChain] = {}
    sets: dict[tuple[str, str, str], NftSet] = {}
    for info in infos:
        chains.update(info.native.chains)
        sets.update(info.native.sets)
    return NftablesInfo(
        foreign_chains=tuple(c for info in infos for c in info.foreign_chains),
        docker_tables=tuple(t for info in infos for t in info.docker_tables),
        tables=tuple(f"{family} {name}" for family, name in listed),
        native=NftRuleset(chains, sets),
    )


def _pure(
    source: str, name: str, files: Mapping[str, str], parse: Callable[[str], Parsed]
) -> Parsed:
    text = require(source, files, name)
    try:
        return parse(text)
    except ValueError as error:
        raise SourceError(f"{source}: {name}: {error}") from None
