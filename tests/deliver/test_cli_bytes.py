"""Command-line arguments are bytes to procmail: a sender or an assignment that is not
UTF-8 (or is) reaches the From_ line, the variables and the folder names byte for byte,
compared with the real procmail on the same arguments (the differential harness reads
its arguments as text, so it cannot pass bytes that are not UTF-8)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
POSTROOM = REPO / ".venv" / "bin" / "postroom"
PROCMAIL = "/usr/bin/procmail"
USER = os.environ.get("POSTROOM_TEST_USER", "prtest")
MAIL = b"From: a@example.org\nSubject: bytes\n\nbody\n"
RC = b"LOGFILE=log\nLOG=\"X=[$X]\n\"\n:0:\nbox-$X\n"


def run(program: list[str], args: list[bytes]) -> tuple[int, dict[bytes, bytes]]:
    pw = pwd.getpwnam(USER)
    d = tempfile.mkdtemp(prefix="postroom-bytes-")
    try:
        os.chown(d, pw.pw_uid, pw.pw_gid)
        rc = Path(d) / "rc"
        rc.write_bytes(RC)
        os.chown(rc, pw.pw_uid, pw.pw_gid)
        proc = subprocess.run([p.encode() for p in program] + args, input=MAIL, cwd=d,
                              env={"PATH": "/usr/bin:/bin", "HOME": pw.pw_dir},
                              user=pw.pw_uid, group=pw.pw_gid, extra_groups=[],
                              capture_output=True, timeout=60)
        files = {}
        for name in os.listdir(os.fsencode(d)):
            if name != b"rc":
                data = (Path(os.fsdecode(d)) / os.fsdecode(name)).read_bytes()
                files[name] = data[data.index(b"\n"):] if name.startswith(b"box") else data
        return proc.returncode, files
    finally:
        shutil.rmtree(d)


@pytest.mark.parametrize("sender, value", [(b"\xe9x@example.org", b"\xe9"),
                                           ("été@example.org".encode(), "é".encode())])
def test_arguments_reach_the_mail_and_the_names_as_bytes(sender, value) -> None:
    args = [b"-f", sender, b"X=" + value, b"./rc"]
    status, ours = run([str(POSTROOM), "deliver"], args)
    theirs_status, theirs = run([PROCMAIL], args)
    assert status == theirs_status == 0
    assert b"box-" + value in ours
    log = ours[b"log"]
    assert b"X=[" + value + b"]\n" in log
    assert ours.keys() == theirs.keys()
    assert ours[b"box-" + value] == theirs[b"box-" + value]


def test_from_line_keeps_the_senders_bytes() -> None:
    status, ours = run([str(POSTROOM), "deliver"], [b"-f", b"\xe9x", b"./rc"])
    assert status == 0
    # the From_ line is cut off by run(); the log's abstract shows it
    assert b"From \xe9x  " in ours[b"log"]
