"""Command line: `serve` (the default), `check` and `snapshot`, with Prometheus-style dotted flags.

    docker-netpolicy-exporter [serve] [--web.listen-address :9863] [...]
    docker-netpolicy-exporter check [--format text|json] [--snapshot DIR] [--all-flows]
    docker-netpolicy-exporter snapshot --out DIR

Global flags may come before or after the subcommand (after wins). Flags are declared once, in
GLOBAL_FLAGS and COMMANDS; their defaults are ExporterConfig's. Durations have ranges (see
exporter.config and --help). A bad flag value prints one line on stderr and exits 2; expected
failures never print a traceback. Text output escapes control characters (exporter.render).

Exit codes of `check`:
    0  evaluated, every source read, no drift (unknown verdicts are possible: the text says so)
    1  drift found (evaluated; drift found is drift even when some source was down)
    2  could not check: not evaluated, or evaluated without every source and no drift found (a
       missing source may hide drift, so "no drift" cannot be claimed), or a usage error
Exit codes of `snapshot`: 0 files written (sources that failed are listed on stderr and in the
meta), 2 nothing fetched or the directory could not be written.
`serve` exits 0 within a second of SIGTERM/SIGINT (a running check is abandoned, not waited
for), 2 when the listen address cannot be bound.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import IO, Any, NoReturn

from prometheus_client import CollectorRegistry

from exporter import __version__
from exporter.check import CheckProgress, WarmCheck, run_check
from exporter.collector import NetpolicyCollector
from exporter.config import (
    CHECK_DEBOUNCE_RANGE,
    CHECK_INTERVAL_RANGE,
    CHECK_TIMEOUT_RANGE,
    DEFAULT_DAEMON_JSON,
    DOCKER_TIMEOUT_RANGE,
    EXPECT_ICC_CHOICES,
    EXPECT_IPTABLES_CHOICES,
    IPTABLES_BACKENDS,
    LOG_FORMATS,
    LOG_LEVELS,
    WEB_TIMEOUT_RANGE,
    CheckConfig,
    DurationRange,
    ExporterConfig,
    format_duration,
    parse_listen_address,
    parse_max_connections,
    parse_telemetry_path,
)
from exporter.http import BindError, make_app, make_server
from exporter.latest import Latest
from exporter.logs import setup_logging
from exporter.render import escape_text, format_json, format_text
from exporter.report import Report
from exporter.scheduler import ChangeLog, CheckScheduler, DockerEventWatcher, run_with_deadline
from exporter.sources import build_sources
from exporter.sources.snapshot import read_snapshot, write_snapshot
from exporter.webconfig import WebConfigError, WebConfigFile

PROG = "docker-netpolicy-exporter"
log = logging.getLogger(__name__)

# (check config, snapshot files or None for a live fetch, where the check records its source)
# -> (report, raw files fetched)
RunCheck = Callable[
    [CheckConfig, Mapping[str, str] | None, CheckProgress], tuple[Report, dict[str, str]]
]
RunCheckFactory = Callable[[ExporterConfig], RunCheck]

EXIT_OK = 0
EXIT_DRIFT = 1
EXIT_ERROR = 2

# serve: how often the main thread looks for a stop request, and how long it waits for the event
# watcher and the HTTP loop at shutdown (all well inside the one second a supervisor is promised).
_STOP_POLL_SECONDS = 0.05
_WATCHER_JOIN_SECONDS = 0.2
_HTTP_POLL_SECONDS = 0.1


class CommandError(Exception):
    """An expected failure of a command (bad snapshot, unwritable directory); one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        message = escape_text(" ".join(message.split()))
        self.exit(EXIT_ERROR, f"{PROG}: error: {message}; see --help\n")


# -- flags -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    """One command-line flag. A global flag's default is ExporterConfig's (or `env`'s)."""

    name: str
    dest: str
    help: str
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    duration: DurationRange | None = None
    # An environment variable that, when set, replaces the default.
    env: str | None = None
    # Command flags only: a store_true switch, a required flag, the default.
    switch: bool = False
    required: bool = False
    default: Any = None
    # What a global flag left unset (default None) means, for --help.
    unset: str = "none"


