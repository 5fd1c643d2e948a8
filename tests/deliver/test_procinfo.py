"""deliver.procinfo: the cached pid must be the child's own after a fork (a zygote's
delivery child names its Maildir files and lock claims with it)."""

from __future__ import annotations

import os

from deliver import procinfo


def test_pid_is_the_forked_childs_own():
    assert procinfo.pid() == os.getpid()          # cached in the parent now
    r, w = os.pipe()
    child = os.fork()
    if child == 0:                                 # pragma: no cover - runs in the child
        try:
            os.write(w, f"{procinfo.pid()} {os.getpid()}".encode())
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 100).decode().split()
    os.close(r)
    os.waitpid(child, 0)
    assert got[0] == got[1] == str(child)
    assert procinfo.pid() == os.getpid()


def test_nodename_is_unames():
    assert procinfo.nodename() == os.uname().nodename
