"""A real check changes nothing on the host: no kernel module gets loaded, no gated tool runs.

Why: running iptables-nft-save, nft, ipset or ebtables-legacy-save can make the kernel load
nf_tables, ip_set or ebtables when they were not there; the sources run a tool only when its
module is present (exporter/sources/kernel.py). Here a real exporter, in a lab dockerd's network
namespace, runs under `strace -f`: no init_module/finit_module call, no modprobe, and every
firewall tool it executes is one its source's recorded decision (*-kernel.txt) allowed.

strace sees the loads a tool starts itself (modprobe run by ebtables or iptables); a load the
kernel starts on its own (request_module, run as a kernel helper outside this process tree) shows
only as a new entry in /sys/module or /proc/modules, compared before and after. On a kernel that
loads no modules (no /proc/modules) those lists cannot change; the gating itself is proven on a
fake modular kernel in tests/unit/test_sources_firewall.py.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_docker29_nftables import layout
from tests.lab import REPO_ROOT, DockerLab, exporter_env, lab_fixture

pytestmark = pytest.mark.lab

# The tools each module decision lets run (sources/firewall.py).
GATED_TOOLS = {
    "nf_tables": {
        "iptables-nft-save",
        "ip6tables-nft-save",
        "ebtables-nft-save",
        "ebtables-save",
        "nft",
    },
    "ip_tables": {"iptables-legacy-save"},
    "ip6_tables": {"ip6tables-legacy-save"},
    "ebtables": {"ebtables-legacy-save"},
    "ip_set": {"ipset"},
}
# Run by no firewall source: the namespace entry and the interpreter itself, and iptables'
# plain `iptables-save --version` probe.
UNGATED = {"nsenter", "iptables-save", "ip6tables-save"}
MODULE_LOADERS = {"modprobe", "insmod", "kmod"}


def build(lab: DockerLab) -> None:
    lab.run("web", expose=["80/tcp"])
    lab.run("client", links=["web:db"])


lab = lab_fixture(icc=False, backends=("nft",), setup=build)  # one dockerd is enough


def modules() -> tuple[tuple[str, ...], str | None]:
    """/sys/module's entries and /proc/modules' text (None where the kernel has none)."""
    listed = tuple(sorted(os.listdir("/sys/module")))
    proc = Path("/proc/modules")
    return listed, proc.read_text() if proc.exists() else None


def traced(lab: DockerLab, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    """The exporter run under strace -f: its result and the trace's text."""
    # A missing tool fails the test, never skips it (scripts/install-deps.sh installs strace).
    assert shutil.which("strace"), "strace is not installed"
    trace = tmp_path / f"trace-{os.getpid()}"
    command = [
        "strace", "-f", "-qq", "-o", str(trace),
        "-e", "trace=execve,init_module,finit_module",
        *lab.exporter_cmd(*args),
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=exporter_env()
    )
    return result, trace.read_text()


def executed(trace: str) -> set[str]:
    """Basenames of every program that was executed (successful execve only)."""
    found = re.findall(r'execve\("([^"]+)", .*\) = 0$', trace, flags=re.MULTILINE)
    return {os.path.basename(path) for path in found}


def allowed_by(snapshot: Path) -> tuple[set[str], set[str]]:
    """(tools the recorded decisions let run, tools they kept from running)."""
    allowed, refused = set(), set()
    for record in snapshot.glob("*-kernel.txt"):
        for line in record.read_text().splitlines():
            module, state = line.split(" ", 2)[:2]
            tools = GATED_TOOLS[module]
            (refused if state == "absent:" else allowed).update(tools)
    return allowed, refused - allowed


def test_a_check_loads_no_module(lab: DockerLab, tmp_path: Path) -> None:
    before = modules()
    result, trace = traced(lab, tmp_path, "check", "--format", "json")
    assert result.returncode in (0, 1), result.stderr
    assert "init_module(" not in trace and "finit_module(" not in trace
    assert not executed(trace) & MODULE_LOADERS
    assert modules() == before


def test_every_tool_run_is_one_the_kernel_decisions_allowed(lab: DockerLab, tmp_path: Path):
    out = tmp_path / "snapshot"
    result, trace = traced(lab, tmp_path, "snapshot", "--out", str(out))
    assert result.returncode == 0, result.stderr
    allowed, refused = allowed_by(out)
    assert allowed, "no *-kernel.txt in the snapshot"
    ran = {tool for tool in executed(trace) if not tool.startswith("python")}
    firewall_tools = ran - UNGATED - {"perl", "sh", "grep", "cut", "sed", "date", "ebtables"}
    assert {"nft", "iptables-nft-save"} <= ran, f"the trace missed the tools: {ran}"
    assert firewall_tools <= allowed, f"ran {firewall_tools - allowed} though not allowed"
    assert not ran & refused, f"ran {ran & refused}, which its module's absence forbids"
    assert "init_module(" not in trace and "finit_module(" not in trace
    # The snapshot decides as the live check did.
    replay = lab.exporter("check", "--format", "json", "--snapshot", str(out))
    assert replay.returncode in (0, 1), replay.stderr


# -------------------------------------------------- each table read once, on a real kernel

# Native rulesets as `nft -f` loads them: the nft fixtures, and Docker 29's tables.
NFT_RULESETS = {
    path.name: path.read_text()
    for path in sorted((REPO_ROOT / "tests" / "fixtures" / "nft").glob("*.nft"))
} | {
    f"docker29-{name}": layout(name)
    for name in (
        "icc-false-link",
        "icc-true",
        "usernet-icc-false",
        "usernet-icc-true",
        "usernet-internal",
    )
}
IPTABLES_NFT = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
-A FORWARD -j DOCKER
-A DOCKER -s 172.17.0.3/32 -d 172.17.0.2/32 -i docker0 -o docker0 -p tcp --dport 80 -j ACCEPT
COMMIT
"""
# Run inside the namespace: the source's reading and the whole ruleset's, compared as the parse
# sees them (tables without a chain hold no rule and are not in the chains listing).
COMPARE = """
import dataclasses, json, subprocess
from exporter.firewall.parse import parse_nft_ruleset
from exporter.sources.firewall import NftablesSource, chain_tables
files = NftablesSource(10.0).fetch()
whole = parse_nft_ruleset(subprocess.run(
    ["nft", "-j", "list", "ruleset"], capture_output=True, text=True, check=True).stdout)
chained = {f"{f} {t}" for f, t in chain_tables(files["nft-chains.json"])}
whole = dataclasses.replace(whole, tables=tuple(t for t in whole.tables if t in chained))
print(json.dumps({"equal": NftablesSource().parse(files) == whole, "files": sorted(files)}))
"""


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"dnp-h16-{os.getpid()}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.mark.parametrize("name", sorted(NFT_RULESETS))
def test_each_table_read_once_equals_the_whole_ruleset(netns: str, name: str) -> None:
    enter = ["nsenter", f"--net=/run/netns/{netns}"]
    subprocess.run([*enter, "iptables-nft-restore"], input=IPTABLES_NFT, text=True, check=True)
    subprocess.run([*enter, "nft", "-f", "-"], input=NFT_RULESETS[name], text=True, check=True)
    done = subprocess.run(
        [*enter, sys.executable, "-c", COMPARE],
        capture_output=True, text=True, cwd=REPO_ROOT, env=exporter_env(), timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["equal"], result
    # ip filter (iptables-nft's) is never listed by nft itself: its save tool reads it.
    assert "nft-table-ip-filter.json" not in result["files"]
