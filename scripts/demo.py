#!/usr/bin/env python3
"""A sandboxed demo: a throwaway Docker daemon, a small linked app, the exporter, Prometheus with
the repo's alert rules, and Alertmanager. Then break the isolation and watch the alert fire.

    python3 scripts/demo.py up        # start everything (as root), print the URLs
    python3 scripts/demo.py drift     # iptables -I DOCKER-USER -j ACCEPT in the lab namespace
    python3 scripts/demo.py restore   # remove that rule again
    python3 scripts/demo.py status    # what runs, what fires
    python3 scripts/demo.py check     # the exporter's one-shot `check --format text` in the lab
    python3 scripts/demo.py down      # remove everything `up` started (safe to run twice)

Layout (docs/demo.md has the picture):

- dockerd --icc=false in its own network namespace (tests/lab.py's DockerLab): the host's firewall
  and the host's own Docker are never touched. Containers: `web` (httpd on 80, exposed), `api`
  (--link web:web) and `intruder` (no link: icc=false must keep it away from web).
- The exporter runs inside the lab namespace (it must read that namespace's firewall) and listens
  on the lab end of a veth pair with a private /30 (10.213.N.2). The host end (10.213.N.1) makes
  it reachable from the host without any forwarding or NAT.
- Prometheus and Alertmanager run in the host namespace on 127.0.0.1, so a browser on the host
  (or an SSH tunnel) reaches them; Prometheus scrapes the exporter over the veth.
- Everything is started detached (own session) so it outlives this command. What was started
  (namespace, lab dir, veth, pids, ports) is written to STATE_DIR/state.json; `down` reads it.
  STATE_DIR is .demo/ in the repo unless --state-dir or $DNP_DEMO_STATE_DIR says otherwise.

Installs nothing itself: when a binary is missing it runs scripts/install-deps.sh.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.e2e import monitoring as mon  # noqa: E402
from tests.lab import DockerLab, LabError, exporter_env  # noqa: E402
from tests.lab import preflight as lab_preflight  # noqa: E402

DEFAULT_STATE_DIR = REPO_ROOT / ".demo"
STATE_FILE = "state.json"
LAB_PREFIX = "dnpdemo"
BACKEND = "nft"
EXPORTER_PORT = 9863
PROMETHEUS_PORT = 19090
ALERTMANAGER_PORT = 19093
INTERVAL = "5s"
"""Check, scrape and rule-evaluation interval: a breach fires within about three of them."""
DRIFT_RULE = ("DOCKER-USER", "-j", "ACCEPT")
ALERT = "DockerNetpolicyIsolationBreach"
# Candidate /30s for the veth pair, in order; one overlapping a host route or address is skipped.
SUBNET_POOLS = ("10.213.0.0/16", "192.168.213.0/24", "172.30.213.0/24")


class DemoError(RuntimeError):
    pass


# ---------------------------------------------------------------------- state


class State:
    """STATE_DIR/state.json, rewritten atomically after every step of `up`."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory.resolve()
        self.path = self.dir / STATE_FILE
        self.data: dict[str, Any] = {}

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> State:
        self.data = json.loads(self.path.read_text())
        return self

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


# ---------------------------------------------------------------------- helpers


def run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if check and r.returncode != 0:
        raise DemoError(f"{' '.join(cmd)} failed (rc={r.returncode}): {r.stderr.strip()}")
    return r


def say(text: str = "") -> None:
    print(text, flush=True)


def ensure_dependencies() -> None:
    """Root, dockerd & co., Prometheus, Alertmanager, the exporter's Python deps.

    Missing binaries or packages: run scripts/install-deps.sh (the project's one installer) once.
    """
    if os.geteuid() != 0:
        raise DemoError("the demo must run as root (network namespaces, dockerd, iptables)")

    def problems() -> list[str]:
        found = []
        for check in (lab_preflight, mon.preflight):
            try:
                check()
            except (LabError, mon.MonitoringError) as e:
                found.append(str(e))
        r = subprocess.run(
            [sys.executable, "-m", "exporter", "--version"],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=exporter_env(),
            check=False,
        )
        if r.returncode != 0:
            found.append(f"the exporter does not start: {r.stderr.strip()[-500:]}")
        return found

    missing = problems()
    if not missing:
        return
    say("demo: missing dependencies, running scripts/install-deps.sh:")
    for p in missing:
        say(f"  - {p}")
    subprocess.run([str(REPO_ROOT / "scripts" / "install-deps.sh")], check=True)
    missing = problems()
    if missing:
        raise DemoError("still missing after scripts/install-deps.sh: " + "; ".join(missing))


