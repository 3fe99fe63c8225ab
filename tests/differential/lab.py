"""A bridge lab without dockerd: one "host" namespace with a bridge, four "container" namespaces.

The host namespace holds a bridge named docker0 (it exists only inside that namespace), the
firewall rules under test (both iptables backends and ebtables) and br_netfilter's sysctls. Each
container namespace has one veth end (eth0) whose peer is a bridge port. Neighbours are static
(nud permanent): no ARP frame ever crosses the bridge, so the kernel decides exactly the IP packets
the evaluator is asked about.

Sockets of a namespace are made by one worker thread that entered it with setns(2): setns affects
only the calling thread, and a socket keeps its namespace afterwards, so probing itself runs in
the main thread with non-blocking sockets, all flows at once.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import selectors
import shutil
import socket
import struct
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

BRIDGE = "docker0"
SUBNET_PREFIX = "172.18.0."
GATEWAY = SUBNET_PREFIX + "1"
CONTAINERS = 4
# A destination port no generated rule names (no --dport covers it): its flows meet only the
# rules that do not look at the destination port.
UNNAMED_PORT = 9999
TCP_PORTS = (80, 443, 5432, UNNAMED_PORT)
UDP_PORTS = (53, UNNAMED_PORT)
# Client source ports come from Linux's default ephemeral range, the one the evaluator models
# (matches.EPHEMERAL_PORTS), and every probe of a run gets its own: no conntrack entry of an
# earlier probe can turn a later first packet into ESTABLISHED.
EPHEMERAL_FIRST, EPHEMERAL_LAST = 32768, 60999
# A dropped SYN or datagram is a timeout; an accepted one arrives in well under a millisecond.
PROBE_TIMEOUT = 0.35
# A drop that contradicts an "allow" is probed again this long before it counts: a busy machine
# must not turn a slow packet into a reported evaluator bug.
RECHECK_TIMEOUT = 2.0
CLONE_NEWNET = 0x40000000
# Short conntrack timeouts in the host namespace (no conntrack tool to flush the table): entries
# of probes whose FIN/RST was dropped must not pile up over a long run.
CONNTRACK_TIMEOUTS = {
    "nf_conntrack_tcp_timeout_established": 30,
    "nf_conntrack_tcp_timeout_syn_sent": 10,
    "nf_conntrack_tcp_timeout_syn_recv": 10,
    "nf_conntrack_tcp_timeout_time_wait": 5,
    "nf_conntrack_tcp_timeout_close_wait": 5,
    "nf_conntrack_tcp_timeout_fin_wait": 5,
    "nf_conntrack_udp_timeout": 5,
    "nf_conntrack_udp_timeout_stream": 5,
}
TOOLS = ("ip", "nsenter", "iptables-nft-restore", "iptables-legacy-restore", "iptables-nft-save",
         "iptables-legacy-save", "ebtables-nft-restore", "ebtables-nft-save", "ipset", "nft")  # fmt: skip
# The lab's ipsets, created once in the host namespace (a set a rule names cannot be destroyed, so
# each ruleset flushes and refills them instead). Names live only inside that namespace.
IPSETS = {
    "dnpdiff-hosts": "hash:ip family inet",
    "dnpdiff-nets": "hash:net family inet",
    "dnpdiff-bitmap": "bitmap:ip range 172.18.0.0/24",
}


# The native nftables tables a ruleset may hold (family, name): none is a table iptables-nft or
# ebtables-nft owns, so deleting them before each ruleset leaves those tools' tables alone
# (`nft flush ruleset` would remove those too).
NATIVE_TABLES = (("inet", "dnpdiff_inet"), ("ip", "dnpdiff_ip"), ("bridge", "dnpdiff_bridge"))
# Creating a table first makes its deletion valid whether or not it exists; one transaction.
_DELETE_NATIVE = "".join(f"table {f} {n} {{}}\ndelete table {f} {n}\n" for f, n in NATIVE_TABLES)


class LabError(RuntimeError):
    pass


@dataclass(frozen=True)
class Probe:
    """One flow asked about: from container `src` to container `dst` (indexes)."""

    src: int
    dst: int
    protocol: str  # tcp or udp
    port: int


@dataclass(frozen=True)
class Loaded:
    """What the real save tools print after a ruleset was restored."""

    iptables_nft: str
    iptables_legacy: str
    ebtables: str
    ipset: str
    nft_json: str  # `nft -j list ruleset`: the native tables and iptables-nft's own


def address(index: int) -> str:
    return f"{SUBNET_PREFIX}{index + 2}"


def mac(index: int) -> str:
    return f"02:42:ac:12:00:{index + 2:02x}"


def preflight() -> None:
    """Fail loudly (never skip): a lab that silently skips would check no firewall at all."""
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (network namespaces, iptables)")
    problems += [f"{tool} not found (Debian package iptables/ebtables/iproute2)"
                 for tool in TOOLS if shutil.which(tool) is None]  # fmt: skip
    if problems:
        raise LabError("cannot run the differential lab: " + "; ".join(problems))


def _run(args: list[str], stdin: str | None = None) -> str:
    done = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise LabError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def lab_namespaces(prefix: str = "dnpdiff-") -> list[str]:
    """Names from `ip netns list` that start with prefix."""
    names = [line.split()[0] for line in _run(["ip", "netns", "list"]).splitlines() if line]
    return [n for n in names if n.startswith(prefix)]


def _enter(netns_path: str) -> None:
    """Thread initializer: move this worker thread (only it) into a network namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(netns_path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns_path}")
    finally:
        os.close(fd)


