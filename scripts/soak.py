#!/usr/bin/env python3
"""Soak: thousands of checks with churn, through the scheduler, Latest and the scraped HTTP app.

Not run in CI (minutes). Everything it talks to is fake and private: a fake Docker API on a unix
socket in a tmp directory (containers stop and start every few checks, with Docker events), fake
firewall tools printing the recorded fixtures, a fake /proc and /sys; the HTTP app listens on
127.0.0.1 on a free port and is scraped all along. Every --report-every checks it prints the
checks done, RSS, threads, open fds and child processes; at the end the growth since warm-up.

    PYTHONPATH=$PWD python3 scripts/soak.py --checks 3000 --rate 5 --report-every 250

Exit status 1 when a check failed or the process grew (see --max-rss-growth-kb), else 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# Run from the repo root (PYTHONPATH=$PWD) or from anywhere: the repo is the script's parent.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry  # noqa: E402

from exporter.check import run_check  # noqa: E402
from exporter.collector import NetpolicyCollector  # noqa: E402
from exporter.config import CheckConfig, ListenAddress  # noqa: E402
from exporter.http import bound_port, make_app, make_server  # noqa: E402
from exporter.latest import Latest  # noqa: E402
from exporter.scheduler import CheckScheduler, DockerEventWatcher  # noqa: E402
from tests.fakes.docker_api import DockerScenario, FakeDockerAPI, event  # noqa: E402
from tests.fakes.host import FakeHost  # noqa: E402
from tests.fakes.tools import MIXED  # noqa: E402

# Containers that come and go; each takes its link names (and so its links) with it.
CHURN = ("loner", "client2", "web", "worker")


@dataclass(frozen=True)
class Sample:
    checks: int
    rss_kb: int
    threads: int
    fds: int
    children: int


def sample(checks: int) -> Sample:
    status = Path("/proc/self/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    children = 0
    for task in os.listdir("/proc/self/task"):
        try:
            children += len(Path(f"/proc/self/task/{task}/children").read_text().split())
        except OSError:
            pass  # the thread ended meanwhile
    return Sample(
        checks=checks,
        rss_kb=int(fields["VmRSS"].split()[0]),
        threads=int(fields["Threads"]),
        fds=len(os.listdir("/proc/self/fd")),
        children=children,
    )


class Scraper(threading.Thread):
    def __init__(self, url: str, interval: float) -> None:
        super().__init__(name="scraper", daemon=True)
        self.url = url
        self.interval = interval
        self.done = 0
        self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as reply:
                    reply.read()
                self.done += 1
            except OSError:
                self.failed += 1


class Churn:
    """Stops or starts one container every `every` checks, and tells the event stream."""

    def __init__(self, scenario: DockerScenario, api: FakeDockerAPI, every: int) -> None:
        self.scenario = scenario
        self.api = api
        self.every = every
        self.stopped: dict[str, dict] = {}
        self.steps = 0

    def maybe(self, checks: int) -> None:
        if self.every <= 0 or checks < (self.steps + 1) * self.every:
            return
        name = CHURN[self.steps % len(CHURN)]
        if name in self.stopped:
            entry = self.stopped.pop(name)
            self.scenario.start_container(entry)
            self.api.emit(event("container", "start", entry["Id"]))
        else:
            entry = self.scenario.stop_container(name)
            self.stopped[name] = entry
            self.api.emit(event("container", "die", entry["Id"]))
        self.steps += 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=3000, help="checks to run (default 3000)")
    parser.add_argument("--rate", type=float, default=5.0, help="checks a second (default 5)")
    parser.add_argument("--report-every", type=int, default=250, help="print every N checks")
    parser.add_argument("--churn-every", type=int, default=5, help="churn every N checks")
    parser.add_argument("--scrape-interval", type=float, default=0.2, help="seconds (0.2)")
    parser.add_argument("--max-rss-growth-kb", type=int, default=20_000)
    return parser.parse_args(argv)


def show(label: str, s: Sample, extra: str = "") -> None:
    print(
        f"{label:>8} checks={s.checks:<6} rss_kb={s.rss_kb:<7} threads={s.threads:<3} "
        f"fds={s.fds:<4} children={s.children:<2} {extra}",
        flush=True,
    )


def soak(args: argparse.Namespace, workdir: Path) -> int:
    host = FakeHost.make(workdir)
    scenario = DockerScenario.from_fixture(MIXED)
    with FakeDockerAPI(scenario, record=False) as api:
        sources = host.sources(api.base_url, docker_timeout=2.0, timeout=2.0)
        config = CheckConfig(timeout=5.0)
        latest = Latest()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(NetpolicyCollector(latest))
        scheduler = CheckScheduler(
            lambda progress: run_check(sources, config, None, progress)[0],
            latest,
            interval=1.0 / args.rate,
            timeout=5.0,
            debounce=0.05,
        )
        app = make_app(registry, latest=latest, health=scheduler.health)
        server = make_server(ListenAddress("127.0.0.1", 0), app)
        http = threading.Thread(target=server.serve_forever, args=(0.2,), daemon=True)
        watcher = DockerEventWatcher(
            scheduler.trigger, docker_host=api.base_url, docker_timeout=2.0
        )
        scraper = Scraper(f"http://127.0.0.1:{bound_port(server)}/metrics", args.scrape_interval)
        churn = Churn(scenario, api, args.churn_every)
        failed_checks = 0
        seen = 0
        start = sample(0)
        show("start", start)
        warm: Sample | None = None
        began = time.monotonic()
        try:
            http.start()
            scheduler.start()
            watcher.start()
            scraper.start()
            next_report = args.report_every
            while seen < args.checks:
                time.sleep(0.05)
                view = latest.snapshot()
                if view.checks_total == seen:
                    continue
                seen = view.checks_total
                if view.report is not None and not view.report.up:
                    failed_checks += 1
                    print(f"check failed: {view.report.errors}", flush=True)
                churn.maybe(seen)
                if seen >= next_report:
                    now = sample(seen)
                    warm = warm or now
                    findings = len(view.report.findings) if view.report else 0
                    show(
                        "sample",
                        now,
                        f"scrapes={scraper.done} scrape_errors={scraper.failed} "
                        f"churn={churn.steps} findings={findings} "
                        f"elapsed={time.monotonic() - began:.0f}s",
                    )
                    next_report += args.report_every
        finally:
            scraper.stop.set()
            watcher.stop()
            scheduler.shutdown()
            server.shutdown()
            server.server_close()
        end = sample(seen)
    show("end", end)
    base = warm or start
    growth = (
        f"rss_kb={end.rss_kb - base.rss_kb:+} threads={end.threads - base.threads:+} "
        f"fds={end.fds - base.fds:+} children={end.children - base.children:+}"
    )
    print(f"growth since the first sample (checks={base.checks}): {growth}")
    print(
        f"checks={seen} failed_checks={failed_checks} scrapes={scraper.done} "
        f"scrape_errors={scraper.failed} docker_requests={api.request_count} "
        f"methods={sorted(api.methods())} tool_runs={len(host.tools.calls())} "
        f"non_read_tool_runs={len(host.tools.writes())} elapsed={time.monotonic() - began:.0f}s"
    )
    grew = end.rss_kb - base.rss_kb > args.max_rss_growth_kb or end.fds > base.fds + 5
    bad = failed_checks or scraper.failed or api.methods() != {"GET"} or host.tools.writes()
    return 1 if grew or bad else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # APScheduler warns on every tick a running check makes it skip; at this rate that is noise.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix=f"soak-{os.getpid()}-") as workdir:
        return soak(args, Path(workdir))


if __name__ == "__main__":
    sys.exit(main())
