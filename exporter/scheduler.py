"""Run the check on a schedule and on Docker events, each under a deadline; publish every result.

- `CheckScheduler`: an APScheduler job, on a one-thread executor, runs the check when `CheckPlan`
  says: every `interval` seconds (the first at once) and `debounce` seconds after a Docker event;
  after each run and on each event the job's next run time is set from the plan. Each run calls
  `check_fn(progress)` in a daemon worker
  thread and waits at most `timeout` seconds for it (`run_with_deadline`); the check writes into
  that fresh `CheckProgress` the source it is reading. A check that misses its deadline is
  published as a failed report (`up=False`, `evaluated=False`, `errors=("check timed out after
  Ns",)`, the source named in its CheckProgress marked down, else source "check") and its thread
  is abandoned: nothing ever waits for it again, and its late result is discarded.
- While an abandoned check is still running, no new check starts (there is never more than one
  check thread). A check that hangs usually hangs on something shared (the Docker socket, the
  xtables lock), so a second one would hang too and pile up threads. Each skipped run logs one
  line; the timed-out report stays published (up=0) and its timestamp ages, so
  `docker_netpolicy_last_check_timestamp_seconds` shows it, and /healthz turns 503 once no check
  has started for 3 intervals + timeout, so a supervisor can restart the process.
- `shutdown()` returns at once: the loop stops waiting for a running check (`run_with_deadline`'s
  `cancel`), publishes nothing, and the check thread (a daemon) is left to die with the process.
- `trigger()` asks for an early check (Docker events), coalesced, never queued: at most one check
  runs and one is pending, and the pending one reads the world when it starts, so every event
  before its start is in it. Never two checks at once.
- A verdict read while Docker was mid-change (`ChangeLog`: an event during the read, a container
  between create and start or between die and its network's release) is held back and the check
  runs again after `debounce`, unless the published report is older than HOLD_LIMIT (events
  only) or STEP_HOLD_LIMIT (a container between two steps). Docker's own
  steps would otherwise show as drift for a moment (rules of a container not yet running, a
  running container whose rules are already gone).
- `DockerEventWatcher`: a thread that follows `GET /events` (container start/die/destroy/rename,
  network create/destroy/connect/disconnect; `EventFilter` says which) and calls `trigger()`.
  A dropped stream is retried with backoff (1s doubling to 30s), one log line per drop; a
  reconnect also triggers a check (events may have been missed). Nothing in it can crash the
  process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import docker
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from exporter.check import CheckProgress
from exporter.config import DEFAULT_CHECK_DEBOUNCE
from exporter.latest import Latest
from exporter.report import Report, SourceStatus

log = logging.getLogger(__name__)

# A verdict read while events came is held back (a new check replaces it) unless the published
# one is older than this: within the 2 s a change may take to show in /metrics.
HOLD_LIMIT = 1.0
# How long a container may stay between create and start, or between die and the release of its
# network, before a check stops waiting for it (`docker create` alone never starts).
TRANSITION_MAX_AGE = 5.0
# After a died container's network disconnect, the container list still shows it running for a
# moment (~30 ms measured on Docker 20.10) while its rules are gone: its step ends this much later.
RELEASE_GRACE = 0.25
# A verdict read while a container was between two steps (see ChangeLog) likely shows half a
# change as drift: held back longer, as long as a step may count.
STEP_HOLD_LIMIT = TRANSITION_MAX_AGE
# How soon a check's wait notices that the scheduler is shutting down.
CANCEL_POLL_SECONDS = 0.05
# A check: it records in the CheckProgress which source it reads, so an overrun names it.
CheckFn = Callable[[CheckProgress], Report]


def _failed_report(started: float, elapsed: float, source: str, error: str, message: str) -> Report:
    return Report(
        started=started,
        duration_seconds=elapsed,
        sources=(SourceStatus(source, False, elapsed, error),),
        up=False,
        evaluated=False,
        errors=(message,),
    )


def run_with_deadline(
    check_fn: CheckFn,
    timeout: float,
    *,
    clock: Callable[[], float] = time.time,
    cancel: threading.Event | None = None,
) -> tuple[Report, threading.Thread | None]:
    """Run check_fn in a daemon thread and wait at most `timeout` seconds, or until `cancel`.

    Returns the report and, when the deadline passed or the wait was cancelled, the abandoned
    thread (still running); its failed report names the source the check was reading then
    (its CheckProgress), else "check". An exception from check_fn becomes a failed report; this
    function never raises for it.
    """
    started = clock()
    result: list[Report] = []
    failure: list[BaseException] = []
    done = threading.Event()
    progress = CheckProgress()

    def work() -> None:
        try:
            result.append(check_fn(progress))
        except BaseException as exc:  # noqa: BLE001 - any failure becomes a failed report
            failure.append(exc)
        finally:
            done.set()

    worker = threading.Thread(target=work, name="netpolicy-check", daemon=True)
    worker.start()
    cancelled = _wait(done, timeout, cancel)
    elapsed = max(0.0, clock() - started)
    if not done.is_set():
        source = progress.source or "check"
        if cancelled:
            error = "cancelled: the exporter is stopping"
        else:
            error = f"timed out after {timeout:g}s"
        return _failed_report(started, elapsed, source, error, f"check {error}"), worker
    if failure:
        exc = failure[0]
        err = f"{type(exc).__name__}: {exc}"
        log.debug("check raised", exc_info=(type(exc), exc, exc.__traceback__))
        return _failed_report(started, elapsed, "check", err, f"check failed: {err}"), None
    return result[0], None


def _wait(done: threading.Event, timeout: float, cancel: threading.Event | None) -> bool:
    """Wait for `done` at most `timeout` seconds; True when `cancel` ended the wait first.

    Without `cancel` one wait; with it, slices of CANCEL_POLL_SECONDS, since one thread cannot
    wait on two events and a stopping process must not wait a whole check timeout.
    """
    if cancel is None:
        done.wait(timeout)
        return False
    deadline = time.monotonic() + timeout
    while not done.is_set():
        remaining = deadline - time.monotonic()
        if cancel.is_set():
            return True
        if remaining <= 0:
            return False
        done.wait(min(remaining, CANCEL_POLL_SECONDS))
    return False


def log_report(report: Report) -> None:
    """One line per published report (the check itself logs each source that failed)."""
    down = ",".join(source.name for source in report.sources if not source.up)
    if not report.evaluated:
        log.error(
            "check failed",
            extra={"source": down or "check", "err": "; ".join(report.errors)},
        )
        return
    log.info(
        "check finished",
        extra={
            "up": int(report.up),
            "drift": int(report.drift),
            "findings": len(report.findings),
            "sources_down": down,
            "duration_seconds": round(report.duration_seconds, 3),
        },
    )


@dataclass
class CheckPlan:
    """When the next check is due: the pure scheduling rule, on a monotonic clock.

    - A periodic check is due `interval` seconds after the last check started (the first at once).
    - `request(now)` (a Docker event) makes a check due at `now + debounce`, unless one is already
      requested sooner: a burst of events makes one check, and the first event of a burst is seen
      within `debounce` plus the check's duration, however many follow.
    - `begin(now)` is a check starting: it reads the world from now on, so every request made
      before it is served by it. A request made while it runs is the one pending check, which
      starts once it ends (never two at once, never a queue).
    """

    interval: float
    debounce: float
    next_periodic: float = 0.0
    requested: float | None = None

    def request(self, now: float) -> None:
        due = now + self.debounce
        if self.requested is None or due < self.requested:
            self.requested = due

    def due(self) -> float:
        if self.requested is None:
            return self.next_periodic
        return min(self.next_periodic, self.requested)

    def begin(self, now: float) -> None:
        self.requested = None
        self.next_periodic = now + self.interval


JOB_ID = "netpolicy-check"


class CheckScheduler:
    """Runs `check_fn` when `CheckPlan` says, each run under a deadline, as an APScheduler job.

    One executor thread runs the job, so checks never overlap; `max_instances=2` lets APScheduler
    hold the one pending run a reschedule asks for while the current run returns (with 1 it would
    drop it as "maximum number of running instances reached", and an event with it).
    """

    def __init__(
        self,
        check_fn: CheckFn,
        latest: Latest,
        *,
        interval: float = 15.0,
        timeout: float = 10.0,
        debounce: float = DEFAULT_CHECK_DEBOUNCE,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        changes: ChangeLog | None = None,
    ) -> None:
        self._check_fn = check_fn
        self._changes = changes
        self._latest = latest
        self.interval = interval
        self.timeout = timeout
        self.debounce = debounce
        self._clock = clock
        self._monotonic = monotonic
        self._plan = CheckPlan(interval, debounce, next_periodic=monotonic())
        # Guards the plan, `_running` and the abandoned thread.
        self._lock = threading.Lock()
        self._running = False
        self._abandoned: threading.Thread | None = None
        self._abandoned_since: float | None = None
        self._last_started: float | None = None
        self._started_at: float | None = None
        self._last_published: float | None = None  # monotonic
        # Set by shutdown(): no new run starts and a running check's result is not published.
        self._stopping = threading.Event()
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(1)}, timezone=UTC, daemon=True
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._started_at = self._clock()
        self._scheduler.add_job(
            self._run_planned,
            "interval",
            seconds=self.interval,
            id=JOB_ID,
            name="check",
            max_instances=2,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=datetime.now(UTC),
        )
        self._scheduler.start()

    def shutdown(self) -> None:
        """Stop at once: a running check is abandoned, not waited for (a hung Docker socket must
        not hold SIGTERM up for a whole check timeout)."""
        self._stopping.set()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def alive(self) -> bool:
        thread = getattr(self._scheduler, "_thread", None)
        running = bool(self._scheduler.running) and (thread is None or thread.is_alive())
        return running and not self._stopping.is_set()

    @property
    def last_started(self) -> float | None:
        return self._last_started

    def _run_planned(self) -> None:
        """The job: one check that serves every request made before it, then the next run."""
        with self._lock:
            self._plan.begin(self._monotonic())
            self._running = True
        try:
            self.run_check()
        finally:
            with self._lock:
                self._running = False
            self._reschedule()

    def _reschedule(self) -> None:
        """Set the job's next run to when the plan says the next check is due."""
        if self._stopping.is_set():
            return
        with self._lock:
            delay = max(0.0, self._plan.due() - self._monotonic())
        try:
            self._scheduler.modify_job(
                JOB_ID, next_run_time=datetime.now(UTC) + timedelta(seconds=delay)
            )
        except Exception as exc:  # noqa: BLE001 - the scheduler may be shutting down
            log.debug("could not reschedule the check", extra={"err": str(exc)})

    # -- one check ---------------------------------------------------------------------------

    def run_check(self) -> None:
        """One run: start a check unless an abandoned one still runs; publish its report."""
        if self._stopping.is_set():
            return
        with self._lock:
            abandoned = self._abandoned
            if abandoned is not None and abandoned.is_alive():
                since = self._abandoned_since or 0.0
                log.warning(
                    "check skipped: a timed-out check is still running",
                    extra={"running_for_seconds": round(self._clock() - since, 1)},
                )
                return
            if abandoned is not None:
                log.info("timed-out check finished; its result was discarded")
                self._abandoned = None
                self._abandoned_since = None
            self._last_started = self._clock()
        began = self._monotonic()
        try:
            report, abandoned = run_with_deadline(
                self._check_fn, self.timeout, clock=self._clock, cancel=self._stopping
            )
            if abandoned is not None:
                with self._lock:
                    self._abandoned = abandoned
                    self._abandoned_since = self._last_started
            if self._stopping.is_set():
                return  # shutting down: a cancelled check is no result
            now = self._monotonic()
            if self._superseded(report, began, now):
                log.debug("check held back: the world changed while it read; checking again")
                with self._lock:
                    self._plan.request(now)
                return
            self._latest.publish(report)
            self._last_published = now
            log_report(report)
        except Exception:  # noqa: BLE001 - the scheduler thread must never die
            log.exception("check job failed")

    def _superseded(self, report: Report, began: float, now: float) -> bool:
        """A verdict read while Docker was mid-change (see ChangeLog): a check after `debounce`
        replaces it, so it is not published while the published one is young enough: younger
        than HOLD_LIMIT when only events came during the read, younger than STEP_HOLD_LIMIT
        when a container was between two steps. Past that it is, so churn cannot freeze
        /metrics for ever."""
        if not report.evaluated or self._changes is None or self._last_published is None:
            return False
        age = now - self._last_published
        if not self._changes.no_step_since(began, now):
            return age < STEP_HOLD_LIMIT
        return age < HOLD_LIMIT and not self._changes.quiet_since(began)

    # -- early checks on events --------------------------------------------------------------

    def trigger(self, reason: str = "") -> None:
        """Ask for a check soon (debounced, coalesced); safe from any thread, never runs one."""
        log.debug("early check requested", extra={"reason": reason})
        with self._lock:
            self._plan.request(self._monotonic())
            running = self._running
        if not running:  # a running check reschedules when it ends
            self._reschedule()

    # -- health ------------------------------------------------------------------------------

    def health(self, now: float | None = None) -> tuple[bool, str]:
        """(True, "ok") while the scheduler runs and a check started in 3 intervals + timeout."""
        if not self.alive():
            return False, "scheduler is not running"
        now = self._clock() if now is None else now
        reference = self._last_started if self._last_started is not None else self._started_at
        if reference is None:
            return False, "scheduler has not started"
        limit = 3 * self.interval + self.timeout
        age = now - reference
        if age > limit:
            reason = f"no check started in the last {age:.0f}s (limit {limit:g}s)"
            abandoned = self._abandoned
            if abandoned is not None and abandoned.is_alive():
                reason += "; a timed-out check is still running"
            return False, reason
        return True, "ok"


