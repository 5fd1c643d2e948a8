"""One table for every exit status the delivery agent can end with.

Each sysexits(3) code carries the RFC 3463 enhanced status code and text that an MTA
reports for it, and whether it is temporary (the queue retries) or permanent (the
recipient fails and the sender gets a bounce).  mta/ derives its SMTP/DSN replies from
this table (Postfix's src/global/sys_exits.c is the model), so the mapping lives in one
place.  The first digit of the enhanced code decides defer (4) versus bounce (5).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    USAGE = 64
    DATAERR = 65
    NOINPUT = 66
    NOUSER = 67
    NOHOST = 68
    UNAVAILABLE = 69
    SOFTWARE = 70
    OSERR = 71
    OSFILE = 72
    CANTCREAT = 73
    IOERR = 74
    TEMPFAIL = 75
    PROTOCOL = 76
    NOPERM = 77
    CONFIG = 78

    @property
    def dsn(self) -> str:
        return _DSN[self][0]

    @property
    def text(self) -> str:
        return _DSN[self][1]

    @property
    def temporary(self) -> bool:
        return self.dsn.startswith("4")


_DSN: dict[ExitCode, tuple[str, str]] = {
    ExitCode.OK: ("2.0.0", "delivered"),
    ExitCode.USAGE: ("5.3.0", "command line usage error"),
    ExitCode.DATAERR: ("5.6.0", "data format error"),
    ExitCode.NOINPUT: ("5.3.0", "cannot open input"),
    ExitCode.NOUSER: ("5.1.1", "user unknown"),
    ExitCode.NOHOST: ("5.1.2", "host name unknown"),
    ExitCode.UNAVAILABLE: ("5.3.0", "service unavailable"),
    ExitCode.SOFTWARE: ("5.3.0", "internal software error"),
    ExitCode.OSERR: ("4.3.0", "system resource problem"),
    ExitCode.OSFILE: ("5.3.0", "critical OS file missing"),
    ExitCode.CANTCREAT: ("5.2.0", "can't create user output file"),
    ExitCode.IOERR: ("5.3.0", "input/output error"),
    ExitCode.TEMPFAIL: ("4.3.0", "temporary failure"),
    ExitCode.PROTOCOL: ("5.5.0", "remote error in protocol"),
    ExitCode.NOPERM: ("5.7.0", "permission denied"),
    ExitCode.CONFIG: ("5.3.5", "local configuration error"),
}


def from_status(status: int) -> ExitCode | None:
    """The ExitCode for a raw status, None for a value outside sysexits."""
    try:
        return ExitCode(status)
    except ValueError:
        return None
