"""Dot-locks that procmail honours and that honour procmail's (PROCMAIL-BEHAVIOUR 38-40).

The real procmail runs as prtest against the same lock file as a postroom DotLock, in both
directions; shape, naming and error cases are checked on real files.
"""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import threading
import time

import pytest

from deliver.errors import LockError
from deliver.locking import (DotLock, LockPolicy, implicit_lockfile, is_held, lock_kernel,
                             unlock_kernel)

PROCMAIL = "/usr/bin/procmail"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = LockPolicy(locksleep=0.2, suspend=0, locktimeout=1024, retries=2)


@pytest.fixture
def prdir():
    pw = pwd.getpwnam("prtest")
    d = tempfile.mkdtemp(prefix="postroom-locking-", dir="/tmp")
    os.chmod(d, 0o755)
    os.chown(d, pw.pw_uid, pw.pw_gid)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def start_procmail(home: str, rc_text: str, message: bytes = b"Subject: t\n\nbody\n") -> subprocess.Popen:
    pw = pwd.getpwnam("prtest")
    rc = os.path.join(home, "rc")
    with open(rc, "w") as f:
        f.write(f"MAILDIR={home}\nLOGFILE={home}/log\nLOCKSLEEP=1\n" + rc_text)
    os.chown(rc, pw.pw_uid, pw.pw_gid)
    proc = subprocess.Popen([PROCMAIL, rc], stdin=subprocess.PIPE, user="prtest", group="prtest",
                            extra_groups=[], env={"HOME": home, "PATH": "/usr/bin:/bin"}, cwd=home)
    proc.stdin.write(message)
    proc.stdin.close()
    return proc


def entries(d: str) -> list[str]:
    return sorted(os.listdir(d))


def test_lock_file_looks_like_procmails_and_is_removed(prdir):
    lockfile = os.path.join(prdir, "box.lock")
    with DotLock(lockfile, FAST):
        st = os.stat(lockfile)
        assert stat.S_IMODE(st.st_mode) == 0o400
        with open(lockfile, "rb") as f:
            assert f.read() == b"0"
        assert is_held(lockfile)
    assert not is_held(lockfile)
    assert entries(prdir) == []


def test_lock_removed_when_block_raises(prdir):
    lockfile = os.path.join(prdir, "box.lock")
    with pytest.raises(RuntimeError):
        with DotLock(lockfile, FAST):
            raise RuntimeError("boom")
    assert entries(prdir) == []


def test_relative_lock_is_released_where_it_was_made(prdir, monkeypatch):
    """A relative name (LOCKFILE=g.lock, then MAILDIR=sub) is released in the directory
    it was made in: neither the lock nor its claim file is left behind."""
    sub = os.path.join(prdir, "sub")
    os.mkdir(sub)
    monkeypatch.chdir(prdir)
    lock = DotLock("g.lock", FAST)
    lock.acquire()
    assert os.path.exists(os.path.join(prdir, "g.lock"))
    os.chdir(sub)
    lock.release()
    assert entries(prdir) == ["sub"] and entries(sub) == []


def test_procmail_waits_for_our_lock(prdir):
    lockfile = os.path.join(prdir, "box.lock")
    box = os.path.join(prdir, "box")
    with DotLock(lockfile, FAST):
        proc = start_procmail(prdir, ":0:\nbox\n")
        time.sleep(2.5)
        assert proc.poll() is None, "procmail did not wait for postroom's lock"
        assert not os.path.exists(box)
    assert proc.wait(timeout=20) == 0
    with open(box, "rb") as f:
        assert f.read() == b"Subject: t\n\nbody\n\n"
    assert not os.path.exists(lockfile)


def test_we_wait_for_procmails_lock(prdir):
    lockfile = os.path.join(prdir, "box.lock")
    proc = start_procmail(prdir, "LOCKFILE=box.lock\n:0 w\n| sleep 3\n")
    deadline = time.monotonic() + 10
    while not os.path.exists(lockfile):
        assert time.monotonic() < deadline, "procmail never took its lock"
        time.sleep(0.02)
    taken = time.monotonic()
    with DotLock(lockfile, FAST):
        waited = time.monotonic() - taken
        assert proc.poll() is not None or waited > 2.0
        with open(lockfile, "rb") as f:
            assert f.read() == b"0"
    assert waited > 2.0, f"took procmail's lock after {waited:.2f}s"
    assert proc.wait(timeout=20) == 0


def test_two_postroom_locks_exclude_each_other(prdir):
    lockfile = os.path.join(prdir, "box.lock")
    inside = []
    overlap = []

    def worker():
        for _ in range(20):
            with DotLock(lockfile, LockPolicy(locksleep=0.05, suspend=0)):
                inside.append(1)
                if len(inside) > 1:
                    overlap.append(1)
                time.sleep(0.002)
                inside.pop()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not overlap
    assert entries(prdir) == []


def test_timeout_raises_temporary_lock_error(prdir):
    lockfile = os.path.join(prdir, "box.lock")
    with DotLock(lockfile, FAST):
        start = time.monotonic()
        with pytest.raises(LockError) as info:
            with DotLock(lockfile, LockPolicy(locksleep=0.1, timeout=0.5)):
                pass
        assert info.value.temporary
        assert 0.4 < time.monotonic() - start < 5
    assert entries(prdir) == []


def test_missing_directory_is_retried_then_temporary(prdir):
    lockfile = os.path.join(prdir, "missing", "box.lock")
    start = time.monotonic()
    with pytest.raises(LockError) as info:
        with DotLock(lockfile, LockPolicy(locksleep=0.2, retries=2)):
            pass
    assert info.value.temporary
    assert time.monotonic() - start >= 0.4



