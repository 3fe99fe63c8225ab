"""The exporter against a real dockerd: each kind of drift, injected as an operator would.

Why: unit tests prove the core on recorded rules; only a real daemon proves that the exporter
reads the world correctly (Docker API, both iptables backends, per-namespace sysctls) and that
its verdicts are the kernel's. So for every case, every flow the exporter lists with a verdict
is checked against a real connection between those containers.

One daemon per backend for the whole module (icc=false), one more pair with icc=true. Each
injection is undone in a `finally`, and the `restored` fixture checks (and if need be forces)
that the firewall is back to the module's baseline, so the cases stay independent.

Contract under test (`check --format json`): {drift, up, findings[], flows[], flow_counts[]};
exit 0 no drift, 1 drift, 2 could not check.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.lab import REPO_ROOT, UNEXPOSED_PORT, DockerLab, LabError, exporter_env, lab_fixture

pytestmark = pytest.mark.lab

Report = dict[str, Any]


# ---------------------------------------------------------------------- topology and fixtures


def build_topology(lab: DockerLab) -> None:
    """Default bridge: web (80/tcp, 53/udp), client --link web:db, loner.
    User network `isolated` (enable_icc=false): api (8080/tcp), worker."""
    lab.run("web", expose=["80/tcp", "53/udp"])
    lab.run("client", links=["web:db"])
    lab.run("loner")
    lab.network_create("isolated", icc=False)
    lab.run("api", expose=["8080/tcp"], network="isolated")
    lab.run("worker", network="isolated")


lab = lab_fixture(icc=False, setup=build_topology)
lab_icc = lab_fixture(icc=True, setup=build_topology)


@pytest.fixture(scope="module")
def baseline(lab: DockerLab) -> dict[str, str]:
    """The firewall as Docker left it; mutable because a daemon restart rewrites it."""
    return {"rules": firewall(lab)}


@pytest.fixture
def restored(lab: DockerLab, baseline: dict[str, str]) -> Iterator[DockerLab]:
    """Yield the lab; afterwards insist the test put everything back (and force it if not)."""
    yield lab
    problems = []
    if lab.bridge_nf_call() != 1:
        lab.set_bridge_nf_call(1)
        problems.append("bridge-nf-call-iptables left at 0")
    now = firewall(lab)
    if now != baseline["rules"]:
        lab.ns(["iptables-restore"], input=baseline["rules"])
        problems.append(f"firewall not restored:\n{diff(baseline['rules'], now)}")
    assert not problems, "; ".join(problems)


def firewall(lab: DockerLab) -> str:
    """filter + nat without counters or comments: what a restore must reproduce exactly."""
    text = lab.ns(["iptables-save", "-t", "filter"]).stdout + lab.iptables_save("nat")
    return "".join(
        re.sub(r"\[\d+:\d+\]", "[0:0]", line) + "\n"
        for line in text.splitlines()
        if not line.startswith("#")
    )


def diff(a: str, b: str) -> str:
    old, new = set(a.splitlines()), set(b.splitlines())
    return "\n".join([f"- {x}" for x in sorted(old - new)] + [f"+ {x}" for x in sorted(new - old)])


# ---------------------------------------------------------------------- running the exporter


def global_flags(lab: DockerLab, expect_icc: str, backend: str | None) -> list[str]:
    return ["--iptables.backend", backend or lab.backend or "auto", "--expect.icc", expect_icc]


def check(
    lab: DockerLab,
    *,
    expect_icc: str = "disabled",
    backend: str | None = None,
    all_flows: bool = True,
    exit_codes: tuple[int, ...] = (0, 1),
) -> tuple[int, Report]:
    """`check --format json` in the lab namespace; returns (exit code, parsed report).

    --all-flows by default: then every evaluated flow is listed, and every one of them is held
    against a real connection, not only the links and the unexpected ones.
    """
    flags = ["--all-flows"] if all_flows else []
    r = lab.exporter(*global_flags(lab, expect_icc, backend), "check", "--format", "json", *flags)
    return parse_check(r, exit_codes)


def parse_check(
    r: subprocess.CompletedProcess[str], exit_codes: tuple[int, ...] = (0, 1)
) -> tuple[int, Report]:
    assert r.returncode in exit_codes, (
        f"exit {r.returncode}, expected one of {exit_codes}\n"
        f"stderr:\n{r.stderr[-3000:]}\nstdout:\n{r.stdout[-3000:]}"
    )
    try:
        report = json.loads(r.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(f"not JSON ({e}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}") from e
    for key in ("drift", "up", "findings", "flows", "flow_counts"):
        assert key in report, f"missing {key!r} in {sorted(report)}"
    return r.returncode, report


def kinds(report: Report) -> set[str]:
    return {f["kind"] for f in report["findings"]}


def flow(
    report: Report, source: str, target: str, port: int | None, protocol: str = "tcp"
) -> dict[str, Any]:
    hits = [
        f
        for f in report["flows"]
        if f["source"] == source
        and f["target"] == target
        and f["port"] == port
        and f["protocol"] == protocol
        and f.get("family", "ipv4") == "ipv4"
    ]
    assert len(hits) == 1, f"want one flow {source}->{target}:{port}/{protocol}: {show(report)}"
    return hits[0]


def show(report: Report) -> str:
    """Compact text for assertion messages: findings and flows, one per line."""
    lines = [f"drift={report.get('drift')} up={report.get('up')}"]
    lines += [
        f"  finding {f['kind']} net={f['network']} {f.get('containers')} "
        f"{f.get('protocol')}/{f.get('port')}: {f.get('detail')}"
        for f in report.get("findings", [])
    ]
    lines += [
        f"  flow {f['network']} {f['source']}->{f['target']} {f['protocol']}/{f['port']} "
        f"expected={f['expected']} actual={f['actual']} ({f.get('reason')})"
        for f in report.get("flows", [])
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------- ground truth


def assert_ground_truth(lab: DockerLab, report: Report) -> None:
    """Every IPv4 flow with a verdict must be what a real connection between the two does.

    Probe flows (port null: a port no rule names) are measured on UNEXPOSED_PORT, where every lab
    container listens for TCP (the UDP probe brings its own listener) and which no rule names.
    """
    addresses = lab.addresses()
    tcp: list[tuple[dict[str, Any], str, str, int]] = []
    udp: list[tuple[dict[str, Any], str, str, int]] = []
    for f in report["flows"]:
        if f.get("family", "ipv4") != "ipv4" or f["actual"] not in ("allow", "deny"):
            continue
        ip = addresses.get((f["target"], f["network"]))
        assert ip, f"flow names {f['target']} on {f['network']}: not a lab endpoint"
        port = f["port"] if f["port"] is not None else UNEXPOSED_PORT
        if f["protocol"] == "tcp":
            tcp.append((f, f["source"], ip, port))
        elif f["protocol"] == "udp":
            udp.append((f, f["source"], ip, port))
    assert tcp, f"no TCP flow with a verdict to check:\n{show(report)}"

    with lab.timings.step("ground truth"), ThreadPoolExecutor(max_workers=2) as pool:
        udp_future = pool.submit(
            lab.udp_delivered_many, [(s, f["target"], ip, p) for f, s, ip, p in udp]
        )
        measured = lab.tcp_reachable_many([(s, ip, p) for _, s, ip, p in tcp])
        udp_measured = udp_future.result()
        delivered = [udp_measured[(s, f["target"], ip, p)] for f, s, ip, p in udp]
    wrong = []
    for f, src, ip, port in tcp:
        real = "allow" if measured[(src, ip, port)] else "deny"
        if real != f["actual"]:
            wrong.append(
                f"tcp {src}->{f['target']}({ip}):{port} exporter={f['actual']} real={real}"
            )
    for (f, src, ip, port), ok in zip(udp, delivered, strict=True):
        real = "allow" if ok else "deny"
        if real != f["actual"]:
            wrong.append(
                f"udp {src}->{f['target']}({ip}):{port} exporter={f['actual']} real={real}"
            )
    assert not wrong, (
        "exporter disagrees with real packets:\n" + "\n".join(wrong) + "\n" + show(report)
    )


def assert_clean(code: int, report: Report) -> None:
    assert code == 0, show(report)
    assert report["drift"] is False, show(report)
    assert report["up"] is True, show(report)
    bad = [f for f in report["flows"] if f["expected"] != f["actual"]]
    assert not bad, show(report)
    assert all(c["expected"] == c["actual"] for c in report["flow_counts"]), report["flow_counts"]
    assert report["flow_counts"], "a clean check still counts its flows"


def assert_drift(code: int, report: Report, *want: str) -> None:
    assert code == 1, f"exit {code}\n{show(report)}"
    assert report["drift"] is True, show(report)
    assert report["up"] is True, show(report)
    missing = set(want) - kinds(report)
    assert not missing, f"missing finding kinds {sorted(missing)}:\n{show(report)}"


# ---------------------------------------------------------------------- injections


@contextmanager
def rule_deleted(lab: DockerLab, chain: str, rule: str) -> Iterator[int]:
    """`iptables -D CHAIN RULE`; afterwards re-insert it at its old position."""
    position = rule_position(lab, chain, rule)
    lab.iptables("-D", chain, *rule.split())
    try:
        yield position
    finally:
        lab.iptables("-I", chain, str(position), *rule.split())


@contextmanager
def rule_inserted(lab: DockerLab, chain: str, rule: str, position: int = 1) -> Iterator[None]:
    lab.iptables("-I", chain, str(position), *rule.split())
    try:
        yield
    finally:
        lab.iptables("-D", chain, *rule.split())


@contextmanager
def rule_replaced(lab: DockerLab, chain: str, old: str, new: str) -> Iterator[int]:
    """`iptables -R CHAIN N NEW` where N is OLD's position; afterwards put OLD back."""
    position = rule_position(lab, chain, old)
    lab.iptables("-R", chain, str(position), *new.split())
    try:
        yield position
    finally:
        lab.iptables("-R", chain, str(position), *old.split())


