"""deliver.mh — MH folders (a folder name ending in ``/.``, PROCMAIL-BEHAVIOUR 30).

Each message is a file named by the next number above the highest numeric name in the
directory (as strtol() reads names), holding the message with its From_ line and the final-newline rule
(deliver.mboxformat.program_bytes).  The message is written and fsync'd under a temporary
name first and then hard-linked to the number — link(2) fails if another deliverer took the
number meanwhile, and we try the next one (procmail does the same with hlink()) — so the
numbered file is always complete.

Raises MailboxError.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re

from .dirfolder import fsync_dir, message_mode, write_temp
from .errors import MailboxError

log = logging.getLogger(__name__)


_LONG_MIN, _LONG_MAX = -2**63, 2**63 - 1
# strtol(name, &end, 10) with nothing left at end: C-locale blanks, a sign, digits
_NUMBER_NAME = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")


def message_number(name: str) -> int | None:
    """The number procmail's dirfile() reads from a file name, or None: what strtol()
    makes of the whole name (" 30" and "+20" count; out of range clamps to a C long)."""
    m = _NUMBER_NAME.fullmatch(name)
    if m is None:
        return None
    return max(_LONG_MIN, min(_LONG_MAX, int(m.group(1))))


def highest_number(directory: str) -> int:
    """The largest message number in ``directory`` (0 when none).  A directory
    that cannot be listed (mode 0300) is logged and counted from 0, as procmail's
    dirfile() does: link(2) then steps past the numbers that are taken."""
    best = 0
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                number = message_number(entry.name)
                if number is not None and number > best:
                    best = number
    except OSError:
        log.warning('Couldn\'t read "%s/."', directory)     # named as procmail's buffer holds it
        return 0
    return best


def _next_number(number: int) -> int:
    """++i on a C long: LONG_MAX steps to LONG_MIN (named by its unsigned value)."""
    return _LONG_MIN if number >= _LONG_MAX else number + 1


def link_into_mh(src: str, directory: str) -> str:
    """Hard-link ``src`` as the next free number in ``directory``; returns the new path."""
    number = highest_number(directory)
    while True:
        number = _next_number(number)
        dest = os.path.join(directory, str(number % 2**64))    # procmail's ultstr()
        try:
            os.link(src, dest)
            return dest
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                continue
            raise MailboxError.from_oserror("Couldn't make link to", dest, exc) from exc


def deliver_mh(directory: str, data: bytes, *, umask: int) -> str:
    """Store ``data`` (already formatted) as the next MH message; returns its path."""
    tmp, _ = write_temp(directory, data, message_mode(umask))
    try:
        dest = link_into_mh(tmp, directory)
    except MailboxError as exc:
        exc.link_failure = True
        raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    fsync_dir(directory)
    return dest
