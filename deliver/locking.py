"""deliver.locking — procmail-compatible dot-locks (flufl.lock underneath) and fcntl locks.

``DotLock(path, policy)`` takes the lock file ``path`` (``box.lock`` for ``box``) so that
procmail, mutt, Postfix local(8) and postroom all exclude one another on the same mailbox:

* the lock is made with flufl.lock's NFS-safe protocol: a unique claim file
  ``<path>|<host>|<pid>|<random>`` is hard-linked to ``path`` (procmail's own lockit() also
  links a unique file to the lock name, so the two exclude each other by link(2) EEXIST);
* the lock file looks like procmail's (PROCMAIL-BEHAVIOUR 39): content ``0``, mode 0400,
  its mtime the time it was made.  flufl.lock would write its claim name into it (procmail
  only breaks lock files of at most 16 bytes) and set its mtime into the future (procmail
  would wait LOCKTIMEOUT past that); both are overridden here;
* procmail's stale-lock policy replaces flufl.lock's (which refuses to break any lock it
  did not write): a regular file of at most 16 bytes whose mtime is more than LOCKTIMEOUT
  seconds older than the file system's clock (read back from our own claim file, as
  procmail does, so client/server clock skew on NFS does not matter) is removed, logged as
  ``Forcing lock on``, and SUSPEND seconds are slept.  LOCKTIMEOUT=0 never breaks a lock.
  The claim file of a broken flufl-style lock is removed with it;
* while the lock is held by someone else we poll with a back-off from 50 ms up to
  LOCKSLEEP (procmail always sleeps LOCKSLEEP); ``policy.timeout`` bounds the total wait;
* a missing directory is retried ``policy.retries`` times, LOCKSLEEP apart, as procmail
  does ("about a minute"); other creation errors fail at once;
* leaving the ``with`` block always removes the lock and the claim file, even on error;
  in a batch (``DotLock(..., claims=...)``, deliver.groupcommit) the claim file is kept,
  unlinked, for the next lock of the same file and stamped anew when reused.

``lock_kernel(fd)`` takes a POSIX record lock on the whole open file (fcntl F_SETLKW, as
procmail's fdlock() and mutt do); ``unlock_kernel(fd)`` drops it.

``implicit_lockfile`` names the lock of a ``:0:`` recipe (PROCMAIL-BEHAVIOUR 38).

Errors: ``LockError`` — temporary=True for a timeout, a missing directory after the
retries, ENOSPC/EIO and the like; temporary=False (``errno`` set) when the directory is not
writable (EACCES/EPERM/EROFS: procmail logs ``Lock failure on`` and carries on unlocked;
the caller decides).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import time
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType

import flufl.lock

from . import procinfo
from .errors import TEMPORARY_ERRNOS, LockError
from .spoolgroup import spool_group

log = logging.getLogger(__name__)

MAX_LOCKSIZE = 16          # procmail's config.h: larger files are never taken for locks
LOCK_MODE = 0o400          # procmail's lock files: read-only, content "0"
_FIRST_POLL = 0.05
_FRESH = 0.1               # seconds: a claim file this young needs no utime(2)
_LIFETIME = timedelta(days=365)   # flufl's own lifetime-based breaking is off (_releasetime)
_host: tuple[str, str] = ("", "")


def _fqdn() -> str:
    """socket.getfqdn(), as flufl.lock names claim files, looked up once per node name
    (uname(2) is a system call; getfqdn() reads /etc/hosts or asks a resolver)."""
    global _host
    node = procinfo.nodename()
    if _host[0] != node:
        import socket
        _host = (node, socket.getfqdn())
    return _host[1]

# Lock files this process holds (absolute paths): a mailbox append inside a ``:0:`` recipe
# must not wait for the lock its own recipe took (procmail: "Deadlock attempted on").
_held: set[str] = set()


def is_held(path: str) -> bool:
    """True when this process holds the lock file ``path`` through a DotLock."""
    return os.path.abspath(path) in _held


@dataclass(frozen=True)
class LockPolicy:
    """procmail's locking variables (LOCKEXT, LOCKTIMEOUT, LOCKSLEEP, SUSPEND) and limits."""

    lockext: str = ".lock"
    locktimeout: int = 1024       # seconds; a lock older than this is broken; 0 = never
    locksleep: float = 8          # seconds between attempts (upper bound of our back-off)
    suspend: float = 16           # seconds slept after breaking a stale lock
    retries: int = 7              # attempts in a missing directory (procmail: about a minute)
    timeout: float | None = None  # total wait for a held lock; None waits as procmail does