@contextmanager
def forward_policy(lab: DockerLab, policy: str) -> Iterator[None]:
    """Set the filter FORWARD policy; afterwards put back the one Docker left."""
    before = next(
        line.split()[2]
        for line in lab.iptables("-S", "FORWARD").stdout.splitlines()
        if line.startswith("-P FORWARD ")
    )
    lab.iptables("-P", "FORWARD", policy)
    try:
        yield
    finally:
        lab.iptables("-P", "FORWARD", before)


@contextmanager
def bridge_nf_call_off(lab: DockerLab) -> Iterator[None]:
    lab.set_bridge_nf_call(0)
    try:
        yield
    finally:
        lab.set_bridge_nf_call(1)


def rule_position(lab: DockerLab, chain: str, rule: str) -> int:
    """1-based position of RULE (as `iptables -S` prints it, minus `-A CHAIN`) in CHAIN."""
    rules = [
        line.split(None, 2)[2]
        for line in lab.iptables("-S", chain).stdout.splitlines()
        if line.startswith(f"-A {chain} ")
    ]
    assert rules.count(rule) == 1, f"want exactly one {rule!r} in {chain}: {rules}"
    return rules.index(rule) + 1


def link_rule(lab: DockerLab) -> str:
    return (
        f"-s {lab.ip('client')}/32 -d {lab.ip('web')}/32 -i docker0 -o docker0 "
        "-p tcp -m tcp --dport 80 -j ACCEPT"
    )


