"""Command line: `serve` (the default), `check` and `snapshot`, with Prometheus-style dotted flags.

    docker-netpolicy-exporter [serve] [--web.listen-address :9863] [...]
    docker-netpolicy-exporter check [--format text|json] [--snapshot DIR] [--all-flows]
    docker-netpolicy-exporter snapshot --out DIR

Global flags may come before or after the subcommand. A bad flag value prints one line on stderr
and exits 2; expected failures never print a traceback.

Exit codes of `check`:
    0  evaluated, every source read, no drift (unknown verdicts are possible: the text says so)
    1  drift found (evaluated; drift found is drift even when some source was down)
    2  could not check: not evaluated, or evaluated without every source and no drift found (a
       missing source may hide drift, so "no drift" cannot be claimed), or a usage error
Exit codes of `snapshot`: 0 files written (sources that failed are listed on stderr and in the
meta), 2 nothing fetched or the directory could not be written.
`serve` exits 0 on SIGTERM/SIGINT, 2 when the listen address cannot be bound.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any, NoReturn

from exporter import __version__
from exporter.config import (
    DEFAULT_DOCKER_HOST,
    DEFAULT_LISTEN_ADDRESS,
    EXPECT_ICC_CHOICES,
    EXPECT_IPTABLES_CHOICES,
    IPTABLES_BACKENDS,
    LOG_FORMATS,
    LOG_LEVELS,
    CheckConfig,
    ExporterConfig,
    parse_duration,
    parse_listen_address,
    parse_positive_duration,
    parse_telemetry_path,
)
from exporter.report import Report

PROG = "docker-netpolicy-exporter"
log = logging.getLogger(__name__)

# (check config, snapshot files or None for a live fetch) -> (report, raw files fetched)
RunCheck = Callable[[CheckConfig, Mapping[str, str] | None], tuple[Report, dict[str, str]]]
RunCheckFactory = Callable[[ExporterConfig], RunCheck]

EXIT_OK = 0
EXIT_DRIFT = 1
EXIT_ERROR = 2


class CommandError(Exception):
    """An expected failure of a command (bad snapshot, unwritable directory); one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())
        self.exit(EXIT_ERROR, f"{PROG}: error: {message}; see --help\n")


def _typed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


_duration = _typed(parse_positive_duration)
_non_negative_duration = _typed(parse_duration)
_listen_address = _typed(parse_listen_address)
_telemetry_path = _typed(parse_telemetry_path)


