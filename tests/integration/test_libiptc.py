"""python-iptables (--iptables.backend=libiptc) against a real kernel's legacy tables.

python-iptables keeps one Table object per name for the whole process. `read_libiptc` closes it
after each read, so the second read in one process (a `serve` process's second check) used a
closed handle and the process died with a segmentation fault. Each read now opens a fresh handle, which also
shows rules changed since the last read. The reads run in a child process so that a crash fails
the test instead of killing pytest.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.firewall.parse import parse_iptables_save
from exporter.firewall.rules import rule_identity
from tests.netns import delete_namespaces, run, sh

pytestmark = pytest.mark.lab

RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
-A FORWARD -j DOCKER
-A FORWARD -i docker0 -o docker0 -j DROP
-A DOCKER -s 172.17.0.3/32 -d 172.17.0.2/32 -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER -s 172.17.0.2/32 -d 172.17.0.3/32 -i docker0 -o docker0 -p tcp -m tcp --sport 80 -j ACCEPT
COMMIT
"""
ADDED = "-A DOCKER -s 172.17.0.4/32 -d 172.17.0.2/32 -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT"

# Two reads in one process, the second after a rule was added from outside it.
CHILD = """
import subprocess, sys
from exporter.sources.firewall import read_libiptc
first = read_libiptc("ipv4")
subprocess.run(sys.argv[1:], check=True)
second = read_libiptc("ipv4")
sys.stdout.write(first + "\\0" + second)
"""


def identities(text: str) -> set:
    ruleset = parse_iptables_save(text, "ipv4", "legacy")
    return {rule_identity(rule) for rule in ruleset.chain("filter", "DOCKER").rules} | {
        rule_identity(rule) for rule in ruleset.chain("filter", "FORWARD").rules
    }


def test_two_libiptc_reads_in_one_process_both_see_the_kernels_rules() -> None:
    assert os.geteuid() == 0, "needs root"
    netns = f"dnp-iptc-{os.getpid()}-{secrets.token_hex(3)}"
    run(["ip", "netns", "add", netns])
    try:
        sh(netns, "iptables-legacy-restore", RULES)
        add = ["iptables-legacy", *ADDED.split()]
        repo = Path(__file__).resolve().parents[2]
        child = subprocess.run(
            ["nsenter", f"--net=/run/netns/{netns}", sys.executable, "-c", CHILD, *add],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(repo)},
        )
        assert child.returncode == 0, f"exit {child.returncode}: {child.stderr[-2000:]}"
        first, second = child.stdout.split("\0")
        after = sh(netns, "iptables-legacy-save")
        assert identities(first) == identities(RULES)
        assert identities(second) == identities(after) != identities(first)
    finally:
        delete_namespaces([netns])
