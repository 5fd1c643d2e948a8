"""Folder kinds, Maildir/MH/directory naming and hard links, compared with the real procmail
(PROCMAIL-BEHAVIOUR 20, 30-32).  procmail runs as prtest in one directory, postroom (also
as prtest, via the venv python) in a twin directory; the trees are compared with the parts
that cannot match (times, pids, inode numbers) normalised."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deliver.dirfolder import ultoan
from deliver.errors import MailboxError
from deliver.folders import deliver_to_folders, folder_kind
from deliver.locking import LockPolicy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = os.path.join(REPO, ".venv", "bin", "python")
PROCMAIL = "/usr/bin/procmail"
MESSAGE = b"From a@b  Mon Jul  3 10:00:00 2023\n>From c\nSubject: x\n\nFrom body\n"


@pytest.fixture
def twins():
    pw = pwd.getpwnam("prtest")
    dirs = []
    for who in ("procmail", "postroom"):
        d = tempfile.mkdtemp(prefix=f"postroom-folders-{who}-", dir="/tmp")
        os.chmod(d, 0o755)
        os.chown(d, pw.pw_uid, pw.pw_gid)
        dirs.append(d)
    yield dirs
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def as_prtest(home):
    pw = pwd.getpwnam("prtest")
    return dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], cwd=home, capture_output=True,
                env={"HOME": home, "PATH": "/usr/bin:/bin"}, timeout=30)


def setup(home, dirs=(), files=()):
    pw = pwd.getpwnam("prtest")
    for d in dirs:
        os.mkdir(os.path.join(home, d), 0o755)
        os.chown(os.path.join(home, d), pw.pw_uid, pw.pw_gid)
    for f in files:
        open(os.path.join(home, f), "wb").close()
        os.chown(os.path.join(home, f), pw.pw_uid, pw.pw_gid)


def run_procmail(home, action, umask="077", times=2):
    rc = os.path.join(home, "rc")
    with open(rc, "w") as f:
        f.write(f"MAILDIR={home}\nUMASK={umask}\n:0\n{action}\n")
    for _ in range(times):
        p = subprocess.run([PROCMAIL, "-m", rc], input=MESSAGE, **as_prtest(home))
        assert p.returncode == 0, p.stderr
    os.unlink(rc)


DRIVER = """
import json, os, sys
sys.path.insert(0, {repo!r})
from deliver.folders import deliver_to_folders
os.chdir({home!r})
out = []
for _ in range({times}):
    r = deliver_to_folders({names!r}, {msg!r}, umask={umask})
    out.append(list(r.names))
