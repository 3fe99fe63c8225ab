"""`--web.config.file`: TLS and basic auth in exporter-toolkit's web configuration format.

The file every Prometheus exporter shares (exporter-toolkit docs/web-configuration.md):

    tls_server_config: {cert_file, key_file, client_auth_type, client_ca_file,
                        min_version, max_version}
    http_server_config: {headers: {...}, http2}
    basic_auth_users: {user: bcrypt hash}

Strict like exporter-toolkit: an unknown key is an error, and so is a key of that format this
exporter does not implement (inline `cert`/`key`, `cipher_suites`, `rate_limit`, ...), because
ignoring it would run with less protection than the operator wrote. Relative paths are relative to
the file's folder. `load_web_config` raises WebConfigError with one line fit for the user.

`WebConfigFile` holds the last good configuration and re-reads the file (and the certificate, key
and CA files it names, so a renewed certificate is picked up too) when their inode, mtime or size
changed, looking at most once a second, on a request. A file that became invalid keeps the last
good configuration and logs one error per change. Whether TLS is on is fixed at start: a reload
that turns it on or off is refused (the scheme of the port is not something to flip under the
scrapers' feet).

`protect` wraps a WSGI app: extra response headers, and basic auth on every path (as
exporter-toolkit does). bcrypt is slow by design (~50 ms at cost 10 here), so each user's last
verified password is remembered as a SHA-256 of (user, password, hash), compared with
hmac.compare_digest: a scrape with known credentials costs one hash, not a bcrypt. The cache
holds one entry per configured user, so it is bounded by the file; a changed hash no longer
matches its entry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import yaml

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

REALM = "docker-netpolicy-exporter"
# How often, at most, a request makes us stat the files for a change.
RELOAD_CHECK_SECONDS = 1.0

TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# RequestClientCert asks for a certificate and never verifies or uses it: not asking gives the
# same access. RequireAnyClientCert (require one, verify nothing) has no equivalent in Python's
# ssl, so it is refused rather than approximated.
CLIENT_AUTH_MODES: dict[str, ssl.VerifyMode | None] = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_NONE,
    "RequireAnyClientCert": None,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# exporter-toolkit allows only these response headers.
ALLOWED_HEADERS = (
    "Content-Security-Policy",
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
)
TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
TLS_KEYS = (
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
)
HTTP_KEYS = ("headers", "http2")
# Keys of exporter-toolkit's format this exporter does not implement.
UNSUPPORTED_KEYS = frozenset(
    {
        "rate_limit",
        "cert",
        "key",
        "client_ca",
        "client_allowed_sans",
        "cipher_suites",
        "curve_preferences",
        "prefer_server_cipher_suites",
    }
)
# $2a$/$2b$/$2y$ (and the old $2$), a two-digit cost, 22 characters of salt and 31 of hash.
BCRYPT_HASH = re.compile(r"\$2[abxy]?\$\d\d\$[./A-Za-z0-9]{53}")


class WebConfigError(Exception):
    """The web configuration file is unusable (message is one line, fit for the user)."""


@dataclass(frozen=True)
class TLSSettings:
    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: str = "TLS12"
    max_version: str | None = None

    def files(self) -> tuple[Path, ...]:
        ca = (self.client_ca_file,) if self.client_ca_file else ()
        return (self.cert_file, self.key_file, *ca)


@dataclass(frozen=True)
class WebConfig:
    tls: TLSSettings | None = None
    headers: tuple[tuple[str, str], ...] = ()
    # user -> bcrypt hash
    users: Mapping[str, bytes] | None = None


@dataclass(frozen=True)
class LoadedWebConfig:
    """A valid configuration with its SSL context built (None without TLS)."""

    config: WebConfig
    ssl_context: ssl.SSLContext | None


def load_web_config(path: str | os.PathLike[str]) -> LoadedWebConfig:
    """Read, validate and build the configuration; WebConfigError when anything is wrong."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WebConfigError(f"cannot read web config file {file}: {_reason(exc)}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise WebConfigError(f"web config file {file}: {problem}{at}") from None
    except RecursionError:  # PyYAML recurses per nesting level
        raise WebConfigError(f"web config file {file}: nested too deeply") from None
    try:
        config = parse_web_config(data, file.parent)
        return LoadedWebConfig(config, build_ssl_context(config.tls) if config.tls else None)
    except WebConfigError as exc:
        raise WebConfigError(f"web config file {file}: {exc}") from None


def parse_web_config(data: Any, base: Path) -> WebConfig:
    """The checked WebConfig of a parsed YAML document; relative paths are taken from `base`."""
    top = _mapping(data, "the file", TOP_KEYS)
    return WebConfig(
        tls=_tls_settings(top.get("tls_server_config"), base),
        headers=_headers(top.get("http_server_config")),
        users=_users(top.get("basic_auth_users")),
    )


