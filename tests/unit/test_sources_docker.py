"""DockerSource: parse on real Docker 20.10 API replies, and the inspect cache with a fake client."""

from __future__ import annotations

import copy
import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import docker.errors
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.model import Endpoint, ExposedPort, Link
from exporter.sources.base import SourceError
from exporter.sources.docker import (
    CONTAINERS_FILE,
    INSPECT_FILE,
    NETWORKS_FILE,
    VERSION_FILE,
    DockerSource,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sources"
MIXED = FIXTURES / "docker20.10-nft-mixed"
DOCKER_FILES = (VERSION_FILE, NETWORKS_FILE, CONTAINERS_FILE, INSPECT_FILE)


def load(case: Path = MIXED) -> dict[str, str]:
    return {name: (case / name).read_text() for name in DOCKER_FILES}


def by_name(state):
    return {c.name: c for c in state.containers}


def parse(files):
    return DockerSource(None, 1.0, client=object()).parse(files)


# -- parse on real captures --------------------------------------------------------------------


def test_parse_networks_bridge_only_with_icc_and_bridge_names():
    state = parse(load())
    assert state.version == "20.10.24+dfsg1"
    nets = {n.name: n for n in state.networks}
    assert set(nets) == {"bridge", "isolated", "opennet"}  # host and none are not bridges
    assert nets["bridge"].bridge == "docker0"
    assert nets["bridge"].icc is False
    assert nets["bridge"].default_bridge is True
    assert nets["bridge"].subnets == (IPv4Network("172.17.0.0/16"),)
    assert nets["isolated"].bridge == "br-7a8ccb151217"
    assert nets["isolated"].icc is False
    assert nets["isolated"].default_bridge is False
    assert nets["opennet"].bridge == "br-d151f1a3dcd2"
    assert nets["opennet"].icc is True  # option absent: Docker's default


def test_parse_containers_ports_endpoints_links():
    state = parse(load())
    containers = by_name(state)
    assert set(containers) == {"client2", "loner", "worker", "api", "client", "web"}
    web, client, client2 = containers["web"], containers["client"], containers["client2"]
    assert web.exposed == (ExposedPort(80, "tcp"),)
    assert containers["api"].exposed == (ExposedPort(8080, "tcp"), ExposedPort(9090, "udp"))
    assert set(client2.links) == {
        Link(client2.id, web.id, "web"),
        Link(client2.id, client.id, "peer"),
    }
    assert client.links == (Link(client.id, web.id, "db"),)
    assert web.links == ()
    bridge = next(n for n in state.networks if n.name == "bridge")
    assert web.endpoint(bridge.id) == Endpoint(bridge.id, IPv4Address("172.17.0.2"), None)
    worker = containers["worker"]
    nets = {n.name: n.id for n in state.networks}
    assert worker.endpoint(nets["isolated"]).ipv4 == IPv4Address("172.30.0.3")
    assert worker.endpoint(nets["opennet"]).ipv4 == IPv4Address("172.31.0.2")
    assert worker.endpoint(bridge.id) is None


def test_legacy_capture_parses():
    state = parse(load(FIXTURES / "docker20.10-legacy"))
    containers = by_name(state)
    assert containers["web"].exposed == (ExposedPort(80, "tcp"), ExposedPort(53, "udp"))
    assert containers["client"].links == (
        Link(containers["client"].id, containers["web"].id, "db"),
    )


def test_link_to_a_container_that_is_not_running_is_dropped():
    files = load()
    listed = [c for c in json.loads(files[CONTAINERS_FILE]) if "/web" not in c["Names"]]
    inspected = [i for i in json.loads(files[INSPECT_FILE]) if i["Name"] != "/web"]
    files[CONTAINERS_FILE] = json.dumps(listed)
    files[INSPECT_FILE] = json.dumps(inspected)
    containers = by_name(parse(files))
    client2 = containers["client2"]
    assert client2.links == (Link(client2.id, containers["client"].id, "peer"),)
    assert containers["client"].links == ()


def test_addresses_come_from_the_list_reply_not_the_inspect_reply():
    files = load()
    listed = json.loads(files[CONTAINERS_FILE])
    web = next(c for c in listed if "/web" in c["Names"])
    web["NetworkSettings"]["Networks"]["bridge"]["IPAddress"] = "172.17.0.9"
    web["NetworkSettings"]["Networks"]["bridge"]["GlobalIPv6Address"] = "fd00::9"
    files[CONTAINERS_FILE] = json.dumps(listed)
    endpoint = by_name(parse(files))["web"].endpoints[0]
    assert endpoint.ipv4 == IPv4Address("172.17.0.9")
    assert str(endpoint.ipv6) == "fd00::9"


@pytest.mark.parametrize("missing", DOCKER_FILES)
def test_missing_file_is_a_source_error(missing):
    files = load()
    del files[missing]
    with pytest.raises(SourceError, match=f"docker: snapshot has no {missing}"):
        parse(files)


def test_garbled_json_is_a_source_error():
    files = load()
    files[NETWORKS_FILE] = "{not json"
    with pytest.raises(SourceError, match="docker-networks.json is not valid JSON"):
        parse(files)


def test_container_without_inspect_reply_is_a_source_error():
    files = load()
    files[INSPECT_FILE] = json.dumps(json.loads(files[INSPECT_FILE])[1:])
    with pytest.raises(SourceError, match="has no reply for container"):
        parse(files)


def test_bad_exposed_port_is_a_source_error():
    files = load()
    inspected = json.loads(files[INSPECT_FILE])
    inspected[0]["Config"]["ExposedPorts"] = {"80/icmp": {}}
    files[INSPECT_FILE] = json.dumps(inspected)
    with pytest.raises(SourceError, match="80/icmp"):
        parse(files)


# -- replies of the wrong shape fail closed ---------------------------------------------------


def edit(files, name, change):
    value = json.loads(files[name])
    change(value)
    files[name] = json.dumps(value)
    return files


def web_entry(listed):
    return next(c for c in listed if "/web" in c["Names"])


def web_reply(inspected):
    return next(i for i in inspected if i["Name"] == "/web")


WEB = "b5641a140042"  # the fixture's web container


def web_bridge(listed):
    return web_entry(listed)["NetworkSettings"]["Networks"]["bridge"]


SHAPE_CASES = {
    "no Id": (
        CONTAINERS_FILE,
        lambda v: v[2].pop("Id"),
        "docker: GET /containers/json: container 3 has no Id",
    ),
    "Id not a string": (
        CONTAINERS_FILE,
        lambda v: v[0].update(Id=5),
        "docker: GET /containers/json: container 1: Id is a JSON number, not a string",
    ),
    "Names not a list": (
        CONTAINERS_FILE,
        lambda v: web_entry(v).update(Names="/web"),
        None,  # web is no longer findable by name; checked below by id
    ),
    "list where an object": (
        CONTAINERS_FILE,
        lambda v: v.__setitem__(0, ["x"]),
        "docker: GET /containers/json: container 1 is a JSON list, not an object",
    ),
    "container twice": (
        CONTAINERS_FILE,
        lambda v: v.append(v[0]),
        "is listed twice",
    ),
    "bad IPv4": (
        CONTAINERS_FILE,
        lambda v: web_bridge(v).update(IPAddress="999.1.1.1"),
        f"docker: GET /containers/json: container {WEB}: network bridge: '999.1.1.1' "
        "is not an IP address",
    ),
    "IPv6 where IPv4": (
        CONTAINERS_FILE,
        lambda v: web_bridge(v).update(IPAddress="fd00::1"),
        "'fd00::1' is not an IPv4Address",
    ),
    "network settings not an object": (
        CONTAINERS_FILE,
        lambda v: web_entry(v)["NetworkSettings"]["Networks"].update(bridge=[]),
        f"docker: GET /containers/json: container {WEB}: network bridge is a JSON list",
    ),
    "network unknown to GET /networks": (
        CONTAINERS_FILE,
        lambda v: web_entry(v)["NetworkSettings"]["Networks"].update(
            newnet=dict(web_bridge(v), NetworkID="f" * 64)
        ),
        f"docker: GET /containers/json: container {WEB}: network newnet is not in the "
        "GET /networks reply",
    ),
    "port out of range": (
        INSPECT_FILE,
        lambda v: web_reply(v)["Config"].update(ExposedPorts={"99999/tcp": {}}),
        f"docker: GET /containers/{WEB}/json: cannot read exposed port '99999/tcp'",
    ),
    "port zero": (
        INSPECT_FILE,
        lambda v: web_reply(v)["Config"].update(ExposedPorts={"0/udp": {}}),
        "cannot read exposed port '0/udp'",
    ),
    "ExposedPorts a list": (
        INSPECT_FILE,
        lambda v: web_reply(v)["Config"].update(ExposedPorts=["80/tcp"]),
        f"docker: GET /containers/{WEB}/json: Config: ExposedPorts is a JSON list, not an object",
    ),
    "Name missing": (
        INSPECT_FILE,
        lambda v: web_reply(v).pop("Name"),
        None,
    ),
    "link not a string": (
        INSPECT_FILE,
        lambda v: next(i for i in v if i["Name"] == "/client")["HostConfig"].update(Links=[1]),
        "HostConfig.Links entry is a JSON number, not a string",
    ),
    "bad subnet": (
        NETWORKS_FILE,
        lambda v: next(n for n in v if n["Name"] == "bridge")["IPAM"]["Config"][0].update(
            Subnet="172.17.0.0/99"
        ),
        "docker: GET /networks: network bridge: subnet '172.17.0.0/99' is not a network",
    ),
    "network without Id": (
        NETWORKS_FILE,
        lambda v: v[0].pop("Id"),
        "docker: GET /networks: network 1 has no Id",
    ),
    "option not a string": (
        NETWORKS_FILE,
        lambda v: next(n for n in v if n["Name"] == "bridge")["Options"].update(
            {"com.docker.network.bridge.enable_icc": False}
        ),
        "Options.com.docker.network.bridge.enable_icc is a JSON boolean, not a string",
    ),
    "Internal not a boolean": (
        NETWORKS_FILE,
        lambda v: next(n for n in v if n["Name"] == "bridge").update(Internal="no"),
        "Internal is a JSON string, not a boolean",
    ),
    "version not a string": (
        VERSION_FILE,
        lambda v: v.update(Version=20),
        "docker: GET /version: Version is a JSON number, not a string",
    ),
}


@pytest.mark.parametrize("case", SHAPE_CASES)
def test_reply_of_the_wrong_shape_is_one_line_naming_the_call(case):
    name, change, expected = SHAPE_CASES[case]
    with pytest.raises(SourceError) as caught:
        parse(edit(load(), name, change))
    message = str(caught.value)
    assert message.startswith("docker: ")
    assert "\n" not in message
    assert expected is None or expected in message


def json_paths(value, prefix=()):
    """Every path to a value inside a JSON document, as tuples of keys and indexes."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from json_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from json_paths(item, (*prefix, index))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.just("999.1.1.1"),
    lambda inner: (
        st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=4), inner, max_size=2)
    ),
    max_leaves=4,
)
PATHS = [
    (name, path)
    for name in DOCKER_FILES
    for path in json_paths(json.loads((MIXED / name).read_text()))
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PATHS), JSON_VALUES)
def test_any_field_replaced_by_any_value_parses_or_is_a_source_error(where, value):
    name, path = where
    files = load()
    document = json.loads(files[name])
    if path:
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = value
    else:
        document = value
    files[name] = json.dumps(document)
    try:
        parse(files)
    except SourceError as error:
        assert str(error).startswith("docker: ") and "\n" not in str(error)
        assert "unexpected API reply" not in str(error)  # the shape checks caught it, by name


def test_fixture_web_id_is_what_the_shape_cases_expect():
    assert any(c.id.startswith(WEB) and c.name == "web" for c in parse(load()).containers)


def test_non_json_reply_is_one_line():
    files = load()
    files[INSPECT_FILE] = "<html>502 Bad Gateway</html>"
    with pytest.raises(SourceError, match="docker-inspect.json is not valid JSON"):
        parse(files)


def test_fetch_rejects_a_list_reply_without_ids_before_using_it():
    client = FakeClient()
    del client.listed[0]["Id"]
    with pytest.raises(SourceError, match="GET /containers/json: container 1 has no Id"):
        DockerSource(None, 1.0, client=client).fetch()


def test_fetch_rejects_an_inspect_reply_for_another_container():
    client = FakeClient()
    ids = list(client.inspects)
    client.inspects[ids[0]] = client.inspects[ids[1]]
    with pytest.raises(SourceError, match=f"GET /containers/{ids[0][:12]}/json: reply is for"):
        DockerSource(None, 1.0, client=client).fetch()


# -- fetch with a fake APIClient ---------------------------------------------------------------


class FakeClient:
    """The four APIClient calls DockerSource makes, answered from the captures."""

    def __init__(self, case: Path = MIXED) -> None:
        files = load(case)
        self.version_reply = json.loads(files[VERSION_FILE])
        self.networks_reply = json.loads(files[NETWORKS_FILE])
        self.listed = json.loads(files[CONTAINERS_FILE])
        self.inspects = {i["Id"]: i for i in json.loads(files[INSPECT_FILE])}
        self.calls: list[str] = []

    def version(self):
        self.calls.append("version")
        return copy.deepcopy(self.version_reply)

    def networks(self):
        self.calls.append("networks")
        return copy.deepcopy(self.networks_reply)

    def containers(self, all=False):  # noqa: A002 - the SDK's name
        assert all is False
        self.calls.append("containers")
        return copy.deepcopy(self.listed)

    def inspect_container(self, container_id):
        self.calls.append(f"inspect {container_id[:12]}")
        if container_id not in self.inspects:
            raise docker.errors.NotFound(f"No such container: {container_id}")
        return copy.deepcopy(self.inspects[container_id])

    def remove(self, name: str) -> None:
        self.listed = [c for c in self.listed if f"/{name}" not in c["Names"]]


def test_fetch_writes_the_four_files_and_parses_like_the_capture():
    client = FakeClient()
    source = DockerSource(None, 1.0, client=client)
    files = source.fetch()
    assert set(files) == set(DOCKER_FILES)
    assert source.parse(files) == source.parse(load())
    assert len(json.loads(files[INSPECT_FILE])) == 6


def test_inspect_replies_are_cached_by_container_id():
    client = FakeClient()
    source = DockerSource(None, 1.0, client=client)
    source.fetch()
    assert source.last_inspect_calls() == 6
    client.calls.clear()
    files = source.fetch()
    assert source.last_inspect_calls() == 0
    assert client.calls == ["version", "networks", "containers"]
    assert len(json.loads(files[INSPECT_FILE])) == 6


def test_cache_entries_of_gone_containers_are_dropped():
    client = FakeClient()
    source = DockerSource(None, 1.0, client=client)
    source.fetch()
    full = copy.deepcopy(client.listed)
    client.remove("loner")
    files = source.fetch()
    assert source.last_inspect_calls() == 0
    assert "loner" not in by_name(source.parse(files))
    client.listed = full  # the same id again: it was forgotten, so it is inspected anew
    source.fetch()
    assert source.last_inspect_calls() == 1


def test_new_addresses_of_a_cached_container_are_seen():
    client = FakeClient()
    source = DockerSource(None, 1.0, client=client)
    source.fetch()
    web = next(c for c in client.listed if "/web" in c["Names"])
    web["NetworkSettings"]["Networks"]["bridge"]["IPAddress"] = "172.17.0.42"
    files = source.fetch()
    assert source.last_inspect_calls() == 0
    assert by_name(source.parse(files))["web"].endpoints[0].ipv4 == IPv4Address("172.17.0.42")


def test_renamed_container_is_inspected_again():
    client = FakeClient()
    source = DockerSource(None, 1.0, client=client)
    source.fetch()
    loner = next(c for c in client.listed if "/loner" in c["Names"])
    loner["Names"] = ["/hermit"]
    client.inspects[loner["Id"]]["Name"] = "/hermit"
    files = source.fetch()
    assert source.last_inspect_calls() == 1
    assert "hermit" in by_name(source.parse(files))


def test_parent_is_inspected_again_when_its_link_names_change():
    # The child "web" goes away and comes back as a new container: client's and client2's cached
    # HostConfig.Links no longer match the link names the list shows.
    client = FakeClient()
    source = DockerSource(None, 1.0, client=client)
    source.fetch()
    web = next(c for c in client.listed if "/web" in c["Names"])
    web["Names"] = ["/web"]  # Docker dropped the links when the old child was removed
    client.inspects[web["Id"]] = copy.deepcopy(client.inspects[web["Id"]])
    for parent in ("client", "client2"):
        reply = next(i for i in client.inspects.values() if i["Name"] == f"/{parent}")
        reply["HostConfig"]["Links"] = [
            link for link in reply["HostConfig"]["Links"] if not link.startswith("/web:")
        ]
    files = source.fetch()
    assert source.last_inspect_calls() == 2
    containers = by_name(source.parse(files))
    assert containers["client"].links == ()
    assert [link.alias for link in containers["client2"].links] == ["peer"]


class DyingClient(FakeClient):
    """A container stops between the list and its inspect: the inspect 404s, a new list lacks it."""

    def __init__(self, dying: str) -> None:
        super().__init__()
        self.dying = next(c for c in self.listed if f"/{dying}" in c["Names"])["Id"]

    def inspect_container(self, container_id):
        if container_id == self.dying:
            self.listed = [c for c in self.listed if c["Id"] != container_id]
            del self.inspects[container_id]
        return super().inspect_container(container_id)


def test_container_removed_between_list_and_inspect_is_left_out():
    client = DyingClient("loner")
    source = DockerSource(None, 1.0, client=client)
    files = source.fetch()
    assert all(c["Id"] != client.dying for c in json.loads(files[CONTAINERS_FILE]))
    assert "loner" not in by_name(source.parse(files))
    assert client.calls.count("containers") == 2  # the 404 was checked against a second list


def test_container_listed_but_never_inspectable_fails_closed():
    client = FakeClient()
    gone = next(c for c in client.listed if "/loner" in c["Names"])["Id"]
    del client.inspects[gone]  # still listed: a 404 here is not the race, the daemon is lying
    source = DockerSource(None, 1.0, client=client)
    with pytest.raises(SourceError) as caught:
        source.fetch()
    assert str(caught.value) == (
        f"docker: GET /containers/{gone[:12]}/json answered 404 (no such container) but "
        "GET /containers/json still lists it; is dockerd healthy?"
    )


class BrokenClient(FakeClient):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def containers(self, all=False):  # noqa: A002
        raise self.error


def test_unreachable_daemon_is_one_clear_line():
    refused = requests.exceptions.ConnectionError(ConnectionRefusedError(111, "Connection refused"))
    source = DockerSource("unix:///run/x.sock", 1.0, client=BrokenClient(refused))
    with pytest.raises(SourceError) as caught:
        source.fetch()
    message = str(caught.value)
    assert message.startswith("docker: cannot reach unix:///run/x.sock: connection refused")
    assert "--docker.host" in message
    assert "\n" not in message


def test_timeout_names_the_call_and_the_timeout():
    source = DockerSource(
        "unix:///run/x.sock",
        2.5,
        client=BrokenClient(requests.exceptions.ReadTimeout("read timed out")),
    )
    with pytest.raises(SourceError, match=r"GET /containers/json .* timed out after 2.5s"):
        source.fetch()


def test_docker_host_is_honoured_when_no_url_is_given(monkeypatch, tmp_path):
    sock = tmp_path / "nothing.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    source = DockerSource(None, 1.0)
    with pytest.raises(SourceError, match=f"cannot reach unix://{sock}: no such socket"):
        source.fetch()


# -- slim replies: only what parse() and the cache read is kept ---------------------------------


def test_cache_and_files_keep_only_the_fields_parse_reads():
    client = FakeClient()
    source = DockerSource(None, 1.0, client=client)
    files = source.fetch()
    for reply in json.loads(files[INSPECT_FILE]):
        assert set(reply) <= {"Id", "Name", "Config", "HostConfig"}
        assert set(reply.get("Config") or {}) <= {"ExposedPorts"}
        assert set(reply.get("HostConfig") or {}) <= {"Links"}
    for entry in json.loads(files[CONTAINERS_FILE]):
        assert set(entry) <= {"Id", "Names", "NetworkSettings"}
        for endpoint in entry["NetworkSettings"]["Networks"].values():
            assert set(endpoint) <= {"NetworkID", "IPAddress", "GlobalIPv6Address"}
    full = sum(len(json.dumps(reply)) for reply in client.inspects.values())
    assert len(files[INSPECT_FILE]) < full / 3  # the point: a small cache at 1,000 containers


def test_unchanged_host_gives_identical_files_while_status_texts_age():
    client = FakeClient()
    source = DockerSource(None, 1.0, client=client)
    before = source.fetch()
    for entry in client.listed:
        entry["Status"] = "Up 2 hours"
    for reply in client.inspects.values():
        reply["State"]["StartedAt"] = "2030-01-01T00:00:00Z"
    assert source.fetch() == before  # so its parse is reused (ParseMemo)


FETCHED_PATHS = [
    (name, path)
    for name in (CONTAINERS_FILE, INSPECT_FILE)
    for path in json_paths(json.loads((MIXED / name).read_text()))
    if len(path) >= 2  # inside one entry: the fetch checks the reply's own type first
]


def fetch_and_parse(client: FakeClient):
    try:
        source = DockerSource(None, 1.0, client=client)
        return source.parse(source.fetch())
    except SourceError:
        return "error"


def full_parse(client: FakeClient):
    files = {
        VERSION_FILE: json.dumps(client.version_reply),
        NETWORKS_FILE: json.dumps(client.networks_reply),
        CONTAINERS_FILE: json.dumps(client.listed),
        INSPECT_FILE: json.dumps(list(client.inspects.values())),
    }
    try:
        return parse(files)
    except SourceError:
        return "error"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(FETCHED_PATHS), JSON_VALUES)
def test_slim_replies_decide_as_the_full_ones(where, value):
    """Slimming never turns a reply parse() refuses into one it takes, nor changes a state."""
    name, path = where
    client = FakeClient()
    document = client.listed if name == CONTAINERS_FILE else list(client.inspects.values())
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    if name == INSPECT_FILE:
        # The inspect reply is looked up by the listed id: keep its key when its Id was changed.
        ids = [entry["Id"] for entry in client.listed]
        client.inspects = dict(zip(ids, document, strict=True))
    slim = fetch_and_parse(client)
    full = full_parse(client)
    assert slim == full
