"""The SMTP receiver on a real socket: smtplib, raw sockets, and DATA decoding properties."""

from __future__ import annotations

import json
import re
import select
import smtplib
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta import reply as R
from mta.smtp.commands import is_address_literal, is_domain, parse_path
from mta.smtp.dataread import LINE_TOO_LONG, DataReceiver, LineBuffer
from mta.smtp.simplepolicy import SimplePolicy

MSG = b"From: a@example.org\r\nSubject: test\r\nMessage-ID: <m1@example.org>\r\n\r\nhello\r\n"


def qdir(rs, qid: str) -> Path:
    return Path(rs.spool.dirs["incoming"]) / qid


def envelope(rs, qid: str) -> dict:
    return json.loads((qdir(rs, qid) / "envelope.json").read_bytes())


# --- the happy path ---------------------------------------------------------------------

def test_smtplib_send_is_on_disk_before_the_250_is_read(smtp_server):
    rs = smtp_server()
    with smtplib.SMTP(rs.host, rs.port, local_hostname="client.example") as s:
        s.ehlo()
        s.mail("a@example.org")
        s.rcpt("b@example.net")
        code, text = s.data(b"Subject: x\r\nMessage-ID: <m1@x>\r\n\r\n.dotted\r\nline\r\n")   # smtplib stuffs it
        assert code == 250
        qid = re.search(rb"queued as ([0-9A-F]+)", text).group(1).decode()
        # Right after the reply, before QUIT: message and envelope are in incoming/.
        body = (qdir(rs, qid) / "message").read_bytes()
        env = envelope(rs, qid)
    assert body.startswith(b"Received: from client.example ([127.0.0.1])\n\tby mx.test (postroom) with ESMTP id " + qid.encode())
    assert b"\tfor <b@example.net>; " in body
    # unstuffed, LF; from this host itself (127.0.0.1) the missing Date: and From: are
    # added at the end of the header (as Postfix does for its own host's clients)
    assert re.search(rb"\nSubject: x\nMessage-ID: <m1@x>\nDate: [^\n]+ [+-]\d{4}\nFrom: a@example.org\n"
                     rb"\n.dotted\nline\n\Z", body), body
    assert env["sender"] == "a@example.org" and env["helo"] == "client.example"
    assert [(r["address"], r["state"], r["attempts"]) for r in env["recipients"]] == [("b@example.net", "pending", 0)]
    assert env["size"] == len(body) and env["message_id"] == "<m1@x>" and env["protocol"] == "ESMTP"
    assert rs.queued == [qid]
    assert not list(Path(rs.spool.dirs["tmp"]).iterdir())


def test_the_250_is_sent_before_the_queue_is_told(smtp_server, raw):
    """on_queued wakes a delivery in another process, which would take the CPU the 250
    is waiting for: when it is called, the reply is already on its way to the client."""
    rs = smtp_server()
    c = raw(rs)
    seen: list[bytes] = []
    called = threading.Event()

    def on_queued(qid: str) -> None:
        try:
            # The reply may still be in the loopback's queue: wait for it, but not for
            # ever (were it still to be written, it never would be while this blocks
            # the server's loop).
            select.select([c.sock], [], [], 5)
            seen.append(c.sock.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT))
            rs.notified.append(qid)
        finally:
            called.set()

    rs.server.on_queued = on_queued
    c.start_data()
    c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert called.wait(10)            # the client reads its reply only after the peek
    code, text = c.reply()
    assert code == 250 and len(rs.queued) == 1 and rs.queued[0] in text
    assert seen == [f"250 {text}\r\n".encode()]