def _tls_settings(data: Any, base: Path) -> TLSSettings | None:
    tls = _mapping(data, "tls_server_config", TLS_KEYS)
    values = {key: _string(tls.get(key), f"tls_server_config.{key}") for key in TLS_KEYS}
    if not any(values.values()):
        return None  # as exporter-toolkit: an empty TLS section means plain HTTP
    if not values["cert_file"]:
        raise WebConfigError("tls_server_config.cert_file is missing")
    if not values["key_file"]:
        raise WebConfigError("tls_server_config.key_file is missing")
    auth = values["client_auth_type"] or "NoClientCert"
    if auth not in CLIENT_AUTH_MODES:
        raise WebConfigError(
            f"invalid client_auth_type {auth!r} (use one of {', '.join(CLIENT_AUTH_MODES)})"
        )
    if CLIENT_AUTH_MODES[auth] is None:
        raise WebConfigError(
            f"client_auth_type {auth} is not supported (it accepts any certificate unverified);"
            " use RequireAndVerifyClientCert"
        )
    verifies = CLIENT_AUTH_MODES[auth] != ssl.CERT_NONE
    if verifies and not values["client_ca_file"]:
        raise WebConfigError(f"client_auth_type {auth} needs client_ca_file")
    if values["client_ca_file"] and not verifies:
        raise WebConfigError(
            f"client_ca_file is set but client_auth_type {auth} verifies no client certificate"
        )
    for key in ("min_version", "max_version"):
        if values[key] and values[key] not in TLS_VERSIONS:
            raise WebConfigError(
                f"invalid {key} {values[key]!r} (use one of {', '.join(TLS_VERSIONS)})"
            )
    settings = TLSSettings(
        cert_file=base / values["cert_file"],
        key_file=base / values["key_file"],
        client_auth_type=auth,
        client_ca_file=base / values["client_ca_file"] if values["client_ca_file"] else None,
        min_version=values["min_version"] or "TLS12",
        max_version=values["max_version"] or None,
    )
    if settings.max_version and (
        TLS_VERSIONS[settings.max_version] < TLS_VERSIONS[settings.min_version]
    ):
        raise WebConfigError(
            f"max_version {settings.max_version} is below min_version {settings.min_version}"
        )
    return settings


def _headers(data: Any) -> tuple[tuple[str, str], ...]:
    section = _mapping(data, "http_server_config", HTTP_KEYS)
    if section.get("http2") not in (None, True, False):
        raise WebConfigError("http_server_config.http2 must be true or false")
    headers = _mapping(section.get("headers"), "http_server_config.headers", ALLOWED_HEADERS)
    result = []
    for name, value in headers.items():
        text = _string(value, f"header {name}")
        if not text or "\n" in text or "\r" in text:
            raise WebConfigError(f"header {name} must be a non-empty single-line string")
        result.append((name, text))
    return tuple(result)


def _users(data: Any) -> Mapping[str, bytes] | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise WebConfigError("basic_auth_users must be a mapping of user to bcrypt hash")
    users = {}
    for user, hashed in data.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise WebConfigError(f"invalid user name {user!r} in basic_auth_users")
        if not isinstance(hashed, str) or not BCRYPT_HASH.fullmatch(hashed):
            raise WebConfigError(
                f"the password of user {user!r} is not a bcrypt hash (plain-text passwords are"
                " refused; hash it, e.g. htpasswd -nBC 10 USER)"
            )
        users[user] = hashed.encode("ascii")
    return users or None


def _mapping(data: Any, where: str, allowed: Iterable[str]) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise WebConfigError(f"{where} must be a mapping")
    allowed = tuple(allowed)
    for key in data:
        if key in UNSUPPORTED_KEYS:
            raise WebConfigError(f"{key} in {where} is not supported by this exporter")
        if key not in allowed:
            raise WebConfigError(f"unknown key {key!r} in {where} (known: {', '.join(allowed)})")
    return data


