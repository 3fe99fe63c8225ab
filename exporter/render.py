"""A Report as text (one record per line, for people) or JSON (exact strings, for programs).

Text escapes control characters in everything it prints, so a container or network name holding a
newline or an ANSI sequence can neither split a record in two nor drive the terminal: `\\n` becomes
the two characters `\\n`, every other C0 and C1 control and DEL becomes `\\xNN`, and the Unicode
line and paragraph separators become `\\u2028` / `\\u2029`. Backslashes are left as they are (rules
print them, e.g. quoted comments), so the text form is not reversible: JSON is the exact one.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from exporter.report import Report

UTC_TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"

_CONTROLS = (*range(0x20), *range(0x7F, 0xA0))
_ESCAPES = {code: f"\\x{code:02x}" for code in _CONTROLS} | {
    ord("\n"): "\\n",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def escape_text(text: str) -> str:
    """`text` with no character a terminal or str.splitlines() would act on (see module doc)."""
    return text.translate(_ESCAPES)


def format_utc(timestamp: float) -> str:
    return time.strftime(UTC_TIME_FORMAT, time.gmtime(timestamp))


def report_to_json(report: Report) -> dict[str, Any]:
    data = {"drift": report.drift, **dataclasses.asdict(report)}
    if data["settings"] is not None:
        # Read only to tell dockerd's network namespace from another; one veth per container.
        del data["settings"]["interfaces"]
    return data


def format_json(report: Report) -> str:
    return json.dumps(report_to_json(report), indent=2, default=str) + "\n"


def _port(protocol: str, port: int | None) -> str:
    if port is None:
        return protocol or "any"
    return f"{protocol}/{port}" if protocol else str(port)


def format_text(report: Report) -> str:
    """One line per record; every line is escaped whole, so no field can break it."""
    return "".join(escape_text(line) + "\n" for line in _text_lines(report))


def _text_lines(report: Report) -> list[str]:
    lines = [f"check at {format_utc(report.started)}, took {report.duration_seconds:.2f}s"]
    if report.docker_version or report.iptables_backend or report.forward_policy:
        lines.append(
            f"docker {report.docker_version or '?'}, iptables backend "
            f"{report.iptables_backend or '?'}, FORWARD policy {report.forward_policy or '?'}"
        )
    lines += _error_lines(report)
    if not report.evaluated:
        lines.append("could not check: no verdict was reached")
        lines.append("drift: unknown")
        return lines
    lines += _finding_lines(report)
    lines += _flow_lines(report)
    lines += _network_lines(report)
    lines += _verdict_lines(report)
    return lines


def _error_lines(report: Report) -> list[str]:
    lines = [
        f"source down: {source.name}: {source.error or 'failed'}"
        for source in report.sources
        if not source.up
    ]
    source_errors = {source.error for source in report.sources if not source.up}
    lines += [f"error: {error}" for error in report.errors if error not in source_errors]
    return lines


def _finding_lines(report: Report) -> list[str]:
    lines = []
    for finding in report.findings:
        where = f"network {finding.network}" if finding.network else "host"
        lines.append(f"finding: {finding.kind} ({where}): {finding.detail}")
        if finding.containers:
            lines.append(f"  containers: {', '.join(finding.containers)}")
        if finding.rule:
            lines.append(f"  rule: {finding.rule}")
        if finding.restore:
            lines.append(f"  restore: {finding.restore}")
    return lines


def _flow_lines(report: Report) -> list[str]:
    lines = []
    for flow in report.flows:
        if flow.actual == flow.expected:
            continue
        alias = f" (link alias {flow.alias})" if flow.alias else ""
        reason = f": {flow.reason}" if flow.reason else ""
        lines.append(
            f"flow: {flow.network} {flow.source} -> {flow.target} "
            f"{_port(flow.protocol, flow.port)} {flow.family}{alias}: expected {flow.expected}, "
            f"actual {flow.actual}{reason}"
        )
    return lines


def _network_lines(report: Report) -> list[str]:
    statuses = {net.name: net for net in report.networks}
    lines = []
    for totals in report.network_totals():
        status = statuses.get(totals.network)
        head = (
            f"network {totals.network} ({status.bridge}, icc {'on' if status.icc else 'off'}, "
            f"{status.containers} containers)"
            if status
            else f"network {totals.network}"
        )
        lines.append(
            f"{head}: {totals.flows} flows, "
            f"{totals.allowed_as_expected} allowed as expected, "
            f"{totals.denied_as_expected} denied as expected, "
            f"{totals.breaches} isolation breaches, "
            f"{totals.blocked} blocked, {totals.unknown} unknown"
        )
    return lines


def _verdict_lines(report: Report) -> list[str]:
    lines = []
    unknown_total = report.unknown_flows
    if unknown_total:
        lines.append(
            f"note: {unknown_total} flows have no verdict (unknown); drift among them cannot be "
            "ruled out"
        )
    if not report.up:
        lines.append("note: not every source was read; the verdict is incomplete")
    if report.drift:
        lines.append("drift: yes")
    elif unknown_total or not report.up:
        lines.append("drift: none found, but the check is incomplete")
    else:
        lines.append("drift: no")
    return lines
