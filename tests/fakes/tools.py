"""Fake firewall tools on a private PATH, and a fake /proc and /sys for the other sources.

Each tool is a /bin/sh script that logs its argv, then prints a fixture, hangs, fails with a
message, or prints and also writes to stderr while exiting 0. Sources find them with `path=`:

    tools = FakeTools(tmp_path / "bin")
    tools.install("iptables-nft-save", prints(text))
    IptablesSource("ipv4", path=tools.path).fetch()
    assert tools.calls() == [["iptables-nft-save"]]
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MIXED = FIXTURES / "sources" / "docker20.10-nft-mixed"

EMPTY_EBTABLES = "*filter\n:INPUT ACCEPT\n:FORWARD ACCEPT\n:OUTPUT ACCEPT\n"
EMPTY_IP6TABLES = (
    "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
)
EMPTY_NFT = '{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]}\n'

# The argv each tool may be run with, all of them read only: nft lists its chains, then reads
# single tables.
READ_ONLY: dict[str, Callable[[list[str]], bool]] = {
    "iptables-nft-save": lambda args: args == [],
    "iptables-legacy-save": lambda args: args == [],
    "ip6tables-nft-save": lambda args: args == [],
    "ip6tables-legacy-save": lambda args: args == [],
    "ebtables-nft-save": lambda args: args == [],
    "ebtables-legacy-save": lambda args: args == [],
    "ipset": lambda args: args == ["save"],
    "nft": lambda args: (
        args in (["-j", "list", "ruleset"], ["-j", "list", "chains"])
        or (len(args) == 5 and args[:3] == ["-j", "list", "table"])
    ),
}


@dataclass(frozen=True)
class Tool:
    """What one fake tool does when run."""

    stdout: str = ""
    stderr: str = ""
    exit_code: int = 0
    hang: bool = False
    executable: bool = True


def prints(text: str) -> Tool:
    return Tool(stdout=text)


def fails(message: str, exit_code: int = 1) -> Tool:
    return Tool(stderr=message + "\n", exit_code=exit_code)


def hangs() -> Tool:
    return Tool(hang=True)


def noisy(text: str, message: str) -> Tool:
    """Prints `text` and exits 0, but also says something on stderr."""
    return Tool(stdout=text, stderr=message + "\n")


def cut_short(text: str) -> Tool:
    """Half of `text`, as when the tool was killed while writing."""
    return Tool(stdout=text[: len(text) // 2])


def not_executable(text: str = "") -> Tool:
    return Tool(stdout=text, executable=False)


class FakeTools:
    """A directory of fake tools; `path` is what the sources take as their PATH."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._data = directory / ".data"
        self._data.mkdir(exist_ok=True)
        self.log = self._data / "calls.log"
        self.log.touch()

    @property
    def path(self) -> str:
        return str(self.directory)

    def install(self, name: str, tool: Tool) -> Path:
        out = self._data / f"{name}.out"
        err = self._data / f"{name}.err"
        out.write_text(tool.stdout, encoding="utf-8", errors="surrogateescape")
        err.write_text(tool.stderr, encoding="utf-8")
        lines = [
            "#!/bin/sh",
            # One line per run: the tool's name, then its arguments, tab-separated.
            f'printf "%s" {shlex.quote(name)} >> {shlex.quote(str(self.log))}',
            f'for a in "$@"; do printf "\\t%s" "$a" >> {shlex.quote(str(self.log))}; done',
            f"echo >> {shlex.quote(str(self.log))}",
            f"cat {shlex.quote(str(out))}",
            f"cat {shlex.quote(str(err))} >&2",
        ]
        if tool.hang:
            # The pid is sleep's too (exec), so a test can see it was killed.
            lines.append(f"echo $$ > {shlex.quote(str(self._data / f'{name}.pid'))}")
            lines.append("exec sleep 3600")
        lines.append(f"exit {tool.exit_code}")
        script = self.directory / name
        script.write_text("\n".join(lines) + "\n")
        script.chmod(0o755 if tool.executable else 0o644)
        return script

    def output(self, name: str) -> str:
        """What the tool prints on stdout now."""
        return (self._data / f"{name}.out").read_text(encoding="utf-8", errors="surrogateescape")

    def hung_pid(self, name: str) -> int:
        """The pid of the last run of a hanging tool."""
        return int((self._data / f"{name}.pid").read_text())

    def remove(self, name: str) -> None:
        (self.directory / name).unlink(missing_ok=True)

    def calls(self) -> list[list[str]]:
        """Every run so far, as [name, *args]."""
        text = self.log.read_text()
        return [line.split("\t") for line in text.splitlines() if line]

    def writes(self) -> list[list[str]]:
        """The runs that were not one of the read-only commands in READ_ONLY."""
        return [
            call for call in self.calls() if not READ_ONLY.get(call[0], lambda _: False)(call[1:])
        ]


def install_host(tools: FakeTools, case: Path = MIXED) -> None:
    """Every tool, printing what a host like the fixture case shows (nft backend, Docker's rules)."""
    tools.install("iptables-nft-save", prints((case / "iptables-save.txt").read_text()))
    tools.install("iptables-legacy-save", prints(""))
    ipv6 = case / "ip6tables-save.txt"
    ipv6_text = ipv6.read_text() if ipv6.exists() else ""
    tools.install("ip6tables-nft-save", prints(ipv6_text or EMPTY_IP6TABLES))
    tools.install("ip6tables-legacy-save", prints(""))
    tools.install("ebtables-nft-save", prints(EMPTY_EBTABLES))
    tools.install("ebtables-legacy-save", prints(""))
    # Sets no rule uses: they change no verdict, but give a cut-short dump something to cut.
    tools.install("ipset", prints((FIXTURES / "tools" / "ipset-save.txt").read_text()))
    tools.install("nft", prints(EMPTY_NFT))


def make_sysfs(root: Path, modules: tuple[str, ...] = ("ip_set", "nf_tables")) -> Path:
    """A /sys whose /sys/module lists the given kernel modules."""
    for module in modules:
        (root / "module" / module).mkdir(parents=True, exist_ok=True)
    (root / "module").mkdir(parents=True, exist_ok=True)
    return root


def make_procfs(
    root: Path,
    dockerd_args: tuple[str, ...] = ("--icc=false",),
    sysctls: dict[str, str] | None = None,
) -> Path:
    """A /proc with one dockerd in our network namespace and the sysctls the settings read."""
    (root / "self" / "ns").mkdir(parents=True, exist_ok=True)
    os.symlink("net:[4026531840]", root / "self" / "ns" / "net")
    dockerd = root / "4242"
    (dockerd / "ns").mkdir(parents=True)
    os.symlink("net:[4026531840]", dockerd / "ns" / "net")
    argv = ("/usr/bin/dockerd", "-H", "fd://", *dockerd_args)
    (dockerd / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
    values = sysctls or {
        "net/bridge/bridge-nf-call-iptables": "1",
        "net/bridge/bridge-nf-call-ip6tables": "1",
        "net/ipv4/ip_forward": "1",
    }
    for rel, value in values.items():
        (root / "sys" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "sys" / rel).write_text(value + "\n")
    # A modular kernel with nf_tables and ip_set loaded and nothing built in: the firewall sources
    # run the nft-based tools and ipset, and no legacy tool.
    (root / "modules").write_text(
        "nf_tables 356352 0 - Live 0x0000000000000000\nip_set 61440 0 - Live 0x0000000000000000\n"
    )
    (root / "kallsyms").write_text("0000000000000000 T _stext\n")
    return root
