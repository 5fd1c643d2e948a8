"""mta.returnpath — the Return-Path: header field of a final delivery (RFC 5321 4.4).

``with_return_path(message, sender)`` is the message as a local delivery hands it on
(to the recipient's recipes, an alias's program or file): ``Return-Path: <sender>``
first, ``<>`` for the null sender, and no other Return-Path: field.

Why: the envelope sender is otherwise lost at the mailbox.  RFC 5321 4.4 says the
server making the final delivery MUST insert it; sendmail's local mailer (flag P) and
Postfix local(8) (mailbox, Maildir, command and file deliveries) do, and recipes and
mail readers look for it (``* ^Return-Path:.*owner-``, bounce handling, list filters).
A Return-Path: that came with the message is removed (RFC 5321 4.4 allows it; Postfix's
drop_headers does it when mail is received): the one at the top must be ours, and a
sender could otherwise plant a field that recipes would take for the envelope's.

The queued message has LF line endings and its header ends at the first empty line
(as deliver/ reads it); a message with no empty line is all header.
"""

from __future__ import annotations

__all__ = ["with_return_path"]

_FIELD = b"return-path:"


def with_return_path(message: bytes, sender: str) -> bytes:
    """``message`` with ``Return-Path: <sender>`` as its first line and any earlier
    Return-Path: field (with its continuation lines) removed."""
    # an envelope sender never holds a line break (the SMTP parser and sendmail -f see
    # to it); should one get here, it must not start a header field of its own
    clean = sender.replace("\r", "").replace("\n", "")
    line = b"Return-Path: <" + clean.encode("utf-8", "surrogateescape") + b">\n"
    end = message.find(b"\n\n")
    header_end = len(message) if end < 0 else end + 1
    if message.startswith(b"\n"):          # an empty header: the body starts at once
        header_end = 0
    head = message[:header_end]
    if _FIELD not in head.lower():         # the usual case: one copy, nothing to drop
        return line + message
    return line + _without_field(head) + message[header_end:]


def _without_field(head: bytes) -> bytes:
    """The header lines of ``head`` without Return-Path: fields and their folded
    continuation lines (lines starting with a blank that follow them)."""
    kept: list[bytes] = []
    dropping = False
    # lines end at LF only (a CR is a byte of the line, as deliver/ reads it); a last
    # line without one (a message that is all header) keeps having none
    for raw_line in head.splitlines(keepends=True) if b"\r" not in head else _lf_lines(head):
        if raw_line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(raw_line)
            continue
        dropping = raw_line[: len(_FIELD)].lower() == _FIELD
        if not dropping:
            kept.append(raw_line)
    return b"".join(kept)


def _lf_lines(head: bytes) -> list[bytes]:
    """``head`` cut after each LF (bytes.splitlines would cut at a CR too)."""
    lines = [line + b"\n" for line in head.split(b"\n")]
    lines[-1] = lines[-1][:-1]
    return lines if lines[-1] else lines[:-1]
