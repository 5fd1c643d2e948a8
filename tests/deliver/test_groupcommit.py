"""Batch delivery with one group commit (deliver.groupcommit, Agent.run_many).

Checked on real files: a batch files every mail exactly as one ``run`` per mail does,
Maildir messages reach ``new/`` only at the commit and only after a sync, a failed sync or
link turns exactly the mails it concerns into temporary failures, and the kept lock claim
files still exclude other lockers and are gone after the batch.
"""

from __future__ import annotations

import errno
import os
import pwd
import subprocess
import tempfile

import pytest

import deliver.groupcommit as gc
from deliver.agent import Agent, Invocation, Site, User
from deliver.errors import LockError
from deliver.groupcommit import GroupCommit
from deliver.locking import DotLock, LockPolicy
from rules.cache import load_rc

FAST = LockPolicy(locksleep=0.05, suspend=0, retries=1)

RC = r"""MAILDIR=$BENCHDIR/Mail
DEFAULT=$MAILDIR/inbox
LOGFILE=$BENCHDIR/log
:0 c
backup/
:0:
* ^Subject: .*list
lists
:0 c:
* ^From: boss
boss
"""


@pytest.fixture(autouse=True)
def _process_state(agent_process_state):
    """Every test here may run Agent in this process (conftest.agent_process_state)."""


def _mail(i: int) -> bytes:
    subject = "a list mail" if i % 3 == 0 else f"note {i}"
    sender = "boss@example.com" if i % 4 == 0 else "x@example.org"
    return (f"From {sender}  Mon Jul  3 10:00:00 2023\nFrom: {sender}\nSubject: {subject}\n\n"
            f"body {i}\nFrom the middle\n").encode()


def _user() -> User:
    pw = pwd.getpwuid(os.geteuid())
    return User(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, "/bin/sh")


def _tree(tmp_path, name):
    d = tmp_path / name
    (d / "Mail").mkdir(parents=True)
    rc = tmp_path / "rc"
    rc.write_text(RC)
    return d, str(rc)


def _inv(tree, rc) -> Invocation:
    return Invocation(assignments=[("BENCHDIR", str(tree))], rcfiles=[rc])


def _folders(tree) -> dict[str, object]:
    out: dict[str, object] = {}
    for p in sorted((tree / "Mail").iterdir()):
        if p.is_dir():
            out[p.name] = (len(os.listdir(p / "new")), len(os.listdir(p / "tmp")))
        else:
            out[p.name] = p.read_bytes()
    return out


def test_batch_files_every_mail_as_single_runs_do(tmp_path):
    mails = [_mail(i) for i in range(12)]
    one, rc = _tree(tmp_path, "one")
    many, _ = _tree(tmp_path, "many")
    env = {"TZ": "UTC"}
    for m in mails:
        assert Agent(_user(), Site(), load_rc=load_rc).run(_inv(one, rc), m, env).status == 0
    outs = Agent(_user(), Site(), load_rc=load_rc).run_many((_inv(many, rc), m, env) for m in mails)
    assert [int(o.status) for o in outs] == [0] * len(mails)
    assert all(o.delivered for o in outs)
    assert _folders(one) == _folders(many)
    assert _folders(many)["backup"] == (12, 0)
    # no claim or lock file is left behind by the batch
    assert not [n for n in os.listdir(many / "Mail") if ".lock" in n]
    # LASTFOLDER of a mail that ended in the inbox / a list
    assert outs[1].lastfolder.endswith("Mail/inbox") and outs[0].lastfolder == "lists"


def test_maildir_mail_appears_only_at_the_commit(tmp_path):
    md = tmp_path / "md"
    for sub in ("new", "cur", "tmp"):
        (md / sub).mkdir(parents=True)
    from deliver.maildir import deliver_maildir
    group = GroupCommit()
    synced: list[int] = []
    real = gc._load_syncfs()
    assert real is not None, "syncfs(2) is available on Linux"
    try:
        gc._syncfs = lambda fd: synced.append(fd) or real(fd)
        dest = deliver_maildir(str(md), b"Subject: x\n\nbody\n", umask=0o077, group=group)
        assert os.listdir(md / "new") == [] and len(os.listdir(md / "tmp")) == 1
        assert group.commit() == set()
    finally:
        gc._syncfs = real
        group.close()
    assert os.listdir(md / "new") == [os.path.basename(dest)]
    assert os.listdir(md / "tmp") == []
    assert len(synced) == 2               # the data, then the new/ entry
    with open(dest, "rb") as f:
        assert f.read() == b"Subject: x\n\nbody\n"


def test_failed_link_fails_only_its_own_mail(tmp_path):
    ok_tmp, bad_tmp = tmp_path / "a", tmp_path / "b"
    ok_tmp.write_bytes(b"1")
    bad_tmp.write_bytes(b"2")
    group = GroupCommit()
    dev = os.stat(tmp_path).st_dev
    group.begin(0)
    group.link_later(str(ok_tmp), str(tmp_path / "a-new"), dev)
    group.begin(1)
    group.link_later(str(bad_tmp), str(tmp_path / "missing" / "b-new"), dev)
    assert group.commit() == {1}
    group.close()
    assert (tmp_path / "a-new").read_bytes() == b"1"
    assert not ok_tmp.exists() and not bad_tmp.exists()


