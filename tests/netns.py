"""Helpers for tests that build hosts out of network namespaces without dockerd."""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
from collections.abc import Iterable, Iterator
from ipaddress import ip_address
from typing import Any

from exporter.firewall.evaluate import PathInputs, evaluate_packet
from exporter.firewall.parse import parse_ebtables_save, parse_iptables_save, parse_nft_ruleset
from exporter.firewall.rules import Backend
from exporter.firewall.state import FirewallState
from exporter.flows import flow_packets
from exporter.verdict import Verdict

CLONE_NEWNET = 0x40000000


def run(args: list[str], stdin: str | None = None) -> str:
    """Run a command; its stdout, or RuntimeError with its stderr."""
    done = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def enter(netns: str) -> None:
    """Thread initializer: move this worker thread (only it) into a network namespace.

    setns(2) moves the calling thread alone, and sockets keep the namespace they were made in.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
    finally:
        os.close(fd)


def sh(netns: str, script: str, stdin: str | None = None) -> str:
    """A shell script run inside a network namespace."""
    return run(["nsenter", f"--net=/run/netns/{netns}", "sh", "-c", script], stdin)


def delete_namespaces(names: Iterable[str]) -> None:
    for netns in names:
        if os.path.exists(f"/run/netns/{netns}"):
            run(["ip", "netns", "delete", netns])


def firewall_state(netns: str, primary_backend: Backend | None) -> FirewallState:
    """What the namespace's kernel holds, read the way the exporter reads it: the nft save tools
    and `nft -j list ruleset`."""
    return FirewallState(
        primary_backend=primary_backend,
        rulesets=(
            parse_iptables_save(sh(netns, "iptables-nft-save"), "ipv4"),
            parse_iptables_save(sh(netns, "ip6tables-nft-save"), "ipv6"),
        ),
        bridge=parse_ebtables_save(sh(netns, "ebtables-nft-save")),
        ipsets={},
        nftables=parse_nft_ruleset(sh(netns, "nft -j list ruleset")),
    )


def tcp_connects(family: socket.AddressFamily, address: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection from the calling thread's namespace is accepted in time."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((address, port))
        return True
    except OSError:  # timeout (dropped) or refused/unreachable (rejected)
        return False
    finally:
        sock.close()


def flow_verdict(
    inputs: PathInputs,
    family: str,
    source: str,
    target: str,
    bridge: str,
    protocol: str,
    port: int,
    *,
    arp: bool,
) -> Verdict:
    """The evaluator's verdict on a flow as exporter/flows.py decides it: every packet the flow
    needs (flows.flow_packets) must pass; a sure drop denies, else an unknown packet wins."""
    packets = flow_packets(
        family, ip_address(source), ip_address(target), bridge, protocol, port, arp=arp
    )
    verdicts = {evaluate_packet(packet, inputs).verdict for packet in packets}
    for verdict in (Verdict.DENY, Verdict.UNKNOWN):
        if verdict in verdicts:
            return verdict
    return Verdict.ALLOW


def module_lab(lab: Any, tools: Iterable[str]) -> Iterator[Any]:
    """Body of a module-scoped lab fixture: fail (never skip) without root or a tool; build the
    lab, hand it out, and tear it down even when a test fails."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    assert os.geteuid() == 0 and not missing, f"needs root and {missing}"
    try:
        lab.build()
        yield lab
    finally:
        lab.close()
