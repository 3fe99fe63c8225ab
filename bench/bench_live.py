"""The live bench: a lab dockerd (tests/lab.py, its own network namespace, --icc=false) with N
real containers, and the exporter's `serve` against it, measured from outside.

    sudo python3 bench/bench_host.py --live 100

- N containers on the default bridge, each exposing 80/tcp; every odd one runs
  `--link c<i-1>:dep` (so N/2 links, 2 rules each).
- cold check: the first check after `serve` started (empty inspect cache); warm: the median of the
  next --repeat periodic checks (default flags: every 15 s), as `serve` reports them in
  docker_netpolicy_check_duration_seconds, with each source's share
  (docker_netpolicy_source_duration_seconds).
- scrape: 200 GETs of /metrics from inside the namespace, median and p99.
- RSS: the `serve` process's VmRSS after the scrapes.
- event to metric: `docker run --link c0:dep` of a new container, then `docker rm -f` of it;
  from the time dockerd stamps on the start (destroy) event to the first /metrics that shows
  (no longer shows) the new container's link_flow_allowed series, polled every 20 ms.
"""

from __future__ import annotations

import json
import re
import secrets
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.lab import IMAGE, DockerLab  # noqa: E402

INTERVAL = 15.0  # the default --check.interval
SCRAPES = 200
POLL_SECONDS = 0.02
# pid 1 of every bench container: exits on SIGTERM at once, else sleeps.
SLEEPER = ["sh", "-c", 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done']
_METRIC = re.compile(r"^(?P<name>docker_netpolicy_[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<v>\S+)$")

# Runs inside the lab namespace: GET /metrics COUNT times, print the latencies (seconds).
_SCRAPER = r"""
import json, sys, time, urllib.request
url, count = sys.argv[1], int(sys.argv[2])
times = []
for _ in range(count):
    began = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as reply:
        reply.read()
    times.append(time.perf_counter() - began)
print(json.dumps(times))
"""

# Runs inside the lab namespace: poll /metrics until PATTERN is present (or absent, "gone"), print
# the wall time it was first seen so.
_WATCHER = r"""
import re, sys, time, urllib.request
url, want, poll, limit = sys.argv[1], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
pattern = re.compile(sys.argv[2], re.M)
print("ready", flush=True)
end = time.time() + limit
while time.time() < end:
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    seen = time.time()
    if bool(pattern.search(text)) == (want == "present"):
        print(seen, flush=True)
        sys.exit(0)
    time.sleep(poll)
sys.exit(1)
"""


@dataclass(frozen=True)
class LiveResult:
    containers: int
    links: int
    start_seconds: float  # to start the containers
    cold_check_seconds: float
    warm_check_seconds: float
    warm_sources: dict[str, float]  # median seconds per source in the warm checks
    scrape_median_ms: float
    scrape_p99_ms: float
    serve_rss_mib: float
    start_to_metric_seconds: float
    destroy_to_metric_seconds: float
    up: float  # docker_netpolicy_up after the warm checks


def _metrics(lab: DockerLab, url: str) -> dict[tuple[str, str], float]:
    values = {}
    for line in lab.http_get(url).splitlines():
        match = _METRIC.match(line)
        if match:
            values[(match["name"], match["labels"] or "")] = float(match["v"])
    return values


def _start_containers(lab: DockerLab, count: int) -> int:
    """Children (even) first, then their parents (odd, --link): a link needs a running child."""

    def run(index: int) -> None:
        link = ["--link", f"c{index - 1}:dep"] if index % 2 else []
        args = ["run", "-d", "--name", f"c{index}", "--expose", "80/tcp", *link, IMAGE, *SLEEPER]
        lab.docker(*args, timeout=300)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(run, range(0, count, 2)))
        list(pool.map(run, range(1, count, 2)))
    return count // 2


def _check_durations(lab: DockerLab, url: str, count: int) -> list[dict[tuple[str, str], float]]:
    """The metrics after each of the next `count` checks (one sample per check)."""
    samples: list[dict[tuple[str, str], float]] = []
    last = None
    deadline = time.monotonic() + (count + 2) * INTERVAL * 4 + 120
    while len(samples) < count and time.monotonic() < deadline:
        values = _metrics(lab, url)
        stamp = values.get(("docker_netpolicy_last_check_timestamp_seconds", ""))
        if stamp is not None and stamp != last:
            last = stamp
            samples.append(values)
        time.sleep(0.5)
    if len(samples) < count:
        raise RuntimeError(f"only {len(samples)} of {count} checks finished in time")
    return samples


def _source_seconds(values: dict[tuple[str, str], float]) -> dict[str, float]:
    found = {}
    for (name, labels), value in values.items():
        if name == "docker_netpolicy_source_duration_seconds":
            found[labels.split('"')[1]] = value
    return found


def _scrape_latency(lab: DockerLab, url: str) -> tuple[float, float]:
    times = json.loads(lab.ns([sys.executable, "-c", _SCRAPER, url, str(SCRAPES)]).stdout)
    times.sort()
    return statistics.median(times) * 1000, times[int(len(times) * 0.99) - 1] * 1000


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _event_time(lab: DockerLab, name: str, action: str, since: float) -> float:
    out = lab.docker(
        "events",
        "--since",
        f"{since:.3f}",
        "--until",
        f"{time.time():.3f}",
        "--filter",
        f"container={name}",
        "--filter",
        f"event={action}",
        "--format",
        "{{.TimeNano}}",
    ).stdout.split()
    if not out:
        raise RuntimeError(f"no {action} event for {name}")
    return int(out[0]) / 1e9


