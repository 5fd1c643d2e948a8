"""mta.maps.users — local users: a passwd(5)-format file, or the system password database.

FORMAT (UsersFile)
    ``name:password:uid:gid:gecos:home:shell`` — seven colon-separated fields, exactly as
    /etc/passwd; the password field is ignored.  ``#`` comment lines.  A relative home
    directory is resolved against ``home_base`` (the data directory), so the demo user of
    an unprivileged installation lives under var/ and needs no entry in /etc/passwd.

LOOKUP
    ``lookup(name)`` tries the name as given, then lower-cased: sendmail's local mailer
    (without F=u) folds user names to lower case, and an RCPT for ``Bob`` must reach bob.

GUARANTEES
    A malformed line (wrong field count, non-numeric uid/gid, bad name, empty home) is
    reported as ``file:line: error: ...`` and skipped.  A duplicate name keeps the first
    entry, as getpwnam(3) does, and is reported as a warning.

ERRORS
    MapUnavailable when the file cannot be read (mapfile); SystemUsers never raises for an
    unknown user, and raises MapUnavailable when the password database itself fails.
"""

from __future__ import annotations

import pwd
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

from .mapfile import Diagnostic, Line, MapFile, MapUnavailable

__all__ = ["User", "Users", "UsersFile", "SystemUsers", "parse_passwd_line", "format_passwd_line"]

# POSIX portable user names plus the characters Debian's adduser allows by default.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?")


@dataclass(frozen=True, slots=True)
class User:
    name: str
    uid: int
    gid: int
    gecos: str
    home: Path
    shell: str


class Users(Protocol):
    """What routing and delivery need from a user database."""

    def lookup(self, name: str) -> User | None: ...

    def refresh(self) -> bool: ...

    @property
    def diagnostics(self) -> list[str]: ...


def parse_passwd_line(line: Line, home_base: Path) -> User | Diagnostic:
    """One passwd line as a User, or a Diagnostic saying what is wrong with it."""
    fields = line.text.split(":")
    if len(fields) != 7:
        return line.error(f"expected 7 colon-separated fields (name:x:uid:gid:gecos:home:shell), found {len(fields)}")
    name, _pw, uid, gid, gecos, home, shell = fields
    if not _NAME.fullmatch(name):
        return line.error(f"bad user name {name!r}")
    for label, value in (("uid", uid), ("gid", gid)):
        if not value.isascii() or not value.isdigit() or int(value) > 2**32 - 2:
            return line.error(f"{label} of {name} must be a number, got {value!r}")
    if not home:
        return line.error(f"user {name} has an empty home directory")
    return User(name, int(uid), int(gid), gecos, home_base / home, shell)


def format_passwd_line(user: User, home_base: Path | None = None) -> str:
    """The passwd line for ``user`` (inverse of parse_passwd_line; round-trip tests)."""
    home = user.home
    if home_base is not None and home.is_relative_to(home_base):
        home = home.relative_to(home_base)
    return f"{user.name}:x:{user.uid}:{user.gid}:{user.gecos}:{home}:{user.shell}"


class UsersFile(MapFile[dict[str, User]]):
    """A passwd-format users file that reloads when it changes."""

    def __init__(self, path: Path | str, home_base: Path | str) -> None:
        super().__init__(path)
        self.home_base = Path(home_base)

    def parse(self, lines: Iterator[Line]) -> tuple[dict[str, User], list[Diagnostic]]:
        users: dict[str, User] = {}
        diagnostics: list[Diagnostic] = []
        for line in lines:
            parsed = parse_passwd_line(line, self.home_base)
            if isinstance(parsed, Diagnostic):
                diagnostics.append(parsed)
            elif parsed.name in users:
                diagnostics.append(line.warning(f"duplicate user {parsed.name}, first entry kept"))
            else:
                users[parsed.name] = parsed
        return users, diagnostics

    def lookup(self, name: str) -> User | None:
        users = self.data
        return users.get(name) or users.get(name.lower())


class SystemUsers:
    """The system password database through getpwnam(3); never reloads (NSS does)."""

    diagnostics: list[str] = []

    def refresh(self) -> bool:
        return False

    def lookup(self, name: str) -> User | None:
        if not name or "\0" in name or "/" in name:
            return None
        for candidate in dict.fromkeys((name, name.lower())):
            try:
                pw = pwd.getpwnam(candidate)
            except KeyError:
                continue
            except OSError as exc:  # NSS backend failure (LDAP down ...): not "unknown"
                raise MapUnavailable(Path("/etc/passwd"), str(exc)) from exc
            return User(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_gecos, Path(pw.pw_dir), pw.pw_shell)
        return None
