"""mta.forking — the daemon's processes: fork, run a body in the child, exit with its status.

Every long-lived process the daemon forks (receivers, the queue runner, delivery
runners, pool workers) must leave through ``os._exit`` whatever happens: returning
from the fork, or raising out of it, would run the parent's code a second time in the
child (its ``finally`` blocks, atexit handlers, the event loop's cleanup).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

__all__ = ["fork_process"]

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
