"""Eight writers, one mbox: 4 real procmails and 4 postroom loops, 500 messages each.

procmail delivers with ``:0:`` (dot-lock ``box.lock`` + its fcntl lock); postroom appends
with deliver.folders (always dot-lock + fcntl).  Afterwards Python's ``mailbox.mbox`` must
read exactly 4000 messages, each with its own body intact — any interleaving or lost
append shows up as a wrong count or a damaged body.
"""

from __future__ import annotations

import mailbox
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time

import pytest

PER_WRITER = 500
WRITERS = 4
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = os.path.join(REPO, ".venv", "bin", "python")
LINES = 30


def body_for(tag: str) -> bytes:
    """Every third line starts with "From ", so procmail writes each message in many
    write(2) calls (one per escape) and unlocked writers would interleave."""
    return b"".join((b"From " if k % 3 == 0 else b"") + b"%s line %d 8-bit \xe9\xff\n" % (tag.encode(), k)
                    for k in range(LINES))


def message_for(tag: str) -> bytes:
    return b"Subject: %s\nX-Tag: %s\n\n" % (tag.encode(), tag.encode()) + body_for(tag)


POSTROOM_DRIVER = """
import sys
sys.path.insert(0, {repo!r})
from deliver.folders import deliver_to_folders
from deliver.fromline import prepare_message
from deliver.locking import LockPolicy
policy = LockPolicy(locksleep=1, suspend=1)
w = {writer}
for i in range({n}):
    tag = "pr%d-%d" % (w, i)
    body = b"".join((b"From " if k % 3 == 0 else b"") + b"%s line %d 8-bit \\xe9\\xff\\n" % (tag.encode(), k)
                    for k in range({lines}))
    msg = b"Subject: %s\\nX-Tag: %s\\n\\n" % (tag.encode(), tag.encode()) + body
    deliver_to_folders([{box!r}], prepare_message(msg, sender="postroom@test"), policy=policy)
"""

PROCMAIL_DRIVER = """
for i in $(seq 0 {last}); do /usr/bin/procmail -f procmail@test {rc} < {msgdir}/pm{writer}-$i || exit 1; done
"""


@pytest.fixture
def prdir():
    pw = pwd.getpwnam("prtest")
    d = tempfile.mkdtemp(prefix="postroom-concurrency-", dir="/tmp")
    os.chmod(d, 0o755)
    os.chown(d, pw.pw_uid, pw.pw_gid)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_procmail_and_postroom_share_one_mbox(prdir):
    pw = pwd.getpwnam("prtest")
    box = os.path.join(prdir, "box")
    msgdir = os.path.join(prdir, "msgs")
    os.mkdir(msgdir)
    for w in range(WRITERS):
        for i in range(PER_WRITER):
            with open(os.path.join(msgdir, f"pm{w}-{i}"), "wb") as f:
                f.write(message_for(f"pm{w}-{i}"))
    rc = os.path.join(prdir, "rc")
    with open(rc, "w") as f:
        # LOCKSLEEP=1 is procmail's smallest useful pause (0 would spin); measured below.
        f.write(f"MAILDIR={prdir}\nLOCKSLEEP=1\n:0:\n{box}\n")
    env = {"HOME": prdir, "PATH": "/usr/bin:/bin"}
    as_prtest = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], env=env, cwd=prdir,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    start = time.monotonic()
    procs = []
    for w in range(WRITERS):
        procs.append(subprocess.Popen(
            ["/bin/sh", "-c", PROCMAIL_DRIVER.format(last=PER_WRITER - 1, rc=rc, msgdir=msgdir, writer=w)],
            **as_prtest))
        procs.append(subprocess.Popen(
            [PYTHON, "-c", POSTROOM_DRIVER.format(repo=REPO, writer=w, n=PER_WRITER, lines=LINES, box=box)],
            **as_prtest))
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode(errors="replace")[-2000:]
    elapsed = time.monotonic() - start

    st = os.stat(box)
    assert st.st_uid == pw.pw_uid
    leftovers = [n for n in os.listdir(prdir) if n not in ("box", "rc", "msgs")]
    assert leftovers == [], leftovers          # no lock or claim file left behind

    mb = mailbox.mbox(box, create=False)
    try:
        seen = {}
        for key in mb.keys():
            raw = mb.get_bytes(key)
            head, _, body = raw.partition(b"\n\n")
            tag = head.split(b"X-Tag: ", 1)[1].split(b"\n", 1)[0].decode()
            assert tag not in seen, f"{tag} delivered twice"
            unescaped = re.sub(rb"(?m)^>From ", b"From ", body)
            assert unescaped.rstrip(b"\n") == body_for(tag).rstrip(b"\n"), repr(raw)
            seen[tag] = True
    finally:
        mb.close()
    assert len(seen) == 2 * WRITERS * PER_WRITER
    expected = {f"{k}{w}-{i}" for k in ("pm", "pr") for w in range(WRITERS) for i in range(PER_WRITER)}
    assert set(seen) == expected
    print(f"8 x {PER_WRITER} deliveries in {elapsed:.1f}s")
