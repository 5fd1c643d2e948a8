"""mta.userslots — at most N deliveries to one local user at once, across processes.

Why: the split daemon's delivery runners (mta.deliveryrunners) each deliver one message
at a time.  Without a bound, mail for a user whose recipes are slow (a spam filter
waiting on a dead daemon, a program hanging until procmail's TIMEOUT) could occupy
every runner while everybody else's mail waits.  Postfix bounds this with
local_destination_concurrency_limit (default 2); the pool of the other delivery modes
keeps one worker free the same way (Runner's per-user gate).

How: ``count`` slot files per user in a server-private directory, each taken with a
non-blocking flock.  A runner that finds every slot of the user taken looks again for up
to ``wait`` seconds (a slot held by an ordinary delivery is free within milliseconds:
under the benchmark's load, all mail for one user, giving up at once put a message back
for nearly every third delivery, at 7% more CPU per message and 8% less throughput);
then the recipient stays pending and the message goes back to incoming/ for a retry a
moment later (mta.deliveryrunners), so the runner is free for other mail.  flock belongs
to the open file description, so the slots exclude each other between processes and
between UserSlots objects of one process, and the kernel drops a dead runner's slot.

Each process keeps its slot files open (one descriptor per slot of the users it has
delivered to lately, at most MAX_USERS users), so taking a slot is one flock(2).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time

MAX_USERS = 256


class Slot:
    """A taken slot; ``release()`` (or leaving the ``with`` block) gives it back."""

    __slots__ = ("_fd", "_held")

    def __init__(self, fd: int, held: set[int]) -> None:
        self._fd, self._held = fd, held
        held.add(fd)

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._held.discard(self._fd)
            self._fd = -1

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class UserSlots:
    """``count`` delivery slots per user, shared by every process using ``directory``
    (see the module docstring); ``take`` looks for a free one for ``wait`` seconds."""

    def __init__(self, directory: str, count: int, wait: float = 0.0) -> None:
        if count < 1:
            raise ValueError("a user needs at least one delivery slot")
        self.directory, self.count, self.wait = directory, count, wait
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._fds: dict[str, list[int]] = {}
        self._held: set[int] = set()        # descriptors of slots taken and not released

    def take(self, user: str) -> Slot | None:
        """One of ``user``'s slots, or None when all stayed taken (by any process) for
        ``wait`` seconds.  flock cannot wait for one of several files, nor with a
        timeout: the wait polls, from half a millisecond apart up to five."""
        fds = self._slot_fds(user)
        deadline = 0.0
        pause = 0.0005
        while True:
            for fd in fds:
                if fd in self._held:         # flock would grant our own lock again
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                return Slot(fd, self._held)
            now = time.monotonic()
            if not deadline:
                deadline = now + self.wait
            if now >= deadline:
                return None
            time.sleep(min(pause, deadline - now))
            pause = min(pause * 2, 0.005)

    def close(self) -> None:
        """Close the slot files of every user none of whose slots is taken here (closing
        a taken one would drop its lock)."""
        for user, fds in list(self._fds.items()):
            if not self._held.intersection(fds):
                for fd in fds:
                    os.close(fd)
                del self._fds[user]

    def _slot_fds(self, user: str) -> list[int]:
        fds = self._fds.get(user)
        if fds is None:
            if len(self._fds) >= MAX_USERS:
                self.close()
            # A hash, not the name: a user name never becomes a file name unchecked.
            base = os.path.join(self.directory, "user-" + hashlib.sha1(user.encode()).hexdigest()[:24])
            fds = self._fds[user] = [
                os.open(f"{base}.{i}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
                for i in range(self.count)]
        return fds
