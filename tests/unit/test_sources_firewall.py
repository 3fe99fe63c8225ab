"""Firewall sources: backend choice with fake binaries on a private PATH (real subprocesses),
and parse of the files into rulesets."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from exporter.firewall.state import NftablesInfo
from exporter.sources.base import SourceError
from exporter.sources.firewall import (
    NFT_EMPTY,
    EbtablesSource,
    IpsetSource,
    IptablesSource,
    NftablesSource,
    chain_tables,
    native_tables,
    nft_table_file,
    read_libiptc,
    render_rule,
)
from exporter.sources.kernel import NF_TABLES, Kernel

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sources"
NFT_DUMP = (FIXTURES / "docker20.10-nft-mixed" / "iptables-save.txt").read_text()
LEGACY_DUMP = (FIXTURES / "docker20.10-legacy" / "iptables-legacy-save.txt").read_text()
NFT_WARNING_ONLY = (FIXTURES / "docker20.10-legacy" / "iptables-nft-save.txt").read_text()
LEGACY_NAT_ONLY = """*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -s 10.9.0.0/16 -j MASQUERADE
COMMIT
"""
EMPTY_FILTER = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"


def tool(
    bin_dir: Path,
    name: str,
    output: str = "",
    *,
    exit_code: int = 0,
    stderr: str = "",
    sleep: float = 0,
) -> None:
    """A fake tool: logs its argv to calls.log, prints `output` exactly (and `stderr`), exits
    with `exit_code`."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    data = bin_dir / f"{name}.out"
    data.write_text(output)
    errors = bin_dir / f"{name}.err"
    errors.write_text(stderr + "\n" if stderr else "")
    script = bin_dir / name
    script.write_text(
        "#!/bin/sh\n"
        + f"echo {name} \"$@\" >> '{bin_dir / 'calls.log'}'\n"
        + (f"/bin/sleep {sleep}\n" if sleep else "")
        + f"/bin/cat '{data}'\n"
        + f"/bin/cat '{errors}' >&2\n"
        + f"exit {exit_code}\n"
    )
    script.chmod(0o755)


@pytest.fixture
def bin_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    monkeypatch.setenv("PATH", str(path))
    return path


def iptables(bin_dir: Path, backend="auto", family="ipv4", timeout=5.0) -> IptablesSource:
    """A source on the fake tools, on a kernel that loads no modules and has ip_tables and
    ip6_tables (no legacy table in them yet) and nf_tables built in."""
    procfs = fake_kernel(bin_dir.parent, built_in=("nft_register_expr",))
    for names in ("ip_tables_names", "ip6_tables_names"):
        (procfs / "net" / names).touch()
    return IptablesSource(
        family,
        backend,
        timeout,
        path=str(bin_dir),
        procfs=str(procfs),
        sysfs=str(procfs.parent / "sys"),
    )


def fake_kernel(
    root: Path,
    *,
    loaded: tuple[str, ...] | None = None,
    built_in: tuple[str, ...] = (),
    module_symbols: tuple[str, ...] = (),
) -> Path:
    """A fake /proc (returned) and /sys under `root`. `loaded`: the modules /proc/modules lists
    (None: no /proc/modules, a kernel that loads no modules), each also in /sys/module.
    `built_in`: symbols kallsyms lists as built in; `module_symbols`: as a module's."""
    procfs, sysfs = root / "proc", root / "sys"
    (procfs / "net").mkdir(parents=True, exist_ok=True)
    (sysfs / "module").mkdir(parents=True, exist_ok=True)
    if loaded is not None:
        (procfs / "modules").write_text(
            "".join(f"{name} 16384 0 - Live 0x0000000000000000\n" for name in loaded)
        )
        for name in loaded:
            (sysfs / "module" / name).mkdir(exist_ok=True)
    symbols = [f"0000000000000000 T {symbol}\n" for symbol in built_in]
    symbols += [f"0000000000000000 T {symbol}\t[mod]\n" for symbol in module_symbols]
    (procfs / "kallsyms").write_text("0000000000000000 T _text\n" + "".join(symbols))
    return procfs


def calls(bin_dir: Path) -> list[str]:
    """Every fake tool run so far, "NAME ARGS"."""
    log = bin_dir / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


# What iptables() records about its kernel.
IPTABLES_KERNEL = (
    "ip_tables present: /proc/net/ip_tables_names\n"
    "nf_tables present: built in (nft_register_expr in kallsyms)\n"
)

# -- backend choice ----------------------------------------------------------------------------


