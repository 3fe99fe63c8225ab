"""Docker's view: bridge networks, running containers, their exposed ports, addresses and links.

fetch() makes only GET requests:

- GET /version              -> docker-version.json
- GET /networks             -> docker-networks.json
- GET /containers/json      -> docker-containers.json (running containers only, as `docker ps`)
- GET /containers/ID/json   -> docker-inspect.json (a JSON array, one reply per listed container)

Only the fields parse() and the cache read are kept from the list and inspect replies (see "slim
replies"). Inspect replies are cached by container id: a container's name, exposed ports and
links are fixed for its life, so a steady host costs one list call (+ networks + version) per
check. The cache is checked against the list reply, which is fetched anew every time: an entry is
dropped when its container is gone, and refreshed when the container was renamed or when the link
names the list shows for it ("/PARENT/ALIAS" among a child's Names) no longer match its cached
HostConfig.Links (a child renamed or removed changes them). A container's addresses are NOT fixed
across restarts, so parse() takes them from the list reply only, never from the (possibly old)
inspect reply.

Replies fail closed: a field parse() or the cache relies on that is missing or of another shape is
a SourceError naming the call and the field (`docker: GET /containers/json: container 3 has no
Id`), never a container or network silently left out. The one legit gap is a container that
stops between the list and its inspect (HTTP 404): it is left out, since it has no flows any more,
but only once a second list confirms it is gone; a daemon that lists a container it cannot
inspect fails the source.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any

import docker
from docker.utils import kwargs_from_env

from exporter.config import DEFAULT_DOCKER_HOST
from exporter.model import Container, DockerState, Endpoint, ExposedPort, Link, Network
from exporter.sources.base import SourceError, parse_go_bool, require

VERSION_FILE = "docker-version.json"
NETWORKS_FILE = "docker-networks.json"
CONTAINERS_FILE = "docker-containers.json"
INSPECT_FILE = "docker-inspect.json"

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
        return kwargs_from_env().get("base_url") or DEFAULT_DOCKER_HOST

    def _connect(self) -> Any:
        if self._client is None:
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
        # The cache logic below relies on these shapes; parse() checks the rest.
        check_list_reply(listed)
        _check_kind(networks, list, "GET /networks: reply")

        running = {c["Id"]: c for c in listed}
        for gone in set(self._cache) - set(running):
            del self._cache[gone]

        primary_names = {cid: _primary_name(c.get("Names") or []) for cid, c in running.items()}
        list_links = _links_from_list(listed, primary_names)
        inspected: list[dict[str, Any]] = []
        kept: list[dict[str, Any]] = []  # slim list entries, see slim_list_entry
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
                reply = self._inspect(client, cid)
                if reply is None:
                    continue  # it died between the list and the inspect: see _inspect
                self._cache[cid] = reply
            inspected.append(reply)
            kept.append(slim_list_entry(entry))
        return {
            VERSION_FILE: _dump(version),
            NETWORKS_FILE: _dump(networks),
            CONTAINERS_FILE: _dump(kept),
            INSPECT_FILE: _dump(inspected),
        }

    def _inspect(self, client: Any, cid: str) -> dict[str, Any] | None:
        """The inspect reply of a listed container; None when it is gone (HTTP 404).

        A container that stops between the list and the inspect is the one legit race: it has no
        flows any more, so it is left out. A 404 is believed only when a second list no longer
        shows the container: a daemon that lists a container it cannot inspect would otherwise
        make us silently drop it, and its flows with it.
        """
        what = f"GET /containers/{cid[:12]}/json"
        try:
            reply = self._call(what, client.inspect_container, cid)
        except Exception as error:  # noqa: BLE001 - only a 404 reaches here (see _call)
            if not _is_not_found(error):
                raise
            relisted = self._call("GET /containers/json", client.containers, all=False)
            check_list_reply(relisted)
            if any(entry["Id"] == cid for entry in relisted):
                raise SourceError(
                    f"docker: {what} answered 404 (no such container) but GET /containers/json "
                    "still lists it; is dockerd healthy?"
                ) from None
            return None
        check_inspect_reply(reply, cid)
        return slim_inspect_reply(reply)

    # -- parse ----------------------------------------------------------------------------------

    def parse(self, files: Mapping[str, str]) -> DockerState:
        return parse_docker(files)


def parse_docker(files: Mapping[str, str]) -> DockerState:
    """The Docker state, from replies whose every field used here has the expected shape.

    Fails closed: a reply of another shape (a field missing or of the wrong type, an address or
    port that does not parse, a container attached to a network the networks reply lacks) is a
    SourceError naming the call and the field, never a container or network silently left out:
    a container left out hides its flows.
    """
    try:
        return _parse_docker(files)
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        # Last resort for a shape the checks below missed: still one line, never a traceback.
        kind = type(error).__name__
        raise SourceError(f"docker: unexpected API reply: {kind}: {error}") from None


def _parse_docker(files: Mapping[str, str]) -> DockerState:
    version = _load(files, VERSION_FILE, dict)
    networks_reply = _load(files, NETWORKS_FILE, list)
    listed = _load(files, CONTAINERS_FILE, list)
    inspected = _load(files, INSPECT_FILE, list)
    for key in ("Version", "ApiVersion"):
        _check_kind(version.get(key, ""), str, f"GET /version: {key}")
    check_list_reply(listed)
    replies: dict[str, dict[str, Any]] = {}
    for number, reply in enumerate(inspected, 1):
        _check_kind(reply, dict, f"{INSPECT_FILE}: reply {number}")
        cid = reply.get("Id")
        _check_kind(cid, str, f"{INSPECT_FILE}: reply {number}: Id")
        check_inspect_reply(reply, cid)
        replies[cid] = reply
    all_networks = [_any_network(reply, number) for number, reply in enumerate(networks_reply, 1)]
    known = {key for net_id, name in all_networks for key in (net_id, name)}
    networks = tuple(_network(reply) for reply in networks_reply if reply.get("Driver") == "bridge")
    by_id = {n.id: n for n in networks}
    by_name = {n.name: n for n in networks}
    names: dict[str, str] = {}
    for entry in listed:
        reply = replies.get(entry["Id"])
        if reply is None:
            raise SourceError(
                f"docker: {INSPECT_FILE} has no reply for container {entry['Id'][:12]}"
            )
        names[reply["Name"].lstrip("/")] = entry["Id"]
    containers = tuple(
        _container(entry, replies[entry["Id"]], by_id, by_name, known, names) for entry in listed
    )
    return DockerState(
        version=version.get("Version", ""),
        networks=networks,
        containers=containers,
    )


# -- slim replies --------------------------------------------------------------------------------
#
# A full inspect reply is a few KB (State, Mounts, the whole Config and HostConfig, ...), a list
# entry holds Status ("Up 3 minutes"), which changes every minute. Only the fields parse() and the
# cache read are kept: the cache stays small at 1,000 containers, and an unchanged host gives
# byte-identical files, so their parse is reused (ParseMemo). A kept field keeps its value as
# the daemon sent it, whatever its shape, so parse() still fails closed on a wrong one; a field
# the daemon left out stays out.

_LIST_ENDPOINT_FIELDS = ("NetworkID", "IPAddress", "GlobalIPv6Address")


def _pick(reply: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: reply[key] for key in keys if key in reply}


def slim_list_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A GET /containers/json entry (shape already checked) with what parse() reads."""
    slim = _pick(entry, ("Id", "Names"))
    if "NetworkSettings" in entry:
        settings = entry["NetworkSettings"]
        if isinstance(settings, dict):
            networks = settings.get("Networks")
            if isinstance(networks, dict):
                networks = {
                    name: _pick(value, _LIST_ENDPOINT_FIELDS) if isinstance(value, dict) else value
                    for name, value in networks.items()
                }
            settings = {"Networks": networks} if "Networks" in settings else {}
        slim["NetworkSettings"] = settings
    return slim


