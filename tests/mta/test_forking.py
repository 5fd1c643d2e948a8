"""mta.forking.fork_process: the child always leaves through os._exit, with the body's
status, or the failure status after logging what it raised."""

from __future__ import annotations

import logging
import os

from mta.forking import fork_process


def _status(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_the_child_exits_with_the_bodys_status_and_never_returns() -> None:
    parent = os.getpid()
    pid = fork_process("test", lambda: 3)
    if os.getpid() != parent:     # a child that returned: its status tells
        os._exit(99)
    assert _status(pid) == 3


def test_a_body_that_raises_is_logged_and_exits_with_the_failure_status(tmp_path) -> None:
    log = tmp_path / "log"
    handler = logging.FileHandler(log)
    logging.getLogger("mta.forking").addHandler(handler)
    try:
        def boom() -> int:
            raise RuntimeError("the body's bug")
        assert _status(fork_process("test", boom, failed=75)) == 75
    finally:
        logging.getLogger("mta.forking").removeHandler(handler)
        handler.close()
    text = log.read_text()
    assert "the test process failed" in text and "RuntimeError: the body's bug" in text
