"""The command line: flags, subcommands, exit codes and output formats, with a fake check."""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
import urllib.request

import pytest

from exporter import __version__
from exporter.cli import build_parser, config_from_args, exit_code, main, serve
from exporter.config import CheckConfig, ListenAddress, parse_duration
from exporter.logs import setup_logging
from exporter.report import (
    ISOLATION_BREACH,
    UNKNOWN_FLOW,
    Finding,
    Flow,
    FlowCount,
    NetworkStatus,
    Report,
    SourceStatus,
)

BREACH = Finding(
    ISOLATION_BREACH,
    "bridge",
    "web may reach db on tcp/5432",
    containers=("web", "db"),
    protocol="tcp",
    port=5432,
    rule="-A FORWARD -i docker0 -o docker0 -j ACCEPT",
    restore="iptables -D FORWARD -i docker0 -o docker0 -j ACCEPT",
)


def report(*findings: Finding, up: bool = True, evaluated: bool = True, **kw) -> Report:
    sources = (
        SourceStatus("docker", True, 0.01),
        SourceStatus("iptables", up, 0.02, None if up else "denied"),
    )
    return Report(
        started=1700000000.0,
        duration_seconds=0.5,
        sources=sources,
        up=up,
        evaluated=evaluated,
        docker_version="27.3.1" if evaluated else "",
        iptables_backend="nft" if evaluated else None,
        forward_policy="DROP" if evaluated else None,
        networks=(NetworkStatus("bridge", "docker0", False, 2),) if evaluated else (),
        findings=findings,
        **kw,
    )


DRIFT = report(
    BREACH,
    flows=(
        Flow("bridge", "web", "db", "tcp", 5432, "deny", "allow", reason="filter FORWARD #3"),
        Flow("bridge", "app", "cache", "tcp", 6379, "allow", "allow", alias="redis"),
    ),
    flow_counts=(FlowCount("bridge", "deny", "allow", 1), FlowCount("bridge", "allow", "allow", 1)),
)


class FakeRun:
    """Stands in for live_run_check(cfg): records calls, returns a fixed report."""

    def __init__(
        self, result: Report, files: dict[str, str] | None = None, delay: float = 0.0
    ) -> None:
        self.result = result
        self.files = files if files is not None else {"docker-version.json": "{}"}
        self.delay = delay
        # The source the check says it is reading while it sleeps out `delay`.
        self.hangs_in: str | None = None
        self.cfg = None
        self.calls: list[tuple[CheckConfig, object]] = []

    def factory(self, cfg):
        self.cfg = cfg
        return self.run

    def run(self, check_config, files, progress):
        self.calls.append((check_config, files))
        progress.source = self.hangs_in
        if self.delay:
            time.sleep(self.delay)
        return self.result, self.files


def run_cli(argv, fake: FakeRun | None = None, env=None):
    out, err = io.StringIO(), io.StringIO()
    code = main(
        argv,
        run_check_factory=fake.factory if fake else None,
        env=env or {},
        stdout=out,
        stderr=err,
    )
    return code, out.getvalue(), err.getvalue()


# -- parsing ---------------------------------------------------------------------------------


def parse(argv, env=None):
    return config_from_args(build_parser(env or {}).parse_args(argv)), build_parser(
        env or {}
    ).parse_args(argv)


def test_defaults():
    cfg, args = parse([])
    assert args.command is None
    assert cfg.docker_host == "unix:///var/run/docker.sock"
    assert (cfg.check_interval, cfg.check_timeout, cfg.check_debounce) == (15.0, 10.0, 0.2)
    assert cfg.docker_timeout == 5.0
    assert cfg.listen_address == ListenAddress("", 9863)
    assert cfg.telemetry_path == "/metrics"
    assert (cfg.expect_icc, cfg.expect_iptables, cfg.iptables_backend) == ("any", "any", "auto")
    assert (cfg.log_level, cfg.log_format) == ("info", "logfmt")
    # No --docker.config: the settings source reads the file dockerd itself reads.
    assert cfg.procfs == "/proc" and cfg.docker_config is None