def slim_inspect_reply(reply: Mapping[str, Any]) -> dict[str, Any]:
    """A GET /containers/ID/json reply (shape already checked) with what parse() and the cache
    read: Id, Name, Config.ExposedPorts, HostConfig.Links."""
    slim = _pick(reply, ("Id", "Name"))
    for section, key in (("Config", "ExposedPorts"), ("HostConfig", "Links")):
        if section in reply:
            value = reply[section]
            slim[section] = _pick(value, (key,)) if isinstance(value, dict) else value
    return slim


# -- reply shapes -------------------------------------------------------------------------------

_KIND_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}


def _check_kind(value: Any, kind: type, where: str, *, null_ok: bool = False) -> None:
    if value is None and null_ok:
        return
    # bool is an int in Python, but no field read here is a number.
    if not isinstance(value, kind):
        got = "null" if value is None else f"a JSON {_json_kind(value)}"
        raise SourceError(f"docker: {where} is {got}, not {_KIND_NAMES[kind]}")


def _json_kind(value: Any) -> str:
    kinds = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number"}
    return kinds.get(type(value), type(value).__name__)


def _present(reply: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    """A field that may be absent or null (Docker omits empty ones): its value or an empty one."""
    value = reply.get(key)
    _check_kind(value, kind, f"{where}: {key}", null_ok=True)
    return value if value is not None else kind()


def check_list_reply(listed: Any) -> None:
    """GET /containers/json: a list of objects, each with an Id and Names (a list of strings)."""
    where = "GET /containers/json"
    _check_kind(listed, list, f"{where}: reply")
    seen: set[str] = set()
    for number, entry in enumerate(listed, 1):
        _check_kind(entry, dict, f"{where}: container {number}")
        cid = entry.get("Id")
        if cid is None or cid == "":
            raise SourceError(f"docker: {where}: container {number} has no Id")
        _check_kind(cid, str, f"{where}: container {number}: Id")
        if cid in seen:
            raise SourceError(f"docker: {where}: container {cid[:12]} is listed twice")
        seen.add(cid)
        names = entry.get("Names")
        _check_kind(names, list, f"{where}: container {cid[:12]}: Names")
        for name in names:
            _check_kind(name, str, f"{where}: container {cid[:12]}: Names entry")
        settings = _present(entry, "NetworkSettings", dict, f"{where}: container {cid[:12]}")
        _present(settings, "Networks", dict, f"{where}: container {cid[:12]}: NetworkSettings")


def check_inspect_reply(reply: Any, cid: str) -> None:
    """GET /containers/ID/json: the fields the cache and parse() read."""
    where = f"GET /containers/{cid[:12]}/json"
    _check_kind(reply, dict, f"{where}: reply")
    if reply.get("Id") != cid:
        raise SourceError(f"docker: {where}: reply is for container {reply.get('Id')!r}")
    _check_kind(reply.get("Name"), str, f"{where}: Name")
    config = _present(reply, "Config", dict, where)
    _present(config, "ExposedPorts", dict, f"{where}: Config")
    host_config = _present(reply, "HostConfig", dict, where)
    for link in _present(host_config, "Links", list, f"{where}: HostConfig"):
        _check_kind(link, str, f"{where}: HostConfig.Links entry")


def _any_network(reply: Any, number: int) -> tuple[str, str]:
    """(Id, Name) of any network in GET /networks, whatever its driver."""
    _check_kind(reply, dict, f"GET /networks: network {number}")
    net_id, name = reply.get("Id"), reply.get("Name")
    if not net_id or not isinstance(net_id, str):
        raise SourceError(f"docker: GET /networks: network {number} has no Id")
    _check_kind(name, str, f"GET /networks: network {net_id[:12]}: Name")
    _check_kind(reply.get("Driver"), str, f"GET /networks: network {name}: Driver")
    return net_id, name


def _network(reply: Mapping[str, Any]) -> Network:
    net_id, name = reply["Id"], reply["Name"]
    where = f"GET /networks: network {name}"
    options = _present(reply, "Options", dict, where)
    for key, value in options.items():
        _check_kind(value, str, f"{where}: Options.{key}")
    icc = True  # Docker's default when the option is absent
    if _OPT_ICC in options:
        parsed = parse_go_bool(options[_OPT_ICC])
        if parsed is None:
            raise SourceError(f"docker: {where}: Options.{_OPT_ICC} is {options[_OPT_ICC]!r}")
        icc = parsed
    ipam = _present(reply, "IPAM", dict, where)
    subnets = []
    for config in _present(ipam, "Config", list, f"{where}: IPAM"):
        _check_kind(config, dict, f"{where}: IPAM.Config entry")
        subnet = _present(config, "Subnet", str, f"{where}: IPAM.Config")
        if subnet:
            try:
                subnets.append(ip_network(subnet, strict=False))
            except ValueError:
                raise SourceError(f"docker: {where}: subnet {subnet!r} is not a network") from None
    # Not read (an internal network's isolation is in its rules, which are walked; IPv6 shows in
    # the containers' addresses), but a reply holding them in another shape is not one this
    # parser knows: fail closed.
    for key in ("Internal", "EnableIPv6"):
        _check_kind(reply.get(key, False), bool, f"{where}: {key}")
    return Network(
        id=net_id,
        name=name,
        bridge=options.get(_OPT_BRIDGE_NAME) or "br-" + net_id[:12],
        icc=icc,
        internal=reply.get("Internal", False),
        default_bridge=parse_go_bool(options.get(_OPT_DEFAULT_BRIDGE, "")) is True,
        subnets=tuple(subnets),
    )


def _container(
    entry: Mapping[str, Any],
    reply: Mapping[str, Any],
    by_id: Mapping[str, Network],
    by_name: Mapping[str, Network],
    known: set[str],
    names: Mapping[str, str],
) -> Container:
    cid = entry["Id"]
    inspect_where = f"GET /containers/{cid[:12]}/json"
    # Shapes checked by check_inspect_reply: Config and ExposedPorts are objects or null.
    ports = (reply.get("Config") or {}).get("ExposedPorts") or {}
    exposed = tuple(
        sorted((_exposed(key, inspect_where) for key in ports), key=lambda p: (p.protocol, p.port))
    )
    return Container(
        id=cid,
        name=reply["Name"].lstrip("/"),
        exposed=exposed,
        endpoints=_endpoints(entry, by_id, by_name, known),
        links=_links(cid, reply, names),
    )


def _endpoints(
    entry: Mapping[str, Any],
    by_id: Mapping[str, Network],
    by_name: Mapping[str, Network],
    known: set[str],
) -> tuple[Endpoint, ...]:
    cid = entry["Id"]
    where = f"GET /containers/json: container {cid[:12]}"
    endpoints: list[Endpoint] = []
    attached = (entry.get("NetworkSettings") or {}).get("Networks") or {}
    for net_name, settings in attached.items():
        here = f"{where}: network {net_name}"
        _check_kind(settings, dict, here)
        net_id = _present(settings, "NetworkID", str, here)
        if net_id not in known and net_name not in known:
            # Created after GET /networks (a race) or a lie: either way its rules are unknown.
            raise SourceError(f"docker: {here} is not in the GET /networks reply")
        network = by_id.get(net_id) or by_name.get(net_name)
        if network is None:
            continue  # host, none, macvlan...: Docker writes no bridge rules for these
        endpoints.append(
            Endpoint(
                network_id=network.id,
                ipv4=_address(_present(settings, "IPAddress", str, here), IPv4Address, here),
                ipv6=_address(
                    _present(settings, "GlobalIPv6Address", str, here), IPv6Address, here
                ),
            )
        )
    return tuple(endpoints)


def _links(cid: str, reply: Mapping[str, Any], names: Mapping[str, str]) -> tuple[Link, ...]:
    links: list[Link] = []
    for text in (reply.get("HostConfig") or {}).get("Links") or []:
        child, alias = _link(text, f"GET /containers/{cid[:12]}/json")
        child_id = names.get(child)
        if child_id is None:
            continue  # the child is not running: Docker has no rules for this link now
        links.append(Link(parent_id=cid, child_id=child_id, alias=alias))
    return tuple(links)


def _exposed(key: str, where: str) -> ExposedPort:
    port, _, protocol = key.partition("/")
    protocol = protocol or "tcp"
    if (
        protocol not in _PROTOCOLS
        or not port.isascii()
        or not port.isdigit()
        or not 1 <= int(port) <= 65535
    ):
        raise SourceError(
            f"docker: {where}: cannot read exposed port {key!r} (want 1-65535/tcp|udp|sctp)"
        )
    return ExposedPort(int(port), protocol)  # type: ignore[arg-type]


def _address(text: str, kind: type, where: str) -> Any:
    if not text:
        return None
    try:
        address = ip_address(text)
    except ValueError:
        raise SourceError(f"docker: {where}: {text!r} is not an IP address") from None
    if not isinstance(address, kind):
        raise SourceError(f"docker: {where}: {text!r} is not an {kind.__name__}")
    return address


def _link(text: str, where: str) -> tuple[str, str]:
    """'/web:/client/db' -> child "web", alias "db" (the parent is the inspected container)."""
    child, sep, path = text.partition(":")
    if not sep or not child.strip("/") or "/" not in path.strip("/"):
        raise SourceError(f"docker: {where}: cannot read link {text!r}")
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
    for item in chain:
        status = getattr(item, "status_code", None)
        if status is not None:
            explanation = getattr(item, "explanation", None) or item
            return f"docker: {what} failed with HTTP {status}: {explanation}"
    if names & {"IncompleteRead", "ChunkedEncodingError"}:
        return f"docker: {what} on {host}: the reply was cut short; is dockerd restarting?"
    if names & {"JSONDecodeError"}:
        return f"docker: {what} on {host}: the reply is not JSON; is this a Docker API?"
    if names & {"ConnectionError", "ProtocolError"}:
        return f"docker: cannot reach {host}: {error}; is dockerd running? set --docker.host"
    if "DockerException" in names:
        return f"docker: {what} failed: {error}"
    return f"docker: {what} failed: {type(error).__name__}: {error}"