def test_auto_takes_the_backend_holding_dockers_chains(bin_dir):
    tool(bin_dir, "iptables-nft-save", NFT_DUMP)
    tool(bin_dir, "iptables-legacy-save", "")
    files = iptables(bin_dir).fetch()
    assert files == {
        "iptables-save.txt": NFT_DUMP,
        "firewall-backend.txt": "nft\n",
        "iptables-legacy-save.txt": "",  # kept though empty: its tables are checked against nft's
        "iptables-legacy-tables.txt": "",
        "iptables-kernel.txt": IPTABLES_KERNEL,
    }


def test_auto_finds_legacy_and_skips_an_nft_dump_with_only_a_warning(bin_dir):
    tool(bin_dir, "iptables-nft-save", NFT_WARNING_ONLY)
    tool(bin_dir, "iptables-legacy-save", LEGACY_DUMP)
    files = iptables(bin_dir).fetch()
    assert files == {
        "iptables-save.txt": LEGACY_DUMP,
        "firewall-backend.txt": "legacy\n",
        "iptables-nft-save.txt": NFT_WARNING_ONLY,
        "iptables-legacy-tables.txt": "",
        "iptables-kernel.txt": IPTABLES_KERNEL,
    }


def test_auto_keeps_the_other_backend_when_it_holds_rules(bin_dir):
    tool(bin_dir, "iptables-nft-save", NFT_DUMP)
    tool(bin_dir, "iptables-legacy-save", LEGACY_NAT_ONLY)
    files = iptables(bin_dir).fetch()
    assert files["iptables-save.txt"] == NFT_DUMP
    assert files["iptables-legacy-save.txt"] == LEGACY_NAT_ONLY


def test_other_backend_with_a_drop_policy_is_kept(bin_dir):
    drop = EMPTY_FILTER.replace(":FORWARD ACCEPT", ":FORWARD DROP")
    tool(bin_dir, "iptables-nft-save", NFT_DUMP)
    tool(bin_dir, "iptables-legacy-save", drop)
    assert iptables(bin_dir).fetch()["iptables-legacy-save.txt"] == drop


def test_both_hold_docker_chains_the_iptables_alternative_decides(bin_dir):
    tool(bin_dir, "iptables-nft-save", NFT_DUMP)
    tool(bin_dir, "iptables-legacy-save", LEGACY_DUMP)
    tool(bin_dir, "xtables-legacy-multi")
    os.symlink(bin_dir / "xtables-legacy-multi", bin_dir / "iptables")
    files = iptables(bin_dir).fetch()
    assert files["firewall-backend.txt"] == "legacy\n"
    assert files["iptables-save.txt"] == LEGACY_DUMP
    assert files["iptables-nft-save.txt"] == NFT_DUMP


def test_forced_backend_is_primary_and_the_other_is_still_read(bin_dir):
    tool(bin_dir, "iptables-nft-save", EMPTY_FILTER)
    tool(bin_dir, "iptables-legacy-save", LEGACY_DUMP)
    files = iptables(bin_dir, "nft").fetch()
    assert files["iptables-save.txt"] == EMPTY_FILTER
    assert files["firewall-backend.txt"] == "nft\n"
    assert files["iptables-legacy-save.txt"] == LEGACY_DUMP


def test_forced_backend_missing_names_the_debian_package(bin_dir):
    tool(bin_dir, "iptables-nft-save", NFT_DUMP)
    with pytest.raises(
        SourceError, match="iptables-legacy-save not found.*Debian package iptables"
    ):
        iptables(bin_dir, "legacy").fetch()


def test_no_binary_at_all_names_the_debian_package(bin_dir):
    with pytest.raises(SourceError, match="ip6tables: .*Debian package iptables"):
        iptables(bin_dir, family="ipv6").fetch()


def test_only_backend_empty_is_kept_not_hidden(bin_dir):
    tool(bin_dir, "iptables-nft-save", "")
    source = iptables(bin_dir)
    files = source.fetch()
    assert files == {
        "iptables-save.txt": "",
        "firewall-backend.txt": "nft\n",
        "iptables-legacy-tables.txt": "",
        "iptables-kernel.txt": IPTABLES_KERNEL,
    }
    read = source.parse(files)
    assert read.primary is None
    assert len(read.rulesets) == 1 and read.rulesets[0].backend == "nft"
    assert read.rulesets[0].rule_count == 0


def test_plain_iptables_save_is_used_when_no_variant_exists(bin_dir):
    script = bin_dir / "ip6tables-save"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "ip6tables-save v1.6.1"; exit 0; fi\n'
        "printf '*filter\\n:INPUT ACCEPT [0:0]\\n:DOCKER-USER - [0:0]\\nCOMMIT\\n'\n"
    )
    script.chmod(0o755)
    files = iptables(bin_dir, family="ipv6").fetch()
    assert files["firewall-backend-ipv6.txt"] == "legacy\n"
    assert ":DOCKER-USER" in files["ip6tables-save.txt"]


