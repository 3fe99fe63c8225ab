"""A real Docker daemon in a private network namespace, for tests and demos.

Why: the exporter's verdicts are only worth something if they match what the kernel really does
with packets. This lab starts a throwaway dockerd (its own data root, exec root, socket and
network namespace), runs busybox containers in it, and measures the ground truth with real
connections. The host's own firewall and the host's own Docker are never touched: every
iptables rule the lab daemon writes lives in the lab's network namespace.

The recipe and its pitfalls are in docs/lab.md; the short version:

- ``nsenter --net=/run/netns/NS dockerd ...`` (not ``ip netns exec``: that remounts /sys and
  dockerd dies with "Devices cgroup isn't mounted");
- images come from ``busybox-static`` through ``docker import`` (there is no registry);
- teardown order: ``docker rm -f``, SIGTERM the daemon, kill leftover shims, lazily unmount,
  delete the namespace, delete the directory.

Ground truth:

- TCP: ``docker exec SRC nc`` against a busybox ``httpd`` listening in the target. Allowed means
  an HTTP answer came back; a DROP shows as a timeout. "Connection refused" means the packet got
  through but nothing listened: the lab raises, because that is a broken test setup, not a verdict.
- UDP: busybox here has no UDP client or server (``nc`` has no ``-u``, no ``udpsvd``). So the
  host's Python runs inside the containers' network namespaces
  (``nsenter --net=/proc/PID/ns/net``) for both ends: a listener bound in the target's
  namespace, a sender in the source's. The packets take exactly the path a containerised
  program's packets take (veth, bridge, netfilter). Allowed means the token arrived.
- Every container started with the default command also serves HTTP on `UNEXPOSED_PORT`, a port
  it does not expose and no Docker rule names: the ground truth for a "probe" flow (a flow to a
  target that exposes nothing, which the exporter evaluates on a port no rule names).

Usage::

    with DockerLab() as lab:
        lab.start(icc=False, backend="nft")
        web = lab.run("web", expose=["80/tcp", "53/udp"])
        client = lab.run("client", links=["web:db"])
        assert lab.tcp_reachable(client, lab.ip(web), 80)

In pytest, wrap it in a module-scoped fixture (one daemon per module), e.g. with `lab_fixture`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DOCKER_CLI = "/usr/bin/docker"
"""Debian's 20.10 CLI. A 28.x client in /usr/local/bin may shadow it on PATH."""

IMAGE = "lab/busybox:1"
UNEXPOSED_PORT = 7777
"""Every default container listens here without exposing it: ground truth for probe flows."""
BACKENDS = ("nft", "legacy")
BUSYBOX_APPLETS = (
    "sh nc httpd sleep cat echo printf timeout netstat ls ps mkdir kill ip ifconfig hostname"
    " grep tee true false wget nslookup tftp env id rm touch"
).split()
IPTABLES_TOOLS = (
    "iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore"
).split()
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REPO_ROOT = Path(__file__).resolve().parent.parent
BRIDGE_NF_CALL = "/proc/sys/net/bridge/bridge-nf-call-iptables"

# Runs in a container's network namespace with the host's Python: bind, say "ready", wait for
# the token, print who sent it. Exit 0 = delivered, 1 = not within the timeout.
_UDP_LISTENER = r"""
import socket, sys, time
port, token, wait = int(sys.argv[1]), sys.argv[2].encode(), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", port))
print("ready", flush=True)
sys.stdin.readline()
end = time.monotonic() + wait
while (left := end - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        data, addr = s.recvfrom(65535)
    except (TimeoutError, socket.timeout):
        break
    if token in data:
        print("got", addr[0], flush=True)
        sys.exit(0)
sys.exit(1)
"""

# Runs in the source container's namespace: a few copies, in case the first waits on ARP.
_UDP_SENDER = r"""
import socket, sys, time
ip, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):
    s.sendto(token, (ip, port))
    time.sleep(0.15)
"""

_HTTP_GET = r"""
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as r:
    sys.stdout.write(r.read().decode())
"""

_FREE_PORT = r"""
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
"""


class LabError(RuntimeError):
    """The lab itself failed (not the code under test): daemon, container or probe trouble."""


