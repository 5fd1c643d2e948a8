"""mta.routing — where an address goes: an ordered tuple of named stages over the maps.

SYNOPSIS
    router = Router(config, Maps.from_config(config))
    res = router.resolve("list@example.com")
    res.destinations              # (LocalMailbox("bob"), RemoteDest("x@y.org"), ...)
    res.envelope_sender_override  # "owner-list@host.example.com" or None
    for step in res.trace: print(step)   # stage  input -> output

STAGES (Router.STAGES, in this order; CONVENTIONS.md "The message's path is data")
    local-host-names  classify the domain: local (hostname, localhost, local-host-names),
                      virtual (a domain with a virtusertable key) or remote
    virtusertable     local/virtual qualified addresses: rewrite (user, address, %1
                      catch-all) or error:; a virtual domain without a match is unknown
    aliases           local names: expand targets (addresses, \\user, /file, |program,
                      :include:, error:), recursively; owner-LIST becomes the envelope
                      sender of LIST's expansion (sendmail, Postfix local(8))
    users             local names left: the user's mailbox (user+detail -> user),
                      otherwise 550 5.1.1 User unknown
    local-or-remote   what is not local is delivered by SMTP (RemoteDest)

    Every address produced by virtusertable or aliases goes through all stages again,
    so an alias to user@virtual.example is rewritten by virtusertable, as in sendmail.

SEMANTICS
    * Domains are case-insensitive; alias names and user names are looked up
      case-insensitively (sendmail folds both); remote local parts keep their case.
    * An alias naming itself (``bob: bob, bob@elsewhere``) delivers to the mailbox,
      as sendmail does.  Any other cycle ends where it comes back (an alias or an
      :include: reached again is a duplicate, as in sendmail and Postfix): the other
      members are delivered; when the cycle leaves nothing to deliver, it is a loop:
      Reject 554 5.4.6 (RFC 3463 "routing loop detected").  Nesting deeper than
      MAX_DEPTH (10, sendmail's MaxAliasRecursion) is rejected the same way.
    * A name reached twice through different lists gets one delivery (duplicate
      suppression).  Destinations keep the order in which they were found.
    * ``/dev/null`` as a file target is Discard.
    * Per-member failures (an unknown user in a list, an error: target) are ErrorDest
      destinations, so the rest of a list is still delivered; when *nothing but* errors
      remains, resolve raises Reject (5xx) or Defer (4xx) with the first one.

ERRORS (typed early exits, caught by the caller in one place)
    Reject(reply)   permanent: loops, an address that resolves only to failures
    Defer(reply)    temporary: a map or an :include: file is unreadable (MapUnavailable),
                    postmaster without any mailbox
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Mapping, Protocol

from . import reply as R
from .config import Config
from .maps import Maps, MapUnavailable
from .maps.names import NameSyntaxError, split_address
from .quoting import leading_quoted
from .maps.targets import (
    AddressTarget,
    ErrorTarget,
    FileTarget,
    IncludeTarget,
    MailboxTarget,
    ProgramTarget,
    Target,
)
from .maps.aliases import read_include
from .reply import Reply

__all__ = [
    "Address",
    "LocalMailbox",
    "ProgramDest",
    "FileDest",
    "RemoteDest",
    "ErrorDest",
    "Discard",
    "Destination",
    "DomainClass",
    "RoutingExit",
    "Reject",
    "Defer",
    "TraceStep",
    "Resolution",
    "Router",
    "parse_address",
    "MAX_DEPTH",
]

log = logging.getLogger(__name__)

MAX_DEPTH = 10  # sendmail MaxAliasRecursion

LOOP = Reply(554, "5.4.6", "Aliasing/forwarding loop detected")
TOO_DEEP = Reply(554, "5.4.6", f"Aliasing/forwarding nested deeper than {MAX_DEPTH} levels")
UNKNOWN_VIRTUAL = Reply(550, "5.1.1", "User unknown in virtual user table")
MAP_UNAVAILABLE = Reply(451, "4.3.0", "Address lookup failed, try again later")
NO_POSTMASTER = Reply(451, "4.3.5", "No mailbox for postmaster; alias it to a user")


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Address:
    local: str
    domain: str | None  # None: an unqualified, local name

    def __str__(self) -> str:
        return self.local if self.domain is None else f"{self.local}@{self.domain}"


def _unquote_local(local: str) -> str:
    """A quoted local part as the name it quotes ("bob" is bob, RFC 5321 4.1.2):
    quotes dropped, backslash escapes resolved; any other local part as it is."""
    quoted = leading_quoted(local)
    return quoted[0] if quoted is not None and not quoted[1] else local


def parse_address(text: str) -> Address:
    """An Address from ``local``, ``local@domain`` or ``<...>``; NameSyntaxError if bad."""
    local, domain = split_address(text)
    return Address(local, domain)


@dataclass(frozen=True, slots=True)
class LocalMailbox:
    user: str
    detail: str | None = None  # the +detail of user+detail, for rules ($1 of procmail -a)


@dataclass(frozen=True, slots=True)
class ProgramDest:
    command: str
    user: str | None = None  # None: the unprivileged default user (sendmail DefaultUser)


@dataclass(frozen=True, slots=True)
class FileDest:
    path: str


@dataclass(frozen=True, slots=True)
class RemoteDest:
    address: str


@dataclass(frozen=True, slots=True)
class ErrorDest:
    reply: Reply
    # the list member that failed (an unknown user reached through an alias): named in
    # the bounce, never in the SMTP reply (the client must not learn a list's members)
    member: str | None = None

    @property
    def report(self) -> Reply:
        """The reply as a bounce shows it."""
        return self.reply.with_text(f"<{self.member}>: {self.reply.text}") if self.member else self.reply


@dataclass(frozen=True, slots=True)
class Discard:
    pass


Destination = LocalMailbox | ProgramDest | FileDest | RemoteDest | ErrorDest | Discard


class DomainClass(StrEnum):
    LOCAL = "local"
    VIRTUAL = "virtual"
    REMOTE = "remote"


class RoutingExit(Exception):
    """An early exit of resolution, carrying the reply that explains it."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class Reject(RoutingExit):
    """The address can never be delivered (5xx)."""


