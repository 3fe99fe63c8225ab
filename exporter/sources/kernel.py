"""Whether a netfilter module is in the kernel, found out without making the kernel load it.

Running a firewall tool can make the kernel load the module behind it (nfnetlink asks for
nf_tables on the first nf_tables message, legacy ebtables runs modprobe, ipset asks for ip_set):
a change to the host. So each source first asks this module, which only reads files, and runs a
tool only when the module is present, or when the kernel cannot load modules at all.

Evidence, in order (the first that answers decides):

1. /sys/module/NAME: every loaded module has it, and so has a built-in one with parameters
   (ip_set, nf_conntrack).
2. /proc/modules (only on a kernel that can load modules): the loaded modules.
3. /proc/kallsyms: a built-in module's exported symbols are listed (without a "[module]" tag);
   a symbol absent while no module holds it means the code is not in the kernel.

A kernel without /proc/modules cannot load modules: running a tool there changes nothing, so
when /proc/kallsyms cannot tell, the tool runs and its own output decides.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from exporter.config import DEFAULT_PROCFS
from exporter.sources.base import SourceError

DEFAULT_SYSFS = "/sys"

State = Literal["present", "absent", "run"]


@dataclass(frozen=True)
class Module:
    """A kernel module a tool needs, and a symbol it exports when it is built in."""

    name: str
    symbol: str


NF_TABLES = Module("nf_tables", "nft_register_expr")
EBTABLES = Module("ebtables", "ebt_register_table")
IP_SET = Module("ip_set", "ip_set_get_byname")


@dataclass(frozen=True)
class Decision:
    """What was decided about one module, and on what evidence (one line in the snapshot).

    state: present (its tool runs), absent (its tables are empty, the tool never runs), run (the
    kernel loads no modules, so the tool runs and decides).
    loaded: present as a loaded module (not built in); legacy ebtables-save needs that.
    """

    module: str
    state: State
    evidence: str
    loaded: bool = False

    @property
    def runs(self) -> bool:
        return self.state != "absent"

    @property
    def line(self) -> str:
        return f"{self.module} {self.state}: {self.evidence}\n"


# What is built in is fixed at boot, so each answer is remembered for the process's life: a
# kallsyms read costs ~100 ms. (A module loaded later shows in /sys/module, asked first.)
_BUILT_IN: dict[tuple[str, str], bool] = {}


@dataclass(frozen=True)
class Kernel:
    """The kernel as /proc and /sys show it; the roots are injectable so tests can fake one."""

    source: str
    procfs: str = DEFAULT_PROCFS
    sysfs: str = DEFAULT_SYSFS

    def decide(self, module: Module) -> Decision:
        """Whether `module` is in the kernel; SourceError when that cannot be told safely."""
        if os.path.isdir(os.path.join(self.sysfs, "module", module.name)):
            return Decision(module.name, "present", f"/sys/module/{module.name}", loaded=True)
        loaded = self._loaded_modules()
        if loaded is not None and module.name in loaded:
            return Decision(module.name, "present", "listed in /proc/modules", loaded=True)
        built_in = self._built_in(module.symbol)
        if built_in:
            return Decision(module.name, "present", f"built in ({module.symbol} in kallsyms)")
        if built_in is False:
            where = "not in /sys/module, /proc/modules or /proc/kallsyms"
            return Decision(module.name, "absent", where)
        if loaded is None:
            return Decision(module.name, "run", "no /proc/modules: this kernel loads no module")
        raise SourceError(
            f"{self.source}: {module.name} is neither loaded nor shown in /proc/kallsyms: cannot "
            "tell whether the kernel has it without making it load the module; make "
            "/proc/kallsyms readable"
        )

    def _loaded_modules(self) -> frozenset[str] | None:
        """Names in /proc/modules; None when the kernel has no module support."""
        try:
            path = os.path.join(self.procfs, "modules")
            with open(path, encoding="ascii", errors="replace") as handle:
                return frozenset(line.split(" ", 1)[0] for line in handle if line.strip())
        except FileNotFoundError:
            return None
        except OSError as error:
            raise SourceError(
                f"{self.source}: cannot read {self.procfs}/modules: {error.strerror}; "
                "run the exporter as root"
            ) from None

    def _built_in(self, symbol: str) -> bool | None:
        """Whether kallsyms lists `symbol` without a module tag; None when it cannot be read."""
        path = os.path.join(self.procfs, "kallsyms")
        if (path, symbol) in _BUILT_IN:
            return _BUILT_IN[(path, symbol)]
        try:
            with open(path, encoding="ascii", errors="replace") as handle:
                text = handle.read()
        except OSError:
            return None
        # "ADDRESS TYPE NAME\n" for built-in code, "ADDRESS TYPE NAME\t[MODULE]\n" for a module's.
        _BUILT_IN[(path, symbol)] = f" {symbol}\n" in text
        return _BUILT_IN[(path, symbol)]

    def legacy_iptables(self, family: str) -> Decision:
        """ip_tables / ip6_tables: /proc/net/ip_tables_names exists exactly while it is there."""
        names = "ip_tables_names" if family == "ipv4" else "ip6_tables_names"
        module = "ip_tables" if family == "ipv4" else "ip6_tables"
        if os.path.exists(os.path.join(self.procfs, "net", names)):
            return Decision(module, "present", f"/proc/net/{names}")
        return Decision(module, "absent", f"no /proc/net/{names}")


def record(decisions: list[Decision]) -> str:
    """The snapshot file's text: one decision a line."""
    return "".join(decision.line for decision in decisions)
