"""Text output: one record per line whatever the names hold; JSON: the exact strings."""

from __future__ import annotations

import io
import json
import logging

import pytest

from exporter.cli import main
from exporter.logs import setup_logging
from exporter.render import escape_text, format_json, format_text, format_utc
from exporter.report import (
    ISOLATION_BREACH,
    Finding,
    Flow,
    FlowCount,
    NetworkStatus,
    Report,
    SourceStatus,
)

NEWLINE_NAME = "web\nflow: forged -> line"
ANSI_NAME = "\x1b[31mdb\x1b[0m"
NETWORK = "front\r\x7fend\x85\u2028x"
RULE = '-A FORWARD -m comment --comment "a\\"b\tc" -j ACCEPT'


def hostile_report() -> Report:
    return Report(
        started=1700000000.0,
        duration_seconds=0.5,
        sources=(
            SourceStatus("docker", True, 0.01),
            SourceStatus("ipset", False, 0.01, "ipset: exit 1:\nline two\x1b[2J"),
        ),
        up=False,
        evaluated=True,
        docker_version="27\n3",
        iptables_backend="nft",
        forward_policy="DROP",
        networks=(NetworkStatus(NETWORK, "br-\x00x", False, 2),),
        findings=(
            Finding(
                ISOLATION_BREACH,
                NETWORK,
                f"{NEWLINE_NAME} may reach {ANSI_NAME}",
                containers=(NEWLINE_NAME, ANSI_NAME),
                rule=RULE,
                restore="iptables -D FORWARD\n-j ACCEPT",
            ),
        ),
        flows=(
            Flow(NETWORK, NEWLINE_NAME, ANSI_NAME, "tcp", 5432, "deny", "allow", reason="r\x9bx"),
        ),
        flow_counts=(FlowCount(NETWORK, "deny", "allow", 1),),
        errors=("ipset: exit 1:\nline two\x1b[2J", "other\x0berror"),
    )


@pytest.mark.parametrize(
    "text, escaped",
    [
        ("plain name", "plain name"),
        ("a\nb", "a\\nb"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("\r\t\x00\x1f", "\\x0d\\x09\\x00\\x1f"),
        ("\x7f\x80\x85\x9f", "\\x7f\\x80\\x85\\x9f"),
        ("a\u2028b\u2029", "a\\u2028b\\u2029"),
        ("back\\slash é ü 日本", "back\\slash é ü 日本"),
    ],
)
def test_escape_text(text, escaped):
    assert escape_text(text) == escaped


def test_text_is_one_record_per_line():
    out = format_text(hostile_report())
    lines = out.splitlines()
    assert out == "".join(line + "\n" for line in lines)
    assert all(line.isprintable() for line in lines), [ln for ln in lines if not ln.isprintable()]
    kinds = [line.split(":", 1)[0].split(" ", 1)[0] for line in lines]
    assert kinds == [
        "check",
        "docker",
        "source",
        "error",
        "finding",
        "",  # "  containers: ..."
        "",  # "  rule: ..."
        "",  # "  restore: ..."
        "flow",
        "network",
        "note",
        "drift",
    ]
    assert "docker 27\\n3, iptables backend nft, FORWARD policy DROP" in lines
    assert "source down: ipset: ipset: exit 1: \\nline two\\x1b[2J" not in lines  # no re-spacing
    assert "source down: ipset: ipset: exit 1:\\nline two\\x1b[2J" in lines
    assert "error: other\\x0berror" in lines
    escaped_net = "front\\x0d\\x7fend\\x85\\u2028x"
    assert (
        f"finding: isolation_breach (network {escaped_net}): "
        "web\\nflow: forged -> line may reach \\x1b[31mdb\\x1b[0m"
    ) in lines
    assert "  containers: web\\nflow: forged -> line, \\x1b[31mdb\\x1b[0m" in lines
    assert '  rule: -A FORWARD -m comment --comment "a\\"b\\x09c" -j ACCEPT' in lines
    assert "  restore: iptables -D FORWARD\\n-j ACCEPT" in lines
    assert (
        f"flow: {escaped_net} web\\nflow: forged -> line -> \\x1b[31mdb\\x1b[0m tcp/5432 ipv4: "
        "expected deny, actual allow: r\\x9bx"
    ) in lines
    assert lines[9].startswith(f"network {escaped_net} (br-\\x00x, icc off, 2 containers): ")


def test_json_keeps_the_exact_strings():
    data = json.loads(format_json(hostile_report()))
    finding = data["findings"][0]
    assert finding["containers"] == [NEWLINE_NAME, ANSI_NAME]
    assert finding["network"] == NETWORK and finding["rule"] == RULE
    assert data["flows"][0]["source"] == NEWLINE_NAME
    assert data["sources"][1]["error"] == "ipset: exit 1:\nline two\x1b[2J"
    assert data["networks"][0]["bridge"] == "br-\x00x"


def test_utc_time_format():
    assert format_utc(1700000000.0) == "2023-11-14 22:13:20 UTC"


def test_cli_errors_are_escaped(tmp_path):
    missing = tmp_path / "snap\n\x1b[2Jshot"
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["check", "--snapshot", str(missing)],
        run_check_factory=lambda cfg: None,
        env={},
        stdout=out,
        stderr=err,
    )
    assert code == 2 and out.getvalue() == ""
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].isprintable()
    assert "snap \\x1b[2Jshot" in lines[0]  # whitespace collapsed, the escape made visible


def test_flag_errors_are_escaped(capsys):
    with pytest.raises(SystemExit) as info:
        main(["check", "--no\x1b[2J\x07"], env={})
    assert info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].isprintable()
    assert "unknown flag --no\\x1b[2J\\x07;" in lines[0]


def test_logfmt_escapes_controls():
    stream = io.StringIO()
    setup_logging("info", "logfmt", stream=stream)
    try:
        logging.getLogger("exporter.test").warning(
            "source down", extra={"err": "a\x1b[2J\nb\u2028c\\d"}
        )
    finally:
        setup_logging("info", "logfmt", stream=io.StringIO())
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].isprintable()
    assert 'err="a\\x1b[2J\\nb\\u2028c\\\\d"' in lines[0]
