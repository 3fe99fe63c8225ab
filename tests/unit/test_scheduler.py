"""The scheduler: deadlines, no overlapping checks, debounced early checks, event stream retries."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from exporter.check import CheckProgress, WarmCheck, run_check
from exporter.config import CheckConfig, ExporterConfig
from exporter.latest import Latest
from exporter.report import Report, SourceStatus
from exporter.scheduler import (
    HOLD_LIMIT,
    RELEASE_GRACE,
    STEP_HOLD_LIMIT,
    ChangeLog,
    CheckPlan,
    CheckScheduler,
    DockerEventWatcher,
    EventFilter,
    event_reason,
    run_with_deadline,
)
from exporter.sources import SOURCE_NAMES, Sources, build_sources
from exporter.sources.base import ParseMemo, SourceError
from exporter.sources.snapshot import read_snapshot


def ok_report() -> Report:
    return Report(
        started=time.time(),
        duration_seconds=0.0,
        up=True,
        evaluated=True,
        sources=(SourceStatus("docker", True, 0.0),),
    )


def wait_for(condition, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture
def release():
    """Set at teardown so blocked fake checks end with the test."""
    event = threading.Event()
    yield event
    event.set()


class Counter:
    def __init__(self, duration: float = 0.0) -> None:
        self.duration = duration
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()

    def __call__(self, progress: CheckProgress) -> Report:
        with self.lock:
            self.calls += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.duration)
            return ok_report()
        finally:
            with self.lock:
                self.active -= 1


def test_deadline_returns_failed_report_and_abandons_thread(release):
    began = time.monotonic()
    report, abandoned = run_with_deadline(lambda progress: release.wait(30) and ok_report(), 0.3)
    assert time.monotonic() - began < 1.3
    assert abandoned is not None and abandoned.is_alive() and abandoned.daemon
    assert not report.up and not report.evaluated
    assert report.errors == ("check timed out after 0.3s",)
    assert [(s.name, s.up) for s in report.sources] == [("check", False)]


def test_deadline_names_the_hung_source(release):
    def hang_in_iptables(progress: CheckProgress) -> Report:
        progress.source = "iptables"
        release.wait(30)
        return ok_report()

    report, _ = run_with_deadline(hang_in_iptables, 0.2)
    assert [(s.name, s.up) for s in report.sources] == [("iptables", False)]
    assert report.sources[0].error == "timed out after 0.2s"
    assert report.errors == ("check timed out after 0.2s",)


class Fixed:
    """A source whose fetch returns at once and whose parse gives `value`."""

    def __init__(self, name: str, value: object = None) -> None:
        self.name = name
        self.value = value

    def fetch(self) -> dict[str, str]:
        return {}

    def parse(self, files) -> object:
        return self.value


class HangingFetch(Fixed):
    def __init__(self, name: str, release: threading.Event) -> None:
        super().__init__(name)
        self.release = release

    def fetch(self) -> dict[str, str]:
        self.release.wait(30)
        return {}


def test_deadline_names_the_source_a_real_check_hangs_in(release):
    """run_check records each source it reads: the one whose fetch hangs is the one marked down."""
    sources = Sources(*(Fixed(name) for name in SOURCE_NAMES))
    sources = replace(sources, ip6tables=HangingFetch("ip6tables", release))
    report, abandoned = run_with_deadline(
        lambda progress: run_check(sources, CheckConfig(), None, progress)[0], 0.3
    )
    assert abandoned is not None
    assert [(s.name, s.up) for s in report.sources] == [("ip6tables", False)]
    assert report.errors == ("check timed out after 0.3s",)


def test_check_past_its_sources_is_named_check():
    """Once every source was read, an overrun is the check's own (deciding), not a source's."""
    progress = CheckProgress()
    run_check(Sources(*(Fixed(name) for name in SOURCE_NAMES)), CheckConfig(), None, progress)
    assert progress.source is None


def test_exception_becomes_failed_report():
    def boom(progress: CheckProgress) -> Report:
        raise RuntimeError("socket closed")

    report, abandoned = run_with_deadline(boom, 1.0)
    assert abandoned is None
    assert not report.evaluated
    assert report.errors == ("check failed: RuntimeError: socket closed",)


def test_scheduled_timeout_publishes_within_deadline(release):
    latest = Latest()
    scheduler = CheckScheduler(
        lambda progress: release.wait(30) and ok_report(),
        latest,
        interval=60,
        timeout=0.5,
        debounce=0.1,
    )
    began = time.monotonic()
    scheduler.start()
    try:
        assert wait_for(lambda: latest.report is not None, timeout=1.5)
        assert time.monotonic() - began < 1.5
        report = latest.report
        assert report is not None and not report.evaluated
        assert report.errors == ("check timed out after 0.5s",)
        assert latest.snapshot().check_errors_total == {"check": 1}
    finally:
        scheduler.shutdown()


def test_no_new_check_while_an_abandoned_one_runs(release):
    calls = []

    def hang(progress: CheckProgress) -> Report:
        calls.append(1)
        release.wait(30)
        return ok_report()

    latest = Latest()
    scheduler = CheckScheduler(hang, latest, interval=60, timeout=0.1)
    scheduler.run_check()
    scheduler.run_check()  # the first is still hanging: skipped, nothing published
    assert len(calls) == 1
    assert latest.snapshot().checks_total == 1
    release.set()
    assert wait_for(
        lambda: scheduler._abandoned is not None and not scheduler._abandoned.is_alive()
    )
    release.clear()
    scheduler.run_check()  # the abandoned one ended: a new check runs (and hangs again)
    assert len(calls) == 2
    assert latest.snapshot().checks_total == 2


def test_periodic_checks_never_overlap():
    check = Counter(duration=0.15)
    latest = Latest()
    scheduler = CheckScheduler(check, latest, interval=0.05, timeout=1.0, debounce=0.0)
    scheduler.start()
    try:
        for _ in range(10):
            scheduler.trigger("container start")
            time.sleep(0.05)
        assert wait_for(lambda: check.calls >= 3)
    finally:
        scheduler.shutdown()
    assert check.max_active == 1
    assert latest.snapshot().checks_total >= 3


def test_events_are_debounced_into_one_early_check():
    check = Counter()
    scheduler = CheckScheduler(check, Latest(), interval=60, timeout=1.0, debounce=0.2)
    scheduler.start()
    try:
        assert wait_for(lambda: check.calls == 1)  # the first check runs at once
        time.sleep(0.05)
        for _ in range(5):
            scheduler.trigger("container die")
        time.sleep(0.1)
        assert check.calls == 1  # not before the debounce delay
        assert wait_for(lambda: check.calls == 2, timeout=1.0)
        time.sleep(0.3)
        assert check.calls == 2  # a burst makes one check
    finally:
        scheduler.shutdown()


def test_event_during_a_check_schedules_one_more():
    started = threading.Event()
    gate = threading.Event()
    calls = []

    def check(progress: CheckProgress) -> Report:
        calls.append(1)
        started.set()
        if len(calls) == 1:
            gate.wait(5)
        return ok_report()

    scheduler = CheckScheduler(check, Latest(), interval=60, timeout=5.0, debounce=0.05)
    scheduler.start()
    try:
        assert started.wait(2)
        scheduler.trigger("network connect")
        gate.set()
        assert wait_for(lambda: len(calls) == 2, timeout=2.0)
    finally:
        gate.set()
        scheduler.shutdown()


def test_an_event_during_a_check_is_not_dropped_without_debounce():
    # The next run is due at once when the running one returns: it starts then, not an interval
    # later.
    gate = threading.Event()
    calls = []

    def check(progress: CheckProgress) -> Report:
        calls.append(time.monotonic())
        if len(calls) == 1:
            gate.wait(5)
        return ok_report()

    scheduler = CheckScheduler(check, Latest(), interval=60, timeout=5.0, debounce=0.0)
    scheduler.start()
    try:
        assert wait_for(lambda: len(calls) == 1)
        scheduler.trigger("container start")
        time.sleep(0.05)
        released = time.monotonic()
        gate.set()
        assert wait_for(lambda: len(calls) == 2, timeout=2.0)
        assert calls[1] - released < 0.5
    finally:
        gate.set()
        scheduler.shutdown()


def test_plan_first_check_at_once_then_every_interval():
    plan = CheckPlan(interval=15, debounce=0.2, next_periodic=100.0)
    assert plan.due() == 100.0
    plan.begin(100.0)
    assert plan.due() == 115.0


def test_plan_a_burst_of_events_makes_one_check_debounce_after_the_first():
    plan = CheckPlan(interval=15, debounce=0.2)
    plan.begin(100.0)
    for now in (101.0, 101.05, 101.1, 101.15):
        plan.request(now)
    assert plan.due() == pytest.approx(101.2)  # a later event does not push the check back
    plan.begin(101.2)
    assert plan.due() == pytest.approx(116.2)  # served: the next one is periodic


def test_plan_events_during_a_check_make_one_pending_check_not_a_queue():
    plan = CheckPlan(interval=15, debounce=0.2)
    plan.begin(100.0)  # a check runs from 100 to 103
    for now in (100.5, 101.0, 102.0, 102.9):
        plan.request(now)
    # When it ends the pending check is overdue, so it starts at once, and it alone serves all.
    assert plan.due() == pytest.approx(100.7)
    plan.begin(103.0)
    assert plan.requested is None and plan.due() == 118.0


def test_plan_event_just_before_a_periodic_check_is_served_by_it():
    plan = CheckPlan(interval=15, debounce=0.2)
    plan.begin(100.0)
    plan.request(114.9)
    assert plan.due() == 115.0  # the periodic check comes first and reads the world after it
    plan.begin(115.0)
    assert plan.requested is None


def test_many_events_during_a_check_give_exactly_one_more_that_starts_after_them():
    gate = threading.Event()
    starts: list[float] = []
    events_done: list[float] = []

    def check(progress: CheckProgress) -> Report:
        starts.append(time.monotonic())
        if len(starts) == 1:
            gate.wait(5)
        return ok_report()

    latest = Latest()
    scheduler = CheckScheduler(check, latest, interval=60, timeout=5.0, debounce=0.0)
    scheduler.start()
    try:
        assert wait_for(lambda: len(starts) == 1)
        for _ in range(50):
            scheduler.trigger("container start")
        events_done.append(time.monotonic())
        gate.set()
        assert wait_for(lambda: latest.snapshot().checks_total == 2)
        time.sleep(0.1)  # nothing else is due: no third check may come
        assert len(starts) == 2
        assert starts[1] >= events_done[0]  # the pending check read the world after the events
    finally:
        gate.set()
        scheduler.shutdown()


def test_a_verdict_read_while_docker_changed_is_replaced_by_a_new_check():
    now = [100.0]
    changes = ChangeLog()
    reports: list[Report] = []

    def check(progress: CheckProgress) -> Report:
        if len(reports) == 1:
            changes.event(now[0])  # an event arrives while the second check reads
        reports.append(ok_report())
        return reports[-1]

    latest = Latest()
    scheduler = CheckScheduler(
        check, latest, interval=60, debounce=0.2, monotonic=lambda: now[0], changes=changes
    )
    scheduler.run_check()
    assert latest.report is reports[0]  # the first is always published
    now[0] += 0.5
    scheduler.run_check()
    assert latest.report is reports[0]  # held back ...
    assert scheduler._plan.requested == pytest.approx(100.7)  # ... and a new check asked for
    now[0] += 0.2
    scheduler.run_check()
    assert latest.report is reports[2] and latest.snapshot().checks_total == 2


def test_a_verdict_read_between_two_steps_is_held_back_longer():
    now = [100.0]
    changes = ChangeLog()
    latest = Latest()
    scheduler = CheckScheduler(
        lambda progress: ok_report(), latest, interval=60, monotonic=lambda: now[0], changes=changes
    )
    scheduler.run_check()
    changes.begin_step("c1", "created", now[0])  # created, its rules are there, not started
    published = []
    for _ in range(12):
        now[0] += 0.5
        scheduler.run_check()
        published.append(latest.snapshot().checks_total)
    # Held back until STEP_HOLD_LIMIT; then the step, as old, no longer counts (it may never end).
    assert STEP_HOLD_LIMIT == 5.0
    assert published == [1] * 9 + [2, 3, 4]


def test_a_verdict_read_while_a_step_ended_is_held_back():
    now = [100.0]
    changes = ChangeLog()
    latest = Latest()

    def check(progress: CheckProgress) -> Report:
        if latest.snapshot().checks_total == 1:
            changes.end_step("c1", now[0])  # the container starts while the check reads
        return ok_report()

    scheduler = CheckScheduler(
        check, latest, interval=60, monotonic=lambda: now[0], changes=changes
    )
    scheduler.run_check()
    changes.begin_step("c1", "created", now[0])
    now[0] += 2.0  # past HOLD_LIMIT, within STEP_HOLD_LIMIT
    scheduler.run_check()
    assert latest.snapshot().checks_total == 1
    now[0] += 0.2
    scheduler.run_check()  # began after the step ended: settled
    assert latest.snapshot().checks_total == 2


def test_endless_churn_still_publishes_every_hold_limit():
    now = [100.0]
    changes = ChangeLog()

    def check(progress: CheckProgress) -> Report:
        changes.event(now[0])  # every check reads while something changes
        return ok_report()

    latest = Latest()
    scheduler = CheckScheduler(
        check, latest, interval=60, monotonic=lambda: now[0], changes=changes
    )
    published = []
    for _ in range(20):
        scheduler.run_check()
        published.append(latest.snapshot().checks_total)
        now[0] += 0.25
    # One publish per HOLD_LIMIT (1 s) of checks 0.25 s apart: never frozen, never every check.
    assert published[-1] == pytest.approx(20 * 0.25 / HOLD_LIMIT, abs=1)


def test_a_failed_check_is_never_held_back():
    now = [100.0]
    changes = ChangeLog()
    latest = Latest()

    def check(progress: CheckProgress) -> Report:
        changes.event(now[0])
        return replace(ok_report(), up=False, evaluated=False, errors=("docker: down",))

    scheduler = CheckScheduler(
        check, latest, interval=60, monotonic=lambda: now[0], changes=changes
    )
    scheduler.run_check()
    scheduler.run_check()
    assert latest.snapshot().checks_total == 2


def test_health():
    now = [1000.0]
    scheduler = CheckScheduler(
        lambda progress: ok_report(), Latest(), interval=15, timeout=10, clock=lambda: now[0]
    )
    ok, reason = scheduler.health()
    assert not ok and reason == "scheduler is not running"
    scheduler.start()
    try:
        assert wait_for(lambda: scheduler.last_started is not None)
        assert scheduler.health() == (True, "ok")
        now[0] += 3 * 15 + 10 + 1
        ok, reason = scheduler.health()
        assert not ok
        assert reason == "no check started in the last 56s (limit 55s)"
    finally:
        scheduler.shutdown()
    assert scheduler.health()[0] is False


def test_event_reason_filter():
    assert event_reason({"Type": "container", "Action": "start"}) == "container start"
    assert event_reason({"Type": "network", "Action": "disconnect"}) == "network disconnect"
    assert event_reason({"Type": "container", "Action": "exec_start: sh"}) is None
    assert event_reason({"Type": "image", "Action": "pull"}) is None


def container_event(action: str, cid: str) -> dict:
    return {"Type": "container", "Action": action, "Actor": {"ID": cid, "Attributes": {}}}


def connect_event(cid: str) -> dict:
    return {
        "Type": "network",
        "Action": "connect",
        "Actor": {"ID": "net1", "Attributes": {"container": cid, "name": "bridge"}},
    }


def test_event_filter_waits_for_start_not_the_connect_before_it():
    events = EventFilter()
    reasons = [
        events.reason(event)
        for event in (
            container_event("create", "c1"),
            connect_event("c1"),  # docker run: connected before it runs
            container_event("start", "c1"),
            connect_event("c1"),  # docker network connect of the running container
            connect_event("c2"),  # created before the stream: connect counts
            container_event("die", "c1"),
            container_event("rename", "c1"),
            container_event("destroy", "c1"),
            {"Type": "network", "Action": "destroy", "Actor": {"ID": "net1"}},
            {"Type": "container", "Action": "exec_start: sh", "Actor": {"ID": "c1"}},
        )
    ]
    assert reasons == [
        None,
        None,
        "container start",
        "network connect",
        "network connect",
        "container die",
        "container rename",
        "container destroy",
        "network destroy",
        None,
    ]
    assert not events.changes.in_step("c1", "created")


def test_event_filter_forgets_a_created_container_destroyed_unstarted():
    events = EventFilter()
    events.reason(container_event("create", "c1"))
    events.reason(container_event("destroy", "c1"))
    assert not events.changes.in_step("c1", "created")
    assert events.reason({"Type": "container", "Actor": "garbage"}) is None


def disconnect_event(cid: str) -> dict:
    return {**connect_event(cid), "Action": "disconnect"}


def settled(changes: ChangeLog, began: float, now: float) -> bool:
    return changes.quiet_since(began) and changes.no_step_since(began, now)


def test_event_filter_notes_dockers_steps_in_flight():
    """Between create and start, and between die and the network's release, a check would read
    half a change."""
    now = [100.0]
    changes = ChangeLog(max_age=5)
    events = EventFilter(changes, monotonic=lambda: now[0])
    events.reason(container_event("create", "c1"))
    events.reason(connect_event("c1"))
    now[0] = 101.0
    assert not settled(changes, 100.5, now[0])  # c1 created, not started
    events.reason(container_event("start", "c1"))
    now[0] = 102.0
    assert settled(changes, 101.5, now[0])
    assert not settled(changes, 101.0, now[0])  # the start came while that check read
    events.reason(container_event("die", "c1"))
    now[0] = 103.0
    assert not settled(changes, 102.5, now[0])  # died, its network not yet released
    events.reason(disconnect_event("c1"))  # at 103: still listed for a moment after it
    now[0] = 104.0
    assert not settled(changes, 103.0 + RELEASE_GRACE - 0.01, now[0])
    assert settled(changes, 103.0 + RELEASE_GRACE + 0.01, now[0])


def test_a_step_that_never_ends_stops_counting_after_max_age():
    changes = ChangeLog(max_age=5)
    changes.begin_step("c1", "created", 100.0)  # docker create, never started
    assert not changes.no_step_since(102.0, 104.9)
    assert changes.no_step_since(102.0, 105.0)


class FakeClient:
    def __init__(self, events, fail: Exception | None = None) -> None:
        self._events = events
        self._fail = fail
        self.calls = []

    def events(self, *, decode, filters):
        self.calls.append((decode, filters))
        if self._fail:  # like docker's APIClient: the request fails at call time
            raise self._fail
        return iter(self._events)

    def close(self) -> None:
        pass


def test_event_watcher_triggers_and_reconnects_with_backoff():
    clients = [
        FakeClient([], fail=ConnectionError("docker.sock: connection refused")),
        FakeClient(
            [
                {"Type": "container", "Action": "start"},
                {"Type": "container", "Action": "exec_create: sh"},
                {"Type": "network", "Action": "connect"},
            ]
        ),
        FakeClient([{"Type": "container", "Action": "die"}]),
    ]
    made = []

    def factory():
        client = clients[len(made)] if len(made) < len(clients) else FakeClient([], RuntimeError())
        made.append(client)
        return client

    reasons = []
    watcher = DockerEventWatcher(
        reasons.append, client_factory=factory, backoff_min=0.01, backoff_max=0.05
    )
    watcher.start()
    try:
        assert wait_for(lambda: len(made) >= 4)
    finally:
        watcher.stop()
    assert not watcher.is_alive()
    assert reasons[:4] == [
        "container start",
        "network connect",
        "event stream reconnected",
        "container die",
    ]
    decode, filters = clients[1].calls[0]
    assert decode is True and filters["type"] == ["container", "network"]


def test_event_watcher_survives_a_failing_callback():
    def on_event(reason: str) -> None:
        raise RuntimeError("scheduler gone")

    client = FakeClient([{"Type": "container", "Action": "start"}] * 3)
    watcher = DockerEventWatcher(
        on_event, client_factory=lambda: client, backoff_min=0.01, backoff_max=0.02
    )
    watcher.start()
    try:
        assert wait_for(lambda: len(client.calls) >= 2)
        assert watcher.is_alive()
    finally:
        watcher.stop()


def test_shutdown_stops_waiting_for_a_hung_check(release):
    latest = Latest()
    started = threading.Event()

    def hang(progress: CheckProgress) -> Report:
        started.set()
        release.wait(30)
        return ok_report()

    scheduler = CheckScheduler(hang, latest, interval=60, timeout=3600, debounce=0.1)
    job = threading.Thread(target=scheduler.run_check)  # as APScheduler's pool thread runs it
    job.start()
    assert started.wait(2)
    began = time.monotonic()
    scheduler.shutdown()
    job.join(2)
    assert not job.is_alive()
    assert time.monotonic() - began < 0.5
    assert latest.snapshot().checks_total == 0  # a cancelled check is no result


def test_cancel_ends_the_wait_with_a_failed_report(release):
    cancel = threading.Event()
    threading.Timer(0.1, cancel.set).start()
    began = time.monotonic()
    report, abandoned = run_with_deadline(
        lambda progress: release.wait(30) and ok_report(), 3600, cancel=cancel
    )
    assert time.monotonic() - began < 0.5
    assert abandoned is not None and abandoned.is_alive()
    assert report.errors == ("check cancelled: the exporter is stopping",)


# -- warm checks: unchanged raw input is not parsed again, unchanged inputs not decided again ----

SNAPSHOT = Path(__file__).resolve().parent.parent / "fixtures/sources/lab-nft-drift"


class Replay:
    """A real source whose fetch prints a recorded snapshot (or fails), counting its parses."""

    def __init__(self, source, files: dict[str, str]) -> None:
        self.name = source.name
        self._source = source
        self.files = files
        self.fail: str | None = None
        self.parses = 0

    def fetch(self) -> dict[str, str]:
        if self.fail:
            raise SourceError(self.fail)
        return dict(self.files)  # a fresh dict each time, as a real fetch makes

    def parse(self, files):
        self.parses += 1
        return self._source.parse(files)


@pytest.fixture
def replayed() -> Sources:
    files = read_snapshot(SNAPSHOT)
    return Sources(*(Replay(source, files) for source in build_sources(ExporterConfig())))


def test_unchanged_dumps_are_parsed_once_and_decided_once(replayed):
    warm = WarmCheck()
    first, _ = run_check(replayed, CheckConfig(), None, None, warm)
    second, _ = run_check(replayed, CheckConfig(), None, None, warm)
    assert first.evaluated and first.up and first.findings
    assert [source.parses for source in replayed] == [1] * len(SOURCE_NAMES)
    assert warm.decisions_reused == 1
    assert second.started >= first.started
    assert (second.findings, second.flow_counts, second.networks) == (
        first.findings,
        first.flow_counts,
        first.networks,
    )
    cold, _ = run_check(replayed, CheckConfig(), None, None)  # no WarmCheck: parsed again
    assert cold.findings == first.findings and replayed.docker.parses == 2


def test_a_changed_dump_is_parsed_and_decided_anew(replayed):
    warm = WarmCheck()
    run_check(replayed, CheckConfig(), None, None, warm)
    replayed.iptables.files = {**replayed.iptables.files, "iptables-save.txt": "garbage\n"}
    changed, _ = run_check(replayed, CheckConfig(), None, None, warm)
    assert replayed.iptables.parses == 2 and replayed.docker.parses == 1
    assert warm.decisions_reused == 0
    assert not changed.evaluated  # the garbled dump is read as such, not as the last good one


def test_a_failing_source_is_never_served_from_the_last_read(replayed):
    warm = WarmCheck()
    good, _ = run_check(replayed, CheckConfig(), None, None, warm)
    replayed.ip6tables.fail = "ip6tables: ip6tables-nft-save timed out after 1s"
    failed, _ = run_check(replayed, CheckConfig(), None, None, warm)
    assert warm.decisions_reused == 0
    assert not failed.up
    assert [(s.name, s.up) for s in failed.sources if not s.up] == [("ip6tables", False)]
    assert failed.errors == ("ip6tables: ip6tables-nft-save timed out after 1s",)
    replayed.ip6tables.fail = None
    recovered, _ = run_check(replayed, CheckConfig(), None, None, warm)
    assert recovered.up and recovered.findings == good.findings
    assert warm.decisions_reused == 0  # decided anew after the failure


def test_a_source_failing_twice_reports_its_newest_error(replayed):
    warm = WarmCheck()
    replayed.ipset.fail = "ipset: ipset save timed out after 1s"
    run_check(replayed, CheckConfig(), None, None, warm)
    replayed.ipset.fail = "ipset: ipset save failed (exit 1): Kernel error"
    second, _ = run_check(replayed, CheckConfig(), None, None, warm)
    assert warm.decisions_reused == 0
    assert second.errors == ("ipset: ipset save failed (exit 1): Kernel error",)
    assert not second.up


def test_another_config_is_decided_anew(replayed):
    warm = WarmCheck()
    run_check(replayed, CheckConfig(), None, None, warm)
    run_check(replayed, replace(CheckConfig(), all_flows=True), None, None, warm)
    assert warm.decisions_reused == 0


def test_a_parse_that_fails_is_not_remembered():
    class Flaky(Fixed):
        def __init__(self) -> None:
            super().__init__("docker")
            self.calls = 0

        def parse(self, files):
            self.calls += 1
            if self.calls == 1:
                raise SourceError("docker: docker-inspect.json is not valid JSON")
            return "state"

    memo = ParseMemo()
    source = Flaky()
    with pytest.raises(SourceError):
        memo.parse(source, {"a": "1"})
    assert memo.parse(source, {"a": "1"}) == "state"
    assert memo.parse(source, {"a": "1"}) == "state"
    assert source.calls == 2 and (memo.parsed, memo.reused) == (1, 1)
