"""The PromQL queries of the Grafana dashboard, with Grafana's variables filled in.

Used by tests/unit/test_dashboard.py (each query must parse) and by end-to-end tests that run the
queries against a real Prometheus (each query must return data from a live exporter).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "grafana" / "dashboards" / "docker-netpolicy.json"

# Concrete values for the dashboard's variables and Grafana's built-in ones. "All" of a multi-value
# variable becomes its allValue (".*"), which is what Grafana sends.
DEFAULT_VARIABLES: Mapping[str, str] = {
    "instance": ".*",
    "network": ".*",
    "datasource": "prometheus",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def iter_panels(dashboard: Mapping) -> Iterator[dict]:
    """Every panel, including panels nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def substitute(expr: str, variables: Mapping[str, str] | None = None) -> str:
    """Replace $var, ${var}, ${var:fmt} and [[var]] with concrete values."""
    values = {**DEFAULT_VARIABLES, **(variables or {})}

    def replace(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in values:
            raise KeyError(f"no value for dashboard variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def dashboard_queries(
    path: str | Path = DASHBOARD, variables: Mapping[str, str] | None = None
) -> list[str]:
    """The concrete PromQL of every panel target, in panel order, without duplicates."""
    dashboard = json.loads(Path(path).read_text())
    queries: list[str] = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if not expr:
                continue
            query = substitute(expr, variables)
            if query not in queries:
                queries.append(query)
    return queries
