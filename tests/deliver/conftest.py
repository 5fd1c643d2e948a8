"""Fixtures shared by the deliver/ tests."""

from __future__ import annotations

import os

import pytest


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
