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


# A signal before the agent's rc loop (here: while the mail is being prepared) has no
# abstract to write, but must still end with the signal's status, never Python's 1.
EARLY_SIGNAL = """
import os, signal, sys
sys.argv = ["postroom", "deliver", "-f", "a@example.org", "./rc"]
import deliver.agent
real = deliver.agent.prepare_message
def prepare(*args, **kwargs):
    os.kill(os.getpid(), signal.{sig})
    return real(*args, **kwargs)
deliver.agent.prepare_message = prepare
from deliver.cli import main
sys.exit(main())
"""


@pytest.mark.parametrize(("sig", "status"), [("SIGTERM", 75), ("SIGHUP", 73)])
def test_a_signal_before_the_rc_loop_ends_with_its_status(workdir, sig, status):
    d, pw = workdir
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-c", EARLY_SIGNAL.format(sig=sig)],
                          input=MAIL, cwd=d, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
                          user=pw.pw_uid, group=pw.pw_gid, extra_groups=[],
                          capture_output=True, timeout=60)
    assert proc.returncode == status, proc.stderr
    assert not (d / "box").exists()