def _typed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`parse` with its ValueError turned into argparse's one-line "argument X: ..." error."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


GLOBAL_FLAGS: tuple[Flag, ...] = (
    Flag("--docker.host", "docker_host", "Docker API endpoint", "URL", env="DOCKER_HOST"),
    Flag(
        "--docker.timeout",
        "docker_timeout",
        "timeout of one Docker API call",
        duration=DOCKER_TIMEOUT_RANGE,
    ),
    Flag(
        "--docker.config",
        "docker_config",
        "dockerd's daemon.json",
        "FILE",
        unset=f"the file dockerd reads: its --config-file, else {DEFAULT_DAEMON_JSON}",
    ),
    Flag(
        "--iptables.backend",
        "iptables_backend",
        "how to read iptables rules",
        choices=IPTABLES_BACKENDS,
    ),
    Flag("--procfs", "procfs", "procfs mount point", "DIR"),
    Flag(
        "--check.interval",
        "check_interval",
        "time between periodic checks",
        duration=CHECK_INTERVAL_RANGE,
    ),
    Flag("--check.timeout", "check_timeout", "deadline of one check", duration=CHECK_TIMEOUT_RANGE),
    Flag(
        "--check.debounce",
        "check_debounce",
        "delay of a check triggered by Docker events",
        duration=CHECK_DEBOUNCE_RANGE,
    ),
    Flag(
        "--expect.icc",
        "expect_icc",
        "wanted inter-container communication on the default bridge",
        choices=EXPECT_ICC_CHOICES,
    ),
    Flag(
        "--expect.iptables",
        "expect_iptables",
        "whether dockerd must manage iptables",
        choices=EXPECT_IPTABLES_CHOICES,
    ),
    Flag(
        "--web.listen-address",
        "listen_address",
        "address to serve on: host:port, :port or [v6addr]:port",
        "ADDR",
        parse=parse_listen_address,
    ),
    Flag(
        "--web.telemetry-path",
        "telemetry_path",
        "path of the metrics endpoint",
        "PATH",
        parse=parse_telemetry_path,
    ),
    Flag(
        "--web.max-connections",
        "web_max_connections",
        "open connections at most; further ones wait in the listen queue",
        "N",
        parse=parse_max_connections,
    ),
    Flag(
        "--web.read-header-timeout",
        "web_read_header_timeout",
        "total time for a request's line and headers to arrive",
        duration=WEB_TIMEOUT_RANGE,
    ),
    Flag(
        "--web.write-timeout",
        "web_write_timeout",
        "total time to send one response",
        duration=WEB_TIMEOUT_RANGE,
    ),
    Flag(
        "--web.config.file",
        "web_config_file",
        "exporter-toolkit web configuration file (TLS, basic auth); without it plain HTTP",
        "FILE",
    ),
    Flag("--log.level", "log_level", "log level", choices=LOG_LEVELS),
    Flag("--log.format", "log_format", "log format", choices=LOG_FORMATS),
)

COMMANDS: dict[str, tuple[str, tuple[Flag, ...]]] = {
    "serve": ("serve metrics (the default)", ()),
    "check": (
        "check once and report; exit 0 no drift, 1 drift, 2 could not check",
        (
            Flag(
                "--format",
                "format",
                "output format (default: text)",
                choices=("text", "json"),
                default="text",
            ),
            Flag(
                "--snapshot",
                "snapshot",
                "check the raw files of a snapshot instead of the live host",
                "DIR",
            ),
            Flag(
                "--all-flows",
                "all_flows",
                "list every evaluated flow, not only links and unexpected verdicts",
                switch=True,
                default=False,
            ),
        ),
    ),
    "snapshot": (
        "fetch the raw inputs of a check into DIR",
        (Flag("--out", "out", "directory to write", "DIR", required=True),),
    ),
}

