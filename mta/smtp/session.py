"""mta.smtp.session — one SMTP conversation (RFC 5321 with RFC 1870, 1652, 2034, 2920, 6531).

The session reads command lines, keeps the transaction state (HELO name, sender,
recipients) and asks the server's ``SessionPolicy`` at each stage; it streams DATA into
a new queue file and answers 250 only after ``IncomingMessage.commit`` (message and
envelope fsync'd and renamed into incoming/).

Protocol behaviour worth knowing:
  * greet_pause: a client that sends anything before the 220 gets 554 5.5.0 and is
    closed (sendmail FEATURE(greet_pause)).
  * HELO/EHLO is required before MAIL and its argument must be a domain or an address
    literal; EHLO advertises PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, SMTPUTF8.
  * Pipelining (RFC 2920): replies are buffered while further complete commands are
    already waiting, and flushed before the session blocks on input.
  * Limits: command lines over 512 octets get 500 5.5.2, NUL bytes 500 5.5.2, the 101st
    RCPT 452 4.5.3, SIZE= over the limit 552 5.3.4; DATA over the limit, a text line over
    1000 octets: 552 5.3.4; more than 30 Received: headers 554 5.4.6.
  * VRFY and EXPN answer 252 whatever the argument, revealing nothing.
  * A client with too many bad commands, or too many rejected recipients, gets
    421 4.7.0 and is closed; one that idles or drips past the timeouts gets 421 4.4.2.
  * Enhanced status codes are shown unless the client greeted with plain HELO.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from typing import TYPE_CHECKING

from .. import reply as R
from ..queue.envelope import Envelope, RecipientState
from ..queue.errors import QueueError
from ..queue.spool import IncomingMessage
from ..reply import Reply
from ..verdict import Accept, Reject, TempFail, Verdict
from .commands import CommandSyntaxError, is_address_literal, is_domain, parse_path, split_command
from .dataread import LINE_TOO_LONG, ConnectionLost, DataReceiver, LineReader, feed_until_end

if TYPE_CHECKING:
    from .server import SmtpServer

log = logging.getLogger("mta.smtp")

# Commands some non-SMTP clients send; seeing one ends the session (Postfix
# smtpd_forbidden_commands: a web browser or proxy pointed at port 25).
_FORBIDDEN = {"GET", "POST", "HEAD", "PUT", "CONNECT"}


class _Close(Exception):
    """End the session after the replies already queued are flushed."""


class Session:
    def __init__(self, server: SmtpServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, client_ip: str) -> None:
        self.server = server
        self.limits = server.limits
        self.policy = server.policy
        self.lines = LineReader(reader)
        self.writer = writer
        self.client_ip = client_ip
        self.helo: str | None = None
        self.esmtp = False
        self.bad_commands = 0
        self.unknown_rcpts = 0
        self._out: list[bytes] = []
        self._idle = False
        self._stop_requested = False
        self._task = asyncio.current_task()
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
        self._out.append(r.lines(enhanced=self.esmtp or self.helo is None))

    async def flush(self) -> None:
        if self._out:
            self.writer.write(b"".join(self._out))
            self._out.clear()
            # A reply that the kernel took at once needs no drain: skipping it saves
            # the wait_for task and timer of every reply (bench_mta.py).
            if self.writer.transport.get_write_buffer_size() or self.writer.transport.is_closing():
                async with asyncio.timeout(self.limits.idle_timeout):
                    await self.writer.drain()

    def request_stop(self) -> None:
        """Server shutdown: an idle session is interrupted now, a busy one after DATA."""
        self._stop_requested = True
        if self._idle and self._task is not None:
            self._task.cancel()

    # --- main loop ------------------------------------------------------------------------
    async def run(self) -> None:
        # Only the from= and to= lines are logged per message, as sendmail does; a
        # line per connect and disconnect (Postfix) is for -v.
        log.debug("connect from [%s]", self.client_ip)
        try:
            if not await self._greet():
                await self.flush()
                return
            while not self._stop_requested:
                if not self.lines.has_line():
                    await self.flush()
                line = await self._read_command()
                if line is None:
                    break
                try:
                    await self._dispatch(line)
                except _Close:
                    break
            if self._stop_requested:
                self.reply(R.SHUTTING_DOWN)
            await self.flush()
        except ConnectionLost:
            log.info("lost connection from %s", self.relay)
        except (ConnectionError, asyncio.TimeoutError) as exc:
            log.info("connection from %s ended: %s", self.relay, exc.__class__.__name__)
        log.debug("disconnect from %s", self.relay)

    async def _greet(self) -> bool:
        pause = self.limits.greet_pause
        if pause > 0:
            try:
                await asyncio.wait_for(self.lines.fill(), pause)
            except asyncio.TimeoutError:
                pass
            else:
                log.warning("rejecting commands from [%s] due to pre-greeting traffic", self.client_ip)
                self.reply(R.EARLY_TALKER)
                return False
        verdict = self.policy.check_connect(self.client_ip)
        if not isinstance(verdict, Accept):
            log.info("connect from [%s] refused: %s", self.client_ip, verdict.reply)
            self.reply(verdict.reply)
            return False
        self._out.append(f"220 {self.server.hostname} ESMTP postroom\r\n".encode())
        return True

    async def _read_command(self) -> bytes | None:
        self._idle = True
        if self._stop_requested:        # asked during the flush before this wait
            self._idle = False
            return None
        try:
            line = await self.lines.readline(self.limits.max_line, self.limits.idle_timeout)
        except asyncio.TimeoutError:
            log.info("timeout after %s from %s", "command", self.relay)
            self.reply(R.TIMEOUT)
            return None
        except asyncio.CancelledError:
            if not self._stop_requested:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return None
        finally:
            self._idle = False
        if line is LINE_TOO_LONG:
            self._bad(R.LINE_TOO_LONG)
            return b""
        assert isinstance(line, bytes)
        return line

    def _bad(self, r: Reply) -> None:
        """Reply with a protocol error and count it toward the disconnect limit."""
        self.reply(r)
        self.bad_commands += 1
        if self.bad_commands >= self.limits.max_bad_commands:
            log.warning("too many errors from %s", self.relay)
            self.reply(R.TOO_MANY_ERRORS)
            raise _Close()

    async def _dispatch(self, raw: bytes) -> None:
        if not raw:          # an over-long line, already answered
            if self.bad_commands >= self.limits.max_bad_commands:
                raise _Close()
            return
        if b"\0" in raw:
            self._bad(R.NUL_IN_COMMAND)
            return
        try:
            text = raw.rstrip(b"\n").rstrip(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            self._bad(R.SYNTAX.with_text("Invalid UTF-8 in command"))
            return
        verb, arg = split_command(text)
        if verb in _FORBIDDEN:
            log.warning("non-SMTP command from %s: %s", self.relay, verb)
            raise _Close()
        handler = _HANDLERS.get(verb)
        if handler is None:
            self._bad(R.SYNTAX)
            return
        await handler(self, arg)

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

    async def do_helo(self, arg: str, *, esmtp: bool = False) -> None:
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

    async def do_ehlo(self, arg: str) -> None:
        await self.do_helo(arg, esmtp=True)

    async def do_mail(self, arg: str) -> None:
        if self.helo is None:
            self._bad(R.NEED_HELO)
            return
        if self.sender is not None:
            self._bad(R.NESTED_MAIL)
            return
        try:
            sender, params = parse_path(arg, "FROM", null_ok=True, bad=R.BAD_SENDER_ADDRESS)
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

    async def do_rcpt(self, arg: str) -> None:
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

    async def do_data(self, arg: str) -> None:
        if arg:
            self._bad(R.SYNTAX_ARGS)
            return
        if self.sender is None:
            self._bad(R.NEED_MAIL)
            return
        if not self.recipients:
            self._bad(R.NO_VALID_RCPTS)
            return
        try:
            # deferred: tmp/<qid>/ is made at commit, not for every DATA that fails
            msg = self.server.spool.new_message(deferred=True)
        except QueueError as exc:
            log.error("cannot create queue file: %s", exc)
            self.reply(R.TEMP_LOCAL)
            return
        try:
            reply = await self._receive(msg)
        finally:
            if not msg.committed:
                msg.abort()
            self._reset()
        self.reply(reply)

    async def _receive(self, msg: IncomingMessage) -> Reply:
        received_at = time.time()
        msg.write(self._received_header(msg.qid, received_at))
        rx = DataReceiver(msg.write, max_size=self.limits.max_message_size,
                          max_text_line=self.limits.max_text_line,
                          max_received=self.limits.max_received_headers)
        self.reply(R.START_DATA)
        await self.flush()
        try:
            await feed_until_end(self.lines, rx, line_timeout=self.limits.data_timeout,
                                 total_timeout=self.limits.max_data_time)
        except asyncio.TimeoutError:
            log.info("timeout after DATA from %s", self.relay)
            self.reply(R.TIMEOUT)
            raise _Close() from None
        except QueueError as exc:         # a write failed (ENOSPC, EFBIG) mid-stream
            log.error("%s: %s", msg.qid, exc)
            self.reply(R.TEMP_LOCAL)
            raise _Close() from None
        if rx.error is not None:
            log.info("%s: reject=%s, from=<%s>, size=%d, relay=%s", msg.qid, rx.error,
                     self.sender, rx.size, self.relay)
            return rx.error
        assert self.sender is not None
        env = Envelope(
            sender=self.sender,
            recipients=[RecipientState(r) for r in self.recipients],
            received_at=received_at, size=msg.size, client_ip=self.client_ip,
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
            return R.TEMP_LOCAL
        log.info("%s: from=<%s>, size=%d, class=0, nrcpts=%d, msgid=%s, proto=%s, relay=%s",
                 qid, self.sender, msg.size, len(self.recipients), rx.message_id or "",
                 env.protocol, self.relay)
        if self.server.on_queued is not None:
            try:
                self.server.on_queued(qid)
            except Exception:
                log.exception("%s: on_queued callback failed (message stays queued)", qid)
        return R.OK.with_text(f"Ok: queued as {qid}")

    def _protocol(self) -> str:
        if "SMTPUTF8" in self.mail_params:
            return "UTF8ESMTP"           # RFC 6531 3.7.3
        return "ESMTP" if self.esmtp else "SMTP"

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

    async def do_rset(self, arg: str) -> None:
        self._reset()
        self.reply(R.RESET_OK)

    async def do_noop(self, arg: str) -> None:
        self.reply(R.OK)

    async def do_quit(self, arg: str) -> None:
        self.reply(R.CLOSING)
        raise _Close()

    async def do_vrfy(self, arg: str) -> None:
        if not arg:
            self._bad(R.SYNTAX_ARGS)
            return
        self.reply(R.CANNOT_VRFY)     # never reveals whether the user or list exists

    async def do_help(self, arg: str) -> None:
        self.reply(R.HELP)


_HANDLERS = {
    "HELO": Session.do_helo, "EHLO": Session.do_ehlo, "MAIL": Session.do_mail,
    "RCPT": Session.do_rcpt, "DATA": Session.do_data, "RSET": Session.do_rset,
    "NOOP": Session.do_noop, "QUIT": Session.do_quit, "VRFY": Session.do_vrfy,
    "EXPN": Session.do_vrfy, "HELP": Session.do_help,
}


_date_memo: tuple[int, str] = (-1, "")


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