def test_docker_host_from_environment():
    cfg, _ = parse([], env={"DOCKER_HOST": "tcp://10.0.0.1:2375"})
    assert cfg.docker_host == "tcp://10.0.0.1:2375"
    cfg, _ = parse(["--docker.host", "unix:///run/d.sock"], env={"DOCKER_HOST": "tcp://x:1"})
    assert cfg.docker_host == "unix:///run/d.sock"


def test_flags_before_and_after_the_subcommand():
    cfg, args = parse(
        ["--check.timeout", "3s", "check", "--format", "json", "--expect.icc", "disabled"]
    )
    assert args.command == "check" and args.format == "json"
    assert cfg.check_timeout == 3.0 and cfg.expect_icc == "disabled"
    cfg, _ = parse(["--expect.icc", "enabled", "serve", "--web.listen-address", "[::1]:9100"])
    assert cfg.expect_icc == "enabled"
    assert cfg.listen_address == ListenAddress("::1", 9100)
    assert cfg.check_interval == 15.0  # a subcommand does not reset a default


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("15s", 15.0),
        ("1m", 60.0),
        ("500ms", 0.5),
        ("2", 2.0),
        ("1.5", 1.5),
        ("1m30s", 90.0),
        ("2h", 7200.0),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--check.interval", "15x"], "argument --check.interval: invalid duration '15x'"),
        (["--check.timeout", "0s"], "argument --check.timeout: duration must be greater than zero"),
        (["--web.listen-address", "9863"], "argument --web.listen-address: invalid listen address"),
        (["--web.listen-address", "::1:9863"], "write IPv6 as [addr]:port"),
        (["--web.listen-address", ":70000"], "port out of range"),
        (["--web.telemetry-path", "metrics"], "invalid telemetry path"),
        (["--expect.icc", "maybe"], "argument --expect.icc: invalid choice: 'maybe'"),
        (["--log.level", "trace"], "argument --log.level: invalid choice"),
        (["check", "--format", "xml"], "argument --format: invalid choice"),
        (["--no-such-flag"], "unknown flag --no-such-flag"),
        (["chek"], "argument COMMAND: invalid choice: 'chek'"),
        (["snapshot"], "the following arguments are required: --out"),
        (["--check.int", "5s"], "unknown flag --check.int"),  # no abbreviations
        (["check", "--out", "x"], "unrecognized arguments: --out x"),
    ],
)
def test_bad_flags_exit_2_with_one_line(argv, fragment, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv, env={})
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("docker-netpolicy-exporter") and "error: " in lines[0]
    assert fragment in lines[0]


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"], env={})
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"docker-netpolicy-exporter {__version__}"


# -- check -----------------------------------------------------------------------------------


def test_exit_codes():
    assert exit_code(report()) == 0
    assert exit_code(DRIFT) == 1
    assert exit_code(report(evaluated=False, up=False)) == 2
    assert exit_code(report(up=False)) == 2  # incomplete, no drift found: cannot claim none
    assert exit_code(report(BREACH, up=False)) == 1  # drift found is drift
    unknown = report(
        Finding(UNKNOWN_FLOW, "bridge", "undecidable"),
        flow_counts=(FlowCount("bridge", "deny", "unknown", 2),),
    )
    assert exit_code(unknown) == 2  # an unknown verdict could hide drift


def test_check_no_drift_text():
    fake = FakeRun(report())
    code, out, err = run_cli(["check", "--expect.icc", "disabled", "--all-flows"], fake)
    assert code == 0, err
    assert out.splitlines()[-1] == "drift: no"
    config, files = fake.calls[0]
    assert files is None
    assert config == CheckConfig(expect_icc="disabled", all_flows=True, timeout=10.0)


def test_check_drift_text():
    code, out, _ = run_cli(["check"], FakeRun(DRIFT))
    assert code == 1
    assert "finding: isolation_breach (network bridge): web may reach db on tcp/5432" in out
    assert "  restore: iptables -D FORWARD -i docker0 -o docker0 -j ACCEPT" in out
    assert (
        "flow: bridge web -> db tcp/5432 ipv4: expected deny, actual allow: filter FORWARD #3"
    ) in out
    assert "app -> cache" not in out  # verdict as expected: not listed
    assert (
        "network bridge (docker0, icc off, 2 containers): 2 flows, 1 allowed as expected, "
        "0 denied as expected, 1 isolation breaches, 0 blocked, 0 unknown"
    ) in out
    assert out.splitlines()[-1] == "drift: yes"