# -- Docker events ---------------------------------------------------------------------------

# Events that change who can talk to whom. Docker filters on action names whatever the type, so
# network create/destroy come with the container ones; container create and stop are only noted
# (see EventFilter). Docker 20.10 names the action in "Action" (and "status" for containers).
EVENT_FILTERS = {
    "type": ["container", "network"],
    "event": ["create", "start", "die", "stop", "destroy", "rename", "connect", "disconnect"],
}
_WANTED = {
    ("container", "start"),
    ("container", "die"),
    ("container", "destroy"),
    ("container", "rename"),
    ("network", "create"),
    ("network", "destroy"),
    ("network", "connect"),
    ("network", "disconnect"),
}


class ChangeLog:
    """What the event stream says about changes in flight; the scheduler asks it whether a check
    read a settled world. Thread-safe; times are monotonic seconds.

    Docker changes the world in steps: between a container's create and its start its link rules
    already exist but it is not running; between its die and the release of its network
    (disconnect + RELEASE_GRACE, destroy, stop) it is still listed as running but its rules are
    gone. A check
    that reads during such a step, or while any event arrives, may see half of a change: drift
    the host does not have once Docker is done.
    """

    def __init__(self, max_age: float = TRANSITION_MAX_AGE) -> None:
        self._lock = threading.Lock()
        self._max_age = max_age
        self._last_event: float | None = None
        self._last_step_end: float | None = None
        # Container id -> ("created" | "died", when the step began).
        self._open: dict[str, tuple[str, float]] = {}

    def event(self, now: float) -> None:
        with self._lock:
            self._last_event = now

    def begin_step(self, cid: str, step: str, now: float) -> None:
        with self._lock:
            self._open[cid] = (step, now)

    def end_step(self, cid: str, at: float) -> None:
        """The container's step ends `at` (a check that begins before then read part of it)."""
        with self._lock:
            if self._open.pop(cid, None) is not None:
                self._last_step_end = max(at, self._last_step_end or at)

    def in_step(self, cid: str, step: str) -> bool:
        with self._lock:
            return self._open.get(cid, ("", 0.0))[0] == step

    def quiet_since(self, began: float) -> bool:
        """True when no event came at or after `began`."""
        with self._lock:
            return self._last_event is None or self._last_event < began

    def no_step_since(self, began: float, now: float) -> bool:
        """True when no step was open at any time from `began` to `now` (a step open longer than
        max_age no longer counts)."""
        with self._lock:
            if self._last_step_end is not None and self._last_step_end >= began:
                return False
            return all(now - since >= self._max_age for _, since in self._open.values())


