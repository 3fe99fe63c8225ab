"""A normalized firewall ruleset: table -> chains (policy, ordered rules) -> rule.

One model serves iptables, ip6tables and ebtables dumps. A rule keeps its original text and a parse
of it: the builtin matches (-s, -d, -i, -o, -p, ...) as module "", then each `-m NAME` module with
its options, then the target (`-j`) or goto (`-g`) with the target's options. Options are not
interpreted here; the evaluator decides which ones it understands.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from ipaddress import ip_network
from typing import Literal

Family = Literal["ipv4", "ipv6", "bridge"]
Backend = Literal["nft", "legacy"]

# The chains dockerd creates in table filter (DOCKER-FORWARD since Docker 28): the backend whose
# ruleset holds one of them is the one dockerd writes to.
DOCKER_CHAINS = ("DOCKER", "DOCKER-FORWARD", "DOCKER-USER")


@dataclass(frozen=True)
class Option:
    """One option of a match or target: `! --dport 80` is Option("--dport", ("80",), True)."""

    name: str
    args: tuple[str, ...] = ()
    negated: bool = False

    def __str__(self) -> str:
        return " ".join(("!", self.name, *self.args) if self.negated else (self.name, *self.args))


@dataclass(frozen=True)
class Match:
    """A match module and its options; module "" holds the builtin matches."""

    module: str
    options: tuple[Option, ...] = ()

    def __str__(self) -> str:
        words = [str(option) for option in self.options]
        return " ".join([f"-m {self.module}", *words] if self.module else words)


@dataclass(frozen=True)
class Rule:
    chain: str
    # 1-based position in its chain, as `iptables -L --line-numbers` counts.
    position: int
    # The line as the dump printed it, e.g. "-A DOCKER -s 10.0.0.2/32 -j ACCEPT".
    text: str
    matches: tuple[Match, ...] = ()
    target: str | None = None
    target_options: tuple[Option, ...] = ()
    goto: bool = False
    # Set when the line could not be parsed, or holds a value the kernel could never print.
    error: str | None = None
    # 1-based line of the dump it came from (0 when not from a dump); not part of its identity.
    line: int = field(default=0, compare=False)

    @property
    def spec(self) -> str:
        """The rule without `-A CHAIN`, as `iptables -D CHAIN <spec>` takes it."""
        head = f"-A {self.chain} "
        return self.text[len(head) :] if self.text.startswith(head) else self.text

    def options(self, module: str | None = None) -> tuple[Option, ...]:
        """Every option of the rule's matches (of one module when given)."""
        return tuple(
            option
            for match in self.matches
            if module is None or match.module == module
            for option in match.options
        )


def built_rule(chain: str, matches: tuple[Match, ...], target: str) -> Rule:
    """A rule made here rather than read from a dump (what Docker must have written), with its
    text as iptables-save prints it, so it reads like the rules of a dump."""
    words = [f"-A {chain}", *(str(match) for match in matches), f"-j {target}"]
    return Rule(chain, 0, " ".join(words), matches, target)


@lru_cache(maxsize=65536)
def _canonical_address(text: str) -> str:
    """`-s`/`-d` as one spelling (10.0.0.1 and 10.0.0.1/32 alike); cached: a check compares the
    rules of the same few thousand hosts again and again."""
    try:
        return str(ip_network(text, strict=False))
    except ValueError:
        return text  # a name, kept as printed: it can only equal itself


def rule_identity(rule: Rule) -> tuple[frozenset[tuple[str, str, tuple[str, ...], bool]], str]:
    """A rule's meaning regardless of how a tool printed it (option order, /32 or not): two rules
    with the same identity match the same packets and do the same to them."""
    options = set()
    for match in rule.matches:
        for option in match.options:
            args = option.args
            if option.name in ("-s", "-d") and len(args) == 1:
                args = (_canonical_address(args[0]),)
            options.add((match.module, option.name, args, option.negated))
    return frozenset(options), rule.target or ""


@dataclass(frozen=True)
class Chain:
    name: str
    # "ACCEPT"/"DROP" for builtin chains, None for user-defined ones.
    policy: str | None
    rules: tuple[Rule, ...] = ()

    @property
    def builtin(self) -> bool:
        return self.policy is not None


@dataclass(frozen=True)
class Table:
    name: str
    chains: dict[str, Chain] = field(default_factory=dict)


@dataclass(frozen=True)
class UnknownLine:
    """A dump line the parser did not understand: kept, never dropped silently."""

    number: int
    text: str
    reason: str
    # The table open at that line, None outside any table.
    table: str | None = None


@dataclass(frozen=True)
class Ruleset:
    """Every table of one family as one backend holds it."""

    family: Family
    backend: Backend
    tables: dict[str, Table] = field(default_factory=dict)
    unknown_lines: tuple[UnknownLine, ...] = ()
    # Comment lines the tool printed, such as "# Warning: iptables-legacy tables present".
    warnings: tuple[str, ...] = ()

    def chain(self, table: str, chain: str) -> Chain | None:
        found = self.tables.get(table)
        return found.chains.get(chain) if found else None

    @property
    def rule_count(self) -> int:
        return sum(len(c.rules) for t in self.tables.values() for c in t.chains.values())

    @property
    def empty(self) -> bool:
        """No rules and every builtin policy ACCEPT: this backend decides nothing."""
        return self.rule_count == 0 and all(
            c.policy in (None, "ACCEPT") for t in self.tables.values() for c in t.chains.values()
        )


@dataclass(frozen=True)
class IPSet:
    """An ipset as `ipset save` prints it: its type (hash:net, ...) and its members."""

    name: str
    type: str
    family: str  # "inet" or "inet6"
    members: tuple[str, ...] = ()


def holds_docker_chains(ruleset: Ruleset) -> bool:
    return any(ruleset.chain("filter", name) is not None for name in DOCKER_CHAINS)


def docker_backend(rulesets: Iterable[Ruleset]) -> Backend | None:
    """The backend of the first ruleset holding Docker's chains; None when none does (dockerd runs
    with --iptables=false, or its rules were flushed)."""
    return next((r.backend for r in rulesets if holds_docker_chains(r)), None)
