"""deliver.mbox — append one message to an mbox file, whole or not at all.

``append_mbox(path, data, policy=..., umask=...)`` appends the already formatted bytes
(deliver.mboxformat.mbox_bytes) to ``path``:

* locked, always (a deliberate difference from procmail, which dot-locks only with
  ``:0:``): first the dot-lock ``path + LOCKEXT`` (deliver.locking.DotLock, skipped when
  ``lock=False`` — the caller holds it through ``:0:`` or LOCKFILE — or when this process
  already holds it, or when LOCKEXT is empty, or — with a warning, as procmail's "Lock
  failure" — when the directory does not let us create it), then, in every case, an fcntl
  lock on the open file (as procmail's fdlock()), so procmail, mutt, Dovecot and Postfix
  local(8) can share it;
* created with mode 0666 & ~umask; when the umask leaves o+x allowed the file gets o+x
  (procmail's "new mail" bit, PROCMAIL-BEHAVIOUR 20);
* written with O_APPEND, then fsync'd; if any write or the fsync fails the file is cut back
  to its old size (ftruncate + fsync) and MailboxError(temporary=True) is raised, so the
  mailbox is byte-identical to what it was and the queue retries;
* procmail's NFS-era sleep (one second when atime equals mtime after the first write) is
  deliberately not copied;
* ``spool_checks=True`` (a system spool such as /var/mail): a symlink, a hard-linked file,
  something not a regular file, or a file owned by another user is refused
  (MailboxError(temporary=False)) — the classic LDA symlink attack; the opened file is
  re-checked against the name to close the check/open race.

Returns the number of bytes written.  Raises MailboxError or (from the dot-lock, on timeout)
LockError.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat

from . import spoolgroup
from .errors import LockError, MailboxError
from .groupcommit import GroupCommit
from .locking import DotLock, LockPolicy, is_held, lock_kernel, unlock_kernel

log = logging.getLogger(__name__)

UPDATE_MASK = stat.S_IXOTH     # procmail's "new mail" bit


_OPEN_ATTEMPTS = 20


def _open_append(path: str, mode: int, spool_checks: bool) -> int:
    """Open ``path`` for appending, creating it exclusively with ``mode`` when missing.

    Outside the spool a dangling symlink is followed and its target created, as
    procmail does with a user's own folder (a spool mailbox that is a symlink is
    refused).  Bounded: a name that keeps changing between the two opens fails the
    delivery rather than spinning."""
    nofollow = os.O_NOFOLLOW if spool_checks else 0
    target = path
    for _ in range(_OPEN_ATTEMPTS):
        try:
            return os.open(path, os.O_WRONLY | os.O_APPEND | nofollow)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno == errno.ELOOP and spool_checks:
                raise MailboxError(f'Refusing symlinked mailbox "{path}"', path=path) from exc
            raise MailboxError.from_oserror("Error while writing to", path, exc) from exc
        if not spool_checks and os.path.islink(path):
            target = os.path.realpath(path)     # dangling: create what it points to
        try:
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        except FileExistsError:
            continue                       # someone created it meanwhile: open theirs
        except OSError as exc:
            raise MailboxError.from_oserror("Error while writing to", path, exc) from exc
        os.fchmod(fd, mode)                # independent of the process umask
        return fd
    raise MailboxError(f'Error while writing to "{path}"', path=path)


def _check_spool(path: str, fd: int) -> None:
    """Refuse what an attacker could have put in a shared spool directory."""
    st = os.fstat(fd)
    try:
        lst = os.lstat(path)
    except OSError as exc:
        raise MailboxError.from_oserror("Cannot stat mailbox", path, exc) from exc
    problem = None
    if stat.S_ISLNK(lst.st_mode):
        problem = "is a symlink"
    elif (lst.st_dev, lst.st_ino) != (st.st_dev, st.st_ino):
        problem = "changed while being opened"
    elif not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif st.st_uid != os.geteuid():
        problem = f"is owned by uid {st.st_uid}"
    elif st.st_nlink != 1:
        problem = "has several hard links"
    if problem:
        raise MailboxError(f'Refusing mailbox "{path}": it {problem}', path=path)


# procmail's screenmailbox(): the spool mailbox loses the bits its INIT_UMASK (077)
# would not give, unless OVERRIDE_MASK says its owner set the mode on purpose; the group
# read/write bits stay (a mail group may need them)
_SPOOL_LOOSE = 0o077 & ~(stat.S_IRGRP | stat.S_IWGRP)
_SPOOL_OVERRIDE = stat.S_IXUSR | stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX


def tighten_spool_mailbox(path: str, uid: int) -> bool:
    """Take from the user's spool mailbox the bits procmail's umask would not give it,
    as procmail does before reading any rc file; whether it did (the caller logs
    procmail's "Enforcing stricter permissions on").  The umask is 077, or 007 in a
    spool its group may write (Debian's root:mail 2775: 0644 -> 0640, 0666 -> 0660, the
    mail group keeps its access), as screenmailbox() sets it.  Only a regular file of
    the user's own with one link is touched; anything else is left to the delivery's
    checks."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != uid or st.st_nlink != 1 \
            or not mode & stat.S_IWUSR or mode & _SPOOL_OVERRIDE or not mode & 0o077 & _SPOOL_LOOSE:
        return False               # the usual case, decided without a look at the spool
    cumask = 0o007 if spoolgroup.mail_group(os.path.dirname(path) or ".") is not None else 0o077
    if not mode & cumask & _SPOOL_LOOSE:
        return False
    try:     # through a descriptor of that very file: no symlink swapped in meanwhile
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return False
        os.fchmod(fd, mode & ~cumask)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def append_mbox(path: str, data: bytes, *, policy: LockPolicy = LockPolicy(), umask: int = 0o077,
                lock: bool = True, spool_checks: bool = False,
                group: GroupCommit | None = None) -> int:
    """Append ``data`` to the mbox ``path`` (see the module docstring); returns len(data).
    With a ``group`` the fsync is left to the group's commit (deliver.groupcommit) and the
    dot-lock reuses the group's claim file."""
    if path == os.devnull:
        return len(data)                   # procmail: "save the effort on /dev/null"
    if spool_checks:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISLNK(os.lstat(path).st_mode):
                raise MailboxError(f'Refusing mailbox "{path}": it is a symlink', path=path)
    with contextlib.ExitStack() as stack:
        lockfile = path + policy.lockext
        if lock and policy.lockext and not is_held(lockfile):
            try:
                # No directory, no mailbox: the open below fails at once and says so,
                # where a lock in a missing directory would be retried for a minute
                # (procmail item 40) — hence no retries here.
                stack.enter_context(DotLock(lockfile, policy, retry_missing_dir=False,
                                            claims=None if group is None else group.claims))
            except LockError as exc:
                missing_dir = getattr(exc, "errno", None) in (errno.ENOENT, errno.ENOTDIR)
                if exc.temporary and not missing_dir:
                    raise MailboxError(str(exc), temporary=True, path=path) from exc
                # The implicit lock is postroom's own addition: procmail would not have
                # tried, so this is not a line for the user's LOGFILE.
                log.debug("%s; relying on the kernel lock", exc)
        fd = _open_append(path, 0o666 & ~umask, spool_checks)
        stack.callback(os.close, fd)
        if spool_checks:
            _check_spool(path, fd)
        st = os.fstat(fd)
        if not (st.st_mode | umask) & UPDATE_MASK:
            with contextlib.suppress(OSError):
                os.fchmod(fd, stat.S_IMODE(st.st_mode) | UPDATE_MASK)
        # the kernel lock always, as procmail's fdlock(): ``lock=False`` only means the
        # dot-lock is the recipe's (``:0:``), and a kernel-lock-only reader (Dovecot, mutt
        # without dotlock) must still be kept out of a half-written message
        fifo = stat.S_ISFIFO(st.st_mode)
        if fifo:
            # a named pipe: procmail's fdlock() fails on it and the mail is written
            # anyway (a reader gets it whole; there is nothing to cut back)
            log.warning("Kernel-lock failed")
            stack.callback(log.warning, "Kernel-unlock failed")
        else:
            try:
                lock_kernel(fd, timeout=policy.timeout)
            except LockError as exc:
                raise MailboxError(str(exc), temporary=True, path=path) from exc
            stack.callback(unlock_kernel, fd)
        old_size = 0 if fifo else os.lseek(fd, 0, os.SEEK_END)
        try:
            _write_all(fd, data)
            # a device (a symlink to /dev/null, /dev/zero) has nothing to sync: procmail's
            # dump() takes fsync's EINVAL for "wasn't a file"
            if stat.S_ISREG(st.st_mode):
                if group is None:
                    os.fsync(fd)
                else:
                    group.wrote(fd, st)
        except BaseException as exc:       # a failed write, or a signal (Terminated)
            if stat.S_ISREG(st.st_mode):   # a device (/dev/full) has nothing to cut back
                _truncate_back(fd, path, old_size)
            if not isinstance(exc, OSError):
                raise
            # on a device procmail's fsync() fails with EINVAL after the write, and
            # that errno, not ENOSPC, decides its log line
            err = MailboxError.write_failure(path, exc, synced=stat.S_ISREG(st.st_mode))
            err.temporary = True           # the mailbox is intact: let the queue retry
            raise err from exc
    return len(data)


def _truncate_back(fd: int, path: str, old_size: int) -> None:
    """Undo a partial append (procmail: "Truncated file to former size")."""
    try:
        os.ftruncate(fd, old_size)
        os.fsync(fd)
        log.info('Truncated "%s" to former size %d', path, old_size)
    except OSError as exc:
        log.error('Could not truncate "%s" back to %d bytes: %s', path, old_size, exc.strerror)
