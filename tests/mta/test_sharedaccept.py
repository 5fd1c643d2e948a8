"""mta.smtp.sharedaccept: with receivers waiting on one listening socket, a connection
wakes one of them; asyncio's default selector wakes all (the control that shows the test
can tell the two apart)."""

from __future__ import annotations

import asyncio
import os
import selectors
import socket
import time

from mta.smtp.sharedaccept import SharedAcceptSelector, new_loop

WAITERS = 3


def _woken_by_one_connection(make_selector) -> int:
    """How many of WAITERS processes waiting on one listening socket (nobody accepts)
    report it readable after a single connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    waiting_r, waiting_w = os.pipe()
    woken_r, woken_w = os.pipe()
    children = []
    for _ in range(WAITERS):
        pid = os.fork()
        if pid == 0:                                  # pragma: no cover - child
            try:
                sel = make_selector(listener.fileno())
                sel.register(listener, selectors.EVENT_READ)
                os.write(waiting_w, b"w")
                ready = sel.select(timeout=1.5)
                os.write(woken_w, b"1" if ready else b"0")
            finally:
                os._exit(0)
        children.append(pid)
    os.close(waiting_w)
    os.close(woken_w)
    try:
        got = b""
        while len(got) < WAITERS:
            got += os.read(waiting_r, WAITERS)
        time.sleep(0.3)                              # all of them inside epoll_wait
        client = socket.create_connection(listener.getsockname())
        answers = b""
        while len(answers) < WAITERS:
            chunk = os.read(woken_r, WAITERS)
            assert chunk, "a waiter died"
            answers += chunk
        client.close()
        return answers.count(b"1")
    finally:
        for pid in children:
            os.waitpid(pid, 0)
        listener.close()
        os.close(waiting_r)
        os.close(woken_r)


def test_a_connection_wakes_one_waiting_receiver() -> None:
    assert _woken_by_one_connection(lambda fd: SharedAcceptSelector([fd])) == 1


def test_control_the_default_selector_wakes_every_waiting_receiver() -> None:
    assert _woken_by_one_connection(lambda fd: selectors.EpollSelector()) == WAITERS


def test_modifying_a_shared_entry_re_registers_it() -> None:
    """The kernel refuses EPOLL_CTL_MOD on an EPOLLEXCLUSIVE entry; the selector must
    still honour a change of events (read -> read+write -> read) and unregister."""
    listener = socket.create_server(("127.0.0.1", 0))
    sel = SharedAcceptSelector([listener.fileno()])
    try:
        sel.register(listener, selectors.EVENT_READ, "a")
        key = sel.modify(listener, selectors.EVENT_READ | selectors.EVENT_WRITE, "b")
        assert key.events == selectors.EVENT_READ | selectors.EVENT_WRITE and key.data == "b"
        key = sel.modify(listener, selectors.EVENT_READ, "c")
        assert key.events == selectors.EVENT_READ and key.data == "c"
        client = socket.create_connection(listener.getsockname())
        assert [k.data for k, _ in sel.select(timeout=2)] == ["c"]
        client.close()
        sel.unregister(listener)
        assert sel.get_map() == {}
    finally:
        sel.close()
        listener.close()


def test_an_asyncio_server_on_the_loop_serves_connections() -> None:
    """asyncio's own accept path (add_reader on the listening socket) works unchanged."""
    listener = socket.create_server(("127.0.0.1", 0))
    loop = new_loop([listener])
    try:
        async def main() -> bytes:
            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                writer.write(await reader.readline())
                await writer.drain()
                writer.close()
            server = await asyncio.start_server(handle, sock=listener)
            replies = []
            for n in range(3):
                reader, writer = await asyncio.open_connection(*listener.getsockname())
                writer.write(b"ping %d\n" % n)
                replies.append(await reader.readline())
                writer.close()
            server.close()
            await server.wait_closed()
            return b"".join(replies)
        assert loop.run_until_complete(main()) == b"ping 0\nping 1\nping 2\n"
        assert isinstance(loop._selector, SharedAcceptSelector)  # type: ignore[attr-defined]
    finally:
        loop.close()

