"""HTTP endpoints on an ephemeral port: landing page, metrics path, health, 404, bind errors."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from exporter.collector import NetpolicyCollector
from exporter.config import ListenAddress, parse_listen_address
from exporter.http import BindError, make_app, make_server
from exporter.latest import Latest
from exporter.report import Report


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return (
                response.status,
                response.headers.get("Content-Type", ""),
                response.read().decode(),
            )
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


@pytest.fixture
def serve():
    servers = []

    def start(health=lambda: (True, "ok"), telemetry_path="/metrics", report=None, address=None):
        latest = Latest()
        if report is not None:
            latest.publish(report)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(NetpolicyCollector(latest, version="9.9.9"))
        app = make_app(
            registry, latest=latest, health=health, telemetry_path=telemetry_path, version="9.9.9"
        )
        server = make_server(address or ListenAddress("127.0.0.1", 0), app)
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
