"""From_ line handling (PROCMAIL-BEHAVIOUR 26) compared byte for byte with the real procmail.

Each case runs /usr/bin/procmail as the unprivileged user prtest with an rc that delivers
to an mbox, and compares what it wrote with mbox_bytes(prepare_message(...)); only the date
of the first From_ line (made at run time) is normalised.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from deliver.fromline import find_timestamp, make_from_line, prepare_message
from deliver.mboxformat import mbox_bytes

PROCMAIL = "/usr/bin/procmail"
_STAMP = re.compile(rb"[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}\n")


@pytest.fixture
def prdir():
    """A directory prtest owns and can reach (pytest's tmp_path is 0700 root's)."""
    pw = pwd.getpwnam("prtest")
    d = tempfile.mkdtemp(prefix="postroom-fromline-", dir="/tmp")
    os.chmod(d, 0o755)
    os.chown(d, pw.pw_uid, pw.pw_gid)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run_procmail(home: str, message: bytes, args: list[str]) -> bytes:
    """Deliver ``message`` with the real procmail (as prtest) and return the mbox bytes."""
    pw = pwd.getpwnam("prtest")
    mbox = os.path.join(home, "mbox")
    with open(mbox, "wb"):
        pass
    os.chown(mbox, pw.pw_uid, pw.pw_gid)
    os.utime(mbox, (time.time() - 3600, time.time() - 3600))   # no NFS atime sleep
    rc = os.path.join(home, "rc")
    with open(rc, "w") as f:
        f.write(f"MAILDIR={home}\n:0\n{mbox}\n")
    proc = subprocess.run([PROCMAIL, *args, rc], input=message, user="prtest", group="prtest",
                          extra_groups=[], env={"HOME": home, "PATH": "/usr/bin:/bin", "TZ": "UTC"},
                          cwd=home, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    with open(mbox, "rb") as f:
        return f.read()


def norm_first_date(data: bytes) -> bytes:
    nl = data.find(b"\n") + 1
    return _STAMP.sub(b"<date>\n", data[:nl], count=1) + data[nl:]


CASES = [
    b"\n\nSubject: x\n\nbody\n",
    b"From a@b  Mon Jul  3 10:00:00 2023\n>From x\nSubject: x\n\nbody",
    b"From a@b  Mon Jul  3 10:00:00 2023\n>From x\n>From y\nSubject: x\n\nFrom here\n",
    b"From a@b Mon Jul  3 10:00:00 2023 remote from uucp\nS: x\n\nb\n",
    b"From a@b\nSubject: x\n\nbody\n",
    b"From  \nSubject: x\n\nbody\n",
    b"\nFrom a  Mon Jul  3 10:00:00 2023\nFrom b\n\nFrom c\n",
    b"Subject: x\n\nbody\n",
    b"Subject: \xe4\xf6\xfc\r\n\r\nFrom y\r\n\xff\r\n",
    b"",
    b"\n",
    b"From",
]


@pytest.mark.parametrize("args", [[], ["-f", "sender@example.org"], ["-f", "-"]], ids=["none", "f", "f-"])
@pytest.mark.parametrize("message", CASES, ids=range(len(CASES)))
def test_from_line_matches_procmail(prdir, message, args):
    expected = run_procmail(prdir, message, args)
    sender = args[1] if args else None
    ours = mbox_bytes(prepare_message(message, sender=sender, invoker="prtest"), raw=False)
    if args:
        assert norm_first_date(ours) == norm_first_date(expected)
    else:
        assert ours == expected


def test_make_from_line_shape():
    os.environ["TZ"] = "UTC"
    time.tzset()
    assert make_from_line("a@b", 1688378400.0) == b"From a@b  Mon Jul  3 10:00:00 2023\n"
    assert make_from_line(b"x", 0) == b"From x  Thu Jan  1 00:00:00 1970\n"


def test_refresh_keeps_address_and_replaces_date():
    line = b"From a@b  Mon Jul  3 10:00:00 2023\n"
    assert line[: find_timestamp(line)] == b"From a@b"
    out = prepare_message(line + b"S: x\n\nb\n", sender=None, refresh_date=True, when=0)
    assert out.startswith(b"From a@b  Thu Jan  1 00:00:00 1970\nS: x\n")


def test_no_sender_keeps_input_verbatim():
    msg = b"\n\nFrom x  Mon Jul  3 10:00:00 2023\nS: y\n\nbody\n"
    assert prepare_message(msg, sender=None) == msg


def test_delivery_mode_adds_invoker_line_only_when_missing():
    kept = b"From a@b  Mon Jul  3 10:00:00 2023\nS: x\n\nb\n"
    assert prepare_message(kept, sender=None, delivery_mode=True) == kept
    made = prepare_message(b"S: x\n\nb\n", sender=None, delivery_mode=True, invoker="joe", when=0)
    assert made.startswith(b"From joe  ") and made.endswith(b"\nS: x\n\nb\n")


def test_overlong_from_line_is_dropped():
    msg = b"From " + b"x" * 3000 + b"\nS: x\n\nb\n"
    out = prepare_message(msg, sender="s", when=0)
    assert out.startswith(b"From s  ") and out.endswith(b"\nS: x\n\nb\n")


def test_untrusted_delivery_marks_a_from_line_it_did_not_make():
    """-d by a user procmail does not trust: a From_ line from the input or from -f gets
    ">From <invoker>  <now>" after it; one made up from the invoker does not; -o makes
    the invoker the sender, unmarked."""
    when = 1688378400.0                      # Mon Jul  3 10:00:00 2023 UTC
    stamp = b"  " + prepare_message(b"x\n", sender="a", when=when).split(b"  ", 1)[1].split(b"\n")[0]
    mail = b"From a@b  Mon Jul  3 09:00:00 2023\nSubject: x\n\nbody\n"
    got = prepare_message(mail, sender=None, delivery_mode=True, invoker="eve",
                          untrusted="eve", when=when)
    assert got.startswith(b"From a@b  Mon Jul  3 09:00:00 2023\n>From eve" + stamp + b"\nSubject")
    got = prepare_message(b"Subject: x\n\nbody\n", sender="s@x", delivery_mode=True,
                          invoker="eve", untrusted="eve", when=when)
    assert got.startswith(b"From s@x" + stamp + b"\n>From eve" + stamp + b"\nSubject")
    got = prepare_message(b"Subject: x\n\nbody\n", sender=None, delivery_mode=True,
                          invoker="eve", untrusted="eve", when=when)
    assert got.startswith(b"From eve" + stamp + b"\nSubject")
    got = prepare_message(mail, sender="s@x", delivery_mode=True, invoker="eve",
                          untrusted="eve", override=True, when=when)
    assert got.startswith(b"From eve" + stamp + b"\nSubject")
    # trusted (untrusted=None): no mark
    got = prepare_message(mail, sender="s@x", delivery_mode=True, invoker="root", when=when)
    assert got.startswith(b"From s@x" + stamp + b"\nSubject")
