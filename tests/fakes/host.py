"""A whole fake host: the Docker API, the firewall tools, /proc and /sys, in one tmp directory."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

from exporter.cli import main
from exporter.sources import (
    DockerSource,
    EbtablesSource,
    IpsetSource,
    IptablesSource,
    NftablesSource,
    SettingsSource,
    Sources,
)
from tests.fakes.tools import FakeTools, install_host, make_procfs, make_sysfs


@dataclass(frozen=True)
class CliRun:
    code: int
    stdout: str
    stderr: str


@dataclass
class FakeHost:
    root: Path
    tools: FakeTools
    procfs: Path
    sysfs: Path

    @classmethod
    def make(cls, root: Path) -> FakeHost:
        tools = FakeTools(root / "bin")
        install_host(tools)
        return cls(root, tools, make_procfs(root / "proc"), make_sysfs(root / "sys"))

    @property
    def daemon_json(self) -> str:
        return str(self.root / "daemon.json")  # absent: dockerd's defaults

    def sources(
        self, docker_host: str, *, docker_timeout: float = 0.5, timeout: float = 1.0
    ) -> Sources:
        """The sources build_sources() makes, but finding tools on the fake PATH."""
        common = {"path": self.tools.path, "sysfs": str(self.sysfs)}
        return Sources(
            docker=DockerSource(docker_host, docker_timeout),
            settings=SettingsSource(str(self.procfs), self.daemon_json, docker_host),
            iptables=IptablesSource("ipv4", "auto", timeout, path=self.tools.path),
            ip6tables=IptablesSource("ipv6", "auto", timeout, path=self.tools.path),
            ebtables=EbtablesSource(timeout, **common),
            ipset=IpsetSource(timeout, **common),
            nftables=NftablesSource(timeout, **common),
        )

    def check(self, docker_host: str, *flags: str) -> CliRun:
        """`docker-netpolicy-exporter check` against this host, the tools first on $PATH.

        The caller must have put `self.tools.path` first on PATH (monkeypatch), as the CLI finds
        tools on $PATH.
        """
        if not os.environ.get("PATH", "").startswith(self.tools.path + os.pathsep):
            raise AssertionError("put the fake tools first on PATH")
        stdout, stderr = io.StringIO(), io.StringIO()
        argv = [
            "check",
            f"--docker.host={docker_host}",
            f"--procfs={self.procfs}",
            f"--docker.config={self.daemon_json}",
            "--docker.timeout=0.5s",
            "--check.timeout=2s",
            *flags,
        ]
        code = main(argv, env={}, stdout=stdout, stderr=stderr)
        return CliRun(code, stdout.getvalue(), stderr.getvalue())
