"""mta.deliveryheader — the header of a message as a final delivery hands it on.

``for_delivery(message, sender)`` is the queued message as a local delivery gives it to
the recipient's recipes, an alias's program or file:

* ``Return-Path: <sender>`` first (``<>`` for the null sender).  RFC 5321 4.4 says the
  server making the final delivery MUST insert it; sendmail's local mailer (flag P) and
  Postfix local(8) do, and recipes and mail readers look for it (``* ^Return-Path:``,
  bounce handling, list filters).
* No Return-Path: or Content-Length: field that came with the message (Postfix's
  drop_headers).  The one Return-Path at the top must be ours, not one a sender wrote
  for recipes to take for the envelope's.  A Content-Length: makes the delivery agent,
  as procmail does, leave the body's "From " lines unescaped (the field says where the
  message ends); mbox readers that ignore it then split the message there, so a sender
  could plant a whole forged message in the mailbox.
* The header ends at the first line that is neither a header field nor a continuation
  line: a blank line is put there, as Postfix's cleanup does, so that text a client
  sent without a header (``This is not a header`` then ``Subject: x``) stays body and
  cannot supply fields.  A ``From `` line that starts the client's text (an mbox
  envelope line) becomes ``X-Mailbox-Line: From ...``, as in Postfix, and the fields
  after it stay fields.

The queued message has LF line ends, the receiver's Received: field first (mta.queue),
and its header ends at the first empty line, as deliver/ reads it.  Pure function.
"""

from __future__ import annotations

import re

from .headerfields import FIELD_NAME, remove_fields

__all__ = ["for_delivery"]

# a header field line or a continuation line; a last line without its newline counts
# as one too
_LINE = rb"(?:%s[^\n]*|[ \t][^\n]*)" % FIELD_NAME
_FIELDS = re.compile(rb"(?:%s\n)*(?:%s\Z)?" % (_LINE, _LINE))
_FIRST_FIELD = re.compile(rb"%s[^\n]*\n(?:[ \t][^\n]*\n)*" % FIELD_NAME)
_DROPPED_NAMES = (b"return-path", b"content-length")
_DROPPED = re.compile(rb"(?im)^(?:return-path|content-length)[ \t]*:")     # a quick look
_MAILBOX_LINE = b"X-Mailbox-Line: "


def for_delivery(message: bytes, sender: str) -> bytes:
    """``message`` as the module docstring says a final delivery hands it on."""
    # an envelope sender never holds a line break (the SMTP parser and sendmail -f see
    # to it); should one get here, it must not start a header field of its own
    clean = sender.replace("\r", "").replace("\n", "")
    top = b"Return-Path: <" + clean.encode("utf-8", "surrogateescape") + b">\n"
    end = _FIELDS.match(message).end()
    if end == len(message) or message[end] == 0x0A:          # the usual case
        head, rest = message[:end], message[end:]
    else:
        head, rest = _split_at_non_field(message, end)
    if _DROPPED.search(head):
        head = remove_fields(head, _DROPPED_NAMES)
    return b"".join((top, head, rest))


def _split_at_non_field(message: bytes, end: int) -> tuple[bytes, bytes]:
    """(header, rest) when the line at ``end`` is not a header field: a client's mbox
    ``From `` line right after the first field (the receiver's Received:) is renamed
    X-Mailbox-Line: and the header goes on after it; anything else ends the header,
    and the rest starts with the blank line put there."""
    first = _first_field_end(message)
    if end == first and message.startswith(b"From ", end):
        nl = message.find(b"\n", end)
        line_end = len(message) if nl < 0 else nl + 1
        more = _FIELDS.match(message, line_end).end()
        head = message[:end] + _MAILBOX_LINE + message[end:line_end]
        if more == len(message) or message[more] == 0x0A:
            return head + message[line_end:more], message[more:]
        return head + message[line_end:more], b"\n" + message[more:]
    return message[:end], b"\n" + message[end:]


def _first_field_end(message: bytes) -> int:
    m = _FIRST_FIELD.match(message)
    return m.end() if m else 0
