"""A snapshot: the raw files every source fetched, in one directory, so a check can be rerun
offline (`check --snapshot DIR`) with the same parse code and the same verdicts.

Layout (file -> what printed it):

- docker-version.json      Docker API GET /version
- docker-networks.json     Docker API GET /networks
- docker-containers.json   Docker API GET /containers/json (running containers)
- docker-inspect.json      JSON array of GET /containers/ID/json, one per listed container
- dockerd-cmdline.txt      /proc/PID/cmdline of the judged dockerd, one argv element per line
                           (absent when no dockerd process was visible)
- daemon.json              dockerd's config file (absent when not readable)
- sysctl.txt               bridge-nf-call-iptables / bridge-nf-call-ip6tables / net.ipv4.ip_forward
                           from /proc/sys, `key=value`, value `absent` or `unreadable` when so
- iptables-save.txt        iptables-nft-save or iptables-legacy-save: the primary backend's dump
- iptables-nft-save.txt    the other backend's dump, whenever its tool is installed (one of these
- iptables-legacy-save.txt two; also when it holds nothing: its tables are checked against nft's)
- firewall-backend.txt     "nft" or "legacy": the backend iptables-save.txt came from
- iptables-legacy-tables.txt  /proc/net/ip_tables_names: the kernel's legacy tables, one a line
                           (empty when the file is absent: no legacy table is loaded); each must
                           be in the legacy dump. Older snapshots lack it and skip that check.
- ip6tables-save.txt, ip6tables-nft-save.txt, ip6tables-legacy-save.txt,
  firewall-backend-ipv6.txt, ip6tables-legacy-tables.txt (/proc/net/ip6_tables_names)
                           the same for IPv6 (ip6tables-*-save)
- ebtables-save.txt        ebtables-nft-save (else ebtables-save); empty, not run, without
                           nf_tables
- ebtables-legacy-save.txt ebtables-legacy-save, when the legacy ebtables module is loaded
- ipset-save.txt           ipset save (empty, not run, when the kernel has no ip_set)
- nft-chains.json          nft -j list chains: every table that has a chain, without rules
- nft-table-FAMILY-NAME.json  nft -j list table FAMILY NAME, one per table in nft-chains.json that
                           no save tool prints (NAME %-escaped); iptables-nft's and ebtables-nft's
                           tables are read once, by their save tools
- nft-ruleset.json         {"nftables": []} when the kernel has no nf_tables; in older snapshots
                           nft -j list ruleset (parsed as before when nft-chains.json is absent)
- SOURCE-kernel.txt        iptables, ip6tables, ebtables, ipset, nftables: per kernel module the
                           source's tools need, "MODULE present|absent|run: EVIDENCE". A tool
                           whose module is absent never ran (it would make the kernel load it);
                           its dump is empty. Older snapshots lack these files: nothing changes,
                           since the dumps themselves hold what was decided.
- meta.json                written by write_snapshot: exporter version, time, hostname, and what
                           the caller adds (which sources were read, which failed and why)

A file a source could not fetch is simply missing; its parse then raises SourceError, as it would
live. A dump that is not whole (a table cut short, a line no save tool prints, a value the kernel
could never hold, a table nft lists but the dump lacks) also fails its source: never evidence.
Files are written and read byte for byte (UTF-8, undecodable bytes kept via surrogateescape).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path

from exporter import __version__
from exporter.sources.base import SourceError

META_FILE = "meta.json"


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise SourceError(f"snapshot: {name!r} is not a plain file name")
    if name == META_FILE:
        raise SourceError(f"snapshot: {META_FILE} is written by the snapshot itself")


def write_snapshot(directory: Path, files: Mapping[str, str], meta: Mapping[str, object]) -> None:
    """Write `files` and meta.json into `directory` (created; it must not hold anything yet)."""
    directory = Path(directory)
    for name in files:
        _check_name(name)
    if directory.exists() and not directory.is_dir():
        raise SourceError(f"snapshot: {directory} exists and is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if any(directory.iterdir()):
            raise SourceError(
                f"snapshot: {directory} is not empty; choose a new directory "
                "(a snapshot never overwrites another)"
            )
        for name, text in files.items():
            with open(
                directory / name, "w", encoding="utf-8", errors="surrogateescape", newline=""
            ) as handle:
                handle.write(text)
        document = {
            "exporter_version": __version__,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "hostname": socket.gethostname(),
            "files": sorted(files),
            **meta,
        }
        with open(directory / META_FILE, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2, sort_keys=True, default=str)
            handle.write("\n")
    except OSError as error:
        raise SourceError(
            f"snapshot: cannot write {directory}: {error.strerror or error}"
        ) from None


def read_snapshot(directory: Path) -> dict[str, str]:
    """Every regular file of a snapshot directory (meta.json included), by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SourceError(f"snapshot: {directory} is not a directory; give a snapshot directory")
    files: dict[str, str] = {}
    try:
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            if entry.is_file(follow_symlinks=False):
                with open(
                    entry.path, encoding="utf-8", errors="surrogateescape", newline=""
                ) as handle:
                    files[entry.name] = handle.read()
    except OSError as error:
        raise SourceError(f"snapshot: cannot read {directory}: {error.strerror or error}") from None
    return files
