"""Fixtures shared by the deliver/ tests."""

from __future__ import annotations

import os
import signal

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Deliveries start with the default signal dispositions an MTA gives them, however
    the suite was launched: a background job of a non-interactive shell inherits SIGINT
    and SIGQUIT ignored, procmail keeps them ignored, and the signal-* cases would then
    compare a procmail that cannot be interrupted.  A Python handler here becomes the
    default disposition in every child at exec."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGQUIT) == signal.SIG_IGN:
        signal.signal(signal.SIGQUIT, lambda _sig, _frame: None)


@pytest.fixture
def agent_process_state():
    """Agent.run sets the umask (procmail's 077) and changes directory, as the real
    delivery process does; a test that runs it in this process must give both back, or
    every later test that makes files for the test user finds them unreadable."""
    cwd = os.getcwd()
    mask = os.umask(0o022)
    os.umask(mask)
    yield
    os.chdir(cwd)
    os.umask(mask)
