"""TIMEOUT and programs: a waited-for program killed at TIMEOUT fails its recipe (and
tests/deliver/cases/pipe-timeout-w compares that with procmail); one that is not waited
for (no w) but still runs at TIMEOUT had the whole mail, so the mail is delivered, as
procmail (which never waits for it) counts it: it must not be delivered a second time
by the next recipe.  postroom reaps every program, so it kills that one and says so."""

from __future__ import annotations

import os
import pwd
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from deliver.agent import Agent, Invocation, Site, User
from rules.cache import load_rc

sys.path.insert(0, str(Path(__file__).parent))
import difftool  # noqa: E402

MAIL = b"From: a@example.org\nSubject: slow\n\nbody\n"


def _deliver(tmp_path, rc_text: str):
    pw = pwd.getpwuid(os.geteuid())
    user = User(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, "/bin/sh")
    rc = tmp_path / "rc"
    rc.write_text(rc_text)
    inv = Invocation(assignments=[("MAILDIR", str(tmp_path))], rcfiles=[str(rc)])
    return Agent(user, Site(), load_rc=load_rc).run(inv, MAIL, {"TZ": "UTC", "PATH": "/usr/bin:/bin"})


def test_a_program_not_waited_for_that_had_the_mail_delivers_it_once(tmp_path, agent_process_state):
    out = _deliver(tmp_path, "LOGFILE=log\nTIMEOUT=1\n:0\n| cat >/dev/null; sleep 30\n:0\ninbox\n")
    assert int(out.status) == 0
    assert not (tmp_path / "inbox").exists()
    log = (tmp_path / "log").read_text()
    assert 'Timeout, terminating " cat >/dev/null; sleep 30"' in log
    assert "Folder:  cat >/dev/null; sleep 30" in log and "Program failure" not in log


def test_a_waited_for_program_killed_at_timeout_fails_its_recipe(tmp_path, agent_process_state):
    out = _deliver(tmp_path, "LOGFILE=log\nTIMEOUT=1\n:0 w\n| cat >/dev/null; sleep 30\n:0\ninbox\n")
    assert int(out.status) == 0
    assert (tmp_path / "inbox").exists()
    log = (tmp_path / "log").read_text()
    assert 'Program failure (-15) of " cat >/dev/null; sleep 30"' in log
    assert "Folder: inbox" in log


@pytest.mark.parametrize("flags", ["", " w", " i", " wi"])
def test_a_timeout_that_cuts_the_write_short_matches_procmail(tmp_path, flags):
    """A program that never reads a mail larger than a pipe holds is killed at TIMEOUT
    while procmail (or postroom) is still writing: procmail logs the cut write too
    (not with i, which ignores write errors and so counts a pipe without w as
    delivered).  Compared with the real procmail through the differential harness; the
    140 KB message is made here rather than kept as a case folder."""
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    (case_dir / "rc").write_text(f"LOGFILE=log\nTIMEOUT=1\n:0{flags}\n| sleep 30\n"
                                 "LOGFILE=/dev/null\n:0\ninbox\n")
    (case_dir / "msg").write_bytes(b"From: a@example.org\nSubject: big\n\n" + b"x" * 70 * 2000 + b"\n")
    os.chmod(tmp_path, 0o755)
    for p in (case_dir, case_dir / "rc", case_dir / "msg"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    case = difftool.load_case(case_dir)
    with ThreadPoolExecutor(max_workers=2) as pool:
        fa = pool.submit(difftool.run_case, case, difftool.procmail_command())
        fb = pool.submit(difftool.run_case, case, difftool.postroom_command())
        a, b = fa.result(), fb.result()
    assert not difftool.compare(a, b), "\n".join(difftool.compare(a, b))
