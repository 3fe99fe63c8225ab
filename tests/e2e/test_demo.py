"""`make demo` end to end, through the command line a user types: up, drift, restore, down.

Why: the demo is the first thing a new user runs; if `up` leaves half a lab behind, if `drift`
does not make the critical alert fire, or if `down` leaks a namespace, a veth or a process, the
user finds out on their own machine. This runs scripts/demo.py exactly as the Makefile does, with
its own state directory and random host ports, so it never collides with a demo a developer has
running in the same checkout (or with another run of this test).

The alert pipeline itself (rules, labels, dashboard) is tested in test_prometheus.py with the
same launcher (tests/e2e/monitoring.py); here the point is the demo's own lifecycle.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import monitoring as mon
from tests.lab import REPO_ROOT

pytestmark = [pytest.mark.prometheus, pytest.mark.lab]

DEMO = REPO_ROOT / "scripts" / "demo.py"
ALERT = "DockerNetpolicyIsolationBreach"
DEADLINE = 60


def demo(state_dir: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, str(DEMO), "--state-dir", str(state_dir), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        cwd=REPO_ROOT,
        check=False,
    )
    print(f"$ demo.py {' '.join(args)} -> {r.returncode}\n{r.stdout}{r.stderr}")
    return r


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """A private state dir; `down` runs afterwards whatever happened (it is idempotent)."""
    path = tmp_path / "demo-state"
    try:
        mon.preflight()
    except mon.MonitoringError as e:
        pytest.fail(str(e))
    try:
        yield path
    finally:
        if (path / "state.json").exists():
            demo(path, "down")


def leftovers(state: dict, state_dir: Path) -> list[str]:
    """Everything `up` started that is still there."""
    found = []
    lab_dir, netns = state["lab"]["dir"], state["lab"]["netns"]
    if netns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout:
        found.append(f"netns {netns}")
    if os.path.exists(lab_dir):
        found.append(f"dir {lab_dir}")
    if state_dir.exists():
        found.append(f"state dir {state_dir}")
    veth = state["veth"]["host"]
    if subprocess.run(["ip", "link", "show", veth], capture_output=True).returncode == 0:
        found.append(f"veth {veth}")
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        line = mon.cmdline(int(pid))
        if lab_dir in line or str(state_dir) in line:
            found.append(f"process {pid}: {line[:200]}")
    with open("/proc/self/mountinfo") as f:
        found += [f"mount {m}" for m in (line.split()[4] for line in f) if m.startswith(lab_dir)]
    return found


def test_demo_up_drift_restore_down(state_dir: Path) -> None:
    t0 = time.monotonic()
    r = demo(state_dir, "up", "--random-ports")
    assert r.returncode == 0, r.stdout + r.stderr
    up_seconds = time.monotonic() - t0
    state = json.loads((state_dir / "state.json").read_text())
    for what in ("Prometheus", "Alertmanager", "exporter", state["prometheus"]["addr"]):
        assert what in r.stdout, r.stdout
    stack = mon.Stack(
        dir=state_dir,
        targets=[state["exporter"]["addr"]],
        prometheus_addr=state["prometheus"]["addr"],
        alertmanager_addr=state["alertmanager"]["addr"],
    )
    # Reachable from the host namespace: the exporter over the veth, the others on 127.0.0.1.
    assert "docker_netpolicy_up 1.0" in mon.host_get(f"http://{state['exporter']['addr']}/metrics")
    assert stack.query(f'docker_netpolicy_up{{job="{mon.JOB}"}} == 1')
    assert not mon.firing(stack.prometheus_alerts(), ALERT)
    # A second `up` reports the running demo instead of starting another one.
    again = demo(state_dir, "up", "--random-ports")
    assert again.returncode == 0 and "already up" in again.stdout

    r = demo(state_dir, "drift")
    assert r.returncode == 0 and ALERT in r.stdout, r.stdout + r.stderr
    _, fired = mon.wait_for(
        f"{ALERT} in Alertmanager",
        lambda: mon.am_active(stack.alertmanager_alerts(), ALERT),
        DEADLINE,
    )
    status = demo(state_dir, "status")
    assert status.returncode == 0, status.stdout
    assert "PRESENT" in status.stdout and f"{ALERT}(critical)" in status.stdout, status.stdout

    r = demo(state_dir, "restore")
    assert r.returncode == 0, r.stdout + r.stderr
    _, resolved = mon.wait_for(
        f"{ALERT} to resolve",
        lambda: (
            not mon.firing(stack.prometheus_alerts(), ALERT)
            and not mon.am_active(stack.alertmanager_alerts(), ALERT)
        ),
        DEADLINE,
    )

    t0 = time.monotonic()
    r = demo(state_dir, "down")
    down_seconds = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    assert leftovers(state, state_dir) == []
    r = demo(state_dir, "down")
    assert r.returncode == 0 and "nothing to stop" in r.stdout, r.stdout + r.stderr
    r = demo(state_dir, "status")
    assert r.returncode == 3, r.stdout
    print(
        f"demo timings: up={up_seconds:.1f}s drift->alert={fired:.1f}s "
        f"restore->resolved={resolved:.1f}s down={down_seconds:.1f}s"
    )
