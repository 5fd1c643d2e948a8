"""deliver.dirfolder — procmail's plain directory folders (``MSGPREFIX`` files).

A folder name that is an existing directory without a trailing slash (PROCMAIL-BEHAVIOUR 30)
gets one file per message named ``$MSGPREFIX`` (default ``msg.``) followed by the file's
inode number in procmail's base-64 digits (``A-Za-z0-9-_``, least significant first:
procmail's ultoan()).  The file holds the message with its From_ line and the final-newline
rule (deliver.mboxformat.program_bytes); it is written to a temporary name, fsync'd, then
hard-linked to its final name (never overwriting an existing message), so a reader never
sees a partial file.

Also home of ``write_new_file``, the primitive the MH and Maildir writers share.

Raises MailboxError (temporary for ENOSPC, EDQUOT, EIO, ...).
"""

from __future__ import annotations

import contextlib
import itertools
import os

from . import procinfo
from .errors import MailboxError

_DIGITS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".decode()
# procmail's unique() numbers every temp name of the process from one static serial:
# the MH and directory temp files here and the Maildir names (deliver.maildir) alike
TEMP_SERIAL = itertools.count()


def message_mode(umask: int) -> int:
    """Mode of a new message file: 0666 & ~umask, plus o+x when the umask allows it
    (procmail's "new mail" bit, PROCMAIL-BEHAVIOUR 20: umask 022 gives 0645)."""
    mode = 0o666 & ~umask
    return mode if umask & 0o001 else mode | 0o001


def ultoan(value: int) -> str:
    """procmail's ultoan(): base 64 over [A-Za-z0-9-_], least significant digit first."""
    out = []
    while True:
        out.append(_DIGITS[value & 0x3F])
        value >>= 6
        if not value:
            return "".join(out)


def fsync_dir(path: str) -> None:
    """Make a new directory entry durable (rename/link are metadata of the directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_new_file(path: str, data: bytes, mode: int, *, fsync: bool = True) -> os.stat_result:
    """Create ``path`` exclusively with ``mode``, write ``data``, fsync (unless ``fsync`` is
    False: a group commit syncs it later); remove it on error."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except OSError as exc:
        err = MailboxError.from_oserror("Couldn't create", path, exc)
        err.temp_file = True
        raise err from exc
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
        return os.fstat(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise MailboxError.write_failure(path, exc) from exc
    finally:
        os.close(fd)


def temp_name(directory: str) -> str:
    """A name procmail-style (``_<pid><serial>.<host>``) that nobody else will pick."""
    return os.path.join(directory, f"_{procinfo.pid()}{next(TEMP_SERIAL)}.{procinfo.nodename()}")


def write_temp(directory: str, data: bytes, mode: int) -> tuple[str, os.stat_result]:
    while True:
        path = temp_name(directory)
        try:
            return path, write_new_file(path, data, mode)
        except MailboxError as exc:
            if not isinstance(exc.__cause__, FileExistsError):
                raise


def link_into_dir(src: str, directory: str, ino: int, msgprefix: str = "msg.") -> str:
    """Hard-link ``src`` (inode ``ino``) as ``<directory>/<msgprefix><ultoan(ino)>``."""
    dest = os.path.join(directory, msgprefix + ultoan(ino))
    try:
        os.link(src, dest)
    except FileExistsError as exc:
        # the name is the inode's own: the same folder named twice on one line already
        # holds this very file, which procmail counts as linked again
        with contextlib.suppress(OSError):
            if os.path.samefile(src, dest):
                return dest
        raise MailboxError.from_oserror("Couldn't make link to", dest, exc) from exc
    except OSError as exc:
        raise MailboxError.from_oserror("Couldn't make link to", dest, exc) from exc
    return dest


def deliver_dir(directory: str, data: bytes, *, umask: int, msgprefix: str = "msg.") -> str:
    """Store ``data`` (already formatted) as a new ``msg.*`` file; returns its path."""
    tmp, st = write_temp(directory, data, message_mode(umask))
    try:
        dest = link_into_dir(tmp, directory, st.st_ino, msgprefix)
    except MailboxError as exc:
        exc.link_failure = True
        raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    fsync_dir(directory)
    return dest