@pytest.mark.parametrize("syncfs_available", [True, False])
def test_failed_sync_turns_the_batch_into_tempfailures(tmp_path, syncfs_available):
    tree, rc = _tree(tmp_path, "t")
    real = gc._load_syncfs()
    failing_fsync_calls: list[int] = []

    def bad_syncfs(fd: int) -> int:
        return errno.EIO

    real_fsync = os.fsync

    def bad_fsync(fd: int) -> None:
        failing_fsync_calls.append(fd)
        raise OSError(errno.EIO, "I/O error")

    try:
        gc._syncfs = bad_syncfs if syncfs_available else None
        if not syncfs_available:
            gc.os.fsync = bad_fsync        # only the commit's fsyncs: run_many defers the rest
        outs = Agent(_user(), Site(), load_rc=load_rc).run_many(
            (_inv(tree, rc), _mail(i), {}) for i in range(3))
    finally:
        gc._syncfs = real
        gc.os.fsync = real_fsync
    assert [int(o.status) for o in outs] == [75, 75, 75]
    assert not any(o.delivered for o in outs)
    assert os.listdir(tree / "Mail" / "backup" / "new") == []     # never linked
    assert os.listdir(tree / "Mail" / "backup" / "tmp") == []
    assert bool(failing_fsync_calls) is not syncfs_available


def test_kept_claim_file_is_reused_and_still_excludes(tmp_path):
    lockfile = str(tmp_path / "box.lock")
    claims: dict[str, str] = {}
    with DotLock(lockfile, FAST, claims=claims):
        claim = claims[lockfile]
        assert os.stat(lockfile).st_ino == os.stat(claim).st_ino
        # another locker (its own claims) is kept out
        with pytest.raises(LockError):
            with DotLock(lockfile, LockPolicy(locksleep=0.05, timeout=0.3, suspend=0)):
                pass
    assert not os.path.exists(lockfile)
    assert os.stat(claim).st_nlink == 1
    ino = os.stat(claim).st_ino
    os.utime(claim, (1, 1))
    with DotLock(lockfile, FAST, claims=claims):
        assert claims[lockfile] == claim and os.stat(lockfile).st_ino == ino
        assert os.stat(lockfile).st_mtime > 1    # the lock's age starts now
    os.unlink(claim)                             # someone cleaned up: a fresh claim is made
    with DotLock(lockfile, FAST, claims=claims):
        assert claims[lockfile] != claim
    group = GroupCommit(claims=claims)
    group.close()
    assert os.listdir(tmp_path) == []


def test_procmail_waits_for_a_batch_lock():
    """procmail's lockfile(1) cannot take a lock made from a kept claim file."""
    pw = pwd.getpwnam("prtest")
    d = tempfile.mkdtemp(prefix="postroom-groupcommit-", dir="/tmp")
    os.chmod(d, 0o777)
    lockfile = os.path.join(d, "box.lock")
    claims: dict[str, str] = {}
    with DotLock(lockfile, FAST, claims=claims):
        pass
    with DotLock(lockfile, FAST, claims=claims):
        p = subprocess.run(["/usr/bin/lockfile", "-r", "0", lockfile], user=pw.pw_uid,
                           group=pw.pw_gid, extra_groups=[], capture_output=True)
        assert p.returncode != 0
    p = subprocess.run(["/usr/bin/lockfile", "-r", "0", lockfile], user=pw.pw_uid,
                       group=pw.pw_gid, extra_groups=[], capture_output=True)
    assert p.returncode == 0
    os.unlink(lockfile)
    GroupCommit(claims=claims).close()
    assert os.listdir(d) == []
    os.rmdir(d)


def test_relative_maildirs_of_different_mail_directories(tmp_path):
    """Each mail's MAILDIR is its own cwd: a relative ``backup/`` of the first mail must
    be linked into that mail's tree at the commit, made when the last mail's cwd is
    another one."""
    (a, rc), (b, _) = _tree(tmp_path, "a"), _tree(tmp_path, "b")
    outs = Agent(_user(), Site(), load_rc=load_rc).run_many(
        (_inv(tree, rc), _mail(i), {"TZ": "UTC"}) for i, tree in enumerate([a, b, a, b, b]))
    assert [int(o.status) for o in outs] == [0] * 5
    assert _folders(a)["backup"] == (2, 0) and _folders(b)["backup"] == (3, 0)


def test_a_maildir_that_loses_its_tmp_mid_batch_is_made_whole_again(tmp_path):
    """A batch checks a Maildir once (group.maildirs); one that loses a part after that
    is made whole again by the delivery that fails on it, as at its first delivery."""
    tree, rc = _tree(tmp_path, "t")
    backup = tree / "Mail" / "backup"

    def jobs():
        for i in range(6):
            if i == 3:      # the pending tmp/ files are moved away with their directory
                os.rename(backup, tree / "Mail" / "old-backup")
            yield _inv(tree, rc), _mail(i), {"TZ": "UTC"}

    outs = Agent(_user(), Site(), load_rc=load_rc).run_many(jobs())
    # the three whose tmp/ file went with the directory could not be linked: retried
    assert [int(o.status) for o in outs] == [75, 75, 75, 0, 0, 0]
    assert _folders(tree)["backup"] == (3, 0)
    log = (tree / "log").read_text()
    assert "Error while writing" not in log
