"""mta.forking — the daemon's processes: fork, run a body in the child, exit with its status.

Every long-lived process the daemon forks (receivers, the queue runner, delivery
runners, pool workers) must leave through ``os._exit`` whatever happens: returning
from the fork, or raising out of it, would run the parent's code a second time in the
child (its ``finally`` blocks, atexit handlers, the event loop's cleanup).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Callable

__all__ = ["fork_process", "watch_exit", "describe_exit"]

log = logging.getLogger("mta.forking")


def fork_process(what: str, body: Callable[[], int], *, failed: int = 70) -> int:
    """Fork; the child runs ``body`` and exits with the status it returns, or with
    ``failed`` (after logging the traceback) when it raised.  Returns the child's pid in
    the parent; never returns in the child."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = failed
    try:
        code = body()
    except BaseException:  # noqa: BLE001 - the child must exit, never return
        try:
            log.exception("the %s process failed", what)
        except BaseException:  # noqa: BLE001
            pass
    finally:
        try:
            logging.shutdown()
        finally:
            os._exit(code & 0xFF)


def watch_exit(loop, pid: int, on_exit: Callable[[int], None]) -> "asyncio.Future[int]":
    """Reap child ``pid`` when it exits (a pidfd on ``loop``, no thread, no SIGCHLD
    handler); ``on_exit(code)`` is then called with its exit code as
    ``os.waitstatus_to_exitcode`` gives it (negative: the signal that killed it; -1 if
    somebody else reaped it).  The returned future is done with the same code."""
    exited: asyncio.Future[int] = loop.create_future()
    pidfd = os.pidfd_open(pid)

    def reap() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        try:
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        except ChildProcessError:
            code = -1
        exited.set_result(code)
        on_exit(code)

    loop.add_reader(pidfd, reap)
    return exited


def describe_exit(code: int) -> str:
    """``signal 9`` or ``status 3``, for the log."""
    return f"signal {-code}" if code < 0 else f"status {code}"
