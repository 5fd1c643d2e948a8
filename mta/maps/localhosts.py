"""mta.maps.localhosts — local-host-names: the domains this host receives mail for.

FORMAT
    One or more domains per line, separated by white space (sendmail's ``Fw`` file
    class reads every word); ``#`` comment lines; address literals ``[192.0.2.1]``.
    Names are compared case-insensitively, with one trailing dot ignored.

    The server's own host name (``[server] hostname``), ``localhost`` and the loopback
    address literals ``[127.0.0.1]`` and ``[IPv6:::1]`` are always local, whether or not
    the file lists them, as sendmail's $=w always holds $j and its own addresses.  Other
    addresses of the host are listed in the file as literals when wanted.

GUARANTEES
    A bad word is reported as ``file:line: error: bad domain ...`` and skipped; the
    other words of the line and the rest of the file still count.

ERRORS
    MapUnavailable when the configured file cannot be read (see mapfile).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from .mapfile import Diagnostic, Line, MapFile
from .names import NameSyntaxError, normalize_domain

__all__ = ["LocalHostNames", "parse_domain_list"]


def parse_domain_list(lines: Iterator[Line]) -> tuple[frozenset[str], list[Diagnostic]]:
    """The set of normalised domains in ``lines`` and a diagnostic per bad word."""
    domains: set[str] = set()
    diagnostics: list[Diagnostic] = []
    for line in lines:
        for word in line.text.split():
            try:
                domains.add(normalize_domain(word))
            except NameSyntaxError as exc:
                diagnostics.append(line.error(str(exc)))
    return frozenset(domains), diagnostics


class _DomainFile(MapFile[frozenset[str]]):
    def parse(self, lines: Iterator[Line]) -> tuple[frozenset[str], list[Diagnostic]]:
        return parse_domain_list(lines)


class LocalHostNames:
    """The local domains: ``hostname``, ``localhost``, the loopback literals and the
    file's names (if any)."""

    def __init__(self, path: Path | str | None, hostname: str) -> None:
        self.file = _DomainFile(path) if path is not None else None
        self.builtin = frozenset({normalize_domain(hostname), "localhost",
                                  "[127.0.0.1]", "[IPv6:::1]"})

    def refresh(self) -> bool:
        return self.file.refresh() if self.file is not None else False

    @property
    def diagnostics(self) -> list[str]:
        return self.file.diagnostics if self.file is not None else []

    def domains(self) -> frozenset[str]:
        return self.builtin | (self.file.data if self.file is not None else frozenset())

    def lookup(self, domain: str) -> bool:
        """True when ``domain`` (any case, trailing dot allowed) is local."""
        try:
            d = normalize_domain(domain)
        except NameSyntaxError:
            return False
        return d in self.builtin or (self.file is not None and d in self.file.data)

    __contains__ = lookup
