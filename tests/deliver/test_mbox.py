"""append_mbox: locking, spool safety, modes and the whole-or-nothing guarantee."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time

import pytest

from deliver.errors import MailboxError
from deliver.locking import DotLock, LockPolicy
from deliver.mbox import append_mbox, tighten_spool_mailbox

FAST = LockPolicy(locksleep=0.05, suspend=0, retries=1)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = os.path.join(REPO, ".venv", "bin", "python")


def test_append_creates_with_mode_and_returns_size(tmp_path):
    box = str(tmp_path / "box")
    assert append_mbox(box, b"one\n\n", policy=FAST, umask=0o077) == 5
    assert append_mbox(box, b"two\n\n", policy=FAST, umask=0o077) == 5
    assert stat.S_IMODE(os.stat(box).st_mode) == 0o600
    with open(box, "rb") as f:
        assert f.read() == b"one\n\ntwo\n\n"
    assert os.listdir(tmp_path) == ["box"]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o645), (0, 0o667), (0o027, 0o640)])
def test_new_mail_bit(tmp_path, umask, mode):
    box = str(tmp_path / "box")
    append_mbox(box, b"x\n\n", policy=FAST, umask=umask)
    assert stat.S_IMODE(os.stat(box).st_mode) == mode


def test_existing_file_without_final_newline_is_glued_to(tmp_path):
    box = tmp_path / "box"
    box.write_bytes(b"From a  Mon Jul  3 10:00:00 2023\n\nno newline")
    append_mbox(str(box), b"From b  Mon Jul  3 10:00:00 2023\n\nx\n\n", policy=FAST)
    assert box.read_bytes().endswith(b"no newlineFrom b  Mon Jul  3 10:00:00 2023\n\nx\n\n")


def test_append_waits_for_a_held_lock(tmp_path):
    box = str(tmp_path / "box")
    # is_held() makes this process treat its own lock as taken for it, so the contender
    # is another process
    probe = (f"import sys; sys.path.insert(0, {REPO!r})\n"
             "from deliver.mbox import append_mbox\nfrom deliver.locking import LockPolicy\n"
             f"append_mbox({box!r}, b'late\\n\\n', policy=LockPolicy(locksleep=0.05))\n")
    with DotLock(box + ".lock", FAST):
        child = subprocess.Popen([PYTHON, "-c", probe])
        time.sleep(1.0)
        assert child.poll() is None and not os.path.exists(box)
    assert child.wait(timeout=20) == 0
    with open(box, "rb") as f:
        assert f.read() == b"late\n\n"



def test_mailbox_in_a_missing_directory_fails_at_once(tmp_path):
    """No directory, no mailbox: the append reports the open's error straight away,
    without a minute of lock retries (README, differences from procmail), and creates
    nothing."""
    path = tmp_path / "nodir" / "box"
    start = time.monotonic()
    with pytest.raises(MailboxError) as info:
        append_mbox(str(path), b"From a Thu Jan  1 00:00:00 1970\n\nx\n\n",
                    policy=LockPolicy(locksleep=5, retries=7))
    assert time.monotonic() - start < 2
    assert "nodir" in str(info.value)
    assert list(tmp_path.iterdir()) == []

def test_inside_own_recipe_lock_does_not_deadlock(tmp_path):
    box = str(tmp_path / "box")
    with DotLock(box + ".lock", FAST):            # `:0:` taken by the recipe
        append_mbox(box, b"x\n\n", policy=LockPolicy(timeout=2))
    assert os.listdir(tmp_path) == ["box"]


def test_spool_refuses_symlink(tmp_path):
    target = tmp_path / "target"
    target.write_bytes(b"")
    os.symlink(target, tmp_path / "box")
    with pytest.raises(MailboxError) as info:
        append_mbox(str(tmp_path / "box"), b"x\n\n", policy=FAST, spool_checks=True)
    assert not info.value.temporary
    assert target.read_bytes() == b""


def test_spool_refuses_dangling_symlink(tmp_path):
    os.symlink(tmp_path / "elsewhere", tmp_path / "box")
    with pytest.raises(MailboxError):
        append_mbox(str(tmp_path / "box"), b"x\n\n", policy=FAST, spool_checks=True)
    assert not os.path.exists(tmp_path / "elsewhere")


def test_user_folder_dangling_symlink_creates_its_target(tmp_path):
    """Outside the spool a dangling symlink is followed, as procmail does (the open
    used to spin forever between ENOENT and EEXIST)."""
    os.symlink("target", tmp_path / "box")
    assert append_mbox(str(tmp_path / "box"), b"x\n\n", policy=FAST, umask=0o077) == 3
    assert (tmp_path / "target").read_bytes() == b"x\n\n"
    assert stat.S_IMODE(os.stat(tmp_path / "target").st_mode) == 0o600
    assert os.path.islink(tmp_path / "box")


def test_a_signal_mid_append_truncates_back(tmp_path, monkeypatch):
    """deliver.cli's handlers raise Terminated wherever the delivery is; an append it
    interrupts is cut back to the mailbox's old size, as a failed write is."""
    import deliver.mbox as mbox_module
    from deliver.errors import Terminated
    box = tmp_path / "box"
    box.write_bytes(b"From a  Mon Jul  3 10:00:00 2023\n\nold\n\n")
    before = box.read_bytes()

    def half_then_signal(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise Terminated(15, requeue=True)

    monkeypatch.setattr(mbox_module, "_write_all", half_then_signal)
    with pytest.raises(Terminated):
        append_mbox(str(box), b"From b  Mon Jul  3 10:00:00 2023\n\nnew mail\n\n", policy=FAST)
    assert box.read_bytes() == before
    assert [n for n in os.listdir(tmp_path) if n != "box"] == []     # no lock left


def test_spool_refuses_hard_link(tmp_path):
    (tmp_path / "a").write_bytes(b"")
    os.link(tmp_path / "a", tmp_path / "box")
    with pytest.raises(MailboxError):
        append_mbox(str(tmp_path / "box"), b"x\n\n", policy=FAST, spool_checks=True)


def test_spool_refuses_file_of_another_user():
    pw = pwd.getpwnam("prtest")
    d = tempfile.mkdtemp(prefix="postroom-mbox-", dir="/tmp")
    try:
        os.chmod(d, 0o1777)
        box = os.path.join(d, "box")
        with open(box, "wb"):
            pass                                   # owned by root, the "attacker" here
        os.chmod(box, 0o666)
        probe = (f"import sys; sys.path.insert(0, {REPO!r})\n"
                 "from deliver.mbox import append_mbox\nfrom deliver.errors import MailboxError\n"
                 "from deliver.locking import LockPolicy\n"
                 f"try:\n    append_mbox({box!r}, b'x\\n\\n', policy=LockPolicy(locksleep=0.05), spool_checks=True)\n"
                 "except MailboxError as e:\n    print('refused', e)\nelse:\n    print('written')\n")
        out = subprocess.run([PYTHON, "-c", probe], user=pw.pw_uid, group=pw.pw_gid, extra_groups=[],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout.startswith("refused"), out.stdout + out.stderr
        assert os.path.getsize(box) == 0
    finally:
        shutil.rmtree(d)


def test_unwritable_lock_directory_falls_back_to_kernel_lock():
    """The implicit mbox lock is postroom's own addition (procmail, without ':0:', would
    not have tried): when the directory forbids it, the append still happens under the
    fcntl lock and nothing reaches the user's log (stderr here)."""
    pw = pwd.getpwnam("prtest")
    d = tempfile.mkdtemp(prefix="postroom-mbox-", dir="/tmp")
    try:
        os.chmod(d, 0o755)                         # prtest cannot create box.lock here
        box = os.path.join(d, "box")
        with open(box, "wb"):
            pass
        os.chown(box, pw.pw_uid, pw.pw_gid)
        probe = (f"import sys; sys.path.insert(0, {REPO!r})\n"
                 "from deliver.mbox import append_mbox\nfrom deliver.locking import LockPolicy\n"
                 f"print(append_mbox({box!r}, b'x\\n\\n', policy=LockPolicy(locksleep=0.05)))\n")
        out = subprocess.run([PYTHON, "-c", probe], user=pw.pw_uid, group=pw.pw_gid, extra_groups=[],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "3", out.stderr
        assert out.stderr == ""
        assert sorted(os.listdir(d)) == ["box"]
    finally:
        shutil.rmtree(d)


def test_devnull_is_not_locked_or_written():
    assert append_mbox(os.devnull, b"x\n\n", policy=FAST) == 3


@pytest.mark.parametrize("dotlock", [True, False])
def test_kernel_lock_is_taken_even_under_the_recipes_dotlock(tmp_path, dotlock):
    """procmail takes its fcntl lock on every mbox write, ``:0:`` or not (strace:
    link box.lock, open box, F_SETLKW, write, F_UNLCK); a reader or writer that uses only
    kernel locks (Dovecot's default, mutt without dotlock) must exclude us in both cases.
    ``lock=False`` is how a delivery under ``:0:`` calls append_mbox."""
    box = tmp_path / "box"
    box.write_bytes(b"")
    holder = subprocess.Popen(
        [PYTHON, "-c", "import fcntl, os, sys, time\n"
                       f"fd = os.open({str(box)!r}, os.O_RDWR)\n"
                       "fcntl.lockf(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\n"
                       "sys.stdin.readline()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        probe = (f"import sys; sys.path.insert(0, {REPO!r})\n"
                 "from deliver.mbox import append_mbox\nfrom deliver.locking import LockPolicy\n"
                 f"append_mbox({str(box)!r}, b'late\\n\\n', policy=LockPolicy(locksleep=0.05), "
                 f"lock={dotlock!r})\n")
        child = subprocess.Popen([PYTHON, "-c", probe])
        time.sleep(1.0)
        assert child.poll() is None and box.read_bytes() == b""
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert child.wait(timeout=20) == 0
        assert box.read_bytes() == b"late\n\n"
    finally:
        holder.kill()
        holder.wait()


def test_spool_mailbox_open_to_others_is_tightened(tmp_path):
    box = tmp_path / "user"
    box.write_bytes(b"")
    box.chmod(0o644)
    assert tighten_spool_mailbox(str(box), os.getuid())
    assert stat.S_IMODE(box.stat().st_mode) == 0o600
    assert not tighten_spool_mailbox(str(box), os.getuid())     # nothing left to do


@pytest.mark.parametrize("mode,tightened", [(0o644, 0o640), (0o666, 0o660), (0o604, 0o600)])
def test_in_a_spool_its_group_may_write_the_group_keeps_its_bits(tmp_path, mode, tightened):
    # Debian's /var/mail (root:mail 2775): procmail's umask there is 007, so only the
    # others lose their bits and the mail group keeps its access
    import grp
    spool = tmp_path / "spool"
    spool.mkdir()
    os.chown(spool, -1, grp.getgrnam("mail").gr_gid)
    spool.chmod(0o2775)
    box = spool / "user"
    box.write_bytes(b"")
    box.chmod(mode)
    assert tighten_spool_mailbox(str(box), os.getuid())
    assert stat.S_IMODE(box.stat().st_mode) == tightened


def test_spool_mailbox_tightening_leaves_links_and_other_owners_alone(tmp_path):
    """A symlink or a hard-linked file may not be the user's mailbox at all, and a file
    of another owner is not ours to change: the delivery's own checks refuse those."""
    target = tmp_path / "target"
    target.write_bytes(b"")
    target.chmod(0o644)
    (tmp_path / "symlink").symlink_to(target)
    os.link(target, tmp_path / "hardlink")
    for name in ("symlink", "hardlink"):
        assert not tighten_spool_mailbox(str(tmp_path / name), os.getuid())
    assert not tighten_spool_mailbox(str(target), os.getuid() + 1)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


@pytest.mark.parametrize("mode", [0o660, 0o744, 0o2644, 0o600])
def test_spool_mailbox_modes_that_stay(tmp_path, mode):
    """Group read/write is left (a mail group); the owner's x bit or setgid says the
    mode is deliberate (procmail's OVERRIDE_MASK)."""
    box = tmp_path / "user"
    box.write_bytes(b"")
    box.chmod(mode)
    assert not tighten_spool_mailbox(str(box), os.getuid())
    assert stat.S_IMODE(box.stat().st_mode) == mode