def _watch(lab: DockerLab, url: str, pattern: str, want: str) -> subprocess.Popen[str]:
    argv = [
        "nsenter",
        f"--net={lab.netns_path}",
        sys.executable,
        "-c",
        _WATCHER,
        url,
        pattern,
        want,
        str(POLL_SECONDS),
        "120",
    ]
    watcher = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert watcher.stdout is not None
    watcher.stdout.readline()  # "ready"
    return watcher


def _seen(watcher: subprocess.Popen[str]) -> float:
    out, _ = watcher.communicate(timeout=150)
    if watcher.returncode != 0:
        raise RuntimeError("the metric did not change within 120 s")
    return float(out.strip())


def _event_latency(lab: DockerLab, url: str) -> tuple[float, float]:
    """Seconds from the start (destroy) event of a new linked container to /metrics showing
    (no longer showing) its link flow."""
    name = f"probe{secrets.token_hex(3)}"
    pattern = rf'^docker_netpolicy_link_flow_allowed\{{[^}}]*source="{name}"'
    since = time.time() - 1
    watcher = _watch(lab, url, pattern, "present")
    lab.docker("run", "-d", "--name", name, "--link", "c0:dep", IMAGE, *SLEEPER)
    started = _event_time(lab, name, "start", since)
    appeared = _seen(watcher) - started
    watcher = _watch(lab, url, pattern, "absent")
    lab.docker("rm", "-f", name)
    destroyed = _event_time(lab, name, "destroy", since)
    return appeared, _seen(watcher) - destroyed


def measure_live(count: int, repeat: int) -> LiveResult:
    with DockerLab(prefix="dnpbench") as lab:
        lab.start(icc=False, backend="nft")
        began = time.monotonic()
        links = _start_containers(lab, count)
        start_seconds = time.monotonic() - began
        port = lab.free_port()
        url = f"http://127.0.0.1:{port}/metrics"
        # The exporter's defaults (interval 15 s, timeout 10 s, debounce 2 s): what users get.
        serve = lab.exporter_popen("serve", "--web.listen-address", f"127.0.0.1:{port}")
        _wait_listening(lab, url)
        cold, *warm = _check_durations(lab, url, 1 + repeat)
        duration = "docker_netpolicy_check_duration_seconds", ""
        scrape_median, scrape_p99 = _scrape_latency(lab, url)
        rss = _rss_mib(serve.pid)
        appeared, gone = _event_latency(lab, url)
        sources = {
            name: statistics.median(_source_seconds(s)[name] for s in warm)
            for name in _source_seconds(warm[0])
        }
        _remove_containers(lab, count)
        return LiveResult(
            containers=count,
            links=links,
            start_seconds=start_seconds,
            cold_check_seconds=cold[duration],
            warm_check_seconds=statistics.median(s[duration] for s in warm),
            warm_sources=sources,
            scrape_median_ms=scrape_median,
            scrape_p99_ms=scrape_p99,
            serve_rss_mib=rss,
            start_to_metric_seconds=appeared,
            destroy_to_metric_seconds=gone,
            up=warm[-1].get(("docker_netpolicy_up", ""), 0.0),
        )


def _remove_containers(lab: DockerLab, count: int) -> None:
    """In batches with a long timeout: the lab's teardown gives one `docker rm -f` of every
    container 60 s, too short for a thousand."""
    names = [f"c{index}" for index in range(count)]
    for start in range(0, count, 100):
        lab.docker("rm", "-f", *names[start : start + 100], timeout=600)


def _wait_listening(lab: DockerLab, url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.ns([sys.executable, "-c", _SCRAPER, url, "1"], check=False).returncode == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"serve did not answer on {url} within {timeout:g} s")


def markdown(result: LiveResult) -> str:
    sources = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in result.warm_sources.items())
    rows = [
        ("containers (links)", f"{result.containers:,} ({result.links:,})"),
        ("containers started in", f"{result.start_seconds:.0f} s"),
        ("cold check", f"{result.cold_check_seconds:.3f} s"),
        ("warm check (median)", f"{result.warm_check_seconds:.3f} s"),
        ("warm check per source", sources),
        ("scrape median / p99", f"{result.scrape_median_ms:.1f} / {result.scrape_p99_ms:.1f} ms"),
        ("serve RSS", f"{result.serve_rss_mib:.0f} MiB"),
        ("up", f"{result.up:g}"),
        ("docker run -> link flow in /metrics", f"{result.start_to_metric_seconds:.2f} s"),
        ("docker rm -> link flow gone", f"{result.destroy_to_metric_seconds:.2f} s"),
    ]
    return "| live | |\n|---|---:|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


def run_live(count: int, repeat: int, as_json: bool) -> int:
    """The live table (markdown), or its figures as JSON."""
    result = measure_live(count, repeat)
    if as_json:
        print(json.dumps(asdict(result), indent=2))
    else:
        print(markdown(result), end="")
    return 0