_CONFIG_DEFAULTS = ExporterConfig()


def _after_command(dest: str) -> str:
    """Where a subcommand stores a global flag given after it (None when not given).

    Apart from `dest`, because argparse copies every value of the subcommand's namespace over the
    main one: with one dest, a subcommand's default would undo a flag given before it.
    """
    return dest + "_after_command"


def _global_default(flag: Flag, env: Mapping[str, str]) -> Any:
    return (env.get(flag.env) if flag.env else None) or getattr(_CONFIG_DEFAULTS, flag.dest)


def _shown_default(flag: Flag) -> str:
    value = getattr(_CONFIG_DEFAULTS, flag.dest)
    if value is None:
        return flag.unset
    shown = format_duration(value) if flag.duration else str(value)
    return f"${flag.env} or {shown}" if flag.env else shown


def _add_global_flag(add_argument: Callable[..., Any], flag: Flag, dest: str, default: Any) -> None:
    parse = flag.duration.parse if flag.duration else flag.parse
    bounds = f", {flag.duration}" if flag.duration else ""
    add_argument(
        flag.name,
        dest=dest,
        metavar=flag.metavar or ("DURATION" if flag.duration else None),
        type=_typed(parse) if parse else None,
        choices=flag.choices,
        default=default,
        help=f"{flag.help}{bounds} (default: {_shown_default(flag)})",
    )


def _add_command_flag(parser: argparse.ArgumentParser, flag: Flag) -> None:
    if flag.switch:
        parser.add_argument(flag.name, dest=flag.dest, action="store_true", help=flag.help)
        return
    parser.add_argument(
        flag.name,
        dest=flag.dest,
        metavar=flag.metavar,
        type=_typed(flag.parse) if flag.parse else None,
        choices=flag.choices,
        default=flag.default,
        required=flag.required,
        help=flag.help,
    )


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if env is None else env
    parser = _Parser(
        prog=PROG,
        description="Prometheus exporter for Docker container network-policy drift.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    before = parser.add_argument_group("global flags")
    for flag in GLOBAL_FLAGS:
        _add_global_flag(before.add_argument, flag, flag.dest, _global_default(flag, env))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (help_text, flags) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, allow_abbrev=False)
        for flag in flags:
            _add_command_flag(command, flag)
        after = command.add_argument_group("global flags")
        for flag in GLOBAL_FLAGS:
            _add_global_flag(after.add_argument, flag, _after_command(flag.dest), None)
    return parser


def known_flags() -> frozenset[str]:
    """Every flag of every command, for telling an unknown flag from a misplaced one."""
    names = {"-h", "--help", "--version"} | {flag.name for flag in GLOBAL_FLAGS}
    for _, flags in COMMANDS.values():
        names |= {flag.name for flag in flags}
    return frozenset(names)


def config_from_args(args: argparse.Namespace) -> ExporterConfig:
    """Global flags given after the subcommand win over those given before it."""
    values = {}
    for flag in GLOBAL_FLAGS:
        after = getattr(args, _after_command(flag.dest), None)
        values[flag.dest] = after if after is not None else getattr(args, flag.dest)
    return ExporterConfig(**values)


def live_run_check(cfg: ExporterConfig) -> RunCheck:
    """The real check: build the sources once, then run_check on each call; what did not change
    since the last call is neither parsed nor decided again (WarmCheck)."""
    sources = build_sources(cfg)
    warm = WarmCheck()

    def run(
        check_config: CheckConfig, files: Mapping[str, str] | None, progress: CheckProgress
    ) -> tuple[Report, dict[str, str]]:
        return run_check(sources, check_config, files, progress, warm)

    return run


def exit_code(report: Report) -> int:
    if not report.evaluated:
        return EXIT_ERROR
    if report.drift:
        return EXIT_DRIFT
    if not report.up or report.unknown_flows:
        return EXIT_ERROR  # no drift found, but a failed source or an unknown verdict could hide it
    return EXIT_OK


