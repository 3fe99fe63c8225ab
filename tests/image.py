"""The exporter's image, built for real from the Dockerfile without any registry, once per session.

Why: the README's `docker run` line and deploy/docker-compose.yml are promises about an image
(which capabilities suffice, that a read-only root works, that the HEALTHCHECK turns healthy).
Only the real image, run by a real dockerd, can keep them.

How (the recipe, measured on Debian 12; docs/lab.md has the details):

- the base: `debootstrap --variant=minbase --include=python3 bookworm`, trimmed the
  way debian:bookworm-slim is (no apt lists, caches, docs, man pages or locales), then
  `docker import` as BASE_IMAGE (the Dockerfile's build argument);
- the builder: a dockerd in the host's network namespace that cannot touch the host firewall
  (`--bridge=none --iptables=false --ip-masq=false`) with its own data root, exec root, pidfile
  and socket; BuildKit with `--network host`, and the machine's CA bundle as the `pip_cert`
  secret for a TLS-intercepting proxy;
- `docker save` to a tar file that lab daemons `docker load`.

Also the Prometheus and Alertmanager images for the compose test: `docker import` of a tar that
holds Debian's static `prometheus` / `prometheus-alertmanager` binaries and the files they read.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.lab import DOCKER_CLI, REPO_ROOT, SYSTEM_PATH, DockerLab, LabError

BASE_IMAGE = "local/debian-python:bookworm"
EXPORTER_IMAGE = "docker-netpolicy-exporter:test"
PROMETHEUS_IMAGE = "local/prometheus:debian"
ALERTMANAGER_IMAGE = "local/alertmanager:debian"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
README = REPO_ROOT / "README.md"
# What debian:bookworm-slim leaves out (its /etc/dpkg/dpkg.cfg.d/docker), so the Dockerfile's own
# apt-get install adds no documentation to the local base either.
DPKG_SLIM_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
"""
TRIMMED = (
    "var/lib/apt/lists",
    "var/cache/apt",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/locale",
)


@dataclass(frozen=True)
class BuiltImages:
    """Tar files (`docker save`) of the images a lab daemon loads, and what building them cost."""

    exporter: Path
    monitoring: Path
    size_bytes: int
    timings: str


def preflight() -> None:
    """Fail loudly when a tool is missing: a skipped image test proves nothing."""
    missing = [
        f"{tool} (Debian package {package})"
        for tool, package in (
            ("debootstrap", "debootstrap"),
            ("dockerd", "docker.io"),
            ("prometheus", "prometheus"),
            ("prometheus-alertmanager", "prometheus-alertmanager"),
        )
        if shutil.which(tool, path=SYSTEM_PATH) is None
    ]
    if missing:
        raise LabError("cannot build the image: missing " + ", ".join(missing))


class BuildDaemon(DockerLab):
    """A dockerd for builds only: in the host's network namespace (BuildKit's `--network host`
    reaches Debian's mirror and PyPI from here), with every firewall feature off, so it writes no
    rule and creates no bridge. Teardown is DockerLab's (no namespace to delete)."""

    def __init__(self) -> None:
        super().__init__(prefix="dnpimg")

    def start_builder(self, timeout: float = 60) -> None:
        cmd = self.dockerd_command(
            "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false"
        )
        env = {**os.environ, "PATH": SYSTEM_PATH}
        env.pop("DOCKER_HOST", None)
        with open(self.log_path, "ab") as log:
            self._daemon = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self._wait_api(timeout)