@dataclass(frozen=True)
class Container:
    """A container the lab started. Its string form is its name, so it works as a CLI arg."""

    name: str
    id: str
    expose: tuple[tuple[int, str], ...] = ()
    network: str = "bridge"
    # TCP ports something listens on (the default command: exposed ones + UNEXPOSED_PORT).
    listen_tcp: tuple[int, ...] = ()

    def __str__(self) -> str:
        return self.name


@dataclass
class Timings:
    """Wall-clock seconds per lab step, so tests can report where the time goes."""

    steps: list[tuple[str, float]] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.steps.append((name, time.monotonic() - t0))

    def summary(self) -> str:
        return ", ".join(f"{n}={s:.2f}s" for n, s in self.steps)


def parse_port(spec: str | int) -> tuple[int, str]:
    """'80', 80, '80/tcp', '53/udp' -> (port, proto)."""
    text = str(spec)
    port, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise ValueError(f"unsupported protocol in {spec!r}")
    return int(port), proto


def preflight() -> None:
    """Fail loudly (never skip) when this machine cannot run the lab.

    Why: a lab test that silently skips on a CI machine that lacks dockerd would let the suite go
    green without ever checking a real firewall.
    """
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (dockerd, network namespaces, iptables)")
    for tool in ("dockerd", "nsenter", "ip", "containerd", "runc"):
        if shutil.which(tool, path=SYSTEM_PATH) is None:
            problems.append(f"{tool} not found (run scripts/install-deps.sh)")
    if not os.access(DOCKER_CLI, os.X_OK):
        problems.append(f"{DOCKER_CLI} missing (Debian package docker.io)")
    busybox = find_static_busybox()
    if busybox is None:
        problems.append("no static busybox (Debian package busybox-static)")
    for tool in ("iptables-nft", "iptables-legacy"):
        if shutil.which(tool, path=SYSTEM_PATH) is None:
            problems.append(f"{tool} not found (Debian package iptables)")
    if problems:
        raise LabError("cannot run the Docker lab: " + "; ".join(problems))


def find_static_busybox() -> str | None:
    """A statically linked busybox: the image has no libc, so a dynamic one would not start."""
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(candidate) and not _elf_has_interpreter(candidate):
            return candidate
    return None


