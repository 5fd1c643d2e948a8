"""postroom newaliases — check the aliases file and report every problem.

SYNOPSIS
    postroom newaliases [-c postroom.toml] [aliases-file]

DESCRIPTION
    sendmail's newaliases rebuilds aliases.db; postroom reads the text file directly
    (and reloads it when it changes), so this command only validates: it parses the file
    as the router will, reads every :include: file it names, and prints each problem as
    ``file:line: error: message`` (or ``warning:``) on standard error.  On success it
    prints a summary like sendmail's: ``aliases: 7 aliases, longest 41 bytes, 210 bytes
    total``.  The file is the one given, else [maps] aliases of the configuration.

EXIT STATUS (sysexits)
    0   no errors (warnings allowed)
    64  EX_USAGE: bad arguments, or no aliases file configured
    65  EX_DATAERR: the file has errors (the good lines are still in effect)
    66  EX_NOINPUT: the file (or the configuration) cannot be read
    78  EX_CONFIG: postroom.toml is invalid
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import ConfigError, load_config
from .maps.aliases import Aliases, format_alias, read_include
from .maps.mapfile import Diagnostic, MapUnavailable
from .maps.targets import IncludeTarget

__all__ = ["main", "check_aliases", "report"]

EX_OK, EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_CONFIG = 0, 64, 65, 66, 78


def check_aliases(path: Path) -> tuple[Aliases, list[Diagnostic]]:
    """The parsed aliases and every diagnostic, :include: files included.

    Raises MapUnavailable when the aliases file itself cannot be read.
    """
    aliases = Aliases(path)
    aliases.display_name = str(path)
    problems = list(aliases.problems)
    seen: set[Path] = set()
    for alias in aliases.data.values():
        for target in alias.targets:
            if not isinstance(target, IncludeTarget) or target.path in seen:
                continue
            seen.add(target.path)
            try:
                _targets, diags = read_include(target.path)
            except MapUnavailable as exc:
                problems.append(Diagnostic(str(path), alias.line,
                                           f"alias {alias.name}: cannot read :include: {target.path}: {exc.reason}"))
                continue
            problems.extend(diags)
    return aliases, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="postroom newaliases", description="Check the aliases file.")
    parser.add_argument("-c", "--config", help="postroom.toml (default: none, built-in defaults)")
    parser.add_argument("file", nargs="?", help="aliases file (default: [maps] aliases)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EX_OK if exc.code == 0 else EX_USAGE
    if args.file:
        path = Path(args.file)
    else:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"postroom newaliases: {exc}", file=sys.stderr)
            return EX_NOINPUT if "cannot read" in str(exc) else EX_CONFIG
        if config.maps.aliases is None:
            print("postroom newaliases: no aliases file configured ([maps] aliases)", file=sys.stderr)
            return EX_USAGE
        path = config.maps.aliases
    return report(path)


def report(path: Path) -> int:
    """Check ``path`` and print its problems and summary; the exit status (also for
    ``postroom sendmail -bi``)."""
    # the map logs each problem as it loads (the daemon's maillog); here they are the
    # report itself, printed once below
    logging.getLogger("mta.maps").addHandler(logging.NullHandler())
    try:
        aliases, problems = check_aliases(path)
    except MapUnavailable as exc:
        print(f"postroom newaliases: {exc}", file=sys.stderr)
        return EX_NOINPUT
    for d in problems:
        print(d, file=sys.stderr)

    sizes = [len(format_alias(a).encode("utf-8", "surrogateescape")) for a in aliases.data.values()]
    print(f"{path}: {len(sizes)} aliases, longest {max(sizes, default=0)} bytes, {sum(sizes)} bytes total")
    return EX_DATAERR if any(d.severity == "error" for d in problems) else EX_OK
