"""HTTP endpoints on an ephemeral port: landing page, metrics path, health, 404, bind errors;
deadlines on slow clients, the connection cap, the exposition cache."""

from __future__ import annotations

import gzip
import http.client
import resource
import select
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from exporter.collector import NetpolicyCollector
from exporter.config import ListenAddress, parse_listen_address
from exporter.http import FD_RESERVE, BindError, make_app, make_server
from exporter.latest import Latest
from exporter.report import Report, SourceStatus


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return (
                response.status,
                response.headers.get("Content-Type", ""),
                response.read().decode(),
            )
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


class CountingCollector:
    """Yields nothing; counts how often the registry is rendered (optionally slowly)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.renders = 0
        self.delay = delay

    def collect(self):
        self.renders += 1
        time.sleep(self.delay)
        return []


@pytest.fixture
def serve():
    servers = []

    def start(
        health=lambda: (True, "ok"),
        telemetry_path="/metrics",
        report=None,
        address=None,
        latest=None,
        extra_collector=None,
        **server_options,
    ):
        latest = latest or Latest()
        if report is not None:
            latest.publish(report)
        # Without support_collectors_without_names a name[] filter finds no family: our
        # collector describes nothing (see NetpolicyCollector.describe).
        registry = CollectorRegistry(auto_describe=False, support_collectors_without_names=True)
        registry.register(NetpolicyCollector(latest, version="9.9.9"))
        if extra_collector is not None:
            registry.register(extra_collector)
        app = make_app(
            registry, latest=latest, health=health, telemetry_path=telemetry_path, version="9.9.9"
        )
        server = make_server(address or ListenAddress("127.0.0.1", 0), app, **server_options)
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        servers.append(server)
        host = "[::1]" if server.address_family == socket.AF_INET6 else "127.0.0.1"
        return f"http://{host}:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_endpoints(serve):
    report = Report(started=1700000000.0, duration_seconds=0.2, up=True, evaluated=True)
    base = serve(telemetry_path="/custom", report=report)

    status, ctype, body = get(base + "/")
    assert status == 200 and ctype.startswith("text/html")
    assert 'href="/custom"' in body and "9.9.9" in body
    assert "2023-11-14 22:13:20 UTC, up, drift: no" in body

    status, ctype, body = get(base + "/custom")
    assert status == 200 and ctype.startswith("text/plain")
    assert "docker_netpolicy_up 1.0" in body
    assert 'docker_netpolicy_build_info{version="9.9.9"} 1.0' in body

    assert get(base + "/metrics")[0] == 404
    assert get(base + "/nope")[0] == 404
    assert get(base + "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")


def test_landing_page_before_first_check(serve):
    status, _, body = get(serve() + "/")
    assert status == 200 and "no check has finished yet" in body


def test_healthz_unhealthy_is_503_with_one_line(serve):
    base = serve(health=lambda: (False, "no check started in the last 70s\n(limit 55s)"))
    status, _, body = get(base + "/healthz")
    assert status == 503
    assert body == "no check started in the last 70s (limit 55s)\n"


def test_healthz_survives_a_failing_probe(serve):
    def broken():
        raise RuntimeError("boom")

    status, _, body = get(serve(health=broken) + "/healthz")
    assert status == 503 and body == "health check failed: boom\n"


def test_bind_failure_is_one_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(BindError) as info:
            make_server(
                ListenAddress("127.0.0.1", port),
                make_app(CollectorRegistry(), latest=Latest(), health=lambda: (True, "ok")),
            )
    message = str(info.value)
    assert message.startswith(f"cannot listen on 127.0.0.1:{port}: ")
    assert "\n" not in message


def test_all_addresses_and_ipv6(serve):
    base = serve(address=parse_listen_address(":0"))
    assert get(base + "/healthz")[0] == 200
    if socket.has_ipv6:
        try:
            with socket.socket(socket.AF_INET6) as probe:
                probe.bind(("::1", 0))
        except OSError:
            return  # no IPv6 loopback in this sandbox
        base = serve(address=parse_listen_address("[::1]:0"))
        assert base.startswith("http://[::1]:")
        assert get(base + "/healthz")[0] == 200


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def wait_closed(sock: socket.socket, within: float) -> float | None:
    """Seconds until the server closes `sock` (EOF or reset), None if still open after `within`."""
    began = time.monotonic()
    sock.settimeout(within)
    try:
        while sock.recv(1024):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return None
    return time.monotonic() - began


def test_silent_client_is_disconnected_after_the_header_deadline(serve):
    port = port_of(serve(read_header_timeout=0.3))
    with socket.create_connection(("127.0.0.1", port)) as silent:
        closed_after = wait_closed(silent, within=3.0)
    assert closed_after is not None and 0.2 <= closed_after < 1.5


def test_trickling_client_gets_one_deadline_for_the_whole_header(serve):
    # One byte every 50 ms: a timeout per read (300 ms) would never fire; the total one must.
    port = port_of(serve(read_header_timeout=0.3))
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200
    began = time.monotonic()
    closed_after = None
    with socket.create_connection(("127.0.0.1", port)) as slow:
        for byte in request:
            try:
                slow.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - began
                break
            if select.select([slow], [], [], 0.05)[0]:
                assert slow.recv(1024) == b"", "a request that never ended was answered"
                closed_after = time.monotonic() - began
                break
    assert closed_after is not None, "still connected after trickling for 10 s"
    assert closed_after < 1.5


def test_request_split_over_many_packets_within_the_deadline_is_served(serve):
    port = port_of(serve(read_header_timeout=2.0))
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        for start in range(0, len(request), 4):
            client.sendall(request[start : start + 4])
            time.sleep(0.01)
        reply = b""
        while chunk := client.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.0 200 OK") and reply.endswith(b"\r\n\r\nok\n")


def test_malformed_request_gets_an_error_and_the_server_keeps_serving(serve):
    base = serve()
    with socket.create_connection(("127.0.0.1", port_of(base)), timeout=5) as client:
        client.sendall(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n")
        reply = b""
        while chunk := client.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.0 431 ")
    assert get(base + "/healthz")[0] == 200


def test_at_the_connection_cap_new_connections_wait_until_a_slot_frees(serve):
    port = port_of(serve(max_connections=2, read_header_timeout=1.0))
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        time.sleep(0.1)  # both accepted: the cap is reached
        began = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        waited = time.monotonic() - began
        assert (response.status, response.read()) == (200, b"ok\n")
        conn.close()
    finally:
        for sock in idle:
            sock.close()
    # Served only once the idle ones expired (1 s after they connected), never refused.
    assert 0.7 <= waited < 3.0


def test_below_the_cap_a_scrape_is_not_held_up_by_idle_connections(serve):
    port = port_of(serve(max_connections=4, read_header_timeout=2.0))
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        began = time.monotonic()
        status, _, _ = get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and time.monotonic() - began < 0.5
    finally:
        for sock in idle:
            sock.close()


def report_at(started: float, *sources: SourceStatus) -> Report:
    return Report(started=started, duration_seconds=0.1, sources=sources)


def test_exposition_is_rendered_once_per_view_and_encoding(serve):
    latest = Latest()
    latest.publish(report_at(1700000000.0))
    renders = CountingCollector()
    base = serve(latest=latest, extra_collector=renders)

    bodies = {get(base + "/metrics")[2] for _ in range(5)}
    assert len(bodies) == 1 and renders.renders == 1
    assert "docker_netpolicy_checks_total 1.0" in bodies.pop()

    latest.publish(report_at(1700000060.0))
    status, _, body = get(base + "/metrics")
    assert status == 200 and "docker_netpolicy_checks_total 2.0" in body
    assert get(base + "/metrics")[2] == body and renders.renders == 2


def test_gzip_and_openmetrics_are_cached_apart_and_negotiated_as_prometheus_client_does(serve):
    latest = Latest()
    latest.publish(report_at(1700000000.0))
    renders = CountingCollector()
    port = port_of(serve(latest=latest, extra_collector=renders))
    plain = get(f"http://127.0.0.1:{port}/metrics")[2]

    def raw_get(headers: dict[str, str]) -> tuple[str, str | None, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/metrics", headers=headers)
        response = conn.getresponse()
        body = response.read()
        conn.close()
        return response.getheader("Content-Type"), response.getheader("Content-Encoding"), body

    for _ in range(3):
        ctype, encoding, body = raw_get({"Accept-Encoding": "gzip, deflate"})
        assert encoding == "gzip" and ctype.startswith("text/plain")
        assert gzip.decompress(body).decode() == plain
    for _ in range(3):
        ctype, encoding, body = raw_get({"Accept": "application/openmetrics-text; version=1.0.0"})
        assert encoding is None and ctype.startswith("application/openmetrics-text")
        assert body.endswith(b"# EOF\n") and b"docker_netpolicy_checks_total 1.0" in body
    assert renders.renders == 3  # plain, gzip, OpenMetrics: once each


def test_name_filter_bypasses_the_cache(serve):
    renders = CountingCollector()
    base = serve(report=report_at(1700000000.0), extra_collector=renders)
    get(base + "/metrics")
    status, _, body = get(base + "/metrics?name[]=docker_netpolicy_checks_total")
    assert status == 200 and "docker_netpolicy_checks_total" in body
    assert "docker_netpolicy_up" not in body and renders.renders == 2


def test_concurrent_scrapes_after_a_publish_cost_one_render(serve):
    latest = Latest()
    renders = CountingCollector(delay=0.05)  # slow enough that every scrape arrives mid-render
    base = serve(latest=latest, extra_collector=renders)
    latest.publish(report_at(1700000000.0))
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(get(base + "/metrics")[2]))
        for _ in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 20 and len(set(results)) == 1
    assert renders.renders == 1


def test_landing_page_keeps_each_sources_last_error_after_it_recovers(serve):
    latest = Latest()
    latest.publish(
        report_at(
            1700000000.0,
            SourceStatus("docker", True, 0.1),
            SourceStatus("ebtables", False, 0.1, "ebtables: <b>exit 1</b> & no table"),
            SourceStatus("ipset", False, 0.1, "ipset: not installed"),
        )
    )
    latest.publish(
        report_at(
            1700000060.0, SourceStatus("docker", True, 0.1), SourceStatus("ebtables", True, 0.1)
        )
    )
    status, _, page = get(serve(latest=latest) + "/")
    assert status == 200
    rows = [line for line in page.splitlines() if line.startswith("<tr><td>")]
    assert rows == [
        "<tr><td>docker</td><td>up</td><td>none</td><td></td></tr>",
        "<tr><td>ebtables</td><td>up</td>"
        "<td>ebtables: &lt;b&gt;exit 1&lt;/b&gt; &amp; no table</td>"
        "<td>2023-11-14 22:13:20 UTC</td></tr>",
        "<tr><td>ipset</td><td>not read</td><td>ipset: not installed</td>"
        "<td>2023-11-14 22:13:20 UTC</td></tr>",
    ]


def test_landing_page_shows_the_newest_error_of_a_source(serve):
    latest = Latest()
    for started, error in ((1700000000.0, "old failure"), (1700000060.0, "new failure")):
        latest.publish(report_at(started, SourceStatus("docker", False, 0.1, error)))
    page = get(serve(latest=latest) + "/")[2]
    assert "<tr><td>docker</td><td>down</td><td>new failure</td>" in page
    assert "2023-11-14 22:14:20 UTC" in page and "old failure" not in page


def test_connection_cap_leaves_descriptors_for_the_checks(caplog):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (400, hard))
    try:
        server = make_server(
            ListenAddress("127.0.0.1", 0),
            make_app(CollectorRegistry(), latest=Latest(), health=lambda: (True, "ok")),
            max_connections=512,
        )
        server.server_close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert server.max_connections == 400 - FD_RESERVE
    assert "serving at most 272 connections, not 512" in caplog.text
