"""`postroom serve` end to end: a real daemon subprocess on 127.0.0.1, smtplib and swaks.

Each test writes a whole installation into tmp_path (postroom.toml, maps, homes with
~/.procmailrc), starts `python -m mta.cli serve --config ...` on a free port, talks SMTP
to it and reads the mailboxes back with the mailbox module.
"""

from __future__ import annotations

import email
import email.policy
import mailbox
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

PY = sys.executable
SWAKS = shutil.which("swaks") or "/usr/bin/swaks"
HOST = "mx.example.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Daemon:
    """An installation under ``root`` and its `postroom serve` process."""

    def __init__(self, root: Path, *, users: dict[str, str], aliases: str = "",
                 virtusertable: str = "", queue: str = 'initial = "1s"\n', smtp: str = "",
                 limits: str = "") -> None:
        self.root = root
        self.port = free_port()
        uid, gid = os.getuid(), os.getgid()
        (root / "users").write_text("".join(f"{u}:x:{uid}:{gid}::home/{u}:/bin/sh\n" for u in users))
        (root / "aliases").write_text(aliases)
        (root / "virtusertable").write_text(virtusertable)
        (root / "local-host-names").write_text("example.com\n")
        self.config = root / "postroom.toml"
        self.config.write_text(
            f'[server]\nhostname = "{HOST}"\nlog_file = "var/log/maillog"\n'
            f'[smtp]\nlisteners = ["127.0.0.1:{self.port}"]\n{smtp}'
            f'[smtp.limits]\ngreet_pause = 0\n{limits}'
            '[maps]\nlocal_host_names = "local-host-names"\nvirtusertable = "virtusertable"\n'
            'aliases = "aliases"\nusers = "users"\n'
            '[deliver]\nsystem_rc = "no-system-rc"\nmail_spool = "var/mail"\nrun_as_root_drop = false\n'
            f'[queue]\n{queue}')
        for u, rc in users.items():
            self.home(u).mkdir(parents=True, exist_ok=True)
            if rc:
                (self.home(u) / ".procmailrc").write_text(rc)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "var" / "log" / "maillog"

    def home(self, user: str) -> Path:
        return self.root / "var" / "home" / user

    def inbox(self, user: str) -> Path:
        return self.root / "var" / "mail" / user

    def subjects(self, path: Path) -> list[str]:
        if not path.exists():
            return []
        return [email.message_from_bytes(m.as_bytes(), policy=email.policy.default)["Subject"]
                for m in mailbox.mbox(str(path))]

    def wait_subjects(self, path: Path, n: int, timeout: float = 15.0) -> list[str]:
        wait_for(lambda: len(self.subjects(path)) >= n, timeout, f"{n} messages in {path}")
        return self.subjects(path)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def start(self) -> "Daemon":
        mark = self.log_text().count("postroom serve ready")
        self.proc = subprocess.Popen([PY, "-m", "mta.cli", "serve", "--config", str(self.config),
                                      "--no-stderr"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        wait_for(lambda: self.log_text().count("postroom serve ready") > mark or self.proc.poll() is not None,
                 20, "the daemon to start")
        assert self.proc.poll() is None, self.proc.stderr.read().decode() if self.proc.stderr else ""
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(30)
        finally:
            if self.proc.stderr:
                self.proc.stderr.close()
        self.proc = None
        return code

    def cli(self, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
        return subprocess.run([PY, "-m", "mta.cli", *args[:1], "--config", str(self.config), *args[1:]],
                              input=stdin.decode(), capture_output=True, text=True, timeout=30)

    def send(self, to: list[str], subject: str, sender: str = "sender@example.org",
             body: str = "hello\n") -> dict:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as s:
            s.ehlo("client.example")
            msg = f"From: {sender}\r\nTo: {', '.join(to)}\r\nSubject: {subject}\r\n\r\n{body}"
            return s.sendmail(sender, to, msg)


@pytest.fixture
def daemon(tmp_path: Path):
    made: list[Daemon] = []

    def make(**kw) -> Daemon:
        root = tmp_path / f"d{len(made)}"
        root.mkdir()
        d = Daemon(root, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        if d.proc is not None:
            d.proc.kill()
            d.proc.wait()


URGENT = "MAILDIR=$HOME\n:0:\n* ^Subject:.*urgent\nurgent\n"


def test_smtp_to_local_user_runs_rc_and_logs(daemon) -> None:
    d = daemon(users={"alice": URGENT}).start()
    assert d.send(["alice@example.com"], "urgent: now") == {}
    assert d.send(["Alice@EXAMPLE.com"], "plain") == {}
    assert d.wait_subjects(d.home("alice") / "urgent", 1) == ["urgent: now"]
    assert d.wait_subjects(d.inbox("alice"), 1) == ["plain"]
    wait_for(lambda: d.log_text().count("stat=Sent") == 2, what="two Sent lines")
    log = d.log_text()
    assert "from=<sender@example.org>, size=" in log and "nrcpts=1" in log and "relay=client.example [127.0.0.1]" in log
    assert "to=<alice@example.com>, delay=00:00:0" in log and "mailer=local, pri=" in log
    assert d.stop() == 0
    assert "stopped" in d.log_text()


def test_swaks_aliases_include_and_virtusertable(daemon, tmp_path: Path) -> None:
    lst = tmp_path / "team.list"
    lst.write_text("bob, carol\n")
    d = daemon(users={"alice": "", "bob": "", "carol": ""},
               aliases=f"team: alice, :include:{lst}\n",
               virtusertable="sales@virt.example team\n@virt.example %1@example.com\n").start()
    for to in ("team@example.com", "sales@virt.example", "carol@virt.example"):
        r = subprocess.run([SWAKS, "--server", f"127.0.0.1:{d.port}", "--helo", "swaks.example",
                            "--from", "sender@example.org", "--to", to, "--header", f"Subject: to {to}"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "<** " not in r.stdout, r.stdout
    r = subprocess.run([SWAKS, "--server", f"127.0.0.1:{d.port}", "--helo", "swaks.example",
                        "--to", "nobody@example.com"], capture_output=True, text=True, timeout=30)
    assert "<** 550 5.1.1" in r.stdout
    assert sorted(d.wait_subjects(d.inbox("alice"), 2)) == ["to sales@virt.example", "to team@example.com"]
    assert sorted(d.wait_subjects(d.inbox("bob"), 2)) == ["to sales@virt.example", "to team@example.com"]
    assert sorted(d.wait_subjects(d.inbox("carol"), 3)) == [
        "to carol@virt.example", "to sales@virt.example", "to team@example.com"]
    assert d.stop() == 0


def test_restart_with_a_non_empty_queue(daemon) -> None:
    d = daemon(users={"alice": ""})
    for i in range(5):      # no daemon: sendmail queues durably and the poke finds nobody
        r = d.cli("sendmail", "-oi", "alice", stdin=f"Subject: queued {i}\n\nbody\n".encode())
        assert r.returncode == 0, r.stderr
    q = d.cli("mailq")
    assert q.returncode == 0 and "(5 requests)" in q.stdout and q.stdout.count("<alice>") == 5
    d.start()
    assert sorted(d.wait_subjects(d.inbox("alice"), 5)) == [f"queued {i}" for i in range(5)]
    wait_for(lambda: d.cli("mailq").stdout == "Mail queue is empty\n", what="empty queue")
    # a message interrupted by SIGKILL mid-queue is delivered after the restart as well
    assert d.stop(signal.SIGKILL) == -signal.SIGKILL
    r = d.cli("sendmail", "-oi", "alice", stdin=b"Subject: after kill\n\nbody\n")
    assert r.returncode == 0
    d.start()
    assert "after kill" in d.wait_subjects(d.inbox("alice"), 6)
    assert d.stop() == 0


def test_deferred_delivery_is_retried_then_delivered(daemon) -> None:
    d = daemon(users={"alice": "EXITCODE=75\n:0\n/dev/null\n", "bob": ""}).start()
    d.send(["alice@example.com"], "try again")
    wait_for(lambda: "stat=Deferred" in d.log_text(), what="a deferral")
    mq = d.cli("mailq").stdout
    assert "(deferred: exit 75" in mq and "<alice@example.com>" in mq
    (d.home("alice") / ".procmailrc").write_text("# fixed\n")
    assert d.wait_subjects(d.inbox("alice"), 1, timeout=20) == ["try again"]
    # the runner logs the delivery after the mbox write returns: not necessarily yet
    wait_for(lambda: "stat=Sent" in d.log_text(), what="the delivery's log line")
    assert d.stop() == 0


def test_failed_recipient_bounces_to_sender(daemon) -> None:
    d = daemon(users={"alice": "", "bob": "EXITCODE=67\n:0\n/dev/null\n"}).start()
    d.send(["bob@example.com"], "doomed", sender="alice@example.com")
    [subject] = d.wait_subjects(d.inbox("alice"), 1)
    assert subject == "Returned mail: see transcript for details"
    msg = email.message_from_bytes(next(iter(mailbox.mbox(str(d.inbox("alice"))))).as_bytes(),
                                   policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert d.inbox("alice").read_bytes().startswith(b"From MAILER-DAEMON ")
    assert "dsn=5.1.1" in d.log_text()
    assert d.stop() == 0


def test_recipe_forward_uses_postroom_sendmail(daemon) -> None:
    d = daemon(users={"alice": ":0\n! bob\n", "bob": ""}).start()
    d.send(["alice@example.com"], "pass it on")
    assert d.wait_subjects(d.inbox("bob"), 1) == ["pass it on"]
    assert d.stop() == 0


def test_sighup_reloads_maps_and_sendmail_pokes(daemon) -> None:
    d = daemon(users={"alice": ""}, queue='initial = "10m"\n').start()   # rescans every 60 s
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
        s.ehlo("client.example")
        s.mail("x@example.org")
        assert s.rcpt("newalias@example.com")[0] == 550
    (d.root / "aliases").write_text("newalias: alice\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "maps reloaded" in d.log_text(), what="reload")
    assert d.send(["newalias@example.com"], "via new alias") == {}
    t0 = time.monotonic()
    assert d.cli("sendmail", "alice", stdin=b"Subject: poked\n\nx\n").returncode == 0
    assert "poked" in d.wait_subjects(d.inbox("alice"), 2, timeout=10)
    assert time.monotonic() - t0 < 10          # well before the 60 s rescan
    assert d.stop() == 0


def test_queue_hold_release_delete_flush(daemon) -> None:
    d = daemon(users={"alice": ""}, aliases="far: someone@elsewhere.example\n",
               queue='initial = "10m"\n').start()
    d.send(["far@example.com"], "stuck")
    wait_for(lambda: "stat=Deferred: 451 4.4.1" in d.log_text(), what="remote deferral")
    qid = d.cli("mailq").stdout.splitlines()[2].split()[0]
    assert d.cli("queue", "hold", qid).stdout == f"{qid}: held\n"
    assert f"{qid}-" in d.cli("mailq").stdout and "(on hold)" in d.cli("mailq").stdout
    r = d.cli("queue", "release", qid)
    assert r.returncode == 0
    wait_for(lambda: d.log_text().count("stat=Deferred: 451 4.4.1") == 2, what="retry after release")
    assert d.cli("queue", "flush").stdout == "queue flush requested\n"
    wait_for(lambda: d.log_text().count("stat=Deferred: 451 4.4.1") == 3, what="retry after flush")
    assert d.cli("queue", "delete", qid).stdout == f"{qid}: deleted\n"
    assert d.cli("mailq").stdout == "Mail queue is empty\n"
    r = d.cli("queue", "delete", qid)
    assert r.returncode == 67 and "no such message" in r.stderr
    assert d.stop() == 0
    assert d.cli("queue", "flush").returncode == 75


def test_second_daemon_refuses_and_bad_config_exits_78(daemon, tmp_path: Path) -> None:
    d = daemon(users={"alice": ""}).start()
    r = subprocess.run([PY, "-m", "mta.cli", "serve", "--config", str(d.config)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 75 and "already running" in r.stderr
    assert d.stop() == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nbogus = 1\n")
    r = subprocess.run([PY, "-m", "mta.cli", "serve", "--config", str(bad)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 78 and "unknown key server.bogus" in r.stderr


def test_embedded_default_installs_and_delivers_to_demo(tmp_path: Path) -> None:
    """What `make run` starts, on its real port when free (else the test reports why)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", 2525))
        except OSError:
            pytest.fail("127.0.0.1:2525 is busy; stop the `make run` daemon to run this test")
    proc = subprocess.Popen([PY, "-m", "mta.cli", "serve", "--embedded", str(tmp_path), "--no-stderr"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        banner = proc.stdout.readline() + proc.stdout.readline()
        assert "swaks --server 127.0.0.1:2525 --to demo@localhost" in banner
        r = subprocess.run([SWAKS, "--server", "127.0.0.1:2525", "--to", "demo@localhost",
                            "--from", "you@example.org", "--header", "Subject: demo"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout
        inbox = tmp_path / "var" / "mail" / "demo"
        wait_for(lambda: inbox.exists() and b"Subject: demo" in inbox.read_bytes(), what="demo inbox")
        assert (tmp_path / "var" / "home" / "demo" / ".procmailrc").exists()
        assert (tmp_path / "etc" / "aliases").exists()
        # the sample rc ran: its LOGFILE and its backup Maildir exist
        assert (tmp_path / "var" / "home" / "demo" / "procmail.log").stat().st_size > 0
        assert list((tmp_path / "var" / "home" / "demo" / "backup" / "new").iterdir())
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
