"""Alert rules: promtool accepts them, their unit tests pass, and each one is documented.

promtool comes from the `prometheus` package (scripts/install-deps.sh). A missing promtool fails
these tests: alerts that were never evaluated must not go green.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((REPO / "alerts").glob("*.yml"))
TEST_FILES = sorted((REPO / "alerts" / "tests").glob("*.test.yml"))
RUNBOOK = REPO / "docs" / "runbook.md"
RUNBOOK_URL = (
    "https://github.com/docker-netpolicy-exporter/docker-netpolicy-exporter/blob/main/"
    "docs/runbook.md#"
)
SEVERITIES = {"critical", "warning", "info"}

# Every finding kind (exporter/report.py FINDING_KINDS) and the alert that reports it.
KIND_ALERTS = {
    "missing_accept_rule": "DockerNetpolicyLinkRuleMissing",
    "unexpected_accept_rule": "DockerNetpolicyUnexpectedAcceptRule",
    "stale_accept_rule": "DockerNetpolicyStaleOrDuplicateRule",
    "duplicate_rule": "DockerNetpolicyStaleOrDuplicateRule",
    "icc_drop_missing": "DockerNetpolicyIccDropMissing",
    "isolation_breach": "DockerNetpolicyIsolationBreach",
    "blocked_link_flow": "DockerNetpolicyLinkFlowBlocked",
    "unknown_flow": "DockerNetpolicyUnknownVerdicts",
    "icc_posture": "DockerNetpolicyIccPosture",
    "iptables_posture": "DockerNetpolicyIptablesNotManaged",
    "bridge_nf_call_disabled": "DockerNetpolicyBridgeNfCallDisabled",
    "multiple_backends": "DockerNetpolicyBothIptablesBackends",
    "unparsed_rule": "DockerNetpolicyFirewallNotUnderstood",
    "unsupported_firewall": "DockerNetpolicyFirewallNotUnderstood",
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install the prometheus package (scripts/install-deps.sh)")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)


def alerts() -> list[dict]:
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules.extend(r for r in group["rules"] if "alert" in r)
    return rules


def github_anchor(heading: str) -> str:
    """The fragment GitHub generates for a Markdown heading."""
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


def runbook_anchors() -> set[str]:
    anchors = set()
    in_code = False
    for line in RUNBOOK.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"#{1,6}\s+(.*)", line)):
            anchors.add(github_anchor(m.group(1)))
    return anchors


def test_files_exist():
    assert RULE_FILES, "no alerts/*.yml"
    assert TEST_FILES, "no alerts/tests/*.test.yml"


def test_promtool_check_rules():
    result = run(promtool(), "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests():
    result = run(promtool(), "test", "rules", *map(str, TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout + result.stderr


def test_alert_names_are_unique():
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_alert_metadata(rule):
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    for key in ("summary", "description", "runbook_url"):
        assert annotations.get(key, "").strip(), f"{rule['alert']}: no {key}"
    assert "$labels.instance" in annotations["description"], "description must name the host"
    assert annotations["runbook_url"] == RUNBOOK_URL + rule["alert"].lower()
    # Prometheus 2.42 (Debian 12) rejects keep_firing_for.
    assert "keep_firing_for" not in rule


def test_runbook_has_a_section_per_alert():
    anchors = runbook_anchors()
    for rule in alerts():
        anchor = rule["annotations"]["runbook_url"].partition("#")[2]
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in docs/runbook.md"


def test_runbook_internal_links_resolve():
    anchors = runbook_anchors()
    for anchor in re.findall(r"\]\(#([^)]+)\)", RUNBOOK.read_text()):
        assert anchor in anchors, f"docs/runbook.md links to missing #{anchor}"


def test_every_alert_is_tested_firing_and_not_firing():
    firing: set[str] = set()
    silent: set[str] = set()
    for path in TEST_FILES:
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested not firing"


def test_every_finding_kind_has_an_alert():
    text = (REPO / "exporter" / "report.py").read_text()
    block = re.search(r"FINDING_KINDS = \((.*?)\)", text, re.S).group(1)
    constants = re.findall(r"\b([A-Z_]+)\b", block)
    kinds = {re.search(rf'^{c} = "(\w+)"', text, re.M).group(1) for c in constants}
    assert kinds == set(KIND_ALERTS), "a finding kind has no alert (or the map is stale)"
    names = {a["alert"] for a in alerts()}
    assert set(KIND_ALERTS.values()) <= names
