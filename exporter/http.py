"""The HTTP endpoints: `/` (landing page), the telemetry path (`/metrics`), `/healthz`.

- `/`         HTML: version, the last check's time and up, a table of sources (state in the last
              check, last error and when it happened), links to the metrics and /healthz.
- `/metrics`  the registry (path set by --web.telemetry-path), rendered once per published report
              and encoding (see "Scrapes are cheap").
- `/healthz`  200 "ok" while the scheduler runs and a check started within 3 intervals +
              timeout; else 503 with a one-line reason.
- anything else 404.

Listen addresses: `host:port`, `:port` (every address: IPv6 and IPv4 on one dual-stack socket
where the host has IPv6, else IPv4 only) and `[v6addr]:port`. `make_server` raises `BindError`
with a one-line message when the address cannot be bound.

The server part, and why: the standard library's WSGIServer and request handler (request parsing,
the WSGI gateway) with our own accept loop and one thread per connection, bounded:

- at most `max_connections` connections are open; at the cap the loop stops accepting, so new
  connections wait in the kernel's listen backlog (`listen_backlog`) and take no descriptor of
  ours (Prometheus' --web.max-connections works the same way). Answering 503 instead would still
  accept, and so spend a descriptor and a reply on each connection of a flood, and would fail a
  scrape that waiting would have served once an idle connection expires.
- the request line and headers must arrive within `read_header_timeout` in total (like Go's
  ReadHeaderTimeout: one deadline, not a timeout per read, so a client trickling a byte at a time
  gets no more time); the response must be sent within `write_timeout`. One request per
  connection (HTTP/1.0 replies), so no connection idles between requests.
- the cap is lowered to leave `FD_RESERVE` descriptors of RLIMIT_NOFILE to the checks.

waitress (connection_limit, channel_timeout) cannot serve TLS; cheroot can, but would be a new
dependency for what a hundred lines of ours do here.

TLS and basic auth (`web_config`, from --web.config.file; see exporter.webconfig): each accepted
connection is wrapped with the configuration's current SSL context (so a renewed certificate
serves the next connection) with `do_handshake_on_connect=False`, and the handshake runs in the
connection's own thread under the header deadline: a slow or silent TLS client never blocks the
accept loop or other clients. Plain HTTP to a TLS port fails the handshake and is closed. Basic
auth and the extra headers wrap the whole app, every path included.

Scrapes are cheap: every series is built from one immutable `Latest.snapshot()`, so the exposition
is rendered once per view, content type (prometheus_client's negotiation: text or OpenMetrics) and
gzip, and the cached bytes are served until the next publish. A `name[]` filter, or a method other
than GET, goes to prometheus_client's own WSGI app uncached.
"""

from __future__ import annotations

import gzip
import html
import io
import logging
import resource
import selectors
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.config import ExporterConfig, ListenAddress
from exporter.latest import Latest, LatestView
from exporter.render import format_utc
from exporter.webconfig import WebConfigFile, protect

log = logging.getLogger(__name__)