def test_ipv6_file_names(bin_dir):
    tool(bin_dir, "ip6tables-nft-save", EMPTY_FILTER)
    tool(bin_dir, "ip6tables-legacy-save", LEGACY_NAT_ONLY)
    source = iptables(bin_dir, family="ipv6")
    assert source.name == "ip6tables"
    files = source.fetch()
    assert set(files) == {
        "ip6tables-save.txt",
        "ip6tables-legacy-save.txt",
        "firewall-backend-ipv6.txt",
        "ip6tables-legacy-tables.txt",
        "ip6tables-kernel.txt",
    }


def test_hung_tool_times_out(bin_dir):
    tool(bin_dir, "iptables-nft-save", NFT_DUMP, sleep=10)
    with pytest.raises(SourceError, match=r"iptables: iptables-nft-save timed out after 0.3s"):
        iptables(bin_dir, timeout=0.3).fetch()


def test_permission_denied_says_what_to_do(bin_dir):
    tool(
        bin_dir,
        "iptables-nft-save",
        exit_code=4,
        stderr="iptables-nft-save v1.8.9 (nf_tables): Could not fetch rule set generation id: "
        "Permission denied (you must be root)",
    )
    with pytest.raises(SourceError) as caught:
        iptables(bin_dir).fetch()
    message = str(caught.value)
    assert "exit 4" in message and "Permission denied" in message and "as root" in message
    assert "\n" not in message


# -- parse ---------------------------------------------------------------------------------------


def test_parse_primary_from_the_captured_nft_dump():
    read = IptablesSource("ipv4").parse(
        {"iptables-save.txt": NFT_DUMP, "firewall-backend.txt": "nft\n"}
    )
    assert read.primary == "nft"
    assert [r.backend for r in read.rulesets] == ["nft"]
    assert read.rulesets[0].chain("filter", "DOCKER") is not None
    assert any("iptables-legacy tables present" in w for w in read.rulesets[0].warnings)


def test_parse_both_backends():
    read = IptablesSource("ipv4").parse(
        {
            "iptables-save.txt": LEGACY_DUMP,
            "firewall-backend.txt": "legacy\n",
            "iptables-nft-save.txt": NFT_DUMP,
        }
    )
    assert read.primary == "legacy"
    assert [(r.family, r.backend) for r in read.rulesets] == [("ipv4", "legacy"), ("ipv4", "nft")]


def test_parse_primary_is_where_dockers_chains_are():
    read = IptablesSource("ipv4").parse(
        {
            "iptables-save.txt": EMPTY_FILTER,
            "firewall-backend.txt": "nft\n",
            "iptables-legacy-save.txt": LEGACY_DUMP,
        }
    )
    assert read.primary == "legacy"


def test_parse_without_the_dump_is_a_source_error():
    with pytest.raises(SourceError, match=r"^iptables: snapshot has no iptables-save.txt$"):
        IptablesSource("ipv4").parse({"iptables-legacy-save.txt": LEGACY_DUMP})


def test_parse_bad_backend_file_is_a_source_error():
    with pytest.raises(SourceError, match="firewall-backend.txt"):
        IptablesSource("ipv4").parse({"iptables-save.txt": "", "firewall-backend.txt": "both"})


def test_captured_empty_ip6tables_dump():
    text = (FIXTURES / "docker20.10-nft-mixed" / "ip6tables-save.txt").read_text()
    read = IptablesSource("ipv6").parse({"ip6tables-save.txt": text})
    assert read.primary is None
    assert read.rulesets[0].family == "ipv6"


# -- libiptc -------------------------------------------------------------------------------------


class FakeModule(SimpleNamespace):
    def _get_saved_buf(self, ip):
        return self.saved


def test_render_rule_in_iptables_save_form():
    rule = SimpleNamespace(
        src="172.17.0.3/255.255.255.255",
        dst="!172.17.0.0/255.255.0.0",
        in_interface="docker0",
        out_interface="!docker0",
        protocol="tcp",
        fragment=False,
        matches=[FakeModule(name="tcp", saved=b" --dport 80 ")],
        target=FakeModule(name="ACCEPT", saved=None, _goto=False),
        get_ip=lambda: None,
    )
    assert render_rule("DOCKER", rule, "ipv4") == (
        "-A DOCKER -s 172.17.0.3/32 ! -d 172.17.0.0/16 -i docker0 ! -o docker0 -p tcp "
        "-m tcp --dport 80 -j ACCEPT"
    )
    anywhere = SimpleNamespace(
        src="0.0.0.0/0.0.0.0",
        dst="0.0.0.0/0.0.0.0",
        in_interface=None,
        out_interface=None,
        protocol="ip",
        fragment=False,
        matches=[],
        target=FakeModule(name="DOCKER-USER", saved=None, _goto=True),
        get_ip=lambda: None,
    )
    assert render_rule("FORWARD", anywhere, "ipv4") == "-A FORWARD -g DOCKER-USER"


