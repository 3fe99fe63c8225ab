"""dockerd's firewall settings (--iptables, --ip6tables, --icc) and the kernel sysctls that matter.

fetch() reads only files:

- dockerd-cmdline.txt: the judged dockerd's argv, one element per line, from /proc/PID/cmdline
  (absent when no dockerd process is visible, e.g. the exporter runs in a PID namespace of its own);
- daemon.json: the daemon config file as dockerd sees it (absent when not readable): the explicit
  `daemon_config`, else dockerd's `--config-file`, else /etc/docker/daemon.json, read through
  /proc/PID/root when possible (dockerd's own mount namespace), else from our own filesystem;
- sysctl.txt: `bridge-nf-call-iptables=1`, `bridge-nf-call-ip6tables=1`, `net.ipv4.ip_forward=1`,
  read from /proc/sys in the exporter's network namespace. The value is `absent` when the file does
  not exist (br_netfilter is not loaded) and `unreadable` when it exists but cannot be read.

Which dockerd: every process whose argv[0] is named dockerd; those in the exporter's own network
namespace (their rules are the ones this exporter reads), else those whose namespace cannot be read
(not root); one known to be in another namespace is never judged. When several remain, the one whose
-H/--host names the socket the exporter talks to (`docker_host`, else DOCKER_HOST, else the default
socket; `fd://`, systemd's socket activation, counts as the default socket). When that still leaves
several, none is judged (the settings are then unknown rather than guessed).

Note that daemon.json may have been edited since dockerd started; dockerd reads it only at start
(and on SIGHUP for a few keys, none of which is read here).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

from exporter.config import DEFAULT_DAEMON_JSON, DEFAULT_DOCKER_SOCKET, DEFAULT_PROCFS
from exporter.model import HostSettings, Setting
from exporter.sources.base import SourceError, parse_go_bool, require

CMDLINE_FILE = "dockerd-cmdline.txt"
DAEMON_JSON_FILE = "daemon.json"
SYSCTL_FILE = "sysctl.txt"
# /proc/net/dev as the kernel prints it: which interfaces this network namespace holds.
NET_DEV_FILE = "proc-net-dev.txt"

# sysctl.txt key -> path under /proc/sys.
SYSCTLS = {
    "bridge-nf-call-iptables": "net/bridge/bridge-nf-call-iptables",
    "bridge-nf-call-ip6tables": "net/bridge/bridge-nf-call-ip6tables",
    "net.ipv4.ip_forward": "net/ipv4/ip_forward",
}
ABSENT = "absent"
UNREADABLE = "unreadable"

# Flags read from the cmdline, and their daemon.json keys.
_FLAGS = ("iptables", "ip6tables", "icc")


class SettingsSource:
    name = "settings"

    def __init__(
        self,
        procfs: str = DEFAULT_PROCFS,
        daemon_config: str | None = None,
        docker_host: str | None = None,
    ) -> None:
        self.procfs = procfs
        self.daemon_config = daemon_config
        self.docker_host = docker_host

    # -- fetch ----------------------------------------------------------------------------------

    def fetch(self) -> dict[str, str]:
        files: dict[str, str] = {}
        pid, argv = self._find_dockerd()
        if argv is not None:
            files[CMDLINE_FILE] = "".join(arg + "\n" for arg in argv)
        config = self._read_daemon_json(pid, argv)
        if config is not None:
            files[DAEMON_JSON_FILE] = config
        files[SYSCTL_FILE] = self._read_sysctls()
        net_dev = _read_text(os.path.join(self.procfs, "net", "dev"))
        if net_dev is not None:
            files[NET_DEV_FILE] = net_dev
        return files

    def _find_dockerd(self) -> tuple[str | None, list[str] | None]:
        try:
            entries = os.listdir(self.procfs)
        except OSError as error:
            raise SourceError(f"settings: cannot list {self.procfs}: {error.strerror}") from None
        found: list[tuple[str, list[str]]] = []
        for pid in sorted((e for e in entries if e.isdigit()), key=int):
            argv = _read_cmdline(os.path.join(self.procfs, pid, "cmdline"))
            if argv and os.path.basename(argv[0]) == "dockerd":
                found.append((pid, argv))
        if not found:
            return None, None
        # A dockerd known to be in another network namespace manages rules this exporter does
        # not see: never judge it. One whose namespace cannot be read (not root) may be ours.
        own_ns = _readlink(os.path.join(self.procfs, "self", "ns", "net"))
        same_ns: list[tuple[str, list[str]]] = []
        unknown_ns: list[tuple[str, list[str]]] = []
        for pid, argv in found:
            ns = _readlink(os.path.join(self.procfs, pid, "ns", "net"))
            if ns is None or own_ns is None:
                unknown_ns.append((pid, argv))
            elif ns == own_ns:
                same_ns.append((pid, argv))
        candidates = same_ns or unknown_ns
        if not candidates:
            return None, None
        if len(candidates) == 1:
            return candidates[0]
        wanted = _socket(self.docker_host or os.environ.get("DOCKER_HOST") or "")
        matching = [(pid, argv) for pid, argv in candidates if wanted in _hosts(argv)]
        if len(matching) == 1:
            return matching[0]
        return None, None

    def _read_daemon_json(self, pid: str | None, argv: list[str] | None) -> str | None:
        if self.daemon_config is not None:
            return _read_text(self.daemon_config)
        path = (_flag_value(argv, "config-file") if argv else None) or DEFAULT_DAEMON_JSON
        if pid is not None and os.path.isabs(path):
            root = os.path.join(self.procfs, pid, "root")
            if os.path.isdir(root):
                # dockerd's own view of the file system (the exporter may run in a container).
                return _read_text(root + path)
        return _read_text(path)

    def _read_sysctls(self) -> str:
        lines = []
        for key, rel in SYSCTLS.items():
            path = os.path.join(self.procfs, "sys", rel)
            try:
                with open(path, encoding="ascii") as handle:
                    value = handle.read().strip()
            except FileNotFoundError:
                value = ABSENT
            except (OSError, ValueError):
                value = UNREADABLE
            lines.append(f"{key}={value}\n")
        return "".join(lines)

    # -- parse ----------------------------------------------------------------------------------

    def parse(self, files: Mapping[str, str]) -> HostSettings:
        return parse_settings(files)


def parse_settings(files: Mapping[str, str]) -> HostSettings:
    sysctls = parse_sysctls(require("settings", files, SYSCTL_FILE))
    argv = files[CMDLINE_FILE].splitlines() if CMDLINE_FILE in files else None
    config: dict[str, object] | None = None
    config_ok = True
    if DAEMON_JSON_FILE in files:
        config, config_ok = _parse_daemon_json(files[DAEMON_JSON_FILE])
    flags = parse_dockerd_flags(argv) if argv is not None else {}

    def setting(key: str, default: bool | None) -> Setting[bool | None]:
        if key in flags:
            return Setting(flags[key], "cmdline")
        if config is not None and isinstance(config.get(key), bool):
            return Setting(config[key], "daemon.json")  # type: ignore[arg-type]
        if config is not None and config.get(key) is not None:
            # dockerd refuses to start with such a value: the file changed since, or it is not
            # the one dockerd read. Either way the running value is unknown, not the default.
            return Setting(None, "unknown")
        if argv is not None and config_ok:
            return Setting(default, "default")
        return Setting(None, "unknown")

    return HostSettings(
        iptables=setting("iptables", True),
        # Docker 20.10 defaults to False, Docker 27+ to True: no version-independent answer.
        ip6tables=setting("ip6tables", None),
        icc=setting("icc", True),
        bridge_nf_call_iptables=sysctls.get("bridge-nf-call-iptables"),
        bridge_nf_call_ip6tables=sysctls.get("bridge-nf-call-ip6tables"),
        ip_forward=sysctls.get("net.ipv4.ip_forward"),
        interfaces=parse_net_dev(files[NET_DEV_FILE]) if NET_DEV_FILE in files else None,
    )


def parse_net_dev(text: str) -> frozenset[str]:
    """Interface names from /proc/net/dev: two header lines, then `NAME: counters` per line."""
    lines = text.splitlines()
    if len(lines) < 2 or not lines[0].startswith("Inter-"):
        raise SourceError(f"settings: {NET_DEV_FILE} does not start with /proc/net/dev's header")
    names = set()
    for number, line in enumerate(lines[2:], 3):
        name, sep, counters = line.partition(":")
        if not sep or not name.strip() or len(counters.split()) != 16:
            raise SourceError(f"settings: {NET_DEV_FILE} line {number} is cut short: {line!r}")
        names.add(name.strip())
    return frozenset(names)


def parse_sysctls(text: str) -> dict[str, int | None]:
    """sysctl.txt to values.

    `absent` bridge-nf-call sysctls mean br_netfilter is not loaded: bridged traffic then does not
    pass iptables at all, exactly as with the sysctl set to 0, so they read as 0. An absent
    ip_forward (no IPv4 in this namespace?) and any `unreadable` value read as None (unknown).
    """
    values: dict[str, int | None] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        key, sep, raw = line.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep:
            raise SourceError(f"settings: {SYSCTL_FILE} line {number} is not key=value: {line!r}")
        if raw == ABSENT:
            values[key] = 0 if key.startswith("bridge-nf-call") else None
        elif raw == UNREADABLE:
            values[key] = None
        else:
            try:
                values[key] = int(raw)
            except ValueError:
                raise SourceError(
                    f"settings: {SYSCTL_FILE} line {number} has a non-integer value: {line!r}"
                ) from None
    return values


def parse_dockerd_flags(argv: Sequence[str]) -> dict[str, bool]:
    """--iptables / --ip6tables / --icc as dockerd's argv sets them (the last one wins).

    dockerd parses flags with pflag: `--icc=false`, `--icc=0`, `--icc` (true). Go's flag package
    forms with one dash (`-icc=false`, old dockerd) are accepted too, and so is `--icc false`
    (pflag would not take it, so a running dockerd never has it; reading it as a value is harmless).
    Parsing stops at `--`.
    """
    found: dict[str, bool] = {}
    args = list(argv[1:])
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            break
        if not arg.startswith("-"):
            continue
        name, sep, value = arg.lstrip("-").partition("=")
        if name not in _FLAGS:
            continue
        if sep:
            parsed = parse_go_bool(value)
            if parsed is not None:
                found[name] = parsed
            continue
        if i < len(args) and parse_go_bool(args[i]) is not None:
            found[name] = bool(parse_go_bool(args[i]))
            i += 1
        else:
            found[name] = True
    return found


def _parse_daemon_json(text: str) -> tuple[dict[str, object] | None, bool]:
    """The config as a dict and whether it could be read (a garbled file leaves keys unknown)."""
    if not text.strip():
        return {}, True
    try:
        value = json.loads(text)
    except ValueError:
        return None, False
    if not isinstance(value, dict):
        return None, False
    return value, True


def _flag_value(argv: Sequence[str], name: str) -> str | None:
    """The last value of a string flag (`--name=V`, `--name V`, one dash too)."""
    value = None
    for i, arg in enumerate(argv[1:], 1):
        if arg == "--":
            break
        key, sep, rest = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or key != name:
            continue
        if sep:
            value = rest
        elif i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _hosts(argv: Sequence[str]) -> set[str]:
    """The sockets a dockerd listens on, normalized (see `_socket`)."""
    hosts: list[str] = []
    for i, arg in enumerate(argv[1:], 1):
        if arg == "--":
            break
        for flag in ("-H", "--host"):
            if arg == flag and i + 1 < len(argv):
                hosts.append(argv[i + 1])
            elif arg.startswith(flag + "="):
                hosts.append(arg[len(flag) + 1 :])
            elif flag == "-H" and arg.startswith("-H") and len(arg) > 2 and arg[2] != "=":
                hosts.append(arg[2:])
    return {_socket(h) for h in hosts} if hosts else {_socket("")}


def _socket(host: str) -> str:
    """A Docker host address in one comparable form."""
    host = host.strip()
    if not host or host.startswith("fd://"):
        host = "unix://" + DEFAULT_DOCKER_SOCKET
    if host.startswith("unix://"):
        path = os.path.normpath(host[len("unix://") :])
        if path.startswith("/var/run/"):
            path = path[len("/var") :]
        return "unix://" + path
    return host.rstrip("/")


def _read_cmdline(path: str) -> list[str] | None:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    if not data:
        return None  # a kernel thread or a zombie
    return [part.decode("utf-8", "surrogateescape") for part in data.rstrip(b"\0").split(b"\0")]


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
            return handle.read()
    except OSError:
        return None
