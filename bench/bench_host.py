"""What one check costs on a synthetic host shaped like a real one, phase by phase, against the
floor: the time the kernel's own tool takes to print the same rules.

    sudo python3 bench/bench_host.py                      # the default sizes, kernel floor
    python3 bench/bench_host.py --no-kernel --sizes 100x1000
    sudo python3 bench/bench_host.py --sizes 1000x10000 --markdown
    sudo python3 bench/bench_host.py --live 100           # a lab dockerd with real containers

A size CxR is C containers (C/2 legacy links, --networks bridges) and R further rules (see
bench/synth_host.py). Per size:

- the host is generated and written as a snapshot; `check --snapshot` of it must find it clean
  (exit 0, no drift, no unknown flow), else the bench stops: a bench of a wrong verdict is no bench.
- kernel mode (default; root): the rules are loaded with iptables-nft-restore and the sets with
  ipset restore into a throwaway network namespace dnpbench-<pid>-<token> (deleted afterwards),
  and a worker inside it times the floor (`iptables-nft-save`, and `nft -j list ruleset`), each
  firewall source's real fetch(), then parses what the kernel printed (Docker and settings come
  from the snapshot: no daemon here; --live measures those). --no-kernel parses the snapshot's
  files instead and has no floor.
- phases: parse per source (Source.parse), index (FirewallState and PathInputs), expectations,
  flows, findings (as build_report calls them; the bench asserts they equal build_report's
  report), render (the report published into Latest and /metrics rendered by generate_latest
  with the real collector). after-read: the sum of those, everything a check does once its
  inputs are read. ratio: after-read / floor.
- time: median of --repeat runs. peak MiB: the peak of Python allocations during the phase,
  traced (tracemalloc) in one extra run, so tracing does not slow the timed runs. RSS: the
  worker's max resident set (ru_maxrss) after the timed runs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from bench.synth_host import HostShape, build_host, write_host  # noqa: E402
from exporter.check import (  # noqa: E402
    CheckInputs,
    FirewallRead,
    build_report,
    check_dumps_against_nft,
    decide_findings,
    read_firewall,
)
from exporter.cli import main as cli_main  # noqa: E402
from exporter.collector import NetpolicyCollector  # noqa: E402
from exporter.config import CheckConfig, ExporterConfig  # noqa: E402
from exporter.expectations import network_expectations  # noqa: E402
from exporter.firewall.parse import parse_iptables_save  # noqa: E402
from exporter.flows import evaluate_flows  # noqa: E402
from exporter.latest import Latest  # noqa: E402
from exporter.report import Report, SourceStatus  # noqa: E402
from exporter.sources import SOURCE_NAMES, build_sources  # noqa: E402
from exporter.sources.firewall import read_libiptc  # noqa: E402
from exporter.sources.snapshot import META_FILE, read_snapshot  # noqa: E402

LIBIPTC_TIMEOUT = 3600.0
DEFAULT_SIZES = ("10x1000", "100x1000", "1000x10000", "1000x50000", "5000x10000", "5000x50000")
# Sources whose fetch needs a Docker daemon or its process: timed only by --live.
DAEMON_SOURCES = ("docker", "settings")
DECIDE_PHASES = ("index", "expectations", "flows", "findings", "render")
MIB = 1024 * 1024
CLI_CHECK_TOOK = "check --snapshot took"


class BenchError(Exception):
    """The bench cannot give a true figure (a tool failed, the host is not clean); one line."""


class OverBudget(BenchError):
    """One size took longer than --budget: its figures are not known."""


@dataclass(frozen=True)
class Phase:
    """One phase of a check: median seconds, and the traced peak (None: not traced, e.g. fetch)."""

    name: str
    seconds: float
    peak_mib: float | None = None


@dataclass(frozen=True)
class SizeResult:
    """Everything measured for one size; `rules` counts every rule of the dump."""

    containers: int
    links: int
    networks: int
    rules: int
    flows: int
    phases: tuple[Phase, ...]
    after_read_seconds: float
    floor_seconds: float | None = None  # iptables-nft-save
    nft_list_seconds: float | None = None  # nft -j list ruleset
    ratio: float | None = None
    rss_mib: float = 0.0
    read_from: str = "snapshot"  # or "kernel"
    # --legacy: iptables-legacy-save and python-iptables on the same rules, and the parse of
    # what python-iptables printed (seconds each).
    legacy: dict[str, float] | None = None


# -- one check, phase by phase -----------------------------------------------------------------


Step = tuple[str, Callable[[dict[str, Any]], Any]]


def _parse_steps(files: Mapping[str, str]) -> list[Step]:
    sources = build_sources(ExporterConfig())
    return [(f"parse {s.name}", lambda _state, s=s: s.parse(files)) for s in sources]


def _inputs(state: Mapping[str, Any]) -> CheckInputs:
    values = {name: state[f"parse {name}"] for name in SOURCE_NAMES}
    statuses = tuple(SourceStatus(name, True, 0.0) for name in SOURCE_NAMES)
    return CheckInputs(statuses=statuses, **values)


def _index(state: dict[str, Any]) -> FirewallRead:
    """build_report's first phase: the firewall state the evaluator walks and its indexes."""
    inputs = check_dumps_against_nft(_inputs(state))
    if inputs.iptables is None or inputs.docker is None:
        raise BenchError("the synthetic host's dumps do not match nft's tables")
    return read_firewall(inputs, inputs.iptables)


