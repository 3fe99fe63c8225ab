"""The newest Report and the process counters, swapped in whole under a lock.

The scheduler `publish()`es each finished check; every scrape takes one `snapshot()` and builds all
its series from it, so a scrape never mixes two checks.

Counting rules (the counters behind the `*_total` metrics):

- `checks_total`: every published report (failed and timed-out checks too).
- `check_errors_total[source]`: +1 for each source a report marks down. Every source name ever seen
  is kept (at 0 until it fails), so `rate()` works from the first failure.
- `drift_events_total[kind]`: +1 for each finding whose `identity` was not among the findings of
  the previous *evaluated* report. A report that was not evaluated says nothing about findings, so
  it neither clears nor restarts them: drift that persists across a failed check is not recounted.
  Drift that appears and disappears between two scrapes still counts; drift that disappears and
  comes back counts again. The first evaluated report after start counts every finding it holds
  (counters reset with the process; `rate()`/`increase()` handle that). Every kind in
  `FINDING_KINDS` starts at 0.
- `last_success`: `started` of the newest report with `up=True`; None until there is one.
- `last_errors[source]`: the newest error of each source and the `started` of the check that met
  it. Kept after the source recovers, so the landing page can say why it failed last time.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from exporter.report import FINDING_KINDS, Report


@dataclass(frozen=True)
class LastError:
    """The newest error a source gave, and when (`started` of that check, Unix seconds)."""

    message: str
    at: float


@dataclass(frozen=True)
class LatestView:
    """One consistent view for one scrape."""

    report: Report | None
    checks_total: int
    check_errors_total: Mapping[str, int]
    drift_events_total: Mapping[str, int]
    last_success: float | None
    last_errors: Mapping[str, LastError]


class Latest:
    """Thread-safe holder of the newest Report plus process counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._report: Report | None = None
        self._baseline: frozenset[tuple[object, ...]] = frozenset()
        self._checks_total = 0
        self._check_errors: dict[str, int] = {}
        self._drift_events: dict[str, int] = dict.fromkeys(FINDING_KINDS, 0)
        self._last_success: float | None = None
        self._last_errors: dict[str, LastError] = {}
        self._view = self._make_view()

    def publish(self, report: Report) -> None:
        with self._lock:
            self._checks_total += 1
            for source in report.sources:
                count = self._check_errors.get(source.name, 0)
                self._check_errors[source.name] = count if source.up else count + 1
                if not source.up:
                    message = source.error or "could not be read (no reason given)"
                    self._last_errors[source.name] = LastError(message, report.started)
            if report.evaluated:
                identities = set()
                for finding in report.findings:
                    identity = finding.identity
                    if identity in identities:
                        continue
                    identities.add(identity)
                    if identity not in self._baseline:
                        kind = finding.kind
                        self._drift_events[kind] = self._drift_events.get(kind, 0) + 1
                self._baseline = frozenset(identities)
            if report.up:
                self._last_success = report.started
            self._report = report
            self._view = self._make_view()

    def snapshot(self) -> LatestView:
        with self._lock:
            return self._view

    @property
    def report(self) -> Report | None:
        return self.snapshot().report

    def _make_view(self) -> LatestView:
        return LatestView(
            report=self._report,
            checks_total=self._checks_total,
            check_errors_total=MappingProxyType(dict(self._check_errors)),
            drift_events_total=MappingProxyType(dict(self._drift_events)),
            last_success=self._last_success,
            last_errors=MappingProxyType(dict(self._last_errors)),
        )
