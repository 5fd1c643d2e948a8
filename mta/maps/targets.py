"""mta.maps.targets — the right-hand sides of aliases, :include: files and virtusertable.

SYNTAX (sendmail aliases(5), virtusertable of cf/README)
    user                 a local name: aliased again, then a local user
    \\user                a local mailbox, no further aliasing
    user@domain          an address: local again if the domain is local, else remote
    /path/file           append to a file (absolute path)
    |command             pipe to a program; quote it when it holds commas: "|cmd a, b"
    :include:/path       the addresses listed in a file (relative: to the map's directory)
    error:CODE text      refuse with this reply, CODE being any of
                             5.1.1:550   enhanced and reply code (sendmail's form)
                             5.1.1       enhanced code; the reply code follows its class
                             550         reply code; the enhanced code is X.0.0
                             nouser      a sysexits name (Postfix src/global/sys_exits.c)
                         a reply code and an enhanced code at the start of the text are
                         taken as such (cf/README's "error:nouser 550 No such user here")

    A whole target may be written in double quotes; the quotes are removed before it is
    interpreted (so "|prog, arg" and "/path with spaces" work).

GUARANTEES
    ``parse_target`` and ``split_targets`` never raise: they return a Target or a reason
    string that the caller turns into a ``file:line`` diagnostic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..quoting import unquoted
from ..reply import Reply
from .names import NameSyntaxError, check_local_part, split_address

__all__ = [
    "AddressTarget",
    "MailboxTarget",
    "FileTarget",
    "ProgramTarget",
    "IncludeTarget",
    "ErrorTarget",
    "Target",
    "parse_error_spec",
    "parse_target",
    "split_targets",
    "format_target",
]


@dataclass(frozen=True, slots=True)
class AddressTarget:
    local: str
    domain: str | None  # None: an unqualified, hence local, name

    def __str__(self) -> str:
        return self.local if self.domain is None else f"{self.local}@{self.domain}"


@dataclass(frozen=True, slots=True)
class MailboxTarget:
    user: str  # written \user: deliver to the mailbox, do not alias again


@dataclass(frozen=True, slots=True)
class FileTarget:
    path: str


@dataclass(frozen=True, slots=True)
class ProgramTarget:
    command: str


@dataclass(frozen=True, slots=True)
class IncludeTarget:
    path: Path


@dataclass(frozen=True, slots=True)
class ErrorTarget:
    reply: Reply
    spec: str  # as written after "error:", for printing the map back


Target = AddressTarget | MailboxTarget | FileTarget | ProgramTarget | IncludeTarget | ErrorTarget

# sysexits(3) names as sendmail's error mailer accepts them, with the reply and enhanced
# codes of Postfix's sys_exits.c table.
_SYSEXITS: dict[str, tuple[int, str, str]] = {
    "usage": (550, "5.5.4", "Command line usage error"),
    "dataerr": (550, "5.6.0", "Data format error"),
    "noinput": (550, "5.3.0", "Cannot open input"),
    "nouser": (550, "5.1.1", "User unknown"),
    "nohost": (550, "5.1.2", "Host not found"),
    "unavailable": (550, "5.3.0", "Service unavailable"),
    "software": (554, "5.3.0", "Internal software error"),
    "oserr": (451, "4.3.0", "System resource problem"),
    "osfile": (554, "5.3.5", "Critical OS file missing"),
    "cantcreat": (550, "5.2.0", "Can't create output"),
    "ioerr": (451, "4.3.0", "Input/output error"),
    "tempfail": (451, "4.3.0", "Temporary failure"),
    "protocol": (554, "5.5.0", "Remote error in protocol"),
    "noperm": (550, "5.7.0", "Permission denied"),
    "config": (554, "5.3.5", "Local configuration error"),
}

_ERROR_SPEC = re.compile(
    r"""\s*(?:
        (?P<enh>[245]\.\d{1,3}\.\d{1,3})(?::(?P<code1>[245]\d\d)|\s+(?P<code1b>[245]\d\d))?(?=\s|$)
      | (?P<code2>[245]\d\d)(?=\s|$)
      | (?P<name>[A-Za-z]+)(?=\s|$)
    )\s*(?P<text>.*)""",
    re.VERBOSE | re.DOTALL,
)


_TEXT_CODE = re.compile(r"([245]\d\d)(?:\s+|$)")
_TEXT_ENHANCED = re.compile(r"([245]\.\d{1,3}\.\d{1,3})(?:\s+|$)")


def parse_error_spec(spec: str) -> Reply | str:
    """The Reply of an ``error:`` target (the part after ``error:``), or a reason."""
    m = _ERROR_SPEC.fullmatch(spec)
    if not m:
        return f"bad error code in error:{spec}"
    text = m.group("text").strip()
    if any(c in text for c in "\r\n\0"):
        return "control character in error text"
    if name := m.group("name"):
        if name.lower() not in _SYSEXITS:
            return f"unknown error name {name!r} (expected e.g. nouser, nohost, unavailable, tempfail)"
        code, enhanced, default = _SYSEXITS[name.lower()]
    elif enhanced := m.group("enh"):
        code = int(m.group("code1") or m.group("code1b") or {"5": 550, "4": 450, "2": 250}[enhanced[0]])
        default = "User unknown" if enhanced == "5.1.1" else "Rejected"
    else:
        code = int(m.group("code2"))
        enhanced = f"{str(code)[0]}.0.0"
        default = "Rejected"
    # cf/README writes the reply code again in the text ("error:nouser 550 No such user
    # here"), and an enhanced code may follow a bare reply code ("error:550 5.1.1 ...")
    m_code = _TEXT_CODE.match(text)
    if m_code and m_code.group(1)[0] == str(code)[0]:
        code, text = int(m_code.group(1)), text[m_code.end():]
    m_enh = _TEXT_ENHANCED.match(text)
    if m_enh and not m.group("enh") and m_enh.group(1)[0] == str(code)[0]:
        enhanced, text = m_enh.group(1), text[m_enh.end():]
    if code < 400:
        return f"error:{spec} does not refuse (reply code {code})"
    if str(code)[0] != enhanced[0]:
        return f"enhanced code {enhanced} does not match reply code {code}"
    return Reply(code, enhanced, text or default)


def parse_target(text: str, base_dir: Path | None = None) -> Target | str:
    """One right-hand-side item as a Target, or the reason it is not one."""
    t = text.strip()
    if len(t) >= 2 and t.startswith('"') and t.endswith('"') and not t[1:-1].startswith(("@",)):
        inner = t[1:-1]
        # "a b"@example.org is an address with a quoted local part, handled below;
        # a fully quoted item is unquoted first (sendmail aliases(5)).
        if '"' not in inner:
            t = inner.strip()
    if not t:
        return "empty target"
    if any(c in t for c in "\r\n\0"):
        return "control character in target"
    if t.startswith("|"):
        return ProgramTarget(t[1:].strip()) if t[1:].strip() else "empty program after |"
    if t.startswith("/"):
        return FileTarget(t)
    if t[:9].lower() == ":include:":
        rest = t[9:].strip()
        if not rest:
            return "empty :include: path"
        path = Path(rest)
        if not path.is_absolute():
            if base_dir is None:
                return f":include: path must be absolute: {rest}"
            path = base_dir / path
        return IncludeTarget(path)
    if t[:6].lower() == "error:":
        reply = parse_error_spec(t[6:])
        return ErrorTarget(reply, t[6:].strip()) if isinstance(reply, Reply) else reply
    if t.startswith("\\"):
        try:
            return MailboxTarget(check_local_part(t[1:]))
        except NameSyntaxError as exc:
            return str(exc)
    try:
        local, domain = split_address(t)
    except NameSyntaxError as exc:
        return str(exc)
    return AddressTarget(local, domain)


def strip_comment(line: str) -> str:
    """``line`` without a comment that starts after its targets: a ``#`` that begins a
    word outside double quotes (``bob  # the boss``), except in an unquoted ``|program``
    item, whose words are its own.  Per physical line, before continuations are joined,
    so a comment never swallows the next line's targets.  Without this one bad target
    would cost the line (or the list) every member."""
    item_start = 0
    for i, c in unquoted(line):
        if c in ",:":
            item_start = i + 1
        elif c == "#" and (i == 0 or line[i - 1] in " \t") \
                and not line[item_start:i].lstrip().startswith("|"):
            return line[:i].rstrip()
    return line


def split_targets(rhs: str) -> list[str]:
    """Comma-separated items of a right-hand side; commas inside double quotes stay."""
    items, current, quoted, escaped = [], [], False, False
    for c in rhs:
        if escaped:
            current.append(c)
            escaped = False
        elif c == "\\" and quoted:
            current.append(c)
            escaped = True
        elif c == '"':
            current.append(c)
            quoted = not quoted
        elif c == "," and not quoted:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(c)
    items.append("".join(current).strip())
    return items


def format_target(target: Target) -> str:
    """Text that parse_target reads back as ``target`` (quoted when needed)."""
    match target:
        case AddressTarget():
            text = str(target)
        case MailboxTarget(user):
            text = "\\" + user
        case FileTarget(path):
            text = path
        case ProgramTarget(command):
            text = "|" + command
        case IncludeTarget(path):
            text = f":include:{path}"
        case ErrorTarget(_, spec):
            text = f"error:{spec}"
    if (text != text.strip() or "," in text or '"' in text or "#" in text) and not isinstance(target, AddressTarget):
        return f'"{text}"'
    return text
