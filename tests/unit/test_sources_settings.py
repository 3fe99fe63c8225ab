"""SettingsSource: dockerd flags, daemon.json, sysctls; fetch on fake /proc trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from exporter.model import Setting
from exporter.sources.base import SourceError
from exporter.sources.settings import (
    CMDLINE_FILE,
    DAEMON_JSON_FILE,
    NET_DEV_FILE,
    SYSCTL_FILE,
    SettingsSource,
    parse_dockerd_flags,
    parse_net_dev,
    parse_settings,
    parse_sysctls,
)

CAPTURED_SYSCTL = (
    Path(__file__).resolve().parents[1]
    / "fixtures"
    / "sources"
    / "docker20.10-nft-mixed"
    / "sysctl.txt"
)
ON = "bridge-nf-call-iptables=1\nbridge-nf-call-ip6tables=1\nnet.ipv4.ip_forward=1\n"


def argv(*flags: str) -> list[str]:
    return ["/usr/bin/dockerd", *flags]


# -- flags -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], {}),
        (["--icc=false"], {"icc": False}),
        (["--icc=0"], {"icc": False}),
        (["--icc=F"], {"icc": False}),
        (["--icc"], {"icc": True}),
        (["--icc=true"], {"icc": True}),
        (["-icc=false"], {"icc": False}),
        (["--iptables=false"], {"iptables": False}),
        (["--iptables", "false"], {"iptables": False}),
        (["--iptables", "--icc=false"], {"iptables": True, "icc": False}),
        (["--ip6tables"], {"ip6tables": True}),
        (["--icc=false", "--icc=true"], {"icc": True}),  # the last one wins
        (["--icc=maybe"], {}),  # dockerd would refuse it: not read
        (["--iccx=false", "--icc-foo"], {}),
        (["--data-root", "/d", "-H", "unix:///x.sock"], {}),
        (["--", "--icc=false"], {}),
    ],
)
def test_dockerd_flag_forms(flags, expected):
    assert parse_dockerd_flags(argv(*flags)) == expected


def cmdline(*flags: str) -> str:
    return "".join(a + "\n" for a in argv(*flags))


def test_cmdline_wins_over_daemon_json_which_wins_over_default():
    settings = parse_settings(
        {
            CMDLINE_FILE: cmdline("--icc=false"),
            DAEMON_JSON_FILE: '{"icc": true, "iptables": false}',
            SYSCTL_FILE: ON,
        }
    )
    assert settings.icc == Setting(False, "cmdline")
    assert settings.iptables == Setting(False, "daemon.json")
    assert settings.ip6tables == Setting(None, "default")


def test_defaults_when_dockerd_is_visible_and_nothing_is_set():
    settings = parse_settings({CMDLINE_FILE: cmdline(), SYSCTL_FILE: ON})
    assert settings.iptables == Setting(True, "default")
    assert settings.icc == Setting(True, "default")
    assert settings.ip6tables == Setting(None, "default")


def test_unknown_without_a_visible_dockerd():
    settings = parse_settings({SYSCTL_FILE: ON})
    assert settings.iptables == Setting(None, "unknown")
    assert settings.icc == Setting(None, "unknown")
    settings = parse_settings({SYSCTL_FILE: ON, DAEMON_JSON_FILE: '{"icc": false}'})
    assert settings.icc == Setting(False, "daemon.json")
    assert settings.iptables == Setting(None, "unknown")


def test_garbled_daemon_json_leaves_unset_flags_unknown_not_default():
    settings = parse_settings(
        {
            CMDLINE_FILE: cmdline("--icc=false"),
            DAEMON_JSON_FILE: "{oops",
            SYSCTL_FILE: ON,
        }
    )
    assert settings.icc == Setting(False, "cmdline")
    assert settings.iptables == Setting(None, "unknown")


def test_non_boolean_daemon_json_value_is_unknown_not_the_default():
    settings = parse_settings(
        {
            CMDLINE_FILE: cmdline(),
            DAEMON_JSON_FILE: '{"icc": "false", "iptables": null}',
            SYSCTL_FILE: ON,
        }
    )
    assert settings.icc == Setting(None, "unknown")
    assert settings.iptables == Setting(True, "default")  # null: as if absent


def test_cmdline_wins_over_a_non_boolean_daemon_json_value():
    settings = parse_settings(
        {
            CMDLINE_FILE: cmdline("--icc=false"),
            DAEMON_JSON_FILE: '{"icc": "yes"}',
            SYSCTL_FILE: ON,
        }
    )
    assert settings.icc == Setting(False, "cmdline")


# -- sysctls -----------------------------------------------------------------------------------


def test_captured_sysctls():
    settings = parse_settings({SYSCTL_FILE: CAPTURED_SYSCTL.read_text()})
    assert settings.bridge_nf_call_iptables == 1
    assert settings.bridge_nf_call_ip6tables == 1
    assert settings.ip_forward == 1


def test_absent_bridge_sysctls_read_as_zero_and_unreadable_as_unknown():
    values = parse_sysctls(
        "bridge-nf-call-iptables=absent\nbridge-nf-call-ip6tables=unreadable\n"
        "net.ipv4.ip_forward=absent\n"
    )
    assert values == {
        "bridge-nf-call-iptables": 0,
        "bridge-nf-call-ip6tables": None,
        "net.ipv4.ip_forward": None,
    }


@pytest.mark.parametrize("text", ["bridge-nf-call-iptables\n", "bridge-nf-call-iptables=yes\n"])
def test_garbled_sysctl_is_a_source_error(text):
    with pytest.raises(SourceError, match="sysctl.txt line 1"):
        parse_sysctls(text)


def test_missing_sysctl_file_is_a_source_error():
    with pytest.raises(SourceError, match="settings: snapshot has no sysctl.txt"):
        parse_settings({CMDLINE_FILE: cmdline()})


# -- fetch on a fake /proc ---------------------------------------------------------------------


def make_proc(
    tmp_path: Path,
    procs: dict[int, tuple[list[str], str]],
    own_ns: str = "net:[1]",
    sysctls: dict[str, str] | None = None,
) -> Path:
    proc = tmp_path / "proc"
    (proc / "self" / "ns").mkdir(parents=True)
    os.symlink(own_ns, proc / "self" / "ns" / "net")
    for pid, (args, ns) in procs.items():
        base = proc / str(pid)
        (base / "ns").mkdir(parents=True)
        (base / "root").mkdir()
        (base / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in args))
        os.symlink(ns, base / "ns" / "net")
    (proc / "1" / "ns").mkdir(parents=True, exist_ok=True)
    (proc / "1" / "cmdline").write_bytes(b"/sbin/init\0")
    (proc / "2").mkdir()
    (proc / "2" / "cmdline").write_bytes(b"")  # a kernel thread
    values = (
        sysctls
        if sysctls is not None
        else {
            "net/bridge/bridge-nf-call-iptables": "1\n",
            "net/bridge/bridge-nf-call-ip6tables": "0\n",
            "net/ipv4/ip_forward": "1\n",
        }
    )
    for rel, value in values.items():
        (proc / "sys" / rel).parent.mkdir(parents=True, exist_ok=True)
        (proc / "sys" / rel).write_text(value)
    return proc


def nothing(tmp_path: Path) -> str:
    return str(tmp_path / "no-daemon.json")


def test_fetch_finds_dockerd_and_reads_sysctls(tmp_path):
    proc = make_proc(tmp_path, {100: (argv("--icc=false", "--data-root", "/d"), "net:[1]")})
    source = SettingsSource(procfs=str(proc), daemon_config=nothing(tmp_path))
    files = source.fetch()
    assert files[CMDLINE_FILE] == "/usr/bin/dockerd\n--icc=false\n--data-root\n/d\n"
    assert DAEMON_JSON_FILE not in files
    assert files[SYSCTL_FILE] == (
        "bridge-nf-call-iptables=1\nbridge-nf-call-ip6tables=0\nnet.ipv4.ip_forward=1\n"
    )
    settings = source.parse(files)
    assert settings.icc == Setting(False, "cmdline")
    assert settings.iptables == Setting(True, "default")
    assert settings.bridge_nf_call_ip6tables == 0


def test_fetch_without_br_netfilter_writes_absent(tmp_path):
    proc = make_proc(tmp_path, {}, sysctls={"net/ipv4/ip_forward": "1\n"})
    source = SettingsSource(procfs=str(proc), daemon_config=nothing(tmp_path))
    files = source.fetch()
    assert CMDLINE_FILE not in files
    assert files[SYSCTL_FILE] == (
        "bridge-nf-call-iptables=absent\nbridge-nf-call-ip6tables=absent\nnet.ipv4.ip_forward=1\n"
    )
    settings = source.parse(files)
    assert settings.bridge_nf_call_iptables == 0
    assert settings.icc == Setting(None, "unknown")


def test_fetch_ignores_dockerd_of_another_network_namespace(tmp_path):
    proc = make_proc(
        tmp_path,
        {
            100: (argv("--icc=false"), "net:[2]"),
            200: (argv("--iptables=false"), "net:[1]"),
        },
    )
    files = SettingsSource(procfs=str(proc), daemon_config=nothing(tmp_path)).fetch()
    assert "--iptables=false" in files[CMDLINE_FILE]
    only_other = make_proc(tmp_path / "b", {100: (argv("--icc=false"), "net:[2]")})
    files = SettingsSource(procfs=str(only_other), daemon_config=nothing(tmp_path)).fetch()
    assert CMDLINE_FILE not in files


def test_fetch_picks_the_dockerd_serving_docker_host(tmp_path, monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    proc = make_proc(
        tmp_path,
        {
            100: (argv("-H", "unix:///run/other.sock", "--icc=true"), "net:[1]"),
            200: (argv("--host=unix:///var/run/docker.sock", "--icc=false"), "net:[1]"),
        },
    )
    source = SettingsSource(procfs=str(proc), daemon_config=nothing(tmp_path))
    assert "--icc=false" in source.fetch()[CMDLINE_FILE]  # the default socket
    source = SettingsSource(
        procfs=str(proc), daemon_config=nothing(tmp_path), docker_host="unix:///run/other.sock"
    )
    assert "--icc=true" in source.fetch()[CMDLINE_FILE]
    # fd:// (systemd socket activation) serves the default socket too, /var/run == /run
    proc2 = make_proc(
        tmp_path / "b",
        {
            100: (argv("-H", "fd://"), "net:[1]"),
            200: (argv("-H", "unix:///srv/d.sock"), "net:[1]"),
        },
    )
    source = SettingsSource(
        procfs=str(proc2), daemon_config=nothing(tmp_path), docker_host="unix:///run/docker.sock"
    )
    assert "fd://" in source.fetch()[CMDLINE_FILE]


def test_fetch_does_not_guess_between_several_dockerds(tmp_path, monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    proc = make_proc(
        tmp_path,
        {
            100: (argv("-H", "unix:///a.sock"), "net:[1]"),
            200: (argv("-H", "unix:///b.sock"), "net:[1]"),
        },
    )
    files = SettingsSource(procfs=str(proc), daemon_config=nothing(tmp_path)).fetch()
    assert CMDLINE_FILE not in files


def test_fetch_reads_daemon_json_through_dockerds_root(tmp_path):
    proc = make_proc(tmp_path, {100: (argv(), "net:[1]")})
    config = proc / "100" / "root" / "etc" / "docker" / "daemon.json"
    config.parent.mkdir(parents=True)
    config.write_text('{"icc": false}\n')
    files = SettingsSource(procfs=str(proc)).fetch()
    assert files[DAEMON_JSON_FILE] == '{"icc": false}\n'
    assert SettingsSource().parse(files).icc == Setting(False, "daemon.json")


def test_fetch_follows_config_file_flag(tmp_path):
    proc = make_proc(tmp_path, {100: (argv("--config-file", "/srv/dockerd.json"), "net:[1]")})
    config = proc / "100" / "root" / "srv" / "dockerd.json"
    config.parent.mkdir(parents=True)
    config.write_text('{"iptables": false}')
    files = SettingsSource(procfs=str(proc)).fetch()
    assert SettingsSource().parse(files).iptables == Setting(False, "daemon.json")


def test_explicit_daemon_config_is_read(tmp_path):
    proc = make_proc(tmp_path, {})
    config = tmp_path / "daemon.json"
    config.write_text('{"icc": false}')
    files = SettingsSource(procfs=str(proc), daemon_config=str(config)).fetch()
    assert files[DAEMON_JSON_FILE] == '{"icc": false}'


def test_unlistable_procfs_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="settings: cannot list"):
        SettingsSource(procfs=str(tmp_path / "nope")).fetch()


NET_DEV = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop "
    "fifo colls carrier compressed\n"
    "    lo:    1200      12    0    0    0     0          0         0     1200      12    0    0"
    "    0     0       0          0\n"
    "docker0:       0       0    0    0    0     0          0         0        0       0    0    0"
    "    0     0       0          0\n"
)


def test_interfaces_come_from_proc_net_dev(tmp_path):
    proc = make_proc(tmp_path, {100: (argv("--icc=false"), "net:[1]")})
    (proc / "net").mkdir(exist_ok=True)
    (proc / "net" / "dev").write_text(NET_DEV)
    source = SettingsSource(procfs=str(proc), daemon_config=nothing(tmp_path))
    files = source.fetch()
    assert files[NET_DEV_FILE] == NET_DEV
    assert source.parse(files).interfaces == {"lo", "docker0"}


def test_a_snapshot_without_net_dev_leaves_interfaces_unknown():
    assert parse_settings({SYSCTL_FILE: ON}).interfaces is None


@pytest.mark.parametrize("cut", [1, len(NET_DEV) // 2, len(NET_DEV) - 20])
def test_a_cut_short_net_dev_is_a_source_error(cut):
    with pytest.raises(SourceError, match=NET_DEV_FILE):
        parse_net_dev(NET_DEV[:cut])