def _findings(state: dict[str, Any], config: CheckConfig) -> tuple[Any, ...]:
    flows, _counts = state["flows"]
    findings, _networks = decide_findings(
        state["parse docker"], state["index"], state["expectations"], flows, config
    )
    return findings


def _render(report: Report) -> bytes:
    latest = Latest()
    latest.publish(report)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NetpolicyCollector(latest))
    return generate_latest(registry)


def _decide_steps(config: CheckConfig, reference: Report) -> list[Step]:
    return [
        ("index", _index),
        ("expectations", lambda s: network_expectations(s["parse docker"])),
        ("flows", lambda s: evaluate_flows(s["expectations"], s["index"].path, config.all_flows)),
        ("findings", lambda s: _findings(s, config)),
        # The report rendered is build_report's, which _check_equal holds to these phases.
        ("render", lambda _s: _render(reference)),
    ]


def _run_steps(steps: list[Step], trace: bool) -> tuple[dict[str, Any], dict[str, float]]:
    """Run the steps in order; each one's seconds, or its traced peak MiB when `trace`."""
    state: dict[str, Any] = {}
    measured: dict[str, float] = {}
    for name, step in steps:
        if trace:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            state[name] = step(state)
            measured[name] = (tracemalloc.get_traced_memory()[1] - before) / MIB
        else:
            began = time.perf_counter()
            state[name] = step(state)
            measured[name] = time.perf_counter() - began
    return state, measured


def _check_equal(state: Mapping[str, Any], reference: Report) -> None:
    flows, counts = state["flows"]
    if tuple(flows) != reference.flows or tuple(counts) != reference.flow_counts:
        raise BenchError("phase by phase, the flows differ from build_report's")
    if tuple(state["findings"]) != reference.findings:
        raise BenchError("phase by phase, the findings differ from build_report's")


def measure_check(files: Mapping[str, str], repeat: int) -> tuple[list[Phase], Report, float]:
    """Time every phase of one check of `files` (median of `repeat`), then trace its memory.
    Returns the phases, build_report's report, and the max RSS in MiB after the timed runs."""
    config = CheckConfig()
    parsed, _ = _run_steps(_parse_steps(files), trace=False)
    reference = build_report(_inputs(parsed), config, time.time(), time.monotonic())
    steps = _parse_steps(files) + _decide_steps(config, reference)
    runs = []
    for _ in range(repeat):
        state, seconds = _run_steps(steps, trace=False)
        _check_equal(state, reference)
        runs.append(seconds)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del state
    tracemalloc.start()
    try:
        _, peaks = _run_steps(steps, trace=True)
    finally:
        tracemalloc.stop()
    phases = [
        Phase(name, statistics.median(run[name] for run in runs), peaks[name]) for name, _ in steps
    ]
    return phases, reference, rss


