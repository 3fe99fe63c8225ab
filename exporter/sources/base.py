"""The source contract, and the small helpers every source shares.

A source reads one part of the world in two steps:

- `fetch()` talks to a tool or an API (read-only, always with a timeout) and returns the raw text it
  printed, as `{snapshot file name: text}`;
- `parse(files)` is pure: it turns those files, live or read back from a snapshot directory, into
  model values.

Expected failures (daemon unreachable, binary missing, permission denied, timeout, a snapshot file
missing or garbled) raise `SourceError`, whose text is one line for the user: what failed and what
to do about it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol, TypeVar

# Where the firewall tools live on Debian; a non-root PATH often lacks them.
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")

# Text in a tool's error output that means "not allowed", and what to do about it.
_DENIED = ("permission denied", "operation not permitted", "you must be root")
_DENIED_HINT = "run the exporter as root (or with CAP_NET_ADMIN and CAP_NET_RAW)"


class SourceError(Exception):
    """An expected failure of one source; str(e) is one line: what failed, what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


# What a source's parse returns (DockerState, IptablesRead, ...).
Parsed = TypeVar("Parsed", covariant=True)


class Source(Protocol[Parsed]):
    # "docker", "settings", "iptables", "ip6tables", "ebtables", "ipset", "nftables"
    name: str

    def fetch(self) -> dict[str, str]:
        """Talk to the world; return raw files {snapshot file name: text}."""
        ...

    def parse(self, files: Mapping[str, str]) -> Parsed:
        """Pure: raw files to model values; SourceError when a needed file is missing/garbled."""
        ...


class ParseMemo:
    """Each source's last raw files and the value parsed from them, to skip parsing a dump that
    did not change (a steady host prints the same rules every check).

    parse() is pure, so the same raw text gives the same value. Only a successful fetch reaches
    `parse`, and a value is reused only for byte-identical files: a source that fails, or prints
    anything else, is never served from here (fail closed). A parse that fails forgets the entry.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, tuple[dict[str, str], Any]] = {}
        self.reused = 0
        self.parsed = 0

    def parse(self, source: Source[Parsed], files: Mapping[str, str]) -> Parsed:
        with self._lock:
            last = self._last.pop(source.name, None)
        if last is not None and last[0] == files:
            kept, value = last[0], last[1]
            self.reused += 1
        else:
            kept, value = dict(files), source.parse(files)
            self.parsed += 1
        with self._lock:
            self._last[source.name] = (kept, value)
        return value  # type: ignore[no-any-return]


def require(source: str, files: Mapping[str, str], name: str) -> str:
    """The text of a file the source cannot do without."""
    try:
        return files[name]
    except KeyError:
        raise SourceError(f"{source}: snapshot has no {name}") from None


def parse_go_bool(text: str) -> bool | None:
    """A boolean as Go's strconv.ParseBool reads it (dockerd's flags and network options)."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


def find_binary(source: str, name: str, path: str | None = None) -> str | None:
    """The absolute path of a tool: on `path` when given, else on $PATH and then the sbin dirs.

    None when no such file exists. A file of that name that cannot be executed is a SourceError:
    taken as absent, one iptables backend would silently be judged without the other.
    """
    dirs = (
        path
        if path is not None
        else os.pathsep.join([os.environ.get("PATH", os.defpath), *SBIN_DIRS])
    )
    found = shutil.which(name, path=dirs)
    if found:
        return found
    for directory in dirs.split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate):
            raise SourceError(
                f"{source}: {candidate} exists but cannot be executed; fix its permissions"
            )
    return None


def decode(data: bytes) -> str:
    """Tool output as text; bytes that are not UTF-8 survive a round trip through a snapshot."""
    return data.decode("utf-8", "surrogateescape")


def run_tool(
    source: str,
    argv: Sequence[str],
    timeout: float,
    *,
    benign_stderr: Collection[str] = frozenset(),
) -> str:
    """Run a read-only tool and return what it printed on stdout.

    argv[0] must be an absolute path (see `find_binary`). The tool runs with LC_ALL=C, no stdin and
    a hard timeout; a tool that hangs is killed. Exit 0 is not enough: a tool may skip part of its
    output, say so on stderr and still exit 0, so any stderr line other than the `benign_stderr`
    ones (exact lines, surrounding blanks ignored) is a SourceError naming the first.
    """
    command = " ".join([os.path.basename(argv[0]), *argv[1:]])
    env = dict(os.environ, LC_ALL="C", LANG="C")
    try:
        # A session of its own, so a hung tool and any child it started are killed together.
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
    except PermissionError:
        raise SourceError(f"{source}: cannot execute {argv[0]}: permission denied") from None
    except OSError as error:
        raise SourceError(f"{source}: cannot run {argv[0]}: {error.strerror or error}") from None
    try:
        stdout, stderr_bytes = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        raise SourceError(f"{source}: {command} timed out after {timeout:g}s") from None
    done = subprocess.CompletedProcess(argv, process.returncode, stdout, stderr_bytes)
    if done.returncode != 0:
        stderr = decode(done.stderr).strip()
        first = stderr.splitlines()[0] if stderr else "(no error output)"
        hint = f"; {_DENIED_HINT}" if any(d in stderr.lower() for d in _DENIED) else ""
        raise SourceError(f"{source}: {command} failed (exit {done.returncode}): {first}{hint}")
    unexpected = [
        line.strip()
        for line in decode(done.stderr).splitlines()
        if line.strip() and line.strip() not in benign_stderr
    ]
    if unexpected:
        raise SourceError(
            f"{source}: {command} exited 0 but printed on stderr: {unexpected[0][:200]!r}; "
            "its output may be incomplete, no verdict from it"
        )
    return decode(done.stdout)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        process.kill()
    try:
        process.communicate(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process that survives SIGKILL
        pass
