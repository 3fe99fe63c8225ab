"""The web configuration file: what is accepted, what is refused (one line, exit 2 from serve),
and how a change is picked up."""

from __future__ import annotations

import io
import logging
import os
import ssl
from pathlib import Path

import bcrypt
import pytest
import yaml

from exporter.cli import main
from exporter.webconfig import WebConfigError, WebConfigFile, load_web_config, parse_web_config
from tests.unit.test_http_tls import ALICE_HASH, Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


TLS = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"


def write(directory: Path, text: str, name: str = "web.yml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def test_full_config_relative_to_its_folder(pki):
    text = (
        TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
        "  min_version: TLS13\n"
        "http_server_config:\n  http2: false\n  headers:\n    X-Content-Type-Options: nosniff\n"
        f"basic_auth_users:\n  alice: {ALICE_HASH}\n"
    )
    loaded = load_web_config(write(pki.dir, text))
    tls = loaded.config.tls
    assert tls is not None and tls.cert_file == pki.server_cert and tls.client_ca_file == pki.ca
    assert loaded.config.headers == (("X-Content-Type-Options", "nosniff"),)
    assert loaded.config.users == {"alice": ALICE_HASH.encode()}
    context = loaded.ssl_context
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3


def test_empty_file_and_empty_tls_section_mean_plain_http(tmp_path):
    for text in ("", "tls_server_config: {}\n", "tls_server_config:\nbasic_auth_users:\n"):
        loaded = load_web_config(write(tmp_path, text))
        assert loaded.ssl_context is None and loaded.config.users is None


def test_default_min_version_is_tls12(pki):
    context = load_web_config(write(pki.dir, TLS)).ssl_context
    assert context is not None and context.minimum_version == ssl.TLSVersion.TLSv1_2


BAD_FILES = {
    "yaml": ("tls_server_config: [unclosed\n", "web config file"),
    "not a mapping": ("- a\n- b\n", "the file must be a mapping"),
    "unknown top key": ("tls_config: {}\n", "unknown key 'tls_config' in the file"),
    "unknown tls key": (TLS + "  certfile: x\n", "unknown key 'certfile' in tls_server_config"),
    "unsupported key": ("rate_limit: {burst: 1}\n", "rate_limit in the file is not supported"),
    "missing cert": (
        "tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n",
        "nope.crt: no such file",
    ),
    "missing key": (
        "tls_server_config:\n  cert_file: server.crt\n",
        "tls_server_config.key_file is missing",
    ),
    "missing ca": (
        TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: none.crt\n",
        "none.crt: no such file",
    ),
    "key mismatch": (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: client.key\n",
        "does not match cert_file",
    ),
    "not a certificate": (
        "tls_server_config:\n  cert_file: web.yml\n  key_file: server.key\n",
        "cannot load cert_file",
    ),
    "plain password": ("basic_auth_users:\n  alice: hunter2\n", "is not a bcrypt hash"),
    "bad client auth": (TLS + "  client_auth_type: Sometimes\n", "invalid client_auth_type"),
    "require any": (
        TLS + "  client_auth_type: RequireAnyClientCert\n",
        "RequireAnyClientCert is not supported",
    ),
    "verify without ca": (
        TLS + "  client_auth_type: VerifyClientCertIfGiven\n",
        "needs client_ca_file",
    ),
    "ca without verify": (TLS + "  client_ca_file: ca.crt\n", "verifies no client certificate"),
    "bad version": (TLS + "  min_version: TLS14\n", "invalid min_version 'TLS14'"),
    "max below min": (TLS + "  max_version: TLS11\n", "max_version TLS11 is below min_version"),
    "header not allowed": (
        "http_server_config:\n  headers:\n    Set-Cookie: a\n",
        "unknown key 'Set-Cookie' in http_server_config.headers",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_is_one_line(pki, case):
    text, expected = BAD_FILES[case]
    with pytest.raises(WebConfigError) as info:
        load_web_config(write(pki.dir, text))
    message = str(info.value)
    assert expected in message and "\n" not in message


def test_unreadable_file(tmp_path):
    with pytest.raises(WebConfigError, match="cannot read web config file .*missing.yml"):
        load_web_config(tmp_path / "missing.yml")
    (tmp_path / "binary.yml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(WebConfigError, match="cannot read web config file .*binary.yml"):
        load_web_config(tmp_path / "binary.yml")
    with pytest.raises(WebConfigError, match="nested too deeply"):
        load_web_config(write(tmp_path, "[" * 100000 + "]" * 100000))


class FakeRun:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, check_config, files):
        self.calls += 1
        raise AssertionError("serve must fail before any check")


@pytest.mark.parametrize("case", ["yaml", "missing cert", "key mismatch", "plain password"])
def test_serve_with_a_bad_file_exits_2_with_one_line(pki, case):
    text, expected = BAD_FILES[case]
    path = write(pki.dir, text, name=f"cli-{case.replace(' ', '-')}.yml")
    run = FakeRun()
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["--web.listen-address", "127.0.0.1:0", "--web.config.file", str(path)],
        run_check_factory=lambda cfg: run,
        env={},
        stdout=out,
        stderr=err,
    )
    assert code == 2 and run.calls == 0
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and "level=error" in lines[0] and expected in lines[0]
    assert "Traceback" not in err.getvalue()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def touch_later(path: Path, text: str) -> None:
    """Write `text` with an mtime clearly after the previous one (coarse file systems)."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


def test_reload_at_most_once_a_second_and_keeps_the_last_good(tmp_path, caplog):
    path = write(tmp_path, "basic_auth_users:\n")
    clock = Clock()
    web_config = WebConfigFile(path, clock=clock)
    assert web_config.current_config().users is None

    touch_later(path, f"basic_auth_users:\n  alice: {ALICE_HASH}\n")
    clock.now = 0.5
    assert web_config.current_config().users is None  # not looked at yet
    clock.now = 1.0
    assert web_config.current_config().users == {"alice": ALICE_HASH.encode()}

    touch_later(path, "basic_auth_users:\n  alice: plain\n")
    for step in range(2, 6):
        clock.now = float(step)
        assert web_config.current_config().users == {"alice": ALICE_HASH.encode()}
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "keeping the previous web configuration" in errors[0].getMessage()

    touch_later(path, "basic_auth_users:\n  alice: still plain\n")
    clock.now = 10.0
    web_config.current_config()
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2  # one per change


def test_a_renewed_certificate_is_picked_up(pki, tmp_path):
    for name in ("server.crt", "server.key", "client.crt", "client.key"):
        (tmp_path / name).write_bytes((pki.dir / name).read_bytes())
    path = write(tmp_path, TLS)
    clock = Clock()
    web_config = WebConfigFile(path, clock=clock)
    first = web_config.ssl_context()

    # The certificate file changes, the config file does not.
    touch_later(tmp_path / "server.crt", (pki.dir / "client.crt").read_text())
    touch_later(tmp_path / "server.key", (pki.dir / "client.key").read_text())
    clock.now = 1.0
    assert web_config.ssl_context() is not first


def test_the_deploy_example_is_valid():
    example = Path(__file__).resolve().parents[2] / "deploy" / "web-config.example.yml"
    config = parse_web_config(yaml.safe_load(example.read_text()), example.parent)
    assert config.tls is not None and config.tls.client_auth_type == "RequireAndVerifyClientCert"
    assert config.tls.cert_file == example.parent / "server.crt"
    assert config.users is not None
    assert bcrypt.checkpw(b"change-me", config.users["prometheus"])