# -- the floor and the real fetch (inside the bench namespace) -------------------------------------


def _median_run(argv: list[str], repeat: int) -> tuple[float, str]:
    times, out = [], ""
    for _ in range(repeat):
        began = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - began)
        if done.returncode != 0 or done.stderr.strip():
            raise BenchError(f"{' '.join(argv)} failed: {done.stderr.strip()[:200]}")
        out = done.stdout
    return statistics.median(times), out


def _fetch_firewall(repeat: int) -> tuple[dict[str, str], list[Phase]]:
    """Each firewall source's real fetch() in this namespace: the files and their median time."""
    files: dict[str, str] = {}
    phases = []
    for source in build_sources(ExporterConfig()):
        if source.name in DAEMON_SOURCES:
            continue
        times = []
        for _ in range(repeat):
            began = time.perf_counter()
            fetched = source.fetch()
            times.append(time.perf_counter() - began)
        files.update(fetched)
        phases.append(Phase(f"fetch {source.name}", statistics.median(times)))
    return files, phases


def worker(snapshot: Path, repeat: int, kernel: bool) -> SizeResult:
    """One size, measured in this process (in the bench namespace when `kernel`)."""
    # On stderr at once: if the size goes over budget, this is the one figure it leaves.
    print(f"{CLI_CHECK_TOOK} {check_snapshot_clean(snapshot):.1f} s", file=sys.stderr, flush=True)
    files = read_snapshot(snapshot)
    meta = json.loads(files.pop(META_FILE))["synthetic"]
    fetch_phases: list[Phase] = []
    floor = nft_list = None
    if kernel:
        floor, printed = _median_run(["iptables-nft-save"], repeat)
        nft_list, _ = _median_run(["nft", "-j", "list", "ruleset"], repeat)
        loaded = sum(line.startswith("-A ") for line in printed.splitlines())
        if loaded != meta["rules"]:
            raise BenchError(f"the kernel holds {loaded} rules, the host {meta['rules']}")
        fetched, fetch_phases = _fetch_firewall(repeat)
        files = {**files, **fetched}
    phases, report, rss = measure_check(files, repeat)
    if report.drift or report.unknown_flows or not report.up:
        raise BenchError(
            f"the host is not clean when read from the {'kernel' if kernel else 'snapshot'}"
        )
    after_read = sum(p.seconds for p in phases if not p.name.startswith("fetch"))
    return SizeResult(
        containers=meta["containers"],
        links=meta["links"],
        networks=meta["networks"],
        rules=meta["rules"],
        flows=sum(c.count for c in report.flow_counts),
        phases=tuple(fetch_phases + phases),
        after_read_seconds=after_read,
        floor_seconds=floor,
        nft_list_seconds=nft_list,
        ratio=after_read / floor if floor else None,
        rss_mib=rss,
        read_from="kernel" if kernel else "snapshot",
    )


