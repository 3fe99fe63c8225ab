"""Docker's view: bridge networks, running containers, their exposed ports, addresses and links.

fetch() makes only GET requests:

- GET /version              -> docker-version.json
- GET /networks             -> docker-networks.json
- GET /containers/json      -> docker-containers.json (running containers only, as `docker ps`)
- GET /containers/ID/json   -> docker-inspect.json (a JSON array, one reply per listed container)

Inspect replies are cached by container id: a container's name, exposed ports and links are fixed
for its life, so a steady host costs one list call (+ networks + version) per check. The cache is
checked against the list reply, which is fetched anew every time: an entry is dropped when its
container is gone, and refreshed when the container was renamed or when the link names the list
shows for it ("/PARENT/ALIAS" among a child's Names) no longer match its cached HostConfig.Links
(a child renamed or removed changes them). A container's addresses are NOT fixed across restarts,
so parse() takes them from the list reply only, never from the (possibly old) inspect reply.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any

from exporter.model import Container, DockerState, Endpoint, ExposedPort, Link, Network
from exporter.sources.base import SourceError, parse_go_bool, require

VERSION_FILE = "docker-version.json"
NETWORKS_FILE = "docker-networks.json"
CONTAINERS_FILE = "docker-containers.json"
INSPECT_FILE = "docker-inspect.json"

DEFAULT_HOST = "unix:///var/run/docker.sock"

_OPT_BRIDGE_NAME = "com.docker.network.bridge.name"
_OPT_ICC = "com.docker.network.bridge.enable_icc"
_OPT_DEFAULT_BRIDGE = "com.docker.network.bridge.default_bridge"
_PROTOCOLS = ("tcp", "udp", "sctp")


class DockerSource:
    """Reads Docker through its API (docker SDK, low-level APIClient).

    base_url None honours DOCKER_HOST (and DOCKER_TLS_VERIFY / DOCKER_CERT_PATH) like the docker
    CLI, else the default socket. `client` replaces the APIClient (tests pass a fake).
    """

    name = "docker"

    def __init__(self, base_url: str | None, timeout: float, *, client: Any = None) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._client = client
        self._cache: dict[str, dict[str, Any]] = {}
        self._inspect_calls = 0
        self._lock = threading.Lock()

    # -- fetch ----------------------------------------------------------------------------------

    def last_inspect_calls(self) -> int:
        """How many containers the last fetch() inspected (the others came from the cache)."""
        return self._inspect_calls

    def _host(self) -> str:
        if self.base_url:
            return self.base_url
        from docker.utils import kwargs_from_env

        return kwargs_from_env().get("base_url") or DEFAULT_HOST

    def _connect(self) -> Any:
        if self._client is None:
            import docker
            from docker.utils import kwargs_from_env

            kwargs: dict[str, Any] = {} if self.base_url else kwargs_from_env()
            if self.base_url:
                kwargs["base_url"] = self.base_url
            try:
                # version="auto" asks the daemon (GET /version) for the API version to speak.
                self._client = docker.APIClient(version="auto", timeout=self.timeout, **kwargs)
            except Exception as error:  # noqa: BLE001 - the SDK raises many kinds
                raise self._error("GET /version", error) from None
        return self._client

    def _error(self, what: str, error: BaseException) -> SourceError:
        return SourceError(describe_error(self._host(), what, error, self.timeout))

    def _call(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except Exception as error:  # noqa: BLE001
            if _is_not_found(error):
                raise
            raise self._error(what, error) from None

    def fetch(self) -> dict[str, str]:
        with self._lock:
            return self._fetch()

    def _fetch(self) -> dict[str, str]:
        client = self._connect()
        version = self._call("GET /version", client.version)
        networks = self._call("GET /networks", client.networks)
        listed = self._call("GET /containers/json", client.containers, all=False)
        if not isinstance(listed, list) or not isinstance(networks, list):
            raise SourceError("docker: unexpected reply to GET /containers/json or GET /networks")

        running = {c["Id"]: c for c in listed}
        for gone in set(self._cache) - set(running):
            del self._cache[gone]

        primary_names = {cid: _primary_name(c.get("Names") or []) for cid, c in running.items()}
        list_links = _links_from_list(listed, primary_names)
        inspected: list[dict[str, Any]] = []
        kept: list[dict[str, Any]] = []
        self._inspect_calls = 0
        for entry in listed:
            cid = entry["Id"]
            reply = self._cache.get(cid)
            if reply is not None and not _cache_valid(
                reply, primary_names[cid], list_links.get(primary_names[cid], set()), primary_names
            ):
                reply = None
            if reply is None:
                self._inspect_calls += 1
                try:
                    reply = self._call(
                        f"GET /containers/{cid[:12]}/json", client.inspect_container, cid
                    )
                except Exception as error:  # noqa: BLE001
                    if _is_not_found(error):
                        continue  # removed between the list and the inspect: not running
                    raise
                self._cache[cid] = reply
            inspected.append(reply)
            kept.append(entry)
        return {
            VERSION_FILE: _dump(version),
            NETWORKS_FILE: _dump(networks),
            CONTAINERS_FILE: _dump(kept),
            INSPECT_FILE: _dump(inspected),
        }

    # -- parse ----------------------------------------------------------------------------------

    def parse(self, files: Mapping[str, str]) -> DockerState:
        return parse_docker(files)


def parse_docker(files: Mapping[str, str]) -> DockerState:
    version = _load(files, VERSION_FILE, dict)
    networks_reply = _load(files, NETWORKS_FILE, list)
    listed = _load(files, CONTAINERS_FILE, list)
    inspected = _load(files, INSPECT_FILE, list)
    try:
        networks = tuple(_network(n) for n in networks_reply if n.get("Driver") == "bridge")
        by_id = {n.id: n for n in networks}
        by_name = {n.name: n for n in networks}
        replies = {r["Id"]: r for r in inspected}
        names: dict[str, str] = {}
        for entry in listed:
            reply = replies.get(entry["Id"])
            if reply is None:
                raise SourceError(
                    f"docker: {INSPECT_FILE} has no reply for container {entry['Id'][:12]}"
                )
            names[reply["Name"].lstrip("/")] = entry["Id"]
        containers = tuple(
            _container(entry, replies[entry["Id"]], by_id, by_name, names) for entry in listed
        )
    except SourceError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        kind = type(error).__name__
        raise SourceError(f"docker: unexpected API reply: {kind}: {error}") from None
    return DockerState(
        version=str(version.get("Version", "")),
        api_version=str(version.get("ApiVersion", "")),
        networks=networks,
        containers=containers,
    )


def _network(reply: Mapping[str, Any]) -> Network:
    options = reply.get("Options") or {}
    net_id = reply["Id"]
    icc = True  # Docker's default when the option is absent
    if _OPT_ICC in options:
        parsed = parse_go_bool(str(options[_OPT_ICC]))
        if parsed is None:
            raise SourceError(
                f"docker: network {reply.get('Name')} has {_OPT_ICC}={options[_OPT_ICC]!r}"
            )
        icc = parsed
    subnets = tuple(
        ip_network(c["Subnet"], strict=False)
        for c in ((reply.get("IPAM") or {}).get("Config") or [])
        if c.get("Subnet")
    )
    return Network(
        id=net_id,
        name=reply["Name"],
        bridge=options.get(_OPT_BRIDGE_NAME) or "br-" + net_id[:12],
        icc=icc,
        internal=bool(reply.get("Internal")),
        default_bridge=parse_go_bool(str(options.get(_OPT_DEFAULT_BRIDGE, ""))) is True,
        subnets=subnets,
        enable_ipv6=bool(reply.get("EnableIPv6")),
    )


def _container(
    entry: Mapping[str, Any],
    reply: Mapping[str, Any],
    by_id: Mapping[str, Network],
    by_name: Mapping[str, Network],
    names: Mapping[str, str],
) -> Container:
    cid = entry["Id"]
    config = reply.get("Config") or {}
    exposed = tuple(
        sorted(
            (_exposed(key) for key in (config.get("ExposedPorts") or {})),
            key=lambda p: (p.protocol, p.port),
        )
    )
    endpoints: list[Endpoint] = []
    attached = ((entry.get("NetworkSettings") or {}).get("Networks")) or {}
    for net_name, settings in attached.items():
        network = by_id.get(settings.get("NetworkID") or "") or by_name.get(net_name)
        if network is None:
            continue  # not a bridge network
        endpoints.append(
            Endpoint(
                network_id=network.id,
                ipv4=_address(settings.get("IPAddress"), IPv4Address),
                ipv6=_address(settings.get("GlobalIPv6Address"), IPv6Address),
            )
        )
    links: list[Link] = []
    for text in (reply.get("HostConfig") or {}).get("Links") or []:
        child, alias = _link(text)
        child_id = names.get(child)
        if child_id is None:
            continue  # the child is not running: Docker has no rules for this link now
        links.append(Link(parent_id=cid, child_id=child_id, alias=alias))
    return Container(
        id=cid,
        name=reply["Name"].lstrip("/"),
        exposed=exposed,
        endpoints=tuple(endpoints),
        links=tuple(links),
    )


def _exposed(key: str) -> ExposedPort:
    port, _, protocol = key.partition("/")
    protocol = protocol or "tcp"
    if protocol not in _PROTOCOLS or not port.isdigit():
        raise SourceError(f"docker: cannot read exposed port {key!r}")
    return ExposedPort(int(port), protocol)  # type: ignore[arg-type]


def _address(text: str | None, kind: type) -> Any:
    if not text:
        return None
    address = ip_address(text)
    if not isinstance(address, kind):
        raise SourceError(f"docker: {text!r} is not an {kind.__name__}")
    return address


def _link(text: str) -> tuple[str, str]:
    """'/web:/client/db' -> child "web", alias "db" (the parent is the inspected container)."""
    child, sep, path = text.partition(":")
    if not sep or not child.strip("/") or "/" not in path.strip("/"):
        raise SourceError(f"docker: cannot read link {text!r}")
    return child.lstrip("/"), path.rsplit("/", 1)[1]


def _load(files: Mapping[str, str], name: str, kind: type) -> Any:
    text = require("docker", files, name)
    try:
        value = json.loads(text)
    except ValueError as error:
        raise SourceError(f"docker: {name} is not valid JSON: {error}") from None
    if not isinstance(value, kind):
        got = type(value).__name__
        raise SourceError(f"docker: {name} holds a JSON {got}, not a {kind.__name__}")
    return value


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2) + "\n"


# -- cache validation ---------------------------------------------------------------------------


def _primary_name(names: list[str]) -> str:
    """A container's own name among the list reply's Names (the others are link names)."""
    for name in names:
        if name.count("/") == 1:
            return name
    return names[0] if names else ""


def _links_from_list(
    listed: list[dict[str, Any]], primary: Mapping[str, str]
) -> dict[str, set[tuple[str, str]]]:
    """Parent name -> {(link path, child name)} as the list reply's link names show them."""
    found: dict[str, set[tuple[str, str]]] = {}
    for entry in listed:
        child = primary[entry["Id"]]
        for name in entry.get("Names") or []:
            if name.count("/") >= 2:
                parent = name.rsplit("/", 1)[0]
                found.setdefault(parent, set()).add((name, child))
    return found