def test_libiptc_without_legacy_tables_reads_nothing(tmp_path):
    (tmp_path / "net").mkdir()
    assert read_libiptc("ipv4", str(tmp_path)) == ""  # names file absent: module not loaded
    (tmp_path / "net" / "ip6_tables_names").write_text("")
    assert read_libiptc("ipv6", str(tmp_path)) == ""


# -- ebtables, ipset, nftables -------------------------------------------------------------------

EBTABLES = "*filter\n:INPUT ACCEPT\n:FORWARD ACCEPT\n:OUTPUT ACCEPT\n-A FORWARD -p IPv4 -j DROP\n"


def test_ebtables_nft_and_legacy(bin_dir, tmp_path):
    tool(bin_dir, "ebtables-nft-save", EBTABLES)
    tool(bin_dir, "ebtables-legacy-save", EBTABLES)
    procfs = fake_kernel(tmp_path, loaded=("nf_tables",))
    source = EbtablesSource(
        1.0, path=str(bin_dir), procfs=str(procfs), sysfs=str(procfs.parent / "sys")
    )
    files = source.fetch()
    assert files == {
        "ebtables-save.txt": EBTABLES,
        "ebtables-kernel.txt": "nf_tables present: /sys/module/nf_tables\n"
        "ebtables absent: not in /sys/module, /proc/modules or /proc/kallsyms\n",
    }
    assert calls(bin_dir) == ["ebtables-nft-save"]  # legacy module not loaded: never run
    ruleset = source.parse(files)
    assert (ruleset.family, ruleset.backend, ruleset.rule_count) == ("bridge", "nft", 1)
    fake_kernel(tmp_path, loaded=("nf_tables", "ebtables"))
    files = source.fetch()
    assert files["ebtables-legacy-save.txt"] == EBTABLES
    with pytest.raises(SourceError, match="both ebtables-nft and ebtables-legacy hold rules"):
        source.parse(files)


def test_ebtables_without_nf_tables_reads_nothing_and_built_in_legacy_fails(bin_dir, tmp_path):
    tool(bin_dir, "ebtables-nft-save", EBTABLES)
    tool(bin_dir, "ebtables-legacy-save", "")
    procfs = fake_kernel(tmp_path, loaded=())
    source = EbtablesSource(
        1.0, path=str(bin_dir), procfs=str(procfs), sysfs=str(procfs.parent / "sys")
    )
    files = source.fetch()
    assert files["ebtables-save.txt"] == "" and "ebtables-legacy-save.txt" not in files
    assert calls(bin_dir) == []
    assert source.parse(files).empty
    # Built in: ebtables-legacy-save lists tables from /proc/modules and would print none.
    procfs = fake_kernel(tmp_path / "other", loaded=(), built_in=("ebt_register_table",))
    source = EbtablesSource(
        1.0, path=str(bin_dir), procfs=str(procfs), sysfs=str(procfs.parent / "sys")
    )
    with pytest.raises(SourceError, match="^ebtables: legacy ebtables is in the kernel but not"):
        source.fetch()
    assert calls(bin_dir) == []


def test_ebtables_the_backend_holding_rules_decides():
    source = EbtablesSource(1.0)
    only_legacy = source.parse({"ebtables-save.txt": "", "ebtables-legacy-save.txt": EBTABLES})
    assert (only_legacy.backend, only_legacy.rule_count) == ("legacy", 1)
    only_nft = source.parse({"ebtables-save.txt": EBTABLES, "ebtables-legacy-save.txt": ""})
    assert (only_nft.backend, only_nft.rule_count) == ("nft", 1)


def test_ebtables_missing_names_the_debian_package(bin_dir):
    with pytest.raises(SourceError, match="Debian package ebtables"):
        EbtablesSource(1.0, path=str(bin_dir)).fetch()
    with pytest.raises(SourceError, match="snapshot has no ebtables-save.txt"):
        EbtablesSource(1.0).parse({})


IPSET = "create allowed hash:net family inet hashsize 1024 maxelem 65536\nadd allowed 10.0.0.0/8\n"


