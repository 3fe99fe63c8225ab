"""The ground truth itself: does the lab measure what Docker really enforces?

Why: the drift tests trust `tcp_reachable` / `udp_delivered` to say what the kernel does. If a
probe could not tell a drop from a missing listener, every drift test built on it would prove
nothing. So here, for both iptables backends, known Docker behaviour is checked with real
packets: icc=false blocks unlinked containers, --link opens exactly the exposed ports, deleting
the link rule closes it again, and a user network with enable_icc=false isolates its members.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.lab import DockerLab, lab_fixture

pytestmark = pytest.mark.lab


def build_topology(lab: DockerLab) -> None:
    """Default bridge: web, client --link web:db, loner. Network isolated: api, worker."""
    lab.run("web", expose=["80/tcp", "53/udp"])
    lab.run("client", links=["web:db"])
    lab.run("loner")
    lab.network_create("isolated", icc=False)
    lab.run("api", expose=["8080/tcp"], network="isolated")
    lab.run("worker", network="isolated")


lab = lab_fixture(icc=False, setup=build_topology)


@contextmanager
def rule_deleted(lab: DockerLab, chain: str, pattern: str) -> Iterator[str]:
    """Delete the one rule in CHAIN matching PATTERN; put it back at the same place afterwards."""
    rules = [r for r in lab.iptables("-S", chain).stdout.splitlines() if r.startswith("-A ")]
    hits = [(i, r) for i, r in enumerate(rules, start=1) if re.search(pattern, r)]
    assert len(hits) == 1, f"expected one rule matching {pattern!r} in {chain}: {rules}"
    position, rule = hits[0]
    spec = rule.split()[2:]  # drop "-A CHAIN"
    lab.iptables("-D", chain, *spec)
    try:
        yield rule
    finally:
        lab.iptables("-I", chain, str(position), *spec)


def test_link_opens_exposed_tcp_port_only_for_linked_container(lab: DockerLab) -> None:
    web_ip = lab.ip("web")
    with lab.timings.step("tcp probes"):
        assert lab.listening(web_ip, 80), "web must listen, or a 'deny' would mean nothing"
        got = lab.tcp_reachable_many([("client", web_ip, 80), ("loner", web_ip, 80)])
    assert got[("client", web_ip, 80)] is True
    assert got[("loner", web_ip, 80)] is False


def test_link_opens_exposed_udp_port_only_for_linked_container(lab: DockerLab) -> None:
    web_ip = lab.ip("web")
    with lab.timings.step("udp probes"):
        assert lab.udp_delivered("client", "web", web_ip, 53) is True
        assert lab.udp_delivered("loner", "web", web_ip, 53) is False


def test_deleting_the_link_rule_blocks_the_linked_client(lab: DockerLab) -> None:
    web_ip, client_ip = lab.ip("web"), lab.ip("client")
    pattern = (
        rf"-s {re.escape(client_ip)}/32 -d {re.escape(web_ip)}/32 -i docker0 -o docker0 "
        r"-p tcp -m tcp --dport 80 -j ACCEPT$"
    )
    with lab.timings.step("delete link rule"), rule_deleted(lab, "DOCKER", pattern):
        assert lab.tcp_reachable("client", web_ip, 80) is False
    with lab.timings.step("restored link rule"):
        assert lab.tcp_reachable("client", web_ip, 80) is True


def test_user_network_without_icc_isolates_its_members(lab: DockerLab) -> None:
    api_ip = lab.ip("api", "isolated")
    with lab.timings.step("user network probe"):
        assert lab.listening(api_ip, 8080)
        assert lab.tcp_reachable("worker", api_ip, 8080) is False


def test_bridge_nf_call_off_bypasses_iptables(lab: DockerLab) -> None:
    """With bridge-nf-call-iptables=0 bridged packets skip iptables: icc=false means nothing."""
    web_ip = lab.ip("web")
    with lab.timings.step("bridge-nf-call=0"):
        lab.set_bridge_nf_call(0)
        try:
            assert lab.tcp_reachable("loner", web_ip, 80) is True
        finally:
            lab.set_bridge_nf_call(1)
        assert lab.tcp_reachable("loner", web_ip, 80) is False


def test_restart_with_icc_brings_containers_back_and_opens_the_bridge(lab: DockerLab) -> None:
    """restart() is what the icc_posture drift test relies on; IPs may change across it."""
    try:
        lab.restart(icc=True)
        assert set(lab.docker("ps", "--format", "{{.Names}}").stdout.split()) == set(lab.containers)
        web_ip = lab.ip("web")
        with lab.timings.step("icc=true probe"):
            assert lab.tcp_reachable("loner", web_ip, 80) is True
    finally:
        lab.restart(icc=False)
    web_ip = lab.ip("web")
    with lab.timings.step("icc=false probe"):
        got = lab.tcp_reachable_many([("client", web_ip, 80), ("loner", web_ip, 80)])
    assert got == {("client", web_ip, 80): True, ("loner", web_ip, 80): False}