@contextlib.contextmanager
def host_lock() -> Iterator[None]:
    """Serialise subnet choice between demos (and test runs) on this host.

    flock on the /run directory itself: nothing to create, so nothing is left behind.
    """
    fd = os.open("/run", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def used_networks() -> list[ipaddress.IPv4Network]:
    nets = []
    routes = json.loads(run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]")
    for r in routes:
        dst = r.get("dst", "")
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.ip_network(dst, strict=False))
    for link in json.loads(run(["ip", "-j", "-4", "addr"]).stdout or "[]"):
        for a in link.get("addr_info", []):
            nets.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network)]


def pick_subnet() -> ipaddress.IPv4Network:
    used = used_networks()
    for pool in SUBNET_POOLS:
        for candidate in ipaddress.IPv4Network(pool).subnets(new_prefix=30):
            if not any(candidate.overlaps(u) for u in used):
                return candidate
    raise DemoError(f"no free /30 for the veth pair in {SUBNET_POOLS}")


def create_veth(state: State, lab: DockerLab) -> dict[str, Any]:
    """Host end HOST_IP/30, lab end LAB_IP/30 inside the lab namespace; both up."""
    token = secrets.token_hex(3)
    host_if, lab_if = f"dnp{token}h", f"dnp{token}l"  # <= 15 characters
    with host_lock():
        subnet = pick_subnet()
        host_ip, lab_ip = (str(h) for h in subnet.hosts())
        run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", lab_if])
        state.data["veth"] = {"host": host_if, "lab": lab_if, "subnet": str(subnet)}
        state.save()
        run(["ip", "link", "set", lab_if, "netns", lab.netns])
        run(["ip", "addr", "add", f"{host_ip}/30", "dev", host_if])
    run(["ip", "link", "set", host_if, "up"])
    run(["ip", "-n", lab.netns, "addr", "add", f"{lab_ip}/30", "dev", lab_if])
    run(["ip", "-n", lab.netns, "link", "set", lab_if, "up"])
    state.data["veth"].update(host_ip=host_ip, lab_ip=lab_ip)
    state.save()
    return state["veth"]


def choose_port(preferred: int, random_ports: bool) -> int:
    if not random_ports and mon.port_free("127.0.0.1", preferred):
        return preferred
    return mon.free_port()


def exporter_flags(lab: DockerLab) -> list[str]:
    return [
        "--docker.config",
        str(lab.dir / "daemon.json"),
        "--iptables.backend",
        lab.backend or "auto",
        "--expect.icc",
        "disabled",
    ]


def check_command(state: State) -> str:
    lab = state["lab"]
    return (
        f"cd {REPO_ROOT} && nsenter --net=/run/netns/{lab['netns']} {sys.executable} -m exporter "
        f"--docker.host {lab['docker_host']} --docker.config {lab['dir']}/daemon.json "
        f"--iptables.backend {lab['backend']} --expect.icc disabled check --format text"
    )


def http(url: str, timeout: float = 3) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - local URLs only
        return r.read().decode()


def stack_for(state: State) -> mon.Stack:
    """A Stack object for the recorded Prometheus/Alertmanager (API access only)."""
    return mon.Stack(
        dir=state.dir,
        targets=[state["exporter"]["addr"]],
        prometheus_addr=state["prometheus"]["addr"],
        alertmanager_addr=state["alertmanager"]["addr"],
        interval=INTERVAL,
    )


def alive(pid: int | None, marker: str) -> bool:
    return bool(pid) and marker in mon.cmdline(int(pid or 0)) and not mon._zombie(int(pid or 0))


# ---------------------------------------------------------------------- commands


