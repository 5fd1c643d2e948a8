"""mta.smtp.commands — parsing of SMTP command lines and their arguments (RFC 5321 4.1).

Pure functions, no I/O: ``split_command`` separates verb and argument; ``parse_path``
reads a ``<mailbox>`` (or ``<>``) with its ESMTP parameters (RFC 5321 4.1.2, RFC 6531 for
UTF-8); ``is_domain`` and ``is_address_literal`` validate HELO/EHLO arguments.

Errors: ``CommandSyntaxError`` carrying the Reply to send (501 5.5.4, 501 5.1.3 ...).
Leniencies, as Postfix and sendmail have them: a space after ``FROM:``/``TO:``, and the
null sender or a source route (``<@a,@b:u@d>``, whose route is ignored, RFC 5321 4.1.2).
"""

from __future__ import annotations

import ipaddress
import re

from .. import reply as R
from ..quoting import unquoted
from ..reply import Reply


class CommandSyntaxError(Exception):
    """An argument does not parse; ``reply`` says why, ready for the wire."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


# RFC 5322 atext; RFC 6531 adds any non-ASCII UTF-8 character.
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]"
_DOT_STRING = re.compile(rf"^{_ATEXT}+(?:\.{_ATEXT}+)*$")
# a sender's local part as Postfix takes it (strict_rfc821_envelopes = no): dots
# anywhere, doubled or at an end.  Real mailboxes have such names (Japanese mobile
# carriers gave them out: "taro..yamada.@docomo.ne.jp"), and refusing their mail at
# MAIL FROM loses it; they are never used as a destination here
_LOOSE_DOT_STRING = re.compile(rf"^(?=.*{_ATEXT})(?:{_ATEXT}|\.)+$")
# qtextSMTP = %d32-33 / %d35-91 / %d93-126, quoted-pairSMTP = "\" %d32-126 (+ UTF-8)
_QUOTED = re.compile(r'^"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"$')
_LABEL = re.compile(r"^(?:[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]*"
                    r"[A-Za-z0-9\u0080-\U0010ffff])?)$")
_ESMTP_KEYWORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-]*$")
_ESMTP_VALUE = re.compile(r"^[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+$")
_GENERAL_LITERAL = re.compile(r"^[A-Za-z0-9\-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+$")


def printable(text: str, limit: int = 80) -> str:
    """``text`` safe to echo in a reply: control characters become '?', cut to ``limit``."""
    return "".join(ch if ch.isprintable() else "?" for ch in text[:limit])


def split_command(line: str) -> tuple[str, str]:
    """``"mail FROM:<a@b>"`` -> ``("MAIL", "FROM:<a@b>")``."""
    verb, _, arg = line.strip(" ").partition(" ")
    return verb.upper(), arg.strip(" ")


def is_domain(text: str) -> bool:
    """RFC 5321 Domain: dot-separated LDH labels (U-labels allowed), <= 255 octets."""
    if not text or len(text.encode("utf-8")) > 255:
        return False
    labels = text.split(".")
    return all(len(lb.encode("utf-8")) <= 63 and _LABEL.match(lb) for lb in labels)


def is_address_literal(text: str) -> bool:
    """RFC 5321 4.1.3: ``[1.2.3.4]``, ``[IPv6:...]`` or a General-address-literal."""
    if len(text) < 3 or text[0] != "[" or text[-1] != "]":
        return False
    inner = text[1:-1]
    if inner[:5].upper() == "IPV6:":
        try:
            ipaddress.IPv6Address(inner[5:])
            return True
        except ValueError:
            return False
    if re.match(r"^\d{1,3}(?:\.\d{1,3}){3}$", inner):
        try:
            ipaddress.IPv4Address(inner)
            return True
        except ValueError:
            return False
    return bool(_GENERAL_LITERAL.match(inner)) and not inner.upper().startswith("IPV6:")


def is_mailbox(text: str, *, loose_dots: bool = False) -> bool:
    """RFC 5321 Mailbox = Local-part "@" ( Domain / address-literal ).  ``loose_dots``:
    a Dot-string's dots may be doubled or end it (a sender's, see _LOOSE_DOT_STRING)."""
    local, at, domain = text.rpartition("@")
    if not at or not local:
        return False
    dot_string = _LOOSE_DOT_STRING if loose_dots else _DOT_STRING
    if not (dot_string.match(local) or _QUOTED.match(local)):
        return False
    return is_domain(domain) or is_address_literal(domain)


def _split_path(arg: str) -> tuple[str, str]:
    """Split ``<path> params`` at the closing bracket, honouring quoted local parts."""
    if not arg.startswith("<"):
        path, _, rest = arg.partition(" ")   # sendmail/Postfix accept a bare address
        return path, rest
    for i, ch in unquoted(arg):
        if ch == ">":
            return arg[1:i], arg[i + 1:]
    raise CommandSyntaxError(R.SYNTAX_ARGS.with_text("Missing closing '>' in address"))


def parse_params(text: str) -> dict[str, str]:
    """ESMTP parameters ``KEY[=VALUE]`` separated by spaces; keys upper-cased."""
    params: dict[str, str] = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if not _ESMTP_KEYWORD.match(key) or (eq and not _ESMTP_VALUE.match(value)):
            raise CommandSyntaxError(R.SYNTAX_ARGS.with_text(f"Bad parameter syntax: {printable(item, 40)}"))
        params[key.upper()] = value
    return params


def parse_path(arg: str, keyword: str, *, null_ok: bool, postmaster_ok: bool = False,
               bad: Reply = R.BAD_ADDRESS, loose_dots: bool = False) -> tuple[str, dict[str, str]]:
    """Parse ``FROM:<a@b> SIZE=10`` (keyword ``FROM``) into (mailbox, params).

    The null path ``<>`` gives ``""`` when ``null_ok``; ``<postmaster>`` without a domain
    is accepted for RCPT (RFC 5321 4.5.1).  ``loose_dots``: see is_mailbox.
    """
    head = keyword + ":"
    if arg[:len(head)].upper() != head:
        raise CommandSyntaxError(R.SYNTAX_ARGS.with_text(f"Syntax: {keyword}:<address>"))
    rest = arg[len(head):].lstrip(" ")
    if not rest:
        raise CommandSyntaxError(R.SYNTAX_ARGS.with_text(f"Syntax: {keyword}:<address>"))
    path, params_text = _split_path(rest)
    if params_text and not params_text.startswith(" "):
        raise CommandSyntaxError(R.SYNTAX_ARGS.with_text("Garbage after address"))
    params = parse_params(params_text)
    if path.startswith("@"):   # source route A-d-l ":" Mailbox, ignored (RFC 5321 C)
        route, colon, path = path.partition(":")
        if not colon or not all(is_domain(h[1:]) for h in route.split(",") if h.startswith("@")):
            raise CommandSyntaxError(bad)
    if path == "":
        if null_ok:
            return "", params
        raise CommandSyntaxError(bad)
    if postmaster_ok and path.lower() == "postmaster":
        return path, params
    if not is_mailbox(path, loose_dots=loose_dots):
        raise CommandSyntaxError(bad.with_text(f"Bad address syntax: <{printable(path)}>"))
    return path, params
