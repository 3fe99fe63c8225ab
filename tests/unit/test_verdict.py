"""One Verdict type from the evaluator to the JSON output, which stays plain strings."""

from __future__ import annotations

import json

from exporter.firewall import evaluate
from exporter.render import format_json
from exporter.report import Flow, FlowCount, Report
from exporter.verdict import Verdict
from tests.unit.test_core import ALL, D28, STATE, decide


def test_the_evaluator_s_name_is_the_same_type():
    assert evaluate.Verdict is Verdict


def test_flows_and_counts_carry_verdicts_from_the_evaluator():
    report = decide(STATE, D28, config=ALL)
    assert report.flows and report.flow_counts
    for item in (*report.flows, *report.flow_counts):
        assert type(item.expected) is Verdict and type(item.actual) is Verdict


def test_json_shows_verdicts_as_their_strings():
    flow = Flow("bridge", "a", "b", "tcp", 80, Verdict.DENY, Verdict.UNKNOWN)
    count = FlowCount("bridge", Verdict.ALLOW, Verdict.ALLOW, 2)
    document = json.loads(
        format_json(Report(0.0, 0.0, evaluated=True, flows=(flow,), flow_counts=(count,)))
    )
    assert (document["flows"][0]["expected"], document["flows"][0]["actual"]) == (
        "deny",
        "unknown",
    )
    assert document["flow_counts"][0]["actual"] == "allow"