HealthFn = Callable[[], tuple[bool, str]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# The flags' defaults (see ExporterConfig for why these values).
MAX_CONNECTIONS = ExporterConfig.web_max_connections
READ_HEADER_TIMEOUT = ExporterConfig.web_read_header_timeout
WRITE_TIMEOUT = ExporterConfig.web_write_timeout
# Pending connections the kernel may queue (it caps this at net.core.somaxconn).
LISTEN_BACKLOG = 1024
# Descriptors of RLIMIT_NOFILE kept for the checks (docker API, subprocess pipes, logs).
FD_RESERVE = 128
# Longer request lines get 414 (as wsgiref does).
MAX_REQUEST_LINE = 65536
# Bytes of a response gathered before a send (headers and a small body go out together).
WRITE_BUFFER = 64 * 1024


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
    exposition = ExpositionCache(registry, latest)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        if path == telemetry_path:
            query = parse_qs(environ.get("QUERY_STRING", ""))
            if method == "GET" and "name[]" not in query:
                headers, body = exposition.response(
                    environ.get("HTTP_ACCEPT"), environ.get("HTTP_ACCEPT_ENCODING")
                )
                start_response("200 OK", headers)
                return [body]
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
            page = _landing_page(latest.snapshot(), telemetry_path, version)
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


class ExpositionCache:
    """The registry's exposition, rendered once per LatestView, content type and gzip.

    The bytes stored for a view come from a render that started after that view was taken, so
    they are of that view or a newer one: a scrape never gets data older than the view it saw
    when it arrived. Renders are serialised, so the scrapes that arrive together after a publish
    cost one render per encoding, not one each (two when a publish lands mid-render). The cache
    assumes every series in the registry derives from the view (true of NetpolicyCollector); a
    collector with live values would be frozen per report.
    """

    def __init__(self, registry: Collector, latest: Latest) -> None:
        self._registry = registry
        self._latest = latest
        self._lock = threading.Lock()
        self._render_lock = threading.Lock()
        self._view: LatestView | None = None
        self._bodies: dict[tuple[str, bool], bytes] = {}

    def response(
        self, accept: str | None, accept_encoding: str | None
    ) -> tuple[list[tuple[str, str]], bytes]:
        """Headers and body for a GET with these Accept and Accept-Encoding headers."""
        encoder, content_type = choose_encoder(accept or "")
        compress = gzip_accepted(accept_encoding or "")
        key = (content_type, compress)
        body = self._cached(self._latest.snapshot(), key)
        if body is None:
            with self._render_lock:
                # The newest view, taken under the lock: what is stored only moves forward, and a
                # scrape that waited here serves what the scrape before it just rendered.
                view = self._latest.snapshot()
                body = self._cached(view, key)
                if body is None:
                    body = encoder(self._registry)
                    body = gzip.compress(body) if compress else body
                    self._store(view, key, body)
        headers = [("Content-Type", content_type)]
        if compress:
            headers.append(("Content-Encoding", "gzip"))
        return headers, body

    def _cached(self, view: LatestView, key: tuple[str, bool]) -> bytes | None:
        with self._lock:
            return self._bodies.get(key) if self._view is view else None

    def _store(self, view: LatestView, key: tuple[str, bool], body: bytes) -> None:
        with self._lock:
            if self._view is not view:
                self._view, self._bodies = view, {}
            self._bodies[key] = body


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


def _landing_page(view: LatestView, telemetry_path: str, version: str) -> str:
    report = view.report
    if report is None:
        last = "no check has finished yet"
    else:
        state = "up" if report.up else "down"
        if report.evaluated:
            drift = "drift: yes" if report.drift else "drift: no"
        else:
            drift = "not evaluated"
        last = f"{format_utc(report.started)}, {state}, {drift}"
    path = html.escape(telemetry_path, quote=True)
    return (
        '<!DOCTYPE html>\n<html>\n<head><meta charset="utf-8">'
        "<title>Docker NetPolicy Exporter</title></head>\n<body>\n"
        "<h1>Docker NetPolicy Exporter</h1>\n"
        f"<p>Version {html.escape(version)}</p>\n"
        f"<p>Last check: {html.escape(last)}</p>\n"
        f"{_sources_table(view)}"
        f'<ul>\n<li><a href="{path}">Metrics</a></li>\n'
        '<li><a href="/healthz">Health</a></li>\n</ul>\n'
        "</body>\n</html>\n"
    )


def _sources_table(view: LatestView) -> str:
    """One row per source ever seen: the last check's sources in order, then the others."""
    in_last = {s.name: s for s in view.report.sources} if view.report else {}
    names = list(in_last) + sorted(
        (set(view.check_errors_total) | set(view.last_errors)) - set(in_last)
    )
    if not names:
        return ""
    rows = []
    for name in names:
        status = in_last.get(name)
        state = "not read" if status is None else ("up" if status.up else "down")
        error = view.last_errors.get(name)
        message, when = (error.message, format_utc(error.at)) if error else ("none", "")
        cells = "".join(f"<td>{html.escape(text)}</td>" for text in (name, state, message, when))
        rows.append(f"<tr>{cells}</tr>\n")
    return (
        "<h2>Sources</h2>\n<table>\n"
        "<tr><th>Source</th><th>Last check</th><th>Last error</th><th>Error time</th></tr>\n"
        f"{''.join(rows)}</table>\n"
    )


class _DeadlineReader(io.RawIOBase):
    """Socket reads that all end by one deadline: a trickling client cannot reset the clock."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request not received in time")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


class _DeadlineWriter(io.RawIOBase):
    """Socket writes that all end by one deadline, counted from the first write."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self._sock = sock
        self._timeout = timeout
        self._deadline: float | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self._deadline is None:
            self._deadline = time.monotonic() + self._timeout
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("response not sent in time")
        self._sock.settimeout(remaining)
        self._sock.sendall(data)
        return len(data)


class _ResponseHandler(ServerHandler):
    def log_exception(self, exc_info: Any) -> None:
        # wsgiref prints a traceback to stderr; one line in our log says what failed.
        exc = exc_info[1]
        log.warning("http: request failed: %s: %s", type(exc).__name__, exc)
        log.debug("http: request failed", exc_info=exc_info)


class _ConnectionHandler(WSGIRequestHandler):
    """One request on one connection, with the server's deadlines on reading and writing."""

    server: ScrapeServer

    def setup(self) -> None:
        deadline = time.monotonic() + self.server.read_header_timeout
        self.connection = self.request
        if isinstance(self.connection, ssl.SSLSocket):
            # Here, in this connection's thread and under the header deadline; a failed or late
            # handshake (plain HTTP, unknown client certificate) raises OSError and ends it.
            self.connection.settimeout(max(deadline - time.monotonic(), 0.001))
            self.connection.do_handshake()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline))
        # Buffered: status line, headers and a small body leave in one send, not three.
        self.wfile = io.BufferedWriter(
            _DeadlineWriter(self.connection, self.server.write_timeout), WRITE_BUFFER
        )

    def handle(self) -> None:
        # wsgiref's handle(), with our ServerHandler (no traceback on stderr).
        self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
        if len(self.raw_requestline) > MAX_REQUEST_LINE:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():
            return
        handler = _ResponseHandler(
            self.rfile, self.wfile, self.get_stderr(), self.get_environ(), multithread=True
        )
        handler.request_handler = self
        handler.run(self.server.get_app())

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if log.isEnabledFor(logging.DEBUG):  # formatting costs on every scrape otherwise
            log.debug("http request", extra={"client": self.address_string(), "req": format % args})


