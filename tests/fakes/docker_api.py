"""A fake Docker Engine API on a unix socket, answering from recorded replies, honest or not.

It serves the calls the exporter makes (the docker SDK prefixes them with /v1.xx):
GET /_ping, /version, /info, /networks, /containers/json, /containers/ID/json and a streaming
/events. Every request is recorded as (method, path), so a test can assert that only GETs were made.

Modes (all paths, or only those starting with `on`):
- ok: the scenario's replies;
- hang: accept and read the request, never answer (until stop());
- err: HTTP 500 with a Docker-style {"message": ...};
- cut: headers for the whole body, half of it, then the connection is closed;
- slow: the reply after `delay` seconds;
- nonjson: HTTP 200, Content-Type application/json, an HTML body;
- a lie (see LIES): HTTP 200 with a reply of the wrong shape.

    with FakeDockerAPI(DockerScenario.from_fixture(CASE), mode="hang") as api:
        DockerSource(api.base_url, 0.5).fetch()
"""

from __future__ import annotations

import copy
import json
import os
import queue
import re
import shutil
import socket
import socketserver
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MODES = ("ok", "hang", "err", "cut", "slow", "nonjson")
_VERSIONED = re.compile(r"^/v1\.\d+(/.*)$")
_INSPECT = re.compile(r"^/containers/([^/]+)/json$")


@dataclass
class DockerScenario:
    """The daemon's state, as its API replies show it; safe to change while the server runs."""

    version: dict[str, Any]
    networks: list[dict[str, Any]]
    containers: list[dict[str, Any]]
    inspects: dict[str, dict[str, Any]]
    # Ids of containers that stop when inspected: the list showed them, the inspect answers 404.
    dying: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def from_fixture(cls, case: Path) -> DockerScenario:
        """From a tests/fixtures/sources/* directory (docker-*.json)."""

        def load(name: str) -> Any:
            return json.loads((case / name).read_text())

        return cls(
            version=load("docker-version.json"),
            networks=load("docker-networks.json"),
            containers=load("docker-containers.json"),
            inspects={reply["Id"]: reply for reply in load("docker-inspect.json")},
        )

    def container_id(self, name: str) -> str:
        with self.lock:
            return next(c["Id"] for c in self.containers if f"/{name}" in c["Names"])

    def stop_container(self, name: str) -> dict[str, Any]:
        """Take a container off the list (as `docker stop`); returns its list entry."""
        with self.lock:
            entry = next(c for c in self.containers if f"/{name}" in c["Names"])
            self.containers.remove(entry)
            return entry

    def start_container(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.containers.append(entry)


# -- lies: replies of the wrong shape -------------------------------------------------------------


def _first(replies: dict[str, Any]) -> dict[str, Any]:
    return replies["/containers/json"][0]  # type: ignore[no-any-return]


def _bridge_settings(entry: dict[str, Any]) -> dict[str, Any]:
    return next(iter(entry["NetworkSettings"]["Networks"].values()))  # type: ignore[no-any-return]


def _first_inspect(replies: dict[str, Any]) -> dict[str, Any]:
    return replies["inspect"][_first(replies)["Id"]]  # type: ignore[no-any-return]


# name -> (what it does to {path: reply}, the text the one-line error must hold)
LIES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "list-where-object": (
        lambda r: r.__setitem__("/version", [r["/version"]]),
        "GET /version",
    ),
    "object-where-list": (
        lambda r: r.__setitem__("/containers/json", {"Containers": r["/containers/json"]}),
        "GET /containers/json: reply is a JSON object, not a list",
    ),
    "networks-object": (
        lambda r: r.__setitem__("/networks", {"Networks": r["/networks"]}),
        "GET /networks: reply is a JSON object, not a list",
    ),
    "missing-id": (
        lambda r: _first(r).pop("Id"),
        "GET /containers/json: container 1 has no Id",
    ),
    "bad-ip": (
        lambda r: _bridge_settings(_first(r)).update(IPAddress="999.1.1.1"),
        "'999.1.1.1' is not an IP address",
    ),
    "bad-port": (
        lambda r: _first_inspect(r)["Config"].update(ExposedPorts={"99999/tcp": {}}),
        "cannot read exposed port '99999/tcp'",
    ),
    "names-not-list": (
        lambda r: _first(r).update(Names="/oops"),
        "Names is a JSON string, not a list",
    ),
    "inspect-for-another": (
        lambda r: r["inspect"].__setitem__(
            _first(r)["Id"], r["inspect"][r["/containers/json"][1]["Id"]]
        ),
        "reply is for container",
    ),
    "inspect-404": (
        lambda r: r["inspect"].pop(_first(r)["Id"]),
        "answered 404 (no such container) but GET /containers/json still lists it",
    ),
    "network-without-id": (
        lambda r: r["/networks"][0].pop("Id"),
        "GET /networks: network 1 has no Id",
    ),
}


# -- the server -----------------------------------------------------------------------------------


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False
    api: FakeDockerAPI


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as dockerd
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Quiet: the client address of a unix socket is '' and would break the default."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        try:
            self.server.api.handle(self)
        except OSError:
            self.close_connection = True  # the client gave up (its timeout): nothing to answer

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET  # recorded too, so tests can see them