def cmd_up(state: State, args: argparse.Namespace) -> int:
    if state.exists():
        state.load()
        if all_running(state):
            say(f"demo: already up (state in {state.path})")
            print_urls(state)
            return 0
        raise DemoError(
            f"a previous demo left state in {state.path} but is not fully running: "
            "run `python3 scripts/demo.py down` first"
        )
    ensure_dependencies()
    t0 = time.monotonic()
    state.data = {"version": 1, "started": time.time(), "repo": str(REPO_ROOT)}
    state.save()
    try:
        lab = DockerLab(prefix=LAB_PREFIX)
        state.data["lab"] = lab.info()
        state.save()
        say(f"demo: starting dockerd --icc=false in network namespace {lab.netns} ...")
        lab.start(icc=False, backend=BACKEND)
        state.data["lab"] = lab.info()
        state.save()

        say("demo: containers web (httpd :80, exposed), api (--link web:web), intruder ...")
        lab.run("web", expose=["80/tcp"])
        lab.run("api", links=["web:web"])
        lab.run("intruder")
        state.data["containers"] = {n: lab.ip(n) for n in ("web", "api", "intruder")}
        state.save()

        veth = create_veth(state, lab)
        exporter_addr = f"{veth['lab_ip']}:{EXPORTER_PORT}"
        say(f"demo: exporter in the lab namespace on {exporter_addr} ...")
        proc = lab.exporter_popen(
            *exporter_flags(lab),
            "--check.interval",
            INTERVAL,
            "serve",
            "--web.listen-address",
            exporter_addr,
        )
        state.data["exporter"] = {
            "pid": proc.pid,
            "addr": exporter_addr,
            "log": str(lab.dir / "exporter.log"),
        }
        state.save()
        metrics_url = f"http://{exporter_addr}/metrics"

        def exporter_up() -> bool:
            if proc.poll() is not None:
                raise DemoError(f"the exporter exited:\n{tail(lab.dir / 'exporter.log')}")
            return "docker_netpolicy_up 1.0" in http(metrics_url)

        mon.wait_for("the exporter's first check (docker_netpolicy_up 1)", exporter_up, 60)

        stack = mon.Stack(
            dir=state.dir,
            targets=[exporter_addr],
            prometheus_addr=f"127.0.0.1:{choose_port(PROMETHEUS_PORT, args.random_ports)}",
            alertmanager_addr=f"127.0.0.1:{choose_port(ALERTMANAGER_PORT, args.random_ports)}",
            interval=INTERVAL,
        )
        say("demo: Alertmanager and Prometheus on the host's 127.0.0.1 ...")
        try:
            stack.start()
        finally:
            for name, pid in stack.pids().items():
                state.data[name] = {
                    "pid": pid,
                    "addr": getattr(stack, f"{name}_addr"),
                    "log": str(stack.log(name)),
                }
            state.save()
        mon.wait_for(
            "Prometheus to scrape docker_netpolicy_up == 1",
            lambda: stack.query(f'docker_netpolicy_up{{job="{mon.JOB}"}} == 1'),
            timeout=60,
        )
    except BaseException:
        say("demo: `up` failed; removing what it started")
        errors = teardown(state)
        if errors:
            say(
                "demo: could not remove everything (state kept; run `down` again): "
                + "; ".join(errors)
            )
        else:
            shutil.rmtree(state.dir, ignore_errors=True)
        raise
    state.data["up_seconds"] = round(time.monotonic() - t0, 1)
    state.save()
    say(f"demo: up in {state['up_seconds']}s (state in {state.path})")
    print_urls(state)
    return 0


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def print_urls(state: State) -> None:
    veth = state["veth"]
    prom, am = state["prometheus"]["addr"], state["alertmanager"]["addr"]
    graph = "graph?g0.expr=docker_netpolicy_isolation_breaches&g0.tab=0"
    say()
    say(f"  Prometheus     http://{prom}/alerts")
    say(f"                 http://{prom}/{graph}")
    say(f"  Alertmanager   http://{am}/#/alerts")
    say(f"  exporter       http://{state['exporter']['addr']}/metrics")
    say(f"                 (lab namespace, over veth {veth['host']} {veth['subnet']})")
    say(f"  one-shot check {check_command(state)}")
    say("                 (or: python3 scripts/demo.py check)")
    say()
    say("  Containers on the default bridge (dockerd --icc=false):")
    for name, ip in state.get("containers", {}).items():
        say(f"    {name:9} {ip}")
    say()
    say("  Next: python3 scripts/demo.py drift    (make demo-drift)    breaks the isolation")
    say("        python3 scripts/demo.py restore  (make demo-restore)  repairs it")
    say("        python3 scripts/demo.py down     (make demo-stop)     removes everything")
    p_port, a_port = prom.rsplit(":", 1)[1], am.rsplit(":", 1)[1]
    say(f"  From another machine: ssh -L {p_port}:{prom} -L {a_port}:{am} root@THIS_HOST")


def drift_present(lab: DockerLab) -> bool:
    return lab.iptables("-C", *DRIFT_RULE, check=False).returncode == 0