class _ProcmailStyleLock(flufl.lock.Lock):
    """flufl.lock's link protocol, with procmail's lock-file shape and stale-lock policy."""

    def __init__(self, lockfile: str, policy: LockPolicy,
                 claims: dict[str, str] | None = None, *, name: str | None = None) -> None:
        # flufl's __init__ minus its socket.getfqdn() (a resolver lookup, most of the cost
        # of a lock): the same attributes, the host name cached per node name.
        self._hostname = _fqdn()
        self._default_timeout = None
        self._lockfile = lockfile
        self._name = lockfile if name is None else name   # as the log lines name it
        self.lifetime = _LIFETIME
        self._separator = flufl.lock.SEP
        self._claims = claims              # a batch's kept claim files (deliver.groupcommit)
        kept = None if claims is None else claims.get(lockfile)
        if kept is None:
            self._set_claimfile()
        else:
            self._claimfile = kept
        self._retry_errnos = []
        self._policy = policy
        self._wait = _FIRST_POLL
        self._written = -1.0               # time.monotonic() of the last claim file made
        self.forced: list[str] = []        # "Forcing lock on" events, for the caller's log

    # -- the lock file's shape --------------------------------------------------------
    def _write(self) -> None:
        """A fresh claim file: content "0", mode 0400 (reopening a 0400 file would fail).
        A claim file left by an earlier attempt of this object is removed first (the name
        is random per object, so there is none to remove on the first attempt)."""
        if self._written >= 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._claimfile)
        elif self._claims is not None and self._reuse_claim():
            return
        fd = os.open(self._claimfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, LOCK_MODE)
        try:
            os.write(fd, b"0")
            os.fchmod(fd, LOCK_MODE)       # whatever the umask
        finally:
            os.close(fd)
        self._written = time.monotonic()
        if self._claims is not None:
            self._claims[self._lockfile] = self._claimfile

    def _reuse_claim(self) -> bool:
        """A batch keeps its claim file between locks (creating an inode is the dearest
        step of a lock): reuse it when it is still ours and unlinked — a plain file of at
        most MAX_LOCKSIZE bytes with one link — stamped with *now*, since the lock's age
        is its mtime.  Anything else (removed, still linked to a lock) gets a fresh name."""
        assert self._claims is not None
        if self._claims.get(self._lockfile) != self._claimfile:
            return False
        try:
            st = os.lstat(self._claimfile)
            usable = stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_size <= MAX_LOCKSIZE
            if usable:
                os.utime(self._claimfile, None)
        except OSError:
            usable = False
        if not usable:
            del self._claims[self._lockfile]
            self._set_claimfile()
            return False
        self._written = time.monotonic()
        return True

    def unlock(self, *, unconditionally: bool = False) -> None:
        """flufl's unlock, but a batch's claim file stays for the next lock."""
        if self._claims is None:
            super().unlock(unconditionally=unconditionally)
            return
        if not self._is_locked_no_refresh():
            if self._claims.get(self._lockfile) == self._claimfile:
                del self._claims[self._lockfile]      # the caller removes the claim file
            if not unconditionally:
                raise flufl.lock.NotLockedError("Already unlocked")
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._lockfile)

    def _touch(self, filename: str | None = None) -> None:
        """Stamp with *now*, never the future: procmail ages locks by their mtime.
        flufl touches the claim file right after making it, again after the link and
        once more on unlock; within _FRESH seconds of making it the mtime already is
        "now" and the utime(2) calls are skipped (a lock that waited is stamped anew)."""
        if filename is None and time.monotonic() - self._written < _FRESH:
            return
        self._stamp(filename or self._claimfile)

    @staticmethod
    def _stamp(path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(path, None)

    @property
    def _linkcount(self) -> int:
        """A lock made by procmail or mutt (1 link) is "someone else's lock", not an error."""
        try:
            n = os.stat(self._lockfile).st_nlink
        except FileNotFoundError:
            return -1
        return 2 if n == 1 else n

    def _is_locked_no_refresh(self) -> bool:
        """Ours if the lock file is our claim file (same inode); contents are always "0"."""
        try:
            a, b = os.stat(self._lockfile), os.stat(self._claimfile)
        except FileNotFoundError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    # -- waiting and breaking ---------------------------------------------------------
    @property
    def _releasetime(self) -> int:
        return -1                          # flufl's own lifetime-based breaking is off

    def _fs_now(self) -> float:
        """The file system's clock, read from our freshly touched claim file."""
        try:
            self._stamp(self._claimfile)
            return os.stat(self._claimfile).st_mtime
        except OSError:
            return time.time()

    def _sleep(self) -> None:
        """Called by flufl between attempts: break a stale lock (procmail's rule) or wait."""
        broken = self._break_if_stale()
        if broken:
            if broken == "stale":          # procmail's pause after forcing a slow owner out;
                time.sleep(self._policy.suspend)   # a dead owner has nothing to finish
            self._wait = _FIRST_POLL
            return
        time.sleep(self._wait)
        self._wait = min(self._wait * 2, max(self._policy.locksleep, _FIRST_POLL))

    def _break_if_stale(self) -> str | None:
        """Break the lock when nobody can hold it any more: "orphaned" when its claim
        file names a dead process on this host (a killed delivery: waiting LOCKTIMEOUT,
        1024 s, would stall the mailbox for nothing), "stale" when it is older than
        LOCKTIMEOUT (procmail's rule, the only one for procmail's and mutt's plain lock
        files).  None when the lock stays."""
        try:
            st = os.lstat(self._lockfile)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(st.st_mode) or st.st_size > MAX_LOCKSIZE:
            return None
        reason = "orphaned" if st.st_nlink >= 2 and self._owner_is_dead(st) else None
        if reason is None:
            timeout = self._policy.locktimeout
            if not timeout or not timeout < self._fs_now() - st.st_mtime:
                return None
            reason = "stale"
        try:                               # still the same file? (stat..unlink is a race)
            again = os.lstat(self._lockfile)
            if (again.st_ino, again.st_mtime) != (st.st_ino, st.st_mtime):
                return False
            claims = self._foreign_claims(st)
            os.unlink(self._lockfile)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning('Forced unlock denied on "%s": %s', self._name, exc.strerror)
            return None
        log.warning('Forcing lock on "%s"', self._name)
        self.forced.append(self._name)
        for claim in claims:
            with contextlib.suppress(OSError):
                os.unlink(claim)
        return reason

    def _owner_is_dead(self, st: os.stat_result) -> bool:
        """True when every claim file of the lock (``<lock>|<host>|<pid>|<n>``) names this
        host and a process that no longer exists.  A live or foreign owner, a reused pid
        that happens to be alive, or an unreadable name all keep the lock."""
        claims = self._foreign_claims(st)
        if not claims:
            return False
        base = os.path.basename(self._lockfile) + self._separator
        for claim in claims:
            fields = os.path.basename(claim)[len(base):].split(self._separator)
            if len(fields) != 3 or fields[0] != self._hostname or not fields[1].isdigit():
                return False
            try:
                os.kill(int(fields[1]), 0)
                return False
            except ProcessLookupError:
                continue
            except OSError:               # EPERM: alive, someone else's
                return False
        return True

    def _foreign_claims(self, st: os.stat_result) -> list[str]:
        """Claim files of a flufl-style lock (same inode as the lock), to remove with it."""
        if st.st_nlink < 2:
            return []
        directory = os.path.dirname(self._lockfile) or "."
        prefix = os.path.basename(self._lockfile) + self._separator
        found = []
        with contextlib.suppress(OSError), os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith(prefix) and entry.path != self._claimfile:
                    with contextlib.suppress(OSError):
                        if entry.inode() == st.st_ino:
                            found.append(entry.path)
        return found


class DotLock:
    """A procmail-compatible lock file at ``path``, held for a ``with`` block.

    Raises LockError on failure (see the module docstring); ``retry_missing_dir=False``
    fails at once (errno ENOENT/ENOTDIR) where procmail would retry a missing directory
    for a minute.  Never leaves ``path`` or a claim file behind once the block is left —
    except, with ``claims`` (a batch's dict of lock file -> claim file,
    deliver.groupcommit), the claim file, which is kept there unlinked for the next lock
    of the same file and removed by the batch's owner.
    """

    def __init__(self, path: str, policy: LockPolicy = LockPolicy(), *,
                 claims: dict[str, str] | None = None, retry_missing_dir: bool = True,
                 key: str | None = None, cwd: str | None = None) -> None:
        self.path = path
        self._given_key = key                 # os.path.abspath(path), when the caller knows it
        self._cwd = cwd                       # the working directory, when the caller knows it
        self.policy = policy
        self._claims = claims
        self._retry_missing_dir = retry_missing_dir
        self._lock: _ProcmailStyleLock | None = None
        self._key = ""

    @property
    def forced(self) -> list[str]:
        """Lock files broken as stale while acquiring (for ``Forcing lock on`` log lines)."""
        return self._lock.forced if self._lock else []

    def acquire(self) -> None:
        # A relative name is made absolute now, so that the lock is released where it was
        # made even if the working directory changes meanwhile (a relative LOCKFILE, then
        # MAILDIR=elsewhere: procmail's unlink then misses, logs "Couldn't unlock" and
        # leaves the lock to stall the next deliveries for LOCKTIMEOUT).  Joined, not
        # normalised: "dir/../x.lock" must stay the file the kernel finds through dir.
        path = self.path
        if not path.startswith("/"):
            cwd = self._cwd
            if cwd is None:
                with contextlib.suppress(OSError):     # a removed cwd: the name as it is
                    cwd = os.getcwd()
            if cwd is not None:
                path = os.path.join(cwd, path)
        lock = _ProcmailStyleLock(path, self.policy, self._claims, name=self.path)
        timeout = None if self.policy.timeout is None else timedelta(seconds=self.policy.timeout)
        tries = 0
        while True:
            try:
                with spool_group(path):
                    lock.lock(timeout=timeout)
                break
            except flufl.lock.TimeOutError:
                raise LockError(f'Lock timeout on "{self.path}"', path=self.path) from None
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(lock.claimfile)
                if exc.errno in (errno.ENOENT, errno.ENOTDIR) and self._retry_missing_dir \
                        and tries < self.policy.retries:
                    tries += 1               # procmail retries a missing directory
                    time.sleep(self.policy.locksleep)
                    continue
                err = LockError(f'Lock failure on "{self.path}": {exc.strerror}', path=self.path,
                                temporary=exc.errno in TEMPORARY_ERRNOS or exc.errno in (errno.ENOENT, errno.ENOTDIR))
                err.errno = exc.errno       # type: ignore[attr-defined]
                raise err from exc
        self._lock = lock
        # as held; release uses the same key
        self._key = self._given_key or os.path.abspath(self.path)
        _held.add(self._key)

    def release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is None:
            return
        _held.discard(self._key)
        try:
            with spool_group(lock.lockfile):
                lock.unlock()
        except flufl.lock.NotLockedError:
            # Someone judged our lock stale and broke it (or removed it): the fcntl lock
            # still covered the write; procmail's unlock() says so in these words
            log.warning('Couldn\'t unlock "%s"', self.path)
            with contextlib.suppress(OSError):
                os.unlink(lock.claimfile)

    def __enter__(self) -> "DotLock":
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def lock_kernel(fd: int, *, timeout: float | None = None) -> None:
    """Take an exclusive fcntl lock on the whole file ``fd`` (procmail's fdlock()).

    ``timeout`` None blocks (F_SETLKW); otherwise polls and raises LockError(temporary).
    A function pair, not a context manager: every mbox append takes one, and
    ExitStack.callback(unlock_kernel, fd) costs less than a generator's frame.
    """
    try:
        if timeout is None:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise
                time.sleep(_FIRST_POLL)
    except OSError as exc:
        raise LockError(f"Kernel-lock failed: {exc.strerror}") from exc


def unlock_kernel(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.lockf(fd, fcntl.LOCK_UN)


def implicit_lockfile(action: str, *, program: bool, lockext: str = ".lock") -> str | None:
    """The lock file of a ``:0:`` recipe without a name (PROCMAIL-BEHAVIOUR 38).

    A folder action locks ``<first folder>$LOCKEXT`` (``box.lock``, ``dir/.lock`` for a
    maildir, ``dir/..lock`` for MH).  A program locks the word after its first ``>>`` plus
    LOCKEXT; None when there is no ``>>`` (procmail logs ``Couldn't determine implicit
    lockfile`` and locks plain ``$LOCKEXT``).  ``action`` is already variable-expanded.
    """
    if program:
        at = action.find(">>")
        if at < 0:
            return None
        words = action[at + 2 :].split()
        return words[0] + lockext if words else None
    words = action.split()
    return (words[0] if words else "") + lockext
