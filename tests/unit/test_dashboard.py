"""Grafana dashboard and provisioning: well-formed, variable-driven, and every query is PromQL.

The PromQL check feeds each panel query (variables filled in) to `promtool check rules` as a
recording rule. A missing promtool fails the test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.dashboards import DASHBOARD, dashboard_queries, iter_panels

REPO = Path(__file__).resolve().parents[2]
PROVISIONING = REPO / "grafana" / "provisioning"
DS = {"type": "prometheus", "uid": "${datasource}"}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict) -> list[dict]:
    return [p for p in iter_panels(dashboard) if p["type"] != "row"]


def test_dashboard_metadata(dashboard):
    assert dashboard["uid"] == "docker-netpolicy"
    assert dashboard["title"]
    assert dashboard["schemaVersion"] >= 36
    assert "id" not in dashboard or dashboard["id"] is None, "an exported id breaks provisioning"


def test_template_variables(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name, query in (
        ("instance", "label_values(docker_netpolicy_up, instance)"),
        ("network", 'label_values(docker_netpolicy_icc_enabled{instance=~"$instance"}, network)'),
    ):
        var = variables[name]
        assert var["type"] == "query"
        assert var["datasource"] == DS
        assert var["query"]["query"] == query
        assert var["includeAll"] and var["allValue"] == ".*"


def test_every_panel_uses_the_datasource_variable(dashboard):
    for panel in panels(dashboard):
        assert panel["datasource"] == DS, panel["title"]
        assert panel["targets"], f"{panel['title']}: no targets"
        for target in panel["targets"]:
            assert target["datasource"] == DS, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_panel_ids_unique_and_layout(dashboard):
    ids = [p["id"] for p in iter_panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in iter_panels(dashboard):
        pos = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(pos), panel["title"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]


def test_ref_ids_unique_per_panel(dashboard):
    for panel in panels(dashboard):
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_required_panels_present(dashboard):
    exprs = " ".join(t["expr"] for p in panels(dashboard) for t in p["targets"])
    for metric in (
        "docker_netpolicy_drift_detected",
        "docker_netpolicy_isolation_breaches",
        "docker_netpolicy_blocked_link_flows",
        "docker_netpolicy_missing_accept_rules",
        "docker_netpolicy_unexpected_accept_rules",
        "docker_netpolicy_link_flow_allowed",
        "docker_netpolicy_icc_enabled",
        "docker_netpolicy_findings",
        "docker_netpolicy_up",
        "docker_netpolicy_source_up",
        "docker_netpolicy_check_duration_seconds",
        "docker_netpolicy_last_success_timestamp_seconds",
        "docker_netpolicy_check_errors_total",
    ):
        assert metric in exprs, metric
    flows = [
        p
        for p in panels(dashboard)
        if any("docker_netpolicy_link_flow_allowed" in t["expr"] for t in p["targets"])
    ]
    assert flows and flows[0]["type"] == "table"
    assert all(t.get("instant") and t.get("format") == "table" for t in flows[0]["targets"])


def test_dashboard_queries_are_concrete():
    queries = dashboard_queries(DASHBOARD)
    assert len(queries) >= 15
    assert not [q for q in queries if "$" in q or "[[" in q]


def test_dashboard_queries_parse_as_promql(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install the prometheus package (scripts/install-deps.sh)")
    rules = [
        {"record": f"dashboard:query_{i}", "expr": q}
        for i, q in enumerate(dashboard_queries(DASHBOARD))
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_provisioning_files():
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    assert datasources["apiVersion"] == 1
    assert [d["type"] for d in datasources["datasources"]] == ["prometheus"]
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "docker-netpolicy.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    # deploy/docker-compose.yml mounts grafana/dashboards there.
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