ICC_DROP = "-i docker0 -o docker0 -j DROP"
ICC_ACCEPT = "-i docker0 -o docker0 -j ACCEPT"


# ---------------------------------------------------------------------- icc=false: cases


def test_clean_daemon_has_no_drift(restored: DockerLab) -> None:
    lab = restored
    with lab.timings.step("check clean"):
        code, report = check(lab)
    assert_clean(code, report)
    link = flow(report, "client", "web", 80)
    assert (link["expected"], link["actual"], link["alias"]) == ("allow", "allow", "db")
    assert flow(report, "client", "web", 53, "udp")["actual"] == "allow"
    assert flow(report, "loner", "web", 80)["expected"] == "deny"
    assert_ground_truth(lab, report)
    # Without --all-flows only link flows (and unexpected verdicts: none here) are listed.
    code, default = check(lab, all_flows=False)
    assert_clean(code, default)
    listed = {(f["source"], f["target"], f["protocol"], f["port"]) for f in default["flows"]}
    assert listed == {("client", "web", "tcp", 80), ("client", "web", "udp", 53)}, show(default)
    assert canonical(default)[2] == canonical(report)[2], "flow_counts must not depend on listing"


def test_auto_backend_sees_the_same_as_the_explicit_one(restored: DockerLab) -> None:
    lab = restored
    _, explicit = check(lab)
    code, auto = check(lab, backend="auto")
    assert_clean(code, auto)
    assert canonical(auto) == canonical(explicit)