class ScrapeServer(WSGIServer):
    """A WSGI server with a bounded number of connections, each served by its own thread."""

    allow_reuse_address = True

    def __init__(
        self,
        sockaddr: tuple[Any, ...],
        family: socket.AddressFamily,
        *,
        dual_stack: bool = False,
        max_connections: int = MAX_CONNECTIONS,
        read_header_timeout: float = READ_HEADER_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        listen_backlog: int = LISTEN_BACKLOG,
        tls_context: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        # TCPServer.__init__ reads these to create, bind and listen.
        self.address_family = family
        self.request_queue_size = listen_backlog
        self.dual_stack = dual_stack
        self.max_connections = max_connections
        self.read_header_timeout = read_header_timeout
        self.write_timeout = write_timeout
        # Asked per connection: the context of the configuration current at accept time.
        self.tls_context = tls_context
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stop_requested = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        super().__init__(sockaddr, _ConnectionHandler)

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

    def server_activate(self) -> None:
        super().server_activate()
        # The loop accepts only after select() says so; a client gone by then must not block it.
        self.socket.setblocking(False)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept until shutdown(); at the cap, leave new connections in the kernel's backlog."""
        self._stopped.clear()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self.socket, selectors.EVENT_READ)
                while not self._stop_requested.is_set():
                    if not self._slots.acquire(timeout=poll_interval):
                        continue
                    if not (selector.select(poll_interval) and self._accept_one(poll_interval)):
                        self._slots.release()
        finally:
            self._stop_requested.clear()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serve_forever() and wait for it; open connections end by their deadlines."""
        self._stop_requested.set()
        self._stopped.wait()

    def _accept_one(self, backoff: float) -> bool:
        """Accept one connection and start its thread; False when none was taken."""
        try:
            conn, client = self.socket.accept()
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            # Out of descriptors or similar: the connection waits in the backlog; do not spin.
            log.warning("http: cannot accept a connection: %s", exc.strerror or exc)
            self._stop_requested.wait(backoff)
            return False
        thread = threading.Thread(
            target=self._serve_connection, args=(conn, client), name="http-connection", daemon=True
        )
        try:
            thread.start()
        except RuntimeError as exc:  # no thread left: drop this one rather than stop serving
            log.warning("http: cannot start a connection thread: %s", exc)
            self.shutdown_request(conn)
            return False
        return True

    def _serve_connection(self, conn: socket.socket, client: Any) -> None:
        try:
            if self.tls_context is not None:
                conn = self.tls_context().wrap_socket(
                    conn, server_side=True, do_handshake_on_connect=False
                )
            self.finish_request(conn, client)
        except OSError as exc:  # timeouts, resets: the client's problem, not an error of ours
            log.debug("http: connection ended: %s", exc, extra={"client": str(client)})
        except Exception as exc:  # noqa: BLE001 - one request must never stop the server
            log.warning("http: request failed: %s: %s", type(exc).__name__, exc)
        finally:
            self.shutdown_request(conn)
            self._slots.release()


def make_server(
    address: ListenAddress,
    app: WSGIApp,
    *,
    max_connections: int = MAX_CONNECTIONS,
    read_header_timeout: float = READ_HEADER_TIMEOUT,
    write_timeout: float = WRITE_TIMEOUT,
    listen_backlog: int = LISTEN_BACKLOG,
    web_config: WebConfigFile | None = None,
) -> ScrapeServer:
    """Bind and return the server (not yet serving); BindError when the address is unusable.

    `web_config` adds its TLS (when configured), basic auth and headers to `app`.
    """
    attempts: list[tuple[socket.AddressFamily, tuple[Any, ...], bool]] = []
    if address.host == "":
        if socket.has_ipv6:
            attempts.append((socket.AF_INET6, ("::", address.port), True))
        attempts.append((socket.AF_INET, ("0.0.0.0", address.port), False))
    else:
        try:
            infos = socket.getaddrinfo(
                address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except OSError as exc:
            raise BindError(f"cannot resolve listen address {address}: {_strerror(exc)}") from None
        for family, _, _, _, sockaddr in infos:
            if family == socket.AF_INET6:
                attempts.append((socket.AF_INET6, tuple(sockaddr), False))
            else:
                attempts.append((socket.AF_INET, tuple(sockaddr[:2]), False))
    cap = connection_cap(max_connections)
    error: OSError | None = None
    for family, sockaddr, dual_stack in attempts:
        try:
            server = ScrapeServer(
                sockaddr,
                family,
                dual_stack=dual_stack,
                max_connections=cap,
                read_header_timeout=read_header_timeout,
                write_timeout=write_timeout,
                listen_backlog=listen_backlog,
                tls_context=web_config.ssl_context
                if web_config is not None and web_config.tls_enabled
                else None,
            )
        except OSError as exc:
            error = exc
            continue
        if web_config is not None:
            app = protect(app, web_config.current_config)
        server.set_app(app)
        return server
    reason = _strerror(error) if error else "no usable address"
    raise BindError(f"cannot listen on {address}: {reason}")


def connection_cap(requested: int) -> int:
    """`requested`, lowered so open connections leave FD_RESERVE descriptors to the checks."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or requested + FD_RESERVE <= soft:
        return requested
    cap = max(1, soft - FD_RESERVE)
    log.warning(
        "http: serving at most %d connections, not %d: the descriptor limit is %d and %d are"
        " kept for checks (raise it with ulimit -n)",
        cap,
        requested,
        soft,
        FD_RESERVE,
    )
    return cap


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)


def bound_port(server: WSGIServer) -> int:
    return int(server.server_address[1])
