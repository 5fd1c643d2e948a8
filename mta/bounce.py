"""mta.bounce — delivery status notifications (RFC 3464) for failed recipients.

SYNOPSIS
    failure = Failure(recipient="bob@host", status="5.1.1",
                      diagnostic="smtp; 550 5.1.1 User unknown", orcpt=None)
    raw = build_bounce(envelope, original_headers, [failure], reporting_mta="mx.example",
                       qid="...")
    should_bounce(envelope)     # False for the null sender: a bounce is never bounced

DESCRIPTION
    The bounce is a multipart/report; report-type=delivery-status (RFC 3462/6522) with

      1. text/plain        what happened, for a human
      2. message/delivery-status   per-message fields (Reporting-MTA, Arrival-Date,
                           X-Postroom-Queue-ID) and one block per failed recipient
                           (Original-Recipient, Final-Recipient, Action: failed,
                           Status, Diagnostic-Code)
      3. text/rfc822-headers   the original message's header (RFC 3462 2.3 allows the
                           headers only; a bounce should not carry the whole message)

    It is From: MAILER-DAEMON@<hostname>, To: the envelope sender, and is queued with
    the null envelope sender ``<>`` (RFC 5321 4.5.5), so that a failing bounce is
    dropped instead of bouncing again.  Built with the email package (policy SMTP
    with LF line ends, the queue's format); deliver/ never imports this.

ERRORS
    ValueError when asked to bounce a message with the null sender (callers check
    ``should_bounce`` first).
"""

from __future__ import annotations

import email.policy
import email.utils
import time
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from .queue.envelope import Envelope

__all__ = ["Failure", "build_bounce", "should_bounce", "split_header"]

_POLICY = email.policy.SMTP.clone(linesep="\n", max_line_length=78)


@dataclass(frozen=True, slots=True)
class Failure:
    recipient: str            # Final-Recipient
    status: str               # RFC 3463 code, e.g. "5.1.1" (4.4.7 for an expired one)
    diagnostic: str           # "smtp; 550 5.1.1 User unknown" or "x-unix; ..."
    orcpt: str | None = None  # Original-Recipient when an alias expanded
    action: str = "failed"


def should_bounce(env: Envelope) -> bool:
    """RFC 5321 4.5.5: never send a notification about a message with a null sender."""
    return env.sender != ""


def split_header(raw: bytes) -> bytes:
    """The header block of a queued message (LF line ends), without the blank line."""
    end = raw.find(b"\n\n")
    if raw.startswith(b"\n"):
        return b""
    return raw if end < 0 else raw[:end + 1]


def _address_type(address: str) -> str:
    """RFC 3464 2.3.2: "rfc822;" for an ASCII address.  An internationalised one is
    "utf-8;" in utf-8-addr-xtext (RFC 6533 3: ``\\x{HEX}`` for every character outside
    printable ASCII and for "+", "=" and "\\"), since a message/delivery-status field
    is ASCII: written raw it was RFC 2047-encoded whole, "=?utf-8?q?utf-8=3B...?=",
    which no DSN reader takes for an address."""
    if address.isascii():
        return f"rfc822;{address}"
    return "utf-8;" + "".join(c if "!" <= c <= "~" and c not in "+=\\" else f"\\x{{{ord(c):02X}}}"
                              for c in address)


def build_bounce(env: Envelope, headers: bytes, failures: list[Failure], *,
                 reporting_mta: str, qid: str, now: float | None = None) -> bytes:
    """The bounce message for ``failures`` of the message ``env``, as queue bytes."""
    if not should_bounce(env):
        raise ValueError("a message with the null sender is never bounced")
    now = time.time() if now is None else now
    outer = MIMEMultipart("report", report_type="delivery-status", policy=_POLICY)
    outer["From"] = f"Mail Delivery Subsystem <MAILER-DAEMON@{reporting_mta}>"
    outer["To"] = f"<{env.sender}>"
    outer["Subject"] = "Returned mail: see transcript for details"
    outer["Date"] = email.utils.formatdate(now, localtime=True)
    outer["Message-ID"] = email.utils.make_msgid(qid.replace("/", "."), domain=reporting_mta)
    outer["Auto-Submitted"] = "auto-replied"   # RFC 3834: no autoreply loops
    outer.preamble = "This is a MIME-encapsulated message."

    lines = [f"The original message was received at "
             f"{email.utils.formatdate(env.received_at, localtime=True)}",
             f"from {env.helo or 'localhost'}"
             + (f" [{env.client_ip}]" if env.client_ip else ""),
             "",
             "   ----- The following addresses had permanent fatal errors -----"]
    for f in failures:
        lines.append(f"<{f.recipient}>")
        if f.orcpt and f.orcpt != f.recipient:
            lines.append(f"    (expanded from: <{f.orcpt}>)")
        lines.append(f"    {f.diagnostic.partition(';')[2].strip() or f.status}")
    lines += ["", "   ----- Original message headers follow (attached) -----", ""]
    text = "\n".join(lines) + "\n"
    human = MIMEText(text, "plain", "us-ascii" if text.isascii() else "utf-8", policy=_POLICY)
    outer.attach(human)

    blocks = [[f"Reporting-MTA: dns; {reporting_mta}",
               f"X-Postroom-Queue-ID: {qid}",
               f"Arrival-Date: {email.utils.formatdate(env.received_at, localtime=True)}"]]
    for f in failures:
        block = []
        if f.orcpt:
            block.append(f"Original-Recipient: {_address_type(f.orcpt)}")
        block += [f"Final-Recipient: {_address_type(f.recipient)}",
                  f"Action: {f.action}",
                  f"Status: {f.status}",
                  f"Diagnostic-Code: {f.diagnostic}",
                  f"Last-Attempt-Date: {email.utils.formatdate(now, localtime=True)}"]
        blocks.append(block)
    status = MIMEBase("message", "delivery-status", policy=_POLICY)
    groups = []
    for b in blocks:
        group = Message(policy=_POLICY)
        for line in b:
            name, _, value = line.partition(": ")
            group[name] = value
        groups.append(group)
    status.set_payload(groups)
    outer.attach(status)
    # every byte above ASCII as a surrogate escape, which the generator writes back as
    # that byte: a UTF-8 header decoded to real characters cannot be written as 8bit
    # (the bounce of an SMTPUTF8 or 8-bit-header message failed, and was lost)
    outer.attach(_Raw("text", "rfc822-headers", headers.decode("ascii", "surrogateescape")))
    data = outer.as_bytes(policy=_POLICY)
    return data if data.endswith(b"\n") else data + b"\n"


class _Raw(MIMEBase):
    """A part whose body is already in its final textual form (no re-encoding)."""

    def __init__(self, maintype: str, subtype: str, body: str) -> None:
        super().__init__(maintype, subtype, policy=_POLICY)
        self.set_payload(body)
        self["Content-Transfer-Encoding"] = "7bit" if body.isascii() else "8bit"


def parse_bounce(raw: bytes) -> EmailMessage:
    """Parse a bounce (for tests and mailq tools) with the default policy."""
    import email
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, Message)
    return msg  # type: ignore[return-value]
