"""deliver.maildir — Maildir folders (a folder name ending in ``/``, PROCMAIL-BEHAVIOUR 30).

``ensure_maildir`` creates the folder and its ``tmp``, ``new`` and ``cur`` (mode
0777 & ~umask) but never missing parents.  ``deliver_maildir`` writes the message (no From_
line, nothing added: deliver.mboxformat.maildir_bytes) to ``tmp/<unique>``, fsyncs it, then
links it to ``new/<unique>`` and removes the tmp name, and fsyncs ``new`` — the Maildir
protocol (https://cr.yp.to/proto/maildir.html): a reader never sees a partial file.

Unique names have procmail's shape ``<time>.<pid>_<n>.<host>``, ``n`` counting the names this
process has made; the host name has ``/`` and ``:`` written as ``\\057`` and ``\\072`` as the
Maildir spec asks.  Creation is O_EXCL, so a clash only costs another try.

Raises MailboxError.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable

from . import procinfo
from .dirfolder import TEMP_SERIAL, fsync_dir, message_mode, write_new_file
from .errors import MailboxError
from .groupcommit import GroupCommit

SUBDIRS = ("new", "cur", "tmp")       # procmail's order of creation


# procmail's writefolder() log line when a temp file cannot be made or moved
_TEMP_FAILURE = "Couldn't create or rename temp file"


def _host(hostname: str | None) -> str:
    name = hostname or procinfo.nodename()
    return name.replace("/", "\\057").replace(":", "\\072")


def unique_name(hostname: str | None = None) -> str:
    """``<time>.<pid>_<n>.<host>`` — procmail's Maildir file name."""
    return f"{int(time.time())}.{procinfo.pid()}_{next(TEMP_SERIAL)}.{_host(hostname)}"


def _mkdir(path: str, mode: int) -> bool:
    """True when ``path`` is (now) a directory; creates it with ``mode`` if missing."""
    try:
        os.mkdir(path, mode)
        os.chmod(path, mode)               # independent of the process umask
        return True
    except FileExistsError:
        return os.path.isdir(path)
    except OSError:
        return False


def ensure_dir(path: str, umask: int) -> bool:
    """procmail's trymkdir(): is ``path`` a directory, creating it (not its parents)."""
    return _mkdir(path, 0o777 & ~umask)


def ensure_maildir(path: str, umask: int) -> bool:
    """True when ``path`` and its new/cur/tmp are directories (created as needed).

    The usual case, a Maildir that exists, costs four stat(2) calls (as procmail's);
    only a part that is missing is made with mkdir (whose EEXIST races are handled)."""
    return all(os.path.isdir(p) or ensure_dir(p, umask)
               for p in (path, *(os.path.join(path, d) for d in SUBDIRS)))


def _claim_tmp(path: str, data: bytes, umask: int, hostname: str | None,
               fsync: bool = True) -> tuple[str, str, os.stat_result]:
    while True:
        name = unique_name(hostname)
        tmp = os.path.join(path, "tmp", name)
        try:
            st = write_new_file(tmp, data, message_mode(umask), fsync=fsync)
            return name, tmp, st
        except MailboxError as exc:
            if not isinstance(exc.__cause__, FileExistsError):
                if exc.temp_file:
                    exc.log_head = _TEMP_FAILURE
                raise


def deliver_maildir(path: str, data: bytes, *, umask: int, hostname: str | None = None,
                    group: GroupCommit | None = None,
                    abspath: Callable[[str], str] = os.path.abspath) -> str:
    """Store ``data`` (already formatted) in ``path/new``; returns the new file's path.
    With a ``group`` the file stays in tmp/ unsynced and is linked to the returned name
    by the group's commit (deliver.groupcommit), by absolute paths: the commit comes
    after the batch's last mail, whose cwd (its MAILDIR) may be another one.
    ``abspath``: the caller's os.path.abspath (deliver.folders)."""
    if group is not None:
        name, _tmp, st = _claim_tmp(path, data, umask, hostname, fsync=False)
        base = abspath(path)
        group.link_later(os.path.join(base, "tmp", name), os.path.join(base, "new", name), st.st_dev)
        return os.path.join(path, "new", name)
    name, tmp, _st = _claim_tmp(path, data, umask, hostname)
    try:
        dest = os.path.join(path, "new", name)
        while True:                        # link, not rename: never replace a message
            try:
                os.link(tmp, dest)
                break
            except FileExistsError:
                dest = os.path.join(path, "new", unique_name(hostname))
            except OSError as exc:
                err = MailboxError.from_oserror(_TEMP_FAILURE, tmp, exc)
                err.log_head = _TEMP_FAILURE
                raise err from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    fsync_dir(os.path.join(path, "new"))
    return dest


def link_into_maildir(src: str, path: str, *, hostname: str | None = None) -> str:
    """Hard-link ``src`` into ``path/new`` under a fresh unique name."""
    while True:
        dest = os.path.join(path, "new", unique_name(hostname))
        try:
            os.link(src, dest)
            return dest
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise MailboxError.from_oserror("Couldn't make link to", dest, exc) from exc