print(json.dumps(out))
"""


def run_postroom(home, action, umask="077", times=2):
    code = DRIVER.format(repo=REPO, home=home, times=times, names=action.split(), msg=MESSAGE,
                         umask=int(umask, 8))
    p = subprocess.run([PYTHON, "-c", code], **as_prtest(home))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def snapshot(home):
    """{normalised path: (type, mode, link group, content)} for the whole tree."""
    names = {}
    tree = {}
    for root, dirs, files in os.walk(home):
        for n in dirs + files:
            path = os.path.join(root, n)
            rel = os.path.relpath(path, home)
            st = os.lstat(path)
            # Maildir names carry time and pid, dir names the inode: normalise them
            rel = re.sub(r"new/\d+\.\d+_(\d+)\.[^/]+$", r"new/T.P_\1.HOST", rel)
            rel = re.sub(r"msg\.[A-Za-z0-9_-]+$", lambda m: "msg.#%d" % names.setdefault(m.group(0), len(names)), rel)
            content = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    content = f.read()
            tree[rel] = (stat.S_IFMT(st.st_mode), oct(stat.S_IMODE(st.st_mode)), st.st_nlink, content)
    return dict(sorted(tree.items()))


@pytest.mark.parametrize(
    ("action", "dirs", "files", "umask"),
    [
        ("md/", (), (), "077"),
        ("mh/.", (), (), "077"),
        ("mh/.", (), (), "022"),
        ("md/", (), (), "022"),
        ("dir", ("dir",), (), "077"),
        ("dir", ("dir",), (), "022"),
        ("box", (), (), "022"),
        ("box", (), (), "000"),
        ("md/ mh/. dir", ("dir",), (), "077"),
        ("mh/. md/ newdir dir", ("dir",), (), "077"),
        ("md/", (), ("md",), "077"),
        ("f md/", (), ("f",), "077"),
        ("md/ f", (), ("f",), "077"),
    ],
)
def test_tree_matches_procmail(twins, action, dirs, files, umask):
    ours_home, theirs_home = twins[1], twins[0]
    for home in twins:
        setup(home, dirs, files)
    run_procmail(theirs_home, action, umask)
    run_postroom(ours_home, action, umask)
    ours, theirs = snapshot(ours_home), snapshot(theirs_home)
    # the maildir serial: procmail starts each process at 0 like we do, but runs one
    # process per message; our driver delivers twice in one process, so compare modulo it
    norm = lambda t: {re.sub(r"_\d+\.HOST$", "_n.HOST", k): v for k, v in t.items()}
    assert sorted(norm(ours)) == sorted(norm(theirs))
    assert sorted(norm(ours).values(), key=repr) == sorted(norm(theirs).values(), key=repr)


def test_lastfolder_names(twins):
    home = twins[1]
    setup(home, ("dir",))
    (names,) = run_postroom(home, "md/ mh/. dir", times=1)
    assert names[0].startswith("md/new/") and names[1] == "mh/1"
    ino = os.stat(os.path.join(home, "mh", "1")).st_ino
    assert names[2] == "dir/msg." + ultoan(ino)


def test_ultoan_matches_procmail_digits():
    assert ultoan(2147090) == "SMMI"          # observed: inode 2147090 -> msg.SMMI
    assert ultoan(0) == "A" and ultoan(63) == "_" and ultoan(62) == "-"


def test_folder_kind(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_bytes(b"")
    assert folder_kind(str(tmp_path / "d")) == "dir"
    assert folder_kind(str(tmp_path / "f")) == "mbox"
    assert folder_kind(str(tmp_path / "nope")) == "mbox"
    assert folder_kind("x/") == "maildir"
    assert folder_kind("x/.") == "mh"


def test_missing_maildir_parent_is_not_created(tmp_path):
    # procmail: "Unable to treat as directory", then appends to the name as an mbox -
    # which fails too because the parent is missing.  No lock is attempted in a
    # directory that does not exist (it would be retried for a minute), and a missing
    # directory is a permanent problem, not one a retry cures.
    with pytest.raises(MailboxError) as info:
        deliver_to_folders([str(tmp_path / "no" / "md") + "/"], MESSAGE,
                           policy=LockPolicy(locksleep=30, retries=2))
    assert not info.value.temporary
    assert os.listdir(tmp_path) == []


# --- MH numbers: procmail's dirfile() reads a name with strtol() ---------------------

def _libc_strtol_whole(name: str) -> int | None:
    """libc's strtol(name, &end, 10), counted only when it consumed the whole name."""
    import ctypes
    libc = ctypes.CDLL(None)
    libc.strtol.restype = ctypes.c_long
    libc.strtol.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int]
    raw = name.encode("latin-1")
    buf = ctypes.create_string_buffer(raw)
    end = ctypes.c_char_p()
    value = libc.strtol(buf, ctypes.byref(end), 10)
    consumed = ctypes.cast(end, ctypes.c_void_p).value - ctypes.addressof(buf)
    return value if consumed == len(raw) and raw else None


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.text(alphabet=" \t\n\v\f\r+-0123456789x", min_size=1, max_size=24),
    st.integers(-2**70, 2**70).map(str),
    st.builds(lambda pad, n: pad + n, st.sampled_from(["", " ", "\t", "+", " -"]),
              st.integers(0, 10**25).map(str))))
def test_mh_message_number_is_libc_strtol_of_the_whole_name(name: str) -> None:
    from deliver.mh import message_number
    assert message_number(name) == _libc_strtol_whole(name)