def test_deleted_link_rule_is_missing_and_blocks_the_link(restored: DockerLab) -> None:
    lab = restored
    with rule_deleted(lab, "DOCKER", link_rule(lab)):
        with lab.timings.step("check missing rule"):
            code, report = check(lab)
        assert_drift(code, report, "missing_accept_rule", "blocked_link_flow")
        link = flow(report, "client", "web", 80)
        assert (link["expected"], link["actual"]) == ("allow", "deny"), show(report)
        missing = [f for f in report["findings"] if f["kind"] == "missing_accept_rule"]
        assert any(f["port"] == 80 and f["protocol"] == "tcp" for f in missing), show(report)
        assert all(f["network"] == "bridge" for f in missing), show(report)
        assert any({"client", "web"} <= set(f["containers"]) for f in missing), show(report)
        assert_ground_truth(lab, report)


def test_restore_command_repairs_a_missing_link_rule(restored: DockerLab) -> None:
    """The `restore` a finding offers must really bring the flow back."""
    lab = restored
    with rule_deleted(lab, "DOCKER", link_rule(lab)):
        _, report = check(lab)
        restores = [
            f["restore"]
            for f in report["findings"]
            if f["kind"] == "missing_accept_rule" and f.get("restore")
        ]
        assert len(restores) == 1, show(report)
        lab.ns(["sh", "-c", restores[0]])
        assert lab.tcp_reachable("client", lab.ip("web"), 80) is True
        code, after = check(lab)
        assert_clean(code, after)
        # Put it back the way the context manager expects to find it: deleted.
        lab.iptables("-D", "DOCKER", *link_rule(lab).split())


def test_blanket_accept_in_docker_user_breaches_isolation(restored: DockerLab) -> None:
    lab = restored
    with rule_inserted(lab, "DOCKER-USER", "-j ACCEPT"):
        with lab.timings.step("check DOCKER-USER accept"):
            code, report = check(lab)
        assert_drift(code, report, "isolation_breach", "unexpected_accept_rule")
        breach = flow(report, "loner", "web", 80)
        assert (breach["expected"], breach["actual"]) == ("deny", "allow"), show(report)
        assert flow(report, "worker", "api", 8080)["actual"] == "allow", show(report)
        assert_ground_truth(lab, report)


def test_accept_between_unlinked_containers_breaches_isolation(restored: DockerLab) -> None:
    lab = restored
    rule = f"-s {lab.ip('loner')}/32 -d {lab.ip('web')}/32 -i docker0 -o docker0 -j ACCEPT"
    with rule_inserted(lab, "DOCKER", rule):
        with lab.timings.step("check loner accept"):
            code, report = check(lab)
        assert_drift(code, report, "unexpected_accept_rule", "isolation_breach")
        breach = flow(report, "loner", "web", 80)
        assert (breach["expected"], breach["actual"]) == ("deny", "allow"), show(report)
        # The reply passes through conntrack's ESTABLISHED rule, so the flow really works.
        assert_ground_truth(lab, report)
        unexpected = [f for f in report["findings"] if f["kind"] == "unexpected_accept_rule"]
        assert any(f.get("rule") and lab.ip("loner") in f["rule"] for f in unexpected), show(report)


@pytest.mark.parametrize("policy", ["DROP", "ACCEPT"], ids=["policy-drop", "policy-accept"])
def test_icc_drop_replaced_by_accept(restored: DockerLab, policy: str) -> None:
    """`-R FORWARD n ... -j ACCEPT` over Docker's icc DROP.

    dockerd 20.10 sets the FORWARD policy to DROP when it turns ip_forward on (it does in a fresh
    namespace). A DROP policy would isolate on its own (Docker 1.x's documented layout), so only
    with the policy ACCEPT is Docker's DROP reported missing; the ACCEPT breaches either way.
    """
    lab = restored
    with forward_policy(lab, policy), rule_replaced(lab, "FORWARD", ICC_DROP, ICC_ACCEPT):
        with lab.timings.step(f"check icc drop replaced, policy {policy}"):
            code, report = check(lab)
        found = ("isolation_breach", "unexpected_accept_rule")
        assert_drift(code, report, *found, *(("icc_drop_missing",) if policy == "ACCEPT" else ()))
        assert flow(report, "loner", "web", 80)["actual"] == "allow", show(report)
        assert_ground_truth(lab, report)