def _string(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise WebConfigError(f"{where} must be a string")
    return value


def build_ssl_context(tls: TLSSettings) -> ssl.SSLContext:
    """A server context for these settings; WebConfigError when a file is missing or wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.minimum_version = TLS_VERSIONS[tls.min_version]
        if tls.max_version:
            context.maximum_version = TLS_VERSIONS[tls.max_version]
    except (ValueError, ssl.SSLError) as exc:
        raise WebConfigError(f"TLS version range not available here: {_reason(exc)}") from None
    for path in tls.files():
        if not path.is_file():
            raise WebConfigError(f"cannot read {path}: no such file")
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            reason = f"key_file {tls.key_file} does not match cert_file {tls.cert_file}"
        else:
            reason = f"cannot load cert_file {tls.cert_file} / key_file {tls.key_file}"
        raise WebConfigError(f"{reason}: {_reason(exc)}") from None
    except OSError as exc:
        raise WebConfigError(f"cannot read {tls.cert_file}: {_reason(exc)}") from None
    context.verify_mode = CLIENT_AUTH_MODES[tls.client_auth_type] or ssl.CERT_NONE
    if tls.client_ca_file:
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise WebConfigError(
                f"cannot load client_ca_file {tls.client_ca_file}: {_reason(exc)}"
            ) from None
    return context


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
    return " ".join(str(text).split())


Signature = tuple[tuple[str, int, int, int], ...]


class WebConfigFile:
    """The last good configuration of one file, re-read when it (or a file it names) changes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        check_every: float = RELOAD_CHECK_SECONDS,
    ) -> None:
        """Load the file; WebConfigError (one line) when it is unusable."""
        self.path = Path(path)
        self._clock = clock
        self._check_every = check_every
        self._lock = threading.Lock()
        self._loaded = load_web_config(self.path)
        self._signature = self._stat(self._loaded.config)
        self._next_check = clock() + check_every

    @property
    def tls_enabled(self) -> bool:
        return self._loaded.ssl_context is not None

    def current(self) -> LoadedWebConfig:
        """The configuration to serve this request with (re-read if a file changed)."""
        with self._lock:
            now = self._clock()
            if now >= self._next_check:
                self._next_check = now + self._check_every
                self._reload_if_changed()
            return self._loaded

    def current_config(self) -> WebConfig:
        return self.current().config

    def ssl_context(self) -> ssl.SSLContext:
        context = self.current().ssl_context
        if context is None:  # tls_enabled is fixed at start; callers ask only when it is on
            raise RuntimeError("TLS is not configured")
        return context

    def _reload_if_changed(self) -> None:
        signature = self._stat(self._loaded.config)
        if signature == self._signature:
            return
        # Remember the new signature even when the load fails: one error line per change.
        self._signature = signature
        try:
            loaded = load_web_config(self.path)
            if (loaded.ssl_context is None) != (self._loaded.ssl_context is None):
                raise WebConfigError(
                    f"web config file {self.path}: turning TLS on or off needs a restart"
                )
        except WebConfigError as exc:
            log.error("%s; keeping the previous web configuration", exc)
            return
        # The files the new configuration names are the ones to watch from now on.
        self._signature = self._stat(loaded.config)
        self._loaded = loaded
        log.info("web config file reloaded", extra={"file": str(self.path)})

    def _stat(self, config: WebConfig) -> Signature:
        files = (self.path, *(config.tls.files() if config.tls else ()))
        signature = []
        for path in files:
            try:
                info = path.stat()
                signature.append((str(path), info.st_ino, info.st_mtime_ns, info.st_size))
            except OSError:
                signature.append((str(path), -1, -1, -1))
        return tuple(signature)


class PasswordCache:
    """Each user's last verified (user, password, hash) as a SHA-256; one entry per user."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._verified: dict[str, bytes] = {}

    def check(self, users: Mapping[str, bytes], user: str, password: bytes) -> bool:
        hashed = users.get(user)
        if hashed is None:
            # Spend a bcrypt all the same, so a wrong user takes as long as a wrong password.
            bcrypt.checkpw(password, next(iter(users.values())))
            return False
        digest = hashlib.sha256(b"\0".join((user.encode("utf-8"), password, hashed))).digest()
        with self._lock:
            known = self._verified.get(user)
        if known is not None and hmac.compare_digest(known, digest):
            return True
        if not bcrypt.checkpw(password, hashed):
            return False
        with self._lock:
            self._verified[user] = digest
        return True


def protect(app: WSGIApp, config: Callable[[], WebConfig]) -> WSGIApp:
    """`app` behind the configuration's basic auth (every path) and extra headers."""
    cache = PasswordCache()

    def protected(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        current = config()

        def start_with_headers(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            return start_response(status, list(headers) + list(current.headers), *exc)

        if current.users and not _authorized(environ, current.users, cache):
            body = b"unauthorized\n"
            start_with_headers(
                "401 Unauthorized",
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(body))),
                    ("WWW-Authenticate", f'Basic realm="{REALM}"'),
                ],
            )
            return [body]
        return app(environ, start_with_headers)

    return protected


def _authorized(environ: dict[str, Any], users: Mapping[str, bytes], cache: PasswordCache) -> bool:
    scheme, _, encoded = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
        user_bytes, sep, password = decoded.partition(b":")
        user = user_bytes.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return bool(sep) and cache.check(users, user, password)