def build_images(out_dir: Path) -> BuiltImages:
    """Build base, exporter and monitoring images in a throwaway daemon; save them in out_dir."""
    preflight()
    with BuildDaemon() as daemon:
        daemon.start_builder()
        with daemon.timings.step("base"):
            import_base(daemon)
        with daemon.timings.step("build"):
            build_exporter(daemon)
        with daemon.timings.step("monitoring"):
            import_monitoring(daemon)
        size = int(daemon.docker("image", "inspect", "-f", "{{.Size}}", EXPORTER_IMAGE).stdout)
        exporter_tar, monitoring_tar = out_dir / "exporter.tar", out_dir / "monitoring.tar"
        with daemon.timings.step("save"):
            daemon.docker("save", "-o", str(exporter_tar), EXPORTER_IMAGE, timeout=300)
            daemon.docker(
                "save", "-o", str(monitoring_tar), PROMETHEUS_IMAGE, ALERTMANAGER_IMAGE, timeout=300
            )
        return BuiltImages(exporter_tar, monitoring_tar, size, daemon.timings.summary())


def import_base(daemon: BuildDaemon) -> None:
    root = daemon.dir / "base"
    debootstrap = subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3",  # python3-venv (and its pip wheel) only in the build stage
            "bookworm",
            str(root),
            DEBIAN_MIRROR,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    # debootstrap may leave /proc mounted in the new root; tar would then copy the host's /proc.
    subprocess.run(["umount", "-l", str(root / "proc")], capture_output=True, check=False)
    if debootstrap.returncode != 0:
        raise LabError(f"debootstrap failed: {debootstrap.stdout[-2000:]}{debootstrap.stderr}")
    for relative in TRIMMED:
        for entry in (root / relative).glob("*"):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    (root / "etc/dpkg/dpkg.cfg.d/docker-slim").write_text(DPKG_SLIM_EXCLUDES)
    docker_import(daemon, root, BASE_IMAGE, changes=('CMD ["/bin/bash"]',))
    shutil.rmtree(root)


