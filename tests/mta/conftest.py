"""Fixtures for the SMTP receiver and queue tests: a real server on 127.0.0.1:0.

``smtp_server(**limits)`` starts an SmtpServer on its own event loop in a thread (each
test runs twice: asyncio's loop, then the receivers' uvloop), so the tests can talk to it
with blocking clients (smtplib, raw sockets, swaks) and read the spool directly.
``RawClient`` is a tiny line-level SMTP client for what smtplib will not send (pipelined
batches, smuggling sequences, NUL bytes, early talk).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

import mta.eventloop
from mta.queue import Spool
from mta.smtp.limits import ServerLimits
from mta.smtp.server import SessionPolicy, SmtpServer
from mta.smtp.simplepolicy import SimplePolicy

FAST = ServerLimits(greet_pause=0, idle_timeout=10, data_timeout=10)


@dataclass
class RunningServer:
    host: str
    port: int
    spool: Spool
    server: SmtpServer
    loop: asyncio.AbstractEventLoop
    notified: list[str] = field(default_factory=list)

    @property
    def queued(self) -> list[str]:
        """The ids on_queued was given.  The server calls it just after writing the
        250, so a client that has its 250 first lets the loop catch up."""
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self.loop).result(10)
        return self.notified

    def incoming(self) -> list[str]:
        return sorted(p.name for p in Path(self.spool.dirs["incoming"]).iterdir())


@pytest.fixture(params=["asyncio", "uvloop"])
def smtp_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Servers on asyncio's own loop (the single-process daemon) and on the receivers'
    loop (mta.eventloop: uvloop): every protocol test runs on both."""
    started: list[tuple[RunningServer, threading.Thread]] = []
    new_loop = asyncio.new_event_loop if request.param == "asyncio" else mta.eventloop.new_loop

    def start(policy: SessionPolicy | None = None, hostname: str = "mx.test",
              **limits: object) -> RunningServer:
        loop = new_loop()
        spool = Spool(str(tmp_path / f"spool{len(started)}"))
        queued: list[str] = []
        server = SmtpServer(hostname=hostname, policy=policy or SimplePolicy(), spool=spool,
                            limits=replace(FAST, **limits), on_queued=queued.append)
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        host, port = asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), loop).result(10)
        rs = RunningServer(host, port, spool, server, loop, queued)
        started.append((rs, thread))
        return rs

    yield start
    for rs, thread in started:
        asyncio.run_coroutine_threadsafe(rs.server.stop(), rs.loop).result(30)
        rs.loop.call_soon_threadsafe(rs.loop.stop)
        thread.join(10)
        rs.loop.close()


class RawClient:
    """Blocking line-level SMTP client over a plain socket."""

    def __init__(self, host: str, port: int, *, greet: bool = True, timeout: float = 10) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        if greet:
            code, _ = self.reply()
            assert code == 220

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def reply(self) -> tuple[int, str]:
        """One (possibly multi-line) reply: (code, text lines joined by newline)."""
        texts = []
        while True:
            line = self._line()
            assert line.endswith(b"\r\n"), line
            texts.append(line[4:-2].decode())
            if line[3:4] == b" ":
                return int(line[:3]), "\n".join(texts)

    def cmd(self, line: str | bytes) -> tuple[int, str]:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def start_data(self) -> None:
        """EHLO, one sender, one recipient and DATA, up to the 354."""
        assert self.cmd("EHLO client.example")[0] == 250
        assert self.cmd("MAIL FROM:<a@b.example>")[0] == 250
        assert self.cmd("RCPT TO:<x@y.example>")[0] == 250
        assert self.cmd("DATA")[0] == 354

    def closed(self) -> bool:
        """The server closed the connection (after any pending data)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw() -> Iterator[Callable[..., RawClient]]:
    clients: list[RawClient] = []

    def connect(rs: RunningServer | int, **kw: object) -> RawClient:
        """A client of ``rs`` (or of 127.0.0.1:``rs`` when given a port number)."""
        host, port = ("127.0.0.1", rs) if isinstance(rs, int) else (rs.host, rs.port)
        c = RawClient(host, port, **kw)  # type: ignore[arg-type]
        clients.append(c)
        return c

    yield connect
    for c in clients:
        c.close()