def _cache_valid(
    reply: Mapping[str, Any],
    name: str,
    listed_links: set[tuple[str, str]],
    primary: Mapping[str, str],
) -> bool:
    if reply.get("Name") != name:
        return False
    running = set(primary.values())
    cached: set[tuple[str, str]] = set()
    for text in (reply.get("HostConfig") or {}).get("Links") or []:
        child, _, path = text.partition(":")
        if child in running:
            cached.add((path, child))
    return cached == listed_links


# -- errors -------------------------------------------------------------------------------------


def _is_not_found(error: BaseException) -> bool:
    return getattr(error, "status_code", None) == 404 or type(error).__name__ == "NotFound"


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[object] = [error]
    while todo:
        item = todo.pop(0)
        if not isinstance(item, BaseException) or any(item is s for s in seen):
            continue
        seen.append(item)
        todo.extend([item.__cause__, item.__context__, *item.args])
    return seen


def describe_error(host: str, what: str, error: BaseException, timeout: float) -> str:
    """One line for a failed Docker API call."""
    chain = _chain(error)
    names = {type(e).__name__ for e in chain}
    if names & {"ReadTimeout", "ConnectTimeout", "Timeout", "TimeoutError", "timeout"}:
        return f"docker: {what} on {host} timed out after {timeout:g}s; is dockerd hung?"
    for item in chain:
        if isinstance(item, PermissionError):
            return (
                f"docker: cannot reach {host}: permission denied; run the exporter as root "
                "or in the docker group"
            )
        if isinstance(item, FileNotFoundError):
            return (
                f"docker: cannot reach {host}: no such socket; is dockerd running? "
                "set --docker.host"
            )
        if isinstance(item, ConnectionRefusedError):
            return (
                f"docker: cannot reach {host}: connection refused; is dockerd running? "
                "set --docker.host"
            )
    status = getattr(error, "status_code", None)
    if status is not None:
        explanation = getattr(error, "explanation", None) or error
        return f"docker: {what} failed with HTTP {status}: {explanation}"
    if names & {"ConnectionError", "ProtocolError", "DockerException"}:
        return f"docker: cannot reach {host}: {error}; is dockerd running? set --docker.host"
    return f"docker: {what} failed: {type(error).__name__}: {error}"