def _add_global_flags(
    parser: argparse.ArgumentParser, env: Mapping[str, str], suppress: bool
) -> None:
    """The global flags; on subparsers with SUPPRESS defaults so values given before win."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    g = parser.add_argument_group("global flags")
    g.add_argument(
        "--docker.host",
        dest="docker_host",
        metavar="URL",
        default=default(env.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST),
        help=f"Docker API endpoint (default: $DOCKER_HOST or {DEFAULT_DOCKER_HOST})",
    )
    g.add_argument(
        "--docker.timeout",
        dest="docker_timeout",
        metavar="DURATION",
        type=_duration,
        default=default(5.0),
        help="timeout of one Docker API call (default: 5s)",
    )
    g.add_argument(
        "--docker.config",
        dest="docker_config",
        metavar="FILE",
        default=default("/etc/docker/daemon.json"),
        help="dockerd's daemon.json (default: /etc/docker/daemon.json)",
    )
    g.add_argument(
        "--iptables.backend",
        dest="iptables_backend",
        choices=IPTABLES_BACKENDS,
        default=default("auto"),
        help="how to read iptables rules (default: auto)",
    )
    g.add_argument(
        "--procfs",
        dest="procfs",
        metavar="DIR",
        default=default("/proc"),
        help="procfs mount point (default: /proc)",
    )
    g.add_argument(
        "--check.interval",
        dest="check_interval",
        metavar="DURATION",
        type=_duration,
        default=default(15.0),
        help="time between periodic checks (default: 15s)",
    )
    g.add_argument(
        "--check.timeout",
        dest="check_timeout",
        metavar="DURATION",
        type=_duration,
        default=default(10.0),
        help="deadline of one check (default: 10s)",
    )
    g.add_argument(
        "--check.debounce",
        dest="check_debounce",
        metavar="DURATION",
        type=_non_negative_duration,
        default=default(2.0),
        help="delay of a check triggered by Docker events (default: 2s)",
    )
    g.add_argument(
        "--expect.icc",
        dest="expect_icc",
        choices=EXPECT_ICC_CHOICES,
        default=default("any"),
        help="wanted inter-container communication on the default bridge (default: any)",
    )
    g.add_argument(
        "--expect.iptables",
        dest="expect_iptables",
        choices=EXPECT_IPTABLES_CHOICES,
        default=default("any"),
        help="whether dockerd must manage iptables (default: any)",
    )
    g.add_argument(
        "--web.listen-address",
        dest="listen_address",
        metavar="ADDR",
        type=_listen_address,
        default=default(parse_listen_address(DEFAULT_LISTEN_ADDRESS)),
        help="address to serve on: host:port, :port or [v6addr]:port (default: :9863)",
    )
    g.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        metavar="PATH",
        type=_telemetry_path,
        default=default("/metrics"),
        help="path of the metrics endpoint (default: /metrics)",
    )
    g.add_argument(
        "--log.level",
        dest="log_level",
        choices=LOG_LEVELS,
        default=default("info"),
        help="log level (default: info)",
    )
    g.add_argument(
        "--log.format",
        dest="log_format",
        choices=LOG_FORMATS,
        default=default("logfmt"),
        help="log format (default: logfmt)",
    )


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if env is None else env
    parser = _Parser(
        prog=PROG,
        description="Prometheus exporter for Docker container network-policy drift.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_global_flags(parser, env, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    serve = sub.add_parser("serve", help="serve metrics (the default)", allow_abbrev=False)
    _add_global_flags(serve, env, suppress=True)

    check = sub.add_parser(
        "check",
        help="check once and report; exit 0 no drift, 1 drift, 2 could not check",
        allow_abbrev=False,
    )
    check.add_argument(
        "--format", choices=("text", "json"), default="text", help="output format (default: text)"
    )
    check.add_argument(
        "--snapshot",
        metavar="DIR",
        default=None,
        help="check the raw files of a snapshot instead of the live host",
    )
    check.add_argument(
        "--all-flows",
        dest="all_flows",
        action="store_true",
        help="list every evaluated flow, not only links and unexpected verdicts",
    )
    _add_global_flags(check, env, suppress=True)

    snapshot = sub.add_parser(
        "snapshot", help="fetch the raw inputs of a check into DIR", allow_abbrev=False
    )
    snapshot.add_argument("--out", metavar="DIR", required=True, help="directory to write")
    _add_global_flags(snapshot, env, suppress=True)
    return parser


def config_from_args(args: argparse.Namespace) -> ExporterConfig:
    return ExporterConfig(
        docker_host=args.docker_host,
        docker_timeout=args.docker_timeout,
        docker_config=args.docker_config,
        iptables_backend=args.iptables_backend,
        procfs=args.procfs,
        check_interval=args.check_interval,
        check_timeout=args.check_timeout,
        check_debounce=args.check_debounce,
        expect_icc=args.expect_icc,
        expect_iptables=args.expect_iptables,
        listen_address=args.listen_address,
        telemetry_path=args.telemetry_path,
        log_level=args.log_level,
        log_format=args.log_format,
    )


def live_run_check(cfg: ExporterConfig) -> RunCheck:
    """The real check: build the sources once, then run_check on each call."""
    from exporter.check import run_check
    from exporter.sources import build_sources

    sources = build_sources(
        docker_host=cfg.docker_host,
        docker_timeout=cfg.docker_timeout,
        iptables_backend=cfg.iptables_backend,
        timeout=cfg.check_timeout,
        procfs=cfg.procfs,
        daemon_config=cfg.docker_config,
    )

    def run(
        check_config: CheckConfig, files: Mapping[str, str] | None
    ) -> tuple[Report, dict[str, str]]:
        return run_check(sources, check_config, files)

    return run


# -- output ----------------------------------------------------------------------------------


def exit_code(report: Report) -> int:
    if not report.evaluated:
        return EXIT_ERROR
    if report.drift:
        return EXIT_DRIFT
    if not report.up or report.unknown_flows:
        return EXIT_ERROR  # no drift found, but a failed source or an unknown verdict could hide it
    return EXIT_OK


def report_to_json(report: Report) -> dict[str, Any]:
    return {"drift": report.drift, **dataclasses.asdict(report)}


def format_json(report: Report) -> str:
    return json.dumps(report_to_json(report), indent=2, default=str) + "\n"


def _port(protocol: str, port: int | None) -> str:
    if port is None:
        return protocol or "any"
    return f"{protocol}/{port}" if protocol else str(port)


def format_text(report: Report) -> str:
    lines: list[str] = []
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report.started))
    lines.append(f"check at {when}, took {report.duration_seconds:.2f}s")
    if report.docker_version or report.iptables_backend or report.forward_policy:
        lines.append(
            f"docker {report.docker_version or '?'}, iptables backend "
            f"{report.iptables_backend or '?'}, FORWARD policy {report.forward_policy or '?'}"
        )
    for source in report.sources:
        if not source.up:
            lines.append(f"source down: {source.name}: {source.error or 'failed'}")
    source_errors = {source.error for source in report.sources if not source.up}
    for error in report.errors:
        if error not in source_errors:
            lines.append(f"error: {error}")
    if not report.evaluated:
        lines.append("could not check: no verdict was reached")
        lines.append("drift: unknown")
        return "\n".join(lines) + "\n"

    for finding in report.findings:
        where = f"network {finding.network}" if finding.network else "host"
        lines.append(f"finding: {finding.kind} ({where}): {finding.detail}")
        if finding.containers:
            lines.append(f"  containers: {', '.join(finding.containers)}")
        if finding.rule:
            lines.append(f"  rule: {finding.rule}")
        if finding.restore:
            lines.append(f"  restore: {finding.restore}")
    for flow in report.flows:
        if flow.actual == flow.expected:
            continue
        alias = f" (link alias {flow.alias})" if flow.alias else ""
        reason = f": {flow.reason}" if flow.reason else ""
        lines.append(
            f"flow: {flow.network} {flow.source} -> {flow.target} "
            f"{_port(flow.protocol, flow.port)} {flow.family}{alias}: expected {flow.expected}, "
            f"actual {flow.actual}{reason}"
        )

    statuses = {net.name: net for net in report.networks}
    for totals in report.network_totals():
        status = statuses.get(totals.network)
        head = (
            f"network {totals.network} ({status.bridge}, icc {'on' if status.icc else 'off'}, "
            f"{status.containers} containers)"
            if status
            else f"network {totals.network}"
        )
        lines.append(
            f"{head}: {totals.flows} flows, "
            f"{totals.allowed_as_expected} allowed as expected, "
            f"{totals.denied_as_expected} denied as expected, "
            f"{totals.breaches} isolation breaches, "
            f"{totals.blocked} blocked, {totals.unknown} unknown"
        )
    unknown_total = report.unknown_flows
    if unknown_total:
        lines.append(
            f"note: {unknown_total} flows have no verdict (unknown); drift among them cannot be "
            "ruled out"
        )
    if not report.up:
        lines.append("note: not every source was read; the verdict is incomplete")
    if report.drift:
        lines.append("drift: yes")
    elif unknown_total or not report.up:
        lines.append("drift: none found, but the check is incomplete")
    else:
        lines.append("drift: no")
    return "\n".join(lines) + "\n"


# -- commands --------------------------------------------------------------------------------


def _run_deadline(
    run: RunCheck, check_config: CheckConfig, files: Mapping[str, str] | None, timeout: float
) -> tuple[Report, dict[str, str] | None]:
    from exporter.scheduler import run_with_deadline

    fetched: list[dict[str, str]] = []

    def call() -> Report:
        report, raw = run(check_config, files)
        fetched.append(raw)
        return report

    report, _abandoned = run_with_deadline(call, timeout)
    return report, (fetched[0] if fetched else None)


def cmd_check(cfg: ExporterConfig, args: argparse.Namespace, run: RunCheck, stdout: IO[str]) -> int:
    files: Mapping[str, str] | None = None
    if args.snapshot:
        from exporter.sources.snapshot import read_snapshot

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
    from exporter.sources.snapshot import write_snapshot

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
    stdout.write(f"wrote {len(files)} files to {args.out}{note}\n")
    return EXIT_OK


def serve(
    cfg: ExporterConfig,
    run: RunCheck,
    *,
    stop: threading.Event | None = None,
    watch_events: bool = True,
    on_ready: Callable[[Any], None] | None = None,
) -> int:
    from prometheus_client import CollectorRegistry

    from exporter.collector import NetpolicyCollector
    from exporter.http import BindError, make_app, make_server
    from exporter.latest import Latest
    from exporter.scheduler import CheckScheduler, DockerEventWatcher

    latest = Latest()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NetpolicyCollector(latest))
    check_config = cfg.check_config()
    scheduler = CheckScheduler(
        lambda: run(check_config, None)[0],
        latest,
        interval=cfg.check_interval,
        timeout=cfg.check_timeout,
        debounce=cfg.check_debounce,
    )
    app = make_app(
        registry, latest=latest, health=scheduler.health, telemetry_path=cfg.telemetry_path
    )
    try:
        server = make_server(cfg.listen_address, app)
    except BindError as exc:
        log.error(str(exc))
        return EXIT_ERROR

    if cfg.check_timeout >= cfg.check_interval:
        log.warning(
            "--check.timeout is not shorter than --check.interval; slow checks will delay the next",
            extra={"timeout": cfg.check_timeout, "interval": cfg.check_interval},
        )
    stop = stop if stop is not None else threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())

    watcher = (
        DockerEventWatcher(
            scheduler.trigger, docker_host=cfg.docker_host, docker_timeout=cfg.docker_timeout
        )
        if watch_events
        else None
    )
    http_thread = threading.Thread(
        target=server.serve_forever, args=(0.2,), name="http", daemon=True
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
        while not stop.wait(1.0):
            pass
        log.info("shutting down")
    finally:
        if watcher is not None:
            watcher.stop()
        scheduler.shutdown()
        server.shutdown()
        server.server_close()
    return EXIT_OK


# -- entry point -----------------------------------------------------------------------------


def _known_flags(parser: argparse.ArgumentParser) -> set[str]:
    flags: set[str] = set()
    for action in parser._actions:
        flags.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _known_flags(sub)
    return flags


def _unknown_flag(parser: argparse.ArgumentParser, argv: Sequence[str]) -> str | None:
    known = _known_flags(parser)
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
    from exporter.logs import setup_logging

    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    parser = build_parser(env)
    argv = list(sys.argv[1:] if argv is None else argv)
    unknown = _unknown_flag(parser, argv)
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
        stderr.write(f"{PROG}: error: {exc}\n")
        stderr.flush()
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
