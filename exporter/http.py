"""The HTTP endpoints: `/` (landing page), the telemetry path (`/metrics`), `/healthz`.

A WSGI app served by wsgiref with one thread per request. The metrics endpoint is
prometheus_client's own WSGI app (content negotiation, gzip, `name[]` filters); the rest is ours.

- `/`         HTML: version, the last check's time and up, links to the metrics and /healthz.
- `/metrics`  the registry (path set by --web.telemetry-path).
- `/healthz`  200 "ok" while the scheduler runs and a check started within 3 intervals +
              timeout; else 503 with a one-line reason.
- anything else 404.

Listen addresses: `host:port`, `:port` (every address: IPv6 and IPv4 on one dual-stack socket
where the host has IPv6, else IPv4 only) and `[v6addr]:port`. `make_server` raises `BindError`
with a one-line message when the address cannot be bound.
"""

from __future__ import annotations

import html
import logging
import socket
import socketserver
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import make_wsgi_app
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.config import ListenAddress
from exporter.latest import Latest

log = logging.getLogger(__name__)

HealthFn = Callable[[], tuple[bool, str]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class BindError(Exception):
    """The listen address could not be bound (message is one line, fit for the user)."""


def make_app(
    registry: Collector,
    *,
    latest: Latest,
    health: HealthFn,
    telemetry_path: str = "/metrics",
    version: str = __version__,
) -> WSGIApp:
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        if path == telemetry_path:
            environ = dict(environ, PATH_INFO="/metrics")  # not /favicon.ico to the metrics app
            return metrics_app(environ, start_response)
        if method not in ("GET", "HEAD"):
            return _reply(
                start_response,
                "405 Method Not Allowed",
                "method not allowed\n",
                extra=[("Allow", "GET, HEAD")],
            )
        if path == "/":
            page = _landing_page(latest, telemetry_path, version)
            return _reply(start_response, "200 OK", page, content_type="text/html; charset=utf-8")
        if path == "/healthz":
            try:
                ok, reason = health()
            except Exception as exc:  # noqa: BLE001 - a health probe must answer
                ok, reason = False, f"health check failed: {exc}"
            reason = " ".join(str(reason).split()) or ("ok" if ok else "unhealthy")
            status = "200 OK" if ok else "503 Service Unavailable"
            return _reply(start_response, status, reason + "\n")
        return _reply(start_response, "404 Not Found", "not found\n")

    return app


def _reply(
    start_response: Callable[..., Any],
    status: str,
    body: str,
    *,
    content_type: str = "text/plain; charset=utf-8",
    extra: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    data = body.encode("utf-8")
    headers = [("Content-Type", content_type), ("Content-Length", str(len(data)))]
    start_response(status, headers + (extra or []))
    return [data]


def _landing_page(latest: Latest, telemetry_path: str, version: str) -> str:
    report = latest.snapshot().report
    if report is None:
        last = "no check has finished yet"
    else:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report.started))
        state = "up" if report.up else "down"
        if report.evaluated:
            drift = "drift: yes" if report.drift else "drift: no"
        else:
            drift = "not evaluated"
        last = f"{when}, {state}, {drift}"
    path = html.escape(telemetry_path, quote=True)
    return (
        '<!DOCTYPE html>\n<html>\n<head><meta charset="utf-8">'
        "<title>Docker NetPolicy Exporter</title></head>\n<body>\n"
        "<h1>Docker NetPolicy Exporter</h1>\n"
        f"<p>Version {html.escape(version)}</p>\n"
        f"<p>Last check: {html.escape(last)}</p>\n"
        f'<ul>\n<li><a href="{path}">Metrics</a></li>\n'
        '<li><a href="/healthz">Health</a></li>\n</ul>\n'
        "</body>\n</html>\n"
    )


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("http request", extra={"client": self.address_string(), "req": format % args})


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    dual_stack = False

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.dual_stack:
            try:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except OSError:
                pass
        # HTTPServer.server_bind would resolve the host's FQDN (a DNS lookup); skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host) or "localhost"
        self.server_port = int(port)
        self.setup_environ()


class _Server4(_Server):
    address_family = socket.AF_INET


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Server6Dual(_Server6):
    dual_stack = True


def make_server(address: ListenAddress, app: WSGIApp) -> WSGIServer:
    """Bind and return the server (not yet serving); BindError when the address is unusable."""
    attempts: list[tuple[type[_Server], tuple[Any, ...]]] = []
    if address.host == "":
        if socket.has_ipv6:
            attempts.append((_Server6Dual, ("::", address.port)))
        attempts.append((_Server4, ("0.0.0.0", address.port)))
    else:
        try:
            infos = socket.getaddrinfo(
                address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except OSError as exc:
            raise BindError(f"cannot resolve listen address {address}: {_strerror(exc)}") from None
        for family, _, _, _, sockaddr in infos:
            server_class: type[_Server] = _Server6 if family == socket.AF_INET6 else _Server4
            attempts.append((server_class, tuple(sockaddr)))
    error: OSError | None = None
    for cls, sockaddr in attempts:
        try:
            bind_to: Any = sockaddr[:2] if cls.address_family == socket.AF_INET else sockaddr
            server = cls(bind_to, _QuietHandler)
        except OSError as exc:
            error = exc
            continue
        server.set_app(app)
        return server
    reason = _strerror(error) if error else "no usable address"
    raise BindError(f"cannot listen on {address}: {reason}")


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)


def bound_port(server: WSGIServer) -> int:
    return int(server.server_address[1])
