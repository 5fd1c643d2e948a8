"""Site settings reaching the recipes: $0 is the site's program name (procmail's argv[0]),
not the rc file."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

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


def test_rcfile_directory_checks_are_procmails(tmp_path) -> None:
    """procmail refuses an rc file in a directory that others can both write and
    search (not one they can only write), a default rc in a directory its group can
    write and search unless that group is the user's, and exempts sticky ones."""
    from deliver.agent import rcfile_is_safe

    me = User("u", os.getuid(), os.getgid(), str(tmp_path), "/bin/sh")
    stranger_group = User("u", os.getuid(), os.getgid() + 4242, str(tmp_path), "/bin/sh")
    cases = {0o772: (True, True), 0o773: (False, False), 0o1777: (True, True),
             0o775: (True, True), 0o770: (True, True)}
    for mode, (as_given, as_default) in cases.items():
        d = tmp_path / f"d{mode:o}"
        d.mkdir()
        rc = d / "rc"
        rc.write_text(":0\nbox\n")
        rc.chmod(0o644)
        d.chmod(mode)
        assert rcfile_is_safe(str(rc), me, default_rc=False) is as_given, oct(mode)
        assert rcfile_is_safe(str(rc), me, default_rc=True) is as_default, oct(mode)
    # group-writable and searchable: refused for a default rc when the group is not the user's
    assert rcfile_is_safe(str(tmp_path / "d775" / "rc"), stranger_group, default_rc=True) is False
    assert rcfile_is_safe(str(tmp_path / "d775" / "rc"), stranger_group, default_rc=False) is True
    assert rcfile_is_safe(str(tmp_path / "d770" / "rc"), stranger_group, default_rc=True) is False


MAIL = b"From: a@example.org\nSubject: x\n\nbody\n"


def lda(tmp_path: Path) -> tuple[User, Path, Path]:
    """The current user with a home and a spool under ``tmp_path``, for -d deliveries."""
    pw = pwd.getpwuid(os.geteuid())
    home, spool = tmp_path / "home", tmp_path / "spool"
    home.mkdir()
    spool.mkdir()
    return User(pw.pw_name, pw.pw_uid, pw.pw_gid, str(home), "/bin/sh"), home, spool


def deliver_as_lda(user: User, site: Site):
    inv = Invocation(delivery_mode=True, recipients=[user.name], sender="a@example.org")
    return Agent(user, site, load_rc=load_rc).run(inv, MAIL, {"TZ": "UTC"})


def test_a_hard_linked_spool_mailbox_is_never_written(tmp_path, agent_process_state) -> None:
    # /var/mail/USER hard-linked to a file of the user's (~/.bashrc): the delivery must
    # not append the mail to that file (procmail takes nlink != 1 for a bogus mailbox)
    user, home, spool = lda(tmp_path)
    victim = home / ".bashrc"
    victim.write_text("export X=1\n")
    os.link(victim, spool / user.name)
    out = deliver_as_lda(user, Site(spool_dir=str(spool), system_rc=""))
    assert int(out.status) != 0 and not out.delivered
    assert victim.read_text() == "export X=1\n"


def test_a_system_rc_others_can_write_is_not_run(tmp_path, agent_process_state) -> None:
    # it runs for every recipient: a world-writable one would let any user run
    # commands as all the others (procmail runs it as it finds it)
    user, _home, spool = lda(tmp_path)
    (tmp_path / "etc").mkdir()
    system_rc = tmp_path / "etc" / "procmailrc"
    log = tmp_path / "log"
    system_rc.write_text(f"LOGFILE={log}\nLOG=\"system rc ran\n\"\n")
    site = Site(spool_dir=str(spool), system_rc=str(system_rc))
    for mode, runs in ((0o644, True), (0o666, False), (0o664, True)):
        system_rc.chmod(mode)
        log.unlink(missing_ok=True)
        out = deliver_as_lda(user, site)
        assert out.delivered, oct(mode)
        assert ("system rc ran" in (log.read_text() if log.exists() else "")) is runs, oct(mode)
