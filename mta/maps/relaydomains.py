"""mta.maps.relaydomains — relay-domains: domains (and their subdomains) we relay for.

FORMAT
    Like local-host-names: domains separated by white space, ``#`` comment lines.
    As in sendmail's class R, an entry matches the domain itself and every subdomain:
    ``example.org`` covers ``mx.example.org``.  Address literals match only themselves.

    Used by the relay policy of the next issue; routing does not consult it yet.

ERRORS
    MapUnavailable when the file cannot be read; bad words are reported and skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from .localhosts import parse_domain_list
from .mapfile import Diagnostic, Line, MapFile
from .names import NameSyntaxError, normalize_domain

__all__ = ["RelayDomains"]


class RelayDomains(MapFile[frozenset[str]]):
    def __init__(self, path: Path | str) -> None:
        super().__init__(path)

    def parse(self, lines: Iterator[Line]) -> tuple[frozenset[str], list[Diagnostic]]:
        return parse_domain_list(lines)

    def lookup(self, domain: str) -> bool:
        """True when ``domain`` or one of its parent domains is listed."""
        try:
            d = normalize_domain(domain)
        except NameSyntaxError:
            return False
        listed = self.data
        if d.startswith("["):
            return d in listed
        labels = d.split(".")
        return any(".".join(labels[i:]) in listed for i in range(len(labels)))
