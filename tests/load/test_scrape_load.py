"""Load: 200 concurrent scrapes while checks publish, with 300 idle connections held open.

The real server on 127.0.0.1:0, the real collector over a Latest holding a report decided from the
tests/fixtures/sources snapshot (multiplied over networks, as on a busy host). A publisher thread
swaps in a new report every PUBLISH_EVERY seconds while the clients scrape, so the render cache is
exercised across publishes. Idle connections (silent ones, and ones that sent half a request line)
must be closed by the server after its header deadline. Figures are printed (`pytest -s`).
"""

from __future__ import annotations

import dataclasses
import gzip
import http.client
import socket
import statistics
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from exporter.check import run_check
from exporter.collector import NetpolicyCollector
from exporter.config import CheckConfig, ExporterConfig, ListenAddress
from exporter.http import make_app, make_server
from exporter.latest import Latest
from exporter.report import Report
from exporter.sources import build_sources

SNAPSHOT = Path(__file__).resolve().parents[1] / "fixtures" / "sources" / "docker20.10-nft-mixed"
CLIENTS = 200
SCRAPES_PER_CLIENT = 5
IDLE_CONNECTIONS = 300
# Copies of the snapshot's networks: a host with a few dozen networks, ~100 kB of exposition.
NETWORK_COPIES = 40
PUBLISH_EVERY = 0.05
CLIENT_TIMEOUT = 5.0
# The server's default header deadline plus slack to notice the close.
IDLE_CLOSE_WITHIN = 15.0
P99_LIMIT = 1.0


def busy_host_report() -> Report:
    files = {path.name: path.read_text() for path in SNAPSHOT.iterdir()}
    sources = build_sources(ExporterConfig())
    report, _ = run_check(sources, CheckConfig(all_flows=True), files)
    assert report.evaluated and report.flows

    def copied(items, copy: int):
        return tuple(dataclasses.replace(item, network=f"{item.network}-{copy}") for item in items)

    networks = tuple(
        dataclasses.replace(network, name=f"{network.name}-{copy}")
        for copy in range(NETWORK_COPIES)
        for network in report.networks
    )
    return dataclasses.replace(
        report,
        networks=networks,
        findings=sum((copied(report.findings, c) for c in range(NETWORK_COPIES)), ()),
        flows=sum((copied(report.flows, c) for c in range(NETWORK_COPIES)), ()),
        flow_counts=sum((copied(report.flow_counts, c) for c in range(NETWORK_COPIES)), ()),
    )


class RenderCounter:
    """A collector that yields nothing and counts the registry's renders."""

    def __init__(self) -> None:
        self.renders = 0

    def collect(self) -> list:
        self.renders += 1
        return []


def publish_until(latest: Latest, report: Report, stop: threading.Event, published: list) -> None:
    while not stop.wait(PUBLISH_EVERY):
        latest.publish(dataclasses.replace(report, started=time.time()))
        published.append(1)


def scrape(port: int, headers: dict[str, str]) -> float:
    """One scrape on a fresh connection; its latency. Raises on anything but a whole exposition."""
    began = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    try:
        conn.request("GET", "/metrics", headers=headers)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise AssertionError(f"status {response.status}")
        if response.getheader("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if b"docker_netpolicy_up" not in body:
            raise AssertionError("exposition without docker_netpolicy_up")
    finally:
        conn.close()
    return time.perf_counter() - began


def client_headers(index: int) -> dict[str, str]:
    """A quarter ask for gzip (as Prometheus does), a quarter for OpenMetrics."""
    headers = {}
    if index % 4 == 0:
        headers["Accept-Encoding"] = "gzip"
    if index % 4 == 1:
        headers["Accept"] = "application/openmetrics-text; version=1.0.0"
    return headers


def open_idle(port: int, count: int) -> list[socket.socket]:
    """Half send nothing, half send a partial request line and stop (a stalled slow client)."""
    idle = []
    for index in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
        if index % 2:
            sock.sendall(b"GET /metrics HT")
        idle.append(sock)
    return idle


def closed_by_server(sock: socket.socket, deadline: float) -> bool:
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        while sock.recv(4096):
            pass  # an error reply (408) before the close is fine
        return True
    except ConnectionResetError:
        return True
    except OSError:
        return False


def test_scrapes_under_load_with_idle_connections_held_open():
    began = time.monotonic()
    latest = Latest()
    report = busy_host_report()
    latest.publish(report)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NetpolicyCollector(latest))
    counter = RenderCounter()
    registry.register(counter)
    app = make_app(registry, latest=latest, health=lambda: (True, "ok"))
    server = make_server(ListenAddress("127.0.0.1", 0), app)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    port = int(server.server_address[1])
    stop_publishing = threading.Event()
    published: list[int] = []
    publisher = threading.Thread(
        target=publish_until, args=(latest, report, stop_publishing, published)
    )
    latencies: list[float] = []
    errors: list[str] = []
    idle: list[socket.socket] = []
    try:
        idle = open_idle(port, IDLE_CONNECTIONS)
        start = threading.Barrier(CLIENTS + 1)

        def client(index: int) -> None:
            start.wait()
            for _ in range(SCRAPES_PER_CLIENT):
                try:
                    latencies.append(scrape(port, client_headers(index)))
                except Exception as exc:  # noqa: BLE001 - every failure is counted, not raised
                    errors.append(f"{type(exc).__name__}: {exc}")

        clients = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for thread in clients:
            thread.start()
        publisher.start()
        scrape_began = time.monotonic()
        start.wait()
        for thread in clients:
            thread.join()
        scrape_seconds = time.monotonic() - scrape_began
        stop_publishing.set()
        publisher.join()

        deadline = time.monotonic() + IDLE_CLOSE_WITHIN
        still_open = sum(not closed_by_server(sock, deadline) for sock in idle)
    finally:
        stop_publishing.set()
        for sock in idle:
            sock.close()
        server.shutdown()
        server.server_close()

    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    p50, p99 = statistics.median(latencies or [0.0]), quantiles[98]
    print(
        f"\nscrapes={len(latencies)} errors={len(errors)} p50={p50 * 1000:.1f}ms "
        f"p99={p99 * 1000:.1f}ms max={max(latencies or [0.0]) * 1000:.1f}ms "
        f"scrape_phase={scrape_seconds:.2f}s publishes={len(published)} "
        f"renders={counter.renders} idle_still_open={still_open}/{IDLE_CONNECTIONS} "
        f"total={time.monotonic() - began:.1f}s"
    )
    assert errors == [], errors[:5]
    assert p99 < P99_LIMIT
    assert still_open == 0
    # Three encodings in use (text, gzip text, OpenMetrics): one render each per report, two when
    # a publish lands mid-render; never one per scrape.
    assert counter.renders <= 2 * 3 * (len(published) + 1)
