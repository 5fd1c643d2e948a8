"""mta.runner with a real spool, real maps, the real delivery agent and real mailboxes.

No sockets here (tests/mta/test_serve.py has the daemon end to end): messages are queued
with Spool.new_message exactly as the SMTP receiver does, and Runner.drain() delivers
what is due.  A fake clock drives retries and the queue lifetime without sleeping.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import mailbox
import os
import pwd
import threading
import time
from pathlib import Path

import pytest

from mta.config import Config, load_config
from mta.localdelivery import LocalDelivery
from mta.maps import Maps
from mta.queue import Envelope, RecipientState, Spool
from mta.routing import Router
from mta.runner import Runner, backoff, decode_destination, encode_destination
from mta.routing import ErrorDest, FileDest, LocalMailbox, ProgramDest, RemoteDest
from mta.reply import Reply

HOST = "mx.example.com"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Site:
    """A whole unprivileged installation under tmp_path: config, maps, homes, spool."""

    def __init__(self, root: Path, *, users: dict[str, str] | None = None, aliases: str = "",
                 virtusertable: str = "", queue: str = "", mode: str = "inprocess",
                 uid: int | None = None) -> None:
        self.root = root
        uid = os.getuid() if uid is None else uid
        gid = os.getgid() if uid == os.getuid() else pwd.getpwuid(uid).pw_gid
        users = users if users is not None else {"alice": "", "bob": "", "carol": ""}
        lines = [f"{name}:x:{uid}:{gid}::home/{name}:/bin/sh" for name in users]
        (root / "users").write_text("\n".join(lines) + "\n")
        (root / "aliases").write_text(aliases)
        (root / "virtusertable").write_text(virtusertable)
        (root / "local-host-names").write_text("example.com\n")
        (root / "postroom.toml").write_text(
            f'[server]\nhostname = "{HOST}"\n'
            '[maps]\nlocal_host_names = "local-host-names"\nvirtusertable = "virtusertable"\n'
            'aliases = "aliases"\nusers = "users"\n'
            f'[deliver]\nsystem_rc = "no-system-rc"\nmail_spool = "var/mail"\nrun_as_root_drop = {str(mode == "drop").lower()}\n'
            f'[queue]\n{queue}\n')
        self.config: Config = load_config(root / "postroom.toml")
        for name, rc in users.items():
            home = self.home(name)
            home.mkdir(parents=True, exist_ok=True)
            if rc:
                (home / ".procmailrc").write_text(rc)
                os.chown(home / ".procmailrc", uid, gid)
            os.chown(home, uid, gid)
        spool_dir = self.config.deliver.mail_spool
        spool_dir.mkdir(parents=True, exist_ok=True)
        if uid != os.getuid():
            os.chmod(spool_dir, 0o1777)
        self.spool = Spool(str(self.config.server.spool_dir))
        self.clock = Clock()
        delivery_mode = "fork" if mode in ("fork", "drop") else mode
        self.delivery = LocalDelivery(self.config, mode=delivery_mode)
        self.runner_router = Router(self.config, Maps.from_config(self.config))

    def home(self, user: str) -> Path:
        return self.config.server.data_dir / "home" / user

    def inbox(self, user: str) -> Path:
        return self.config.deliver.mail_spool / user

    def messages(self, path: Path) -> list[email.message.Message]:
        if not path.exists():
            return []
        return [email.message_from_bytes(m.as_bytes(), policy=email.policy.default)
                for m in mailbox.mbox(str(path))]

    def queue(self, recipients: list[str], *, sender: str = "sender@example.org",
              subject: str = "hello", body: str = "body text\n", received_at: float | None = None) -> str:
        msg = self.spool.new_message()
        data = (f"Received: from test\nFrom: {sender or 'MAILER-DAEMON'}\nTo: {', '.join(recipients)}\n"
                f"Subject: {subject}\nMessage-ID: <{time.time_ns()}@test>\n\n{body}").encode()
        msg.write(data)
        env = Envelope(sender=sender, recipients=[RecipientState(r) for r in recipients],
                       received_at=self.clock.now if received_at is None else received_at,
                       size=len(data), helo="client.example", client_ip="127.0.0.1")
        return msg.commit(env)

    def runner(self) -> Runner:
        return Runner(self.config, self.spool, self.runner_router, self.delivery, clock=self.clock)

    def drain(self, runner: Runner | None = None, *, flush: bool = False) -> Runner:
        runner = runner or self.runner()
        asyncio.run(runner.drain(flush=flush))
        return runner

    def state(self, qid: str) -> tuple[str | None, Envelope | None]:
        where = self.spool.locate(qid)
        return where, (self.spool.read_envelope(qid) if where else None)

    def all_queued(self) -> list[str]:
        return [e.qid for e in self.spool.list()]


@pytest.fixture
def make_site(tmp_path: Path):
    sites: list[Site] = []

    def make(**kw) -> Site:
        root = tmp_path / f"site{len(sites)}"
        root.mkdir()
        s = Site(root, **kw)
        sites.append(s)
        return s

    yield make
    for s in sites:
        s.delivery.close()


RC_URGENT = "MAILDIR=$HOME\n:0:\n* ^Subject:.*urgent\nurgent\n"


def test_local_user_mbox_after_rc(make_site) -> None:
    site = make_site(users={"alice": RC_URGENT, "bob": ""})
    q1 = site.queue(["alice@example.com"], subject="urgent: read me")
    q2 = site.queue(["alice@example.com"], subject="plain")
    q3 = site.queue(["bob@mx.example.com"], subject="to bob")
    site.drain()
    assert [m["Subject"] for m in site.messages(site.home("alice") / "urgent")] == ["urgent: read me"]
    assert [m["Subject"] for m in site.messages(site.inbox("alice"))] == ["plain"]
    assert [m["Subject"] for m in site.messages(site.inbox("bob"))] == ["to bob"]
    # the From_ line carries the envelope sender; the queue is empty afterwards
    raw = site.inbox("bob").read_bytes()
    assert raw.startswith(b"From sender@example.org ")
    assert all(site.spool.locate(q) is None for q in (q1, q2, q3))


def test_every_local_delivery_starts_with_the_return_path(make_site, tmp_path: Path) -> None:
    # RFC 5321 4.4, as sendmail's local mailer (P) and Postfix local(8): the envelope
    # sender in Return-Path:, first after the From_ line, for the recipes, a program
    # and a file alike; a Return-Path: that came with the message is not kept
    out = tmp_path / "prog.out"
    archive = tmp_path / "archive.mbox"
    seen = tmp_path / "seen"
    rc = f"MAILDIR=$HOME\n:0 c\n* ^Return-Path: <sender@example.org>\n| cat > {seen}\n"
    site = make_site(users={"alice": rc, "bob": ""},
                     aliases=f'pipe: "|cat > {out}"\nkeep: {archive}\n')
    site.queue(["alice@example.com", "pipe@example.com", "keep@example.com"],
               body="Return-Path: <a body line stays>\n")
    forged = site.spool.new_message()
    data = (b"Received: from test\nReturn-Path: <forged@evil.example>\nSubject: forged\n"
            b"Content-Length: 2\n\nx\nFrom bank@example.com  Mon Dec  7 10:00:00 2026\n"
            b"Subject: planted\n\ny\n")
    forged.write(data)
    forged.commit(Envelope(sender="", recipients=[RecipientState("bob@example.com")],
                           received_at=site.clock.now, size=len(data), helo="c", client_ip="127.0.0.1"))
    site.drain()
    alice = site.inbox("alice").read_bytes()
    assert alice.startswith(b"From sender@example.org ")
    assert alice.split(b"\n")[1:3] == [b"Return-Path: <sender@example.org>", b"Received: from test"]
    assert alice.count(b"Return-Path:") == 2 and b"\nReturn-Path: <a body line stays>\n" in alice
    assert seen.read_bytes().split(b"\n")[1] == b"Return-Path: <sender@example.org>"   # the recipe saw it
    assert out.read_bytes().startswith(b"Return-Path: <sender@example.org>\nReceived: from test\n")
    assert archive.read_bytes().split(b"\n")[1] == b"Return-Path: <sender@example.org>"
    bob = site.inbox("bob").read_bytes()
    assert bob.startswith(b"From MAILER-DAEMON ")
    assert bob.split(b"\n")[1:4] == [b"Return-Path: <>", b"Received: from test", b"Subject: forged"]
    assert b"forged@evil" not in bob
    # no Content-Length: the body's From_ line is escaped, so no reader finds a second,
    # planted message in the mailbox
    assert b"Content-Length" not in bob and b"\n>From bank@example.com" in bob
    assert [m["Subject"] for m in site.messages(site.inbox("bob"))] == ["forged"]


def test_a_detail_with_a_slash_never_names_a_file_for_the_rules(make_site, tmp_path: Path) -> None:
    # the common "file by +detail" rc: the sender picks $1, so a "/" in it must not
    # reach a folder name (Postfix local(8): "address with illegal extension")
    rc = "MAILDIR=$HOME\nEXT=$1\nLOGFILE=$HOME/log\nLOG=\"args=$#\n\"\n:0:\n* ! EXT ?? ^^^^\n$EXT\n"
    site = make_site(users={"alice": rc})
    target = tmp_path / "pwned"
    site.queue([f"alice+{target}@example.com"], subject="abs")
    site.queue(["alice+Lists@example.com"], subject="lists")
    site.drain()
    assert not target.exists()
    assert [m["Subject"] for m in site.messages(site.inbox("alice"))] == ["abs"]
    assert [m["Subject"] for m in site.messages(site.home("alice") / "lists")] == ["lists"]
    # $1 is always there, as procmail -a "$EXTENSION" under Postfix gives it: $# is 1
    site.queue(["alice@example.com"], subject="plain")
    site.drain()
    assert (site.home("alice") / "log").read_text().count("args=1\n") == 3


def test_an_smtputf8_sender_is_written_in_utf_8(make_site, tmp_path: Path) -> None:
    # the From_ line and Return-Path carry the sender's UTF-8 bytes (Postfix does);
    # a sender outside latin-1 made the delivery fail and the mail wait until expiry
    archive = tmp_path / "archive.mbox"
    site = make_site(users={"alice": ""}, aliases=f"keep: {archive}\n")
    site.queue(["alice@example.com"], sender="jörg@example.org", subject="de")
    site.queue(["alice@example.com", "keep@example.com"], sender="用户@例子.example", subject="zh")
    site.drain()
    raw = site.inbox("alice").read_bytes()
    assert raw.startswith("From jörg@example.org ".encode())
    assert "\nReturn-Path: <jörg@example.org>\n".encode() in raw
    assert "\nFrom 用户@例子.example ".encode() in raw
    assert archive.read_bytes().startswith("From 用户@例子.example ".encode())
    assert site.all_queued() == []


def test_alias_include_program_file_and_virtusertable(make_site, tmp_path: Path) -> None:
    out = tmp_path / "prog.out"
    archive = tmp_path / "archive.mbox"
    lst = tmp_path / "team.list"
    lst.write_text("bob\n# comment\ncarol\n")
    site = make_site(aliases=(f"team: alice, :include:{lst}\n"
                              f'pipe: "|cat > {out}"\n'
                              f"keep: {archive}\n"),
                     virtusertable="info@virt.example  team\n@virt.example  %1@example.com\n")
    site.queue(["team@example.com"], subject="to team")
    site.queue(["pipe"], subject="to pipe")
    site.queue(["keep@example.com"], subject="to file")
    site.queue(["info@virt.example"], subject="virtual list")
    site.queue(["carol@virt.example"], subject="catch-all")
    site.drain()
    def subjects(user: str) -> list[str]:
        return sorted(m["Subject"] for m in site.messages(site.inbox(user)))
    assert subjects("alice") == ["to team", "virtual list"]
    assert subjects("bob") == ["to team", "virtual list"]
    assert subjects("carol") == ["catch-all", "to team", "virtual list"]
    assert b"Subject: to pipe" in out.read_bytes()
    assert [m["Subject"] for m in site.messages(archive)] == ["to file"]
    assert site.all_queued() == []


def test_recipients_reaching_one_destination_get_one_delivery(make_site, tmp_path: Path) -> None:
    # sendmail's duplicate suppression: a user spelt twice (domain case), listed in an
    # alias and named directly, or a program reached through two aliases is delivered to
    # once; the other recipients are recorded as sent, and a user+detail stays distinct
    out = tmp_path / "prog.out"
    site = make_site(aliases=(f"team: alice, bob\nall: team, alice\n"
                              f'p1: "|cat >> {out}"\np2: "|cat >> {out}"\n'))
    qid = site.queue(["alice@example.com", "alice@EXAMPLE.COM", "all@example.com",
                      "alice+x@example.com", "p1@example.com", "p2@example.com"], subject="once")
    site.drain()
    assert [m["Subject"] for m in site.messages(site.inbox("alice"))] == ["once", "once"]   # alice, alice+x
    assert [m["Subject"] for m in site.messages(site.inbox("bob"))] == ["once"]
    assert out.read_bytes().count(b"Subject: once") == 1
    assert site.spool.locate(qid) is None


def test_expansion_is_recorded_so_a_retry_never_repeats_a_delivery(make_site) -> None:
    # bob's rc defers; alice must get exactly one copy however often bob is retried.
    site = make_site(users={"alice": "", "bob": "EXITCODE=75\n:0\n/dev/null\n"},
                     aliases="pair: alice, bob\n", queue='initial = 10\nmax_backoff = 40\n')
    qid = site.queue(["pair@example.com"])
    site.drain()
    where, env = site.state(qid)
    assert where == "deferred"
    assert [(r.address, r.state, r.orcpt) for r in env.recipients] == [
        ("\\alice", "delivered", "pair@example.com"), ("\\bob", "deferred", "pair@example.com")]
    for _ in range(3):
        site.clock.now += 100
        site.drain()
    assert len(site.messages(site.inbox("alice"))) == 1
    _, env = site.state(qid)
    assert env.recipients[1].attempts == 4


def test_deferred_exit_75_is_retried_then_delivered(make_site) -> None:
    site = make_site(users={"alice": "EXITCODE=75\n:0\n/dev/null\n"}, queue='initial = 60\n')
    qid = site.queue(["alice@example.com"], subject="later")
    site.drain()
    where, env = site.state(qid)
    assert where == "deferred" and env.recipients[0].state == "deferred"
    assert env.recipients[0].next_try == pytest.approx(site.clock.now + 60, abs=1)
    site.drain()                              # not due yet: nothing happens
    assert site.state(qid)[1].recipients[0].attempts == 1
    (site.home("alice") / ".procmailrc").write_text("# fixed\n")
    site.clock.now += 61
    site.drain()
    assert site.state(qid) == (None, None)
    assert [m["Subject"] for m in site.messages(site.inbox("alice"))] == ["later"]


def test_a_recipient_whose_user_has_no_free_slot_waits_without_an_attempt(make_site) -> None:
    """With user slots (the delivery runners'), a local delivery whose user's slots are
    all taken is not tried: the recipient stays pending with no attempt counted, the
    entry goes back to incoming/, the others are delivered; the retry (``waited``) takes
    the pending one and leaves a deferred one to its back-off."""
    from mta.userslots import UserSlots
    site = make_site(users={"alice": "", "bob": "", "carol": "EXITCODE=75\n:0\n/dev/null\n"},
                     queue="initial = 3600\n")
    slots_dir = str(site.root / "slots")
    runner = Runner(site.config, site.spool, site.runner_router, site.delivery, clock=site.clock,
                    user_slots=UserSlots(slots_dir, 1))
    qid = site.queue(["alice@example.com", "bob@example.com", "carol@example.com"])
    busy = UserSlots(slots_dir, 1).take("alice")       # another runner delivers to alice
    assert busy is not None
    assert asyncio.run(runner.process(qid)) == "incoming" and qid in runner.waiting
    where, env = site.state(qid)
    alice, bob, carol = env.recipients
    assert where == "incoming"
    assert (alice.state, alice.attempts) == ("pending", 0)
    assert bob.state == "delivered" and (carol.state, carol.attempts) == ("deferred", 1)
    assert site.messages(site.inbox("alice")) == [] and len(site.messages(site.inbox("bob"))) == 1
    busy.release()
    (site.home("carol") / ".procmailrc").write_text("")    # carol would succeed now ...
    assert asyncio.run(runner.process(qid, waited=True)) == "deferred"
    assert qid not in runner.waiting
    where, env = site.state(qid)
    assert [r.state for r in env.recipients] == ["delivered", "delivered", "deferred"]
    assert env.recipients[2].attempts == 1                # ... but waits for its back-off
    assert len(site.messages(site.inbox("alice"))) == 1 and site.messages(site.inbox("carol")) == []


def test_a_recipient_waiting_for_a_slot_past_queue_lifetime_fails_with_4_4_7(make_site) -> None:
    """Waiting for a user's slot is not forever: past queue_lifetime the recipient fails
    (4.4.7, "expired", bounced to the sender) as a deferred one would."""
    from mta.userslots import UserSlots
    site = make_site(users={"alice": "", "bob": ""}, queue='queue_lifetime = "1h"\n')
    slots_dir = str(site.root / "slots")
    runner = Runner(site.config, site.spool, site.runner_router, site.delivery, clock=site.clock,
                    user_slots=UserSlots(slots_dir, 1))
    qid = site.queue(["bob@example.com"], sender="alice@example.com", subject="stuck")
    busy = UserSlots(slots_dir, 1).take("bob")         # bob's only slot stays taken
    assert busy is not None
    assert asyncio.run(runner.process(qid)) == "incoming" and qid in runner.waiting
    assert site.state(qid)[1].recipients[0].state == "pending"
    site.clock.now += 3601
    assert asyncio.run(runner.process(qid, waited=True)) == "done"
    assert qid not in runner.waiting
    busy.release()
    site.drain()                                       # delivers the bounce
    assert site.state(qid) == (None, None)
    assert site.messages(site.inbox("bob")) == []
    bounce = bounce_of(site, "alice")
    blocks = [dict(b.items()) for b in list(bounce.iter_parts())[1].get_payload()]
    assert blocks[1]["Status"] == "4.4.7" and blocks[1]["Action"] == "failed"
    assert "expired" in blocks[1]["Diagnostic-Code"] and "slot" in blocks[1]["Diagnostic-Code"]


def test_a_flush_of_a_message_another_process_holds_is_not_kept_for_later(make_site) -> None:
    """process(force=True) for a message claimed elsewhere does nothing, and leaves no
    flush behind: a later ordinary pass still leaves the deferred recipient to its
    back-off (the force was once kept, and tried it early)."""
    site = make_site(users={"carol": "EXITCODE=75\n:0\n/dev/null\n"}, queue="initial = 3600\n")
    qid = site.queue(["carol@example.com"])
    runner = site.drain()
    assert site.state(qid)[0] == "deferred"
    held = site.spool.claim(qid)                      # another delivery runner has it
    assert held is not None
    assert asyncio.run(runner.process(qid, force=True)) is None
    assert held.finish() == "deferred"
    assert asyncio.run(runner.process(qid)) == "deferred"
    assert site.state(qid)[1].recipients[0].attempts == 1


def test_failing_w_pipe_with_tempfail_semantics_defers(make_site) -> None:
    # procmail -t semantics through EXITCODE: a failing 'w' pipe makes nothing delivered
    site = make_site(users={"alice": ":0 w\n| exit 1\nEXITCODE=75\n:0\n/dev/null\n"})
    qid = site.queue(["alice@example.com"])
    site.drain()
    assert site.state(qid)[0] == "deferred"


def test_flush_retries_deferred_mail_early(make_site) -> None:
    site = make_site(users={"alice": "EXITCODE=75\n:0\n/dev/null\n"}, queue='initial = 3600\n')
    qid = site.queue(["alice@example.com"])
    site.drain()
    (site.home("alice") / ".procmailrc").write_text("")
    site.drain()
    assert site.state(qid)[0] == "deferred"
    site.drain(flush=True)
    assert site.state(qid) == (None, None)


def bounce_of(site: Site, user: str) -> email.message.EmailMessage:
    msgs = site.messages(site.inbox(user))
    assert len(msgs) == 1, [m["Subject"] for m in msgs]
    return msgs[0]


def test_failed_recipient_bounces_to_sender(make_site) -> None:
    site = make_site(users={"alice": "", "bob": "EXITCODE=67\n:0\n/dev/null\n"},
                     aliases='gone: "error:5.1.1:550 gone away"\nmix: alice, gone\n')
    qid = site.queue(["bob@example.com", "mix@example.com"], sender="alice@example.com",
                     subject="will bounce")
    site.drain()
    assert site.state(qid) == (None, None)
    inbox = site.messages(site.inbox("alice"))
    subjects = [m["Subject"] for m in inbox]
    assert "will bounce" in subjects and len(inbox) == 2
    bounce = next(m for m in inbox if m["Subject"] != "will bounce")
    raw = site.inbox("alice").read_bytes()
    assert b"\nFrom MAILER-DAEMON " in b"\n" + raw or raw.count(b"From MAILER-DAEMON") == 1
    assert bounce.get_content_type() == "multipart/report"
    assert bounce.get_param("report-type") == "delivery-status"
    assert "MAILER-DAEMON@" + HOST in bounce["From"]
    parts = [p.get_content_type() for p in bounce.iter_parts()]
    assert parts == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    status = list(bounce.iter_parts())[1]
    blocks = [dict(b.items()) for b in status.get_payload()]
    assert blocks[0]["Reporting-MTA"] == f"dns; {HOST}" and "Arrival-Date" in blocks[0]
    per = {b["Final-Recipient"]: b for b in blocks[1:]}
    assert set(per) == {"rfc822;bob@example.com", "rfc822;mix@example.com"}
    assert per["rfc822;bob@example.com"]["Status"] == "5.1.1"
    assert per["rfc822;bob@example.com"]["Action"] == "failed"
    assert "exit 67" in per["rfc822;bob@example.com"]["Diagnostic-Code"]
    assert per["rfc822;mix@example.com"]["Original-Recipient"] == "rfc822;mix@example.com"
    assert "550 5.1.1 gone away" in per["rfc822;mix@example.com"]["Diagnostic-Code"]
    headers = list(bounce.iter_parts())[2].get_payload()
    assert "Subject: will bounce" in str(headers)
    # the bounce itself was queued with the null sender
    assert b"From MAILER-DAEMON" in raw


def test_a_failed_program_or_file_of_an_alias_bounces_as_the_alias_address(make_site, tmp_path: Path) -> None:
    # Final-Recipient must be an address (RFC 3464 2.3.2): the alias that named the
    # program or the file (as Postfix reports it); the diagnostic names what failed
    (tmp_path / "adir").mkdir()           # a file destination that is a directory
    site = make_site(users={"alice": ""},
                     aliases=f'pipe: "|exit 67"\nkeep: {tmp_path}/adir\n')
    site.queue(["pipe@example.com", "keep@example.com"], sender="alice@example.com", subject="s")
    site.drain()
    bounce = bounce_of(site, "alice")
    blocks = [dict(b.items()) for b in list(bounce.iter_parts())[1].get_payload()][1:]
    per = {b["Final-Recipient"]: b for b in blocks}
    assert set(per) == {"rfc822;pipe@example.com", "rfc822;keep@example.com"}, per
    assert per["rfc822;pipe@example.com"]["Diagnostic-Code"].startswith("x-unix; |exit 67: exit 67")
    assert per["rfc822;keep@example.com"]["Diagnostic-Code"].startswith(f"x-unix; {tmp_path}/adir: ")
    text = list(bounce.iter_parts())[0].get_content()
    assert "<pipe@example.com>" in text and "|exit 67" in text and "rfc822;|" not in bounce.as_string()


def test_a_bounce_is_never_bounced(make_site) -> None:
    site = make_site(users={"bob": "EXITCODE=67\n:0\n/dev/null\n"})
    qid = site.queue(["bob@example.com"], sender="")
    site.drain()
    assert site.state(qid) == (None, None)
    assert site.all_queued() == []


def test_queue_lifetime_fails_with_4_4_7(make_site) -> None:
    site = make_site(users={"alice": "", "bob": "EXITCODE=75\n:0\n/dev/null\n"},
                     queue='initial = 60\nqueue_lifetime = "1h"\n')
    qid = site.queue(["bob@example.com"], sender="alice@example.com", subject="old")
    site.drain()
    assert site.state(qid)[0] == "deferred"
    site.clock.now += 3601
    site.drain()
    assert site.state(qid) == (None, None)
    bounce = bounce_of(site, "alice")
    blocks = [dict(b.items()) for b in list(bounce.iter_parts())[1].get_payload()]
    assert blocks[1]["Status"] == "4.4.7" and blocks[1]["Action"] == "failed"
    assert "expired" in blocks[1]["Diagnostic-Code"]


def test_owner_list_becomes_the_envelope_sender(make_site) -> None:
    site = make_site(users={"alice": "", "bob": "EXITCODE=67\n:0\n/dev/null\n", "carol": ""},
                     aliases="staff: alice, bob\nowner-staff: carol\n")
    site.queue(["staff@example.com"], sender="outsider@example.com")
    site.drain()
    assert len(site.messages(site.inbox("alice"))) == 1
    # bob's failure is reported to the list owner, not to the outside sender
    bounce = bounce_of(site, "carol")
    assert bounce.get_content_type() == "multipart/report"
    assert site.all_queued() == [] or all(
        e.recipients[0].address == "outsider@example.com" for e in site.spool.list())


def test_an_unknown_member_of_a_list_with_an_owner_bounces_to_the_owner(make_site) -> None:
    # aliases(5): owner-LIST exists so that delivery errors go to the owner instead of
    # the originator; the bounce names the member, not the list
    site = make_site(users={"alice": "", "carol": ""},
                     aliases="mlist: alice, nosuchuser\nowner-mlist: carol\n")
    site.queue(["mlist@example.com"], sender="outsider@example.com", subject="to the list")
    site.drain()
    assert [m["Subject"] for m in site.messages(site.inbox("alice"))] == ["to the list"]
    bounce = bounce_of(site, "carol")
    report = bounce.as_string()
    assert "nosuchuser" in report and "User unknown" in report
    assert all(e.sender != "" or e.recipients[0].address != "outsider@example.com"
               for e in site.spool.list())     # nothing goes back to the outside sender


def test_a_bounce_that_cannot_be_made_keeps_the_message_queued(make_site, monkeypatch) -> None:
    # every recipient final but the bounce not queued: the entry stays (incoming/) and
    # the next pass sends the bounce; it was removed with the bounce never sent
    site = make_site(users={"alice": "", "bob": "EXITCODE=67\n:0\n/dev/null\n"})
    qid = site.queue(["bob@example.com"], sender="alice@example.com", subject="fails")
    def broken(*_a, **_k):
        raise UnicodeEncodeError("ascii", "x", 0, 1, "a bug")
    monkeypatch.setattr("mta.runner.build_bounce", broken)
    site.drain()
    where, env = site.state(qid)
    assert where == "incoming" and "unbounced" in env.extra
    monkeypatch.undo()
    site.drain()
    assert site.state(qid) == (None, None)
    assert bounce_of(site, "alice").get_content_type() == "multipart/report"


def test_remote_destinations_are_kept_in_the_queue(make_site) -> None:
    site = make_site(aliases="fwd: friend@elsewhere.example\n")
    qid = site.queue(["fwd@example.com"])
    site.drain()
    where, env = site.state(qid)
    assert where == "deferred" and env.recipients[0].address == "friend@elsewhere.example"
    assert "4.4.1" in (env.recipients[0].last_error or "")


def test_two_runners_never_deliver_one_message_twice(make_site) -> None:
    site = make_site(users={"alice": ""})
    qids = [site.queue(["alice@example.com"], subject=f"m{i}") for i in range(40)]
    other = Runner(site.config, site.spool, site.runner_router,
                   LocalDelivery(site.config, mode="fork"), clock=site.clock)
    t = threading.Thread(target=lambda: asyncio.run(other.drain()))
    t.start()
    site.drain()
    t.join()
    other.delivery.close()
    subjects = sorted(m["Subject"] for m in site.messages(site.inbox("alice")))
    assert subjects == sorted(f"m{i}" for i in range(40))
    assert all(site.spool.locate(q) is None for q in qids)


def test_unexpected_delivery_error_defers(make_site) -> None:
    site = make_site(users={"alice": ""})
    qid = site.queue(["alice@example.com"])
    os.unlink(os.path.join(site.spool.dirs["incoming"], qid, "message"))
    os.symlink("/nonexistent", os.path.join(site.spool.dirs["incoming"], qid, "message"))
    site.drain()   # claim cannot lock a dangling symlink; nothing is lost or crashes
    assert site.spool.locate(qid) is not None


def test_backoff_and_destination_encoding() -> None:
    assert [backoff(n, 300, 3600) for n in (1, 2, 3, 4, 5, 6)] == [300, 600, 1200, 2400, 3600, 3600]
    assert backoff(10_000, 1, 5) == 5
    for d in (LocalMailbox("bob"), LocalMailbox("bob", "tag"), ProgramDest("cat > /x"),
              FileDest("/var/x.mbox"), ErrorDest(Reply(451, "4.3.0", "later on"))):
        assert decode_destination(encode_destination(d)) == d
    assert decode_destination(encode_destination(RemoteDest("a@b.example"))) is None


def test_root_drops_to_the_recipient(make_site, tmp_path: Path) -> None:
    """As root with run_as_root_drop: the rc and its programs run as the user."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (make test runs as root)")
    user = os.environ.get("POSTROOM_TEST_USER", "prtest")
    pw = pwd.getpwnam(user)
    for d in (tmp_path, *tmp_path.parents):
        if d == Path("/tmp") or d == Path("/"):
            break
        d.chmod(d.stat().st_mode | 0o755)
    site = make_site(users={"alice": ':0 c\n| id -u > $HOME/uid\n'}, mode="drop", uid=pw.pw_uid)
    for p in (site.root, site.config.server.data_dir, site.config.server.data_dir / "home"):
        p.chmod(0o755)
    site.queue(["alice@example.com"], subject="as user")
    site.drain()
    assert (site.home("alice") / "uid").read_text().strip() == str(pw.pw_uid)
    st = site.inbox("alice").stat()
    assert st.st_uid == pw.pw_uid
    assert [m["Subject"] for m in site.messages(site.inbox("alice"))] == ["as user"]


def test_delivery_modes_deliver_everything(make_site) -> None:
    """In-process (serialised) and forked deliveries of the same load are both complete and
    land with the right user.  (Their speed is measured by tests/benchmarks, not here.)"""
    rc = "".join(f":0\n* ^Subject: nomatch{i}\nfolder{i}\n" for i in range(20))
    for mode in ("inprocess", "fork"):
        site = make_site(users={f"u{i}": rc for i in range(4)}, mode=mode)
        n = 60
        for i in range(n):
            site.queue([f"u{i % 4}@example.com"], subject=f"s{i}", body="x" * 2000 + "\n")
        site.drain()
        for u in range(4):
            subjects = sorted(m["Subject"] for m in site.messages(site.inbox(f"u{u}")))
            assert subjects == sorted(f"s{i}" for i in range(n) if i % 4 == u), mode
