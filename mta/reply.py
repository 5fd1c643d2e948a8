"""mta.reply — SMTP replies as values, and the table of every reply the server sends.

A ``Reply`` is a three-digit code (RFC 5321 4.2), an optional enhanced status code
(RFC 3463, advertised with ENHANCEDSTATUSCODES, RFC 2034) and a human text.  ``lines()``
renders it for the wire, multi-line aware (``250-...`` continuation lines, ``250 ...``
last), each line CRLF-terminated.

Guarantees: replies are immutable; the class digit of the enhanced code always equals
the first digit of the reply code (checked at construction), so "defer versus bounce"
can be decided from either.  Texts contain no CR or LF (a multi-line reply is written with
``\\n`` in ``text`` and split by ``lines()``).

Errors: ``ValueError`` for a malformed code, enhanced code or text, at construction time
(a programming error, never a runtime condition).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: ``code``, RFC 3463 ``enhanced`` code (or None) and ``text``."""

    code: int
    enhanced: str | None
    text: str

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code out of range: {self.code}")
        if self.enhanced is not None:
            if not _ENHANCED.match(self.enhanced):
                raise ValueError(f"bad enhanced status code: {self.enhanced!r}")
            if self.enhanced[0] != str(self.code)[0]:
                raise ValueError(f"enhanced code {self.enhanced} does not match {self.code}")
        if "\r" in self.text:
            raise ValueError("reply text must not contain CR")

    @property
    def is_success(self) -> bool:
        return self.code < 400

    @property
    def is_temporary(self) -> bool:
        """4xx: the client should retry (RFC 5321 4.2.1)."""
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def with_text(self, text: str) -> Reply:
        """The same codes with another text (e.g. naming the address concerned)."""
        return Reply(self.code, self.enhanced, text)

    def lines(self, *, enhanced: bool = True) -> bytes:
        """Wire form; ``enhanced=False`` omits the RFC 3463 code (a client that sent HELO)."""
        texts = self.text.split("\n") if self.text else [""]
        prefix = f"{self.enhanced} " if (enhanced and self.enhanced) else ""
        out = []
        for i, t in enumerate(texts):
            sep = " " if i == len(texts) - 1 else "-"
            out.append(f"{self.code}{sep}{prefix}{t}".rstrip(" ") + "\r\n")
        return "".join(out).encode("utf-8")

    def __str__(self) -> str:
        return self.lines().decode("utf-8").rstrip("\r\n").replace("\r\n", " / ")


# --- success ------------------------------------------------------------------------
OK = Reply(250, "2.0.0", "Ok")
SENDER_OK = Reply(250, "2.1.0", "Sender ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient ok")
RESET_OK = Reply(250, "2.0.0", "Reset state")
START_DATA = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
CLOSING = Reply(221, "2.0.0", "Bye")
HELP = Reply(214, "2.0.0", "See RFC 5321")
# RFC 5321 3.5.3: 252 says "cannot verify, will attempt delivery" and reveals nothing.
CANNOT_VRFY = Reply(252, "2.5.2", "Cannot VRFY user; try RCPT to attempt delivery")

# --- temporary failures (4xx) ----------------------------------------------------------
SERVICE_UNAVAILABLE = Reply(421, "4.3.2", "Service not available, closing transmission channel")
TOO_MANY_CONNECTIONS = Reply(421, "4.3.2", "Too many connections, try again later")
SHUTTING_DOWN = Reply(421, "4.3.2", "Server shutting down")
TIMEOUT = Reply(421, "4.4.2", "Timeout exceeded, closing connection")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TEMP_LOCAL = Reply(451, "4.3.0", "Local error in processing, try again later")
TEMP_POLICY = Reply(450, "4.7.1", "Temporarily rejected, try again later")
QUEUE_FULL = Reply(452, "4.3.1", "Insufficient system storage")
TOO_MANY_RCPTS = Reply(452, "4.5.3", "Too many recipients")

# --- permanent failures (5xx) ----------------------------------------------------------
SYNTAX = Reply(500, "5.5.2", "Syntax error, command unrecognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")  # RFC 5321 4.5.3.1.4: 512 octets
NUL_IN_COMMAND = Reply(500, "5.5.2", "NUL character not allowed in command")
BARE_NEWLINE = Reply(500, "5.5.2", "Syntax error")
SYNTAX_ARGS = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
BAD_HELO = Reply(501, "5.5.2", "Invalid HELO/EHLO argument: a domain or address literal is required")
BAD_ADDRESS = Reply(501, "5.1.3", "Bad address syntax")
BAD_SENDER_ADDRESS = Reply(501, "5.1.7", "Bad sender address syntax")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
NEED_HELO = Reply(503, "5.5.1", "Send HELO/EHLO first")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT command")
NO_VALID_RCPTS = Reply(554, "5.5.1", "No valid recipients")
# RFC 2920 3.1: DATA ends a command group; what a client sent after a DATA that was
# refused is message text it did not wait to send, never commands to run
DATA_PIPELINED = Reply(421, "4.5.0", "Improper pipelining after DATA, closing connection")
PARAM_NOT_RECOGNIZED = Reply(555, "5.5.4", "MAIL FROM/RCPT TO parameter not recognized or not implemented")
USER_UNKNOWN = Reply(550, "5.1.1", "User unknown")
SENDER_REJECTED = Reply(550, "5.7.1", "Sender rejected")
RELAY_DENIED = Reply(550, "5.7.1", "Relaying denied")
ACCESS_DENIED = Reply(550, "5.7.1", "Access denied")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed limit")
TEXT_LINE_TOO_LONG = Reply(552, "5.3.4", "Message contains a line longer than 1000 octets")
NEED_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
EARLY_TALKER = Reply(554, "5.5.0", "Talking before the greeting is not allowed")
LOOP = Reply(554, "5.4.6", "Too many Received headers: mail loop")
CONNECT_REJECTED = Reply(554, "5.7.1", "Connection refused")
TRANSACTION_FAILED = Reply(554, "5.0.0", "Transaction failed")
