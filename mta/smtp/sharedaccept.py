"""An event loop for receivers that share listening sockets: a connection wakes one.

Why: the daemon's receiver processes all accept from the same listening sockets
(mta.serve binds them before forking).  asyncio registers a listening socket in its
epoll like any other reader, so every connection woke every idle receiver; all but one
found nothing to accept (under smtp-source load, strace counted an ``accept4`` failing
with EAGAIN for every second message, each costing the loser a wake-up, a system call
and a turn of its loop).  With EPOLLEXCLUSIVE (Linux 4.5) the kernel wakes one of the
receivers waiting in epoll_wait; a receiver busy elsewhere is skipped, so an idle one
gets the connection.  A busy receiver may still find the socket ready when it returns
to epoll (level-triggered) and lose the race then; that is the rare case now.

``new_loop(sockets)`` makes the loop; everything else behaves as asyncio's default.
"""

from __future__ import annotations

import asyncio
import select
import selectors
import socket
from collections.abc import Iterable


class SharedAcceptSelector(selectors.EpollSelector):
    """An EpollSelector that registers the given file descriptors for reading with
    EPOLLEXCLUSIVE.  The kernel refuses EPOLL_CTL_MOD on such an entry, so a change of
    its events is made as unregister + register."""

    def __init__(self, shared_fds: Iterable[int]) -> None:
        super().__init__()
        self._shared = frozenset(shared_fds)

    def _exclusive(self, key: selectors.SelectorKey) -> bool:
        return key.fd in self._shared and key.events == selectors.EVENT_READ

    def register(self, fileobj, events, data=None):  # type: ignore[no-untyped-def]
        key = super().register(fileobj, events, data)
        if self._exclusive(key):
            self._selector.unregister(key.fd)
            self._selector.register(key.fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
        return key

    def modify(self, fileobj, events, data=None):  # type: ignore[no-untyped-def]
        key = self.get_key(fileobj)
        if key.fd not in self._shared or events == key.events:
            return super().modify(fileobj, events, data)
        self.unregister(fileobj)
        return self.register(fileobj, events, data)


def new_loop(sockets: Iterable[socket.socket]) -> asyncio.AbstractEventLoop:
    """A selector event loop whose accepts from ``sockets`` wake one waiting process."""
    if not hasattr(select, "EPOLLEXCLUSIVE"):       # pragma: no cover - not Linux
        return asyncio.new_event_loop()
    return asyncio.SelectorEventLoop(SharedAcceptSelector(s.fileno() for s in sockets))