def cmd_drift(state: State, args: argparse.Namespace) -> int:
    require_up(state)
    lab = DockerLab.attach(state["lab"])
    if drift_present(lab):
        say("demo: the drift rule is already in place (iptables -I DOCKER-USER -j ACCEPT)")
    else:
        lab.iptables("-I", *DRIFT_RULE)
        state.data["drift_since"] = time.time()
        state.save()
        say(f"demo: ran `iptables -I {' '.join(DRIFT_RULE)}` in network namespace {lab.netns}")
    say("  Every container on the bridge can now reach every other one: `intruder` reaches")
    say("  web:80 although icc=false and no --link allow it.")
    say(f"  {ALERT} (severity=critical, network=bridge) should fire within a minute")
    say(f"  (checks, scrapes and rule evaluations every {INTERVAL}):")
    say(f"    http://{state['prometheus']['addr']}/alerts")
    say(f"    http://{state['alertmanager']['addr']}/#/alerts")
    say("  Undo it with `python3 scripts/demo.py restore` (make demo-restore).")
    return 0


def cmd_restore(state: State, args: argparse.Namespace) -> int:
    require_up(state)
    lab = DockerLab.attach(state["lab"])
    removed = 0
    while drift_present(lab):
        lab.iptables("-D", *DRIFT_RULE)
        removed += 1
    state.data.pop("drift_since", None)
    state.save()
    if removed:
        say(f"demo: removed `{' '.join(DRIFT_RULE)}` ({removed}x) in network namespace {lab.netns}")
        say(f"  {ALERT} resolves within a minute; DockerNetpolicyTransientDrift (warning) then")
        say("  reports for 15 minutes that drift came and went.")
    else:
        say("demo: no drift rule to remove; the firewall is as Docker wrote it")
    return 0


def cmd_check(state: State, args: argparse.Namespace) -> int:
    require_up(state)
    lab = DockerLab.attach(state["lab"])
    r = lab.exporter(*exporter_flags(lab), "check", "--format", "text", *args.rest)
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    return r.returncode


def processes(state: State) -> dict[str, tuple[int | None, str]]:
    """name -> (pid, marker): the marker is a path only that process names on its command line."""
    lab_dir = state.get("lab", {}).get("dir", "")
    out: dict[str, tuple[int | None, str]] = {}
    if lab_dir:
        pidfile = Path(lab_dir) / "docker.pid"
        with contextlib.suppress(OSError, ValueError):
            out["dockerd"] = (int(pidfile.read_text().strip()), lab_dir)
        out.setdefault("dockerd", (None, lab_dir))
        out["exporter"] = (state.get("exporter", {}).get("pid"), lab_dir)
    for name in ("alertmanager", "prometheus"):
        out[name] = (state.get(name, {}).get("pid"), str(state.dir))
    return out


def all_running(state: State) -> bool:
    procs = processes(state)
    return len(procs) == 4 and all(alive(pid, marker) for pid, marker in procs.values())


def require_up(state: State) -> None:
    if not state.exists():
        raise DemoError("the demo is not up: run `python3 scripts/demo.py up` (make demo)")
    state.load()
    if "lab" not in state.data or "veth" not in state.data:
        raise DemoError(f"incomplete demo state in {state.path}: run `... down`, then `... up`")


def cmd_status(state: State, args: argparse.Namespace) -> int:
    if not state.exists():
        say("demo: not running")
        return 3
    state.load()
    lab = state.get("lab", {})
    netns_ok = os.path.exists(f"/run/netns/{lab.get('netns')}")
    say(f"demo: state {state.path}")
    say(f"  netns         {lab.get('netns')} ({'present' if netns_ok else 'MISSING'})")
    ok = netns_ok
    for name, (pid, marker) in processes(state).items():
        running = alive(pid, marker)
        ok &= running
        say(f"  {name:13} pid {pid or '-':>7}  {'running' if running else 'NOT RUNNING'}")
    logs = [state.get(n, {}).get("log") for n in ("exporter", "prometheus", "alertmanager")]
    if lab.get("dir"):
        logs.insert(0, f"{lab['dir']}/dockerd.log")
    say(f"  logs          {' '.join(log for log in logs if log)}")
    if "veth" in state.data:
        veth = state["veth"]
        present = run(["ip", "link", "show", veth["host"]], check=False).returncode == 0
        ok &= present
        ends = f"{veth.get('host_ip')} <-> {veth.get('lab_ip')}"
        say(f"  veth          {veth['host']} {ends} ({'present' if present else 'MISSING'})")
    if netns_ok:
        try:
            drifted = drift_present(DockerLab.attach(lab))
            rule = " ".join(DRIFT_RULE)
            say(f"  drift rule    {f'PRESENT (iptables -I {rule})' if drifted else 'absent'}")
        except Exception as e:  # noqa: BLE001 - status reports, never fails
            say(f"  drift rule    unknown ({e})")
    if "prometheus" in state.data and "alertmanager" in state.data:
        stack = stack_for(state)
        try:
            up = [s["value"][1] for s in stack.query(f'docker_netpolicy_up{{job="{mon.JOB}"}}')]
            say(f"  docker_netpolicy_up = {', '.join(up) or 'no data yet'}")
            prom = [f"{a['labels']['alertname']}[{a['state']}]" for a in stack.prometheus_alerts()]
            say(f"  Prometheus alerts:   {', '.join(prom) or 'none'}")
            am = [
                f"{a['labels']['alertname']}({a['labels'].get('severity')})"
                for a in mon.am_active(stack.alertmanager_alerts())
            ]
            say(f"  Alertmanager alerts: {', '.join(am) or 'none'}")
        except Exception as e:  # noqa: BLE001 - status reports, never fails on a dead API
            ok = False
            say(f"  Prometheus/Alertmanager API: {e}")
        print_urls(state)
    return 0 if ok else 1


