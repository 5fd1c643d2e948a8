"""TIMEOUT and programs: a waited-for program killed at TIMEOUT fails its recipe (and
tests/deliver/cases/pipe-timeout-w compares that with procmail); one that is not waited
for (no w) but still runs at TIMEOUT had the whole mail, so the mail is delivered, as
procmail (which never waits for it) counts it: it must not be delivered a second time
by the next recipe.  postroom reaps every program, so it kills that one and says so."""

from __future__ import annotations

import os
import pwd

from deliver.agent import Agent, Invocation, Site, User
from rules.cache import load_rc

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