def test_check_unknown_verdicts_are_said():
    unknown = report(
        Finding(UNKNOWN_FLOW, "bridge", "undecidable"),
        flow_counts=(FlowCount("bridge", "deny", "unknown", 2),),
    )
    code, out, _ = run_cli(["check"], FakeRun(unknown))
    assert code == 2
    assert "note: 2 flows have no verdict (unknown)" in out
    assert out.splitlines()[-1] == "drift: none found, but the check is incomplete"


def test_check_not_evaluated():
    failed = Report(
        started=1.0,
        duration_seconds=0.1,
        sources=(SourceStatus("docker", False, 0.1, "connection refused"),),
        errors=("docker and iptables are needed for a verdict",),
    )
    code, out, _ = run_cli(["check"], FakeRun(failed))
    assert code == 2
    assert "source down: docker: connection refused" in out
    assert out.splitlines()[-1] == "drift: unknown"


def test_check_json_shape():
    code, out, _ = run_cli(["check", "--format", "json"], FakeRun(DRIFT))
    assert code == 1
    data = json.loads(out)
    for key in (
        "drift",
        "up",
        "evaluated",
        "started",
        "duration_seconds",
        "docker_version",
        "iptables_backend",
        "forward_policy",
        "settings",
        "sources",
        "networks",
        "findings",
        "flows",
        "flow_counts",
        "errors",
    ):
        assert key in data, key
    assert data["drift"] is True and data["up"] is True and data["evaluated"] is True
    assert data["sources"][0] == {
        "name": "docker",
        "up": True,
        "duration_seconds": 0.01,
        "error": None,
    }
    assert set(data["findings"][0]) == {
        "kind",
        "network",
        "detail",
        "containers",
        "protocol",
        "port",
        "family",
        "rule",
        "restore",
    }
    assert data["findings"][0]["containers"] == ["web", "db"]
    assert set(data["flows"][0]) == {
        "network",
        "source",
        "target",
        "protocol",
        "port",
        "expected",
        "actual",
        "family",
        "alias",
        "reason",
    }
    assert data["flow_counts"][0] == {
        "network": "bridge",
        "expected": "deny",
        "actual": "allow",
        "count": 1,
        "family": "ipv4",
    }


def test_check_timeout_names_the_source_the_check_is_in():
    fake = FakeRun(report(), delay=3)
    fake.hangs_in = "iptables"
    code, out, _ = run_cli(["check", "--check.timeout", "200ms", "--format", "json"], fake)
    assert code == 2
    document = json.loads(out)
    assert [(s["name"], s["up"], s["error"]) for s in document["sources"]] == [
        ("iptables", False, "timed out after 0.2s")
    ]


def test_check_timeout_exits_2_quickly():
    began = time.monotonic()
    code, out, _ = run_cli(["check", "--check.timeout", "200ms"], FakeRun(report(), delay=3))
    assert time.monotonic() - began < 1.5
    assert code == 2
    assert "error: check timed out after 0.2s" in out


def test_check_offline_from_snapshot(tmp_path):
    (tmp_path / "docker-version.json").write_text('{"Version": "27.3.1"}')
    fake = FakeRun(report())
    code, _, _ = run_cli(["check", "--snapshot", str(tmp_path)], fake)
    assert code == 0
    assert fake.calls[0][1] == {"docker-version.json": '{"Version": "27.3.1"}'}


def test_check_unreadable_snapshot(tmp_path):
    missing = tmp_path / "missing"
    code, out, err = run_cli(["check", "--snapshot", str(missing)], FakeRun(report()))
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"docker-netpolicy-exporter: error: cannot read snapshot {missing}: "
        f"snapshot: {missing} is not a directory; give a snapshot directory"
    ]


