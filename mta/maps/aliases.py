"""mta.maps.aliases — the aliases(5) file and :include: lists.

FORMAT
    name: target, target, ...
    Lines starting with white space continue the previous line; a line whose first
    character other than a blank is ``#`` is a comment, and so is the rest of a line
    after a ``#`` that begins a word outside quotes (mta.maps.targets.strip_comment).  Names are case-insensitive (sendmail folds alias keys to lower
    case).  Targets are described in mta.maps.targets: local names, addresses, \\user,
    /file, "|program", :include:/path and error:CODE text.

    An :include: file lists targets one per line or separated by commas, with ``#``
    comment lines (sendmail's include files); relative paths inside it are resolved
    against its own directory.

SEMANTICS KEPT FOR THE ROUTER
    The map only parses; expansion, recursion, loop detection and owner-LIST handling
    live in mta.routing.  ``owner(name)`` answers whether ``owner-name`` exists.

GUARANTEES
    A bad line or a bad target is reported as ``file:line: error: ...``; a bad target
    is dropped from its alias and the other targets stay; a line with no usable target
    is skipped.  A duplicate name is a warning and the later line wins (sendmail's
    newaliases: "Warning: duplicate alias name").  Parsing never raises.

ERRORS
    MapUnavailable when the aliases file or an :include: file cannot be read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..quoting import leading_quoted
from .mapfile import Diagnostic, Line, MapFile, MapUnavailable, logical_lines, read_lines
from .targets import Target, format_target, parse_target, split_targets, strip_comment

__all__ = ["Alias", "Aliases", "parse_alias_line", "format_alias", "read_include"]


@dataclass(frozen=True, slots=True)
class Alias:
    name: str  # lower case
    targets: tuple[Target, ...]
    line: int = 0  # where it was defined, for traces and newaliases


def parse_alias_line(line: Line, base_dir: Path | None = None) -> tuple[Alias | None, list[Diagnostic]]:
    """One logical line as an Alias (None if unusable) and its diagnostics."""
    text = line.text
    if text[:1] in (" ", "\t"):
        return None, [line.error("continuation line without an alias before it")]
    quoted_name = leading_quoted(text)
    if quoted_name is not None:
        # Postfix aliases(5): a name with blanks, "#", ":" or "@" is written in quotes
        name, rest = quoted_name
        after = rest.lstrip(" \t")
        colon, rhs = (":", after[1:]) if after.startswith(":") else ("", "")
        bad_name = any(ord(c) < 32 for c in name)
    else:
        name, colon, rhs = text.partition(":")
        name = name.strip()
        bad_name = any(c.isspace() or c in '@,:"\\' for c in name)
    if not colon:
        return None, [line.error(f'missing ":" after alias name {name[:40]!r}')]
    if not name or bad_name:
        return None, [line.error(f"bad alias name {name!r}")]
    diagnostics: list[Diagnostic] = []
    targets: list[Target] = []
    for item in split_targets(rhs):
        if not item:
            continue
        parsed = parse_target(item, base_dir)
        if isinstance(parsed, str):
            diagnostics.append(line.error(f"alias {name}: {parsed}"))
        else:
            targets.append(parsed)
    if rhs.count('"') % 2:
        diagnostics.append(line.error(f"alias {name}: unbalanced double quote"))
    if not targets:
        if not diagnostics:
            diagnostics.append(line.error(f"alias {name} has no targets"))
        return None, diagnostics
    return Alias(name.lower(), tuple(targets), line.number), diagnostics


def format_alias(alias: Alias) -> str:
    """The aliases(5) line for ``alias`` (parse_alias_line reads it back)."""
    name = alias.name
    if any(c.isspace() or c in '@,:"\\#' for c in name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name}: " + ", ".join(format_target(t) for t in alias.targets)


def read_include(path: Path) -> tuple[tuple[Target, ...], list[Diagnostic]]:
    """The targets listed in an :include: file, and its diagnostics.

    Raises MapUnavailable when the file cannot be read: the router defers rather than
    silently dropping the list's members.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MapUnavailable(path, exc.strerror or str(exc)) from exc
    targets: list[Target] = []
    diagnostics: list[Diagnostic] = []
    for line in read_lines(str(path), raw):
        for item in split_targets(strip_comment(line.text)):
            if not item:
                continue
            parsed = parse_target(item, path.parent)
            if isinstance(parsed, str):
                diagnostics.append(line.error(parsed))
            else:
                targets.append(parsed)
    return tuple(targets), diagnostics


class Aliases(MapFile[dict[str, Alias]]):
    """The aliases file; ``lookup(name)`` is case-insensitive."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(path)

    def parse(self, lines: Iterator[Line]) -> tuple[dict[str, Alias], list[Diagnostic]]:
        aliases: dict[str, Alias] = {}
        diagnostics: list[Diagnostic] = []
        base_dir = Path(os.path.dirname(os.path.abspath(self.path)))
        for line in logical_lines(Line(ln.path, ln.number, strip_comment(ln.text)) for ln in lines):
            alias, diags = parse_alias_line(line, base_dir)
            diagnostics.extend(diags)
            if alias is None:
                continue
            if alias.name in aliases:
                first = aliases[alias.name].line
                diagnostics.append(line.warning(f"duplicate alias name {alias.name} (first at line {first}); this one wins"))
            aliases[alias.name] = alias
        return aliases, diagnostics

    def lookup(self, name: str) -> Alias | None:
        return self.data.get(name.lower())

    def owner(self, name: str) -> Alias | None:
        """The ``owner-name`` alias, whose name becomes the envelope sender of the list."""
        return self.data.get(f"owner-{name.lower()}")
