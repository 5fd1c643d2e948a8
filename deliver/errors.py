"""deliver.errors — the typed failures of mailbox writing and locking.

Every error carries ``temporary``: True means "try again later" (sysexits EX_TEMPFAIL, 75:
a full disk, a file size limit, an I/O error, a lock that could not be had), False means the
delivery can never succeed as asked (a symlinked spool mailbox, a folder that is not a
directory).  The command layer maps these to procmail's exit codes in one place; nothing
here exits or logs on the caller's behalf.
"""

from __future__ import annotations

import errno

# errnos after which the same delivery may well succeed later (Postfix local(8) defers on
# these; procmail logs "No space left to finish writing" / "Quota exceeded while writing").
TEMPORARY_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EAGAIN, errno.EINTR,
     errno.ESTALE, errno.ENOLCK, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ETIMEDOUT}
)


# procmail's writefolder(): what it logs when writing (not opening) a folder fails
_WRITE_FAILURES = {errno.ENOSPC: "No space left to finish writing",
                   errno.EDQUOT: "Quota exceeded while writing"}


class DeliveryError(Exception):
    """Base of every deliver/ error; ``temporary`` says whether a retry may succeed."""

    temporary: bool

    def __init__(self, message: str, *, temporary: bool = False, path: str | None = None) -> None:
        super().__init__(message)
        self.temporary = temporary
        self.path = path
        # what procmail's LASTFOLDER holds after this failure, when not the action's
        # names (deliver.folders sets it); ``keeps_lastfolder``: procmail failed before
        # it named any file (a Maildir, MH or directory temp file), so LASTFOLDER keeps
        # the value it had before the action
        self.lastfolder = ""
        self.keeps_lastfolder = False
        # procmail's log line for the failure: ``<log_head> "<path>"``
        self.log_head = "Error while writing to"
        # a temp file of a Maildir, MH or directory folder could not be created
        self.temp_file = False
        # an MH or directory folder's new file could not be linked to its final name
        self.link_failure = False
        # the folder's name did not fit procmail's LINEBUF (PROCMAIL_OVERFLOW=yes)
        self.overflow = False


class MailboxError(DeliveryError):
    """A folder could not be written (whole); nothing partial was left behind."""

    @classmethod
    def from_oserror(cls, what: str, path: str, exc: OSError) -> "MailboxError":
        """Wrap ``exc``; temporary when its errno is one a later retry can cure."""
        return cls(f'{what} "{path}": {exc.strerror or exc}', temporary=exc.errno in TEMPORARY_ERRNOS,
                   path=path)

    @classmethod
    def write_failure(cls, path: str, exc: OSError, *, synced: bool = True) -> "MailboxError":
        """A write into ``path`` failed: logged as procmail's dump() failures are, a full
        disk or quota by name, anything else as "Error while writing to".  ``synced``:
        False for a device, where procmail's fsync() after the write replaces errno."""
        err = cls.from_oserror("Error while writing to", path, exc)
        if synced:
            err.log_head = _WRITE_FAILURES.get(exc.errno or 0, err.log_head)
        return err


class LockError(DeliveryError):
    """A lock file (or kernel lock) could not be obtained; temporary unless said otherwise."""

    def __init__(self, message: str, *, temporary: bool = True, path: str | None = None) -> None:
        super().__init__(message, temporary=temporary, path=path)


class Terminated(BaseException):
    """A signal ended the delivery (deliver.cli installs the handlers): the agent logs
    procmail's "Terminating prematurely" and requeues (75) or bounces (73) the mail.
    A BaseException, so that no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int, requeue: bool) -> None:
        super().__init__(signum)
        self.signum = signum
        self.requeue = requeue