def legacy_worker(rules: int) -> dict[str, float]:
    """In a namespace holding the rules in the legacy backend: iptables-legacy-save against
    python-iptables (libiptc, `--iptables.backend=libiptc`), both checked to print every rule."""
    save, printed = _median_run(["iptables-legacy-save"], 1)
    began = time.perf_counter()
    # The exporter's 5 s deadline is shorter than libiptc takes at 50,000 rules; the size's
    # budget bounds the worker instead.
    read = read_libiptc("ipv4", timeout=LIBIPTC_TIMEOUT)
    libiptc = time.perf_counter() - began
    for tool, text in (("iptables-legacy-save", printed), ("python-iptables", read)):
        ruleset = parse_iptables_save(text, "ipv4", "legacy")
        if ruleset.rule_count != rules:
            raise BenchError(f"{tool} printed {ruleset.rule_count} rules, the host has {rules}")
    began = time.perf_counter()
    parse_iptables_save(read, "ipv4", "legacy")
    return {
        "legacy_save_seconds": save,
        "libiptc_seconds": libiptc,
        "parse_seconds": time.perf_counter() - began,
    }


# -- namespace, snapshot check, driver -------------------------------------------------------------


def _sh(*argv: str, stdin: str | None = None) -> None:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed: {done.stderr.strip()[:200]}")


@contextmanager
def bench_namespace(rules: str, sets: str, restore: str = "iptables-nft-restore") -> Iterator[str]:
    """A network namespace holding the rules (loaded with `restore`) and the sets; deleted
    afterwards."""
    name = f"dnpbench-{os.getpid()}-{secrets.token_hex(3)}"
    _sh("ip", "netns", "add", name)
    try:
        if sets:
            _sh("ip", "netns", "exec", name, "ipset", "restore", stdin=sets)
        _sh("ip", "netns", "exec", name, restore, stdin=rules)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def check_snapshot_clean(snapshot: Path) -> float:
    """`check --snapshot` must find the host clean: exit 0 (no drift, every source up, no unknown
    flow). Returns how long it took (seconds)."""
    began = time.perf_counter()
    out, err = io.StringIO(), io.StringIO()
    # No deadline of its own: a big host may take long, and --budget bounds the whole worker.
    argv = ["check", "--snapshot", str(snapshot), "--check.timeout", "3600s"]
    code = cli_main(argv, env={}, stdout=out, stderr=err)
    if code != 0:
        last = (out.getvalue() + err.getvalue()).strip().splitlines()[-1:]
        raise BenchError(f"check --snapshot {snapshot} exited {code}, not clean: {last}")
    return time.perf_counter() - began


def measure_size(shape: HostShape, args: argparse.Namespace, workdir: Path) -> SizeResult:
    """Generate the host and measure it in a worker process (in the bench namespace with the
    rules loaded, unless --no-kernel), killed after --budget seconds."""
    host = build_host(shape)
    snapshot = write_host(host, workdir / f"host-{shape.containers}x{shape.rules}")
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        str(snapshot),
        "--repeat",
        str(args.repeat),
    ]
    if args.no_kernel:
        return _run_worker(argv + ["--no-kernel"], args.budget)
    with bench_namespace(host.iptables_save, host.ipset_save) as ns:
        result = _run_worker(["ip", "netns", "exec", ns, *argv], args.budget)
    if not args.legacy:
        return result
    restore = "iptables-legacy-restore"
    with bench_namespace(host.iptables_save, host.ipset_save, restore) as ns:
        runs = [_legacy_run(ns, host.rule_count, args.budget) for _ in range(args.repeat)]
    legacy = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    return replace(result, legacy=legacy)


def _legacy_run(ns: str, rules: int, budget: float) -> dict[str, float]:
    # A process of its own, in the legacy namespace (ip netns exec: reads its /proc/net).
    argv = [sys.executable, str(Path(__file__).resolve()), "--legacy-worker", str(rules)]
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=budget,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise BenchError(f"legacy worker failed: {last}")
    return json.loads(done.stdout)


def _run_worker(argv: list[str], budget: float) -> SizeResult:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=budget)
    except subprocess.TimeoutExpired as timeout:
        said = timeout.stderr.decode() if isinstance(timeout.stderr, bytes) else timeout.stderr
        took = [line for line in (said or "").splitlines() if line.startswith(CLI_CHECK_TOOK)]
        what = f"one {took[0]}" if took else "check --snapshot did not finish"
        raise OverBudget(f"not measured: over the budget of {budget:g} s ({what})") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no error output)"])[-1]
        raise BenchError(f"worker failed: {last}")
    return _result_from_json(json.loads(done.stdout))


