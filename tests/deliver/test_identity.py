"""Dropping root for a delivery: the recipient's uid, the spool's group kept only as the
saved gid for dot-locks (procmail's setgid mail), never passed on to programs.

Each check runs in a fresh child interpreter started as root, because dropping
privileges is irreversible."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
USER = os.environ.get("POSTROOM_TEST_USER", "prtest")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")

CHILD = r"""
import os, subprocess, sys
sys.path.insert(0, {repo!r})
from deliver.identity import lookup_user, prepare_spool_mailbox, drop_privileges
from deliver.locking import DotLock, LockPolicy
from deliver.errors import LockError
user = lookup_user({user!r})
spool = {spool!r}
prepare_spool_mailbox(user, spool)
from deliver.spoolgroup import spool_group
with spool_group("/x.lock"):   # looked at as root first: drop_privileges must look again
    pass
drop_privileges(user, spool if {keep} else None)
print("ids", os.getresuid(), os.getresgid())
try:
    with DotLock(os.path.join(spool, user.name + ".lock"), LockPolicy(locksleep=0.05, retries=0)):
        print("locked", os.path.exists(os.path.join(spool, user.name + ".lock")))
except LockError as err:
    print("lockerror", err)
for other in ("victim", "other.lock", user.name + ".lk"):
    # any other lock in the spool gets the user's own rights (procmail's lockit() raises
    # the group for its default mailbox's lock only)
    try:
        with DotLock(os.path.join(spool, other), LockPolicy(locksleep=0.05, retries=0)):
            print("made", other)
    except LockError as err:
        print("refused", other, err)
print("after", sorted(os.listdir(spool)))
out = subprocess.run(["/bin/sh", "-c", "grep ^Gid: /proc/self/status; id -G"],
                     capture_output=True, text=True).stdout
print("child", out.replace("\n", " | "))
"""


@pytest.fixture
def spool():
    mail_gid = grp.getgrnam("mail").gr_gid
    assert mail_gid not in os.getgrouplist(USER, pwd.getpwnam(USER).pw_gid)
    root = tempfile.mkdtemp(prefix="postroom-spool-")
    os.chmod(root, 0o755)
    path = os.path.join(root, "mail")
    os.mkdir(path)
    os.chown(path, 0, mail_gid)
    os.chmod(path, 0o2775)                  # Debian's /var/mail
    yield path, mail_gid
    shutil.rmtree(root)


def run_child(spool_dir: str, keep: bool) -> str:
    code = CHILD.format(repo=str(REPO), user=USER, spool=spool_dir, keep=keep)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_spool_group_makes_the_dotlock_and_never_reaches_programs(spool):
    path, mail_gid = spool
    pw = pwd.getpwnam(USER)
    out = run_child(path, keep=True)
    assert f"ids ({pw.pw_uid}, {pw.pw_uid}, {pw.pw_uid}) ({pw.pw_gid}, {pw.pw_gid}, {mail_gid})" in out
    assert "locked True" in out
    assert "made" not in out and out.count("Permission denied") == 3, out
    assert f"after ['{USER}']" in out                         # lock and claim file gone
    child = out.split("child ", 1)[1]
    gids = child.split("|")[0].split()[1:]                    # real, effective, saved, fs
    assert gids == [str(pw.pw_gid)] * 4, child
    assert str(mail_gid) not in child.split("|")[1].split()   # not a supplementary group
    # made in a spool its group may write: that group, mode 0660, as procmail makes it
    st = os.stat(os.path.join(path, USER))
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (pw.pw_uid, mail_gid, 0o660)


def test_without_the_spool_group_the_lock_cannot_be_made(spool):
    path, _ = spool
    out = run_child(path, keep=False)
    assert "lockerror" in out and "Permission denied" in out


def test_a_symlinked_spool_mailbox_is_refused(spool):
    path, _ = spool
    os.symlink("/etc/passwd", os.path.join(path, USER))
    code = CHILD.format(repo=str(REPO), user=USER, spool=path, keep=True)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "Refusing spool mailbox" in proc.stderr


def test_a_hard_linked_spool_mailbox_is_refused(spool):
    path, _ = spool
    target = os.path.join(os.path.dirname(path), "bashrc")
    with open(target, "w") as f:
        f.write("x\n")
    os.chown(target, pwd.getpwnam(USER).pw_uid, -1)
    os.link(target, os.path.join(path, USER))
    code = CHILD.format(repo=str(REPO), user=USER, spool=path, keep=True)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "several hard links" in proc.stderr
    assert open(target).read() == "x\n"
