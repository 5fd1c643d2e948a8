"""Site settings reaching the recipes: $0 is the site's program name (procmail's argv[0]),
not the rc file."""

from __future__ import annotations

import os
import pwd

from deliver.agent import Agent, Invocation, Site, User
from rules.cache import load_rc

RC = "P=$0\nR=$_\n:0\n* P ?? ^^custom deliver^^\n* R ?? rc^^\nyes\n:0\nno\n"


def test_dollar_zero_is_the_sites_program(tmp_path, agent_process_state) -> None:
    pw = pwd.getpwuid(os.geteuid())
    user = User(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, "/bin/sh")
    rc = tmp_path / "rc"
    rc.write_text(RC)
    inv = Invocation(assignments=[("MAILDIR", str(tmp_path))], rcfiles=[str(rc)])
    mail = b"From: a@example.org\nSubject: x\n\nbody\n"
    out = Agent(user, Site(program="custom deliver"), load_rc=load_rc).run(inv, mail, {"TZ": "UTC"})
    assert int(out.status) == 0
    assert (tmp_path / "yes").exists() and not (tmp_path / "no").exists()
    assert Site().program == "postroom deliver"
