"""mta.maps.names — syntax of domains and local parts, shared by the maps and routing.

``normalize_domain`` lower-cases a domain, drops one trailing dot, converts U-labels to
A-labels (IDNA, RFC 5891) and checks RFC 1035 label syntax (letters, digits, hyphens,
underscore tolerated as many real host names carry one; labels 1..63 octets, total at
most 253).  Address literals ``[192.0.2.1]`` and ``[IPv6:2001:db8::1]`` (RFC 5321 4.1.3)
are accepted and canonicalised.

``check_local_part`` accepts an RFC 5321 Dot-string or Quoted-string; octets >= 0x80 are
allowed (RFC 6531 SMTPUTF8).

ERRORS
    NameSyntaxError (a ValueError) with a short reason, meant to follow ``file:line:``.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["NameSyntaxError", "normalize_domain", "check_local_part", "split_address"]


class NameSyntaxError(ValueError):
    """A domain, local part or address is not syntactically valid."""


_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+"
_DOT_STRING = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"')


def normalize_domain(text: str) -> str:
    """The canonical (lower-case, A-label) form of a domain or address literal."""
    d = text.strip()
    if d.startswith("[") and d.endswith("]"):
        inner = d[1:-1]
        try:
            if inner[:5].lower() == "ipv6:":
                return f"[IPv6:{ipaddress.IPv6Address(inner[5:]).compressed}]"
            return f"[{ipaddress.IPv4Address(inner)}]"
        except ValueError as exc:
            raise NameSyntaxError(f"bad address literal {text!r}") from exc
    if d.endswith("."):
        d = d[:-1]
    if not d:
        raise NameSyntaxError("empty domain")
    if not d.isascii():
        try:
            d = d.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise NameSyntaxError(f"bad internationalized domain {text!r}") from exc
    d = d.lower()
    if len(d) > 253:
        raise NameSyntaxError("domain longer than 253 characters")
    for label in d.split("."):
        if not _LABEL.fullmatch(label):
            raise NameSyntaxError(f"bad domain {text!r}")
    return d


def check_local_part(local: str) -> str:
    """``local`` unchanged if it is a Dot-string or Quoted-string (RFC 5321 4.1.2)."""
    if not local:
        raise NameSyntaxError("empty local part")
    if len(local.encode("utf-8", "surrogateescape")) > 64 * 4:
        raise NameSyntaxError("local part too long")
    if _DOT_STRING.fullmatch(local) or _QUOTED.fullmatch(local):
        return local
    raise NameSyntaxError(f"bad local part {local!r}")


def split_address(text: str) -> tuple[str, str | None]:
    """(local part, normalised domain or None) of ``local`` or ``local@domain``.

    The split is at the last ``@`` outside a quoted local part; angle brackets are
    stripped.  A source route (``@a,@b:user@c``, RFC 5321 4.1.2) is reduced to its
    mailbox, as RFC 5321 C says servers SHOULD accept and ignore the route.
    """
    a = text.strip()
    if a.startswith("<") and a.endswith(">"):
        a = a[1:-1].strip()
    if a.startswith("@") and ":" in a:
        a = a.split(":", 1)[1]
    if a.startswith('"'):
        m = _QUOTED.match(a)
        if not m:
            raise NameSyntaxError(f"bad quoted local part in {text!r}")
        local, rest = m.group(0), a[m.end():]
        if rest == "":
            return local, None
        if not rest.startswith("@"):
            raise NameSyntaxError(f"bad address {text!r}")
        return local, normalize_domain(rest[1:])
    if "@" not in a:
        return check_local_part(a), None
    local, _, domain = a.rpartition("@")
    return check_local_part(local), normalize_domain(domain)