def _elf_has_interpreter(path: str) -> bool:
    """True if the 64-bit little-endian ELF at path asks for a dynamic loader (PT_INTERP)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return True  # not something we know how to check: treat as unusable
        phoff = struct.unpack_from("<Q", head, 0x20)[0]
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return any(struct.unpack_from("<I", table, i * phentsize)[0] == 3 for i in range(phnum))


def ensure_bridge_netfilter() -> None:
    """br_netfilter makes bridged packets traverse iptables; icc=false means nothing without it.

    It may be built into the kernel (no module to load): then /proc/sys/net/bridge exists already.
    """
    if os.path.exists(BRIDGE_NF_CALL):
        return
    subprocess.run(["modprobe", "br_netfilter"], capture_output=True, check=False)
    if not os.path.exists(BRIDGE_NF_CALL):
        raise LabError("br_netfilter is not available (modprobe br_netfilter failed)")


class DockerLab:
    """One throwaway dockerd in its own network namespace, plus ground-truth probes."""

    def __init__(self, *, prefix: str = "dnp") -> None:
        token = secrets.token_hex(3)
        # Short path on purpose: unix socket paths are limited to ~107 bytes, and containerd
        # puts sockets under the exec root.
        directory = Path(tempfile.mkdtemp(prefix=f"{prefix}{token}-", dir="/tmp"))
        self._init_paths(f"{prefix}-{os.getpid()}-{token}", directory)
        self.icc: bool | None = None
        self.backend: str | None = None
        self._netns_created = False

    def _init_paths(self, name: str, directory: Path) -> None:
        """Everything derived from the lab's name and directory, for new and attached labs."""
        self.name = name
        self.dir = directory
        self.netns = name
        self.netns_path = f"/run/netns/{self.netns}"
        self.sock = self.dir / "docker.sock"
        self.docker_host = f"unix://{self.sock}"
        self.pidfile = self.dir / "docker.pid"
        self.log_path = self.dir / "dockerd.log"
        self.bin_dir = self.dir / "bin"
        self.extra_args: tuple[str, ...] = ()
        self.containers: dict[str, Container] = {}
        self.timings = Timings()
        self._daemon: subprocess.Popen[bytes] | None = None
        self._children: list[subprocess.Popen[Any]] = []
        self._closed = False
        # One UDP listener per (container, port) at a time: a second bind would fail, and with
        # SO_REUSEADDR the kernel would hand one probe's datagram to the other's listener.
        self._udp_locks: dict[tuple[str, int], threading.Lock] = {}
        self._udp_locks_guard = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def attach(cls, info: dict[str, Any]) -> DockerLab:
        """A handle on a lab that an earlier process started and described with `info()`.

        Used by the demo, whose commands (`up`, `drift`, `down`) run in separate processes. Paths
        are derived as for a new lab; a record whose paths differ was written by another version
        of this module, and attaching to it would stop the wrong things, so it raises LabError.
        """
        lab = cls.__new__(cls)
        lab._init_paths(info["name"], Path(info["dir"]))
        lab.icc, lab.backend = info["icc"], info["backend"]
        lab._netns_created = os.path.exists(lab.netns_path)
        if lab.docker_host != info["docker_host"] or lab.path_env != info["path_env"]:
            raise LabError(
                f"the recorded lab {info} was named by another version of tests/lab.py; clean up "
                f"by hand: ip netns del {lab.netns}; rm -rf {lab.dir}"
            )
        return lab

    def info(self) -> dict[str, Any]:
        """What `attach()` needs to find this lab again (JSON-serialisable)."""
        return {
            "name": self.name,
            "netns": self.netns,
            "dir": str(self.dir),
            "docker_host": self.docker_host,
            "path_env": self.path_env,
            "icc": self.icc,
            "backend": self.backend,
        }

    def __enter__(self) -> DockerLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path_env(self) -> str:
        """PATH for dockerd and `ns()`: the backend's iptables binaries come first."""
        return f"{self.bin_dir}:{SYSTEM_PATH}"

    def dockerd_command(self, *flags: str) -> list[str]:
        """dockerd with this lab's own config file, roots, socket and pidfile, then `flags`."""
        config = self.dir / "daemon.json"
        config.write_text("{}\n")  # never pick up the host's /etc/docker/daemon.json
        return [
            "dockerd",
            "--config-file",
            str(config),
            "--data-root",
            str(self.dir / "data"),
            "--exec-root",
            str(self.dir / "exec"),
            "-H",
            self.docker_host,
            "--pidfile",
            str(self.pidfile),
            # Only matters if a system containerd is running (dockerd then uses it): keep this
            # lab's containers apart from anybody else's.
            "--containerd-namespace",
            self.name,
            "--containerd-plugins-namespace",
            f"{self.name}-plugins",
            *flags,
        ]

    def start(
        self,
        icc: bool = False,
        backend: str = "nft",
        extra_args: Sequence[str] = (),
        *,
        timeout: float = 60,
    ) -> None:
        """Start dockerd in the lab namespace with --icc=ICC and wait until its API answers."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        if self._daemon is not None and self._daemon.poll() is None:
            raise LabError("daemon already running; use restart()")
        with self.timings.step("start"):
            preflight()
            ensure_bridge_netfilter()
            if not self._netns_created:
                _run(["ip", "netns", "add", self.netns])
                self._netns_created = True
                # Loopback up: the exporter's `serve` listens on 127.0.0.1 inside the namespace.
                self.ns(["ip", "link", "set", "lo", "up"])
            self._link_backend(backend)
            cmd = [
                "nsenter",
                f"--net={self.netns_path}",
                *self.dockerd_command(f"--icc={'true' if icc else 'false'}", *extra_args),
            ]
            env = {**os.environ, "PATH": self.path_env}
            env.pop("DOCKER_HOST", None)
            log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the daemon
            try:
                self._daemon = subprocess.Popen(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            finally:
                log.close()
            self.icc, self.backend, self.extra_args = icc, backend, tuple(extra_args)
            self._wait_api(timeout)
            self._ensure_bridge_nf_call()
        with self.timings.step("image"):
            self._ensure_image()

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM dockerd and wait; SIGKILL after timeout. Containers stay (restart policy)."""
        pid = self._daemon_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, timeout, self._daemon):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 10, self._daemon)
        self._daemon = None

    def restart(
        self,
        icc: bool,
        backend: str | None = None,
        extra_args: Sequence[str] | None = None,
        *,
        timeout: float = 60,
    ) -> None:
        """Restart the daemon with new flags; wait until every lab container runs again.

        Containers come back because `run` starts them with --restart always.
        """
        with self.timings.step("restart"):
            self.stop()
            self.start(
                icc=icc,
                backend=backend or self.backend or "nft",
                extra_args=self.extra_args if extra_args is None else extra_args,
                timeout=timeout,
            )
            deadline = time.monotonic() + timeout
            for c in self.containers.values():
                self._wait_running(c, deadline)

    def close(self) -> None:
        """Tear everything down, in the recipe's order, even after failures. Idempotent.

        Raises LabError at the end if something could not be cleaned, so leaks are visible.
        """
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []

        def attempt(what: str, fn: Callable[[], object]) -> None:
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - teardown must go on
                errors.append(f"{what}: {e}")

        for child in self._children:
            attempt("child", lambda c=child: _terminate(c))
        if self._daemon_pid() is not None and self.sock.exists():
            attempt("rm containers", self._remove_all_containers)
        attempt("stop daemon", self.stop)
        attempt("kill leftovers", self._kill_leftovers)
        attempt("unmount", self._unmount_all)
        if self._netns_created:
            attempt("netns", lambda: _run(["ip", "netns", "del", self.netns]))
        attempt("rm dir", lambda: shutil.rmtree(self.dir))
        if errors:
            raise LabError("lab teardown incomplete: " + "; ".join(errors))

    # ------------------------------------------------------------------ commands

    def docker(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 60,
        input: str | bytes | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the CLI against the lab daemon; raise with stderr on failure unless check=False.

        Debian's 20.10 CLI, by full path: a newer client may shadow it on PATH.
        """
        cmd = [DOCKER_CLI, "-H", self.docker_host, *map(str, args)]
        return _run(cmd, check=check, timeout=timeout, input=input)

    def ns(
        self,
        cmd: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the lab namespace, with the backend's iptables first on PATH.

        So `lab.ns(["iptables", "-D", ...])` edits the tables the daemon itself uses.
        """
        full = ["nsenter", f"--net={self.netns_path}", *map(str, cmd)]
        env = {**os.environ, "PATH": self.path_env}
        return _run(full, check=check, timeout=timeout, input=input, env=env)

    def iptables(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`iptables ARGS` in the lab namespace with the daemon's backend."""
        return self.ns(["iptables", *args], check=check)

    def iptables_save(self, table: str = "filter") -> str:
        return self.ns(["iptables-save", "-t", table]).stdout

    def set_bridge_nf_call(self, value: int) -> None:
        """Set net.bridge.bridge-nf-call-iptables inside the lab namespace (it is per netns)."""
        self.ns(["sh", "-c", f"echo {int(value)} > {BRIDGE_NF_CALL}"])

    def bridge_nf_call(self) -> int:
        return int(self.ns(["cat", BRIDGE_NF_CALL]).stdout.strip())

    def exporter_cmd(self, *args: str) -> list[str]:
        """Command line that runs the exporter inside the lab namespace against the lab daemon."""
        return [
            "nsenter",
            f"--net={self.netns_path}",
            sys.executable,
            "-m",
            "exporter",
            "--docker.host",
            self.docker_host,
            # The lab daemon's own config, never the host's /etc/docker/daemon.json.
            "--docker.config",
            str(self.dir / "daemon.json"),
            *map(str, args),
        ]

    def exporter(
        self,
        *args: str,
        timeout: float = 120,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the exporter CLI once in the lab namespace. Never raises on its exit code.

        The host's PATH is kept (not the backend shim): the exporter must find both iptables
        variants by itself.
        """
        return subprocess.run(
            self.exporter_cmd(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO_ROOT,
            env=env or exporter_env(),
            check=False,
        )

    def exporter_popen(self, *args: str, log_name: str = "exporter.log") -> subprocess.Popen[bytes]:
        """Start a long-running exporter (e.g. `serve`); it is terminated by close()."""
        log = open(self.dir / log_name, "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                self.exporter_cmd(*args),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=exporter_env(),
                start_new_session=True,
            )
        finally:
            log.close()
        self._children.append(proc)
        return proc

    def free_port(self) -> int:
        """A TCP port free on 127.0.0.1 inside the lab namespace."""
        return int(self.ns([sys.executable, "-c", _FREE_PORT]).stdout.strip())

    def http_get(self, url: str, timeout: float = 5) -> str:
        """GET a URL from inside the lab namespace (where `serve` listens)."""
        return self.ns([sys.executable, "-c", _HTTP_GET, url, str(timeout)]).stdout

    # ------------------------------------------------------------------ topology

    def run(
        self,
        name: str,
        *,
        expose: Iterable[str | int] = (),
        links: Iterable[str | tuple[str | Container, str]] = (),
        network: str | None = None,
        cmd: Sequence[str] | None = None,
        restart: str = "always",
        extra: Sequence[str] = (),
        wait: bool = True,
    ) -> Container:
        """Start a container that stays up and serves HTTP on each exposed TCP port.

        UDP ports are only exposed (busybox has no UDP server); `udp_delivered` brings its own
        listener. links: "web:db" or (container, alias).
        """
        ports = tuple(parse_port(p) for p in expose)
        args: list[str] = ["run", "-d", "--name", name, "--restart", restart, "--stop-timeout", "2"]
        for port, proto in ports:
            args += ["--expose", f"{port}/{proto}"]
        for link in links:
            if isinstance(link, tuple):
                args += ["--link", f"{link[0]}:{link[1]}"]
            else:
                args += ["--link", link]
        if network:
            args += ["--network", network]
        args += [*extra, IMAGE]
        args += list(cmd) if cmd is not None else self.default_cmd(name, ports)
        cid = self.docker(*args).stdout.strip()
        listen = (
            tuple(sorted({p for p, proto in ports if proto == "tcp"} | {UNEXPOSED_PORT}))
            if cmd is None
            else ()
        )
        c = Container(name, cid, ports, network or "bridge", listen)
        self.containers[name] = c
        if wait:
            self._wait_running(c, time.monotonic() + 30)
        return c

    @staticmethod
    def default_cmd(name: str, ports: Sequence[tuple[int, str]]) -> list[str]:
        """sh as pid 1: httpd per TCP port, exit on SIGTERM (fast daemon shutdown), else sleep."""
        tcp = sorted({p for p, proto in ports if proto == "tcp"} | {UNEXPOSED_PORT})
        httpds = "".join(f"httpd -f -p {port} -h /www & " for port in tcp)
        script = (
            'trap "exit 0" TERM INT; mkdir -p /www; '
            f"echo {name} > /www/index.html; {httpds}"
            "while :; do sleep 3600 & wait $!; done"
        )
        return ["sh", "-c", script]

    def network_create(
        self,
        name: str,
        icc: bool = True,
        subnet: str | None = None,
        *,
        bridge_name: str | None = None,
        options: Sequence[str] = (),
    ) -> str:
        """A user-defined bridge network; icc=False sets com.docker.network.bridge.enable_icc."""
        args = ["network", "create", "--driver", "bridge"]
        if not icc:
            args += ["-o", "com.docker.network.bridge.enable_icc=false"]
        if bridge_name:
            args += ["-o", f"com.docker.network.bridge.name={bridge_name}"]
        if subnet:
            args += ["--subnet", subnet]
        args += [*options, name]
        return self.docker(*args).stdout.strip()

    def inspect(self, container: str | Container) -> dict[str, Any]:
        return json.loads(self.docker("inspect", str(container)).stdout)[0]

    def ip(self, container: str | Container, network: str = "bridge") -> str:
        """The container's IPv4 address on network."""
        nets = self.inspect(container)["NetworkSettings"]["Networks"]
        if network not in nets or not nets[network]["IPAddress"]:
            raise LabError(f"{container} has no IPv4 address on {network}: {sorted(nets)}")
        return str(nets[network]["IPAddress"])

    def addresses(self) -> dict[tuple[str, str], str]:
        """{(container name, network): IPv4} for every lab container, in one inspect call."""
        if not self.containers:
            return {}
        infos = json.loads(self.docker("inspect", *self.containers).stdout)
        return {
            (info["Name"].lstrip("/"), net): str(ep["IPAddress"])
            for info in infos
            for net, ep in info["NetworkSettings"]["Networks"].items()
            if ep.get("IPAddress")
        }

    def pid(self, container: str | Container) -> int:
        pid = int(self.inspect(container)["State"]["Pid"])
        if pid <= 0:
            raise LabError(f"{container} is not running")
        return pid

    # ------------------------------------------------------------------ ground truth

    def tcp_reachable(
        self, src: str | Container, dst_ip: str, port: int, timeout: float = 2
    ) -> bool:
        """Can SRC open a TCP connection to DST_IP:PORT? Real connection, answered by httpd.

        True: an HTTP answer came back. False: the connect timed out (dropped). Raises when the
        connection was refused or anything else happened: then there is no listener, and the
        answer would say nothing about the firewall.
        """
        t = max(1, int(timeout))
        script = f'printf "GET / HTTP/1.0\\r\\n\\r\\n" | timeout {t + 3} nc -w {t} {dst_ip} {port}'
        r = self.docker("exec", str(src), "sh", "-c", script, check=False, timeout=t + 30)
        out = r.stdout + r.stderr
        if "HTTP/1." in r.stdout:
            return True
        if "timed out" in out or r.returncode in (124, 143):
            return False
        raise LabError(
            f"tcp probe {src} -> {dst_ip}:{port} inconclusive (rc={r.returncode}): {out.strip()!r}"
        )

    def listening(self, dst_ip: str, port: int, timeout: float = 2) -> bool:
        """Does DST_IP:PORT answer HTTP from the lab namespace itself (the bridge's host side)?

        Host-to-container traffic is routed (INPUT/OUTPUT), not bridged (FORWARD), so icc does
        not apply: this tells "dropped by policy" apart from "nothing listens".
        """
        busybox = find_static_busybox() or "busybox"
        t = max(1, int(timeout))
        script = f'printf "GET / HTTP/1.0\\r\\n\\r\\n" | {busybox} nc -w {t} {dst_ip} {port}'
        r = self.ns(["timeout", str(t + 3), "sh", "-c", script], check=False, timeout=t + 30)
        return "HTTP/1." in r.stdout

    def tcp_reachable_many(
        self, probes: Iterable[tuple[str | Container, str, int]], timeout: float = 2
    ) -> dict[tuple[str, str, int], bool]:
        """Run several TCP probes in parallel: denied ones each cost a full timeout."""
        items = [(str(s), ip, int(p)) for s, ip, p in probes]
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = pool.map(lambda it: self.tcp_reachable(*it, timeout=timeout), items)
            return dict(zip(items, results, strict=True))

    def udp_delivered(
        self,
        src: str | Container,
        dst_container: str | Container,
        dst_ip: str,
        port: int,
        timeout: float = 2,
    ) -> bool:
        """Does a datagram from SRC to DST_IP:PORT arrive in DST_CONTAINER? (UDP: no handshake.)

        Probes to the same container and port are serialised (see `_udp_locks`).
        """
        with self._udp_locks_guard:
            lock = self._udp_locks.setdefault((str(dst_container), int(port)), threading.Lock())
        with lock:
            return self._udp_probe(src, dst_container, dst_ip, port, timeout)

    def udp_delivered_many(
        self,
        probes: Iterable[tuple[str | Container, str | Container, str, int]],
        timeout: float = 2,
    ) -> dict[tuple[str, str, str, int], bool]:
        """(src, dst_container, dst_ip, port) probes, in parallel where their targets differ."""
        items = [(str(s), str(d), ip, int(p)) for s, d, ip, p in probes]
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = pool.map(lambda it: self.udp_delivered(*it, timeout=timeout), items)
            return dict(zip(items, results, strict=True))

    def _udp_probe(
        self,
        src: str | Container,
        dst_container: str | Container,
        dst_ip: str,
        port: int,
        timeout: float,
    ) -> bool:
        token = f"dnp-{secrets.token_hex(8)}"
        listener = subprocess.Popen(
            [
                "nsenter",
                f"--net=/proc/{self.pid(dst_container)}/ns/net",
                sys.executable,
                "-c",
                _UDP_LISTENER,
                str(port),
                token,
                str(timeout),
                str(self.dir),
            ],  # names the lab dir, so close() can always find it
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert listener.stdin and listener.stdout
            ready = listener.stdout.readline().strip()
            if ready != "ready":
                raise LabError(f"udp listener in {dst_container} failed: {listener.stderr.read()}")
            _run(
                [
                    "nsenter",
                    f"--net=/proc/{self.pid(src)}/ns/net",
                    sys.executable,
                    "-c",
                    _UDP_SENDER,
                    dst_ip,
                    str(port),
                    token,
                ]
            )
            listener.stdin.write("go\n")
            listener.stdin.flush()
            out, _ = listener.communicate(timeout=timeout + 10)
        finally:
            _terminate(listener)
        return listener.returncode == 0 and out.startswith("got")

    # ------------------------------------------------------------------ internals

    def _link_backend(self, backend: str) -> None:
        """bin/ with iptables* -> the backend's variant, first on the daemon's PATH.

        Both backends are linked explicitly: on some hosts plain `iptables` is the legacy one.
        """
        self.bin_dir.mkdir(exist_ok=True)
        for tool in IPTABLES_TOOLS:
            base, _, suffix = tool.partition("-")
            variant = f"{base}-{backend}" + (f"-{suffix}" if suffix else "")
            target = shutil.which(variant, path=SYSTEM_PATH)
            if target is None:
                raise LabError(f"{variant} not found")
            link = self.bin_dir / tool
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)

    def _daemon_pid(self) -> int | None:
        if self._daemon is not None and self._daemon.poll() is None:
            return self._daemon.pid
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) and str(self.dir) in _cmdline(pid) else None

    def _wait_api(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._daemon is not None and self._daemon.poll() is not None:
                raise LabError(f"dockerd exited with {self._daemon.returncode}:\n{self.log_tail()}")
            if self._ping():
                return
            time.sleep(0.2)
        raise LabError(f"dockerd API not up after {timeout}s:\n{self.log_tail()}")

    def _ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(str(self.sock))
                s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                return b" 200 " in s.recv(4096).split(b"\r\n", 1)[0]
        except OSError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no daemon log)"

    def _ensure_bridge_nf_call(self) -> None:
        if self.bridge_nf_call() != 1:
            self.set_bridge_nf_call(1)
        if self.bridge_nf_call() != 1:
            raise LabError("bridge-nf-call-iptables is not 1 in the lab namespace")

    def docker_import(
        self, root: Path, image: str, changes: Sequence[str] = (), *, timeout: float = 300
    ) -> None:
        """`docker import` of the directory tree `root` as `image` (there is no registry)."""
        flags = [arg for change in changes for arg in ("-c", change)]
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        try:
            result = subprocess.run(
                [DOCKER_CLI, "-H", self.docker_host, "import", *flags, "-", image],
                stdin=tar.stdout,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        finally:
            assert tar.stdout
            tar.stdout.close()
            tar.wait()
        if result.returncode != 0:
            raise LabError(f"docker import {image} failed: {result.stderr}")

    def _ensure_image(self) -> None:
        if self.docker("image", "inspect", IMAGE, check=False).returncode == 0:
            return
        busybox = find_static_busybox()
        if busybox is None:
            raise LabError("no static busybox")
        root = self.dir / "rootfs"
        for d in ("bin", "etc", "tmp", "www", "proc", "sys", "dev"):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(busybox, root / "bin" / "busybox")
        for applet in BUSYBOX_APPLETS:
            link = root / "bin" / applet
            if not link.is_symlink():
                link.symlink_to("busybox")
        self.docker_import(root, IMAGE, ('CMD ["/bin/sh"]',), timeout=120)
        shutil.rmtree(root)

    def _wait_running(self, c: Container, deadline: float) -> None:
        """Until running, with an IP, and every httpd listening (probes need a listener)."""
        last = ""
        while time.monotonic() < deadline:
            r = self.docker("inspect", c.name, check=False)
            if r.returncode == 0:
                info = json.loads(r.stdout)[0]
                nets = info["NetworkSettings"]["Networks"]
                has_ip = any(n.get("IPAddress") for n in nets.values())
                if info["State"]["Running"] and has_ip:
                    if not c.listen_tcp:
                        return
                    ns = self.docker("exec", c.name, "netstat", "-ltn", check=False)
                    listening = ns.stdout
                    if all(f":{p} " in listening for p in c.listen_tcp):
                        return
                    last = listening
                else:
                    last = json.dumps(info["State"])
            time.sleep(0.2)
        raise LabError(f"container {c.name} not ready: {last}\n{self.log_tail()}")

    def _remove_all_containers(self) -> None:
        ids = self.docker("ps", "-aq", timeout=30).stdout.split()
        if ids:
            self.docker("rm", "-f", *ids, timeout=60)

    def _kill_leftovers(self) -> None:
        """containerd shims outlive a daemon stopped with containers running."""
        me = os.getpid()
        for pid in _pids():
            if pid != me and str(self.dir) in _cmdline(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not any(str(self.dir) in _cmdline(p) for p in _pids() if p != me):
                return
            time.sleep(0.1)

    def _unmount_all(self) -> None:
        """Lazily unmount everything under the lab dir, deepest first."""
        prefix = str(self.dir)
        for _ in range(3):  # a lazy unmount can reveal a mount underneath
            points = [p for p in _mountpoints() if p == prefix or p.startswith(prefix + "/")]
            if not points:
                return
            for p in sorted(points, key=lambda x: x.count("/"), reverse=True):
                subprocess.run(["umount", "-l", p], capture_output=True, check=False)
        left = [p for p in _mountpoints() if p.startswith(prefix + "/")]
        if left:
            raise LabError(f"still mounted: {left}")


def lab_fixture(
    *,
    scope: str = "module",
    backends: Sequence[str] = BACKENDS,
    icc: bool = False,
    extra_args: Sequence[str] = (),
    setup: Callable[[DockerLab], object] | None = None,
) -> Any:
    """A pytest fixture factory: one lab per backend per scope, torn down afterwards.

        lab = lab_fixture(icc=False, setup=build_topology)   # in a test module

    pytest is imported here, not at module level, so `make demo` can use the lab without it.
    """
    import pytest

    @pytest.fixture(scope=scope, params=list(backends), ids=list(backends))
    def _lab(request: Any) -> Iterator[DockerLab]:
        lab = DockerLab()
        try:
            lab.start(icc=icc, backend=request.param, extra_args=extra_args)
            if setup is not None:
                with lab.timings.step("setup"):
                    setup(lab)
            yield lab
        finally:
            try:
                with lab.timings.step("close"):
                    lab.close()
            finally:
                record_timings(request, lab)

    return _lab


def record_timings(request: Any, lab: DockerLab) -> None:
    """Hand the lab's step timings to tests/conftest.py's summary, when that is loaded."""
    try:
        log = request.getfixturevalue("lab_timing_log")
    except Exception:  # noqa: BLE001 - a conftest without the fixture: just don't record
        return
    label = f"{request.node.nodeid} [{lab.backend}, icc={lab.icc}]"
    log.append(f"{label}: {lab.timings.summary()}")


# ---------------------------------------------------------------------- helpers


def _run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60,
    input: str | bytes | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """subprocess.run with captured text; on failure raise with the command and its stderr."""
    if isinstance(input, bytes):
        input = input.decode()
    r = subprocess.run(
        list(cmd),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        env=env,
        check=False,
    )
    if check and r.returncode != 0:
        raise LabError(
            f"command failed (rc={r.returncode}): {' '.join(cmd)}\n"
            f"stderr: {r.stderr.strip()}\nstdout: {r.stdout.strip()[-2000:]}"
        )
    return r


def exporter_env() -> dict[str, str]:
    """The environment the exporter runs with: no DOCKER_HOST, this checkout importable."""
    env = {**os.environ}
    env.pop("DOCKER_HOST", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _terminate(proc: subprocess.Popen[Any], timeout: float = 5) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float, proc: subprocess.Popen[Any] | None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.pid == pid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.1)
                return True
        elif not _alive(pid):
            return True
        else:
            time.sleep(0.1)
    return False


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _mountpoints() -> list[str]:
    """Mount points from /proc/self/mountinfo, with the kernel's octal escapes decoded."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            raw = line.split()[4]
            points.append(raw.encode().decode("unicode_escape"))
    return points
