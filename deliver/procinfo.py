"""deliver.procinfo — this process's pid and the host's node name, without a system
call at every use.

Why: one delivery asked getpid(2) three times and uname(2) three times (HOST, the
Maildir unique name, the lock's claim-file name); Python's os.getpid() is a real system
call (glibc stopped caching it in 2.25), and a batch of 300 mails made 1800 of them.
The pid is forgotten in a forked child (os.register_at_fork), so a zygote's child or a
clone never names files with its parent's pid.  The node name is read again when the
cached one is more than a second old, so a long-lived process (deliverd, the MTA's
delivery pool) notices a renamed host as soon as procmail started afresh would.
"""

from __future__ import annotations

import os
import time

_NODE_TTL = 1.0          # seconds

_pid = 0
_node = ""
_node_read = -_NODE_TTL


def _forget_pid() -> None:
    global _pid
    _pid = 0


os.register_at_fork(after_in_child=_forget_pid)


def pid() -> int:
    """os.getpid(), asked once per process."""
    global _pid
    if not _pid:
        _pid = os.getpid()
    return _pid


def nodename() -> str:
    """os.uname().nodename (what gethostname(2) returns), at most a second old."""
    global _node, _node_read
    now = time.monotonic()
    if now - _node_read >= _NODE_TTL:
        _node, _node_read = os.uname().nodename, now
    return _node
