"""Real faults: a file size limit in the middle of an append, and stale locks left by
killed processes — postroom's broken by procmail, procmail's broken by postroom."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from deliver.errors import LockError
from deliver.locking import DotLock, LockPolicy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = os.path.join(REPO, ".venv", "bin", "python")
PROCMAIL = "/usr/bin/procmail"


@pytest.fixture
def prdir():
    pw = pwd.getpwnam("prtest")
    d = tempfile.mkdtemp(prefix="postroom-faults-", dir="/tmp")
    os.chmod(d, 0o755)
    os.chown(d, pw.pw_uid, pw.pw_gid)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def as_prtest(**kw):
    pw = pwd.getpwnam("prtest")
    return dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], **kw)


APPEND_UNDER_LIMIT = """
import resource, sys
sys.path.insert(0, {repo!r})
from deliver.errors import MailboxError
from deliver.folders import deliver_to_folders
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
msg = b"From a@b  Mon Jul  3 10:00:00 2023\\nSubject: big\\n\\n" + b"x" * 70 + b"\\n"
try:
    deliver_to_folders([{box!r}], msg * 5000 + b"\\n", umask=0o022)
except MailboxError as e:
    print("temporary" if e.temporary else "permanent", e)
    sys.exit(75)
print("delivered")
"""


def test_file_size_limit_leaves_mbox_byte_identical(prdir):
    box = os.path.join(prdir, "box")
    original = b"From x@y  Mon Jul  3 10:00:00 2023\nSubject: old\n\nold body\n\n"
    with open(box, "wb") as f:
        f.write(original)
    before = os.stat(box)
    limit = 64 * 1024
    proc = subprocess.run([PYTHON, "-c", APPEND_UNDER_LIMIT.format(repo=REPO, limit=limit, box=box)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 75, proc.stdout + proc.stderr
    assert proc.stdout.startswith("temporary"), proc.stdout
    with open(box, "rb") as f:
        assert f.read() == original
    assert os.stat(box).st_ino == before.st_ino
    assert sorted(os.listdir(prdir)) == ["box"]        # lock and claim files gone too


HOLD_AND_DIE = """
import os, signal, sys, time
sys.path.insert(0, {repo!r})
from deliver.locking import DotLock, LockPolicy
DotLock({lock!r}, LockPolicy()).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def leave_stale_postroom_lock(lock: str) -> None:
    """A postroom process (as prtest) takes the lock and is killed with SIGKILL."""
    child = subprocess.Popen([PYTHON, "-c", HOLD_AND_DIE.format(repo=REPO, lock=lock)],
                             stdout=subprocess.PIPE, text=True, **as_prtest())
    assert child.stdout.readline().strip() == "locked"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    child.stdout.close()
    assert os.path.exists(lock)


def test_stale_lock_of_killed_process_is_broken(prdir):
    # The claim file names a dead process on this host: nobody can release the lock,
    # so it is broken without waiting LOCKTIMEOUT (procmail's 1024 s here).
    lock = os.path.join(prdir, "box.lock")
    leave_stale_postroom_lock(lock)
    assert len(os.listdir(prdir)) == 2                 # lock + the dead process's claim file
    dl = DotLock(lock, LockPolicy(locktimeout=1024, locksleep=0.5, suspend=0, timeout=30))
    with dl:
        assert dl.forced == [lock]
    assert os.listdir(prdir) == []                     # the dead claim file went with it


def test_old_lock_of_a_live_process_is_broken_after_locktimeout(prdir):
    # procmail's rule for a lock whose owner still runs: only its age breaks it.
    lock = os.path.join(prdir, "box.lock")
    holder = subprocess.Popen([PYTHON, "-c", HOLD_AND_DIE.format(repo=REPO, lock=lock)],
                              stdout=subprocess.PIPE, text=True, **as_prtest())
    try:
        assert holder.stdout.readline().strip() == "locked"
        young = LockPolicy(locktimeout=3600, locksleep=0.1, suspend=0, timeout=1)
        with pytest.raises(LockError):                 # alive and young: it stays
            DotLock(lock, young).acquire()
        past = time.time() - 600
        os.utime(lock, (past, past))                   # ten minutes old
        dl = DotLock(lock, LockPolicy(locktimeout=300, locksleep=0.1, suspend=0, timeout=30))
        with dl:
            assert dl.forced == [lock]
    finally:
        holder.kill()
        holder.wait(timeout=10)
        holder.stdout.close()


def test_fresh_lock_is_not_broken(prdir):
    lock = os.path.join(prdir, "box.lock")
    with DotLock(lock, LockPolicy()):
        with pytest.raises(Exception):
            with DotLock(lock, LockPolicy(locktimeout=30, locksleep=0.1, timeout=1.5)):
                pass
        assert os.path.exists(lock)


def test_procmail_breaks_postroom_stale_lock(prdir):
    lock = os.path.join(prdir, "box.lock")
    leave_stale_postroom_lock(lock)
    rc = os.path.join(prdir, "rc")
    with open(rc, "w") as f:
        f.write(f"MAILDIR={prdir}\nLOGFILE={prdir}/log\nLOCKTIMEOUT=2\nLOCKSLEEP=1\nSUSPEND=1\n:0:\nbox\n")
    start = time.monotonic()
    proc = subprocess.run([PROCMAIL, rc], input=b"Subject: t\n\nbody\n", timeout=60,
                          env={"HOME": prdir, "PATH": "/usr/bin:/bin"}, cwd=prdir, **as_prtest())
    assert proc.returncode == 0
    assert time.monotonic() - start > 1.0
    with open(os.path.join(prdir, "log"), "rb") as f:
        assert b'Forcing lock on "box.lock"' in f.read()
    with open(os.path.join(prdir, "box"), "rb") as f:
        assert f.read() == b"Subject: t\n\nbody\n\n"
    assert not os.path.exists(lock)


def test_postroom_breaks_procmail_stale_lock(prdir):
    lock = os.path.join(prdir, "box.lock")
    rc = os.path.join(prdir, "rc")
    with open(rc, "w") as f:
        f.write(f"MAILDIR={prdir}\nLOCKFILE=box.lock\n:0 w\n| sleep 60\n")
    proc = subprocess.Popen([PROCMAIL, rc], stdin=subprocess.PIPE, start_new_session=True,
                            env={"HOME": prdir, "PATH": "/usr/bin:/bin"}, cwd=prdir, **as_prtest())
    proc.stdin.write(b"Subject: t\n\nbody\n")
    proc.stdin.close()
    deadline = time.monotonic() + 10
    while not os.path.exists(lock):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)                # procmail and its sleep die holding it
    proc.wait(timeout=10)
    with open(lock, "rb") as f:
        assert f.read() == b"0"                        # procmail's lock: "0", one link
    assert os.stat(lock).st_nlink == 1
    start = time.monotonic()
    dl = DotLock(lock, LockPolicy(locktimeout=2, locksleep=0.5, suspend=0))
    with dl:
        assert dl.forced == [lock]
    assert 1.0 < time.monotonic() - start < 15
    assert not os.path.exists(lock)
