"""The benchmark cannot rot: a tiny synthetic host is clean, and the bench reports every phase."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from bench.bench_host import BenchError, check_snapshot_clean, main
from bench.synth_host import HostShape, build_host, write_host
from exporter.cli import main as cli_main
from exporter.sources.snapshot import write_snapshot

SHAPE = HostShape(containers=12, networks=4, links=5, rules=120, seed=3)
PHASES = [
    "parse docker",
    "parse settings",
    "parse iptables",
    "parse ip6tables",
    "parse ebtables",
    "parse ipset",
    "parse nftables",
    "index",
    "expectations",
    "flows",
    "findings",
    "render",
]


def _check_json(snapshot: Path) -> tuple[int, dict]:
    out = io.StringIO()
    argv = ["check", "--snapshot", str(snapshot), "--format", "json"]
    code = cli_main(argv, env={}, stdout=out, stderr=io.StringIO())
    return code, json.loads(out.getvalue())


def test_synthetic_host_is_clean_with_its_links_allowed(tmp_path: Path) -> None:
    host = build_host(SHAPE)
    code, report = _check_json(write_host(host, tmp_path))
    assert code == 0
    assert report["drift"] is False
    # Every link's child port is allowed on docker0 (icc off), the rest of docker0 denied.
    links = [c for c in host.containers if c.link_child is not None]
    assert len(links) == SHAPE.links
    link_ports = sum(len(host.containers[c.link_child].ports) for c in links)
    bridge = next(n for n in report["networks"] if n["bridge"] == "docker0")
    assert bridge["expected_accept_rules"] == 2 * link_ports
    assert bridge["missing_accept_rules"] == bridge["unexpected_accept_rules"] == 0
    allowed = [
        c["count"]
        for c in report["flow_counts"]
        if c["network"] == "bridge" and c["expected"] == c["actual"] == "allow"
    ]
    assert allowed == [link_ports]
    assert host.rule_count > host.docker_rule_count + SHAPE.rules // 2


def test_generator_is_deterministic_and_seeded() -> None:
    assert build_host(SHAPE) == build_host(SHAPE)
    other = build_host(HostShape(12, 4, 5, 120, seed=4))
    assert other.iptables_save != build_host(SHAPE).iptables_save


def test_a_drifted_host_stops_the_bench(tmp_path: Path) -> None:
    host = build_host(SHAPE)
    first, second = host.containers[2], host.containers[4]  # both on docker0, not linked
    assert first.network.bridge == second.network.bridge == "docker0"
    drifted = host.iptables_save.replace(
        "-A DOCKER-USER -j RETURN",
        f"-A DOCKER-USER -s {first.address}/32 -d {second.address}/32 -j ACCEPT\n"
        "-A DOCKER-USER -j RETURN",
    )
    files = {**host.snapshot_files(), "iptables-save.txt": drifted}
    snapshot = tmp_path / "drifted"
    write_snapshot(snapshot, files, {"synthetic": {}})
    with pytest.raises(BenchError, match="not clean"):
        check_snapshot_clean(snapshot)


def test_bench_reports_every_phase_without_kernel() -> None:
    out = io.StringIO()
    argv = ["--no-kernel", "--sizes", "8x60", "--repeat", "1", "--json", "--budget", "120"]
    with redirect_stdout(out):
        assert main(argv) == 0
    document = json.loads(out.getvalue())
    assert document["skipped"] == []
    (result,) = document["results"]
    assert [p["name"] for p in result["phases"]] == PHASES
    assert all(p["seconds"] >= 0 and p["peak_mib"] is not None for p in result["phases"])
    assert result["after_read_seconds"] == pytest.approx(
        sum(p["seconds"] for p in result["phases"])
    )
    assert result["floor_seconds"] is None and result["ratio"] is None
    assert result["containers"] == 8 and result["flows"] > 0


def test_markdown_table_has_a_row_per_size() -> None:
    out = io.StringIO()
    argv = ["--no-kernel", "--sizes", "6x20", "--repeat", "1", "--markdown"]
    with redirect_stdout(out):
        assert main(argv) == 0
    rows = [line for line in out.getvalue().splitlines() if line.startswith("| 6 |")]
    assert len(rows) == 1
    assert "| flows |" in out.getvalue()
