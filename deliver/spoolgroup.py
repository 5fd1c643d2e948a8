"""The mail spool's group, raised only to make and remove the spool mailbox's lock.

Why: /var/mail is root:mail 2775 on Debian; a user cannot create ``/var/mail/USER.lock``
there.  procmail is setgid mail for exactly this.  deliver.identity.drop_privileges keeps
the spool's group as the process's *saved* gid and names the one lock file it is for
(``allow``); this context manager raises it as the effective gid for the few system
calls that make or remove that lock file, then lowers it again.  Any other lock file
gets the user's own rights, as procmail's lockit() raises the group only for its
default mailbox's lock (``defdeflock``): with the group raised for every lock, a
recipe's ``LOCKFILE=/var/mail/victim`` made, held and broke files in the spool (another
user's empty mailbox, forced as a stale lock, was removed).  exec() copies the effective
gid into the saved one, so programs that recipes start never get the group.  Tiny on
purpose: deliver.locking imports it on the hot path.
"""

from __future__ import annotations

import os
import stat


# (effective gid, saved gid) when the saved one is to be raised, None when there is
# nothing to raise; False: not looked at yet.  Read once, not at each of the four
# lock and unlock calls of every delivery (getresgid and geteuid are system calls);
# forgotten by ``forget`` wherever the process changes its ids and in a forked child.
_ids: tuple[int, int] | None | bool = False
# the lock file (absolute, normalised) the group is raised for: the spool mailbox's
_allowed: str | None = None


def mail_group(spool_dir: str) -> int | None:
    """The group of a spool directory that group may write (not root's), as Debian's
    /var/mail (root:mail 2775); None for any other spool (or none at all)."""
    try:
        st = os.stat(spool_dir)
    except OSError:
        return None
    return st.st_gid if st.st_mode & stat.S_IWGRP and st.st_gid != 0 else None


def allow(lockfile: str | None) -> None:
    """The one lock file the spool group may be raised for (None: none)."""
    global _allowed
    _allowed = None if lockfile is None else os.path.normpath(lockfile)


def forget() -> None:
    """The process's ids changed (deliver.identity, deliver.zygote, deliver.deliverd):
    look again at the next lock."""
    global _ids
    _ids = False


os.register_at_fork(after_in_child=forget)


def _raisable() -> tuple[int, int] | None:
    global _ids
    if _ids is False:
        _real, effective, saved = os.getresgid()
        _ids = None if saved == effective or os.geteuid() == 0 else (effective, saved)
    return _ids  # type: ignore[return-value]


class spool_group:
    """Raise the saved gid (the spool's group, see drop_privileges) for a ``with``
    block around making or removing ``lockfile`` (absolute), when that is the one lock
    file ``allow`` named.  A no-op otherwise, and for a process that keeps no such
    group.  A class rather than a generator: it wraps every lock and unlock of every
    delivery."""

    __slots__ = ("_lowered", "_lockfile")

    def __init__(self, lockfile: str) -> None:
        self._lockfile = lockfile

    def __enter__(self) -> None:
        ids = _raisable()
        if ids is None or _allowed is None or os.path.normpath(self._lockfile) != _allowed:
            self._lowered = -1
            return
        effective, saved = ids
        os.setegid(saved)
        self._lowered = effective

    def __exit__(self, *exc: object) -> None:
        if self._lowered >= 0:
            os.setegid(self._lowered)