def test_snapshot_writes_files(tmp_path):
    fake = FakeRun(report(up=False), files={"a": "1", "b": "2"})
    out_dir = tmp_path / "snap"
    code, out, err = run_cli(["snapshot", "--out", str(out_dir)], fake)
    assert code == 0, err
    assert out == f"wrote 2 files to {out_dir} (not read: iptables)\n"
    assert (out_dir / "a").read_text() == "1" and (out_dir / "b").read_text() == "2"
    meta = json.loads((out_dir / "meta.json").read_text())
    assert meta["exporter_version"] == __version__
    assert {"name": "iptables", "up": False, "error": "denied"} in meta["sources"]


def test_snapshot_failures_exit_2(tmp_path):
    (tmp_path / "file").write_text("")
    unwritable = tmp_path / "file" / "snap"  # its parent is a file: mkdir fails
    code, _, err = run_cli(["snapshot", "--out", str(unwritable)], FakeRun(report()))
    assert code == 2 and len(err.splitlines()) == 1 and "Not a directory" in err
    code, _, err = run_cli(["snapshot", "--out", str(tmp_path / "x")], FakeRun(report(), files={}))
    assert code == 2 and err.startswith("docker-netpolicy-exporter: error: snapshot failed")


def test_setup_failure_is_one_line():
    def factory(cfg):
        raise ValueError("invalid docker host\nURL")

    out, err = io.StringIO(), io.StringIO()
    code = main(["check"], run_check_factory=factory, env={}, stdout=out, stderr=err)
    assert code == 2
    assert err.getvalue() == (
        "docker-netpolicy-exporter: error: cannot set up the check: invalid docker host URL\n"
    )


# -- serve -----------------------------------------------------------------------------------


def test_serve_bind_failure_exits_2_with_one_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run_cli(["--web.listen-address", f"127.0.0.1:{port}"], FakeRun(report()))
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and "level=error" in lines[0]
    assert f"cannot listen on 127.0.0.1:{port}" in lines[0]
    assert "Traceback" not in err


def test_serve_runs_checks_and_stops():
    fake = FakeRun(DRIFT)
    cfg, _ = parse(
        [
            "--web.listen-address",
            "127.0.0.1:0",
            "--web.telemetry-path",
            "/m",
            "--check.interval",
            "1m",
        ]
    )
    stop = threading.Event()
    ready: list = []
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(
            serve(cfg, fake.run, stop=stop, watch_events=False, on_ready=ready.append)
        ),
        daemon=True,
    )
    thread.start()
    try:
        deadline = time.monotonic() + 3
        while not (ready and fake.calls) and time.monotonic() < deadline:
            time.sleep(0.01)
        port = ready[0].server_address[1]
        time.sleep(0.05)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/m", timeout=5) as response:
            body = response.read().decode()
        assert "docker_netpolicy_drift_detected 1.0" in body
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.read() == b"ok\n"
    finally:
        stop.set()
        thread.join(5)
    assert result == [0]


# -- logging ---------------------------------------------------------------------------------


def test_log_formats_are_one_line_per_event():
    for fmt in ("logfmt", "json"):
        stream = io.StringIO()
        setup_logging("info", fmt, stream=stream)
        log = logging.getLogger("exporter.test")
        log.debug("hidden")
        log.warning('source "down"', extra={"source": "docker", "err": "a\nb"})
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.error("check raised", exc_info=True)
        lines = stream.getvalue().splitlines()
        assert len(lines) == 2, lines
        if fmt == "logfmt":
            assert (
                'level=warn logger=exporter.test msg="source \\"down\\"" source=docker' in lines[0]
            )
            assert 'err="a\\nb"' in lines[0]
            assert "exc=" in lines[1] and "RuntimeError: boom" in lines[1]
        else:
            first = json.loads(lines[0])
            assert first["level"] == "warn" and first["source"] == "docker"
            assert first["err"] == "a\nb" and first["msg"] == 'source "down"'
            assert "RuntimeError: boom" in json.loads(lines[1])["exc"]
    setup_logging("info", "logfmt", stream=io.StringIO())
