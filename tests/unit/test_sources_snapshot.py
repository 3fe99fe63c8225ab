"""Snapshots: files written and read back byte for byte; live and offline parse agree."""

from __future__ import annotations

import json

import pytest

from exporter import __version__
from exporter.config import ExporterConfig
from exporter.sources import build_sources
from exporter.sources.base import SourceError
from exporter.sources.docker import DockerSource
from exporter.sources.firewall import EbtablesSource, IpsetSource, IptablesSource, NftablesSource
from exporter.sources.snapshot import read_snapshot, write_snapshot
from tests.unit.test_sources_docker import FakeClient
from tests.unit.test_sources_firewall import (
    EBTABLES,
    FIREWALLD_CHAINS,
    FIREWALLD_TABLE,
    LEGACY_DUMP,
    NFT_DUMP,
    calls,
    fake_kernel,
    nft_tool,
    tool,
)


def test_round_trip_is_exact(tmp_path):
    files = {
        "iptables-save.txt": "*filter\r\n-A X -m comment --comment \udcff\n",  # a non-UTF-8 byte
        "ip6tables-save.txt": "",
        "sysctl.txt": "bridge-nf-call-iptables=absent\n",
    }
    directory = tmp_path / "snap" / "one"
    write_snapshot(directory, files, {"sources": {"docker": "error: down"}})
    assert (
        directory / "iptables-save.txt"
    ).read_bytes() == b"*filter\r\n-A X -m comment --comment \xff\n"
    read = read_snapshot(directory)
    meta = json.loads(read.pop("meta.json"))
    assert read == files
    assert meta["exporter_version"] == __version__
    assert meta["hostname"] and meta["time"].endswith("Z")
    assert meta["sources"] == {"docker": "error: down"}
    assert meta["files"] == sorted(files)


def test_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(SourceError, match="is not empty"):
        write_snapshot(tmp_path, {"a.txt": "b"}, {})
    assert (tmp_path / "old.txt").read_text() == "x"


def test_an_existing_empty_directory_is_fine(tmp_path):
    write_snapshot(tmp_path, {"a.txt": "b"}, {})
    assert read_snapshot(tmp_path)["a.txt"] == "b"


@pytest.mark.parametrize("name", ["../x", "a/b", "", "meta.json"])
def test_refuses_odd_file_names(tmp_path, name):
    with pytest.raises(SourceError):
        write_snapshot(tmp_path / "s", {name: "x"}, {})


def test_missing_directory_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="is not a directory"):
        read_snapshot(tmp_path / "nope")


def test_only_regular_files_are_read(tmp_path):
    write_snapshot(tmp_path, {"a.txt": "b"}, {})
    (tmp_path / "sub").mkdir()
    assert set(read_snapshot(tmp_path)) == {"a.txt", "meta.json"}


def test_offline_parse_equals_live_parse(tmp_path):
    source = DockerSource(None, 1.0, client=FakeClient())
    live = source.fetch()
    write_snapshot(tmp_path / "s", live, {})
    assert source.parse(read_snapshot(tmp_path / "s")) == source.parse(live)


def test_build_sources_order_and_settings():
    sources = build_sources(
        ExporterConfig(
            docker_host="unix:///run/d.sock",
            docker_timeout=3.0,
            iptables_backend="legacy",
            check_timeout=2.0,
            procfs="/p",
            docker_config="/etc/d.json",
        )
    )
    assert [s.name for s in sources] == [
        "docker",
        "settings",
        "iptables",
        "ip6tables",
        "ebtables",
        "ipset",
        "nftables",
    ]
    docker, settings, v4, v6 = sources.docker, sources.settings, sources.iptables, sources.ip6tables
    assert (docker.base_url, docker.timeout) == ("unix:///run/d.sock", 3.0)
    assert (settings.procfs, settings.daemon_config, settings.docker_host) == (
        "/p",
        "/etc/d.json",
        "unix:///run/d.sock",
    )
    assert (v4.family, v4.backend, v4.timeout) == ("ipv4", "legacy", 2.0)
    assert v6.family == "ipv6"


def test_firewall_files_round_trip_and_parse_alike(tmp_path):
    bin_dir, procfs = tmp_path / "bin", tmp_path / "proc"
    tool(bin_dir, "iptables-nft-save", NFT_DUMP)
    tool(bin_dir, "iptables-legacy-save", LEGACY_DUMP)
    (procfs / "net").mkdir(parents=True)
    (procfs / "net" / "ip_tables_names").write_text("filter\nnat\n")
    source = IptablesSource("ipv4", path=str(bin_dir), procfs=str(procfs))
    live = source.fetch()
    assert live["iptables-legacy-tables.txt"] == "filter\nnat\n"
    write_snapshot(tmp_path / "s", live, {})
    offline = read_snapshot(tmp_path / "s")
    assert source.parse(offline) == source.parse(live)
    # A snapshot whose legacy dump lost a table the kernel listed fails offline as it would live.
    offline["iptables-legacy-tables.txt"] += "raw\n"
    with pytest.raises(SourceError, match="printed no table raw"):
        source.parse(offline)


def test_kernel_decisions_are_recorded_and_replay_alike(tmp_path):
    """Each firewall source records what it decided about the kernel's modules; the snapshot
    replays to the same values. Older snapshots, without the records, hold dumps that already
    say the same (an absent module's dump is what the tool prints with no table: nothing)."""
    bin_dir = tmp_path / "bin"
    procfs = fake_kernel(tmp_path, loaded=("nf_tables",))
    tool(bin_dir, "iptables-nft-save", NFT_DUMP)
    tool(bin_dir, "iptables-legacy-save", LEGACY_DUMP)
    tool(bin_dir, "ebtables-nft-save", EBTABLES)
    tool(bin_dir, "ipset", "create never-read hash:ip\n")
    nft_tool(bin_dir, FIREWALLD_CHAINS, {"inet firewalld": FIREWALLD_TABLE})
    roots = {"path": str(bin_dir), "procfs": str(procfs), "sysfs": str(procfs.parent / "sys")}
    sources = [
        IptablesSource("ipv4", **roots),
        EbtablesSource(**roots),
        IpsetSource(**roots),
        NftablesSource(**roots),
    ]
    live = {name: text for source in sources for name, text in source.fetch().items()}
    assert "ipset save" not in calls(bin_dir) and "iptables-legacy-save" not in calls(bin_dir)
    assert live["ipset-kernel.txt"].startswith("ip_set absent: ")
    assert live["iptables-kernel.txt"].splitlines()[0] == (
        "ip_tables absent: no /proc/net/ip_tables_names"
    )
    write_snapshot(tmp_path / "s", live, {})
    offline = read_snapshot(tmp_path / "s")
    for source in sources:
        assert source.parse(offline) == source.parse(live)
