"""Regenerate the golden outputs of the recorded snapshots: `make golden`.

For each snapshot directory in tests/fixtures/sources/ this runs the real code path and writes, in
tests/fixtures/golden/:

- <snapshot>.check.json   stdout of `docker-netpolicy-exporter check --snapshot DIR --format json`
                          (`exporter.cli.main`)
- <snapshot>.metrics.txt  /metrics after one check of the snapshot: `run_check(build_sources(...),
                          config, files)` published into `Latest`, rendered by `generate_latest`
                          with the real `NetpolicyCollector`

Both use the CLI's default flags with an empty environment (so DOCKER_HOST of the machine that
runs this cannot leak in). Golden files of snapshots that no longer exist are removed.

Normalization, the only change made to the real output: values that differ on every run (the
check's start time and the durations it measured) become -1, a value no real check can give:

- JSON: the number of every `"started"` and `"duration_seconds"` member (the report's and each
  source's).
- metrics: the sample value of `last_check_timestamp_seconds`, `check_duration_seconds` and
  `source_duration_seconds`, and of `last_success_timestamp_seconds` unless it is 0 (0 means no
  check has succeeded, which is part of the verdict).

tests/unit/test_golden.py compares the files with a fresh run of this module's `golden_outputs()`;
this script is the only writer of them. After an intended change, run it and review the diff.
"""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    # Run as a file, Python puts scripts/ on the path, not the repository.
    sys.path.insert(0, str(REPO_ROOT))

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from exporter.check import run_check  # noqa: E402
from exporter.cli import build_parser, config_from_args, main  # noqa: E402
from exporter.collector import NetpolicyCollector  # noqa: E402
from exporter.latest import Latest  # noqa: E402
from exporter.sources import build_sources  # noqa: E402
from exporter.sources.snapshot import read_snapshot  # noqa: E402

SNAPSHOTS_DIR = REPO_ROOT / "tests" / "fixtures" / "sources"
GOLDEN_DIR = REPO_ROOT / "tests" / "fixtures" / "golden"
CHECK_SUFFIX = ".check.json"
METRICS_SUFFIX = ".metrics.txt"
# The environment the CLI sees: none, so flag defaults are the built-in ones.
ENV: dict[str, str] = {}
STAND_IN = "-1"

_JSON_VARYING = re.compile(
    r'^(?P<key>\s*"(?:started|duration_seconds)": )-?[0-9.]+(?:[eE][-+]?[0-9]+)?(?P<end>,?)$',
    re.MULTILINE,
)
_METRICS_VARYING = re.compile(
    r"^(?P<series>docker_netpolicy_(?:last_check_timestamp_seconds|check_duration_seconds"
    r"|source_duration_seconds)(?:\{[^}\n]*\})?) \S+$",
    re.MULTILINE,
)
_METRICS_LAST_SUCCESS = re.compile(
    r"^(?P<series>docker_netpolicy_last_success_timestamp_seconds) (?!0\.0$)\S+$", re.MULTILINE
)


def normalize_check_json(text: str) -> str:
    return _JSON_VARYING.sub(rf"\g<key>{STAND_IN}\g<end>", text)


def normalize_metrics(text: str) -> str:
    text = _METRICS_VARYING.sub(rf"\g<series> {STAND_IN}.0", text)
    return _METRICS_LAST_SUCCESS.sub(rf"\g<series> {STAND_IN}.0", text)


def snapshots() -> list[Path]:
    return sorted(path for path in SNAPSHOTS_DIR.iterdir() if path.is_dir())


def check_json(snapshot: Path) -> str:
    """What `check --snapshot DIR --format json` prints, normalized."""
    stdout, stderr = io.StringIO(), io.StringIO()
    main(
        ["check", "--snapshot", str(snapshot), "--format", "json"],
        env=ENV,
        stdout=stdout,
        stderr=stderr,
    )
    if not stdout.getvalue():
        raise RuntimeError(f"check of {snapshot.name} printed nothing: {stderr.getvalue().strip()}")
    return normalize_check_json(stdout.getvalue())


def metrics_text(snapshot: Path) -> str:
    """/metrics after one check of the snapshot, as the live exporter builds it, normalized."""
    cfg = config_from_args(build_parser(ENV).parse_args(["check", "--snapshot", str(snapshot)]))
    sources = build_sources(cfg)
    report, _ = run_check(sources, cfg.check_config(), read_snapshot(snapshot))
    latest = Latest()
    latest.publish(report)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NetpolicyCollector(latest))
    return normalize_metrics(generate_latest(registry).decode())


def golden_outputs() -> dict[str, str]:
    """Every golden file's name and content, from a fresh run over every snapshot."""
    outputs: dict[str, str] = {}
    for snapshot in snapshots():
        outputs[snapshot.name + CHECK_SUFFIX] = check_json(snapshot)
        outputs[snapshot.name + METRICS_SUFFIX] = metrics_text(snapshot)
    return outputs


def golden_files() -> list[Path]:
    """The golden files this script owns that are on disk now."""
    return sorted(
        path for path in GOLDEN_DIR.iterdir() if path.name.endswith((CHECK_SUFFIX, METRICS_SUFFIX))
    )


def regenerate() -> list[str]:
    """Write every golden file, remove stale ones; return what changed."""
    outputs = golden_outputs()
    changed: list[str] = []
    for path in golden_files():
        if path.name not in outputs:
            path.unlink()
            changed.append(f"removed {path.name}")
    for name, text in outputs.items():
        path = GOLDEN_DIR / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(f"wrote {name}")
    return changed


if __name__ == "__main__":
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    for line in regenerate() or ["golden files are up to date"]:
        print(line)
