"""A read-only filtering proxy in front of a real Docker socket, recording every call.

Why: the README promises the exporter only ever reads from Docker. A proxy that lets through
exactly the GETs the exporter is supposed to make, answers 403 to anything else and records it
all turns that promise into something a test can check against a real dockerd. It plays the role
of tecnativa/docker-socket-proxy (deploy/README.md), with a list narrower than that one's.

One request per connection: the proxy forces `Connection: close` on the upstream request, so a
second request can never ride unchecked on a connection that was let through for the first.
Bytes a client sends after the request head are discarded, never forwarded. Responses, including
the endless /events stream, are relayed as they come until either side closes.

    with DockerProxy(upstream=lab.sock, listen=lab.dir / "proxy.sock") as proxy:
        run(["docker-netpolicy-exporter", "check", "--docker.host", proxy.url])
    assert not proxy.refused()
"""

from __future__ import annotations

import re
import socket
import socketserver
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

# Route name -> the paths it matches (after any /vX.Y prefix). Only GETs of these pass.
ALLOWED_GET_ROUTES = {
    "/_ping": re.compile(r"/_ping"),
    "/version": re.compile(r"/version"),
    "/info": re.compile(r"/info"),
    "/networks": re.compile(r"/networks"),
    "/containers/json": re.compile(r"/containers/json"),
    "/containers/{id}/json": re.compile(r"/containers/[^/]+/json"),
    "/events": re.compile(r"/events"),
}
_VERSION_PREFIX = re.compile(r"/v\d+\.\d+(?=/)")
_MAX_HEAD = 64 * 1024
_REFUSAL_DRAIN_SECONDS = 5
_HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"upgrade", b"te"}


@dataclass(frozen=True)
class Call:
    """One request the proxy saw: method, target as sent, the allowed route it matched (if any)."""

    method: str
    target: str
    route: str | None

    @property
    def allowed(self) -> bool:
        return self.method == "GET" and self.route is not None


def route_of(target: str) -> str | None:
    """The ALLOWED_GET_ROUTES name whose pattern matches TARGET's path, else None."""
    path = _VERSION_PREFIX.sub("", urlsplit(target).path, count=1)
    return next((name for name, p in ALLOWED_GET_ROUTES.items() if p.fullmatch(path)), None)


class DockerProxy:
    """Listen on LISTEN (a new unix socket), forward allowed requests to UPSTREAM."""

    def __init__(self, upstream: Path | str, listen: Path | str) -> None:
        self.upstream = str(upstream)
        self.listen = str(listen)
        self.url = f"unix://{self.listen}"
        self._calls: list[Call] = []
        self._lock = threading.Lock()
        self._server = _Server(self.listen, _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> DockerProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._server.close_open_connections()
        Path(self.listen).unlink(missing_ok=True)

    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def refused(self) -> list[Call]:
        return [c for c in self.calls() if not c.allowed]

    def record(self, call: Call) -> None:
        with self._lock:
            self._calls.append(call)


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    proxy: DockerProxy

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def track(self, sock: socket.socket, is_open: bool) -> None:
        with self._open_lock:
            (self._open.add if is_open else self._open.discard)(sock)

    def close_open_connections(self) -> None:
        """End relays still running (an /events stream) so their threads finish."""
        with self._open_lock:
            socks, self._open = list(self._open), set()
        for sock in socks:
            _shutdown(sock)


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        client: socket.socket = self.request
        self.server.track(client, True)
        try:
            self._serve(client)
        finally:
            self.server.track(client, False)

    def _serve(self, client: socket.socket) -> None:
        head = _read_head(client)
        if head is None:
            return
        request_line, *headers = head.split(b"\r\n")
        method, target, _version = (request_line.decode("latin-1").split(" ") + ["", ""])[:3]
        call = Call(method, target, route_of(target))
        self.server.proxy.record(call)
        if not call.allowed:
            body = f"docker_proxy: {method} {target} is not allowed\n".encode()
            client.sendall(
                b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            # Closing with the client's unread body queued would make its read fail with
            # ECONNRESET instead of showing the 403: wait until it has read and hung up.
            client.shutdown(socket.SHUT_WR)
            client.settimeout(_REFUSAL_DRAIN_SECONDS)
            _discard_until_close(client)
            return
        kept = [h for h in headers if h.split(b":", 1)[0].strip().lower() not in _HOP_BY_HOP]
        upstream_head = b"\r\n".join([request_line, *kept, b"Connection: close"]) + b"\r\n\r\n"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as upstream:
            upstream.connect(self.server.proxy.upstream)
            self.server.track(upstream, True)
            try:
                upstream.sendall(upstream_head)
                _relay(upstream, client)
            finally:
                self.server.track(upstream, False)


def _read_head(sock: socket.socket) -> bytes | None:
    """The request head without the blank line (what follows is dropped); None on EOF/too big."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > _MAX_HEAD:
            return None
        try:
            chunk = sock.recv(65536)
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return data.split(b"\r\n\r\n", 1)[0]


def _relay(upstream: socket.socket, client: socket.socket) -> None:
    """Copy the response to the client until upstream closes; stop early if the client leaves."""
    watcher = threading.Thread(target=_wait_for_close, args=(client, upstream), daemon=True)
    watcher.start()
    while True:
        try:
            chunk = upstream.recv(65536)
            if not chunk:
                break
            client.sendall(chunk)
        except OSError:
            break
    _shutdown(client)


def _wait_for_close(client: socket.socket, upstream: socket.socket) -> None:
    """Discard what the client sends; when it hangs up, end the upstream side (an /events)."""
    _discard_until_close(client)
    _shutdown(upstream)


def _discard_until_close(sock: socket.socket) -> None:
    while True:
        try:
            if not sock.recv(65536):
                return
        except OSError:  # reset, closed by us, or timed out
            return


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the other side