def test_missing_directory_without_retries_fails_at_once(prdir):
    """retry_missing_dir=False (an mbox append's implicit lock): no minute of retries,
    a LockError naming ENOENT, and nothing left behind."""
    lockfile = os.path.join(prdir, "missing", "box.lock")
    start = time.monotonic()
    with pytest.raises(LockError) as info:
        with DotLock(lockfile, LockPolicy(locksleep=5, retries=7), retry_missing_dir=False):
            pass
    assert time.monotonic() - start < 2
    assert info.value.errno == errno.ENOENT
    assert entries(prdir) == []

def test_relative_name_in_a_removed_working_directory(prdir, monkeypatch):
    """getcwd(2) fails once the working directory is removed: the relative name is
    then tried as it is, and the lock fails as any lock in a missing directory does
    (LockError, ENOENT), instead of an OSError escaping the delivery."""
    gone = os.path.join(prdir, "gone")
    os.mkdir(gone)
    monkeypatch.chdir(gone)
    os.rmdir(gone)
    with pytest.raises(LockError) as info:
        with DotLock("box.lock", FAST, retry_missing_dir=False):
            pass
    assert info.value.errno == errno.ENOENT
    assert entries(prdir) == []


def test_missing_directory_appearing_during_retries(prdir):
    sub = os.path.join(prdir, "later")
    threading.Timer(0.3, os.mkdir, args=(sub,)).start()
    with DotLock(os.path.join(sub, "box.lock"), LockPolicy(locksleep=0.2, retries=10)):
        assert os.path.exists(os.path.join(sub, "box.lock"))


def test_unwritable_directory_fails_at_once_permanently(prdir):
    pw = pwd.getpwnam("prtest")
    script = (
        "import sys; sys.path.insert(0, %r)\n"
        "from deliver.locking import DotLock, LockPolicy\nfrom deliver.errors import LockError\n"
        "try:\n    DotLock('/etc/postroom-test.lock', LockPolicy(retries=3)).acquire()\n"
        "except LockError as e:\n    print('temporary' if e.temporary else 'permanent')\n"
    ) % REPO
    out = subprocess.run(["/work/main/.venv/bin/python", "-c", script], user=pw.pw_uid, group=pw.pw_gid,
                         extra_groups=[], capture_output=True, text=True, timeout=30, cwd=prdir)
    assert out.stdout.strip() == "permanent", out.stderr


def test_fcntl_lock_excludes_another_process(prdir):
    path = os.path.join(prdir, "f")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        lock_kernel(fd)
        probe = ("import fcntl, os; fd = os.open(%r, os.O_RDWR)\n"
                 "try:\n    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('got')\n"
                 "except OSError:\n    print('busy')\n") % path
        assert subprocess.run(["python3", "-c", probe], capture_output=True, text=True).stdout.strip() == "busy"
        unlock_kernel(fd)
        assert subprocess.run(["python3", "-c", probe], capture_output=True, text=True).stdout.strip() == "got"
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("action", "program", "expected"),
    [("box", False, "box.lock"), ("md/", False, "md/.lock"), ("mh/.", False, "mh/..lock"),
     ("a b c", False, "a.lock"), ("cat >> /tmp/x", True, "/tmp/x.lock"), ("cat >>x y", True, "x.lock"),
     ("cat > x", True, None)],
)
def test_implicit_lockfile_names(action, program, expected):
    assert implicit_lockfile(action, program=program) == expected


def test_implicit_lockfile_names_match_procmail(prdir):
    """procmail's own `:0:` lock names, observed while its action runs."""
    os.mkdir(os.path.join(prdir, "mh"))
    os.chown(os.path.join(prdir, "mh"), pwd.getpwnam("prtest").pw_uid, -1)
    seen = os.path.join(prdir, "seen")
    proc = start_procmail(prdir, f":0 w:\n| ls -a {prdir} {prdir}/mh > {seen}; cat >> out\n")
    assert proc.wait(timeout=20) == 0
    with open(seen) as f:
        assert "out.lock" in f.read().split()
    assert implicit_lockfile("ls -a x; cat >> out", program=True) == "out.lock"


def _killed_holder(lockfile: str) -> None:
    """A separate process takes a postroom lock and is SIGKILLed while holding it."""
    import signal
    import sys
    code = (f"import sys, time; sys.path.insert(0, {REPO!r})\n"
            "from deliver.locking import DotLock, LockPolicy\n"
            f"DotLock({lockfile!r}, LockPolicy()).acquire()\n"
            "print('held', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_lock_of_a_killed_postroom_process_is_broken_without_waiting(prdir):
    # LOCKTIMEOUT stays at procmail's 1024 s; a 20 s policy.timeout turns a wait into a
    # LockError, so the test fails (rather than hangs) if the orphan were not recognised.
    lockfile = os.path.join(prdir, "box.lock")
    _killed_holder(lockfile)
    assert os.path.exists(lockfile)                        # left behind by the kill
    lock = DotLock(lockfile, LockPolicy(locktimeout=1024, locksleep=0.2, suspend=30, timeout=20))
    with lock:
        assert lock.forced == [lockfile]
    assert sorted(os.listdir(prdir)) == []                 # lock and both claim files gone


def test_plain_lock_file_is_not_taken_for_an_orphan(prdir):
    # procmail's and mutt's lock files carry no owner: only LOCKTIMEOUT may break them
    lockfile = os.path.join(prdir, "box.lock")
    with open(lockfile, "w") as fh:
        fh.write("0")
    with pytest.raises(LockError):
        DotLock(lockfile, LockPolicy(locktimeout=1024, locksleep=0.1, timeout=1)).acquire()
    assert os.path.exists(lockfile)
