"""TLS, client certificates and basic auth on a real server, with real clients (ssl, http.client).

Certificates are made per test session with the `openssl` command line: a CA, a server
certificate for 127.0.0.1 (SAN IP), a client certificate of that CA, and a client certificate of
another CA.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
from prometheus_client import CollectorRegistry

from exporter.config import ListenAddress
from exporter.http import make_app, make_server
from exporter.latest import Latest
from exporter.webconfig import WebConfigFile

PASSWORD = "s3cret"
# Cost 4, the lowest: the tests count bcrypt calls, they need not pay for them.
ALICE_HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    client_cert: Path
    client_key: Path
    other_client_cert: Path
    other_client_key: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


def _ca(directory: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip


def _leaf(directory: Path, name: str, ca: str, extensions: str) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    (directory / f"{name}.ext").write_text(
        f"basicConstraints=critical,CA:FALSE\n"
        f"authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n{extensions}\n"
    )
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
        cwd=directory,
    )  # fmt: skip


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1, a client certificate; another CA and client."""
    directory.mkdir(parents=True, exist_ok=True)
    _ca(directory, "ca")
    _ca(directory, "other-ca")
    _leaf(directory, "server", "ca", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth")
    _leaf(directory, "client", "ca", "extendedKeyUsage=clientAuth")
    _leaf(directory, "other-client", "other-ca", "extendedKeyUsage=clientAuth")
    return Pki(
        dir=directory,
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        other_client_cert=directory / "other-client.crt",
        other_client_key=directory / "other-client.key",
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def write_config(pki: Pki, text: str, name: str = "web.yml") -> Path:
    path = pki.dir / name
    path.write_text(text)
    return path


TLS_ONLY = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
TLS_AND_AUTH = TLS_ONLY + f"basic_auth_users:\n  alice: '{ALICE_HASH}'\n"


@pytest.fixture
def serve_tls():
    servers = []

    def start(config_path: Path, **server_options) -> tuple[int, WebConfigFile]:
        web_config = WebConfigFile(config_path, check_every=0.0)
        app = make_app(CollectorRegistry(), latest=Latest(), health=lambda: (True, "ok"))
        server = make_server(
            ListenAddress("127.0.0.1", 0), app, web_config=web_config, **server_options
        )
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        servers.append(server)
        return int(server.server_address[1]), web_config

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def client_context(pki: Pki, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def https_get(
    port: int, context: ssl.SSLContext, path: str = "/metrics", headers: dict | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_tls_and_basic_auth(serve_tls, pki):
    port, _ = serve_tls(write_config(pki, TLS_AND_AUTH))
    context = client_context(pki)
    assert https_get(port, context, headers=basic("alice", PASSWORD))[0] == 200

    for path in ("/", "/metrics", "/healthz", "/nope"):
        status, headers, _ = https_get(port, context, path)
        assert status == 401, path
        assert headers["WWW-Authenticate"] == 'Basic realm="docker-netpolicy-exporter"'
    for user, password in (("alice", "wrong"), ("bob", PASSWORD), ("alice", "")):
        status, headers, _ = https_get(port, context, headers=basic(user, password))
        assert status == 401 and "WWW-Authenticate" in headers, (user, password)
    status, _, _ = https_get(port, context, headers={"Authorization": "Basic !!notbase64"})
    assert status == 401
    assert https_get(port, context, "/healthz", basic("alice", PASSWORD))[:1] == (200,)


def test_plain_http_to_the_tls_port_is_refused(serve_tls, pki):
    port, _ = serve_tls(write_config(pki, TLS_ONLY))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    # The handshake fails on the plain request and the connection is closed, no HTTP reply.
    assert not received.startswith(b"HTTP/")
    # TLS clients are still served.
    assert https_get(port, client_context(pki))[0] == 200


def test_silent_tls_client_is_cut_at_the_header_deadline(serve_tls, pki):
    port, _ = serve_tls(write_config(pki, TLS_ONLY), read_header_timeout=0.5)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as silent:
        started = time.monotonic()
        # Others are served while the silent client holds its connection.
        assert https_get(port, client_context(pki))[0] == 200
        assert silent.recv(1) == b""
        assert time.monotonic() - started < 3


MTLS = (
    "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
    "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
)


def _handshake_fails(port: int, context: ssl.SSLContext) -> bool:
    try:
        https_get(port, context)
    except (ssl.SSLError, ConnectionError):
        return True
    return False


def test_required_client_certificate(serve_tls, pki):
    port, _ = serve_tls(write_config(pki, MTLS))
    assert https_get(port, client_context(pki, pki.client_cert, pki.client_key))[0] == 200
    # TLS 1.3: the server's refusal arrives on the client's first read, as an SSLError.
    assert _handshake_fails(port, client_context(pki))
    assert _handshake_fails(port, client_context(pki, pki.other_client_cert, pki.other_client_key))


def test_client_certificate_verified_if_given(serve_tls, pki):
    text = MTLS.replace("RequireAndVerifyClientCert", "VerifyClientCertIfGiven")
    port, _ = serve_tls(write_config(pki, text))
    assert https_get(port, client_context(pki))[0] == 200
    assert https_get(port, client_context(pki, pki.client_cert, pki.client_key))[0] == 200
    assert _handshake_fails(port, client_context(pki, pki.other_client_cert, pki.other_client_key))


def test_max_version_is_enforced(serve_tls, pki):
    port, _ = serve_tls(write_config(pki, TLS_ONLY + "  max_version: TLS12\n"))
    context = client_context(pki)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    assert _handshake_fails(port, context)
    conn = client_context(pki).wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="127.0.0.1"
    )
    with conn:
        assert conn.version() == "TLSv1.2"


def test_extra_headers_on_every_response(serve_tls, pki):
    text = TLS_AND_AUTH + "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
    port, _ = serve_tls(write_config(pki, text))
    context = client_context(pki)
    assert https_get(port, context)[1]["X-Frame-Options"] == "deny"  # the 401 too
    assert https_get(port, context, "/", basic("alice", PASSWORD))[1]["X-Frame-Options"] == "deny"


def test_second_scrape_does_not_call_bcrypt(serve_tls, pki, monkeypatch):
    calls = []
    real_checkpw = bcrypt.checkpw

    def counting_checkpw(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real_checkpw(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting_checkpw)
    port, _ = serve_tls(write_config(pki, TLS_AND_AUTH))
    context = client_context(pki)
    assert https_get(port, context, headers=basic("alice", PASSWORD))[0] == 200
    assert len(calls) == 1
    for _ in range(3):
        assert https_get(port, context, headers=basic("alice", PASSWORD))[0] == 200
    assert len(calls) == 1
    # A wrong password is never served from the cache, and a wrong user costs a bcrypt too.
    assert https_get(port, context, headers=basic("alice", "nope"))[0] == 401
    assert https_get(port, context, headers=basic("mallory", PASSWORD))[0] == 401
    assert len(calls) == 3


def test_config_change_is_picked_up_without_restart(serve_tls, pki, caplog):
    path = write_config(pki, TLS_ONLY, name="reload.yml")
    port, _ = serve_tls(path)
    context = client_context(pki)
    assert https_get(port, context)[0] == 200

    path.write_text(TLS_AND_AUTH + "# grown\n")
    assert https_get(port, context)[0] == 401
    assert https_get(port, context, headers=basic("alice", PASSWORD))[0] == 200

    # Broken: the last good configuration stays, one error line for the change.
    path.write_text(TLS_AND_AUTH + "  bob: plaintext\n")
    for _ in range(3):
        assert https_get(port, context)[0] == 401
        assert https_get(port, context, headers=basic("alice", PASSWORD))[0] == 200
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "not a bcrypt hash" in errors[0].getMessage()

    # Turning TLS off needs a restart: refused, TLS and auth stay.
    path.write_text("basic_auth_users: {}\n")
    assert https_get(port, context)[0] == 401

    path.write_text(TLS_ONLY + "# shrunk again\n")
    assert https_get(port, context)[0] == 200


def test_basic_auth_without_tls(pki):
    """An empty TLS section is plain HTTP (as exporter-toolkit); basic auth still applies."""
    path = write_config(pki, f"tls_server_config: {{}}\nbasic_auth_users:\n  alice: {ALICE_HASH}\n")
    web_config = WebConfigFile(path)
    assert not web_config.tls_enabled
    app = make_app(CollectorRegistry(), latest=Latest(), health=lambda: (True, "ok"))
    server = make_server(ListenAddress("127.0.0.1", 0), app, web_config=web_config)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
        conn.request("GET", "/healthz", headers=basic("alice", PASSWORD))
        assert conn.getresponse().status == 200
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 401
        conn.close()
    finally:
        server.shutdown()
        server.server_close()