# -- commands --------------------------------------------------------------------------------


def _run_deadline(
    run: RunCheck, check_config: CheckConfig, files: Mapping[str, str] | None, timeout: float
) -> tuple[Report, dict[str, str] | None]:
    fetched: list[dict[str, str]] = []

    def call(progress: CheckProgress) -> Report:
        report, raw = run(check_config, files, progress)
        fetched.append(raw)
        return report

    report, _abandoned = run_with_deadline(call, timeout)
    return report, (fetched[0] if fetched else None)


def cmd_check(cfg: ExporterConfig, args: argparse.Namespace, run: RunCheck, stdout: IO[str]) -> int:
    files: Mapping[str, str] | None = None
    if args.snapshot:
        try:
            files = read_snapshot(args.snapshot)
        except Exception as exc:  # noqa: BLE001 - any unreadable snapshot is a one-line error
            raise CommandError(f"cannot read snapshot {args.snapshot}: {_one_line(exc)}") from None
    report, _ = _run_deadline(
        run, cfg.check_config(all_flows=args.all_flows), files, cfg.check_timeout
    )
    stdout.write(format_json(report) if args.format == "json" else format_text(report))
    stdout.flush()
    return exit_code(report)


def cmd_snapshot(
    cfg: ExporterConfig, args: argparse.Namespace, run: RunCheck, stdout: IO[str]
) -> int:
    report, files = _run_deadline(run, cfg.check_config(), None, cfg.check_timeout)
    if not files:
        reason = "; ".join(report.errors) or "no source returned anything"
        raise CommandError(f"snapshot failed: {reason}")
    meta = {
        "exporter_version": __version__,
        "created": report.started,
        "docker_host": cfg.docker_host,
        "iptables_backend": cfg.iptables_backend,
        "procfs": cfg.procfs,
        "docker_config": cfg.docker_config,
        "sources": [{"name": s.name, "up": s.up, "error": s.error} for s in report.sources],
    }
    try:
        write_snapshot(args.out, files, meta)
    except Exception as exc:  # noqa: BLE001 - OSError, SourceError (directory not empty, ...)
        raise CommandError(f"cannot write snapshot to {args.out}: {_one_line(exc)}") from None
    down = ", ".join(source.name for source in report.sources if not source.up)
    note = f" (not read: {down})" if down else ""
    stdout.write(escape_text(f"wrote {len(files)} files to {args.out}{note}") + "\n")
    return EXIT_OK