class FakeDockerAPI:
    def __init__(
        self,
        scenario: DockerScenario,
        *,
        mode: str = "ok",
        lie: str | None = None,
        on: str | None = None,
        delay: float = 0.0,
        record: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if lie is not None and lie not in LIES:
            raise ValueError(f"lie must be one of {sorted(LIES)}, not {lie!r}")
        self.scenario = scenario
        self.mode = mode
        self.lie = lie
        self.on = on
        self.delay = delay
        # Every request when `record` (the soak turns it off: the list would grow with the run);
        # the methods and the count always.
        self.record = record
        self.requests: list[tuple[str, str]] = []
        self.request_count = 0
        self._methods: set[str] = set()
        self._requests_lock = threading.Lock()
        self._release = threading.Event()
        self._events: list[queue.Queue[dict[str, Any]]] = []
        self._dir = tempfile.mkdtemp(prefix=f"fakedocker-{os.getpid()}-")
        self.socket_path = os.path.join(self._dir, "docker.sock")
        self._server = _Server(self.socket_path, _Handler)
        self._server.api = self
        # serve_forever accepts after select() says a connection waits; should it be gone by then
        # (taken elsewhere), a blocking accept() would hang serve_forever and so stop() forever.
        # Non-blocking, socketserver drops that round; accepted connections are blocking still.
        self._server.socket.setblocking(False)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"unix://{self.socket_path}"

    def __enter__(self) -> FakeDockerAPI:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._release.set()  # hung and streaming handlers end
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        shutil.rmtree(self._dir, ignore_errors=True)

    def methods(self) -> set[str]:
        with self._requests_lock:
            return set(self._methods)

    def emit(self, event: dict[str, Any]) -> None:
        """Send an event to every open /events stream."""
        for stream in list(self._events):
            stream.put(event)

    # -- one request ------------------------------------------------------------------------------

    def handle(self, handler: _Handler) -> None:
        with self._requests_lock:
            self.request_count += 1
            self._methods.add(handler.command)
            if self.record:
                self.requests.append((handler.command, handler.path))
        path = urlsplit(handler.path).path
        versioned = _VERSIONED.match(path)
        path = versioned.group(1) if versioned else path
        if handler.command != "GET":
            self._send(handler, 405, {"message": f"{handler.command} is not allowed here"})
            return
        mode = self.mode if self.on is None or path.startswith(self.on) else "ok"
        if mode == "hang":
            self._release.wait()
            handler.close_connection = True
            return
        if mode == "slow":
            self._release.wait(self.delay)
        if mode == "err":
            self._send(handler, 500, {"message": "fake dockerd: something broke"})
            return
        if path == "/events":
            self._stream_events(handler)
            return
        status, reply = self._reply(path)
        if mode == "nonjson":
            self._send_bytes(handler, 200, b"<html><body>502 Bad Gateway</body></html>\n")
        elif mode == "cut":
            self._send_cut(handler, status, reply)
        else:
            self._send(handler, status, reply)

    def _replies(self) -> dict[str, Any]:
        with self.scenario.lock:
            replies: dict[str, Any] = copy.deepcopy(
                {
                    "/version": self.scenario.version,
                    "/networks": self.scenario.networks,
                    "/containers/json": self.scenario.containers,
                    "inspect": self.scenario.inspects,
                }
            )
        if self.lie is not None:
            LIES[self.lie][0](replies)
        return replies

    def _reply(self, path: str) -> tuple[int, Any]:
        if path == "/_ping":
            return 200, "OK"
        if path == "/info":
            return 200, {"ID": "fake", "ServerVersion": "20.10.24+dfsg1"}
        inspect = _INSPECT.match(path)
        if inspect:
            self._die(inspect.group(1))
        replies = self._replies()
        if path in replies:
            return 200, replies[path]
        if inspect:
            wanted = inspect.group(1)
            for cid, reply in replies["inspect"].items():
                if cid == wanted or (len(wanted) >= 12 and cid.startswith(wanted)):
                    return 200, reply
            return 404, {"message": f"No such container: {wanted}"}
        return 404, {"message": f"page not found: {path}"}

    def _die(self, wanted: str) -> None:
        with self.scenario.lock:
            if wanted in self.scenario.dying:
                self.scenario.dying.discard(wanted)
                self.scenario.containers = [
                    c for c in self.scenario.containers if c["Id"] != wanted
                ]
                self.scenario.inspects.pop(wanted, None)

    def _send(self, handler: _Handler, status: int, reply: Any) -> None:
        if isinstance(reply, str):
            self._send_bytes(handler, status, reply.encode(), "text/plain; charset=utf-8")
        else:
            self._send_bytes(handler, status, json.dumps(reply).encode() + b"\n")

    def _send_bytes(
        self, handler: _Handler, status: int, body: bytes, kind: str = "application/json"
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", kind)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Api-Version", "1.41")
        handler.end_headers()
        handler.wfile.write(body)

    def _send_cut(self, handler: _Handler, status: int, reply: Any) -> None:
        body = json.dumps(reply).encode() + b"\n"
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[: len(body) // 2])
        handler.wfile.flush()
        handler.close_connection = True
        handler.connection.shutdown(socket.SHUT_RDWR)

    def _stream_events(self, handler: _Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.wfile.flush()
        stream: queue.Queue[dict[str, Any]] = queue.Queue()
        self._events.append(stream)
        handler.close_connection = True
        try:
            while not self._release.is_set():
                try:
                    event = stream.get(timeout=0.2)
                except queue.Empty:
                    continue
                chunk = json.dumps(event).encode() + b"\n"
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                handler.wfile.flush()
        except OSError:
            pass  # the client went away
        finally:
            self._events.remove(stream)


def event(kind: str, action: str, actor: str) -> dict[str, Any]:
    """A Docker event as /events streams it."""
    return {
        "Type": kind,
        "Action": action,
        "Actor": {"ID": actor, "Attributes": {}},
        "time": int(time.time()),
        "timeNano": time.time_ns(),
    }
