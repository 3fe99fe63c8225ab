"""A synthetic Docker 28 host for the benchmark: N containers over K bridge networks, L legacy
links, published ports, and R further rules of the kinds real hosts carry, deterministic from a
seed.

    python3 bench/synth_host.py --containers 1000 --links 500 --rules 10000 --out DIR

writes DIR/snapshot (the files `check --snapshot` reads) and DIR/iptables.rules plus
DIR/ipset.rules (the same rules for `iptables-nft-restore` / `ipset restore`).

The shape (Docker 28's layout, as in tests/fixtures/layouts/docker28*):

- network 0 is the default bridge docker0 (172.17.0.0/16), icc=false from `dockerd --icc=false`;
  networks 1..K-1 are user bridges br-<id> (10.k.0.0/16), every third with enable_icc=false.
- The links need parent and child on docker0, so docker0 holds at least L+1 containers; the
  others are spread round robin. Container j (j=1..L) on docker0 runs `--link c<j-1>:dep`.
- Every container exposes 80/tcp, every fourth also 53/udp; Docker writes two DOCKER rules per
  exposed port of a link's child. Every tenth container publishes 80/tcp on host port 20000+i:
  `-A DOCKER -d C/32 ! -i BR -o BR -p tcp -m tcp --dport 80 -j ACCEPT` and a nat DNAT rule.
- The R further rules: fail2ban chains off INPUT (f2b-*, one REJECT per banned address), DROPs of
  remote addresses in DOCKER-USER, per-host chains off DOCKER-USER (a jump for one remote
  address, and an ssh ACCEPT and a DROP inside, as firewall scripts build them),
  `-m set --match-set` DROPs in DOCKER-USER and INPUT with the sets in ipset, and INPUT ACCEPTs.
  None names a container address, so the host has no drift: every flow is as Docker means it.

The dumps are written as iptables-nft-save prints them; the nft JSON lists the same tables and
chains with one rule object per rule, as `nft -j list ruleset` does on an iptables-nft host (the
exporter reads iptables-nft's tables through the save dump and takes only their names from nft).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.sources.snapshot import write_snapshot  # noqa: E402

DOCKER_VERSION = "28.5.2"
DOCKER_API = "1.51"
DEFAULT_BRIDGE = "docker0"
DEFAULT_SUBNET = IPv4Network("172.17.0.0/16")
PUBLISH_EVERY = 10
UDP_EVERY = 4
NOICC_EVERY = 3
HOST_PORT_BASE = 20000
# Shares of the R further rules, by kind (what is left goes to INPUT ACCEPTs).
SHARE_FAIL2BAN = 0.35
SHARE_USER_DROP = 0.30
SHARE_HOST_CHAINS = 0.15
RULES_PER_SET = 2  # each set is matched once in DOCKER-USER and once in INPUT
F2B_JAILS = ("sshd", "nginx-http-auth", "postfix", "recidive")
# Remote address ranges, none of them a container's: bans, DOCKER-USER drops, per-host chains,
# set members, admin hosts allowed in INPUT.
BANNED = IPv4Network("198.18.0.0/15")
USER_DROPPED = IPv4Network("100.64.0.0/10")
HOST_CHAINED = IPv4Network("192.168.0.0/16")
SET_MEMBERS = IPv4Network("44.0.0.0/8")
ADMINS = IPv4Network("203.0.113.0/24")


@dataclass(frozen=True)
class HostShape:
    containers: int
    networks: int = 4
    links: int = 0
    rules: int = 0  # further rules, beyond the ones Docker writes
    seed: int = 1

    def __post_init__(self) -> None:
        if self.containers < 1 or self.networks < 1 or self.networks > 254:
            raise ValueError("want at least 1 container and 1 to 254 networks")
        if self.links < 0 or self.links > self.containers - 1:
            raise ValueError(
                f"at most {self.containers - 1} links for {self.containers} containers"
            )


@dataclass(frozen=True)
class SynthNetwork:
    index: int
    id: str
    name: str
    bridge: str
    subnet: IPv4Network
    icc: bool


@dataclass(frozen=True)
class SynthContainer:
    index: int
    id: str
    name: str
    network: SynthNetwork
    address: IPv4Address
    ports: tuple[tuple[int, str], ...]
    published: int | None  # host port for 80/tcp
    link_child: int | None  # index of the container it links to


@dataclass
class _Table:
    """One iptables table being built: its chains in declaration order and their rules."""

    name: str
    builtin: tuple[str, ...]
    chains: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for chain in self.builtin:
            self.chains[chain] = []

    def add(self, chain: str, rule: str) -> None:
        self.chains.setdefault(chain, []).append(rule)

    def declare(self, chain: str) -> None:
        self.chains.setdefault(chain, [])

    def save_text(self, policies: dict[str, str]) -> str:
        lines = [f"*{self.name}"]
        for chain in self.chains:
            if chain in self.builtin:
                lines.append(f":{chain} {policies.get(chain, 'ACCEPT')} [0:0]")
            else:
                lines.append(f":{chain} - [0:0]")
        for chain, rules in self.chains.items():
            lines.extend(f"-A {chain} {rule}" for rule in rules)
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class SynthHost:
    shape: HostShape
    networks: tuple[SynthNetwork, ...]
    containers: tuple[SynthContainer, ...]
    iptables_save: str  # as iptables-nft-save prints it; also the iptables-restore input
    ipset_save: str  # also the `ipset restore` input
    rule_count: int  # every -A line
    docker_rule_count: int  # the -A lines Docker wrote
    nft_json: str

    def snapshot_files(self) -> dict[str, str]:
        """Every file `check --snapshot` reads, as `snapshot` would write them."""
        return {
            "docker-version.json": _dump(_version()),
            "docker-networks.json": _dump([_network_reply(n) for n in self._all_networks()]),
            "docker-containers.json": _dump([self._list_entry(c) for c in self.containers]),
            "docker-inspect.json": _dump([self._inspect_reply(c) for c in self.containers]),
            "dockerd-cmdline.txt": "dockerd\n--icc=false\n",
            "daemon.json": "{}\n",
            "sysctl.txt": (
                "bridge-nf-call-iptables=1\nbridge-nf-call-ip6tables=1\nnet.ipv4.ip_forward=1\n"
            ),
            "iptables-save.txt": self.iptables_save,
            "iptables-legacy-save.txt": "",
            "iptables-legacy-tables.txt": "",
            "firewall-backend.txt": "nft\n",
            "ip6tables-save.txt": "",
            "ip6tables-legacy-save.txt": "",
            "ip6tables-legacy-tables.txt": "",
            "firewall-backend-ipv6.txt": "nft\n",
            "ebtables-save.txt": "",
            "ipset-save.txt": self.ipset_save,
            "nft-ruleset.json": self.nft_json,
        }

    def _all_networks(self) -> list[SynthNetwork | str]:
        # Every daemon also lists host and none (drivers without bridge rules).
        return ["none", "host", *self.networks]

    def _names(self, container: SynthContainer) -> list[str]:
        # A link child is also listed under /PARENT/ALIAS, as the Docker API does.
        parents = [c for c in self.containers if c.link_child == container.index]
        return [f"/{container.name}", *(f"/{p.name}/dep" for p in parents)]

    def _list_entry(self, c: SynthContainer) -> dict:
        ports = [{"PrivatePort": p, "Type": proto} for p, proto in c.ports]
        if c.published is not None:
            ports.append(
                {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": c.published, "Type": "tcp"}
            )
        return {
            "Id": c.id,
            "Names": self._names(c),
            "Image": "busybox",
            "State": "running",
            "Ports": ports,
            "HostConfig": {"NetworkMode": c.network.name if c.network.index else "default"},
            "NetworkSettings": {"Networks": {c.network.name: _endpoint(c)}},
        }

    def _inspect_reply(self, c: SynthContainer) -> dict:
        child = self.containers[c.link_child] if c.link_child is not None else None
        bindings = {"80/tcp": [{"HostIp": "", "HostPort": str(c.published)}]} if c.published else {}
        return {
            "Id": c.id,
            "Name": f"/{c.name}",
            "State": {"Status": "running", "Running": True},
            "Config": {"ExposedPorts": {f"{p}/{proto}": {} for p, proto in c.ports}},
            "HostConfig": {
                "NetworkMode": c.network.name if c.network.index else "default",
                "Links": [f"/{child.name}:/{c.name}/dep"] if child else None,
                "PortBindings": bindings,
            },
            "NetworkSettings": {"Networks": {c.network.name: _endpoint(c)}},
        }


def _hex_id(seed: int, what: str) -> str:
    return hashlib.sha256(f"{seed}:{what}".encode()).hexdigest()


def _dump(value: object) -> str:
    return json.dumps(value, indent=2) + "\n"


def _version() -> dict:
    return {"Version": DOCKER_VERSION, "ApiVersion": DOCKER_API, "Os": "linux", "Arch": "amd64"}


def _network_reply(network: SynthNetwork | str) -> dict:
    if isinstance(network, str):
        return {
            "Name": network,
            "Id": hashlib.sha256(network.encode()).hexdigest(),
            "Driver": "null" if network == "none" else "host",
            "Internal": False,
            "EnableIPv6": False,
            "IPAM": {"Config": []},
            "Options": {},
        }
    options = {"com.docker.network.bridge.name": network.bridge}
    if network.index == 0:
        options["com.docker.network.bridge.default_bridge"] = "true"
    options["com.docker.network.bridge.enable_icc"] = "true" if network.icc else "false"
    gateway = str(network.subnet.network_address + 1)
    return {
        "Name": network.name,
        "Id": network.id,
        "Driver": "bridge",
        "Internal": False,
        "EnableIPv6": False,
        "IPAM": {
            "Driver": "default",
            "Config": [{"Subnet": str(network.subnet), "Gateway": gateway}],
        },
        "Options": options,
        "Containers": {},
    }


def _endpoint(c: SynthContainer) -> dict:
    return {
        "NetworkID": c.network.id,
        "IPAddress": str(c.address),
        "IPPrefixLen": c.network.subnet.prefixlen,
        "Gateway": str(c.network.subnet.network_address + 1),
        "GlobalIPv6Address": "",
    }


def _networks(shape: HostShape) -> tuple[SynthNetwork, ...]:
    made = [
        SynthNetwork(
            0, _hex_id(shape.seed, "net0"), "bridge", DEFAULT_BRIDGE, DEFAULT_SUBNET, icc=False
        )
    ]
    for k in range(1, shape.networks):
        net_id = _hex_id(shape.seed, f"net{k}")
        made.append(
            SynthNetwork(
                k,
                net_id,
                f"net{k}",
                f"br-{net_id[:12]}",
                IPv4Network(f"10.{k}.0.0/16"),
                icc=k % NOICC_EVERY != 0,
            )
        )
    return tuple(made)


def _placement(shape: HostShape) -> list[int]:
    """The network index of each container: docker0 first (enough for the links), then round
    robin over the user networks."""
    if shape.networks == 1:
        return [0] * shape.containers
    on_default = max(shape.links + 1 if shape.links else 0, shape.containers // shape.networks)
    on_default = min(on_default, shape.containers)
    rest = shape.containers - on_default
    return [0] * on_default + [1 + i % (shape.networks - 1) for i in range(rest)]


def _containers(shape: HostShape, networks: tuple[SynthNetwork, ...]) -> tuple[SynthContainer, ...]:
    placed = _placement(shape)
    used = [0] * len(networks)
    made = []
    for i, net_index in enumerate(placed):
        network = networks[net_index]
        used[net_index] += 1
        address = network.subnet.network_address + 1 + used[net_index]  # .1 is the gateway
        ports: tuple[tuple[int, str], ...] = ((80, "tcp"),)
        if i % UDP_EVERY == 0:
            ports += ((53, "udp"),)
        made.append(
            SynthContainer(
                index=i,
                id=_hex_id(shape.seed, f"c{i}"),
                name=f"c{i}",
                network=network,
                address=address,
                ports=ports,
                published=HOST_PORT_BASE + i if i % PUBLISH_EVERY == 0 else None,
                link_child=i - 1 if 1 <= i <= shape.links else None,
            )
        )
    return tuple(made)


def _docker_rules(
    filter_: _Table,
    nat: _Table,
    networks: tuple[SynthNetwork, ...],
    containers: tuple[SynthContainer, ...],
) -> None:
    """Docker 28's rules for these networks and containers, in the order it writes them."""
    for chain in (
        "DOCKER",
        "DOCKER-BRIDGE",
        "DOCKER-CT",
        "DOCKER-FORWARD",
        "DOCKER-ISOLATION-STAGE-1",
        "DOCKER-ISOLATION-STAGE-2",
        "DOCKER-USER",
    ):
        filter_.declare(chain)
    filter_.add("FORWARD", "-j DOCKER-USER")
    filter_.add("FORWARD", "-j DOCKER-FORWARD")
    for c in containers:
        if c.published is not None:
            br = c.network.bridge
            filter_.add(
                "DOCKER", f"-d {c.address}/32 ! -i {br} -o {br} -p tcp -m tcp --dport 80 -j ACCEPT"
            )
    for n in networks:
        filter_.add("DOCKER", f"! -i {n.bridge} -o {n.bridge} -j DROP")
    for parent in containers:
        if parent.link_child is None:
            continue
        child = containers[parent.link_child]
        for port, proto in child.ports:
            common = f"-i {DEFAULT_BRIDGE} -o {DEFAULT_BRIDGE} -p {proto} -m {proto}"
            filter_.add(
                "DOCKER",
                f"-s {parent.address}/32 -d {child.address}/32 {common} --dport {port} -j ACCEPT",
            )
            filter_.add(
                "DOCKER",
                f"-s {child.address}/32 -d {parent.address}/32 {common} --sport {port} -j ACCEPT",
            )
    filter_.add("DOCKER-FORWARD", "-j DOCKER-CT")
    filter_.add("DOCKER-FORWARD", "-j DOCKER-ISOLATION-STAGE-1")
    filter_.add("DOCKER-FORWARD", "-j DOCKER-BRIDGE")
    for n in networks:
        br = n.bridge
        filter_.add("DOCKER-BRIDGE", f"-o {br} -j DOCKER")
        filter_.add("DOCKER-CT", f"-o {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
        if n.icc:
            filter_.add("DOCKER-FORWARD", f"-i {br} -j ACCEPT")
        else:
            filter_.add("DOCKER-FORWARD", f"-i {br} -o {br} -j DROP")
            filter_.add("DOCKER-FORWARD", f"-i {br} ! -o {br} -j ACCEPT")
        filter_.add("DOCKER-ISOLATION-STAGE-1", f"-i {br} ! -o {br} -j DOCKER-ISOLATION-STAGE-2")
        filter_.add("DOCKER-ISOLATION-STAGE-2", f"-o {br} -j DROP")
    nat.declare("DOCKER")
    nat.add("PREROUTING", "-m addrtype --dst-type LOCAL -j DOCKER")
    nat.add("OUTPUT", "! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER")
    for n in networks:
        nat.add("POSTROUTING", f"-s {n.subnet} ! -o {n.bridge} -j MASQUERADE")
    for c in containers:
        if c.published is not None:
            nat.add(
                "DOCKER",
                f"! -i {c.network.bridge} -p tcp -m tcp --dport {c.published} "
                f"-j DNAT --to-destination {c.address}:80",
            )


def _addresses(rng: random.Random, network: IPv4Network, count: int) -> list[IPv4Address]:
    if count > network.num_addresses - 2:
        raise ValueError(f"{count} addresses do not fit in {network}")
    base = int(network.network_address) + 1
    return [
        IPv4Address(base + offset) for offset in rng.sample(range(network.num_addresses - 2), count)
    ]


def _further_rules(
    filter_: _Table, shape: HostShape, rng: random.Random
) -> dict[str, list[IPv4Address]]:
    """The R rules a real host adds; returns the ipset sets (name -> members) they match."""
    total = shape.rules
    host_chains = int(total * SHARE_HOST_CHAINS) // 3
    bans = int(total * SHARE_FAIL2BAN)
    drops = int(total * SHARE_USER_DROP)
    sets = max(1, total // 2000) if total else 0
    inputs = max(0, total - bans - drops - 3 * host_chains - RULES_PER_SET * sets)
    filter_.add("INPUT", "-i lo -j ACCEPT")
    filter_.add("INPUT", "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
    jails = F2B_JAILS[: min(len(F2B_JAILS), max(1, bans // 50))] if bans else ()
    for number, jail in enumerate(jails):
        filter_.add("INPUT", f"-p tcp -m multiport --dports {22 + number} -j f2b-{jail}")
    for number, address in enumerate(_addresses(rng, BANNED, bans)):
        filter_.add(
            f"f2b-{jails[number % len(jails)]}",
            f"-s {address}/32 -j REJECT --reject-with icmp-port-unreachable",
        )
    for jail in jails:
        filter_.add(f"f2b-{jail}", "-j RETURN")
    members: dict[str, list[IPv4Address]] = {}
    per_set = max(1, total // max(1, 2 * sets)) if sets else 0
    pool = _addresses(rng, SET_MEMBERS, per_set * sets)
    for number in range(sets):
        name = f"blocklist-{number}"
        members[name] = pool[number * per_set : (number + 1) * per_set]
        filter_.add("DOCKER-USER", f"-m set --match-set {name} src -j DROP")
        filter_.add("INPUT", f"-m set --match-set {name} src -j DROP")
    for address in _addresses(rng, USER_DROPPED, drops):
        filter_.add("DOCKER-USER", f'-s {address}/32 -m comment --comment "abuse report" -j DROP')
    for number, address in enumerate(_addresses(rng, HOST_CHAINED, host_chains)):
        chain = f"HOST-{number}"
        filter_.add("DOCKER-USER", f"-s {address}/32 -j {chain}")
        filter_.add(chain, "-p tcp -m tcp --dport 22 -j ACCEPT")
        filter_.add(chain, "-j DROP")
    for number in range(inputs):
        admin = ADMINS.network_address + 1 + number % 250
        filter_.add("INPUT", f"-s {admin}/32 -p tcp -m tcp --dport {1024 + number} -j ACCEPT")
    filter_.add("DOCKER-USER", "-j RETURN")
    return members


def _ipset_text(members: dict[str, list[IPv4Address]]) -> str:
    lines = []
    for name, addresses in members.items():
        lines.append(
            f"create {name} hash:ip family inet hashsize 1024 maxelem {max(65536, len(addresses))}"
        )
        lines.extend(f"add {name} {address}" for address in addresses)
    return "".join(line + "\n" for line in lines)


def _nft_json(tables: tuple[_Table, ...]) -> str:
    """`nft -j list ruleset` of an iptables-nft host: its tables, chains and one rule object per
    rule (the exporter takes only the table names of iptables-nft's tables from it)."""
    hooks = {
        "PREROUTING": "prerouting",
        "INPUT": "input",
        "FORWARD": "forward",
        "OUTPUT": "output",
        "POSTROUTING": "postrouting",
    }
    objects: list[dict] = [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]
    handle = 0
    for number, table in enumerate(tables, 1):
        objects.append({"table": {"family": "ip", "name": table.name, "handle": number}})
        for chain in table.chains:
            handle += 1
            body: dict = {"family": "ip", "table": table.name, "name": chain, "handle": handle}
            if chain in table.builtin:
                kind = "nat" if table.name == "nat" else "filter"
                prio = -100 if table.name == "nat" and chain != "POSTROUTING" else 0
                prio = 100 if table.name == "nat" and chain == "POSTROUTING" else prio
                body |= {"type": kind, "hook": hooks[chain], "prio": prio, "policy": "accept"}
            objects.append({"chain": body})
        for chain, rules in table.chains.items():
            for _rule in rules:
                handle += 1
                objects.append(
                    {
                        "rule": {
                            "family": "ip",
                            "table": table.name,
                            "chain": chain,
                            "handle": handle,
                            "expr": [
                                {"counter": {"packets": 0, "bytes": 0}},
                                {"xt": {"type": "target", "name": "standard"}},
                            ],
                        }
                    }
                )
    return json.dumps({"nftables": objects}) + "\n"


def build_host(shape: HostShape) -> SynthHost:
    rng = random.Random(shape.seed)
    networks = _networks(shape)
    containers = _containers(shape, networks)
    filter_ = _Table("filter", ("INPUT", "FORWARD", "OUTPUT"))
    nat = _Table("nat", ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"))
    _docker_rules(filter_, nat, networks, containers)
    docker_rules = sum(len(r) for t in (filter_, nat) for r in t.chains.values())
    members = _further_rules(filter_, shape, rng)
    rule_count = sum(len(r) for t in (filter_, nat) for r in t.chains.values())
    # Docker sets FORWARD's policy to DROP when it enabled ip_forward itself.
    save = filter_.save_text({"FORWARD": "DROP"}) + nat.save_text({})
    return SynthHost(
        shape=shape,
        networks=networks,
        containers=containers,
        iptables_save=save,
        ipset_save=_ipset_text(members),
        rule_count=rule_count,
        docker_rule_count=docker_rules,
        nft_json=_nft_json((filter_, nat)),
    )


def write_host(host: SynthHost, out: Path) -> Path:
    """Write OUT/snapshot, OUT/iptables.rules and OUT/ipset.rules; returns the snapshot dir."""
    out.mkdir(parents=True, exist_ok=True)
    snapshot = out / "snapshot"
    shape = host.shape
    meta = {
        "synthetic": {
            "containers": shape.containers,
            "networks": shape.networks,
            "links": shape.links,
            "further_rules": shape.rules,
            "seed": shape.seed,
            "rules": host.rule_count,
        }
    }
    write_snapshot(snapshot, host.snapshot_files(), meta)
    (out / "iptables.rules").write_text(host.iptables_save)
    (out / "ipset.rules").write_text(host.ipset_save)
    return snapshot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, required=True)
    parser.add_argument("--networks", type=int, default=4)
    parser.add_argument("--links", type=int, default=0)
    parser.add_argument("--rules", type=int, default=0, help="further rules beyond Docker's")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="a new or empty directory")
    args = parser.parse_args()
    try:
        shape = HostShape(args.containers, args.networks, args.links, args.rules, args.seed)
    except ValueError as error:
        parser.error(str(error))
    host = build_host(shape)
    snapshot = write_host(host, args.out)
    print(f"{snapshot}: {host.rule_count} rules ({host.docker_rule_count} Docker's)")


if __name__ == "__main__":
    main()