@pytest.mark.parametrize("policy", ["DROP", "ACCEPT"], ids=["policy-drop", "policy-accept"])
def test_icc_drop_deleted(restored: DockerLab, policy: str) -> None:
    """Without the DROP rule, the FORWARD policy decides: DROP still isolates, ACCEPT does not."""
    lab = restored
    with forward_policy(lab, policy), rule_deleted(lab, "FORWARD", ICC_DROP):
        with lab.timings.step(f"check icc drop deleted, policy {policy}"):
            code, report = check(lab)
        loner_web = flow(report, "loner", "web", 80)
        if policy == "ACCEPT":
            assert_drift(code, report, "icc_drop_missing", "isolation_breach")
            assert loner_web["actual"] == "allow", show(report)
        else:
            # The policy isolates as Docker 1.x documented it: no drift, the flows agree.
            assert code == 0 and not report["drift"], show(report)
            assert loner_web["actual"] == "deny", show(report)
        assert_ground_truth(lab, report)


def test_bridge_nf_call_disabled_bypasses_every_rule(restored: DockerLab) -> None:
    lab = restored
    with bridge_nf_call_off(lab):
        with lab.timings.step("check bridge-nf-call=0"):
            code, report = check(lab)
        assert_drift(code, report, "bridge_nf_call_disabled", "isolation_breach")
        breaches = [f for f in report["findings"] if f["kind"] == "isolation_breach"]
        assert {f["network"] for f in breaches} >= {"bridge", "isolated"}, show(report)
        assert_ground_truth(lab, report)


def test_snapshot_check_gives_the_live_verdicts(restored: DockerLab, tmp_path: Path) -> None:
    """`check --snapshot` reads recorded files with the live parsers: same verdicts, offline.

    The offline check runs outside the lab namespace and with a Docker host that does not exist,
    so it cannot peek at the live state.
    """
    lab = restored
    rule = f"-s {lab.ip('loner')}/32 -d {lab.ip('web')}/32 -i docker0 -o docker0 -j ACCEPT"
    snap = tmp_path / "snap"
    with rule_inserted(lab, "DOCKER", rule):
        _, live = check(lab)
        r = lab.exporter(*global_flags(lab, "disabled", None), "snapshot", "--out", str(snap))
        assert r.returncode == 0, r.stderr
    assert snap.is_dir() and any(snap.iterdir()), f"empty snapshot: {r.stdout}{r.stderr}"
    offline_cmd = [
        sys.executable,
        "-m",
        "exporter",
        "--docker.host",
        f"unix://{lab.dir}/no-such.sock",
        *global_flags(lab, "disabled", None),
        "check",
        "--snapshot",
        str(snap),
        "--format",
        "json",
        "--all-flows",
    ]
    offline_run = subprocess.run(
        offline_cmd,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env=exporter_env(),
        check=False,
    )
    code, offline = parse_check(offline_run)
    assert code == 1
    assert canonical(offline) == canonical(live), f"live:\n{show(live)}\noffline:\n{show(offline)}"


def test_serve_exposes_a_breach(restored: DockerLab) -> None:
    lab = restored
    port = lab.free_port()
    with rule_inserted(lab, "DOCKER-USER", "-j ACCEPT"):
        proc = lab.exporter_popen(
            *global_flags(lab, "disabled", None),
            "serve",
            "--web.listen-address",
            f"127.0.0.1:{port}",
        )
        try:
            with lab.timings.step("serve first scrape"):
                text = scrape_until(lab, proc, port, has_breach)
        finally:
            proc.terminate()
            proc.wait(10)
    assert sample(text, "docker_netpolicy_up") == [({}, 1.0)], text[-3000:]
    bridge = [v for labels, v in sample(text, "docker_netpolicy_isolation_breaches")
              if labels.get("network") == "bridge"]  # fmt: skip
    assert bridge and sum(bridge) > 0, text[-3000:]


