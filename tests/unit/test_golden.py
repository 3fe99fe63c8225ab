"""Golden end-to-end outputs of the recorded snapshots (tests/fixtures/sources/*).

Each snapshot is checked by the real code path (the CLI's `check --format json`, and one check
published into `Latest` and rendered as /metrics by the real collector) and compared byte for byte
with tests/fixtures/golden/<snapshot>.check.json and <snapshot>.metrics.txt. scripts/regen_golden.py
is the single source of truth: it produces the outputs compared here and is the only writer of the
files. After an intended change: `make golden`, then review the diff (it is the public contract).
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "regen_golden.py"
REGENERATE = "run `make golden` (python3 scripts/regen_golden.py) and review the diff"


def _load_script() -> ModuleType:
    # scripts/ is not a package; load the file itself so the test and `make golden` share code.
    spec = importlib.util.spec_from_file_location("regen_golden", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


regen = _load_script()


@pytest.fixture(scope="module")
def outputs() -> dict[str, str]:
    return regen.golden_outputs()


def _diff(expected: str, actual: str, name: str) -> str:
    lines = difflib.unified_diff(
        expected.splitlines(keepends=True),
        actual.splitlines(keepends=True),
        f"golden/{name}",
        "this run",
    )
    return "".join(list(lines)[:60])


def test_there_are_snapshots():
    assert regen.snapshots(), f"no snapshot directory in {regen.SNAPSHOTS_DIR}"


def test_golden_files_match_a_fresh_run(outputs):
    for name, text in outputs.items():
        path = regen.GOLDEN_DIR / name
        assert path.exists(), f"golden/{name} is missing: {REGENERATE}"
        golden = path.read_text()
        assert text == golden, (
            f"golden/{name} differs from this run; if the change is intended, {REGENERATE}\n"
            + _diff(golden, text, name)
        )


def test_no_stale_golden_files(outputs):
    stale = [path.name for path in regen.golden_files() if path.name not in outputs]
    assert not stale, f"golden files of snapshots that no longer exist: {stale}; {REGENERATE}"


def test_golden_metrics_pass_promtool():
    # promtool is a real dependency of the test suite: missing means fail, never skip.
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: install the prometheus package (scripts/install-deps.sh)"
    for snapshot in regen.snapshots():
        path = regen.GOLDEN_DIR / (snapshot.name + regen.METRICS_SUFFIX)
        result = subprocess.run(
            [promtool, "check", "metrics"], input=path.read_bytes(), capture_output=True, timeout=30
        )
        assert result.returncode == 0, f"{path.name}: " + (result.stdout + result.stderr).decode()


def test_golden_check_json_is_json():
    for snapshot in regen.snapshots():
        document = json.loads((regen.GOLDEN_DIR / (snapshot.name + regen.CHECK_SUFFIX)).read_text())
        assert document["started"] == -1 and document["duration_seconds"] == -1
        assert all(source["duration_seconds"] == -1 for source in document["sources"])


# -- the normalization is minimal ------------------------------------------------------------


def test_json_normalization_touches_only_time_and_durations():
    text = (
        "{\n"
        '  "started": 1795960584.1819193,\n'
        '  "duration_seconds": 3.0765e-05,\n'
        '  "docker_version": "20.10.24",\n'
        '  "containers": 4,\n'
        '  "detail": "\\"started\\": 5",\n'
        '  "sources": [{"name": "docker"}]\n'
        "}\n"
    )
    assert regen.normalize_check_json(text) == text.replace("1795960584.1819193", "-1").replace(
        "3.0765e-05", "-1"
    )


def test_metrics_normalization_touches_only_time_and_durations():
    text = (
        "docker_netpolicy_last_check_timestamp_seconds 1.7959605841819193e+09\n"
        "docker_netpolicy_check_duration_seconds 0.011\n"
        'docker_netpolicy_source_duration_seconds{source="docker"} 3.0765e-05\n'
        "docker_netpolicy_last_success_timestamp_seconds 0.0\n"
        'docker_netpolicy_containers{network="bridge"} 4.0\n'
        "docker_netpolicy_checks_total 1.0\n"
    )
    expected = (
        "docker_netpolicy_last_check_timestamp_seconds -1.0\n"
        "docker_netpolicy_check_duration_seconds -1.0\n"
        'docker_netpolicy_source_duration_seconds{source="docker"} -1.0\n'
        # 0 means "never succeeded": part of the verdict, kept.
        "docker_netpolicy_last_success_timestamp_seconds 0.0\n"
        'docker_netpolicy_containers{network="bridge"} 4.0\n'
        "docker_netpolicy_checks_total 1.0\n"
    )
    assert regen.normalize_metrics(text) == expected
    success = "docker_netpolicy_last_success_timestamp_seconds 1.7e+09\n"
    assert regen.normalize_metrics(success) == (
        "docker_netpolicy_last_success_timestamp_seconds -1.0\n"
    )