def test_ipset(bin_dir, tmp_path):
    tool(bin_dir, "ipset", IPSET)
    procfs = fake_kernel(tmp_path, loaded=())
    source = IpsetSource(
        1.0, path=str(bin_dir), procfs=str(procfs), sysfs=str(procfs.parent / "sys")
    )
    # No ip_set module: ipset is not run at all (running it would load the module).
    assert source.fetch() == {
        "ipset-save.txt": "",
        "ipset-kernel.txt": "ip_set absent: not in /sys/module, /proc/modules or /proc/kallsyms\n",
    }
    assert calls(bin_dir) == []
    (procfs.parent / "sys" / "module" / "ip_set").mkdir()  # built in: it has parameters
    files = source.fetch()
    assert files["ipset-save.txt"] == IPSET
    assert calls(bin_dir) == ["ipset save"]
    sets = source.parse(files)
    assert sets["allowed"].members == ("10.0.0.0/8",)


def test_ipset_missing_without_module_is_empty_with_module_an_error(bin_dir, tmp_path):
    procfs = fake_kernel(tmp_path, loaded=())
    source = IpsetSource(
        1.0, path=str(bin_dir), procfs=str(procfs), sysfs=str(procfs.parent / "sys")
    )
    assert source.fetch()["ipset-save.txt"] == ""
    assert source.parse({"ipset-save.txt": ""}) == {}
    fake_kernel(tmp_path, loaded=("ip_set",))
    with pytest.raises(SourceError, match="Debian package ipset"):
        source.fetch()


def test_garbled_ipset_is_a_source_error():
    with pytest.raises(SourceError, match="ipset: ipset-save.txt: .*line 1"):
        IpsetSource(1.0).parse({"ipset-save.txt": "flush everything\n"})


FIREWALLD_CHAINS = (
    '{"nftables": [{"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1,'
    ' "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},'
    ' {"chain": {"family": "inet", "table": "firewalld", "name": "filter_FORWARD",'
    ' "handle": 2, "type": "filter", "hook": "forward", "prio": 10, "policy": "accept"}}]}'
)
FIREWALLD_TABLE = (
    '{"nftables": [{"table": {"family": "inet", "name": "firewalld", "handle": 1}},'
    ' {"chain": {"family": "inet", "table": "firewalld", "name": "filter_FORWARD",'
    ' "handle": 2, "type": "filter", "hook": "forward", "prio": 10, "policy": "accept"}}]}'
)