class Defer(RoutingExit):
    """The address cannot be resolved now; try again later (4xx)."""


@dataclass(frozen=True, slots=True)
class TraceStep:
    stage: str
    input: str
    output: str

    def __str__(self) -> str:
        return f"{self.stage:<17} {self.input} -> {self.output}"


@dataclass(frozen=True, slots=True)
class Resolution:
    destinations: tuple[Destination, ...]
    envelope_sender_override: str | None  # owner-LIST of the list the address named
    # (stage name, the address it was given, what it decided) for each stage run; see trace
    steps: tuple[tuple[str, Address, "StageResult"], ...]
    domain_class: DomainClass
    # The innermost owner-LIST for destinations that came through a list with an owner
    # (a nested list's owner wins for its own members, as in sendmail).
    owners: Mapping[Destination, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def trace(self) -> tuple[TraceStep, ...]:
        """The steps as text, made when asked for: every RCPT and every delivery
        resolves, and formatting each step cost about a quarter of a resolve."""
        return tuple(TraceStep(stage, str(address), _describe(result))
                     for stage, address, result in self.steps)


# --------------------------------------------------------------------------- stages


@dataclass(frozen=True, slots=True)
class _Item:
    """One address on its way through the stages."""

    address: Address
    kind: DomainClass | None = None  # set by local-host-names
    depth: int = 0
    ancestors: tuple[str, ...] = ()  # loop keys of the aliases/rewrites that led here
    owner: str | None = None
    no_alias: bool = False  # \user or self-reference: the mailbox, never aliases

    @property
    def key(self) -> str:
        a = self.address
        if a.domain is None:
            return a.local.lower()
        return f"{a.local.lower()}@{a.domain}"


@dataclass(frozen=True, slots=True)
class _Cycle:
    """An :include: met again inside itself: nothing more to route there."""

    chain: str


@dataclass(slots=True)
class _Run:
    """The state of one resolve() call."""

    destinations: list[Destination] = field(default_factory=list)
    owners: dict[Destination, str] = field(default_factory=dict)
    steps: list[tuple[str, Address, "StageResult"]] = field(default_factory=list)
    done: set[str] = field(default_factory=set)
    top_owner: str | None = None
    kind: DomainClass | None = None  # of the address resolve() was given
    loop: str | None = None          # the first cycle met ("a -> b -> a")

    def add(self, dest: Destination, owner: str | None) -> None:
        if dest not in self.destinations:
            self.destinations.append(dest)
            if owner is not None:
                self.owners[dest] = owner


@dataclass(frozen=True, slots=True)
class Continue:
    item: _Item
    note: str = "no match"  # for the trace


@dataclass(frozen=True, slots=True)
class Expanded:
    """The item was replaced, in target order: new items go through every stage,
    destinations are final."""

    entries: tuple["_Item | Destination | _Cycle", ...]
    owner: str | None = None  # the owner-LIST the destinations belong to


@dataclass(frozen=True, slots=True)
class Done:
    destinations: tuple[Destination, ...]


StageResult = Continue | Expanded | Done


class Stage(Protocol):
    name: str

    def run(self, item: _Item, run: _Run) -> StageResult: ...


def _describe(result: StageResult) -> str:
    match result:
        case Continue(_, note):
            return note
        case Expanded(entries, _):
            parts = [str(e.address) if isinstance(e, _Item) else _dest_text(e) for e in entries]
            return ", ".join(parts) or "(nothing)"
        case Done(dests):
            return ", ".join(_dest_text(d) for d in dests)


def _dest_text(d: Destination) -> str:
    match d:
        case LocalMailbox(user, detail):
            return f"mailbox:{user}" + (f"+{detail}" if detail else "")
        case ProgramDest(command, _):
            return f'program:"{command}"'
        case FileDest(path):
            return f"file:{path}"
        case RemoteDest(address):
            return f"smtp:{address}"
        case ErrorDest(reply):
            return f"error:{reply.code} {reply.enhanced} {reply.text}"
        case Discard():
            return "discard"


class LocalHostNamesStage:
    name = "local-host-names"

    def __init__(self, maps: Maps) -> None:
        self.maps = maps

    def classify(self, domain: str | None) -> DomainClass:
        if domain is None or self.maps.local_host_names.lookup(domain):
            return DomainClass.LOCAL
        vt = self.maps.virtusertable
        if vt is not None and domain.lower() in vt.domains():
            return DomainClass.VIRTUAL
        return DomainClass.REMOTE

    def run(self, item: _Item, run: _Run) -> StageResult:
        kind = self.classify(item.address.domain)
        return Continue(replace(item, kind=kind), str(kind))


class VirtusertableStage:
    name = "virtusertable"

    def __init__(self, maps: Maps) -> None:
        self.maps = maps

    def run(self, item: _Item, run: _Run) -> StageResult:
        vt, a = self.maps.virtusertable, item.address
        if vt is None or a.domain is None or item.kind == DomainClass.REMOTE or item.no_alias:
            return Continue(item, "skipped")
        hit = vt.lookup(a.local, a.domain)
        if hit is None:
            if item.kind == DomainClass.VIRTUAL:
                return Done((ErrorDest(UNKNOWN_VIRTUAL),))
            return Continue(item)
        match hit.target:
            case ErrorTarget(reply, _):
                return Done((ErrorDest(reply),))
            case AddressTarget(local, domain):
                child = _Item(Address(local, domain), depth=item.depth + 1,
                              ancestors=item.ancestors + (item.key,), owner=item.owner)
                return Expanded((child,), item.owner)
        raise AssertionError(f"virtusertable target {hit.target!r} passed load-time checks")


class AliasesStage:
    name = "aliases"

    def __init__(self, maps: Maps, hostname: str) -> None:
        self.maps, self.hostname = maps, hostname

    def run(self, item: _Item, run: _Run) -> StageResult:
        aliases = self.maps.aliases
        if aliases is None or item.kind != DomainClass.LOCAL or item.no_alias:
            return Continue(item, "skipped")
        local = _unquote_local(item.address.local)
        user, plus, _detail = local.partition("+")
        # sendmail: user+detail, then user+*, then user
        candidates = [local] + ([f"{user}+*", user] if plus else [])
        alias = next((a for c in candidates if (a := aliases.lookup(c)) is not None), None)
        if alias is None:
            return Continue(item)
        owner = item.owner
        if not alias.name.startswith("owner-") and aliases.owner(alias.name) is not None:
            owner = f"owner-{alias.name}@{self.hostname}"
            if item.depth == 0:
                run.top_owner = owner
        entries: list[_Item | Destination | _Cycle] = []
        self._expand(alias.targets, alias.name, item, owner, entries, includes=())
        return Expanded(tuple(entries), owner)

    def _expand(self, targets: tuple[Target, ...], name: str, item: _Item, owner: str | None,
                out: list[_Item | Destination | _Cycle], includes: tuple[str, ...]) -> None:
        ancestors = item.ancestors + (item.key,) + includes
        depth = item.depth + 1 + len(includes)
        for t in targets:
            match t:
                case AddressTarget(local, domain):
                    # "bob: bob, bob@elsewhere": the alias's own name means the mailbox
                    # (sendmail's self-reference), also when qualified with a local domain.
                    own = local.lower() == name and (
                        domain is None or self.maps.local_host_names.lookup(domain))
                    out.append(_Item(Address(local, domain), depth=depth, ancestors=ancestors,
                                     owner=owner, no_alias=own))
                case MailboxTarget(user):
                    out.append(_Item(Address(user, None), depth=depth, ancestors=ancestors,
                                     owner=owner, no_alias=True))
                case FileTarget(path):
                    out.append(Discard() if path == "/dev/null" else FileDest(path))
                case ProgramTarget(command):
                    out.append(ProgramDest(command))
                case ErrorTarget(reply, _):
                    out.append(ErrorDest(reply))
                case IncludeTarget(path):
                    key = f":include:{path}"
                    if key in ancestors:
                        out.append(_Cycle(f"{key} includes itself"))
                        continue
                    if depth + 1 > MAX_DEPTH:
                        raise Reject(TOO_DEEP)
                    try:
                        inc_targets, diags = read_include(path)
                    except MapUnavailable as exc:
                        log.warning("alias %s: %s", name, exc)
                        raise Defer(MAP_UNAVAILABLE.with_text(f"Cannot read an included list of {name}")) from exc
                    for d in diags:
                        log.warning("%s", d)
                    self._expand(inc_targets, name, item, owner, out, includes + (key,))


# Postfix's default command_expansion_filter: what $EXTENSION may hold when it reaches
# a mailbox_command (other bytes become "_")
_EXTENSION_CHARS = frozenset(b"1234567890!@%-_=+:,./abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def extension_for_rules(detail: str, address: str) -> str | None:
    """The +detail of ``user+detail`` as the recipient's rules get it ($1, procmail -a).

    The sender picks it, and the usual rule files by it (``:0: * ? test -n "$1"
    lists/$1``), so it is made safe as Postfix local(8) makes $EXTENSION: one with a
    "/" is dropped ("address with illegal extension": the mail goes to the user as if
    it had none; ``prtest+/etc/x`` or ``prtest+../x`` was appended to that path), and
    it is folded to lower case with every byte outside Postfix's
    command_expansion_filter (shell metacharacters, blanks, 8-bit bytes) made "_"."""
    if "/" in detail:
        log.warning("%s: address with illegal extension: %s", address, detail)
        return None
    raw = detail.lower().encode("utf-8", "surrogateescape")
    return "".join(chr(b) if b in _EXTENSION_CHARS else "_" for b in raw)


class UsersStage:
    name = "users"

    def __init__(self, maps: Maps) -> None:
        self.maps = maps

    def run(self, item: _Item, run: _Run) -> StageResult:
        if item.kind != DomainClass.LOCAL:
            return Continue(item, "skipped")
        local = _unquote_local(item.address.local)
        name, plus, detail = local.partition("+")
        user = self.maps.users.lookup(name) if name else None
        if user is not None:
            return Done((LocalMailbox(user.name, extension_for_rules(detail, str(item.address)) if plus else None),))
        if name.lower() == "postmaster":
            # RFC 5321 4.5.1: postmaster must always be deliverable.  Without an alias,
            # fall back to root as sendmail's and Postfix's stock aliases do.
            root = self.maps.users.lookup("root")
            if root is not None:
                return Done((LocalMailbox(root.name),))
            raise Defer(NO_POSTMASTER)
        # a list's member: its bounce (to the list's owner, or the sender) must name the
        # member, not the list (Postfix: "<member@host>: unknown user")
        return Done((ErrorDest(R.USER_UNKNOWN, str(item.address) if item.depth else None),))


class LocalOrRemoteStage:
    name = "local-or-remote"

    def run(self, item: _Item, run: _Run) -> StageResult:
        if item.kind != DomainClass.REMOTE:  # earlier stages always decide ours
            raise AssertionError(f"local address {item.address} left unrouted")
        return Done((RemoteDest(str(item.address)),))


# --------------------------------------------------------------------------- router


class Router:
    """Resolves addresses through STAGES over the maps it is given (never globals)."""

    STAGES = ("local-host-names", "virtusertable", "aliases", "users", "local-or-remote")

    def __init__(self, config: Config, maps: Maps) -> None:
        self.config, self.maps = config, maps
        self._classifier = LocalHostNamesStage(maps)
        self.stages: tuple[Stage, ...] = (
            self._classifier,
            VirtusertableStage(maps),
            AliasesStage(maps, config.server.hostname),
            UsersStage(maps),
            LocalOrRemoteStage(),
        )
        assert tuple(s.name for s in self.stages) == self.STAGES

    def classify(self, domain: str | None) -> DomainClass:
        """Whether mail for ``domain`` is ours (local/virtual) or to be relayed.

        Raises Defer when a map needed to decide is unavailable.
        """
        try:
            return self._classifier.classify(domain)
        except MapUnavailable as exc:
            log.warning("%s", exc)
            raise Defer(MAP_UNAVAILABLE) from exc

    def resolve(self, address: str | Address) -> Resolution:
        """Every destination of ``address``; raises Reject or Defer (see module doc)."""
        if isinstance(address, str):
            try:
                address = parse_address(address)
            except NameSyntaxError as exc:
                raise Reject(R.BAD_ADDRESS.with_text(f"Bad address syntax: {exc}")) from exc
        run = _Run()
        first = _Item(address)
        try:
            self._route(first, run)
        except MapUnavailable as exc:
            log.warning("%s", exc)
            raise Defer(MAP_UNAVAILABLE) from exc
        if not run.destinations and run.loop is not None:
            raise Reject(LOOP.with_text(f"{LOOP.text}: {run.loop}"))
        if run.destinations and all(isinstance(d, ErrorDest) for d in run.destinations):
            reply = run.destinations[0].reply  # type: ignore[union-attr]
            raise (Defer if reply.is_temporary else Reject)(reply)
        return Resolution(
            destinations=tuple(run.destinations),
            envelope_sender_override=run.top_owner,
            steps=tuple(run.steps),
            domain_class=run.kind or DomainClass.LOCAL,
            owners=MappingProxyType(dict(run.owners)),
        )

    def _route(self, item: _Item, run: _Run) -> None:
        key = item.key
        if key in item.ancestors and not item.no_alias:  # a mailbox cannot expand again
            chain = " -> ".join(item.ancestors[item.ancestors.index(key):] + (key,))
            run.loop = run.loop or chain
            return
        if item.depth > MAX_DEPTH:
            raise Reject(TOO_DEEP)
        done_key = f"{key}\0{item.no_alias}"
        if done_key in run.done:
            return  # duplicate suppression: already routed in this resolution
        run.done.add(done_key)
        for stage in self.stages:
            result = stage.run(item, run)
            run.steps.append((stage.name, item.address, result))
            match result:
                case Continue(item):
                    if run.kind is None:
                        run.kind = item.kind
                    continue
                case Expanded(entries, owner):
                    for entry in entries:
                        if isinstance(entry, _Item):
                            self._route(entry, run)
                        elif isinstance(entry, _Cycle):
                            run.loop = run.loop or entry.chain
                        else:
                            run.add(entry, owner)
                    return
                case Done(dests):
                    for d in dests:
                        run.add(d, item.owner)
                    return
        raise AssertionError("the last stage always decides")
