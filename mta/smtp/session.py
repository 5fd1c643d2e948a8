"""mta.smtp.session — one SMTP conversation (RFC 5321 with RFC 1870, 1652, 2034, 2920, 6531).

The session reads command lines, keeps the transaction state (HELO name, sender,
recipients) and asks the server's ``SessionPolicy`` at each stage; it streams DATA into
a new queue file and answers 250 only after ``IncomingMessage.commit`` (message and
envelope fsync'd and renamed into incoming/).

Why an ``asyncio.Protocol`` and not streams: every command of an SMTP conversation is
answered without waiting for anything but the next bytes (the policy is synchronous,
DATA is written to the queue file as it arrives, the commit's fsyncs run on the loop), so
the session is a state machine driven by ``data_received``.  The streams version paid
for a task per connection, a future per read and a timeout context per command line:
a bare SMTP sink built both ways used 0.61 and 0.34 ms of CPU per one-message connection
under smtp-source (2026-12-06).  Deadlines are one lazily re-armed timer per session.

Protocol behaviour worth knowing:
  * greet_pause: a client that sends anything before the 220 gets 554 5.5.0 and is
    closed (sendmail FEATURE(greet_pause)).
  * HELO/EHLO is required before MAIL and its argument must be a domain or an address
    literal; EHLO advertises PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, SMTPUTF8.
  * Pipelining (RFC 2920): every complete command received is answered, and the
    replies go out together once no further complete command is waiting.
  * Limits: command lines over 512 octets get 500 5.5.2, NUL bytes 500 5.5.2, the 101st
    RCPT 452 4.5.3, SIZE= over the limit 552 5.3.4; DATA over the limit, a text line over
    1000 octets: 552 5.3.4; more than 30 Received: headers 554 5.4.6.
  * VRFY and EXPN answer 252 whatever the argument, revealing nothing.
  * A client with too many bad commands, or too many rejected recipients, gets
    421 4.7.0 and is closed; one that idles or drips past the timeouts gets 421 4.4.2.
  * A client that does not read its replies is not read from either (flow control), so
    the replies it makes the server buffer are bounded by the transport's high-water mark.
  * Enhanced status codes are shown unless the client greeted with plain HELO.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from .. import reply as R
from ..queue.envelope import Envelope, RecipientState
from ..queue.errors import QueueError
from ..queue.spool import IncomingMessage
from ..reply import Reply
from ..verdict import Accept, Reject, TempFail, Verdict
from .commands import CommandSyntaxError, is_address_literal, is_domain, parse_path, split_command
from .dataread import LINE_TOO_LONG, DataReceiver, LineBuffer

if TYPE_CHECKING:
    from .server import SmtpServer

log = logging.getLogger("mta.smtp")


class _Queued(NamedTuple):
    """A message just queued: what the notice and the from= log line need once the 250
    has gone out (the session's transaction is reset by then)."""
    qid: str
    sender: str
    size: int
    nrcpts: int
    msgid: str
    proto: str
    relay: str

# Commands some non-SMTP clients send; seeing one ends the session (Postfix
# smtpd_forbidden_commands: a web browser or proxy pointed at port 25).
_FORBIDDEN = {"GET", "POST", "HEAD", "PUT", "CONNECT"}

# Replies held back while pipelined commands are answered; more is sent at once.
_REPLY_BATCH = 16 * 1024

# Session states
_GREETING, _COMMAND, _DATA, _CLOSED = range(4)


class _Close(Exception):
    """End the session after the replies already queued are flushed."""


class Session(asyncio.Protocol):
    """One connection; created by SmtpServer for each accepted socket."""

    def __init__(self, server: SmtpServer) -> None:
        self.server = server
        self.limits = server.limits
        self.policy = server.policy
        self.client_ip = "unknown"
        self.helo: str | None = None
        self.esmtp = False
        self.bad_commands = 0
        self.unknown_rcpts = 0
        self.lines = LineBuffer(self.limits.max_line)
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._out_size = 0
        self._state = _GREETING
        self._stop_requested = False
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._write_paused = False          # the transport's buffer is over its high-water
        self._msg: IncomingMessage | None = None     # DATA in progress
        self._rx: DataReceiver | None = None
        self._data_started = 0.0
        self._received_at = 0.0
        self._reset()

    # --- transaction state --------------------------------------------------------------
    def _reset(self) -> None:
        self.sender: str | None = None
        self.mail_params: dict[str, str] = {}
        self.recipients: list[str] = []

    @property
    def relay(self) -> str:
        return f"{self.helo or 'unknown'} [{self.client_ip}]"

    # --- output ---------------------------------------------------------------------------
    def reply(self, r: Reply) -> None:
        data = r.lines(enhanced=self.esmtp or self.helo is None)
        self._out.append(data)
        self._out_size += len(data)

    def _flush(self) -> None:
        if self._out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(self._out))   # may call pause_writing at once
        self._out.clear()
        self._out_size = 0

    def _close(self, *, abort: bool = False) -> None:
        """Send what is queued and close (``abort``: drop it and reset the connection);
        the rest of the input is ignored."""
        if self._state == _CLOSED:
            return
        if abort:
            self._out.clear()
        self._flush()
        self._state = _CLOSED
        self._cancel_timer()
        if self._transport is not None:
            # A client that reads nothing cannot make a closing session linger.
            if abort or self._transport.get_write_buffer_size() > 64 * 1024:
                self._transport.abort()
            else:
                self._transport.close()

    def request_stop(self) -> None:
        """Server shutdown: a session waiting for a command is told 421 and closed now,
        one inside DATA after its transaction."""
        self._stop_requested = True
        if self._state in (_GREETING, _COMMAND):
            self.reply(R.SHUTTING_DOWN)
            self._close()

    # --- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # asyncio or uvloop
        peer = transport.get_extra_info("peername") or ("unknown", 0)
        self.client_ip = str(peer[0])
        if not self.server.admit(self):
            log.warning("too many connections, refusing [%s]", self.client_ip)
            self._out.append(R.TOO_MANY_CONNECTIONS.lines())
            self._close()
            return
        # Only the from= and to= lines are logged per message, as sendmail does; a
        # line per connect and disconnect (Postfix) is for -v.
        log.debug("connect from [%s]", self.client_ip)
        pause = self.limits.greet_pause
        if pause > 0:
            self._arm(self._loop.time() + pause)
        else:
            self._guarded(self._greet)

    def data_received(self, data: bytes) -> None:
        self._guarded(self._received, data)

    def _received(self, data: bytes) -> None:
        if self._state == _GREETING:
            log.warning("rejecting commands from [%s] due to pre-greeting traffic", self.client_ip)
            self.reply(R.EARLY_TALKER)
            raise _Close()
        if self._state == _DATA:
            self._feed_data(data)
        elif self._state == _COMMAND:
            self.lines.feed(data)
        self._run_commands()

    def _guarded(self, step: Callable[..., None], *args: object) -> None:
        """Run a step of the conversation: _Close ends the session in order, a bug ends
        only this connection."""
        try:
            step(*args)
        except _Close:
            self._close()
        except Exception:
            log.exception("session with [%s] failed", self.client_ip)
            self._close(abort=True)

    def eof_received(self) -> bool:
        if self._state != _CLOSED:
            log.info("lost connection from %s", self.relay)
            self._close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self._state != _CLOSED:
            log.info("connection from %s ended: %s", self.relay, exc.__class__.__name__)
        self._state = _CLOSED
        self._cancel_timer()
        self._end_data()
        self.server.forget(self)
        log.debug("disconnect from %s", self.relay)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        """The client is not reading its replies: stop reading (and answering) it."""
        self._write_paused = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()
            self._guarded(self._run_commands)    # the commands left buffered

    # --- deadlines ------------------------------------------------------------------------
    def _arm(self, deadline: float) -> None:
        """The current deadline.  The timer is moved only when it would fire too late; one
        that fires early re-arms itself, so a session that keeps talking arms it once."""
        self._deadline = deadline
        if self._timer is None or self._timer.when() > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self._state == _CLOSED:
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        if self._state == _GREETING:
            self._guarded(self._greet)
            return
        what = "DATA" if self._state == _DATA else "command"
        log.info("timeout after %s from %s", what, self.relay)
        self.reply(R.TIMEOUT)
        self._close()

    # --- the conversation -------------------------------------------------------------------
    def _greet(self) -> None:
        verdict = self.policy.check_connect(self.client_ip)
        if not isinstance(verdict, Accept):
            log.info("connect from [%s] refused: %s", self.client_ip, verdict.reply)
            self.reply(verdict.reply)
            self._close()
            return
        self._out.append(f"220 {self.server.hostname} ESMTP postroom\r\n".encode())
        self._state = _COMMAND
        self._flush()
        self._arm(self._loop.time() + self.limits.idle_timeout)

    def _run_commands(self) -> None:
        """Answer every complete command buffered; then send the replies together and
        wait for a whole command line within idle_timeout."""
        answered = False
        while self._state == _COMMAND and not self._write_paused:
            line = self.lines.next_line()
            if line is None:
                break
            answered = True
            if line is LINE_TOO_LONG:
                self._bad(R.LINE_TOO_LONG)
                continue
            assert isinstance(line, bytes)
            self._dispatch(line)
            if self._out_size > _REPLY_BATCH:
                self._flush()                 # bounded replies, and flow control a chance
        self._flush()
        if answered and self._state == _COMMAND:
            self._arm(self._loop.time() + self.limits.idle_timeout)

    def _bad(self, r: Reply) -> None:
        """Reply with a protocol error and count it toward the disconnect limit."""
        self.reply(r)
        self.bad_commands += 1
        if self.bad_commands >= self.limits.max_bad_commands:
            log.warning("too many errors from %s", self.relay)
            self.reply(R.TOO_MANY_ERRORS)
            raise _Close()

    def _dispatch(self, raw: bytes) -> None:
        if b"\0" in raw:
            self._bad(R.NUL_IN_COMMAND)
            return
        try:
            text = raw.rstrip(b"\n").rstrip(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            # a known command with bytes that are not UTF-8 in its argument (a Latin-1
            # address) is a bad argument (501), not an unrecognised command (500)
            verb, _ = split_command(raw.rstrip(b"\r\n").decode("latin-1"))
            bad = R.SYNTAX_ARGS if verb in _HANDLERS else R.SYNTAX
            self._bad(bad.with_text("Invalid UTF-8 in command"))
            return
        verb, arg = split_command(text)
        if verb in _FORBIDDEN:
            log.warning("non-SMTP command from %s: %s", self.relay, verb)
            raise _Close()
        handler = _HANDLERS.get(verb)
        if handler is None:
            self._bad(R.SYNTAX)
            return
        handler(self, arg)

    # --- commands ---------------------------------------------------------------------------
    def _apply(self, verdict: Verdict, default: Reply) -> bool:
        match verdict:
            case Accept(reply=r):
                self.reply(r or default)
                return True
            case Reject(reply=r) | TempFail(reply=r):
                self.reply(r)
                return False
        raise TypeError(f"not a Verdict: {verdict!r}")

    def do_helo(self, arg: str, *, esmtp: bool = False) -> None:
        if not arg or " " in arg or not (is_domain(arg) or is_address_literal(arg)):
            self._bad(R.BAD_HELO)
            return
        self._reset()        # RFC 5321 4.1.4: EHLO/HELO reset the transaction
        verdict = self.policy.check_helo(self.client_ip, arg)
        if not isinstance(verdict, Accept):
            self._apply(verdict, R.OK)
            return
        self.helo, self.esmtp = arg, esmtp
        if verdict.reply is not None:
            self.reply(verdict.reply)
        elif esmtp:
            ext = [f"{self.server.hostname} Hello {arg} [{self.client_ip}]", "PIPELINING",
                   f"SIZE {self.limits.max_message_size}", "8BITMIME", "ENHANCEDSTATUSCODES",
                   "SMTPUTF8", "HELP"]
            self.reply(Reply(250, None, "\n".join(ext)))
        else:
            self.reply(Reply(250, None, f"{self.server.hostname} Hello {arg} [{self.client_ip}]"))

    def do_ehlo(self, arg: str) -> None:
        self.do_helo(arg, esmtp=True)

    def do_mail(self, arg: str) -> None:
        if self.helo is None:
            self._bad(R.NEED_HELO)
            return
        if self.sender is not None:
            self._bad(R.NESTED_MAIL)
            return
        try:
            sender, params = parse_path(arg, "FROM", null_ok=True, bad=R.BAD_SENDER_ADDRESS,
                                        loose_dots=True)
        except CommandSyntaxError as exc:
            self._bad(exc.reply)
            return
        problem = self._check_mail_params(sender, params)
        if problem is not None:
            self._bad(problem)
            return
        verdict = self.policy.check_mail(self.client_ip, self.helo, sender, params)
        if self._apply(verdict, R.SENDER_OK):
            self.sender, self.mail_params = sender, params
        else:
            log.info("ruleset=check_mail, arg1=<%s>, relay=%s, reject=%s", sender, self.relay,
                     verdict.reply if not isinstance(verdict, Accept) else "")

    def _check_mail_params(self, sender: str, params: dict[str, str]) -> Reply | None:
        for key, value in params.items():
            if key == "SIZE":
                if not value.isdigit() or len(value) > 20:
                    return R.SYNTAX_ARGS.with_text("Bad SIZE parameter")
                if int(value) > self.limits.max_message_size:
                    return R.MESSAGE_TOO_BIG
            elif key == "BODY":
                if value.upper() not in ("7BIT", "8BITMIME"):
                    return R.SYNTAX_ARGS.with_text("Bad BODY parameter")
            elif key == "SMTPUTF8":
                if value:
                    return R.SYNTAX_ARGS.with_text("SMTPUTF8 takes no value")
            else:
                return R.PARAM_NOT_RECOGNIZED
        if not self.esmtp and params:
            return R.PARAM_NOT_RECOGNIZED   # parameters need EHLO (RFC 5321 4.1.1.11)
        if "SMTPUTF8" not in params and not sender.isascii():
            return R.NEED_SMTPUTF8
        return None

    def do_rcpt(self, arg: str) -> None:
        if self.sender is None or self.helo is None:
            self._bad(R.NEED_MAIL)
            return
        try:
            rcpt, params = parse_path(arg, "TO", null_ok=False, postmaster_ok=True)
        except CommandSyntaxError as exc:
            self._bad(exc.reply)
            return
        if params:
            self._bad(R.PARAM_NOT_RECOGNIZED)
            return
        if "SMTPUTF8" not in self.mail_params and not rcpt.isascii():
            self._bad(R.NEED_SMTPUTF8)
            return
        if len(self.recipients) >= self.limits.max_recipients:
            self.reply(R.TOO_MANY_RCPTS)   # RFC 5321 4.5.3.1.10: 452, the client continues
            return
        verdict = self.policy.check_rcpt(self.client_ip, self.helo, self.sender, rcpt)
        if self._apply(verdict, R.RECIPIENT_OK):
            if rcpt not in self.recipients:
                self.recipients.append(rcpt)
            return
        assert not isinstance(verdict, Accept)
        log.info("ruleset=check_rcpt, arg1=<%s>, relay=%s, reject=%s", rcpt, self.relay, verdict.reply)
        if isinstance(verdict, Reject):
            self.unknown_rcpts += 1
            if self.unknown_rcpts >= self.limits.max_unknown_rcpts:
                log.warning("too many rejected recipients from %s", self.relay)
                self.reply(R.TOO_MANY_ERRORS)
                raise _Close()

    def do_data(self, arg: str) -> None:
        if arg:
            self._bad(R.SYNTAX_ARGS)
            return
        if self.sender is None or not self.recipients:
            self._bad(R.NEED_MAIL if self.sender is None else R.NO_VALID_RCPTS)
            if self.lines.pending():
                # the message text came with DATA (RFC 2920 3.1 forbids it): run as
                # commands it could queue a message of its own (the smuggling shape)
                log.warning("improper pipelining after DATA from %s: closing", self.relay)
                self.reply(R.DATA_PIPELINED)
                raise _Close()
            return
        try:
            # deferred: tmp/<qid>/ is made at commit, not for every DATA that fails
            msg = self.server.spool.new_message(deferred=True)
        except QueueError as exc:
            log.error("cannot create queue file: %s", exc)
            self.reply(R.TEMP_LOCAL)
            return
        self._msg = msg
        self._received_at = time.time()
        try:
            msg.write(self._received_header(msg.qid, self._received_at))
        except QueueError as exc:
            self._data_failed(exc)
        self._rx = DataReceiver(msg.write, max_size=self.limits.max_message_size,
                                max_text_line=self.limits.max_text_line,
                                max_received=self.limits.max_received_headers,
                                add_if_missing=self._missing_fields(msg.qid, self._received_at))
        self.reply(R.START_DATA)
        self._flush()
        self._state = _DATA
        self._data_started = self._loop.time()
        self._arm(self._data_started + min(self.limits.data_timeout, self.limits.max_data_time))
        rest = self.lines.take()        # what the client sent right after DATA is content
        if rest:
            self._feed_data(rest)

    def _feed_data(self, data: bytes) -> None:
        """Stream DATA into the queue file; at its end, commit and answer."""
        rx = self._rx
        assert rx is not None and self._msg is not None
        size = rx.size
        try:
            end = rx.feed(data)
        except QueueError as exc:         # a write failed (ENOSPC, EFBIG) mid-stream
            self._data_failed(exc)
        if end is None:
            if rx.size != size:           # size grows only with complete lines
                now = self._loop.time()
                self._arm(min(now + self.limits.data_timeout, self._data_started + self.limits.max_data_time))
            return
        queued: _Queued | None = None
        try:
            reply, queued = self._finish_data(self._msg, rx)
            self.reply(reply)
        finally:
            self._end_data()
            self._reset()
        if queued is not None:
            # The 250 goes out now, ahead of any reply to commands pipelined after the
            # dot; then the queue is told, then the log line is written: both were on
            # the path from the commit to the client's 250 and to the delivery's start
            # (bench_mta's latency probe, 2026-12-06: each came ~0.1 ms sooner).
            self._flush()
            self._queued(queued)
        self._state = _COMMAND
        self.lines.push_back(data[end:])
        if self._stop_requested:
            self.reply(R.SHUTTING_DOWN)
            raise _Close()
        self._arm(self._loop.time() + self.limits.idle_timeout)

    def _data_failed(self, exc: QueueError) -> None:
        assert self._msg is not None
        log.error("%s: %s", self._msg.qid, exc)
        self.reply(R.TEMP_LOCAL)
        raise _Close()

    def _end_data(self) -> None:
        """Forget the DATA in progress; a message not committed is removed."""
        msg, self._msg, self._rx = self._msg, None, None
        if msg is not None and not msg.committed:
            msg.abort()

    def _finish_data(self, msg: IncomingMessage, rx: DataReceiver) -> tuple[Reply, _Queued | None]:
        """The reply to the end of DATA, and what to announce once it is sent (None
        when nothing was queued)."""
        if rx.error is not None:
            log.info("%s: reject=%s, from=<%s>, size=%d, relay=%s", msg.qid, rx.error,
                     self.sender, rx.size, self.relay)
            return rx.error, None
        assert self.sender is not None
        env = Envelope(
            sender=self.sender,
            recipients=[RecipientState(r) for r in self.recipients],
            received_at=self._received_at, size=msg.size, client_ip=self.client_ip,
            client_name=None, helo=self.helo, protocol=self._protocol(),
            body=self.mail_params.get("BODY", "").upper() or None,
            smtputf8="SMTPUTF8" in self.mail_params, message_id=rx.message_id)
        try:
            # On the loop, not in a thread: a worker thread doing five GIL-releasing
            # syscalls while the loop runs Python cost more CPU in GIL hand-offs (futex
            # storms, bench_mta.py) than the fsyncs themselves.  Other sessions wait the
            # fsyncs out; concurrency comes from several receiver processes (mta.serve).
            qid = msg.commit(env)
        except QueueError as exc:
            log.error("%s: cannot queue: %s", msg.qid, exc)
            return R.TEMP_LOCAL, None
        queued = _Queued(qid, self.sender, msg.size, len(self.recipients), rx.message_id or "",
                         env.protocol, self.relay)
        return R.OK.with_text(f"Ok: queued as {qid}"), queued

    def _queued(self, q: _Queued) -> None:
        """Tell the queue, once the 250 is on its way: the delivery the notice wakes (in
        another process) would otherwise take the CPU the reply is waiting for (the
        latency probe: end of DATA to 250 took 1.2 ms longer with the notice first)."""
        if self.server.on_queued is not None:
            try:
                self.server.on_queued(q.qid)
            except Exception:
                log.exception("%s: on_queued callback failed (message stays queued)", q.qid)
        log.info("%s: from=<%s>, size=%d, class=0, nrcpts=%d, msgid=%s, proto=%s, relay=%s",
                 q.qid, q.sender, q.size, q.nrcpts, q.msgid, q.proto, q.relay)

    def _protocol(self) -> str:
        if "SMTPUTF8" in self.mail_params:
            return "UTF8ESMTP"           # RFC 6531 3.7.3
        return "ESMTP" if self.esmtp else "SMTP"

    def _missing_fields(self, qid: str, when: float) -> dict[bytes, bytes] | None:
        """The Date:, From: and Message-ID: fields a message from this host itself gets
        when it has none (RFC 5322 wants Date and From; RFC 6409 8 lets a submission
        server add them), as Postfix adds them for its local_header_rewrite_clients:
        scripts that talk SMTP to 127.0.0.1 with a bare body had mail with no date.
        None for any other client: a relay does not edit what it was sent."""
        if not _is_loopback(self.client_ip):
            return None
        host = self.server.hostname
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(when))
        sender = self.sender or f"MAILER-DAEMON@{host}"
        return {b"date": f"Date: {_rfc5322_date(when)}\n".encode(),
                b"from": f"From: {sender}\n".encode("utf-8"),
                b"message-id": f"Message-ID: <{stamp}.{qid}@{host}>\n".encode()}

    def _received_header(self, qid: str, when: float) -> bytes:
        """RFC 5321 4.4 trace header, folded, LF line ends (the queue's format)."""
        date = _rfc5322_date(when)
        lines = [f"Received: from {self.helo} ([{self.client_ip}])",
                 f"\tby {self.server.hostname} (postroom) with {self._protocol()} id {qid}"]
        if len(self.recipients) == 1:    # naming one of several would leak the others
            lines.append(f"\tfor <{self.recipients[0]}>; {date}")
        else:
            lines[-1] += ";"
            lines.append(f"\t{date}")
        return ("\n".join(lines) + "\n").encode("utf-8")

    def do_rset(self, arg: str) -> None:
        self._reset()
        self.reply(R.RESET_OK)

    def do_noop(self, arg: str) -> None:
        self.reply(R.OK)

    def do_quit(self, arg: str) -> None:
        self.reply(R.CLOSING)
        raise _Close()

    def do_vrfy(self, arg: str) -> None:
        if not arg:
            self._bad(R.SYNTAX_ARGS)
            return
        self.reply(R.CANNOT_VRFY)     # never reveals whether the user or list exists

    def do_help(self, arg: str) -> None:
        self.reply(R.HELP)


_HANDLERS = {
    "HELO": Session.do_helo, "EHLO": Session.do_ehlo, "MAIL": Session.do_mail,
    "RCPT": Session.do_rcpt, "DATA": Session.do_data, "RSET": Session.do_rset,
    "NOOP": Session.do_noop, "QUIT": Session.do_quit, "VRFY": Session.do_vrfy,
    "EXPN": Session.do_vrfy, "HELP": Session.do_help,
}


_date_memo: tuple[int, str] = (-1, "")


def _is_loopback(ip: str | None) -> bool:
    try:
        return ip is not None and ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def _rfc5322_date(when: float) -> str:
    """``email.utils.formatdate`` of the whole second of ``when``, local time, made once
    per second: it builds a timezone-aware datetime on every call, a twentieth of a
    receiver's CPU per message (tests/benchmarks/bench_mta.py).  The text depends only
    on the second (and the zone's offset then), so a memo of the last one is exact."""
    global _date_memo
    second = int(when)
    if _date_memo[0] != second:
        _date_memo = (second, email.utils.formatdate(second, localtime=True))
    return _date_memo[1]