def _result_from_json(data: dict[str, Any]) -> SizeResult:
    data["phases"] = tuple(Phase(**p) for p in data["phases"])
    return SizeResult(**data)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def parse_size(text: str) -> tuple[int, int]:
    containers, sep, rules = text.lower().partition("x")
    if not sep or not containers.isdigit() or not rules.isdigit():
        raise argparse.ArgumentTypeError(f"size {text!r}: want CONTAINERSxRULES, e.g. 1000x10000")
    return int(containers), int(rules)


# -- output ------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _phase_table(results: list[SizeResult]) -> list[str]:
    """One row per phase, one column per size: seconds / peak MiB."""
    names = [p.name for p in results[-1].phases]
    header = "| phase | " + " | ".join(f"{r.containers:,}x{r.rules:,}" for r in results) + " |"
    lines = ["", header, "|---|" + "---:|" * len(results)]
    for name in names:
        cells = []
        for r in results:
            phase = next((p for p in r.phases if p.name == name), None)
            peak = "" if phase is None or phase.peak_mib is None else f" / {phase.peak_mib:.1f}"
            cells.append("-" if phase is None else f"{phase.seconds:.4f}{peak}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def markdown(results: list[SizeResult], skipped: list[tuple[int, int, str]]) -> str:
    lines = [
        "| containers | links | rules | flows | parse s | decide s | render s | after-read s "
        "| floor s | nft -j s | ratio | peak MiB | RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        parse = sum(p.seconds for p in r.phases if p.name.startswith("parse"))
        decide = sum(p.seconds for p in r.phases if p.name in DECIDE_PHASES[:-1])
        render = next(p.seconds for p in r.phases if p.name == "render")
        peak = max(p.peak_mib or 0.0 for p in r.phases)
        lines.append(
            f"| {r.containers:,} | {r.links:,} | {r.rules:,} | {r.flows:,} | {parse:.3f} "
            f"| {decide:.3f} | {render:.3f} | {r.after_read_seconds:.3f} | {_fmt(r.floor_seconds)} "
            f"| {_fmt(r.nft_list_seconds)} | {_fmt(r.ratio, 2)} | {peak:.1f} | {r.rss_mib:.0f} |"
        )
    for containers, rules, why in skipped:
        lines.append(f"| {containers:,} | {containers // 2:,} | +{rules:,} | {why} |" + " |" * 9)
    if results:
        lines += _phase_table(results)
    legacy = [r for r in results if r.legacy]
    if legacy:
        lines += [
            "",
            "| rules | iptables-legacy-save s | python-iptables s | parse of its output s |",
            "|---:|---:|---:|---:|",
        ]
        for r in legacy:
            values = r.legacy or {}
            lines.append(
                f"| {r.rules:,} | {values['legacy_save_seconds']:.3f} "
                f"| {values['libiptc_seconds']:.3f} | {values['parse_seconds']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def text(result: SizeResult) -> str:
    lines = [
        f"{result.containers} containers, {result.links} links, {result.networks} networks, "
        f"{result.rules} rules, {result.flows} flows (read from the {result.read_from})"
    ]
    for p in result.phases:
        peak = "" if p.peak_mib is None else f"  peak {p.peak_mib:8.1f} MiB"
        lines.append(f"  {p.name:18} {p.seconds * 1000:10.1f} ms{peak}")
    lines.append(f"  {'after-read':18} {result.after_read_seconds * 1000:10.1f} ms")
    if result.floor_seconds is not None:
        lines.append(
            f"  {'floor (nft-save)':18} {result.floor_seconds * 1000:10.1f} ms  "
            f"ratio {result.ratio:.2f}"
        )
        lines.append(f"  {'nft -j list':18} {(result.nft_list_seconds or 0) * 1000:10.1f} ms")
    lines.append(f"  {'RSS':18} {result.rss_mib:10.0f} MiB")
    if result.legacy:
        for key, value in result.legacy.items():
            lines.append(f"  {'legacy ' + key.removesuffix('_seconds'):18} {value * 1000:10.1f} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=parse_size,
        metavar="CxR",
        help=f"containers x further rules (default: {' '.join(DEFAULT_SIZES)})",
    )
    parser.add_argument("--containers", nargs="+", type=int, help="with --rules: every pair")
    parser.add_argument("--rules", nargs="+", type=int, help="with --containers: every pair")
    parser.add_argument("--networks", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=_positive, default=3, help="timed runs per figure")
    parser.add_argument(
        "--budget",
        type=float,
        default=900.0,
        help="seconds one size may take (default 900); larger sizes are skipped",
    )
    parser.add_argument("--no-kernel", action="store_true", help="no floor, no root needed")
    parser.add_argument("--json", action="store_true", help="machine output")
    parser.add_argument("--markdown", action="store_true", help="the tables of docs/performance.md")
    parser.add_argument("--keep", type=Path, help="write the hosts here instead of a temp dir")
    parser.add_argument("--live", type=int, metavar="N", help="a lab dockerd with N containers")
    parser.add_argument(
        "--legacy",
        action="store_true",
        help="also time iptables-legacy-save against python-iptables",
    )
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--legacy-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.legacy_worker:
            print(json.dumps(legacy_worker(args.legacy_worker)))
            return 0
        if args.worker:
            print(json.dumps(asdict(worker(args.worker, args.repeat, not args.no_kernel))))
            return 0
        if args.live:
            # Imported here: the live bench needs tests/lab.py (a real dockerd), the rest does not.
            from bench.bench_live import run_live

            return run_live(args.live, args.repeat, args.json)
        if args.containers or args.rules:
            sizes = [(c, r) for c in args.containers or [100] for r in args.rules or [1000]]
        else:
            sizes = args.sizes or [parse_size(s) for s in DEFAULT_SIZES]
        if not args.no_kernel and os.geteuid() != 0:
            raise BenchError("the floor needs root (a network namespace); or use --no-kernel")
        results, skipped = run_sizes(sizes, args)
    except BenchError as error:
        print(f"bench_host: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(
            json.dumps(
                {"results": [asdict(r) for r in results], "skipped": [list(s) for s in skipped]},
                indent=2,
            )
        )
    elif args.markdown:
        print(markdown(results, skipped), end="")
    return 0


def run_sizes(
    sizes: list[tuple[int, int]], args: argparse.Namespace
) -> tuple[list[SizeResult], list[tuple[int, int, str]]]:
    """Measure each size, smallest first; a size over budget skips every size at least as big."""
    workdir = args.keep or Path(tempfile.mkdtemp(prefix=f"dnpbench-{os.getpid()}-"))
    results: list[SizeResult] = []
    skipped: list[tuple[int, int, str]] = []
    # Per size as it is measured; on stderr when stdout carries the tables or the JSON.
    progress = sys.stderr if args.json or args.markdown else sys.stdout
    try:
        for containers, rules in sorted(sizes):
            over = [s for s in skipped if s[0] <= containers and s[1] <= rules]
            if over:
                skipped.append(
                    (containers, rules, f"not measured: {over[0][0]}x{over[0][1]} was over budget")
                )
                continue
            shape = HostShape(containers, args.networks, containers // 2, rules, args.seed)
            try:
                result = measure_size(shape, args, workdir)
            except OverBudget as error:
                skipped.append((containers, rules, str(error)))
                print(f"{containers} containers, {rules} further rules: {error}", file=progress)
                continue
            results.append(result)
            print(text(result), file=progress, flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return results, skipped


if __name__ == "__main__":
    sys.exit(main())
