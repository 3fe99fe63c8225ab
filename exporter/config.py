"""Settings as frozen values, and the parsers for the flag value formats (durations, addresses).

`CheckConfig` is what one check needs (`exporter.check.run_check`); `ExporterConfig` is every
global flag, built once by `exporter.cli` and read by the shells (scheduler, http, sources). Its
field defaults are the flags' defaults, and the DEFAULT_* paths here are the one home of the host
paths' defaults. Each duration flag accepts only its *_RANGE (a typo like `1e10` is refused, not
turned into a datetime overflow or a wait that never ends).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

ExpectIcc = Literal["disabled", "enabled", "any"]
ExpectIptables = Literal["enabled", "any"]

EXPECT_ICC_CHOICES: tuple[str, ...] = ("disabled", "enabled", "any")
EXPECT_IPTABLES_CHOICES: tuple[str, ...] = ("enabled", "any")
IPTABLES_BACKENDS: tuple[str, ...] = ("auto", "nft", "legacy", "libiptc")
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warn", "error")
LOG_FORMATS: tuple[str, ...] = ("logfmt", "json")

# The one home of the host paths' defaults (sources read them from here).
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
DEFAULT_DOCKER_HOST = "unix://" + DEFAULT_DOCKER_SOCKET
DEFAULT_DAEMON_JSON = "/etc/docker/daemon.json"
DEFAULT_PROCFS = "/proc"
DEFAULT_LISTEN_ADDRESS = ":9863"
DEFAULT_CHECK_TIMEOUT = 10.0
# Seconds from a Docker event to the check it asks for: long enough to fold one `docker run` or
# `docker rm` (a few events within ~0.1 s) into one check, short enough for an event to show in
# /metrics within 2 s.
DEFAULT_CHECK_DEBOUNCE = 0.2


@dataclass(frozen=True)
class CheckConfig:
    """What one check is asked to verify, and how long it may take."""

    # What the operator wants dockerd's icc to be ("any": no icc_posture finding).
    expect_icc: ExpectIcc = "any"
    # "enabled": a dockerd running with --iptables=false is an iptables_posture finding.
    expect_iptables: ExpectIptables = "any"
    # List every evaluated flow in Report.flows, not only link flows and unexpected verdicts.
    all_flows: bool = False
    # Seconds; the per-check deadline (sources use it for their own calls).
    timeout: float = DEFAULT_CHECK_TIMEOUT


@dataclass(frozen=True)
class ListenAddress:
    # "" means every address (IPv6 and IPv4 where the host allows it).
    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ExporterConfig:
    """Every global flag, parsed and validated."""

    docker_host: str = DEFAULT_DOCKER_HOST
    docker_timeout: float = 5.0
    # None: the file dockerd itself reads (its --config-file, else DEFAULT_DAEMON_JSON), through
    # dockerd's own root where the exporter runs in another mount namespace.
    docker_config: str | None = None
    iptables_backend: str = "auto"
    procfs: str = DEFAULT_PROCFS
    check_interval: float = 15.0
    check_timeout: float = DEFAULT_CHECK_TIMEOUT
    check_debounce: float = DEFAULT_CHECK_DEBOUNCE
    expect_icc: ExpectIcc = "any"
    expect_iptables: ExpectIptables = "any"
    listen_address: ListenAddress = field(
        default_factory=lambda: parse_listen_address(DEFAULT_LISTEN_ADDRESS)
    )
    telemetry_path: str = "/metrics"
    # Prometheus' --web.max-connections default; lowered at start to leave descriptors to checks.
    web_max_connections: int = 512
    # Total time for a request's line and headers to arrive; a real scraper needs milliseconds.
    web_read_header_timeout: float = 10.0
    # Total time to send one response (~100 kB) to a client that does not read.
    web_write_timeout: float = 10.0
    # exporter-toolkit's web configuration (TLS, basic auth); None: plain HTTP, no auth.
    web_config_file: str | None = None
    log_level: str = "info"
    log_format: str = "logfmt"

    def check_config(self, *, all_flows: bool = False) -> CheckConfig:
        return CheckConfig(
            expect_icc=self.expect_icc,
            expect_iptables=self.expect_iptables,
            all_flows=all_flows,
            timeout=self.check_timeout,
        )


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from "15s", "1m", "500ms", "1m30s", "2h" or a plain number of seconds ("2.5").

    Raises ValueError with a message fit for a user.
    """
    value = text.strip()
    if not value:
        raise ValueError("empty duration")
    try:
        seconds = float(value)
    except ValueError:
        pos = 0
        seconds = 0.0
        for match in _DURATION_PART.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            pos = match.end()
        if pos != len(value):
            raise ValueError(
                f"invalid duration {text!r} (use e.g. 15s, 1m, 500ms or seconds)"
            ) from None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(f"invalid duration {text!r}")
    if seconds < 0:
        raise ValueError(f"negative duration {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest flag spelling of `seconds`: 100ms, 15s, 10m, 1h30m (parse_duration reads it)."""
    if 0 < seconds < 1:
        return f"{seconds * 1000:g}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours:g}h" if hours else "", f"{minutes:g}m" if minutes else ""]
    parts.append(f"{secs:g}s" if secs or not (hours or minutes) else "")
    return "".join(parts)


