"""The flag table: duration ranges, defaults from ExporterConfig, global flags on either side."""

from __future__ import annotations

import pytest

from exporter.cli import GLOBAL_FLAGS, build_parser, config_from_args, main
from exporter.config import ExporterConfig, ListenAddress, format_duration, parse_duration

DURATION_FLAGS = (
    "--docker.timeout",
    "--check.interval",
    "--check.timeout",
    "--check.debounce",
    "--web.read-header-timeout",
    "--web.write-timeout",
)
ABSURD = ("1e10", "100000000h", "nan", "inf", "-1", "0", "", "1e-9")
# Where a global flag can stand: before any subcommand, or after each one.
PLACES = {
    "no command": ([], []),
    "before serve": ([], ["serve"]),
    "after serve": (["serve"], []),
    "before check": ([], ["check"]),
    "after check": (["check"], []),
    "after snapshot": (["snapshot", "--out", "snap"], []),
}


def refuse_to_run(cfg):
    raise AssertionError(f"the flags were accepted: {cfg}")


def config(argv: list[str]) -> ExporterConfig:
    return config_from_args(build_parser({}).parse_args(argv))


def test_the_table_holds_every_duration_flag():
    assert tuple(flag.name for flag in GLOBAL_FLAGS if flag.duration) == DURATION_FLAGS


# A debounce of 0 is valid (check at once): the one pair that is not absurd.
ABSURD_PAIRS = [
    (name, value)
    for name in DURATION_FLAGS
    for value in ABSURD
    if (name, value) != ("--check.debounce", "0")
]


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("name, value", ABSURD_PAIRS)
def test_absurd_durations_exit_2_with_one_line(name, value, place, capsys):
    head, tail = PLACES[place]
    for given in ([name, value], [f"{name}={value}"]):
        with pytest.raises(SystemExit) as info:
            main(head + given + tail, run_check_factory=refuse_to_run, env={})
        assert info.value.code == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        lines = captured.err.splitlines()
        assert len(lines) == 1, captured.err
        assert lines[0].startswith(f"docker-netpolicy-exporter: error: argument {name}: ")


@pytest.mark.parametrize(
    "argv, field, seconds",
    [
        (["--check.interval", "1s"], "check_interval", 1.0),
        (["--check.interval", "24h"], "check_interval", 86400.0),
        (["--check.timeout", "100ms"], "check_timeout", 0.1),
        (["--check.timeout", "1h"], "check_timeout", 3600.0),
        (["--check.debounce", "0"], "check_debounce", 0.0),
        (["--check.debounce", "1h"], "check_debounce", 3600.0),
        (["--docker.timeout", "100ms"], "docker_timeout", 0.1),
        (["--docker.timeout", "10m"], "docker_timeout", 600.0),
    ],
)
def test_range_ends_are_accepted(argv, field, seconds):
    assert getattr(config(argv), field) == seconds


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--check.interval", "999ms"], "duration '999ms' is out of range 1s..24h"),
        (["--check.interval", "24h1s"], "duration '24h1s' is out of range 1s..24h"),
        (["--check.timeout", "99ms"], "out of range 100ms..1h"),
        (["--check.debounce", "1h0m1s"], "out of range 0s..1h"),
        (["--docker.timeout", "601"], "out of range 100ms..10m"),
        (["--check.debounce", "0.5ms"], "below the resolution of 1ms"),
    ],
)
def test_just_beyond_the_range_is_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv, run_check_factory=refuse_to_run, env={})
    assert message in capsys.readouterr().err


def test_help_documents_the_ranges(capsys):
    with pytest.raises(SystemExit):
        main(["--help"], env={})
    text = " ".join(capsys.readouterr().out.split())
    assert "time between periodic checks, 1s..24h (default: 15s)" in text
    assert "deadline of one check, 100ms..1h (default: 10s)" in text
    assert "delay of a check triggered by Docker events, 0s..1h (default: 200ms)" in text
    assert "timeout of one Docker API call, 100ms..10m (default: 5s)" in text


@pytest.mark.parametrize("seconds", [0.0, 0.1, 0.25, 1.0, 2.0, 15.0, 90.0, 600.0, 3600.0, 5430.5])
def test_format_duration_reads_back(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


def test_defaults_are_exporter_configs():
    assert config([]) == ExporterConfig()


# A value other than the default for every global flag, and what it becomes.
SAMPLES = {
    "--docker.host": ("tcp://127.0.0.1:2375", "tcp://127.0.0.1:2375"),
    "--docker.timeout": ("7s", 7.0),
    "--docker.config": ("daemon.json", "daemon.json"),
    "--iptables.backend": ("legacy", "legacy"),
    "--procfs": ("proc", "proc"),
    "--check.interval": ("1m", 60.0),
    "--check.timeout": ("3s", 3.0),
    "--check.debounce": ("0", 0.0),
    "--expect.icc": ("disabled", "disabled"),
    "--expect.iptables": ("enabled", "enabled"),
    "--web.listen-address": ("127.0.0.1:9100", ListenAddress("127.0.0.1", 9100)),
    "--web.telemetry-path": ("/m", "/m"),
    "--web.max-connections": ("64", 64),
    "--web.config.file": ("web.yml", "web.yml"),
    "--web.read-header-timeout": ("2s", 2.0),
    "--web.write-timeout": ("3s", 3.0),
    "--log.level": ("debug", "debug"),
    "--log.format": ("json", "json"),
}


def test_every_global_flag_has_a_sample():
    assert set(SAMPLES) == {flag.name for flag in GLOBAL_FLAGS}


@pytest.mark.parametrize("flag", GLOBAL_FLAGS, ids=lambda flag: flag.name)
@pytest.mark.parametrize("command", ["serve", "check"])
def test_global_flags_work_before_and_after_the_subcommand(flag, command):
    text, value = SAMPLES[flag.name]
    assert getattr(ExporterConfig(), flag.dest) != value
    assert getattr(config([flag.name, text, command]), flag.dest) == value
    assert getattr(config([command, flag.name, text]), flag.dest) == value


def test_after_the_subcommand_wins_over_before():
    cfg = config(["--check.timeout", "3s", "check", "--check.timeout", "4s"])
    assert cfg.check_timeout == 4.0


@pytest.mark.parametrize(
    "argv",
    [["check", "--nope"], ["serve", "--nope=1"], ["--nope", "check"], ["snapshot", "--nope"]],
)
def test_unknown_flags_anywhere_are_named(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv, run_check_factory=refuse_to_run, env={})
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["docker-netpolicy-exporter: error: unknown flag --nope; see --help"]


@pytest.mark.parametrize("value", ["0", "-1", "65536", "1e3", "many", ""])
def test_bad_max_connections_exit_2_with_one_line(value, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--web.max-connections", value], run_check_factory=refuse_to_run, env={})
    assert info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "--web.max-connections" in lines[0]
