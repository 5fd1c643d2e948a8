"""The mail spool's group, raised only to make and remove dot-lock files.

Why: /var/mail is root:mail 2775 on Debian; a user cannot create ``/var/mail/USER.lock``
there.  procmail is setgid mail for exactly this.  deliver.identity.drop_privileges keeps
the spool's group as the process's *saved* gid; this context manager raises it as the
effective gid for the few system calls that make or remove a lock file, then lowers it
again.  exec() copies the effective gid into the saved one, so programs that recipes
start never get the group.  Tiny on purpose: deliver.locking imports it on the hot path.
"""

from __future__ import annotations

import os


class spool_group:
    """Raise the saved gid (the spool's group, see drop_privileges) for a ``with``
    block.  A no-op for a process that keeps no such group.  A class rather than a
    generator: it wraps every lock and unlock of every delivery."""

    __slots__ = ("_lowered",)

    def __enter__(self) -> None:
        _real, effective, saved = os.getresgid()
        if saved == effective or os.geteuid() == 0:
            self._lowered = -1
            return
        os.setegid(saved)
        self._lowered = effective

    def __exit__(self, *exc: object) -> None:
        if self._lowered >= 0:
            os.setegid(self._lowered)
