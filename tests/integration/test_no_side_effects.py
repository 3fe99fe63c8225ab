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

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

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
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
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