@dataclass
class EventFilter:
    """Which events ask for a check, so the check reads the state the event announced; each
    event is also noted in `changes`.

    `docker run` emits container create, network connect, then container start. A check started
    by the connect would read the world before the container runs (not listed yet, no rules) and
    the start would be seen one whole check later; so a connect of a container created but not
    yet started asks for nothing: its start will. A connect of a running container
    (`docker network connect`) still asks for a check.
    """

    changes: ChangeLog = field(default_factory=ChangeLog)
    monotonic: Callable[[], float] = time.monotonic

    def reason(self, event: dict[str, Any]) -> str | None:
        now = self.monotonic()
        self.changes.event(now)
        kind = event.get("Type")
        action = event.get("Action") or event.get("status")
        actor = _object(event.get("Actor"))
        if kind == "container":
            cid = actor.get("ID")
            if not isinstance(cid, str):
                return event_reason(event)
            if action in ("create", "die"):
                self.changes.begin_step(cid, "created" if action == "create" else "died", now)
            elif action in ("start", "destroy", "stop"):
                self.changes.end_step(cid, now)
        elif kind == "network" and action in ("connect", "disconnect"):
            container = _object(actor.get("Attributes")).get("container")
            if isinstance(container, str) and action == "disconnect":
                # Its network is released: the die is done once the list drops it, just after.
                self.changes.end_step(container, now + RELEASE_GRACE)
            elif isinstance(container, str) and self.changes.in_step(container, "created"):
                return None
        return event_reason(event)