class _StopSignals:
    """While active, SIGTERM and SIGINT only record that they came (main thread only).

    The handler touches no lock: it runs in the main thread between two bytecodes, possibly while
    that thread holds a lock the handler would need (Event.set() there can deadlock).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)


def serve(
    cfg: ExporterConfig,
    run: RunCheck,
    *,
    stop: threading.Event | None = None,
    watch_events: bool = True,
    on_ready: Callable[[Any], None] | None = None,
) -> int:
    """Check on a schedule and serve the results until SIGTERM/SIGINT or `stop`; then exit fast.

    Shutting down waits for nothing that can hang: a running check is abandoned (its thread is a
    daemon), the event watcher gets a short join, the HTTP loop stops within one poll.
    """
    stop = stop if stop is not None else threading.Event()
    with _StopSignals() as signals:
        return _serve(
            cfg, run, lambda: stop.is_set() or bool(signals.received), on_ready, watch_events
        )


def _serve(
    cfg: ExporterConfig,
    run: RunCheck,
    stopping: Callable[[], bool],
    on_ready: Callable[[Any], None] | None,
    watch_events: bool,
) -> int:
    latest = Latest()
    # The collector describes nothing (its families depend on the report), so `name[]` filters
    # need a registry that still asks it.
    registry = CollectorRegistry(auto_describe=False, support_collectors_without_names=True)
    registry.register(NetpolicyCollector(latest))
    check_config = cfg.check_config()
    # The event stream notes Docker's changes in flight; the scheduler holds back a verdict read
    # during one (see ChangeLog). Without events there is nothing to note.
    changes = ChangeLog() if watch_events else None
    scheduler = CheckScheduler(
        lambda progress: run(check_config, None, progress)[0],
        latest,
        interval=cfg.check_interval,
        timeout=cfg.check_timeout,
        debounce=cfg.check_debounce,
        changes=changes,
    )
    app = make_app(
        registry, latest=latest, health=scheduler.health, telemetry_path=cfg.telemetry_path
    )
    try:
        web_config = WebConfigFile(cfg.web_config_file) if cfg.web_config_file else None
        server = make_server(
            cfg.listen_address,
            app,
            max_connections=cfg.web_max_connections,
            read_header_timeout=cfg.web_read_header_timeout,
            write_timeout=cfg.web_write_timeout,
            web_config=web_config,
        )
    except (BindError, WebConfigError) as exc:
        log.error(str(exc))
        return EXIT_ERROR

    if cfg.check_timeout >= cfg.check_interval:
        log.warning(
            "--check.timeout is not shorter than --check.interval; slow checks will delay the next",
            extra={"timeout": cfg.check_timeout, "interval": cfg.check_interval},
        )
    watcher = (
        DockerEventWatcher(
            scheduler.trigger,
            changes=changes,
            docker_host=cfg.docker_host,
            docker_timeout=cfg.docker_timeout,
        )
        if watch_events
        else None
    )
    http_thread = threading.Thread(
        target=server.serve_forever, args=(_HTTP_POLL_SECONDS,), name="http", daemon=True
    )
    try:
        scheduler.start()
        if watcher is not None:
            watcher.start()
        http_thread.start()
        log.info(
            "listening",
            extra={
                "address": str(cfg.listen_address),
                "port": server.server_address[1],
                "version": __version__,
            },
        )
        if on_ready is not None:
            on_ready(server)
        # A short sleep, not an Event wait: a signal handler must never need a lock (see above).
        while not stopping():
            time.sleep(_STOP_POLL_SECONDS)
        log.info("shutting down")
    finally:
        if watcher is not None:
            watcher.stop(_WATCHER_JOIN_SECONDS)
        scheduler.shutdown()
        server.shutdown()
        server.server_close()
    return EXIT_OK


# -- entry point -----------------------------------------------------------------------------


def _unknown_flag(argv: Sequence[str]) -> str | None:
    known = known_flags()
    for token in argv:
        if token == "--":
            break
        if token.startswith("-") and len(token) > 1 and not token[1:2].isdigit():
            name = token.split("=", 1)[0]
            if name not in known:
                return name
    return None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(
    argv: Sequence[str] | None = None,
    *,
    run_check_factory: RunCheckFactory | None = None,
    env: Mapping[str, str] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Parse flags, run the subcommand, return the exit code (argparse exits 2 on bad flags)."""
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    parser = build_parser(env)
    argv = list(sys.argv[1:] if argv is None else argv)
    unknown = _unknown_flag(argv)
    if unknown:
        # Else argparse takes the flag's value for a subcommand and blames that instead.
        parser.error(f"unknown flag {unknown}")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    setup_logging(cfg.log_level, cfg.log_format, stream=stderr)
    command = args.command or "serve"
    factory = run_check_factory or live_run_check
    try:
        try:
            run = factory(cfg)
        except Exception as exc:  # noqa: BLE001 - e.g. a bad --docker.host
            raise CommandError(f"cannot set up the check: {_one_line(exc)}") from None
        if command == "check":
            return cmd_check(cfg, args, run, stdout)
        if command == "snapshot":
            return cmd_snapshot(cfg, args, run, stdout)
        return serve(cfg, run)
    except CommandError as exc:
        stderr.write(f"{PROG}: error: {escape_text(str(exc))}\n")
        stderr.flush()
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
