"""Bounded input: a mail larger than max_message_size is refused with EX_DATAERR and a
clear message, never truncated; at the limit it is delivered whole."""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
POSTROOM = REPO / ".venv" / "bin" / "postroom"
USER = os.environ.get("POSTROOM_TEST_USER", "prtest")
MAIL = b"From: a@example.org\nSubject: size\n\n" + b"x" * 1000 + b"\n"


@pytest.fixture
def workdir():
    pw = pwd.getpwnam(USER)
    d = tempfile.mkdtemp(prefix="postroom-limit-")
    os.chown(d, pw.pw_uid, pw.pw_gid)
    (Path(d) / "rc").write_text(":0:\nbox\n")
    yield Path(d), pw
    subprocess.run(["rm", "-rf", d], check=True)


def deliver(workdir, pw, limit: int) -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": "/usr/bin:/bin", "POSTROOM_MAX_MESSAGE_SIZE": str(limit)}
    return subprocess.run([str(POSTROOM), "deliver", "-f", "a@example.org", "./rc"], input=MAIL,
                          cwd=workdir, env=env, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[],
                          capture_output=True, timeout=60)


def test_too_large_is_refused_with_dataerr(workdir):
    d, pw = workdir
    proc = deliver(d, pw, len(MAIL) - 1)
    assert proc.returncode == 65
    assert b"message larger than" in proc.stderr
    assert not (d / "box").exists()


def test_at_the_limit_is_delivered_whole(workdir):
    d, pw = workdir
    proc = deliver(d, pw, len(MAIL))
    assert proc.returncode == 0, proc.stderr
    assert (d / "box").read_bytes().endswith(b"x" * 1000 + b"\n\n")