class EventClient(Protocol):
    def events(
        self, *, decode: bool, filters: dict[str, list[str]]
    ) -> Iterable[dict[str, Any]]: ...


def _docker_client_factory(docker_host: str, docker_timeout: float) -> Callable[[], EventClient]:
    def factory() -> EventClient:
        client: EventClient = docker.APIClient(
            base_url=docker_host, version="auto", timeout=docker_timeout
        )
        return client

    return factory


def _object(value: Any) -> dict[str, Any]:
    """An event's sub-object, or an empty one when the daemon sent something else."""
    return value if isinstance(value, dict) else {}


def event_reason(event: dict[str, Any]) -> str | None:
    """ "container start" etc. for a kind of event that may change flows, else None."""
    kind = event.get("Type")
    action = event.get("Action") or event.get("status")
    if (kind, action) in _WANTED:
        return f"{kind} {action}"
    return None


class DockerEventWatcher:
    """Follows Docker's event stream (GET only) and calls `on_event(reason)` for relevant events."""

    def __init__(
        self,
        on_event: Callable[[str], None],
        *,
        changes: ChangeLog | None = None,
        docker_host: str = "",
        docker_timeout: float = 5.0,
        client_factory: Callable[[], EventClient] | None = None,
        backoff_min: float = 1.0,
        backoff_max: float = 30.0,
    ) -> None:
        self._on_event = on_event
        self._changes = changes or ChangeLog()
        self._factory = client_factory or _docker_client_factory(docker_host, docker_timeout)
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._stop = threading.Event()
        self._stream_lock = threading.Lock()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._run, name="docker-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        with self._stream_lock:
            stream = self._stream
        _close_quietly(stream)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        backoff = self._backoff_min
        connected_before = False
        while not self._stop.is_set():
            connected_at: float | None = None
            client: Any = None
            try:
                client = self._factory()
                stream = client.events(decode=True, filters=EVENT_FILTERS)
                with self._stream_lock:
                    self._stream = stream
                if self._stop.is_set():
                    break
                connected_at = time.monotonic()
                if connected_before:
                    log.info("docker event stream reconnected")
                    self._notify("event stream reconnected")
                else:
                    log.debug("docker event stream connected")
                connected_before = True
                events = EventFilter(self._changes)
                for event in stream:
                    if self._stop.is_set():
                        break
                    reason = events.reason(event) if isinstance(event, dict) else None
                    if reason:
                        self._notify(reason)
                error = "stream ended"
            except Exception as exc:  # noqa: BLE001 - the watcher must never crash the process
                error = f"{type(exc).__name__}: {exc}"
            finally:
                with self._stream_lock:
                    stream, self._stream = self._stream, None
                _close_quietly(stream)
                _close_quietly(client)
            if self._stop.is_set():
                break
            if connected_at is not None and time.monotonic() - connected_at >= self._backoff_max:
                backoff = self._backoff_min
            log.warning(
                "docker event stream lost; reconnecting",
                extra={"source": "docker", "err": error, "retry_in_seconds": backoff},
            )
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self._backoff_max)

    def _notify(self, reason: str) -> None:
        try:
            self._on_event(reason)
        except Exception as exc:  # noqa: BLE001
            log.warning("early check request failed", extra={"err": str(exc)})


def _close_quietly(obj: Any) -> None:
    close = getattr(obj, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:  # noqa: BLE001
        pass