def build_exporter(daemon: BuildDaemon) -> None:
    args = [
        DOCKER_CLI,
        "-H",
        daemon.docker_host,
        "build",
        "--network",
        "host",
        "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}",
        "-t",
        EXPORTER_IMAGE,
    ]
    if CA_BUNDLE.exists():
        args += ["--secret", f"id=pip_cert,src={CA_BUNDLE}"]
    result = subprocess.run(
        [*args, str(REPO_ROOT)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
        check=False,
    )
    if result.returncode != 0:
        raise LabError(f"docker build failed:\n{(result.stdout + result.stderr)[-4000:]}")


def import_monitoring(daemon: BuildDaemon) -> None:
    """Prometheus and Alertmanager images from Debian's binaries (no registry here).

    Each binary goes in at the path the upstream images use, with the shared libraries `ldd`
    names (glibc only: they are Go binaries) and the templates and web assets Debian keeps in
    /usr/share/prometheus, so the compose file's `command:` works unchanged.
    """
    for image, binary, entrypoint in (
        (PROMETHEUS_IMAGE, "/usr/bin/prometheus", "/bin/prometheus"),
        (ALERTMANAGER_IMAGE, "/usr/bin/prometheus-alertmanager", "/bin/alertmanager"),
    ):
        root = daemon.dir / "root-monitoring"
        copy_into(root, binary, entrypoint)
        for library in shared_libraries(binary):
            copy_into(root, library, library)
        shutil.copytree("/usr/share/prometheus", root / "usr/share/prometheus")
        for directory in ("tmp", "etc", "prometheus", "alertmanager"):
            (root / directory).mkdir(exist_ok=True)
        # Like the upstream images: run as nobody, which owns the data directories (a new named
        # volume takes the ownership of the directory it is mounted over).
        (root / "etc/passwd").write_text("root:x:0:0::/:/bin/false\nnobody:x:65534:65534::/:/\n")
        (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
        for data in ("prometheus", "alertmanager"):
            os.chown(root / data, 65534, 65534)
        docker_import(
            daemon, root, image, changes=(f'ENTRYPOINT ["{entrypoint}"]', "USER 65534:65534")
        )
        shutil.rmtree(root)


def copy_into(root: Path, source: str, target: str) -> None:
    destination = root / target.lstrip("/")
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, destination)  # follows symlinks: the image gets the real file


def shared_libraries(binary: str) -> list[str]:
    """Absolute paths of the libraries and loader `ldd BINARY` resolves."""
    listing = subprocess.run(
        ["ldd", binary], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    return re.findall(r"(/\S+) \(0x", listing)


def docker_import(daemon: DockerLab, root: Path, image: str, changes: tuple[str, ...]) -> None:
    with daemon.timings.step(f"import {image}"):
        daemon.docker_import(root, image, changes)


def load(lab: DockerLab, image_tar: Path) -> None:
    lab.docker("load", "-i", str(image_tar), timeout=300)


def image_layers(image_tar: Path) -> list[str]:
    """Every path in every layer of a saved image (for "no pip, no apt lists" assertions)."""
    names: list[str] = []
    with tarfile.open(image_tar) as outer:
        for member in outer.getmembers():
            if member.name.endswith("layer.tar"):
                layer = outer.extractfile(member)
                assert layer is not None
                with tarfile.open(fileobj=layer) as inner:
                    names += inner.getnames()
    return names


# ---------------------------------------------------------------------- the README's lines


def readme_command(marker: str, readme: Path = README) -> list[str]:
    """The shell command in the fenced block right after `<!-- MARKER -->` in the README, as argv.

    The tests run exactly that line (only host paths and the image tag substituted), so the
    documented line is the tested one.
    """
    text = readme.read_text()
    found = re.search(rf"<!-- {re.escape(marker)} -->\s*```sh\n(.*?)```", text, re.S)
    if found is None:
        raise AssertionError(f"{readme.name}: no ```sh block after <!-- {marker} -->")
    return shlex.split(found.group(1).replace("\\\n", " "))


def substitute(argv: list[str], *, image: str, socket: str | None, config_dir: str) -> list[str]:
    """argv after `docker`: the image tag replaced, the socket and /etc/docker mounted from the
    given host paths (socket None: its mount left out, i.e. "socket not mounted")."""
    if argv[:2] != ["docker", "run"]:
        raise AssertionError(f"expected a `docker run` line, got {argv[:2]}")
    out: list[str] = []
    args = iter(argv[1:])
    for arg in args:
        if arg == "--name":
            out += [arg, next(args)]
        elif arg == "-v":
            source, _, target = next(args).partition(":")
            if source == "/var/run/docker.sock":
                if socket is None:
                    continue
                source = socket
            elif source == "/etc/docker":
                source = config_dir
            out += ["-v", f"{source}:{target}"]
        elif arg == "docker-netpolicy-exporter":
            out.append(image)
        else:
            out.append(arg)
    if image not in out:
        raise AssertionError(f"the README line names no image docker-netpolicy-exporter: {argv}")
    return out


def wait_until(condition: Any, what: str, timeout: float) -> Any:
    """Poll condition() until it returns something true; fail with `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {timeout}s; last: {str(last)[-2000:]}")


def session_images(config: Any, tmp_dir: Path) -> BuiltImages:
    """Build once per pytest session (both image and compose modules ask), remove at its end."""
    key = "_dnp_built_images"
    built = getattr(config, key, None)
    if built is None:
        out = tmp_dir / "images"
        out.mkdir(parents=True, exist_ok=True)
        config.add_cleanup(lambda: shutil.rmtree(out, ignore_errors=True))
        built = build_images(out)
        setattr(config, key, built)
    return built


def images_for_tests(request: Any, tmp_path_factory: Any) -> BuiltImages:
    """Shared by the modules' session fixtures: build once, or fail (never skip, as every lab)."""
    assert os.geteuid() == 0, "needs root: builds images with a private dockerd, runs a lab daemon"
    built = session_images(request.config, tmp_path_factory.getbasetemp())
    timings = request.getfixturevalue("lab_timing_log")
    line = f"images built (exporter {built.size_bytes / 1e6:.0f} MB): {built.timings}"
    if line not in timings:
        timings.append(line)
    return built