def teardown(state: State) -> list[str]:
    """Stop and remove everything recorded in STATE, in reverse order. Returns the problems."""
    errors: list[str] = []

    def attempt(what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - teardown goes on
            errors.append(f"{what}: {e}")

    procs = processes(state)
    for name in ("prometheus", "alertmanager", "exporter"):
        pid, marker = procs.get(name, (None, ""))
        if pid and marker:
            attempt(name, functools.partial(mon.stop_pid, int(pid), marker))
    # Anything else still naming the state dir (a Prometheus whose pid was never recorded).
    attempt("leftovers", lambda: kill_naming(str(state.dir)))
    veth = state.get("veth")
    if veth and run(["ip", "link", "show", veth["host"]], check=False).returncode == 0:
        attempt("veth", lambda: run(["ip", "link", "del", veth["host"]]))
    info = state.get("lab")
    if info and (os.path.exists(info["dir"]) or os.path.exists(f"/run/netns/{info['netns']}")):

        def close_lab() -> None:
            lab = DockerLab.attach(info)
            lab.dir.mkdir(exist_ok=True)  # close() ends with rmtree(dir)
            lab.close()

        attempt("lab", close_lab)
    return errors


def kill_naming(marker: str) -> None:
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me and marker in mon.cmdline(int(entry)):
            mon.stop_pid(int(entry), marker)


def cmd_down(state: State, args: argparse.Namespace) -> int:
    if not state.exists():
        if state.dir.exists():
            shutil.rmtree(state.dir)
        say("demo: nothing to stop")
        return 0
    state.load()
    t0 = time.monotonic()
    errors = teardown(state)
    if errors:
        say("demo: teardown incomplete (state kept, run `down` again):")
        for e in errors:
            say(f"  - {e}")
        return 1
    shutil.rmtree(state.dir)
    say(f"demo: stopped and removed everything in {time.monotonic() - t0:.1f}s")
    return 0


COMMANDS: dict[str, Callable[[State, argparse.Namespace], int]] = {
    "up": cmd_up,
    "drift": cmd_drift,
    "restore": cmd_restore,
    "status": cmd_status,
    "check": cmd_check,
    "down": cmd_down,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="demo.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("DNP_DEMO_STATE_DIR", DEFAULT_STATE_DIR)),
        help="where the demo keeps state.json, Prometheus and Alertmanager (default: .demo/)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="start the demo (as root)")
    up.add_argument(
        "--random-ports",
        action="store_true",
        help=f"free random ports instead of {PROMETHEUS_PORT}/{ALERTMANAGER_PORT}",
    )
    sub.add_parser("drift", help="insert `iptables -I DOCKER-USER -j ACCEPT` in the lab")
    sub.add_parser("restore", help="remove that rule again")
    sub.add_parser("status", help="what runs and what fires (exit 3: not up, 1: broken)")
    check = sub.add_parser("check", help="the exporter's `check --format text` in the lab")
    check.add_argument("rest", nargs=argparse.REMAINDER, help="more `check` flags")
    sub.add_parser("down", help="remove everything `up` started (safe to run twice)")
    args = parser.parse_args(argv)
    state = State(args.state_dir)
    try:
        return COMMANDS[args.command](state, args)
    except (DemoError, LabError, mon.MonitoringError) as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