def test_ehlo_keywords_and_greeting(smtp_server, raw):
    rs = smtp_server(max_message_size=123456)
    c = raw(rs, greet=False)
    code, text = c.reply()
    assert code == 220 and text.startswith("mx.test ESMTP")
    code, text = c.cmd("EHLO client.example")
    lines = text.split("\n")
    assert code == 250 and lines[0].startswith("mx.test Hello client.example [127.0.0.1]")
    assert {"PIPELINING", "SIZE 123456", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"} <= set(lines[1:])
    assert c.cmd("QUIT") == (221, "2.0.0 Bye")
    c.close()


def test_null_sender_postmaster_and_8bitmime(smtp_server):
    rs = smtp_server()
    with smtplib.SMTP(rs.host, rs.port, local_hostname="[127.0.0.1]") as s:
        s.ehlo()
        assert s.mail("", ["BODY=8BITMIME"])[0] == 250
        assert s.rcpt("postmaster")[0] == 250
        assert s.data("Subject: é\r\n\r\nbody é\r\n".encode())[0] == 250
    env = envelope(rs, rs.queued[0])
    assert env["sender"] == "" and env["body"] == "8BITMIME" and env["recipients"][0]["address"] == "postmaster"


def test_a_sender_with_doubled_or_final_dots_is_accepted_and_a_recipient_is_not(smtp_server, raw):
    # Postfix (strict_rfc821_envelopes = no) takes them: real mailboxes have such
    # names, and their mail was refused at MAIL FROM; a recipient must still be RFC 5321
    rs = smtp_server()
    c = raw(rs)
    assert c.cmd("EHLO client.example")[0] == 250
    for bad in ("<.>", "<..@example.jp>", "<a b@example.jp>"):
        assert c.cmd(f"MAIL FROM:{bad}")[0] == 501
    assert c.cmd("MAIL FROM:<taro..yamada.@docomo.example>")[0] == 250
    assert c.cmd("RCPT TO:<a..b@mx.test>")[0] == 501
    assert c.cmd("RCPT TO:<postmaster>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    c.send(b"Subject: s\r\n\r\nbody\r\n.\r\n")
    assert c.reply()[0] == 250
    assert envelope(rs, rs.queued[0])["sender"] == "taro..yamada.@docomo.example"


def test_fields_a_local_client_left_out_are_added_where_the_header_ends(smtp_server, raw):
    rs = smtp_server()
    with smtplib.SMTP(rs.host, rs.port, local_hostname="client.example") as s:
        s.ehlo()
        s.sendmail("", ["b@example.net"], b"Subject: s\r\n\r\nbody\r\nDate: not a field\r\n")
        s.sendmail("a@example.org", ["b@example.net"], b"Date: Mon, 7 Dec 2026 10:00:00 +0000\r\n"
                   b"from: A <a@example.org>\r\nMessage-ID: <given@x>\r\n\r\nbody\r\n")
        s.sendmail("a@example.org", ["b@example.net"], b"just text, no header\r\nSubject: planted\r\n")
        s.sendmail("a@example.org", ["b@example.net"], b"From a@example.org Mon Dec  7 10:00:00 2026\r\n"
                   b"Subject: mbox\r\n\r\nbody\r\n")
    bodies = [(qdir(rs, q) / "message").read_bytes() for q in rs.queued]
    envs = [envelope(rs, q) for q in rs.queued]
    head, _, body = bodies[0].partition(b"\n\n")
    assert re.search(rb"\nSubject: s\nDate: [^\n]+\nFrom: MAILER-DAEMON@mx.test\nMessage-ID: <\d{14}\."
                     + rs.queued[0].encode() + rb"@mx.test>\Z", head), head
    assert body == b"body\nDate: not a field\n"
    assert envs[0]["message_id"] == f"<{head.rsplit(b'<', 1)[1][:-1].decode()}>"
    assert bodies[1].split(b"\n", 3)[3] == (b"Date: Mon, 7 Dec 2026 10:00:00 +0000\nfrom: A <a@example.org>\n"
                                           b"Message-ID: <given@x>\n\nbody\n")     # nothing added
    # a first line that is no field ends the header: the fields go before it
    assert re.search(rb"\nMessage-ID: <[^>]+>\njust text, no header\nSubject: planted\n\Z", bodies[2])
    # an mbox From_ line first stays in the header (X-Mailbox-Line: at delivery)
    assert re.search(rb"\nFrom a@example.org Mon[^\n]+\nSubject: mbox\nDate: [^\n]+\nFrom: a@example.org\n"
                     rb"Message-ID: <[^>]+>\n\nbody\n\Z", bodies[3]), bodies[3]


def test_smtputf8(smtp_server, raw):
    rs = smtp_server()
    c = raw(rs)
    c.cmd("EHLO client.example")
    assert c.cmd("MAIL FROM:<jöran@exämple.org>")[0:1] == (553,)
    assert c.cmd("MAIL FROM:<jöran@exämple.org> SMTPUTF8")[0] == 250
    assert c.cmd("RCPT TO:<ü@exämple.org>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    code, _ = c.cmd(b"Subject: x\r\n\r\nhi\r\n.")
    assert code == 250
    env = envelope(rs, rs.queued[0])
    assert env["smtputf8"] and env["protocol"] == "UTF8ESMTP" and env["sender"] == "jöran@exämple.org"


# --- sequence and syntax -------------------------------------------------------------------

def test_helo_required_and_validated(smtp_server, raw):
    rs = smtp_server()
    c = raw(rs)
    assert c.cmd("MAIL FROM:<a@b.example>") == (503, "5.5.1 Send HELO/EHLO first")
    for bad in ("EHLO", "EHLO foo_bar", "EHLO -foo.example", "EHLO [1.2.3]", "HELO a b",
                "EHLO [300.1.1.1]", "EHLO foo..example"):
        code, text = c.cmd(bad)
        assert (code, text[:5]) == (501, "5.5.2"), bad
    for good in ("EHLO [127.0.0.1]", "EHLO [IPv6:::1]", "EHLO mail.example.org", "EHLO localhost"):
        assert c.cmd(good)[0] == 250, good
    assert c.cmd("RCPT TO:<a@b.example>")[0] == 503
    assert c.cmd("DATA")[0] == 503
    assert c.cmd("MAIL FROM:<a@b.example>")[0] == 250
    assert c.cmd("MAIL FROM:<a@b.example>")[0] == 503
    assert c.cmd("DATA") == (554, "5.5.1 No valid recipients")
    assert c.cmd("MAIL FROM:<a@b.example> FOO=bar")[0] == 503   # still inside a transaction
    assert c.cmd("RSET")[0] == 250
    assert c.cmd("MAIL FROM:<a@b.example> FOO=bar") == (555, R.PARAM_NOT_RECOGNIZED.lines()[4:-2].decode())
    assert c.cmd("MAIL FROM:<not an address>")[0] == 501
    assert c.cmd("FROB")[0] == 500


def test_helo_client_gets_no_enhanced_codes(smtp_server, raw):
    rs = smtp_server()
    c = raw(rs)
    assert c.cmd("HELO client.example") == (250, "mx.test Hello client.example [127.0.0.1]")
    assert c.cmd("MAIL FROM:<a@b.example> SIZE=10") == (555, "MAIL FROM/RCPT TO parameter not recognized or not implemented")
    assert c.cmd("MAIL FROM:<a@b.example>") == (250, "Sender ok")


def test_pipelining_batch_and_pipelined_quit(smtp_server, raw):
    rs = smtp_server()
    c = raw(rs)
    c.send(b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\n"
           b"RCPT TO:<z@y.example>\r\nDATA\r\n")
    assert [c.reply()[0] for _ in range(5)] == [250, 250, 250, 250, 354]
    c.send(b"Subject: p\r\n\r\nbody\r\n.\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\n"
           b"RSET\r\nQUIT\r\n")
    assert [c.reply()[0] for _ in range(5)] == [250, 250, 250, 250, 221]
    assert c.closed()
    assert len(rs.queued) == 1
    assert [r["address"] for r in envelope(rs, rs.queued[0])["recipients"]] == ["x@y.example", "z@y.example"]


def test_text_pipelined_after_a_refused_data_is_never_run_as_commands(smtp_server, raw):
    """RFC 2920 3.1: a client must wait for 354.  One that sent the message text with
    DATA, all of whose recipients were refused, would otherwise have that text read as
    commands (a message of its own hidden in it, the smuggling shape): the server says
    421 and closes; a DATA refused with nothing behind it keeps the session."""
    rs = smtp_server(policy=SimplePolicy(users=["real@y.example"]))
    c = raw(rs)
    c.send(b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<nobody@y.example>\r\nDATA\r\n"
           b"MAIL FROM:<admin@victim.example>\r\nRCPT TO:<real@y.example>\r\nDATA\r\n"
           b"Subject: smuggled\r\n\r\nevil\r\n.\r\n")
    assert [c.reply()[0] for _ in range(4)] == [250, 250, 550, 554]
    assert c.reply() == (421, "4.5.0 Improper pipelining after DATA, closing connection")
    assert c.closed()
    assert rs.queued == []
    c = raw(rs)
    c.send(b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<nobody@y.example>\r\nDATA\r\n")
    assert [c.reply()[0] for _ in range(4)] == [250, 250, 550, 554]
    assert c.cmd("RCPT TO:<real@y.example>")[0] == 250


def test_client_that_reads_no_replies_is_not_read_until_it_does(smtp_server, raw):
    """Flow control: a pipelining client that never reads its replies makes the server
    stop reading it (the replies would otherwise pile up in the server's memory); once
    it reads, every command it sent is answered, in order, and the session goes on."""
    rs = smtp_server()
    c = raw(rs)
    c.cmd("EHLO client.example")
    n = 60_000           # about 9 MB of EHLO replies: more than the kernel buffers hold
    c.send(b"EHLO client.example\r\n" * n)
    time.sleep(1.0)
    (session,) = rs.server._sessions
    assert not session._transport.is_reading()
    assert session._transport.get_write_buffer_size() < 256 * 1024
    for _ in range(n):
        code, text = c.reply()
        assert code == 250 and text.endswith("\nHELP")
    assert c.cmd("QUIT")[0] == 221


# --- smuggling and malformed input -----------------------------------------------------------

@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\r.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r"])
def test_bare_cr_or_lf_around_dot_never_ends_data(smtp_server, raw, fake_end):
    rs = smtp_server()
    c = raw(rs)
    c.start_data()
    smuggled = (b"Subject: outer\r\n\r\nfirst" + fake_end +
                b"MAIL FROM:<admin@victim.example>\r\nRCPT TO:<z@y.example>\r\nDATA\r\n"
                b"Subject: smuggled\r\n\r\nevil\r\n.\r\n")
    c.send(smuggled)
    code, text = c.reply()
    assert code == 250
    assert c.cmd("NOOP") == (250, "2.0.0 Ok")   # nothing of the smuggled commands was run
    assert len(rs.queued) == 1
    body = (qdir(rs, rs.queued[0]) / "message").read_bytes()
    assert b"MAIL FROM:<admin@victim.example>" in body and b"Subject: smuggled" in body
    if fake_end in (b"\n.\n", b"\n.\r\n", b"\r\n.\n"):
        # the lone period that did not end the data stays (RFC 5321 4.5.2 deletes a
        # leading period only when other characters follow it on the line)
        assert b"first\n.\nMAIL FROM" in body
    assert [r["address"] for r in envelope(rs, rs.queued[0])["recipients"]] == ["x@y.example"]


def test_bytes_that_are_not_utf8_are_a_bad_argument_of_a_known_command(smtp_server, raw):
    rs = smtp_server()
    c = raw(rs)
    assert c.cmd("EHLO client.example")[0] == 250
    assert c.cmd(b"MAIL FROM:<j\xf6rg@example.org>") == (501, "5.5.4 Invalid UTF-8 in command")
    assert c.cmd(b"XYZZY \xf6") == (500, "5.5.2 Invalid UTF-8 in command")
    assert c.cmd("MAIL FROM:<jorg@example.org>")[0] == 250


def test_nul_in_command_refused(smtp_server, raw):
    rs = smtp_server()
    c = raw(rs)
    assert c.cmd(b"EHLO client\x00.example") == (500, "5.5.2 NUL character not allowed in command")
    assert c.cmd("EHLO client.example")[0] == 250


def test_talking_before_greeting_is_refused(smtp_server, raw):
    rs = smtp_server(greet_pause=0.5)
    c = raw(rs, greet=False)
    c.send(b"EHLO eager.example\r\n")
    assert c.reply() == (554, "5.5.0 Talking before the greeting is not allowed")
    assert c.closed()
    assert rs.server.active_sessions == 0 or c.closed()
    c.close()
    # A patient client is served normally.
    c = raw(rs, greet=False)
    t0 = time.monotonic()
    assert c.reply()[0] == 220 and time.monotonic() - t0 >= 0.45
    c.close()


def test_overlong_command_line(smtp_server, raw):
    rs = smtp_server()
    c = raw(rs)
    c.cmd("EHLO client.example")
    assert c.cmd("NOOP " + "x" * 600) == (500, "5.5.2 Line too long")
    assert c.cmd("NOOP " + "x" * 505) == (250, "2.0.0 Ok")      # 512 with CRLF is fine
    assert c.cmd("NOOP " + "x" * 506)[0] == 500


def test_overlong_text_line_rejected_after_data(smtp_server, raw):
    rs = smtp_server()
    c = raw(rs)
    c.start_data()
    code, text = c.cmd(b"Subject: x\r\n\r\n" + b"y" * 998 + b"\r\n" + b"z" * 999 + b"\r\n.")
    assert (code, text) == (552, "5.3.4 Message contains a line longer than 1000 octets")
    assert rs.queued == [] and rs.incoming() == [] and not list(Path(rs.spool.dirs["tmp"]).iterdir())
    assert c.cmd("NOOP")[0] == 250


def test_recipient_limit(smtp_server, raw):
    rs = smtp_server()
    c = raw(rs)
    c.cmd("EHLO client.example"); c.cmd("MAIL FROM:<a@b.example>")
    c.send(b"".join(b"RCPT TO:<u%d@y.example>\r\n" % i for i in range(101)))
    codes = [c.reply() for _ in range(101)]
    assert all(code == 250 for code, _ in codes[:100])
    assert codes[100] == (452, "4.5.3 Too many recipients")
    c.cmd("DATA")
    assert c.cmd(b"\r\nx\r\n.")[0] == 250
    assert len(envelope(rs, rs.queued[0])["recipients"]) == 100


def test_size_limits(smtp_server, raw):
    rs = smtp_server(max_message_size=1000)
    c = raw(rs)
    c.cmd("EHLO client.example")
    assert c.cmd("MAIL FROM:<a@b.example> SIZE=1001") == (552, "5.3.4 Message size exceeds fixed limit")
    assert c.cmd("MAIL FROM:<a@b.example> SIZE=900")[0] == 250
    c.cmd("RCPT TO:<x@y.example>")
    c.cmd("DATA")
    assert c.cmd(b"Subject: big\r\n\r\n" + b"0123456789\r\n" * 100 + b".")[0] == 552
    assert rs.queued == [] and rs.incoming() == []


def test_received_loop(smtp_server, raw):
    rs = smtp_server()
    c = raw(rs)
    c.cmd("EHLO client.example")
    for n, want in ((30, 250), (31, 554)):
        c.cmd("MAIL FROM:<a@b.example>"); c.cmd("RCPT TO:<x@y.example>"); c.cmd("DATA")
        hdrs = b"".join(b"Received: from h%d by h%d; date\r\n" % (i, i + 1) for i in range(n))
        code, text = c.cmd(hdrs + b"Subject: loop\r\n\r\nbody\r\nReceived: in the body\r\n.")
        assert code == want, n
    assert text == "5.4.6 Too many Received headers: mail loop"
    assert len(rs.queued) == 1


def test_vrfy_and_expn_reveal_nothing(smtp_server, raw):
    rs = smtp_server(policy=SimplePolicy(users=["real@y.example"]))
    c = raw(rs)
    c.cmd("EHLO client.example")
    answers = {c.cmd(f"{verb} {who}") for verb in ("VRFY", "EXPN") for who in ("real@y.example", "nobody", "real")}
    assert answers == {(252, "2.5.2 Cannot VRFY user; try RCPT to attempt delivery")}


# --- abuse: counters, timeouts, connection cap ----------------------------------------------

def test_bad_commands_disconnect(smtp_server, raw):
    rs = smtp_server(max_bad_commands=3)
    c = raw(rs)
    assert c.cmd("FOO")[0] == 500
    assert c.cmd("BAR")[0] == 500
    c.send(b"BAZ\r\n")
    assert c.reply()[0] == 500
    assert c.reply() == (421, "4.7.0 Too many errors, closing connection")
    assert c.closed()


def test_unknown_recipient_probing_disconnect(smtp_server, raw):
    rs = smtp_server(policy=SimplePolicy(users=["real@y.example"], tempfail=["busy@y.example"]),
                     max_unknown_rcpts=3)
    c = raw(rs)
    c.cmd("EHLO client.example"); c.cmd("MAIL FROM:<a@b.example>")
    assert c.cmd("RCPT TO:<real@y.example>")[0] == 250
    assert c.cmd("RCPT TO:<busy@y.example>") == (450, "4.7.1 Temporarily rejected, try again later")
    assert c.cmd("RCPT TO:<u1@y.example>") == (550, "5.1.1 User unknown")
    assert c.cmd("RCPT TO:<u2@y.example>")[0] == 550
    c.send(b"RCPT TO:<u3@y.example>\r\n")
    assert c.reply()[0] == 550
    assert c.reply()[0] == 421
    assert c.closed()


def test_idle_timeout(smtp_server, raw):
    rs = smtp_server(idle_timeout=0.5)
    c = raw(rs)
    t0 = time.monotonic()
    assert c.reply() == (421, "4.4.2 Timeout exceeded, closing connection")
    assert 0.4 < time.monotonic() - t0 < 3 and c.closed()



def test_idle_timeout_counts_from_the_last_command(smtp_server, raw):
    """The deadline moves with every command (the timer, armed once, re-arms itself):
    a session that keeps talking outlives idle_timeout many times over; silence ends it."""
    rs = smtp_server(idle_timeout=0.5)
    c = raw(rs)
    t0 = time.monotonic()
    while True:
        assert c.cmd("NOOP") == (250, "2.0.0 Ok")
        quiet = time.monotonic()
        if quiet - t0 > 1.6:
            break
        time.sleep(0.3)
    assert c.reply() == (421, "4.4.2 Timeout exceeded, closing connection")
    assert 0.4 < time.monotonic() - quiet < 3 and c.closed()

def test_slow_drip_command_is_dropped(smtp_server, raw):
    import select
    rs = smtp_server(idle_timeout=0.6)
    c = raw(rs)
    t0 = time.monotonic()
    for ch in b"EHLO slow.example.org.and.on.and.on.and.on.and.on\r\n":
        if select.select([c.sock], [], [], 0.1)[0]:
            break                    # the server spoke (and hung up) before the line ended
        c.send(bytes([ch]))
    assert c.reply() == (421, "4.4.2 Timeout exceeded, closing connection")
    assert c.closed() and time.monotonic() - t0 < 3


def test_slow_drip_data_is_dropped_and_nothing_queued(smtp_server, raw):
    rs = smtp_server(data_timeout=0.5)
    c = raw(rs)
    c.start_data()
    c.send(b"Subject: slow\r\n\r\n")
    t0 = time.monotonic()
    try:
        for _ in range(40):
            c.send(b"x")             # bytes keep coming, a line never completes
            time.sleep(0.05)
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert c.reply()[0] == 421 and time.monotonic() - t0 < 2.5
    assert rs.queued == [] and rs.incoming() == []


def test_connection_cap(smtp_server, raw):
    rs = smtp_server(max_connections=2)
    a, b = raw(rs), raw(rs)
    c = raw(rs, greet=False)
    assert c.reply() == (421, "4.3.2 Too many connections, try again later")
    assert c.closed()
    a.cmd("QUIT"); assert a.closed()
    deadline = time.monotonic() + 5
    while rs.server.active_sessions > 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert raw(rs).cmd("NOOP")[0] == 250
    assert b.cmd("NOOP")[0] == 250


def test_connect_rejected_by_policy(smtp_server, raw):
    rs = smtp_server(policy=SimplePolicy(reject_clients=["127.0.0.1"]))
    c = raw(rs, greet=False)
    assert c.reply() == (554, "5.7.1 Connection refused")
    assert c.closed()
    c.close()



class _BrokenPolicy(SimplePolicy):
    """A policy with a bug at one stage (raises instead of returning a Verdict)."""

    def __init__(self, stage: str) -> None:
        super().__init__()
        self.stage = stage

    def check_connect(self, client_ip):
        if self.stage == "connect":
            raise RuntimeError("policy bug")
        return super().check_connect(client_ip)

    def check_mail(self, client_ip, helo, sender, params):
        if self.stage == "mail":
            raise RuntimeError("policy bug")
        return super().check_mail(client_ip, helo, sender, params)


@pytest.mark.parametrize("stage", ["connect", "mail"])
def test_a_bug_closes_only_its_own_connection(smtp_server, raw, stage, caplog):
    """An exception in a session (here the policy's) is logged and ends that connection
    at once, whether at the greeting or mid-conversation; the server goes on serving."""
    rs = smtp_server(policy=_BrokenPolicy(stage))
    c = raw(rs, greet=False, timeout=5)
    if stage == "mail":
        assert c.reply()[0] == 220
        c.cmd("EHLO client.example")
        c.send(b"MAIL FROM:<a@b.example>\r\n")
    assert c.closed()
    assert "session with [127.0.0.1] failed" in caplog.text
    rs.server.policy.stage = None
    ok = raw(rs)
    assert ok.cmd("EHLO client.example")[0] == 250

def test_http_request_ends_session(smtp_server, raw):
    rs = smtp_server()
    c = raw(rs)
    c.send(b"GET / HTTP/1.0\r\n\r\n")
    assert c.closed() and c.buf == b""


def test_stop_tells_idle_sessions_421(smtp_server, raw):
    import asyncio
    rs = smtp_server()
    c = raw(rs)
    c.cmd("EHLO client.example")
    asyncio.run_coroutine_threadsafe(rs.server.stop(), rs.loop).result(10)
    assert c.reply() == (421, "4.3.2 Server shutting down")
    assert c.closed()
    with pytest.raises(OSError):
        socket.create_connection((rs.host, rs.port), timeout=2)



def test_stop_lets_a_session_inside_data_finish_its_transaction(smtp_server, raw):
    import asyncio
    rs = smtp_server()
    c = raw(rs)
    c.start_data()
    c.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
    stopping = asyncio.run_coroutine_threadsafe(rs.server.stop(), rs.loop)
    time.sleep(0.3)
    assert not stopping.done()            # waits for the transaction in progress
    with pytest.raises(OSError):          # while no new connection is accepted
        socket.create_connection((rs.host, rs.port), timeout=2)
    c.send(b"second half\r\n.\r\nNOOP\r\n")
    code, text = c.reply()
    assert code == 250 and "queued as" in text
    assert c.reply() == (421, "4.3.2 Server shutting down")
    assert c.closed()
    stopping.result(10)
    assert len(rs.queued) == 1
    assert (qdir(rs, rs.queued[0]) / "message").read_bytes().endswith(b"first half\nsecond half\n")

# --- memory stays flat with a large message ----------------------------------------------

SERVER_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from mta.queue import Spool
    from mta.smtp.server import SmtpServer
    from mta.smtp.limits import ServerLimits
    from mta.smtp.simplepolicy import SimplePolicy
    async def main():
        srv = SmtpServer(hostname="mx.test", policy=SimplePolicy(), spool=Spool(sys.argv[1]),
                         limits=ServerLimits(greet_pause=0, max_message_size=200 * 2**20))
        host, port = await srv.start("127.0.0.1", 0)
        print(port, flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
""")


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_50mb_message_streams_with_flat_memory(tmp_path, raw):
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(tmp_path / "spool")],
                            stdout=subprocess.PIPE, cwd=str(Path(__file__).parents[2]))
    try:
        port = int(proc.stdout.readline())
        c = raw(port, timeout=60)
        c.cmd("EHLO client.example"); c.cmd("MAIL FROM:<a@b.example> SIZE=52428800")
        c.cmd("RCPT TO:<x@y.example>")
        assert c.cmd("DATA")[0] == 354
        baseline = _vm_hwm(proc.pid)
        line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-+=/0123456\r\n"
        block = b"Subject: big\r\n\r\n" + line * (1024 * 1024 // len(line))
        sent = 0
        c.send(block[:16])
        while sent < 50 * 2**20:
            c.send(block[16:]); sent += len(block) - 16
        code, text = c.cmd(b".")
        assert code == 250, text
        growth = _vm_hwm(proc.pid) - baseline
        assert growth < 16 * 2**20, f"peak RSS grew by {growth / 2**20:.1f} MiB for a 50 MiB message"
        qid = text.rsplit(" ", 1)[1]
        size = (tmp_path / "spool" / "incoming" / qid / "message").stat().st_size
        assert size > 49 * 2**20
        c.close()
    finally:
        proc.kill()
        proc.wait()


# --- DATA decoding and argument parsing, as properties -----------------------------------

def reference_data(stream: bytes, max_line: int) -> tuple[int, bytes, int, bool] | None:
    """The plain reading of RFC 5321 4.1.1.4 / 4.5.2: (end, content, size, too_long)."""
    pos, prev_crlf, out, size, too_long = 0, True, [], 0, False
    while True:
        nl = stream.find(b"\n", pos)
        if nl < 0:
            return None
        line = stream[pos:nl + 1]
        pos = nl + 1
        if line == b".\r\n" and prev_crlf:
            return pos, b"".join(out), size, too_long
        prev_crlf = line.endswith(b"\r\n")
        too_long |= len(line) > max_line
        if line.startswith(b".") and line not in (b".\n", b".\r\n"):   # "and other characters"
            line = line[1:]
        size += len(line)
        out.append(line[:-2] + b"\n" if prev_crlf else line)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"a", b"..", b".\r\n", b"\r\n.\r\n",
                                 b"bcdefgh", b"Received: x\r\n"]), max_size=40),
       st.lists(st.integers(1, 30), max_size=10))
def test_data_receiver_matches_reference(parts, cuts):
    stream = b"".join(parts) + b"\r\n.\r\nQUIT\r\n"
    sink: list[bytes] = []
    rx = DataReceiver(sink.append, max_size=10**9, max_text_line=20, max_received=10**6)
    pos, end = 0, None
    for cut in cuts + [len(stream)]:
        chunk = stream[pos:pos + cut]
        if not chunk:
            break
        r = rx.feed(chunk)
        if r is not None:
            end = pos + r
            break
        pos += len(chunk)
    ref = reference_data(stream, 20)
    assert ref is not None and end == ref[0]
    assert (rx.error is not None) == ref[3]
    if rx.error is None:
        assert b"".join(sink) == ref[1] and rx.size == ref[2]


_ADD = {b"date": b"Date: D\n", b"from": b"From: F\n"}


def reference_added(content: bytes) -> bytes:
    """``content`` with _ADD's fields it lacks put where its header ends: before the
    first line that is neither a field nor a continuation (an mbox From_ line first
    counts as a field), or at the end when it is all header."""
    lines = content.splitlines(keepends=True)
    seen, at = set(), len(lines)
    for i, line in enumerate(lines):
        m = re.match(rb"([!-9;-~]+)[ \t]*:", line)
        if m:
            seen.add(m.group(1).lower())
        elif not (line[:1] in (b" ", b"\t") or (i == 0 and line.startswith(b"From "))):
            at = i
            break
    missing = b"".join(v for k, v in _ADD.items() if k not in seen)
    return b"".join(lines[:at]) + missing + b"".join(lines[at:])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"Subject: s\r\n", b"date: x\r\n", b"From: y\r\n", b" cont\r\n",
                                 b"From z\r\n", b"text\r\n", b"\r\n", b"X-A:\r\n", b".x\r\n"]),
                max_size=12),
       st.lists(st.integers(1, 30), max_size=10))
def test_missing_fields_are_added_where_the_header_ends(parts, cuts):
    stream = b"".join(parts) + b".\r\n"
    sink: list[bytes] = []
    rx = DataReceiver(sink.append, max_size=10**9, max_text_line=1000, max_received=10**6,
                      add_if_missing=_ADD)
    pos = 0
    for cut in cuts + [len(stream)]:
        chunk = stream[pos:pos + cut]
        if not chunk or rx.feed(chunk) is not None:
            break
        pos += len(chunk)
    ref = reference_data(stream, 1000)
    assert ref is not None and rx.error is None
    assert b"".join(sink) == reference_added(ref[1])


_atom = st.text(st.sampled_from("abcxyzABC0189!#$%&'*+-/=?^_`{|}~"), min_size=1, max_size=8)
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(st.lists(_atom, min_size=1, max_size=3), st.lists(_label, min_size=1, max_size=4),
       st.sampled_from(["", " SIZE=100", " BODY=8BITMIME SMTPUTF8"]))
def test_parse_path_accepts_valid_mailboxes(atoms, labels, params):
    mailbox = ".".join(atoms) + "@" + ".".join(labels)
    assert is_domain(".".join(labels))
    got, got_params = parse_path(f"FROM:<{mailbox}>{params}", "FROM", null_ok=True)
    assert got == mailbox
    assert set(got_params) == {p.split("=")[0] for p in params.split()}


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=30))
def test_parse_path_never_crashes(text):
    from mta.smtp.commands import CommandSyntaxError
    try:
        mailbox, _ = parse_path("TO:" + text, "TO", null_ok=False)
    except CommandSyntaxError:
        return
    assert "@" in mailbox or mailbox.lower() == "postmaster"


def test_address_literals():
    assert is_address_literal("[192.0.2.1]") and is_address_literal("[IPv6:2001:db8::1]")
    assert not is_address_literal("[IPv6:2001:db8::g]") and not is_address_literal("192.0.2.1")
    assert not is_domain("a" * 64 + ".example") and is_domain("a" * 63 + ".example")


@settings(max_examples=200, deadline=None)
@given(when=st.floats(min_value=0, max_value=4e9, allow_nan=False),
       later=st.floats(min_value=0, max_value=3.0))
def test_received_date_memo_is_formatdate(when: float, later: float) -> None:
    """The Received: header's date (its whole second) comes from a one-second memo; it
    must be what email.utils.formatdate gives, also for the next call a moment later."""
    import email.utils

    from mta.smtp.session import _rfc5322_date
    for t in (when, when + later, when):
        assert _rfc5322_date(t) == email.utils.formatdate(int(t), localtime=True)


def _reference_lines(stream: bytes, max_len: int) -> list[bytes | object]:
    """Complete lines of ``stream``; a line longer than ``max_len`` stands as LINE_TOO_LONG."""
    lines = stream.split(b"\n")[:-1]
    return [LINE_TOO_LONG if len(line) + 1 > max_len else line + b"\n" for line in lines]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"\r\n", b"\n", b"NOOP", b"x" * 7, b"y" * 30, b"\r"]), max_size=30),
       st.lists(st.integers(1, 40), max_size=12))
def test_line_buffer_splits_any_chunking_like_the_whole(parts, cuts):
    """However the bytes arrive, LineBuffer yields the lines of the whole stream, an
    over-long line once as LINE_TOO_LONG, and never holds more than the limit of one."""
    max_len = 16
    stream = b"".join(parts)
    buf = LineBuffer(max_len)
    got: list[bytes | object] = []
    pos = 0
    for cut in cuts + [len(stream)]:
        chunk = stream[pos:pos + cut]
        pos += len(chunk)
        buf.feed(chunk)
        while (line := buf.next_line()) is not None:
            got.append(line)
        assert len(buf._buf) <= max_len + 40     # the limit plus at most one chunk
    assert got == _reference_lines(stream, max_len)


def test_only_this_hosts_own_clients_get_fields_added() -> None:
    from mta.smtp.session import _is_loopback
    assert _is_loopback("127.0.0.1") and _is_loopback("127.1.2.3") and _is_loopback("::1")
    assert not _is_loopback("192.0.2.1") and not _is_loopback("2001:db8::1")
    assert not _is_loopback(None) and not _is_loopback("not an address")