class BridgeLab:
    """Create with `with BridgeLab() as lab:`; every namespace is deleted on exit."""

    def __init__(self) -> None:
        self.name = f"dnpdiff-{os.getpid()}-{secrets.token_hex(3)}"
        self.host = f"{self.name}-host"
        self.containers = [f"{self.name}-c{i}" for i in range(CONTAINERS)]
        self._workers: list[ThreadPoolExecutor] = []
        self._tcp_listeners: list[socket.socket] = []
        self._udp_listeners: dict[tuple[int, int], socket.socket] = {}
        self._next_sport = [EPHEMERAL_FIRST] * CONTAINERS
        self._token = 0

    # -- life cycle ----------------------------------------------------------------------------

    def __enter__(self) -> BridgeLab:
        preflight()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def namespaces(self) -> list[str]:
        return [self.host, *self.containers]

    def _build(self) -> None:
        for netns in self.namespaces():
            _run(["ip", "netns", "add", netns])
        self.host_sh(
            f"ip link add {BRIDGE} type bridge && ip addr add {GATEWAY}/16 dev {BRIDGE} && "
            f"ip link set {BRIDGE} up && ip link set lo up && "
            "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && "
            "echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables && "
            "echo 1 > /proc/sys/net/bridge/bridge-nf-call-ip6tables"
        )
        for index, netns in enumerate(self.containers):
            self.host_sh(
                f"ip link add veth{index} type veth peer name eth0 netns {netns} && "
                f"ip link set veth{index} master {BRIDGE} up"
            )
            neighbours = " && ".join(
                f"ip neigh replace {address(peer)} lladdr {mac(peer)} nud permanent dev eth0"
                for peer in range(CONTAINERS)
                if peer != index
            )
            self.sh(
                netns,
                "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && "
                f"ip link set eth0 address {mac(index)} && "
                f"ip addr add {address(index)}/16 dev eth0 && ip link set eth0 up && "
                f"ip link set lo up && {neighbours}",
            )
        self.host_sh("ipset restore", "".join(f"create {n} {t}\n" for n, t in IPSETS.items()))
        self._check_bridge_netfilter()
        self._shorten_conntrack_timeouts()
        for netns in self.containers:
            worker = ThreadPoolExecutor(1, initializer=_enter, initargs=(f"/run/netns/{netns}",))
            self._workers.append(worker)
        for index in range(CONTAINERS):
            self._workers[index].submit(self._listen, index).result()

    def _check_bridge_netfilter(self) -> None:
        values = self.host_sh(
            "cat /proc/sys/net/bridge/bridge-nf-call-iptables "
            "/proc/sys/net/bridge/bridge-nf-call-ip6tables"
        ).split()
        if values != ["1", "1"]:
            raise LabError(f"br_netfilter sysctls are {values}, not 1 1 (modprobe br_netfilter)")

    def _shorten_conntrack_timeouts(self) -> None:
        # Writing a value loads nf_conntrack for this namespace if no rule has used it yet.
        self.host_sh(
            " && ".join(
                f"echo {v} > /proc/sys/net/netfilter/{k}" for k, v in CONNTRACK_TIMEOUTS.items()
            )  # fmt: skip
        )

    def _listen(self, index: int) -> None:
        for port in TCP_PORTS:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((address(index), port))
            listener.listen(1024)
            listener.setblocking(False)
            self._tcp_listeners.append(listener)
        for port in UDP_PORTS:
            receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            receiver.bind((address(index), port))
            receiver.setblocking(False)
            self._udp_listeners[(index, port)] = receiver

    def close(self) -> None:
        for worker in self._workers:
            worker.shutdown(wait=True)
        for sock in [*self._tcp_listeners, *self._udp_listeners.values()]:
            sock.close()
        problems = []
        for netns in self.namespaces():
            if os.path.exists(f"/run/netns/{netns}"):
                try:
                    _run(["ip", "netns", "delete", netns])
                except LabError as error:
                    problems.append(str(error))
        if problems:
            raise LabError("; ".join(problems))

    # -- commands ------------------------------------------------------------------------------

    def sh(self, netns: str, script: str, stdin: str | None = None) -> str:
        return _run(["nsenter", f"--net=/run/netns/{netns}", "sh", "-c", script], stdin)

    def host_sh(self, script: str, stdin: str | None = None) -> str:
        return self.sh(self.host, script, stdin)

    def load(
        self, iptables_nft: str, iptables_legacy: str, ebtables: str, ipset: str, nft: str = ""
    ) -> Loaded:
        """Refill the sets, replace every table of both iptables backends, ebtables and the
        native tables (NATIVE_TABLES, an `nft -f` script); read everything back.

        `ipset` holds `ipset restore` lines for the sets in IPSETS (flush and add only).
        """
        self._restore("ipset restore", ipset)
        self._restore("iptables-nft-restore", iptables_nft)
        self._restore("iptables-legacy-restore", iptables_legacy)
        self._restore("ebtables-nft-restore", ebtables)
        # The old native tables go and the new ones come in one transaction, after the
        # iptables-nft tables were replaced: those restores never touch a native table.
        self._restore("nft -f -", _DELETE_NATIVE + nft)
        return Loaded(
            self.host_sh("iptables-nft-save"),
            self.host_sh("iptables-legacy-save"),
            self.host_sh("ebtables-nft-save"),
            self.host_sh("ipset save"),
            self.host_sh("nft -j list ruleset"),
        )

    def _restore(self, tool: str, text: str) -> None:
        """One retry: the first use of a target (LOG) may autoload a module and fail once."""
        try:
            self.host_sh(tool, text)
        except LabError:
            time.sleep(0.2)
            self.host_sh(tool, text)

    # -- probing -------------------------------------------------------------------------------

    def _sport(self, src: int) -> int:
        port = self._next_sport[src]
        self._next_sport[src] = port + 1 if port < EPHEMERAL_LAST else EPHEMERAL_FIRST
        return port

    @staticmethod
    def _client(index: int, protocol: str, sport: int) -> socket.socket:
        kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(socket.AF_INET, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # RST on close: no TIME_WAIT to keep the source port busy for the next round.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.bind((address(index), sport))
        sock.setblocking(False)
        return sock

    def _clients(self, probes: list[Probe]) -> list[socket.socket]:
        futures = [
            self._workers[p.src].submit(self._client, p.src, p.protocol, self._sport(p.src))
            for p in probes
        ]
        return [f.result() for f in futures]

    def probe(self, probes: list[Probe], timeout: float = PROBE_TIMEOUT) -> list[bool]:
        """Whether each flow gets through, all probed at once.

        TCP: the handshake completes at both ends, connect() succeeds and the listener accepts
        it (so the client's ACK, an ESTABLISHED packet in the original direction, passed too).
        UDP: the datagram's unique token arrives.
        """
        clients = self._clients(probes)
        tokens: dict[bytes, int] = {}
        passed = [False] * len(probes)
        pending: dict[int, int] = {}
        selector = selectors.DefaultSelector()
        try:
            for i, (probe, sock) in enumerate(zip(probes, clients, strict=True)):
                target = (address(probe.dst), probe.port)
                if probe.protocol == "tcp":
                    result = sock.connect_ex(target)
                    if result == 0:
                        passed[i] = True
                    elif result == errno.EINPROGRESS:
                        pending[sock.fileno()] = i
                        selector.register(sock, selectors.EVENT_WRITE)
                else:
                    self._token += 1
                    token = f"dnpdiff {self.name} {self._token}".encode()
                    tokens[token] = i
                    sock.sendto(token, target)
            deadline = time.monotonic() + timeout
            self._wait_connects(selector, pending, clients, passed, deadline)
            self._collect_datagrams(tokens, passed, deadline)
            self._require_accepted(probes, clients, passed, deadline)
        finally:
            selector.close()
            for sock in clients:
                sock.close()
            self._drain_accepts()
        return passed

    @staticmethod
    def _wait_connects(
        selector: selectors.BaseSelector,
        pending: dict[int, int],
        clients: list[socket.socket],
        passed: list[bool],
        deadline: float,
    ) -> None:
        while pending and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                i = pending.pop(key.fd)
                selector.unregister(key.fileobj)
                # 0: connected; ECONNREFUSED, EHOSTUNREACH...: a REJECT, so denied.
                passed[i] = clients[i].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        # Still pending is a SYN or SYN-ACK dropped; a late connect would still be seen here.
        for i in pending.values():
            try:
                clients[i].getpeername()
                passed[i] = True
            except OSError:
                passed[i] = False

    def _collect_datagrams(
        self, tokens: dict[bytes, int], passed: list[bool], deadline: float
    ) -> None:
        if not tokens:
            return
        seen: set[bytes] = set()
        while True:  # at least one pass, also when the TCP wait used up the deadline
            for receiver in self._udp_listeners.values():
                while True:
                    try:
                        seen.add(receiver.recv(256))
                    except BlockingIOError:
                        break
            if len(seen) >= len(tokens) or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        for token, i in tokens.items():
            passed[i] = token in seen

    def _require_accepted(
        self,
        probes: list[Probe],
        clients: list[socket.socket],
        passed: list[bool],
        deadline: float,
    ) -> None:
        """A connected TCP probe passes only once its listener has accepted it."""
        waiting = {
            clients[i].getsockname(): i
            for i, probe in enumerate(probes)
            if probe.protocol == "tcp" and passed[i]
        }
        # The client's ACK is in flight when connect() returns: give it a moment past the deadline.
        end = max(deadline, time.monotonic() + 0.05)
        accepted: set[tuple[str, int]] = set()
        while True:
            accepted |= self._drain_accepts()
            if waiting.keys() <= accepted or time.monotonic() >= end:
                break
            time.sleep(0.005)
        for peer, i in waiting.items():
            passed[i] = peer in accepted

    def _drain_accepts(self) -> set[tuple[str, int]]:
        """Accept and close every queued connection; the clients' (address, port)."""
        peers = set()
        for listener in self._tcp_listeners:
            while True:
                try:
                    accepted, peer = listener.accept()
                except BlockingIOError:
                    break
                peers.add(peer)
                accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                accepted.close()
        return peers
