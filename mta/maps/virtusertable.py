"""mta.maps.virtusertable — sendmail's virtusertable: virtual addresses to real ones.

FORMAT (sendmail cf/README, FEATURE(virtusertable))
    info@example.com        jdoe                    a local user (or alias)
    sales@example.com       jdoe@other.example      a remote or local address
    @example.net            %1@example.com          catch-all; %1 is the user part
    @example.org            jdoe                    catch-all to one user
    bad@example.com         error:5.1.1:550 User unknown

    Key and value are separated by white space; ``#`` comment lines.  Keys are
    case-insensitive.  In a value, %1 is the original user part (without +detail), %2 the
    detail and %3 "+detail" (empty when there is none) — sendmail's substitutions.

LOOKUP ORDER (sendmail cf/README)
    user+detail@domain, user++@domain, user+*@domain, user@domain, ++@domain,
    +*@domain, @domain: "+" after the "+" matches a non-empty detail only, "*" an
    empty one too (user+@domain matches +*@domain, not ++@domain).  An address without
    "+" is looked up as user@domain, then @domain.

GUARANTEES
    A bad key or value is reported as ``file:line: error: ...`` and skipped; values are
    checked at load time (with %n substituted) so a lookup never meets a bad target.
    A duplicate key keeps the first entry (makemap -d is not the default) and is reported.
    ``domains()`` lists every domain with a key: they are virtual domains.

ERRORS
    MapUnavailable when the file cannot be read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .mapfile import Diagnostic, Line, MapFile
from .names import NameSyntaxError, check_local_part, normalize_domain
from .targets import AddressTarget, ErrorTarget, Target, parse_target

__all__ = ["VirtEntry", "VirtHit", "Virtusertable", "parse_virtuser_line", "format_virtuser_entry"]

_SUBST = re.compile(r"%([123])")


@dataclass(frozen=True, slots=True)
class VirtEntry:
    local: str | None  # None: the @domain catch-all; may end in "+*" or "++", or be either
    domain: str
    value: str  # as written, with %n still in it
    line: int = 0

    @property
    def key(self) -> str:
        return f"{self.local or ''}@{self.domain}"


@dataclass(frozen=True, slots=True)
class VirtHit:
    key: str  # the key that matched, for the routing trace
    target: Target


def parse_virtuser_line(line: Line) -> VirtEntry | Diagnostic:
    """One virtusertable line as an entry, or the diagnostic explaining why not."""
    parts = line.text.split(None, 1)
    if len(parts) != 2:
        return line.error(f"expected a key and a value, found {line.text.strip()[:60]!r}")
    key, value = parts[0], parts[1].strip()
    local, at, domain = key.rpartition("@")
    if not at:
        return line.error(f"key {key!r} must be user@domain or @domain")
    try:
        domain = normalize_domain(domain)
        base = local[:-2] if local.endswith(("+*", "++")) else local
        if base:
            check_local_part(base)
    except NameSyntaxError as exc:
        return line.error(f"key {key!r}: {exc}")
    probe = _SUBST.sub("x", value)
    parsed = parse_target(probe)
    if isinstance(parsed, str):
        return line.error(f"value of {key}: {parsed}")
    if not isinstance(parsed, (AddressTarget, ErrorTarget)):
        return line.error(f"value of {key} must be a user, an address or error:..., not {value!r}")
    return VirtEntry(local.lower() or None, domain, value, line.number)


def format_virtuser_entry(entry: VirtEntry) -> str:
    return f"{entry.key}\t{entry.value}"


class Virtusertable(MapFile[dict[str, VirtEntry]]):
    """The virtusertable; entries keyed by their lower-case key."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(path)

    def parse(self, lines: Iterator[Line]) -> tuple[dict[str, VirtEntry], list[Diagnostic]]:
        entries: dict[str, VirtEntry] = {}
        diagnostics: list[Diagnostic] = []
        for line in lines:
            parsed = parse_virtuser_line(line)
            if isinstance(parsed, Diagnostic):
                diagnostics.append(parsed)
            elif parsed.key in entries:
                first = entries[parsed.key].line
                diagnostics.append(line.warning(f"duplicate key {parsed.key} (first at line {first}); first kept"))
            else:
                entries[parsed.key] = parsed
        return entries, diagnostics

    def domains(self) -> frozenset[str]:
        return frozenset(e.domain for e in self.data.values())

    def lookup(self, local: str, domain: str) -> VirtHit | None:
        """The target for local@domain after sendmail's lookup order, or None."""
        entries = self.data
        d = domain.lower()
        low = local.lower()
        user, plus, detail = low.partition("+")
        keys = [f"{low}@{d}"]
        if plus:
            keys += ([f"{user}++@{d}"] if detail else []) + [f"{user}+*@{d}", f"{user}@{d}"]
            keys += ([f"++@{d}"] if detail else []) + [f"+*@{d}"]
        keys.append(f"@{d}")
        orig_user = local.partition("+")[0]
        orig_detail = local.partition("+")[2] if plus else ""
        for key in keys:
            entry = entries.get(key)
            if entry is None:
                continue
            subst = {"1": orig_user, "2": orig_detail, "3": f"+{orig_detail}" if plus else ""}
            value = _SUBST.sub(lambda m: subst[m.group(1)], entry.value)
            target = parse_target(value)
            if isinstance(target, str):
                # The user part substituted for %1 made the value invalid (e.g. a quoted
                # local part): the address cannot be rewritten, so it is unknown here.
                target = parse_target("error:5.1.3:553 Bad address syntax after virtusertable rewrite")
                assert not isinstance(target, str)
            return VirtHit(key, target)
        return None
