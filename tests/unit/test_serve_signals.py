"""`serve` as a real process: SIGTERM and SIGINT end it with exit 0 within a second, whatever it does.

The Docker endpoint is a unix socket in a tmp dir that accepts and never answers (or no socket at
all, so a check fails fast and the long interval begins); PATH holds no firewall tool, so nothing of
the host's is read.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXIT_BUDGET_SECONDS = 1.0


class SilentDocker:
    """A unix socket that accepts every connection and never answers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(16)
        self._held: list[socket.socket] = []
        self.accepted = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self._held.append(conn)
            self.accepted.set()

    def close(self) -> None:
        self._server.close()
        for conn in self._held:
            conn.close()


class Exporter:
    """`python3 -m exporter serve` with its stderr log lines collected as they come."""

    def __init__(self, tmp: Path, docker_host: str) -> None:
        empty_bin = tmp / "bin"
        empty_bin.mkdir(exist_ok=True)
        env = {"PATH": str(empty_bin), "PYTHONPATH": str(REPO), "HOME": str(tmp)}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                "serve",
                "--web.listen-address",
                "127.0.0.1:0",
                "--docker.host",
                docker_host,
                "--docker.timeout",
                "10m",
                "--docker.config",
                str(tmp / "daemon.json"),
                "--check.timeout",
                "1h",
                "--check.interval",
                "24h",
                "--log.format",
                "json",
            ],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[dict] = queue.Queue()
        threading.Thread(target=self._read_log, daemon=True).start()
        self.port = self._wait_for("listening", 10)["port"]

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                self.lines.put({"msg": line})

    def _wait_for(self, msg: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                record = self.lines.get(timeout=0.1)
            except queue.Empty:
                assert self.proc.poll() is None, f"serve exited with {self.proc.returncode}"
                continue
            if record.get("msg") == msg:
                return record
        raise AssertionError(f"no {msg!r} log line in {timeout}s")

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    def stop(self, signum: int) -> tuple[int, float]:
        began = time.monotonic()
        self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout=10)
        finally:
            self.kill()
        return code, time.monotonic() - began

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def lab(tmp_path_factory) -> Iterator[Path]:
    # A short private dir: a unix socket path must stay under 108 bytes.
    tmp = tmp_path_factory.mktemp(f"sig{os.getpid()}{secrets.token_hex(3)}")
    yield tmp


@pytest.fixture
def silent_docker(lab: Path) -> Iterator[SilentDocker]:
    docker = SilentDocker(lab / "hang.sock")
    yield docker
    docker.close()


SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]


def assert_quick_clean_exit(exporter: Exporter, signum: int) -> None:
    code, took = exporter.stop(signum)
    assert code == 0
    assert took < EXIT_BUDGET_SECONDS, f"took {took:.2f}s to exit"


@pytest.mark.parametrize("signum", SIGNALS)
def test_signal_before_the_first_check_ends(lab, silent_docker, signum):
    exporter = Exporter(lab, f"unix://{silent_docker.path}")
    try:
        assert_quick_clean_exit(exporter, signum)
    finally:
        exporter.kill()


@pytest.mark.parametrize("signum", SIGNALS)
def test_signal_while_a_check_hangs_on_docker(lab, silent_docker, signum):
    exporter = Exporter(lab, f"unix://{silent_docker.path}")
    try:
        assert silent_docker.accepted.wait(10)
        time.sleep(0.3)  # well inside the request that never gets an answer
        assert "docker_netpolicy_checks_total 0.0" in exporter.metrics()
        assert_quick_clean_exit(exporter, signum)
    finally:
        exporter.kill()


@pytest.mark.parametrize("signum", SIGNALS)
def test_signal_during_a_long_interval(lab, signum):
    exporter = Exporter(lab, f"unix://{lab / 'no-docker.sock'}")
    try:
        deadline = time.monotonic() + 10
        while "docker_netpolicy_checks_total 1.0" not in exporter.metrics():
            assert time.monotonic() < deadline, "the first check did not finish"
            time.sleep(0.05)
        assert_quick_clean_exit(exporter, signum)
    finally:
        exporter.kill()


@pytest.mark.parametrize("signum", SIGNALS)
def test_signal_while_a_scrape_is_served(lab, silent_docker, signum):
    exporter = Exporter(lab, f"unix://{silent_docker.path}")
    try:
        with socket.create_connection(("127.0.0.1", exporter.port), timeout=5) as scrape:
            # Half a request: the handler thread waits for the rest of the headers.
            scrape.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            time.sleep(0.2)
            assert_quick_clean_exit(exporter, signum)
    finally:
        exporter.kill()
