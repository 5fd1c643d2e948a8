"""mta.smtp.server — the SMTP listener: accepts connections and runs one Session each.

``SmtpServer(hostname=, policy=, spool=, limits=, on_queued=)``; ``await start(host,
port)`` listens (port 0 picks a free port, the actual address is returned), or ``await
start(host, port, sock=listening_socket)`` accepts from a socket bound earlier; ``await
stop()`` stops accepting, tells idle sessions ``421 4.3.2`` and lets sessions inside DATA
finish their transaction.

Guarantees: at most ``limits.max_connections`` sessions run at once — one more gets
``421 4.3.2`` and is closed (counted across the daemon's receiver processes when a
``SessionCount`` is given); a session's unexpected exception is logged and closes only
that connection.  Policy decisions are made by the ``SessionPolicy`` passed in (the
protocol layer knows no maps); the default reply texts come from mta.reply.

``SessionPolicy`` is called synchronously on the event loop: a policy that does slow I/O
(DNS) must bound its own time.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Mapping
from typing import Protocol

from ..queue.spool import Spool
from ..verdict import Verdict
from .limits import ServerLimits
from .session import Session
from .sessioncount import SessionCount

log = logging.getLogger("mta.smtp")


class SessionPolicy(Protocol):
    """Decisions at each SMTP stage; implemented by mta.policy (and SimplePolicy)."""

    def check_connect(self, client_ip: str) -> Verdict: ...

    def check_helo(self, client_ip: str, helo: str) -> Verdict: ...

    def check_mail(self, client_ip: str, helo: str, sender: str,
                   params: Mapping[str, str]) -> Verdict: ...

    def check_rcpt(self, client_ip: str, helo: str, sender: str, recipient: str) -> Verdict: ...


class SmtpServer:
    """One SMTP listener sharing a spool, a policy and limits across its sessions."""

    def __init__(self, *, hostname: str, policy: SessionPolicy, spool: Spool,
                 limits: ServerLimits, on_queued: Callable[[str], None] | None = None,
                 session_count: SessionCount | None = None, slot: int = 0) -> None:
        self.hostname = hostname
        self.policy = policy
        self.spool = spool
        self.limits = limits
        self.on_queued = on_queued
        # Shared with the daemon's other receiver processes (mta.smtp.sessioncount):
        # max_connections then bounds them all together.  None: this server alone.
        self.session_count = session_count
        self.slot = slot
        self._server: asyncio.Server | None = None
        self._sessions: set[Session] = set()
        self.closing = False

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    async def start(self, host: str, port: int, *, sock: socket.socket | None = None) -> tuple[str, int]:
        """Listen on host:port, or on ``sock``, a listening socket bound before the
        daemon forked its receiver processes (they all accept from it)."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(self._new_session, sock=sock)
        else:
            self._server = await loop.create_server(self._new_session, host, port, backlog=128)
        addr = self._server.sockets[0].getsockname()
        log.info("listening on %s:%d", addr[0], addr[1])
        return addr[0], addr[1]

    def _new_session(self) -> Session:
        return Session(self)

    def admit(self, session: Session) -> bool:
        """Called by a new session: False when it must be refused (the cap, or stopping)."""
        held = self.session_count.total() if self.session_count else len(self._sessions)
        if self.closing or held >= self.limits.max_connections:
            return False
        self._sessions.add(session)
        self._publish()
        return True

    def forget(self, session: Session) -> None:
        """Called by a session whose connection is gone."""
        if session in self._sessions:
            self._sessions.discard(session)
            self._publish()

    def _publish(self) -> None:
        if self.session_count is not None:
            self.session_count.set(self.slot, len(self._sessions))

    async def stop(self) -> None:
        self.closing = True
        if self._server is not None:
            self._server.close()
        sessions = list(self._sessions)
        for session in sessions:
            session.request_stop()
        if sessions:
            await asyncio.gather(*(session.closed for session in sessions), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
