"""mbox escaping, Content-Length and the final newline (PROCMAIL-BEHAVIOUR 27-29).

Differential against the real procmail (run as prtest) for mbox, ``r`` mbox, pipe and
Maildir output, plus hypothesis properties for random bodies read back with Python's
``mailbox`` module.
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
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from deliver.mboxformat import (_escape_points, header_end, maildir_bytes, mbox_bytes,
                                program_bytes, rewrite_content_length)

PROCMAIL = "/usr/bin/procmail"


@pytest.fixture(scope="module")
def prdir():
    pw = pwd.getpwnam("prtest")
    d = tempfile.mkdtemp(prefix="postroom-mboxformat-", dir="/tmp")
    os.chmod(d, 0o755)
    os.chown(d, pw.pw_uid, pw.pw_gid)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def procmail_outputs(home: str, message: bytes) -> dict[str, bytes]:
    """What the real procmail writes for ``message`` to an mbox, an ``r`` mbox, a pipe
    and a Maildir (no -f, so no From_ line is made up)."""
    pw = pwd.getpwnam("prtest")
    for leftover in os.listdir(home):
        path = os.path.join(home, leftover)
        shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
    old = time.time() - 3600
    for name in ("mbox", "rbox"):
        path = os.path.join(home, name)
        open(path, "wb").close()
        os.chown(path, pw.pw_uid, pw.pw_gid)
        os.utime(path, (old, old))                 # keep procmail's NFS atime sleep away
    rc = os.path.join(home, "rc")
    with open(rc, "w") as f:
        f.write(f"MAILDIR={home}\n:0c\n{home}/md/\n:0c\n| cat > {home}/pipe\n"
                f":0rc\n{home}/rbox\n:0\n{home}/mbox\n")
    proc = subprocess.run([PROCMAIL, rc], input=message, user="prtest", group="prtest", extra_groups=[],
                          env={"HOME": home, "PATH": "/usr/bin:/bin"}, cwd=home, capture_output=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    out = {}
    for name in ("mbox", "rbox", "pipe"):
        with open(os.path.join(home, name), "rb") as f:
            out[name] = f.read()
    (md,) = os.listdir(os.path.join(home, "md", "new"))
    with open(os.path.join(home, "md", "new", md), "rb") as f:
        out["maildir"] = f.read()
    return out


CASES = [
    b"Subject: x\n\nFrom y\nFrom: z\n>From q\n From w\nFROM r\nx\n",
    b"Subject: x\n\nFrom y\nFrom: z\nx\0\nFrom t\n",
    b"A\0B\nFrom x\n\nFrom y\n",
    b"Subject: x\nFrom z\n\nFrom a\n",
    b"Subject: x\r\n\r\nFrom y\r\nbody\r\n",
    b"Subject: \xe9\xff\n\n\x80From \xfe\nFrom \xe9t\xe9\n",
    b"Subject: x\n\nbody\n\n\n",
    b"Subject: x\n\nno final newline",
    b"Subject: x",
    b"",
    b"\n",
    b"\n\nSubject: x\n\nFrom leading\n",
    b"From a@b  Mon Jul  3 10:00:00 2023\n>From x\nFrom y\nSubject: x\n\nFrom body\n",
    b"Subject: x\ncontent-length: 5\n\nabc\nx",
    b"Subject: x\nContent-Length: 5\n\nabc\n\n",
    b"Subject: x\nContent-Length: 5\n\n",
    b"Subject: x\nContent-Length:\n\nFrom a\n",
    b"Subject: x\nContent-Length: 12345\n\n" + b"x" * 200 + b"\nFrom a\n",
    b"Content-Length: 1\n\nFrom a\nFrom b\n",
    b"Subject: x\nContent-Length:" + b" " * 40 + b"\n\nFrom a\n",
    b"Subject: x\nContent-Length: 99\n\nFrom a\nb\n\nFrom c\n",
]


@pytest.mark.parametrize("message", CASES, ids=range(len(CASES)))
def test_bytes_match_procmail(prdir, message):
    expected = procmail_outputs(prdir, message)
    assert mbox_bytes(message, raw=False) == expected["mbox"]
    assert mbox_bytes(message, raw=True) == expected["rbox"]
    assert program_bytes(message) == expected["pipe"]
    assert maildir_bytes(message) == expected["maildir"]


def test_content_length_is_rewritten_in_place():
    msg = b"Content-Length: 5\nX: y\n\n" + b"z" * 38 + b"\n"
    out = rewrite_content_length(msg)
    assert out.startswith(b"Content-Length:39\n")
    assert rewrite_content_length(out) == out


# -- properties --------------------------------------------------------------------------

_line = st.one_of(
    st.sampled_from([b"From ", b">From ", b"From: x", b" From x", b"FROM x", b"", b"\r", b"From"]),
    st.binary(max_size=20).filter(lambda b: b"\n" not in b and b"\0" not in b),
)
_body = st.lists(st.tuples(st.sampled_from([b"", b"From ", b">From "]), _line), max_size=12).map(
    lambda parts: b"\n".join(a + b for a, b in parts))


@settings(max_examples=150, deadline=None)
@given(body=_body, final_nl=st.booleans())
def test_no_unescaped_from_line_after_the_first(body, final_nl):
    msg = b"From s  Mon Jul  3 10:00:00 2023\nSubject: x\n\n" + body + (b"\n" if final_nl else b"")
    out = mbox_bytes(msg, raw=False)
    assert b"\nFrom " not in out
    assert out.endswith(b"\n")
    undo = re.compile(rb"(?m)^>From ")
    assert undo.sub(b"From ", out).rstrip(b"\n") == undo.sub(b"From ", msg).rstrip(b"\n")


_pieces = st.lists(st.sampled_from([b"\n", b"F", b"From ", b"rom ", b"\nFrom", b" ", b"\0", b"x"]),
                  max_size=30).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(data=_pieces, a=st.integers(0, 40), b=st.integers(0, 40))
@example(data=b"x\nFrom y", a=0, b=6)         # a From line cut by the window's end
@example(data=b"\nFrom \0\nFrom ", a=0, b=14)  # one before the NUL, none after
def test_escape_points_are_every_newline_of_a_from_line_in_the_window(data, a, b):
    """The fast search ("\nF", then the rest) finds what the plain definition does: every
    "\nFrom " lying wholly in [start, stop), none after a NUL."""
    start, stop = min(a, b, len(data)), min(max(a, b), len(data))
    nul = data.find(b"\0", start, stop)
    end = stop if nul < 0 else nul
    expected = [i for i in range(start, end) if data.startswith(b"\nFrom ", i) and i + 6 <= end]
    assert _escape_points(data, start, stop) == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies=st.lists(_body, min_size=1, max_size=4))
def test_python_mailbox_reads_back_every_message(tmp_path_factory, bodies):
    path = str(tmp_path_factory.mktemp("mb") / "mbox")
    with open(path, "wb") as f:
        for i, body in enumerate(bodies):
            msg = b"From s  Mon Jul  3 10:00:00 2023\nSubject: %d\n\n" % i + body + b"\n"
            f.write(mbox_bytes(msg, raw=False))
    box = mailbox.mbox(path, create=False)
    try:
        got = [box.get_bytes(k) for k in box.keys()]
    finally:
        box.close()
    assert len(got) == len(bodies)
    for i, (raw, body) in enumerate(zip(got, bodies)):
        head = b"Subject: %d\n\n" % i
        assert raw.startswith(head)
        # undo procmail's (mboxo) escaping: one '>' was added to each "From " line
        unescaped = re.sub(rb"(?m)^>From ", b"From ", raw[len(head):])
        assert unescaped.rstrip(b"\n") == re.sub(rb"(?m)^>From ", b"From ", body).rstrip(b"\n")


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_rewrite_is_idempotent_and_keeps_length(data):
    once = rewrite_content_length(b"Content-Length: 12\n" + data)
    assert rewrite_content_length(once) == once
    assert len(once) == len(data) + 19
    assert header_end(once) == header_end(b"Content-Length: 12\n" + data)


def test_body_alone_is_escaped_as_procmails_one_scan_over_the_body() -> None:
    from deliver.mboxformat import mbox_body_bytes
    mail = b"From: a\n\n"
    # the body's first line has no newline before it in procmail's scan
    assert mbox_body_bytes(b"From x\n", mail + b"From x\n", raw=False) == b"From x\n\n"
    # a blank line and then From: escaped (not taken for a header of its own)
    assert mbox_body_bytes(b"\nFrom x\n", mail + b"\nFrom x\n", raw=False) == b"\n>From x\n\n"
    # a NUL ends the scan
    assert mbox_body_bytes(b"\0\nFrom x\n", mail + b"\0\nFrom x\n", raw=False) == b"\0\nFrom x\n\n"
    # what the mail's Content-Length covers is not escaped; -Y ignores it
    covered = b"From: a\nContent-Length: 8\n\nx\nFrom y\n"
    assert mbox_body_bytes(b"x\nFrom y\n", covered, raw=False) == b"x\nFrom y\n\n"
    assert mbox_body_bytes(b"x\nFrom y\n", covered, raw=False, berkeley=True) == b"x\n>From y\n\n"
    assert mbox_body_bytes(b"x\nFrom y\n", covered, raw=True) == b"x\nFrom y\n"