def test_daemon_restarted_with_icc_is_a_posture_drift(
    restored: DockerLab, baseline: dict[str, str]
) -> None:
    """Last in the module: a restart rewrites the firewall (and may renumber addresses)."""
    lab = restored
    try:
        lab.restart(icc=True)
        with lab.timings.step("check icc posture"):
            code, report = check(lab, expect_icc="disabled")
        assert_drift(code, report, "icc_posture")
        assert flow_or_none(report, "loner", "web", 80) in (None, "allow"), show(report)
        assert_ground_truth(lab, report)
        code, report = check(lab, expect_icc="enabled")
        assert "icc_posture" not in kinds(report), show(report)
    finally:
        lab.restart(icc=False)
        baseline["rules"] = firewall(lab)
    code, report = check(lab)
    assert_clean(code, report)


# ---------------------------------------------------------------------- icc=true daemon


def test_icc_enabled_daemon_matches_an_enabled_expectation(lab_icc: DockerLab) -> None:
    code, report = check(lab_icc, expect_icc="enabled")
    assert_clean(code, report)
    assert_ground_truth(lab_icc, report)
    assert lab_icc.tcp_reachable("loner", lab_icc.ip("web"), 80) is True
    # enable_icc=false on a user network still holds with a daemon-wide icc=true.
    assert lab_icc.tcp_reachable("worker", lab_icc.ip("api", "isolated"), 8080) is False


def test_icc_enabled_daemon_against_a_disabled_expectation(lab_icc: DockerLab) -> None:
    code, report = check(lab_icc, expect_icc="disabled")
    assert_drift(code, report, "icc_posture")
    code, report = check(lab_icc, expect_icc="any")
    assert_clean(code, report)


def test_icc_enabled_daemon_still_catches_a_user_network_breach(lab_icc: DockerLab) -> None:
    drop = "-i br-isolated -o br-isolated -j DROP"
    bridge = lab_icc.inspect("api")["NetworkSettings"]["Networks"]["isolated"]["NetworkID"][:12]
    drop = drop.replace("br-isolated", f"br-{bridge}")
    with (
        forward_policy(lab_icc, "ACCEPT"),
        rule_replaced(lab_icc, "FORWARD", drop, drop.replace("DROP", "ACCEPT")),
    ):
        code, report = check(lab_icc, expect_icc="enabled")
        assert_drift(code, report, "isolation_breach", "icc_drop_missing")
        assert flow(report, "worker", "api", 8080)["actual"] == "allow", show(report)
        assert_ground_truth(lab_icc, report)


# ---------------------------------------------------------------------- helpers


def canonical(report: Report) -> tuple[list[str], list[str], list[str]]:
    """Findings, flows and counts as sorted JSON lines: order-free comparison."""

    def lines(items: list[dict[str, Any]]) -> list[str]:
        return sorted(json.dumps(i, sort_keys=True) for i in items)

    return lines(report["findings"]), lines(report["flows"]), lines(report["flow_counts"])


def flow_or_none(report: Report, source: str, target: str, port: int) -> str | None:
    hits = [
        f["actual"]
        for f in report["flows"]
        if (f["source"], f["target"], f["port"], f["protocol"]) == (source, target, port, "tcp")
    ]
    return hits[0] if hits else None


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def sample(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of metric NAME in Prometheus text exposition."""
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1) == name:
            out.append((dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def has_breach(text: str) -> bool:
    up = sample(text, "docker_netpolicy_up")
    breaches = sample(text, "docker_netpolicy_isolation_breaches")
    return bool(up) and up[0][1] == 1 and any(v > 0 for _, v in breaches)


def scrape_until(
    lab: DockerLab,
    proc: subprocess.Popen[bytes],
    port: int,
    done: Callable[[str], bool],
    timeout: float = 45,
) -> str:
    """GET /metrics inside the namespace until done(text) or timeout; return the last text."""
    deadline = time.monotonic() + timeout
    text, error = "", ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (lab.dir / "exporter.log").read_text(errors="replace")
            raise AssertionError(f"serve exited with {proc.returncode}:\n{log[-3000:]}")
        try:
            text = lab.http_get(f"http://127.0.0.1:{port}/metrics")
            if done(text):
                return text
        except LabError as e:
            error = str(e)
        time.sleep(0.5)
    log = (lab.dir / "exporter.log").read_text(errors="replace")
    raise AssertionError(
        f"no breach on /metrics after {timeout}s\nlast error: {error}\n"
        f"last scrape:\n{text[-3000:]}\nlog:\n{log[-3000:]}"
    )