def nft_tool(bin_dir: Path, chains: str, tables: dict[str, str]) -> None:
    """A fake nft: `-j list chains` prints `chains`, `-j list table F N` prints tables["F N"]."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    lines = ["#!/bin/sh", f"echo nft \"$@\" >> '{bin_dir / 'calls.log'}'"]
    (bin_dir / "nft-chains.out").write_text(chains)
    lines.append(f"[ \"$3\" = chains ] && exec /bin/cat '{bin_dir / 'nft-chains.out'}'")
    for label, text in tables.items():
        family, name = label.split()
        out = bin_dir / f"nft-{family}-{name}.out"
        out.write_text(text)
        lines.append(f'[ "$4 $5" = "{family} {name}" ] && exec /bin/cat \'{out}\'')
    lines.append("echo 'Error: No such file or directory' >&2; exit 1")
    (bin_dir / "nft").write_text("\n".join(lines) + "\n")
    (bin_dir / "nft").chmod(0o755)


def nft_source(bin_dir: Path, procfs: Path) -> NftablesSource:
    return NftablesSource(
        1.0, path=str(bin_dir), procfs=str(procfs), sysfs=str(procfs.parent / "sys")
    )


def test_nftables_lists_chains_then_only_the_tables_no_save_tool_prints(bin_dir, tmp_path):
    nft_tool(bin_dir, FIREWALLD_CHAINS, {"inet firewalld": FIREWALLD_TABLE})
    source = nft_source(bin_dir, fake_kernel(tmp_path, built_in=("nft_register_expr",)))
    files = source.fetch()
    # ip filter is iptables-nft's: iptables-nft-save reads it, nft does not read it twice.
    assert calls(bin_dir) == ["nft -j list chains", "nft -j list table inet firewalld"]
    assert files == {
        "nftables-kernel.txt": "nf_tables present: built in (nft_register_expr in kallsyms)\n",
        "nft-chains.json": FIREWALLD_CHAINS,
        "nft-table-inet-firewalld.json": FIREWALLD_TABLE,
    }
    info = source.parse(files)
    assert info.tables == ("ip filter", "inet firewalld")
    assert info.foreign_chains == ("inet firewalld filter_FORWARD hook forward",)
    assert list(info.native.chains) == [("inet", "firewalld", "filter_FORWARD")]


def test_nftables_with_only_save_tool_tables_runs_one_cheap_listing(bin_dir, tmp_path):
    only_iptables = FIREWALLD_CHAINS.split(', {"chain": {"family": "inet"')[0] + "]}"
    nft_tool(bin_dir, only_iptables, {})
    files = nft_source(bin_dir, fake_kernel(tmp_path, loaded=("nf_tables",))).fetch()
    assert calls(bin_dir) == ["nft -j list chains"]
    info = NftablesSource().parse(files)
    assert info.tables == ("ip filter",) and not info.native.chains and not info.foreign_chains


def test_a_native_table_listing_missing_or_of_another_table_fails_the_parse():
    files = {"nft-chains.json": FIREWALLD_CHAINS}
    with pytest.raises(SourceError, match="snapshot has no nft-table-inet-firewalld.json"):
        NftablesSource().parse(files)
    files["nft-table-inet-firewalld.json"] = FIREWALLD_TABLE.replace("firewalld", "other")
    with pytest.raises(SourceError, match="does not hold table inet firewalld"):
        NftablesSource().parse(files)


def test_a_table_name_with_a_slash_gets_a_plain_file_name():
    assert nft_table_file("inet", "a/b") == "nft-table-inet-a%2Fb.json"


def test_nft_not_run_without_nf_tables_and_missing_with_it_an_error(bin_dir, tmp_path):
    procfs = fake_kernel(tmp_path, loaded=())
    tool(bin_dir, "nft", "{}")
    files = nft_source(bin_dir, procfs).fetch()
    assert files["nft-ruleset.json"] == NFT_EMPTY and calls(bin_dir) == []
    assert NftablesSource().parse(files) == NftablesInfo()
    (bin_dir / "nft").unlink()
    fake_kernel(tmp_path, loaded=("nf_tables",))
    with pytest.raises(SourceError, match="Debian package nftables"):
        nft_source(bin_dir, procfs).fetch()


def test_a_modular_kernel_without_kallsyms_is_refused_not_guessed(bin_dir, tmp_path):
    procfs = fake_kernel(tmp_path, loaded=())
    (procfs / "kallsyms").unlink()
    tool(bin_dir, "nft", "{}")
    with pytest.raises(SourceError, match="^nftables: nf_tables is neither loaded nor shown"):
        nft_source(bin_dir, procfs).fetch()
    assert calls(bin_dir) == []


def test_garbled_nft_json_is_a_source_error():
    with pytest.raises(SourceError, match="nftables: nft-ruleset.json"):
        NftablesSource(1.0).parse({"nft-ruleset.json": "table ip filter {"})


# -- stderr on exit 0 ----------------------------------------------------------------------------

TOOLS = Path(__file__).resolve().parents[1] / "fixtures" / "tools"
LEGACY_WARNING = (TOOLS / "iptables-nft-save.stderr.txt").read_text().strip()


def test_the_legacy_tables_warning_on_stderr_is_benign(bin_dir):
    tool(bin_dir, "iptables-nft-save", NFT_DUMP, stderr=LEGACY_WARNING)
    assert iptables(bin_dir, "nft").fetch()["iptables-save.txt"] == NFT_DUMP


def test_a_table_iptables_nft_save_skipped_fails_the_source(bin_dir):
    tool(
        bin_dir,
        "iptables-nft-save",
        NFT_DUMP,
        stderr="table `filter' is incompatible, use 'nft' tool.",
    )
    with pytest.raises(SourceError) as caught:
        iptables(bin_dir, "nft").fetch()
    assert str(caught.value).startswith(
        "iptables: iptables-nft-save exited 0 but printed on stderr: "
        "\"table `filter' is incompatible, use 'nft' tool.\""
    )


def test_benign_lines_are_per_tool(bin_dir, tmp_path):
    # The iptables warning means nothing coming from ebtables: it fails that source.
    tool(bin_dir, "ebtables-nft-save", EBTABLES, stderr=LEGACY_WARNING)
    with pytest.raises(SourceError, match="^ebtables: ebtables-nft-save exited 0 but printed"):
        EbtablesSource(1.0, path=str(bin_dir), procfs=str(bin_dir), sysfs=str(tmp_path)).fetch()
    tool(bin_dir, "nft", NFT_EMPTY, stderr="Error: some warning")
    procfs = fake_kernel(tmp_path, loaded=("nf_tables",))
    with pytest.raises(SourceError, match="^nftables: nft -j list chains exited 0 but"):
        nft_source(bin_dir, procfs).fetch()


# -- a dump that is not whole fails the source ---------------------------------------------------


@pytest.mark.parametrize(
    ("file", "backend"),
    [("iptables-save.txt", "nft\n"), ("iptables-legacy-save.txt", "nft\n")],
)
def test_a_dump_cut_short_fails_the_source_naming_file_table_and_line(file, backend):
    files = {"iptables-save.txt": NFT_DUMP, "firewall-backend.txt": backend}
    text = LEGACY_DUMP if file != "iptables-save.txt" else NFT_DUMP
    cut = text[: text.rindex("COMMIT")]
    files[file] = cut
    with pytest.raises(SourceError) as caught:
        IptablesSource("ipv4").parse(files)
    number = len(cut.splitlines()) + 1
    last_table = [line for line in cut.splitlines() if line.startswith("*")][-1][1:]
    assert str(caught.value) == (
        f"iptables: {file} line {number}: table {last_table} has no COMMIT (dump cut short); "
        "no verdict from it"
    )


def test_a_line_no_save_tool_prints_fails_the_source():
    text = NFT_DUMP.replace(":DOCKER-USER - [0:0]\n", ":DOCKER-USER - [0:0]\nflush ruleset\n")
    with pytest.raises(SourceError) as caught:
        IptablesSource("ipv4").parse({"iptables-save.txt": text})
    message = str(caught.value)
    assert message.startswith("iptables: iptables-save.txt line ")
    assert "table filter: not an iptables-save/ebtables-save line: 'flush ruleset'" in message
    assert message.endswith("; dump not whole, no verdict from it")


def test_a_rule_that_cannot_be_parsed_fails_the_source():
    text = NFT_DUMP.replace("-A DOCKER-USER -j RETURN", "-A DOCKER-USER -j RETURN !")
    with pytest.raises(SourceError, match=r"table filter chain DOCKER-USER: rule not understood"):
        IptablesSource("ipv4").parse({"iptables-save.txt": text})


def test_an_unknown_match_module_stays_a_rule():
    text = NFT_DUMP.replace(
        "-A DOCKER-USER -j RETURN", "-A DOCKER-USER -m bpf --bytecode '4,48 0 0 9' -j RETURN"
    )
    read = IptablesSource("ipv4").parse({"iptables-save.txt": text})
    rules = read.rulesets[0].chain("filter", "DOCKER-USER").rules
    assert rules[0].error is None and rules[0].matches[-1].module == "bpf"


def test_ip6tables_and_the_other_backend_are_held_to_the_same(tmp_path):
    v6 = (TOOLS / "ip6tables-nft-save.txt").read_text()
    with pytest.raises(SourceError, match=r"^ip6tables: ip6tables-save.txt line \d+: .*prefix"):
        IptablesSource("ipv6").parse({"ip6tables-save.txt": v6.replace("::3/128", "::3/129", 1)})
    files = {
        "iptables-save.txt": NFT_DUMP,
        "firewall-backend.txt": "nft\n",
        "iptables-legacy-save.txt": LEGACY_DUMP.replace("-A", "-X", 1),
    }
    with pytest.raises(SourceError, match=r"^iptables: iptables-legacy-save.txt line \d+: "):
        IptablesSource("ipv4").parse(files)


def test_both_ebtables_files_must_be_whole():
    source = EbtablesSource(1.0)
    with pytest.raises(
        SourceError, match=r"^ebtables: ebtables-save.txt line 6: table filter: not text: '\\udcff'"
    ):
        source.parse({"ebtables-save.txt": EBTABLES + "\udcff\n"})
    bad = EBTABLES.replace("-p IPv4", "-p IPv4 --ip-dst 10.0.0.0/99")
    with pytest.raises(SourceError, match=r"^ebtables: ebtables-legacy-save.txt line 5: "):
        source.parse({"ebtables-save.txt": "", "ebtables-legacy-save.txt": bad})


# -- the kernel's list of legacy tables ----------------------------------------------------------


def test_fetch_records_the_legacy_table_list(bin_dir):
    tool(bin_dir, "iptables-nft-save", NFT_DUMP)
    tool(bin_dir, "iptables-legacy-save", LEGACY_DUMP)
    source = iptables(bin_dir)
    names = Path(source.procfs) / "net" / "ip_tables_names"
    names.write_text("nat\nfilter\n")
    files = source.fetch()
    assert files["iptables-legacy-tables.txt"] == "nat\nfilter\n"
    assert [r.backend for r in source.parse(files).rulesets] == ["nft", "legacy"]


def test_a_legacy_table_the_kernel_lists_but_the_dump_lacks_fails_the_source():
    files = {
        "iptables-save.txt": NFT_DUMP,
        "firewall-backend.txt": "nft\n",
        "iptables-legacy-save.txt": LEGACY_DUMP,
        "iptables-legacy-tables.txt": "filter\nnat\nraw\n",
    }
    with pytest.raises(SourceError) as caught:
        IptablesSource("ipv4").parse(files)
    assert str(caught.value) == (
        "iptables: iptables-legacy-save.txt printed no table raw that "
        "iptables-legacy-tables.txt lists: dump cut short; no verdict from it"
    )
    del files["iptables-legacy-save.txt"]
    with pytest.raises(SourceError, match="no iptables-legacy-save output was read"):
        IptablesSource("ipv4").parse(files)
    files["iptables-legacy-tables.txt"] = ""
    assert len(IptablesSource("ipv4").parse(files).rulesets) == 1


def test_an_empty_other_dump_is_kept_for_its_tables_but_adds_no_ruleset():
    read = IptablesSource("ipv4").parse(
        {
            "iptables-save.txt": LEGACY_DUMP,
            "firewall-backend.txt": "legacy\n",
            "iptables-nft-save.txt": EMPTY_FILTER,
        }
    )
    assert [r.backend for r in read.rulesets] == ["legacy"]
    assert read.dump_tables == {"legacy": frozenset({"filter", "nat"}), "nft": {"filter"}}


def test_a_table_iptables_nft_save_cannot_show_fails_the_source():
    text = (TOOLS / "iptables-nft-save-incompatible.txt").read_text()
    with pytest.raises(SourceError) as caught:
        IptablesSource("ipv4").parse({"iptables-save.txt": text, "firewall-backend.txt": "nft\n"})
    assert str(caught.value) == (
        "iptables: iptables-save.txt: \"# Table `raw' contains incompatible base-chains, use "
        "'nft' tool to list them.\": that table's rules are not in the dump; no verdict from it"
    )


# -- no side effects: a tool runs only when its module is in the kernel ---------------------------


def test_iptables_on_a_modular_kernel_runs_only_the_backends_whose_module_is_loaded(
    bin_dir, tmp_path
):
    tool(bin_dir, "iptables-nft-save", NFT_DUMP)
    tool(bin_dir, "iptables-legacy-save", LEGACY_DUMP)
    procfs = fake_kernel(tmp_path, loaded=())
    sysfs = str(procfs.parent / "sys")
    source = IptablesSource("ipv4", path=str(bin_dir), procfs=str(procfs), sysfs=sysfs)
    files = source.fetch()
    assert calls(bin_dir) == []  # neither nf_tables nor ip_tables: both backends are empty
    assert files["iptables-save.txt"] == "" and files["iptables-legacy-save.txt"] == ""
    assert files["iptables-kernel.txt"] == (
        "ip_tables absent: no /proc/net/ip_tables_names\n"
        "nf_tables absent: not in /sys/module, /proc/modules or /proc/kallsyms\n"
    )
    assert source.parse(files).primary is None
    fake_kernel(tmp_path, loaded=("nf_tables",))
    assert source.fetch()["iptables-save.txt"] == NFT_DUMP
    assert calls(bin_dir) == ["iptables-nft-save"]


def test_a_module_symbol_of_a_loaded_module_is_not_taken_for_built_in(tmp_path):
    procfs = fake_kernel(tmp_path, loaded=(), module_symbols=("nft_register_expr",))
    kernel = Kernel("nftables", str(procfs), str(procfs.parent / "sys"))
    assert kernel.decide(NF_TABLES).state == "absent"


def split_as_nft_lists(ruleset: str) -> dict[str, str]:
    """What `nft -j list chains` and each `nft -j list table` print, cut from a real
    `nft -j list ruleset` capture (same objects, same order)."""
    objects = json.loads(ruleset)["nftables"]
    meta = [o for o in objects if "metainfo" in o]
    files = {
        "nft-chains.json": json.dumps({"nftables": meta + [o for o in objects if "chain" in o]})
    }
    for family, table in native_tables(chain_tables(files["nft-chains.json"])):
        mine = [
            o
            for o in objects
            if (body := next(iter(o.values()))).get("family") == family
            and (body.get("table") == table or ("table" in o and body.get("name") == table))
        ]
        files[nft_table_file(family, table)] = json.dumps({"nftables": meta + mine})
    return files


@pytest.mark.parametrize(
    "capture",
    sorted(FIXTURES.glob("*/nft-ruleset.json")) + sorted(FIXTURES.parent.glob("nft/*.json")),
    ids=lambda path: f"{path.parent.name}/{path.name}",
)
def test_reading_each_table_once_gives_what_the_whole_ruleset_gives(capture):
    whole_ruleset = NftablesSource().parse({"nft-ruleset.json": capture.read_text()})
    per_table = NftablesSource().parse(split_as_nft_lists(capture.read_text()))
    with_chains = {f"{family} {name}" for family, name in chain_tables(
        split_as_nft_lists(capture.read_text())["nft-chains.json"])}  # fmt: skip
    # Identical but for tables without a chain, which no packet meets.
    assert per_table == dataclasses.replace(
        whole_ruleset, tables=tuple(t for t in whole_ruleset.tables if t in with_chains)
    )