DURATION_RESOLUTION = 0.001


@dataclass(frozen=True)
class DurationRange:
    """The values a duration flag accepts, in seconds, both ends included.

    Beyond them a value is a typo, not a wish, and would overflow datetime or a thread wait. A
    value other than 0 below DURATION_RESOLUTION is refused too: nothing here is that precise.
    """

    low: float
    high: float

    def parse(self, text: str) -> float:
        """Seconds from `text` (see parse_duration); ValueError, fit for a user, when outside."""
        seconds = parse_duration(text)
        if seconds == 0 and self.low > 0:
            raise ValueError(f"duration must be greater than zero, got {text!r}")
        if 0 < seconds < DURATION_RESOLUTION:
            raise ValueError(f"duration {text!r} is below the resolution of 1ms")
        if not self.low <= seconds <= self.high:
            raise ValueError(f"duration {text!r} is out of range {self}")
        return seconds

    def __str__(self) -> str:
        return f"{format_duration(self.low)}..{format_duration(self.high)}"


# A check every second is already a busy loop of iptables-save; one a day is the slowest useful.
CHECK_INTERVAL_RANGE = DurationRange(1.0, 24 * 3600.0)
# Below 100ms no real check finishes; above an hour a hung check is hidden for too long.
CHECK_TIMEOUT_RANGE = DurationRange(0.1, 3600.0)
# 0: check at once on an event; an hour of delay is the most that still means "soon".
CHECK_DEBOUNCE_RANGE = DurationRange(0.0, 3600.0)
DOCKER_TIMEOUT_RANGE = DurationRange(0.1, 600.0)
WEB_TIMEOUT_RANGE = DurationRange(0.1, 600.0)
WEB_MAX_CONNECTIONS_RANGE = (1, 65535)


def parse_max_connections(text: str) -> int:
    low, high = WEB_MAX_CONNECTIONS_RANGE
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"invalid number of connections {text!r}") from None
    if not low <= value <= high:
        raise ValueError(f"number of connections {value} is out of range {low}..{high}")
    return value


def parse_listen_address(text: str) -> ListenAddress:
    """`host:port`, `:port` (every address) or `[v6addr]:port`."""
    value = text.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or not value[end + 1 :].startswith(":"):
            raise ValueError(f"invalid listen address {text!r} (use [addr]:port)")
        host, port_text = value[1:end], value[end + 2 :]
        if not host:
            raise ValueError(f"invalid listen address {text!r} (empty IPv6 address)")
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise ValueError(f"invalid listen address {text!r} (use host:port or :port)")
        if ":" in host:
            raise ValueError(f"invalid listen address {text!r} (write IPv6 as [addr]:port)")
    if not port_text.isdigit():
        raise ValueError(f"invalid port in listen address {text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in listen address {text!r}")
    return ListenAddress(host, port)


def parse_telemetry_path(text: str) -> str:
    if not text.startswith("/") or any(c in text for c in "?# "):
        raise ValueError(f"invalid telemetry path {text!r} (use e.g. /metrics)")
    if text in ("/", "/healthz"):
        raise ValueError(f"telemetry path {text!r} is taken by another endpoint")
    return text
